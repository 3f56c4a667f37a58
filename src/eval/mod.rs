//! `sae-onnx eval`: lm-evaluation-harness semantics on ONNX Runtime.

pub mod lm;
pub mod scoring;
