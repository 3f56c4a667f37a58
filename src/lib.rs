//! sae-onnx: export Gemma models to ONNX, splice sparse-autoencoder steering vectors into their
//! residual stream, and evaluate the result with lm-evaluation-harness semantics on ONNX Runtime.
//!
//! The library is what the `sae-onnx` binary runs; each module has one job (see DESIGN.md).

pub mod cli;
pub mod compare;
pub mod contract;
pub mod digest;
pub mod eval;
pub mod export;
pub mod files;
pub mod generate;
pub mod hook;
pub mod hub;
pub mod infer;
pub mod inspect;
pub mod kv_cache;
pub mod onnx;
pub mod paths;
pub mod progress;
pub mod pycompat;
pub mod runtime;
pub mod sae;
pub mod steer;
pub mod tokenizer;
