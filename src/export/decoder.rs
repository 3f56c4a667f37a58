//! The decoder-only transformer every family we export shares, as an ONNX graph reproducing
//! transformers 4.57 (eager attention) operation for operation: token embedding, per layer an
//! RMSNorm'd grouped-query attention with RoPE and a gated MLP, each added to the residual stream,
//! then the final norm and the LM head. What differs between families (the embedding scale, the
//! RMSNorm's scale, post norms, q/k norms, projection biases, the activation, softcaps, which layers
//! slide) is a [`Family`], which `gemma.rs`, `llama.rs` and `qwen.rs` derive from the config.
//! GPT-2's block (LayerNorms, Conv1D projections, learned positions: [`Layout::Gpt2`]) is built
//! by gpt2.rs on the same masks, attention and KV cache.
//!
//! Residual-stream tensors carry their TransformerLens hook names (`blocks.L.hook_resid_post`, ...).
//!
//! Two operator profiles ([`Ops`]) build the same model with the same hook tensors. `Portable`
//! spells everything in standard ONNX. `Ort` uses ONNX Runtime's fused operators where its CPU
//! kernels (1.31) are faster, as measured on a random 8-layer Gemma 2/3 (hidden 512):
//! - `SimplifiedLayerNormalization` for every float32 RMSNorm (Gemma's `(1+w)` scale precomputed).
//! - `com.microsoft.GroupQueryAttention` for attention without logit softcapping (Gemma 1, 3;
//!   see `DecoderGraph::fused_attention` for Gemma 2): RoPE (`do_rotary`, cos/sin caches of
//!   `[seq, head_dim/2]`), `scale` and `local_window_size` inside. Its CPU kernel computes
//!   `softmax(scale·q·kᵀ + attention_bias)` over the keys `q_idx - local_window_size < kv_idx
//!   <= q_idx`: transformers' window (`kv_idx > q_idx - sliding_window`). Padding goes in
//!   `attention_bias` (the portable graph's additive mask, window included, so the window also holds
//!   with kernels that count it one key wider, as older ones did) with `seqlens_k = seq - 1` for every row, rather
//!   than in `seqlens_k`: that serves right and left padding alike, and padded query rows get
//!   computed scores instead of the uninitialised ones `seqlens_k` padding leaves them.
//!
//! Not used, on purpose: `SkipSimplifiedLayerNormalization` (residual add + next norm, the sum as
//! its output 3). Steering adds a vector to a hook tensor and rewires that tensor's consumers;
//! the fused node would compute the next norm from the unsteered sum inside itself, so the
//! residual adds stay plain `Add`s named as hooks (the fused form measured no faster).
//! `FastGelu` measured no faster than the standard `Gelu(approximate="tanh")`.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::Result;

use super::config::{Arch, Config, Rope};
use super::family::{Activation, Family, Layout, NormScale};
use super::ops::Ops;
use super::weight_sink::ExportBuilder;
use super::weights::{Checkpoint, PREFIXES};
use crate::contract::{ATTENTION_MASK, INPUT_IDS, LOGITS, past_name, present_name};
use crate::onnx::DataType;
use crate::onnx::make::AttrValue;

/// The hook sites every decoder layer exposes, in TransformerLens naming.
pub const LAYER_HOOKS: [&str; 6] = [
    "hook_resid_pre",
    "hook_attn_out",
    "hook_resid_mid",
    "hook_mlp_out",
    "hook_resid_post",
    "attn.hook_z",
];

pub fn hook_name(layer: usize, site: &str) -> String {
    format!("blocks.{layer}.{site}")
}

/// `value` as the hook tensor `site` of `layer`: an `Identity` named after the hook, whose
/// readers steering rewires.
pub(super) fn hook_identity(b: &mut ExportBuilder, value: &str, layer: usize, site: &str) -> String {
    b.op_named("Identity", &[value], vec![], &hook_name(layer, site))
}

/// The residual sum `stream + block`, named as the hook `site` of `layer`.
pub(super) fn residual_sum(
    b: &mut ExportBuilder,
    stream: &str,
    block: &str,
    layer: usize,
    site: &str,
) -> String {
    b.op_named("Add", &[stream, block], vec![], &hook_name(layer, site))
}

/// Tensors every decoder layer reads, computed once per graph.
pub(super) struct LayerInputs {
    /// `[batch, seq]` as an int64 vector.
    pub(super) batch_seq: String,
    /// The new tokens' positions, int64: `[seq]` (0..seq), or `[batch, seq]` from the mask in
    /// decoding graphs (GPT-2's learned position embeddings look them up).
    pub(super) position_ids: String,
    /// Additive attention biases `[batch, 1, seq, seq]`: full causal, and per sliding window size.
    causal_bias: String,
    sliding_bias: Option<(usize, String)>,
    /// RoPE positions as float32: `[seq, 1]` (0..seq), or `[batch, seq, 1]` from the mask in decoding graphs.
    positions: String,
    /// cos/sin tables by inverse frequencies (as bits) and layout: Gemma 3 has two kinds of layers.
    rope: RefCell<HashMap<RopeKey, (String, String)>>,
    /// GroupQueryAttention's `seqlens_k` (`[batch]` int32, all `seq - 1`) and
    /// `total_sequence_length` (int32 scalar `seq`); `Ops::Ort` only.
    gqa_lengths: Option<(String, String)>,
}

/// The positions of the new tokens, from which masks and RoPE positions are made.
struct TokenPositions {
    /// `[batch, seq]` as an int64 vector.
    batch_seq: String,
    /// The number of new tokens, an int64 scalar.
    seq: String,
    /// The int64 scalar 1.
    one: String,
    /// The number of cached tokens (0 without a cache).
    past: String,
    /// `past + seq`.
    end: String,
    /// Positions of the queries (`past..end`) and of the keys (`0..end`).
    queries: String,
    keys: String,
}

