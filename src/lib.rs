//! sae-onnx: export Gemma models to ONNX, splice sparse-autoencoder steering vectors into their
//! residual stream, and evaluate the result with lm-evaluation-harness semantics on ONNX Runtime.
//!
//! The library is what the `sae-onnx` binary runs. Modules are layers, each using only the ones
//! below it (ARCHITECTURE.md has the map and the few edges still pointing the wrong way).

// Arguments, the command's one Hub, reports.
pub mod cli;

// Commands (`generate` is `infer::generate`, its report printed by `cli`).
pub mod compare;
pub mod eval;
pub mod export;
pub mod inspect;
pub mod package;
pub mod steer;
pub mod sweep;

// Inference and model I/O.
pub mod infer;
pub mod tokenizer;

// Sources: SAEs, the Hugging Face cache (checkpoints are `export::config` / `export::weights`).
pub mod hub;
pub mod sae;

// What our graphs promise every consumer.
pub mod contract;

// ONNX graphs.
pub mod onnx;

// Ground: CPython semantics, hashing, files, hook names, our cache root, progress bars.
pub mod digest;
pub mod files;
pub mod hook;
pub mod paths;
pub mod progress;
pub mod pycompat;
