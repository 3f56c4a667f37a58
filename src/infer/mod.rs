//! Inference on ONNX Runtime below the commands: finding the runtime and opening sessions
//! ([`runtime`]), the KV-cache layout of decoding graphs ([`kv_cache`]), the scoring-graph rewrite
//! ([`scoring`]), loglikelihoods with lm-eval's semantics ([`lm`]), and the text generator
//! ([`generate`]: the `generate` command, and `eval`'s generate_until tasks), which scores with
//! [`lm`] on graphs without a KV cache, and stops at the ids [`stop_tokens`] reads.

pub mod chat_template;
pub mod fan_out;
pub mod generate;
pub mod kv_cache;
pub mod lm;
pub mod row_coefficients;
pub mod runtime;
pub mod scoring;
pub mod session_cache;
pub mod stop_tokens;
pub mod sweep_decode;