/// RoPE inverse frequencies (as bits) and the layout of a cos/sin table pair.
type RopeKey = (Vec<u32>, RopeLayout);

/// How RoPE tables are laid out for their consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum RopeLayout {
    /// `[seq, head_dim]` (the two halves repeated), for q and k as `[batch, heads, seq, head_dim]`.
    Full,
    /// `[seq, 1, head_dim]`, for q and k as `[batch, seq, heads, head_dim]`.
    FullPerHead,
    /// `[seq, head_dim/2]`: GroupQueryAttention's cos/sin caches.
    Half,
}

pub struct DecoderGraph<'a> {
    pub config: &'a Config,
    pub arch: Arch,
    pub family: &'a Family,
    /// Activations and weights are in this type; norms and softmax run in float32 as in transformers.
    pub dtype: DataType,
    pub ops: Ops,
    /// A decoding graph: `past_key_values.{L}.key/value` in, `present.{L}.key/value` out, the new
    /// tokens at positions after the past ones. Attention is then always in standard operators.
    pub kv_cache: bool,
}

/// GroupQueryAttention's CPU kernel rotates only heads whose size is a multiple of 16 (every
/// released Gemma's is); smaller test models get RoPE from standard operators before it.
const GQA_ROTARY_MULTIPLE: usize = 16;

