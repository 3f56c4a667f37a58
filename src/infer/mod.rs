//! Inference on ONNX Runtime below the commands: the scoring-graph rewrite ([`scoring`]) and
//! loglikelihoods with lm-eval's semantics ([`lm`]), used by `eval` and by `generate` on graphs
//! without a KV cache.

pub mod lm;
pub mod scoring;
