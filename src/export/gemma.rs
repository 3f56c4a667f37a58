//! The Gemma family (1, 2, 3) as transformers 4.57 builds it: embeddings × √hidden, `(1 + w)`
//! RMSNorms in float32, GeGLU, `query_pre_attn_scalar`, attention and final logit softcapping,
//! post norms (2, 3) and q/k norms (3). Sliding layers and local/global RoPE are in config.rs.

use anyhow::{Result, bail};

use super::config::{Arch, Config};
use super::family::{Activation, Family, Layout, NormScale};

pub fn family(config: &Config, arch: Arch) -> Result<Family> {
    if config.attention_bias == Some(true) {
        bail!(
            "attention_bias true is not supported for {} (released Gemmas have none)",
            arch.hf_name()
        );
    }
    let head_scale = (config.head_dim() as f64).powf(-0.5);
    Ok(Family {
        embedding_scale: Some((config.hidden_size as f64).sqrt()),
        norm_scale: NormScale::OnePlusWeight,
        post_norms: arch != Arch::Gemma,
        qk_norms: arch == Arch::Gemma3,
        qkv_bias: false,
        activation: activation(config, arch)?,
        // Gemma 2 and 3 scale by query_pre_attn_scalar^-0.5, Gemma 1 by head_dim^-0.5.
        attention_scale: match (arch, config.query_pre_attn_scalar) {
            (Arch::Gemma, _) | (_, None) => head_scale,
            (_, Some(s)) => s.powf(-0.5),
        },
        // transformers 4.57 applies the attention softcap for Gemma 2 only (it ignores it for Gemma 3).
        attention_softcap: if arch == Arch::Gemma2 {
            config.attn_logit_softcapping
        } else {
            None
        },
        final_softcap: if arch == Arch::Gemma {
            None
        } else {
            config.final_logit_softcapping
        },
        tied_embeddings: config.tie_word_embeddings.unwrap_or(true),
        lm_head_optional: true,
        layout: Layout::Rotary,
    })
}

/// The MLP activation as transformers 4.57 picks it: Gemma 1 reads `hidden_act`, Gemma 2 and 3
/// read `hidden_activation`.
fn activation(config: &Config, arch: Arch) -> Result<Activation> {
    let name = if arch == Arch::Gemma {
        config.hidden_act.as_deref()
    } else {
        config.hidden_activation.as_deref()
    }
    .unwrap_or("gelu_pytorch_tanh");
    match name {
        "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
        "gelu" => Ok(Activation::GeluExact),
        other => bail!(
            "activation '{}' is not supported (Gemma uses gelu_pytorch_tanh)",
            crate::files::printable(other, 100)
        ),
    }
}
