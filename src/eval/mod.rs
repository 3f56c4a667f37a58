//! `sae-onnx eval`: lm-evaluation-harness semantics on ONNX Runtime.

pub mod builtins;
pub mod bundled;
pub mod cache;
pub mod data;
pub mod evaluator;
pub mod generative;
pub mod hub_data;
pub mod lm;
pub mod metrics;
pub mod output;
pub mod pylit;
pub mod pyrandom;
pub mod scoring;
pub mod sweep;
pub mod table;
pub mod task;
pub mod template;
