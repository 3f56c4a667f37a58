//! `sae-onnx eval`: lm-evaluation-harness semantics on ONNX Runtime.

pub mod answers;
pub mod assemble;
pub mod builtins;
pub mod bundled;
pub mod cache;
pub mod data;
pub mod dump_config;
pub mod evaluator;
pub mod generative;
pub mod groups;
pub mod hub_data;
pub mod merge;
pub mod metrics;
pub mod options;
pub mod output;
pub mod prepare;
pub mod requests;
pub mod samples;
pub mod shard;
pub mod sweep;
pub mod table;
pub mod task;
pub mod task_config;
pub mod task_index;
pub mod task_output;
pub mod template;
