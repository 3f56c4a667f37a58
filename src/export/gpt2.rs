//! GPT-2 (`GPT2LMHeadModel`) as transformers 4.57 builds it: token plus learned position
//! embeddings, pre-LayerNorm blocks (`ln_1`, `ln_2`, with bias), attention through one fused
//! `c_attn` Conv1D split into q, k and v, `c_proj` back, an ungated `c_fc` → `gelu_new` →
//! `c_proj` MLP, the final `ln_f`, and the LM head tied to `wte`. Conv1D stores its weight as
//! `[in, out]` (transposed from nn.Linear) and computes `x @ W + b`, which is a Gemm without
//! `transB`, so weights stream from the checkpoint unchanged. There is no RoPE: the shared
//! decoder (decoder.rs) skips it for [`Layout::Gpt2`] and reuses its masks, attention and KV cache.
//!
//! GPT-2's config.json names its sizes `n_embd`, `n_layer`, ...; gpt2_config.rs maps them to the
//! names config.rs reads and refuses the variants we do not build.

use std::path::Path;

use anyhow::{Result, bail};

use super::config::Config;
use super::decoder::{DecoderGraph, LayerInputs, hook_identity, residual_sum};
use super::family::{Activation, Family, Layout, NormScale};
use super::gpt2_config::LAYER_NORM_EPSILON;
use super::weight_sink::ExportBuilder;
use super::weights::Checkpoint;
use crate::onnx::DataType;
use crate::onnx::make::AttrValue;

/// Where GPT-2 checkpoints keep their tensors: `transformer.` (GPT2LMHeadModel), or no prefix
/// (GPT2Model, as the original openai-community/gpt2 upload stores them).
pub const PREFIXES: [&str; 2] = ["transformer.", ""];

pub fn family(config: &Config) -> Result<Family> {
    Ok(Family {
        embedding_scale: None,
        // LayerNorms scale by the weight itself (and add the bias).
        norm_scale: NormScale::Weight,
        post_norms: false,
        qk_norms: false,
        // c_attn's biases are part of the GPT-2 layout, not this Qwen 2 switch.
        qkv_bias: false,
        activation: Activation::GeluTanh,
        // transformers divides by √head_dim (exact as a product for power-of-4 head sizes).
        attention_scale: (config.head_dim() as f64).powf(-0.5),
        attention_softcap: None,
        final_softcap: None,
        // PretrainedConfig's default, which GPT-2 keeps.
        tied_embeddings: config.tie_word_embeddings.unwrap_or(true),
        lm_head_optional: false,
        layout: Layout::Gpt2,
    })
}

/// Checks every tensor the GPT-2 graph reads against the config, before anything is written.
pub fn check_weights(config: &Config, family: &Family, ckpt: &Checkpoint, path: &Path) -> Result<()> {
    let (vocab, hidden, inner) = (config.vocab_size, config.hidden_size, config.intermediate_size);
    let check = |prefixes: &[&str], name: &str, want: &[usize], fields: &str| -> Result<()> {
        let Some(found) = ckpt.find(prefixes, name) else {
            bail!(
                "the checkpoint ({}) has no tensor '{name}' (looked for it under {prefixes:?}), which a \
                 GPT2LMHeadModel with {} layers has; is '{}' the config of this checkpoint?",
                ckpt.file_names(),
                config.num_hidden_layers,
                path.display()
            );
        };
        if found.shape != want {
            bail!(
                "'{}' implies {fields} = {want:?} for '{}', but that tensor in '{}' has shape {:?}; \
                 the config does not describe this checkpoint",
                path.display(),
                found.name,
                found.file.display(),
                found.shape
            );
        }
        Ok(())
    };
    check(&PREFIXES, "wte.weight", &[vocab, hidden], "[vocab_size, n_embd]")?;
    check(
        &PREFIXES,
        "wpe.weight",
        &[config.max_position_embeddings, hidden],
        "[n_positions, n_embd]",
    )?;
    for part in ["weight", "bias"] {
        check(&PREFIXES, &format!("ln_f.{part}"), &[hidden], "[n_embd]")?;
    }
    if !family.tied_embeddings {
        check(&[""], "lm_head.weight", &[vocab, hidden], "[vocab_size, n_embd]")?;
    }
    for layer in 0..config.num_hidden_layers {
        let at = |name: &str, want: &[usize], fields: &str| {
            check(&PREFIXES, &format!("h.{layer}.{name}"), want, fields)
        };
        for norm in ["ln_1", "ln_2"] {
            at(&format!("{norm}.weight"), &[hidden], "[n_embd]")?;
            at(&format!("{norm}.bias"), &[hidden], "[n_embd]")?;
        }
        at(
            "attn.c_attn.weight",
            &[hidden, 3 * hidden],
            "[n_embd, 3 × n_embd]",
        )?;
        at("attn.c_attn.bias", &[3 * hidden], "[3 × n_embd]")?;
        at("attn.c_proj.weight", &[hidden, hidden], "[n_embd, n_embd]")?;
        at("attn.c_proj.bias", &[hidden], "[n_embd]")?;
        at("mlp.c_fc.weight", &[hidden, inner], "[n_embd, 4 × n_embd]")?;
        at("mlp.c_fc.bias", &[inner], "[4 × n_embd]")?;
        at("mlp.c_proj.weight", &[inner, hidden], "[4 × n_embd, n_embd]")?;
        at("mlp.c_proj.bias", &[hidden], "[n_embd]")?;
    }
    Ok(())
}

