//! Inference on ONNX Runtime below the commands: the scoring-graph rewrite ([`scoring`]),
//! loglikelihoods with lm-eval's semantics ([`lm`]), and the text generator ([`generate`]: the
//! `generate` command, and `eval`'s generate_until tasks), which scores with [`lm`] on graphs
//! without a KV cache.

pub mod generate;
pub mod lm;
pub mod scoring;