impl DecoderGraph<'_> {
    pub fn build(&self, b: &mut ExportBuilder, ckpt: &Checkpoint) -> Result<()> {
        let c = self.config;
        let dt = self.dtype;
        let inputs = self.layer_inputs(b)?;
        if self.family.layout == Layout::Gpt2 {
            return self.build_gpt2(b, ckpt, &inputs);
        }

        let embed = b.weight(
            "model.embed_tokens.weight",
            &ckpt.get(&PREFIXES, "embed_tokens.weight")?,
            dt,
        )?;
        let mut h = b.scoped("model/embed_tokens", |b| {
            let gathered = b.op_named("Gather", &[&embed, INPUT_IDS], vec![], "hook_embed");
            let resid_pre = hook_name(0, "hook_resid_pre");
            Ok(match self.family.embedding_scale {
                Some(scale) => {
                    let normalizer = b.const_scalar(scale as f32, dt);
                    b.op_named("Mul", &[&gathered, &normalizer], vec![], &resid_pre)
                }
                None => b.op_named("Identity", &[&gathered], vec![], &resid_pre),
            })
        })?;

        for layer in 0..c.num_hidden_layers {
            h = b.scoped(&format!("model/layers.{layer}"), |b| {
                self.decoder_layer(b, ckpt, &inputs, layer, &h)
            })?;
        }

        b.scoped("model/norm", |b| {
            let w = self.norm_weight(b, ckpt, "norm.weight", "model.norm.weight")?;
            let normed = self.rms_norm(b, &h, &w);
            let lm_head = if self.family.tied_embeddings || !ckpt.contains("lm_head.weight") {
                embed.clone()
            } else {
                b.weight("lm_head.weight", &ckpt.get(&[""], "lm_head.weight")?, dt)?
            };
            let logits = b.scoped("lm_head", |b| {
                Ok(self.linear(b, &normed, &lm_head, None, (c.hidden_size, c.vocab_size), &inputs))
            })?;
            let logits = match self.family.final_softcap {
                Some(cap) => self.softcap(b, &logits, cap as f32),
                None => logits,
            };
            self.name_logits(b, &logits);
            Ok(())
        })
    }

    /// GPT-2: its embeddings and blocks (gpt2.rs), `ln_f`, the LM head.
    fn build_gpt2(&self, b: &mut ExportBuilder, ckpt: &Checkpoint, inputs: &LayerInputs) -> Result<()> {
        let c = self.config;
        let (mut h, wte) = self.gpt2_embedding(b, ckpt, inputs)?;
        for layer in 0..c.num_hidden_layers {
            h = b.scoped(&format!("transformer/h.{layer}"), |b| {
                self.gpt2_layer(b, ckpt, inputs, layer, &h)
            })?;
        }
        let normed = b.scoped("transformer/ln_f", |b| self.gpt2_final_norm(b, ckpt, &h))?;
        let lm_head = if self.family.tied_embeddings {
            wte
        } else {
            b.weight("lm_head.weight", &ckpt.get(&[""], "lm_head.weight")?, self.dtype)?
        };
        let logits = b.scoped("lm_head", |b| {
            Ok(self.linear(b, &normed, &lm_head, None, (c.hidden_size, c.vocab_size), inputs))
        })?;
        self.name_logits(b, &logits);
        Ok(())
    }

    /// The graph's float32 `logits` output from the model-dtype ones.
    fn name_logits(&self, b: &mut ExportBuilder, logits: &str) {
        if self.dtype == DataType::Float {
            // Already float32: name the tensor rather than copy it through a Cast.
            b.rename_output(logits, LOGITS);
        } else {
            b.op_named(
                "Cast",
                &[logits],
                vec![("to", AttrValue::Int(DataType::Float as i64))],
                LOGITS,
            );
        }
    }

    fn layer_inputs(&self, b: &mut ExportBuilder) -> Result<LayerInputs> {
        b.scoped("model/mask", |b| {
            let tokens = self.token_positions(b);
            let (causal_bias, sliding_bias) = self.attention_biases(b, &tokens);
            let position_ids = self.position_ids(b, &tokens);
            let positions = rope_positions(b, &position_ids);
            let gqa_lengths = self.fused_attention().then(|| {
                // Every row counts all `seq` keys; the bias hides the padding.
                let int32 = || vec![("to", AttrValue::Int(DataType::Int32 as i64))];
                let batch = b.op(
                    "Gather",
                    &[&tokens.batch_seq, &b.const_i64(&[0])],
                    vec![("axis", AttrValue::Int(0))],
                );
                let last = b.op("Sub", &[&tokens.seq, &tokens.one], vec![]);
                let last = b.op("Cast", &[&last], int32());
                let seqlens_k = b.op("Expand", &[&last, &batch], vec![]);
                let total = b.op("Cast", &[&tokens.seq], int32());
                (seqlens_k, total)
            });
            Ok(LayerInputs {
                batch_seq: tokens.batch_seq,
                position_ids,
                causal_bias,
                sliding_bias,
                positions,
                rope: RefCell::default(),
                gqa_lengths,
            })
        })
    }

    /// The new tokens' positions: after the cached ones in decoding graphs.
    fn token_positions(&self, b: &mut ExportBuilder) -> TokenPositions {
        let batch_seq = b.op("Shape", &[INPUT_IDS], vec![]);
        let seq = b.op(
            "Gather",
            &[&batch_seq, &b.const_i64(&[1])],
            vec![("axis", AttrValue::Int(0))],
        );
        let seq = b.op("Squeeze", &[&seq], vec![]);
        let zero = b.const_scalar_i64(0);
        let one = b.const_scalar_i64(1);
        // New tokens sit after the cached ones: queries at past..past+seq, keys at 0..past+seq.
        let past = if self.kv_cache {
            let shape = b.op("Shape", &[&past_name(0, "key")], vec![]);
            let past = b.op(
                "Gather",
                &[&shape, &b.const_i64(&[2])],
                vec![("axis", AttrValue::Int(0))],
            );
            b.op("Squeeze", &[&past], vec![])
        } else {
            zero.clone()
        };
        let end = b.op("Add", &[&past, &seq], vec![]);
        let queries = b.op("Range", &[&past, &end, &one], vec![]);
        let keys = if self.kv_cache {
            b.op("Range", &[&zero, &end, &one], vec![])
        } else {
            queries.clone()
        };
        TokenPositions {
            batch_seq,
            seq,
            one,
            past,
            end,
            queries,
            keys,
        }
    }

    /// The additive attention biases `[batch, 1, seq, seq]`: causal, and causal within the
    /// sliding window of the layers that have one; padding keys hidden from every query.
    fn attention_biases(
        &self,
        b: &mut ExportBuilder,
        tokens: &TokenPositions,
    ) -> (String, Option<(usize, String)>) {
        let query = b.op("Unsqueeze", &[&tokens.queries, &b.const_i64(&[1])], vec![]);
        let key = b.op("Unsqueeze", &[&tokens.keys, &b.const_i64(&[0])], vec![]);
        let causal = b.op("LessOrEqual", &[&key, &query], vec![]);
        // Keys that are padding are hidden from every query: [batch, 1, 1, seq].
        let mask_bool = b.op(
            "Cast",
            &[ATTENTION_MASK],
            vec![("to", AttrValue::Int(DataType::Bool as i64))],
        );
        let padding = b.op("Unsqueeze", &[&mask_bool, &b.const_i64(&[1, 2])], vec![]);
        let bias = |b: &mut ExportBuilder, allowed_pairs: &str| {
            let allowed = b.op("And", &[allowed_pairs, &padding], vec![]);
            let zero = b.const_scalar(0.0, self.dtype);
            let min = b.const_scalar(dtype_min(self.dtype), self.dtype);
            b.op("Where", &[&allowed, &zero, &min], vec![])
        };
        let causal_bias = bias(b, &causal);
        let windows: Vec<usize> = (0..self.config.num_hidden_layers)
            .filter_map(|i| self.config.layer_attention(self.arch, i).sliding_window)
            .collect();
        let sliding_bias = windows.first().map(|&window| {
            // transformers: a key is visible when kv_idx > q_idx - window.
            let lowest = b.op("Sub", &[&query, &b.const_scalar_i64(window as i64)], vec![]);
            let recent = b.op("Greater", &[&key, &lowest], vec![]);
            let pairs = b.op("And", &[&causal, &recent], vec![]);
            (window, bias(b, &pairs))
        });
        (causal_bias, sliding_bias)
    }

    /// The new tokens' positions. Decoding graphs take them from the mask (left-padded prompts
    /// start at 0, as transformers' generate counts them): `[batch, seq]`. Full graphs use
    /// 0..seq: `[seq]`.
    fn position_ids(&self, b: &mut ExportBuilder, tokens: &TokenPositions) -> String {
        if self.kv_cache {
            let counted = b.op("CumSum", &[ATTENTION_MASK, &b.const_scalar_i64(1)], vec![]);
            let counted = b.op("Sub", &[&counted, &tokens.one], vec![]);
            let past_1d = b.op("Unsqueeze", &[&tokens.past, &b.const_i64(&[0])], vec![]);
            let end_1d = b.op("Unsqueeze", &[&tokens.end, &b.const_i64(&[0])], vec![]);
            b.op(
                "Slice",
                &[&counted, &past_1d, &end_1d, &b.const_i64(&[1])],
                vec![],
            )
        } else {
            tokens.queries.clone()
        }
    }

    fn decoder_layer(
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
        let w = self.layer_norm_weight(b, ckpt, layer, "input_layernorm")?;
        let x = b.scoped("input_layernorm", |b| Ok(self.rms_norm(b, &resid_pre, &w)))?;
        let attn = b.scoped("self_attn", |b| self.attention(b, ckpt, inputs, layer, &x))?;
        let attn_out =
            self.block_output(b, ckpt, layer, "post_attention_layernorm", &attn, "hook_attn_out")?;
        let resid_mid = residual_sum(b, &resid_pre, &attn_out, layer, "hook_resid_mid");

        // Without post norms (Gemma 1, Llama, ...) the pre-MLP norm is `post_attention_layernorm`.
        let pre_mlp = if self.family.post_norms {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        let w = self.layer_norm_weight(b, ckpt, layer, pre_mlp)?;
        let x = b.scoped(pre_mlp, |b| Ok(self.rms_norm(b, &resid_mid, &w)))?;
        let mlp = b.scoped("mlp", |b| self.mlp(b, ckpt, inputs, layer, &x))?;
        let mlp_out =
            self.block_output(b, ckpt, layer, "post_feedforward_layernorm", &mlp, "hook_mlp_out")?;
        Ok(residual_sum(b, &resid_mid, &mlp_out, layer, "hook_resid_post"))
    }

    /// The weight of decoder layer `layer`'s RMSNorm `norm`, as the family scales it.
    fn layer_norm_weight(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        layer: usize,
        norm: &str,
    ) -> Result<String> {
        let key = format!("layers.{layer}.{norm}.weight");
        self.norm_weight(b, ckpt, &key, &format!("model.{key}"))
    }

    /// A block's output as the hook `site` of `layer`: through the post norm `norm` where the
    /// family has post norms (Gemma 2/3), else as it is.
    fn block_output(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        layer: usize,
        norm: &str,
        block: &str,
        site: &str,
    ) -> Result<String> {
        if !self.family.post_norms {
            return Ok(hook_identity(b, block, layer, site));
        }
        let w = self.layer_norm_weight(b, ckpt, layer, norm)?;
        b.scoped(norm, |b| {
            Ok(self.rms_norm_named(b, block, &w, &hook_name(layer, site)))
        })
    }

    fn attention(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        inputs: &LayerInputs,
        layer: usize,
        x: &str,
    ) -> Result<String> {
        let c = self.config;
        let dt = self.dtype;
        let (heads, kv_heads, head_dim) = self.head_counts();
        let proj = |b: &mut ExportBuilder, name: &str| -> Result<String> {
            let full = format!("model.layers.{layer}.self_attn.{name}.weight");
            b.weight(
                &full,
                &ckpt.get(&PREFIXES, &format!("layers.{layer}.self_attn.{name}.weight"))?,
                dt,
            )
        };
        let (wq, wk, wv, wo) = (
            proj(b, "q_proj")?,
            proj(b, "k_proj")?,
            proj(b, "v_proj")?,
            proj(b, "o_proj")?,
        );
        let bias = |b: &mut ExportBuilder, name: &str| -> Result<Option<String>> {
            if !self.family.qkv_bias {
                return Ok(None);
            }
            let full = format!("model.layers.{layer}.self_attn.{name}.bias");
            let view = ckpt.get(&PREFIXES, &format!("layers.{layer}.self_attn.{name}.bias"))?;
            Ok(Some(b.weight(&full, &view, dt)?))
        };
        let (bq, bk, bv) = (bias(b, "q_proj")?, bias(b, "k_proj")?, bias(b, "v_proj")?);
        let (q_width, kv_width) = ((heads * head_dim) as usize, (kv_heads * head_dim) as usize);
        let q = b.scoped("q_proj", |b| {
            Ok(self.linear(b, x, &wq, bq.as_deref(), (c.hidden_size, q_width), inputs))
        })?;
        let k = b.scoped("k_proj", |b| {
            Ok(self.linear(b, x, &wk, bk.as_deref(), (c.hidden_size, kv_width), inputs))
        })?;
        let v = b.scoped("v_proj", |b| {
            Ok(self.linear(b, x, &wv, bv.as_deref(), (c.hidden_size, kv_width), inputs))
        })?;
        let qk_norms = if self.family.qk_norms {
            let wqn = self.norm_weight(
                b,
                ckpt,
                &format!("layers.{layer}.self_attn.q_norm.weight"),
                &format!("model.layers.{layer}.self_attn.q_norm.weight"),
            )?;
            let wkn = self.norm_weight(
                b,
                ckpt,
                &format!("layers.{layer}.self_attn.k_norm.weight"),
                &format!("model.layers.{layer}.self_attn.k_norm.weight"),
            )?;
            Some((wqn, wkn))
        } else {
            None
        };
        let z = self.attention_core(b, inputs, layer, (&q, &k, &v), qk_norms)?;
        b.scoped("o_proj", |b| {
            Ok(self.linear(b, &z, &wo, None, (q_width, c.hidden_size), inputs))
        })
    }

    /// `attn.hook_z` (`[batch, seq, heads*head_dim]`) from the projected q, k and v: GroupQueryAttention
    /// or standard operators (see [`Self::fused_attention`]).
    pub(super) fn attention_core(
        &self,
        b: &mut ExportBuilder,
        inputs: &LayerInputs,
        layer: usize,
        qkv: (&str, &str, &str),
        qk_norms: Option<(String, String)>,
    ) -> Result<String> {
        if self.fused_attention() {
            self.attention_gqa(b, inputs, layer, qkv, qk_norms)
        } else {
            self.attention_portable(b, inputs, layer, qkv, qk_norms)
        }
    }

    /// Whether q and k are rotated (RoPE); GPT-2 adds learned positions to the embeddings instead.
    fn rotary(&self) -> bool {
        self.family.layout == Layout::Rotary
    }

    /// Query heads, key/value heads and head size, as ONNX shape values.
    fn head_counts(&self) -> (i64, i64, i64) {
        let c = self.config;
        (
            c.num_attention_heads as i64,
            c.kv_heads() as i64,
            c.head_dim() as i64,
        )
    }

    /// Whether attention runs as GroupQueryAttention: in the `ort` profile, unless the model
    /// softcaps attention scores (Gemma 2). GroupQueryAttention's `softcap` computes what
    /// transformers does (checked on ONNX Runtime 1.31.1: `cap·tanh(scale·q·kᵀ/cap)`, then the
    /// bias, then softmax), but its CPU kernel came out no faster than the standard operators
    /// with it: attention of a random 8-layer Gemma 2 (8 heads of 64, batch 4, one thread) took
    /// 54 ms against 30 at 128 tokens and 583 against 549 at 512. Without softcap (Gemma 3) it
    /// is faster: 30 against 34 ms, and 329 against 416. Float32 graphs only: the CUDA
    /// provider's kernel, the one half precision runs on, rejects the padding mask's bias.
    fn fused_attention(&self) -> bool {
        self.ops == Ops::Ort
            && self.dtype == DataType::Float
            && self.family.attention_softcap.is_none()
            && !self.kv_cache
    }

    /// The additive mask of `layer`: causal, or causal within its sliding window; padding hidden.
    fn attention_bias(&self, inputs: &LayerInputs, layer: usize) -> Result<String> {
        let window = self.config.layer_attention(self.arch, layer).sliding_window;
        match (window, &inputs.sliding_bias) {
            (Some(w), Some((sw, bias))) if w == *sw => Ok(bias.clone()),
            (Some(w), _) => anyhow::bail!("layer {layer}: sliding window {w} differs from the other layers'"),
            (None, _) => Ok(inputs.causal_bias.clone()),
        }
    }

    /// Attention in standard operators, as transformers' eager path computes it. Returns
    /// `attn.hook_z` (`[batch, seq, heads*head_dim]`).
    fn attention_portable(
        &self,
        b: &mut ExportBuilder,
        inputs: &LayerInputs,
        layer: usize,
        (q, k, v): (&str, &str, &str),
        qk_norms: Option<(String, String)>,
    ) -> Result<String> {
        let (heads, kv_heads, head_dim) = self.head_counts();
        let layer_attention = self.config.layer_attention(self.arch, layer);
        let mut q = split_heads(b, inputs, q, heads, head_dim);
        let mut k = split_heads(b, inputs, k, kv_heads, head_dim);
        let v = split_heads(b, inputs, v, kv_heads, head_dim);
        if let Some((wqn, wkn)) = qk_norms {
            q = b.scoped("q_norm", |b| Ok(self.rms_norm(b, &q, &wqn)))?;
            k = b.scoped("k_norm", |b| Ok(self.rms_norm(b, &k, &wkn)))?;
        }
        if self.rotary() {
            let (cos, sin) = b.scoped("rotary_emb", |b| {
                self.rope_tables(b, inputs, &layer_attention.rope, RopeLayout::Full)
            })?;
            q = b.scoped("rope_q", |b| Ok(apply_rope(b, &q, &cos, &sin, head_dim)))?;
            k = b.scoped("rope_k", |b| Ok(apply_rope(b, &k, &cos, &sin, head_dim)))?;
        }
        let (k, v) = if self.kv_cache {
            append_to_cache(b, layer, &k, &v)
        } else {
            (k, v)
        };
        let (k, v) = if heads == kv_heads {
            (k, v)
        } else {
            let repeat = |b: &mut ExportBuilder, t: &str| {
                let t = b.op("Unsqueeze", &[t, &b.const_i64(&[2])], vec![]);
                let t = b.op(
                    "Expand",
                    &[&t, &b.const_i64(&[1, 1, heads / kv_heads, 1, 1])],
                    vec![],
                );
                b.op("Reshape", &[&t, &b.const_i64(&[0, heads, -1, head_dim])], vec![])
            };
            (repeat(b, &k), repeat(b, &v))
        };
        let probs = self.attention_probs(b, inputs, layer, &q, &k)?;
        let context = b.op("MatMul", &[&probs, &v], vec![]);
        let context = b.op(
            "Transpose",
            &[&context],
            vec![("perm", AttrValue::Ints(vec![0, 2, 1, 3]))],
        );
        let z_shape = b.op(
            "Concat",
            &[&inputs.batch_seq, &b.const_i64(&[heads * head_dim])],
            vec![("axis", AttrValue::Int(0))],
        );
        Ok(b.op_named(
            "Reshape",
            &[&context, &z_shape],
            vec![],
            &hook_name(layer, "attn.hook_z"),
        ))
    }

    /// `softmax(scale·q·kᵀ (softcapped) + bias)`, the softmax in float32 as transformers computes
    /// it, then back to the model dtype.
    fn attention_probs(
        &self,
        b: &mut ExportBuilder,
        inputs: &LayerInputs,
        layer: usize,
        q: &str,
        k: &str,
    ) -> Result<String> {
        let dt = self.dtype;
        let kt = b.op(
            "Transpose",
            &[k],
            vec![("perm", AttrValue::Ints(vec![0, 1, 3, 2]))],
        );
        let scores = b.op("MatMul", &[q, &kt], vec![]);
        let scale = b.const_scalar(self.family.attention_scale as f32, dt);
        let mut scores = b.op("Mul", &[&scores, &scale], vec![]);
        if let Some(cap) = self.family.attention_softcap {
            scores = self.softcap(b, &scores, cap as f32);
        }
        let bias = self.attention_bias(inputs, layer)?;
        let scores = b.op("Add", &[&scores, &bias], vec![]);
        Ok(if dt == DataType::Float {
            b.op("Softmax", &[&scores], vec![("axis", AttrValue::Int(-1))])
        } else {
            let s32 = b.op(
                "Cast",
                &[&scores],
                vec![("to", AttrValue::Int(DataType::Float as i64))],
            );
            let p = b.op("Softmax", &[&s32], vec![("axis", AttrValue::Int(-1))]);
            b.op("Cast", &[&p], vec![("to", AttrValue::Int(dt as i64))])
        })
    }

    /// Attention as one `com.microsoft.GroupQueryAttention` on `[batch, seq, n*head_dim]`
    /// projections (see the module notes for why it equals transformers' eager attention).
    /// Returns `attn.hook_z`, the operator's output.
    fn attention_gqa(
        &self,
        b: &mut ExportBuilder,
        inputs: &LayerInputs,
        layer: usize,
        (q, k, v): (&str, &str, &str),
        qk_norms: Option<(String, String)>,
    ) -> Result<String> {
        let c = self.config;
        let (heads, kv_heads, head_dim) = self.head_counts();
        let layer_attention = c.layer_attention(self.arch, layer);
        let (mut q, mut k) = (q.to_owned(), k.to_owned());
        // Gemma 3 norms each head: [batch, seq, n*head_dim] -> [batch, seq, n, head_dim] and back.
        let per_head = |b: &mut ExportBuilder, t: &str, n: i64| {
            b.op("Reshape", &[t, &b.const_i64(&[0, 0, n, head_dim])], vec![])
        };
        let merge_heads = |b: &mut ExportBuilder, t: &str, n: i64| {
            b.op("Reshape", &[t, &b.const_i64(&[0, 0, n * head_dim])], vec![])
        };
        if let Some((wqn, wkn)) = qk_norms {
            q = b.scoped("q_norm", |b| {
                let t = per_head(b, &q, heads);
                let t = self.rms_norm(b, &t, &wqn);
                Ok(merge_heads(b, &t, heads))
            })?;
            k = b.scoped("k_norm", |b| {
                let t = per_head(b, &k, kv_heads);
                let t = self.rms_norm(b, &t, &wkn);
                Ok(merge_heads(b, &t, kv_heads))
            })?;
        }
        let rope = &layer_attention.rope;
        let rotary_inside = self.rotary() && c.head_dim().is_multiple_of(GQA_ROTARY_MULTIPLE);
        let (cos, sin) = if !self.rotary() {
            (String::new(), String::new())
        } else if rotary_inside {
            b.scoped("rotary_emb", |b| {
                self.rope_tables(b, inputs, rope, RopeLayout::Half)
            })?
        } else {
            let (cos, sin) = b.scoped("rotary_emb", |b| {
                self.rope_tables(b, inputs, rope, RopeLayout::FullPerHead)
            })?;
            q = b.scoped("rope_q", |b| {
                let t = per_head(b, &q, heads);
                let t = apply_rope(b, &t, &cos, &sin, head_dim);
                Ok(merge_heads(b, &t, heads))
            })?;
            k = b.scoped("rope_k", |b| {
                let t = per_head(b, &k, kv_heads);
                let t = apply_rope(b, &t, &cos, &sin, head_dim);
                Ok(merge_heads(b, &t, kv_heads))
            })?;
            (String::new(), String::new())
        };
        let (seqlens_k, total) = inputs
            .gqa_lengths
            .as_ref()
            .expect("the ort profile makes GroupQueryAttention lengths");
        let bias = self.attention_bias(inputs, layer)?;
        let mut attrs = vec![
            ("num_heads", AttrValue::Int(heads)),
            ("kv_num_heads", AttrValue::Int(kv_heads)),
            ("scale", AttrValue::Float(self.family.attention_scale as f32)),
            ("do_rotary", AttrValue::Int(rotary_inside.into())),
        ];
        debug_assert!(self.family.attention_softcap.is_none(), "see fused_attention");
        if let Some(window) = layer_attention.sliding_window {
            // The bias hides keys outside the window too; the kernel then skips them.
            attrs.push(("local_window_size", AttrValue::Int(window as i64)));
        }
        let z = hook_name(layer, "attn.hook_z");
        // Inputs: query, key, value, past_key, past_value, seqlens_k, total_sequence_length,
        // cos_cache, sin_cache, position_ids, attention_bias.
        let outputs = b.op_ms(
            "GroupQueryAttention",
            &[&q, &k, v, "", "", seqlens_k, total, &cos, &sin, "", &bias],
            attrs,
            &[Some(z.as_str())],
        );
        Ok(outputs.into_iter().next().expect("one output"))
    }

    fn mlp(
        &self,
        b: &mut ExportBuilder,
        ckpt: &Checkpoint,
        inputs: &LayerInputs,
        layer: usize,
        x: &str,
    ) -> Result<String> {
        let c = self.config;
        let proj = |b: &mut ExportBuilder, name: &str| -> Result<String> {
            let full = format!("model.layers.{layer}.mlp.{name}.weight");
            b.weight(
                &full,
                &ckpt.get(&PREFIXES, &format!("layers.{layer}.mlp.{name}.weight"))?,
                self.dtype,
            )
        };
        let (wg, wu, wd) = (proj(b, "gate_proj")?, proj(b, "up_proj")?, proj(b, "down_proj")?);
        let gate = b.scoped("gate_proj", |b| {
            Ok(self.linear(b, x, &wg, None, (c.hidden_size, c.intermediate_size), inputs))
        })?;
        let up = b.scoped("up_proj", |b| {
            Ok(self.linear(b, x, &wu, None, (c.hidden_size, c.intermediate_size), inputs))
        })?;
        let act = b.scoped("act_fn", |b| {
            let gelu = |b: &mut ExportBuilder, approximate: &str| {
                b.op(
                    "Gelu",
                    &[&gate],
                    vec![("approximate", AttrValue::String(approximate.into()))],
                )
            };
            Ok(match self.family.activation {
                Activation::GeluTanh => gelu(b, "tanh"),
                Activation::GeluExact => gelu(b, "none"),
                Activation::Silu => {
                    // Opset 21 has no Silu/Swish: x·sigmoid(x), as torch computes it.
                    let sigmoid = b.op("Sigmoid", &[&gate], vec![]);
                    b.op("Mul", &[&gate, &sigmoid], vec![])
                }
            })
        })?;
        let hidden = b.op("Mul", &[&act, &up], vec![]);
        b.scoped("down_proj", |b| {
            Ok(self.linear(
                b,
                &hidden,
                &wd,
                None,
                (c.intermediate_size, c.hidden_size),
                inputs,
            ))
        })
    }

    /// `x @ W^T (+ bias)` for an HF Linear weight `W [out, in]`, as Gemm(transB=1) on
    /// `[batch*seq, in]`, so weights are stored exactly as the checkpoint has them (no transposed copy).
    fn linear(
        &self,
        b: &mut ExportBuilder,
        x: &str,
        w: &str,
        bias: Option<&str>,
        (d_in, d_out): (usize, usize),
        inputs: &LayerInputs,
    ) -> String {
        let flat = b.op("Reshape", &[x, &b.const_i64(&[-1, d_in as i64])], vec![]);
        let operands: Vec<&str> = [flat.as_str(), w].into_iter().chain(bias).collect();
        let y = b.op("Gemm", &operands, vec![("transB", AttrValue::Int(1))]);
        let shape = b.op(
            "Concat",
            &[&inputs.batch_seq, &b.const_i64(&[d_out as i64])],
            vec![("axis", AttrValue::Int(0))],
        );
        b.op("Reshape", &[&y, &shape], vec![])
    }

    /// An RMSNorm's scale: Gemma's `(1 + w)` in float32, else `w` in the model dtype.
    fn norm_weight(&self, b: &mut ExportBuilder, ckpt: &Checkpoint, key: &str, name: &str) -> Result<String> {
        let w = ckpt.get(&PREFIXES, key)?;
        if self.family.norm_scale == NormScale::Weight {
            return b.weight(name, &w, self.dtype);
        }
        let mut values = Vec::new();
        super::weights::convert(&w.data, w.dtype, DataType::Float, &mut values)?;
        let plus_one: Vec<f32> = values
            .chunks_exact(4)
            .map(|c| 1.0 + f32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect();
        b.computed(&format!("{name}+1"), DataType::Float, &w.shape, &plus_one)
    }

    fn rms_norm(&self, b: &mut ExportBuilder, x: &str, scale: &str) -> String {
        self.rms_norm_impl(b, x, scale, None)
    }

    fn rms_norm_named(&self, b: &mut ExportBuilder, x: &str, scale: &str, name: &str) -> String {
        self.rms_norm_impl(b, x, scale, Some(name))
    }

    /// transformers: Gemma `x.float() * rsqrt(mean(x²) + eps) * (1 + w.float())`, then back to
    /// x's dtype; Llama-like `w * (x.float() * rsqrt(mean(x²) + eps)).to(dtype)`. Both are one
    /// float32 product in float32 graphs.
    fn rms_norm_impl(&self, b: &mut ExportBuilder, x: &str, scale: &str, name: Option<&str>) -> String {
        let dt = self.dtype;
        let xf = if dt == DataType::Float {
            x.to_owned()
        } else {
            b.op("Cast", &[x], vec![("to", AttrValue::Int(DataType::Float as i64))])
        };
        if self.family.norm_scale == NormScale::Weight && dt != DataType::Float {
            // The weight multiplies after the cast, which no fused kernel does.
            let normed = self.rms_normalize(b, &xf);
            let normed = b.op("Cast", &[&normed], vec![("to", AttrValue::Int(dt as i64))]);
            return match name {
                Some(name) => b.op_named("Mul", &[&normed, scale], vec![], name),
                None => b.op("Mul", &[&normed, scale], vec![]),
            };
        }
        if self.ops == Ops::Ort {
            // ONNX Runtime's RMSNorm kernel (default domain, registered by ONNX Runtime).
            let attrs = || {
                vec![
                    ("axis", AttrValue::Int(-1)),
                    ("epsilon", AttrValue::Float(self.config.rms_norm_eps as f32)),
                    ("stash_type", AttrValue::Int(1)),
                ]
            };
            return match (dt == DataType::Float, name) {
                (true, Some(name)) => {
                    b.op_named("SimplifiedLayerNormalization", &[&xf, scale], attrs(), name)
                }
                (true, None) => b.op("SimplifiedLayerNormalization", &[&xf, scale], attrs()),
                (false, name) => {
                    let normed = b.op("SimplifiedLayerNormalization", &[&xf, scale], attrs());
                    let to = vec![("to", AttrValue::Int(dt as i64))];
                    match name {
                        Some(name) => b.op_named("Cast", &[&normed], to, name),
                        None => b.op("Cast", &[&normed], to),
                    }
                }
            };
        }
        let normed = self.rms_normalize(b, &xf);
        match (dt == DataType::Float, name) {
            (true, Some(name)) => b.op_named("Mul", &[&normed, scale], vec![], name),
            (true, None) => b.op("Mul", &[&normed, scale], vec![]),
            (false, name) => {
                let scaled = b.op("Mul", &[&normed, scale], vec![]);
                let to = vec![("to", AttrValue::Int(dt as i64))];
                match name {
                    Some(name) => b.op_named("Cast", &[&scaled], to, name),
                    None => b.op("Cast", &[&scaled], to),
                }
            }
        }
    }

    /// `x * rsqrt(mean(x²) + eps)` of a float32 `x`, in standard operators.
    fn rms_normalize(&self, b: &mut ExportBuilder, xf: &str) -> String {
        let square = b.op("Mul", &[xf, xf], vec![]);
        let mean = b.op(
            "ReduceMean",
            &[&square, &b.const_i64(&[-1])],
            vec![("keepdims", AttrValue::Int(1))],
        );
        let eps = b.const_scalar(self.config.rms_norm_eps as f32, DataType::Float);
        let var = b.op("Add", &[&mean, &eps], vec![]);
        let root = b.op("Sqrt", &[&var], vec![]);
        let inv = b.op("Reciprocal", &[&root], vec![]);
        b.op("Mul", &[xf, &inv], vec![])
    }

    /// `cap * tanh(x / cap)`.
    fn softcap(&self, b: &mut ExportBuilder, x: &str, cap: f32) -> String {
        let cap = b.const_scalar(cap, self.dtype);
        let scaled = b.op("Div", &[x, &cap], vec![]);
        let squashed = b.op("Tanh", &[&scaled], vec![]);
        b.op("Mul", &[&squashed, &cap], vec![])
    }

    /// cos and sin for positions 0..seq, as transformers computes them in float32, laid out
    /// for their consumer.
    fn rope_tables(
        &self,
        b: &mut ExportBuilder,
        inputs: &LayerInputs,
        rope: &Rope,
        layout: RopeLayout,
    ) -> Result<(String, String)> {
        let head_dim = self.config.head_dim();
        let inv_freq = rope.inv_freq(head_dim);
        let key = (inv_freq.iter().map(|f| f.to_bits()).collect(), layout);
        if let Some(tables) = inputs.rope.borrow().get(&key) {
            return Ok(tables.clone());
        }
        let index = inputs.rope.borrow().len();
        let inv_freq = b.computed(
            &format!("model.rotary_emb_{index}.inv_freq"),
            DataType::Float,
            &[head_dim / 2],
            &inv_freq,
        )?;
        let freqs = b.op("Mul", &[&inputs.positions, &inv_freq], vec![]);
        let emb = match layout {
            RopeLayout::Half => freqs,
            RopeLayout::Full if self.kv_cache => {
                // [batch, seq, head_dim] -> [batch, 1, seq, head_dim] against [batch, heads, seq, head_dim].
                let emb = b.op("Concat", &[&freqs, &freqs], vec![("axis", AttrValue::Int(-1))]);
                b.op("Unsqueeze", &[&emb, &b.const_i64(&[1])], vec![])
            }
            RopeLayout::Full => b.op("Concat", &[&freqs, &freqs], vec![("axis", AttrValue::Int(-1))]),
            RopeLayout::FullPerHead => {
                let emb = b.op("Concat", &[&freqs, &freqs], vec![("axis", AttrValue::Int(-1))]);
                b.op("Unsqueeze", &[&emb, &b.const_i64(&[1])], vec![])
            }
        };
        let (mut cos, mut sin) = (b.op("Cos", &[&emb], vec![]), b.op("Sin", &[&emb], vec![]));
        if self.dtype != DataType::Float {
            let to = || vec![("to", AttrValue::Int(self.dtype as i64))];
            (cos, sin) = (b.op("Cast", &[&cos], to()), b.op("Cast", &[&sin], to()));
        }
        inputs.rope.borrow_mut().insert(key, (cos.clone(), sin.clone()));
        Ok((cos, sin))
    }
}

/// RoPE positions as float32, `[seq, 1]` or `[batch, seq, 1]`, from [`LayerInputs::position_ids`].
fn rope_positions(b: &mut ExportBuilder, position_ids: &str) -> String {
    let positions_f32 = b.op(
        "Cast",
        &[position_ids],
        vec![("to", AttrValue::Int(DataType::Float as i64))],
    );
    b.op("Unsqueeze", &[&positions_f32, &b.const_i64(&[-1])], vec![])
}

/// `[batch, seq, n*head_dim]` -> `[batch, n, seq, head_dim]`.
fn split_heads(b: &mut ExportBuilder, inputs: &LayerInputs, t: &str, n: i64, head_dim: i64) -> String {
    let shape = b.op(
        "Concat",
        &[&inputs.batch_seq, &b.const_i64(&[n, head_dim])],
        vec![("axis", AttrValue::Int(0))],
    );
    let t = b.op("Reshape", &[t, &shape], vec![]);
    b.op(
        "Transpose",
        &[&t],
        vec![("perm", AttrValue::Ints(vec![0, 2, 1, 3]))],
    )
}

/// The layer's keys (after RoPE) and values after the cached ones, `[batch, kv_heads, positions,
/// head_dim]`: the decoding graph's `present` outputs.
fn append_to_cache(b: &mut ExportBuilder, layer: usize, k: &str, v: &str) -> (String, String) {
    let axis = || vec![("axis", AttrValue::Int(2))];
    (
        b.op_named(
            "Concat",
            &[&past_name(layer, "key"), k],
            axis(),
            &present_name(layer, "key"),
        ),
        b.op_named(
            "Concat",
            &[&past_name(layer, "value"), v],
            axis(),
            &present_name(layer, "value"),
        ),
    )
}

/// `x * cos + rotate_half(x) * sin`, with `rotate_half(x) = cat(-x2, x1)`.
fn apply_rope(b: &mut ExportBuilder, x: &str, cos: &str, sin: &str, head_dim: i64) -> String {
    let half = head_dim / 2;
    let x1 = b.op(
        "Slice",
        &[x, &b.const_i64(&[0]), &b.const_i64(&[half]), &b.const_i64(&[-1])],
        vec![],
    );
    let x2 = b.op(
        "Slice",
        &[
            x,
            &b.const_i64(&[half]),
            &b.const_i64(&[head_dim]),
            &b.const_i64(&[-1]),
        ],
        vec![],
    );
    let neg = b.op("Neg", &[&x2], vec![]);
    let rotated = b.op("Concat", &[&neg, &x1], vec![("axis", AttrValue::Int(-1))]);
    let a = b.op("Mul", &[x, cos], vec![]);
    let r = b.op("Mul", &[&rotated, sin], vec![]);
    b.op("Add", &[&a, &r], vec![])
}

/// The most negative finite value of `dtype`, which transformers adds for masked positions.
fn dtype_min(dtype: DataType) -> f32 {
    match dtype {
        DataType::Float16 => half::f16::MIN.to_f32(),
        DataType::Bfloat16 => half::bf16::MIN.to_f32(),
        _ => f32::MIN,
    }
}