impl DecoderGraph<'_> {
    /// `wte(input_ids) + wpe(positions)`, named `blocks.0.hook_resid_pre`, and the token
    /// embedding matrix (the tied LM head).
    pub(super) fn gpt2_embedding(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        inputs: &LayerInputs,
    ) -> Result<(String, String)> {
        let dt = self.dtype;
        let wte = b.weight("transformer.wte.weight", &ckpt.get(&PREFIXES, "wte.weight")?, dt)?;
        let wpe = b.weight("transformer.wpe.weight", &ckpt.get(&PREFIXES, "wpe.weight")?, dt)?;
        let resid_pre = b.scoped("transformer/embed", |b| {
            let tokens = b.op_named(
                "Gather",
                &[&wte, crate::contract::INPUT_IDS],
                vec![],
                "hook_embed",
            );
            let positions = b.op_named("Gather", &[&wpe, &inputs.position_ids], vec![], "hook_pos_embed");
            Ok(residual_sum(b, &tokens, &positions, 0, "hook_resid_pre"))
        })?;
        Ok((resid_pre, wte))
    }

    /// One `transformer.h.{layer}` block, its residual-stream tensors named as hooks.
    pub(super) fn gpt2_layer(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        inputs: &LayerInputs,
        layer: usize,
        input: &str,
    ) -> Result<String> {
        let resid_pre = if layer == 0 {
            input.to_owned()
        } else {
            hook_identity(b, input, layer, "hook_resid_pre")
        };
        let x = b.scoped("ln_1", |b| {
            self.gpt2_layer_norm(b, ckpt, &format!("h.{layer}.ln_1"), &resid_pre)
        })?;
        let attn = b.scoped("attn", |b| self.gpt2_attention(b, ckpt, inputs, layer, &x))?;
        let attn_out = hook_identity(b, &attn, layer, "hook_attn_out");
        let resid_mid = residual_sum(b, &resid_pre, &attn_out, layer, "hook_resid_mid");
        let x = b.scoped("ln_2", |b| {
            self.gpt2_layer_norm(b, ckpt, &format!("h.{layer}.ln_2"), &resid_mid)
        })?;
        let mlp = b.scoped("mlp", |b| {
            let c = self.config;
            let hidden = self.conv1d(
                b,
                ckpt,
                inputs,
                &format!("h.{layer}.mlp.c_fc"),
                &x,
                c.intermediate_size,
            )?;
            debug_assert_eq!(self.family.activation, Activation::GeluTanh);
            // gelu_new: 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), Gelu's tanh approximation.
            let act = b.op(
                "Gelu",
                &[&hidden],
                vec![("approximate", AttrValue::String("tanh".into()))],
            );
            self.conv1d(
                b,
                ckpt,
                inputs,
                &format!("h.{layer}.mlp.c_proj"),
                &act,
                c.hidden_size,
            )
        })?;
        let mlp_out = hook_identity(b, &mlp, layer, "hook_mlp_out");
        Ok(residual_sum(b, &resid_mid, &mlp_out, layer, "hook_resid_post"))
    }

    /// `c_attn` (q, k, v side by side), attention without RoPE, `c_proj`.
    fn gpt2_attention(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        inputs: &LayerInputs,
        layer: usize,
        x: &str,
    ) -> Result<String> {
        let hidden = self.config.hidden_size;
        let qkv = self.conv1d(b, ckpt, inputs, &format!("h.{layer}.attn.c_attn"), x, 3 * hidden)?;
        let part = |b: &mut ExportBuilder, i: i64| {
            let width = hidden as i64;
            b.op(
                "Slice",
                &[
                    &qkv,
                    &b.const_i64(&[i * width]),
                    &b.const_i64(&[(i + 1) * width]),
                    &b.const_i64(&[-1]),
                ],
                vec![],
            )
        };
        let (q, k, v) = (part(b, 0), part(b, 1), part(b, 2));
        let z = self.attention_core(b, inputs, layer, (&q, &k, &v), None)?;
        b.scoped("c_proj", |b| {
            self.conv1d(b, ckpt, inputs, &format!("h.{layer}.attn.c_proj"), &z, hidden)
        })
    }

    /// The final `ln_f`.
    pub(super) fn gpt2_final_norm(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        x: &str,
    ) -> Result<String> {
        self.gpt2_layer_norm(b, ckpt, "ln_f", x)
    }

    /// `nn.LayerNorm` with weight and bias over the last axis, in float32 as torch computes it
    /// for half-precision inputs too, then back to the model dtype. LayerNormalization is
    /// standard ONNX, so both operator profiles use it.
    fn gpt2_layer_norm(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        module: &str,
        x: &str,
    ) -> Result<String> {
        let dt = self.dtype;
        let param = |b: &mut ExportBuilder, part: &str| -> Result<String> {
            let key = format!("{module}.{part}");
            b.weight(&format!("transformer.{key}"), &ckpt.get(&PREFIXES, &key)?, dt)
        };
        let (w, bias) = (param(b, "weight")?, param(b, "bias")?);
        let eps = self.config.layer_norm_epsilon.unwrap_or(LAYER_NORM_EPSILON) as f32;
        let attrs = vec![
            ("axis", AttrValue::Int(-1)),
            ("epsilon", AttrValue::Float(eps)),
            ("stash_type", AttrValue::Int(1)),
        ];
        if dt == DataType::Float {
            return Ok(b.op("LayerNormalization", &[x, &w, &bias], attrs));
        }
        let to_float = |b: &mut ExportBuilder, t: &str| {
            b.op("Cast", &[t], vec![("to", AttrValue::Int(DataType::Float as i64))])
        };
        let (xf, wf, bf) = (to_float(b, x), to_float(b, &w), to_float(b, &bias));
        let normed = b.op("LayerNormalization", &[&xf, &wf, &bf], attrs);
        Ok(b.op("Cast", &[&normed], vec![("to", AttrValue::Int(dt as i64))]))
    }

    /// transformers' Conv1D `x @ W + b` with `W [in, out]` as the checkpoint stores it:
    /// Gemm (no `transB`) with the bias, on `[batch*seq, in]`.
    fn conv1d(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        inputs: &LayerInputs,
        module: &str,
        x: &str,
        d_out: usize,
    ) -> Result<String> {
        let dt = self.dtype;
        let w_view = ckpt.get(&PREFIXES, &format!("{module}.weight"))?;
        let d_in = w_view.shape[0];
        let w = b.weight(&format!("transformer.{module}.weight"), &w_view, dt)?;
        let bias = b.weight(
            &format!("transformer.{module}.bias"),
            &ckpt.get(&PREFIXES, &format!("{module}.bias"))?,
            dt,
        )?;
        let flat = b.op("Reshape", &[x, &b.const_i64(&[-1, d_in as i64])], vec![]);
        let y = b.op("Gemm", &[&flat, &w, &bias], vec![]);
        let shape = b.op(
            "Concat",
            &[&inputs.batch_seq, &b.const_i64(&[d_out as i64])],
            vec![("axis", AttrValue::Int(0))],
        );
        Ok(b.op("Reshape", &[&y, &shape], vec![]))
    }
}
