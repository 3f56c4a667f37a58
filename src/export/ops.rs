//! The operator profiles an export is built from (`--ops`).

use crate::onnx::DataType;

/// Which operators an exported graph is built from. Both compute the same model and expose the
/// same hook tensors under the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ops {
    /// Standard ONNX operators only (default domain, opset 21): any ONNX runtime can run it.
    Portable,
    /// ONNX Runtime's fused operators where they are faster: SimplifiedLayerNormalization for the
    /// RMSNorms (in half-precision graphs only Gemma's, whose `(1 + w)` scales in float32 before
    /// the cast; Llama, Mistral and Qwen multiply the weight after it); in float32 graphs also `com.microsoft` GroupQueryAttention (RoPE, scale and
    /// sliding window inside) for attention without logit softcapping, made for the CPU provider
    /// (the CUDA provider's GroupQueryAttention rejects the `attention_bias` input that carries
    /// the padding mask, so half-precision graphs keep standard attention).
    Ort,
}

impl Ops {
    /// The default for a dtype: `Ort` for float32 (measured faster than `Portable` on ONNX
    /// Runtime's CPU provider, see `decoder.rs`) and bfloat16 (on an H100 with the CUDA provider, a
    /// gemma-2-2b-shaped model scored 200 5-shot questions in 1.14 s against 1.25 s and opened in
    /// 2.5–3.4 s against 3.9–5.5 s: BENCHMARKS.md); `Portable` for float16, which the CPU
    /// provider also runs and which was not measured fused on a GPU.
    pub fn default_for(dtype: DataType) -> Self {
        if dtype == DataType::Float16 {
            Self::Portable
        } else {
            Self::Ort
        }
    }

    /// The name `--ops` takes and `sae_onnx.ops` records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Portable => "portable",
            Self::Ort => "ort",
        }
    }
}
