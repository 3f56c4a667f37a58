//! `sae-onnx eval`: lm-evaluation-harness semantics on ONNX Runtime.

pub mod builtins;
pub mod bundled;
pub mod cache;
pub mod data;
pub mod evaluator;
pub mod generative;
pub mod hub_data;
pub mod metrics;
pub mod output;
pub mod sweep;
pub mod table;
pub mod task;
pub mod template;
