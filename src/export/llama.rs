//! Llama (2, 3.x) and Mistral as transformers 4.57 builds them: plain embeddings, `w · x̂`
//! RMSNorms, SwiGLU, `head_dim^-0.5` attention, no projection biases. The differences between the
//! two (Llama 3's `llama3` RoPE scaling, Mistral's sliding window on every layer) are config
//! facts read by config.rs; Qwen 2/3 are variants of this one (qwen.rs).

use anyhow::{Result, bail};

use super::config::{Arch, Config};
use super::family::{Activation, Family, Layout, NormScale};

pub fn family(config: &Config, arch: Arch) -> Result<Family> {
    if config.attention_bias == Some(true) {
        bail!(
            "attention_bias true (biases on q/k/v/o_proj) is not supported for {}",
            arch.hf_name()
        );
    }
    if config.mlp_bias == Some(true) {
        bail!(
            "mlp_bias true (biases on the MLP projections) is not supported for {}",
            arch.hf_name()
        );
    }
    Ok(Family {
        embedding_scale: None,
        norm_scale: NormScale::Weight,
        post_norms: false,
        qk_norms: false,
        qkv_bias: false,
        activation: silu(config)?,
        attention_scale: (config.head_dim() as f64).powf(-0.5),
        attention_softcap: None,
        final_softcap: None,
        tied_embeddings: config.tie_word_embeddings.unwrap_or(false),
        lm_head_optional: false,
        layout: Layout::Rotary,
    })
}

/// `hidden_act`, which must be `silu` (every released Llama, Mistral and Qwen).
pub(super) fn silu(config: &Config) -> Result<Activation> {
    match config.hidden_act.as_deref().unwrap_or("silu") {
        "silu" => Ok(Activation::Silu),
        other => bail!(
            "hidden_act '{}' is not supported (sae-onnx builds silu for this family)",
            crate::files::printable(other, 100)
        ),
    }
}
