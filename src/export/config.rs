//! `config.json` of the families we export, with Hugging Face's field names (as candle does), and
//! the per-layer facts transformers derives from it: attention kind, RoPE base and scaling. What
//! each family makes of the rest is in its own file (gemma.rs, llama.rs, qwen.rs, gpt2.rs; GPT-2's
//! own field names are translated to these by gpt2_config.rs).

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

use super::family::Family;
use super::weights::{Checkpoint, PREFIXES};

/// config.json is a few kilobytes; a bound keeps a wrong path (`/dev/zero`) from filling memory.
const CONFIG_MAX_BYTES: u64 = 16 << 20;
/// The largest size any config field may give (ONNX shapes are int64; products of two such
/// sizes must not overflow).
const MAX_SIZE: usize = i32::MAX as usize;

/// The architectures we export, from `config.json`'s `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gemma,
    Gemma2,
    Gemma3,
    Llama,
    Mistral,
    Qwen2,
    Qwen3,
    Gpt2,
}

pub const SUPPORTED: &str = "GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, \
     Gemma3ForConditionalGeneration (its text model), LlamaForCausalLM, MistralForCausalLM, \
     Qwen2ForCausalLM, Qwen3ForCausalLM, GPT2LMHeadModel";

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gemma => "GemmaForCausalLM",
            Self::Gemma2 => "Gemma2ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
            Self::Llama => "LlamaForCausalLM",
            Self::Mistral => "MistralForCausalLM",
            Self::Qwen2 => "Qwen2ForCausalLM",
            Self::Qwen3 => "Qwen3ForCausalLM",
            Self::Gpt2 => "GPT2LMHeadModel",
        }
    }

    fn from_hf_name(name: &str) -> Option<Self> {
        Some(match name {
            "GemmaForCausalLM" => Self::Gemma,
            "Gemma2ForCausalLM" => Self::Gemma2,
            "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => Self::Gemma3,
            "LlamaForCausalLM" => Self::Llama,
            "MistralForCausalLM" => Self::Mistral,
            "Qwen2ForCausalLM" => Self::Qwen2,
            "Qwen3ForCausalLM" => Self::Qwen3,
            "GPT2LMHeadModel" => Self::Gpt2,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub factor: Option<f64>,
    /// `llama3` scaling's bands and the context length it was trained at.
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub original_max_position_embeddings: Option<f64>,
}

/// The `rope_scaling` types the graph builds (transformers' `ROPE_INIT_FUNCTIONS` names).
const ROPE_TYPES: &str = "default, linear, llama3";

impl RopeScaling {
    fn kind(&self) -> &str {
        self.rope_type
            .as_deref()
            .or(self.legacy_type.as_deref())
            .unwrap_or("default")
    }
}

/// How a layer's rotary inverse frequencies are computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rope {
    pub base: f64,
    pub scaling: RopeKind,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeKind {
    /// Linear scaling divides the inverse frequencies by this factor (1: none).
    Linear(f64),
    /// Llama 3.1's: low frequencies divided by `factor`, high ones kept, a smooth blend between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

impl Rope {
    /// The `head_dim / 2` inverse frequencies in float32, as transformers' rope init functions
    /// compute them.
    pub fn inv_freq(&self, head_dim: usize) -> Vec<f32> {
        let base = self.base as f32;
        let plain = (0..head_dim)
            .step_by(2)
            .map(move |i| 1.0 / base.powf(i as f32 / head_dim as f32));
        match self.scaling {
            RopeKind::Linear(factor) => plain.map(|f| f / factor as f32).collect(),
            RopeKind::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings: context,
            } => {
                let (factor, low, high, context) = (
                    factor as f32,
                    low_freq_factor as f32,
                    high_freq_factor as f32,
                    context as f32,
                );
                let (low_freq_wavelen, high_freq_wavelen) = (context / low, context / high);
                plain
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_freq_wavelen {
                            f / factor
                        } else if wavelen < high_freq_wavelen {
                            f
                        } else {
                            let smooth = (context / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
        }
    }
}

/// The text-model fields we read. Names are exactly those of config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// GPT-2's LayerNorm epsilon (its config's own name; gpt2.rs sets its default).
    #[serde(default)]
    pub layer_norm_epsilon: Option<f64>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_local_base_freq: Option<f64>,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub query_pre_attn_scalar: Option<f64>,
    #[serde(default)]
    pub attn_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub final_logit_softcapping: Option<f64>,
    #[serde(default)]
    pub sliding_window: Option<usize>,
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default)]
    pub sliding_window_pattern: Option<usize>,
    #[serde(default)]
    pub hidden_activation: Option<String>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    /// transformers' default differs by family (Gemma: true, Llama/Mistral/Qwen: false).
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub max_window_layers: Option<usize>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f64>,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
}

/// Whether the architecture's attention uses RoPE (GPT-2 learns absolute positions instead).
fn arch_rotates(arch: Arch) -> bool {
    arch != Arch::Gpt2
}

fn default_max_positions() -> usize {
    8192
}
fn default_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}

/// How one decoder layer attends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    /// `Some(w)`: each query sees only the last `w` keys (itself included).
    pub sliding_window: Option<usize>,
    pub rope: Rope,
}

impl Config {
    /// Reads `config.json`; for Gemma3ForConditionalGeneration, its `text_config`.
    pub fn load(path: &Path) -> Result<(Self, Arch)> {
        let text = crate::files::read_text(path, "model config", CONFIG_MAX_BYTES)?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))?;
        let architectures: Vec<String> = value
            .get("architectures")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let arch = match architectures.first().map(String::as_str) {
            Some(name) if Arch::from_hf_name(name).is_some() => Arch::from_hf_name(name).expect("matched"),
            Some(other) => bail!(
                "'{}': architecture {} is not supported; sae-onnx exports {SUPPORTED}",
                path.display(),
                crate::files::printable(other, 100)
            ),
            None => bail!(
                "'{}' names no `architectures`; sae-onnx exports {SUPPORTED}",
                path.display()
            ),
        };
        let mut text_value = match value.get("text_config") {
            Some(text_config) if architectures[0] == "Gemma3ForConditionalGeneration" => text_config.clone(),
            _ => value,
        };
        if arch == Arch::Gpt2 {
            super::gpt2_config::translate_config(&mut text_value)
                .with_context(|| format!("in '{}'", path.display()))?;
        }
        let mut config: Config = serde_json::from_value(text_value).with_context(|| {
            format!(
                "'{}' is not a {} config: a field is missing or not of its type",
                path.display(),
                arch.hf_name()
            )
        })?;
        config.architectures = architectures;
        config
            .validate(arch)
            .with_context(|| format!("in '{}'", path.display()))?;
        Ok((config, arch))
    }

    /// Every value the graph divides by, indexes with or multiplies into a shape is checked here,
    /// so a bad config.json is an error naming the field and not a panic or a graph that fails
    /// inside ONNX Runtime.
    fn validate(&self, arch: Arch) -> Result<()> {
        self.validate_sizes(arch)?;
        self.validate_scalars()?;
        self.validate_layers(arch)
    }

    /// Sizes are at least 1 and at most [`MAX_SIZE`], and the heads split the model evenly.
    fn validate_sizes(&self, arch: Arch) -> Result<()> {
        let sizes = [
            ("vocab_size", Some(self.vocab_size)),
            ("hidden_size", Some(self.hidden_size)),
            ("intermediate_size", Some(self.intermediate_size)),
            ("num_hidden_layers", Some(self.num_hidden_layers)),
            ("num_attention_heads", Some(self.num_attention_heads)),
            ("max_position_embeddings", Some(self.max_position_embeddings)),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("sliding_window", self.sliding_window),
            ("sliding_window_pattern", self.sliding_window_pattern),
        ];
        for (field, value) in sizes {
            match value {
                Some(0) => bail!("{field} is 0; it must be at least 1"),
                Some(v) if v > MAX_SIZE => {
                    bail!("{field} is {v}, larger than any model sae-onnx exports (at most {MAX_SIZE})")
                }
                _ => {}
            }
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            bail!(
                "head_dim is missing and hidden_size {} is not a multiple of num_attention_heads {}; give head_dim",
                self.hidden_size,
                self.num_attention_heads
            );
        }
        if arch_rotates(arch) && !self.head_dim().is_multiple_of(2) {
            bail!(
                "head_dim {} is odd; rotary embeddings rotate pairs of dimensions",
                self.head_dim()
            );
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            );
        }
        Ok(())
    }

    /// Rotary bases, scalars and softcaps are positive and finite; the norm epsilon is >= 0.
    fn validate_scalars(&self) -> Result<()> {
        let positive = [
            ("rope_theta", Some(self.rope_theta)),
            ("rope_local_base_freq", self.rope_local_base_freq),
            ("query_pre_attn_scalar", self.query_pre_attn_scalar),
            ("attn_logit_softcapping", self.attn_logit_softcapping),
            ("final_logit_softcapping", self.final_logit_softcapping),
            (
                "rope_scaling.factor",
                self.rope_scaling.as_ref().and_then(|s| s.factor),
            ),
        ];
        for (field, value) in positive {
            if let Some(v) = value
                && !(v.is_finite() && v > 0.0)
            {
                bail!("{field} is {v}; it must be a positive number");
            }
        }
        for (field, eps) in [
            ("rms_norm_eps", Some(self.rms_norm_eps)),
            ("layer_norm_epsilon", self.layer_norm_epsilon),
        ] {
            if let Some(eps) = eps
                && !(eps.is_finite() && eps >= 0.0)
            {
                bail!("{field} is {eps}; it must be a number >= 0");
            }
        }
        Ok(())
    }

    /// The rotary scaling, sliding window and layer types are ones the graph builds.
    fn validate_layers(&self, arch: Arch) -> Result<()> {
        if let Some(scaling) = &self.rope_scaling {
            match scaling.kind() {
                "default" | "linear" => {}
                "llama3" => {
                    let fields = [
                        ("low_freq_factor", scaling.low_freq_factor),
                        ("high_freq_factor", scaling.high_freq_factor),
                        (
                            "original_max_position_embeddings",
                            scaling.original_max_position_embeddings,
                        ),
                        ("factor", scaling.factor),
                    ];
                    for (field, value) in fields {
                        match value {
                            Some(v) if v.is_finite() && v > 0.0 => {}
                            Some(v) => bail!("rope_scaling.{field} is {v}; it must be a positive number"),
                            None => bail!("rope_scaling type llama3 needs rope_scaling.{field}"),
                        }
                    }
                    if scaling.high_freq_factor <= scaling.low_freq_factor {
                        bail!("rope_scaling.high_freq_factor must be larger than low_freq_factor");
                    }
                }
                kind => bail!(
                    "rope_scaling type '{}' is not supported (sae-onnx builds {ROPE_TYPES})",
                    crate::files::printable(kind, 100)
                ),
            }
        }
        if let Some(factor) = self.partial_rotary_factor
            && factor != 1.0
        {
            bail!("partial_rotary_factor {factor} is not supported (only 1: every dimension rotates)");
        }
        // transformers' Llama and Mistral do not read layer_types: a config with them describes
        // another model (Mistral's alternating variant is Ministral).
        if matches!(arch, Arch::Llama | Arch::Mistral) && self.layer_types.is_some() {
            bail!(
                "a {} config with layer_types (per-layer attention kinds) is not supported: \
                 transformers' {} ignores them",
                arch.hf_name(),
                arch.hf_name()
            );
        }
        if arch != Arch::Gemma && self.uses_sliding_window(arch) && self.window(arch).is_none() {
            bail!(match arch {
                Arch::Qwen2 | Arch::Qwen3 => {
                    "layer_types has sliding_attention layers but use_sliding_window is not true \
                     (transformers' Qwen then has no window size): set use_sliding_window and sliding_window"
                }
                _ => "the config has sliding-window layers but no `sliding_window`",
            });
        }
        if let Some(types) = &self.layer_types {
            if types.len() != self.num_hidden_layers {
                bail!(
                    "layer_types has {} entries for {} layers",
                    types.len(),
                    self.num_hidden_layers
                );
            }
            if let Some(bad) = types
                .iter()
                .find(|t| !matches!(t.as_str(), "sliding_attention" | "full_attention"))
            {
                bail!(
                    "layer type '{}' is not supported",
                    crate::files::printable(bad, 100)
                );
            }
        }
        Ok(())
    }

    /// Checks the shape of every weight the export reads against what this config implies,
    /// before anything is written: a config that contradicts its checkpoint would otherwise
    /// export a graph that fails inside ONNX Runtime, or computes with the wrong head split.
    pub fn check_weights(&self, arch: Arch, family: &Family, ckpt: &Checkpoint, path: &Path) -> Result<()> {
        let (vocab, hidden, inter) = (self.vocab_size, self.hidden_size, self.intermediate_size);
        let (heads, kv, head_dim) = (self.num_attention_heads, self.kv_heads(), self.head_dim());
        // `validate` bounds every factor by MAX_SIZE, so these products fit in a usize.
        let (q_rows, kv_rows) = (heads * head_dim, kv * head_dim);
        let q_fields = "[num_attention_heads × head_dim, hidden_size]";
        let kv_fields = "[num_key_value_heads × head_dim, hidden_size]";
        // Checked one by one as they are named: num_hidden_layers may be huge, so no list of all.
        let check = |prefixes: &[&str], name: &str, want: &[usize], fields: &str| -> Result<()> {
            let Some(found) = ckpt.find(prefixes, name) else {
                bail!(
                    "the checkpoint ({}) has no tensor '{name}' (looked for it under {prefixes:?}), which a {} \
                     with {} layers has; is '{}' the config of this checkpoint?",
                    ckpt.file_names(),
                    arch.hf_name(),
                    self.num_hidden_layers,
                    path.display()
                );
            };
            if found.shape != want {
                let hint = match (self.num_key_value_heads, self.head_dim) {
                    (None, _) if fields == kv_fields => {
                        " (num_key_value_heads is missing, so it was taken as num_attention_heads; set it)"
                    }
                    (_, None) if fields.contains("head_dim") => {
                        " (head_dim is missing, so it was taken as hidden_size / num_attention_heads; set it)"
                    }
                    _ => "",
                };
                bail!(
                    "'{}' implies {fields} = {want:?} for '{}', but that tensor in '{}' has shape {:?}{hint}; \
                     the config does not describe this checkpoint",
                    path.display(),
                    found.name,
                    found.file.display(),
                    found.shape
                );
            }
            Ok(())
        };
        check(
            &PREFIXES,
            "embed_tokens.weight",
            &[vocab, hidden],
            "[vocab_size, hidden_size]",
        )?;
        check(&PREFIXES, "norm.weight", &[hidden], "[hidden_size]")?;
        if !family.tied_embeddings && (ckpt.contains("lm_head.weight") || !family.lm_head_optional) {
            check(
                &[""],
                "lm_head.weight",
                &[vocab, hidden],
                "[vocab_size, hidden_size]",
            )?;
        }
        let norms: &[&str] = if family.post_norms {
            &[
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ]
        } else {
            &["input_layernorm", "post_attention_layernorm"]
        };
        let up = "[intermediate_size, hidden_size]";
        for layer in 0..self.num_hidden_layers {
            let at = |name: &str, want: &[usize], fields: &str| {
                check(&PREFIXES, &format!("layers.{layer}.{name}.weight"), want, fields)
            };
            for norm in norms {
                at(norm, &[hidden], "[hidden_size]")?;
            }
            at("self_attn.q_proj", &[q_rows, hidden], q_fields)?;
            at("self_attn.k_proj", &[kv_rows, hidden], kv_fields)?;
            at("self_attn.v_proj", &[kv_rows, hidden], kv_fields)?;
            at(
                "self_attn.o_proj",
                &[hidden, q_rows],
                "[hidden_size, num_attention_heads × head_dim]",
            )?;
            if family.qk_norms {
                at("self_attn.q_norm", &[head_dim], "[head_dim]")?;
                at("self_attn.k_norm", &[head_dim], "[head_dim]")?;
            }
            if family.qkv_bias {
                let bias = |name: &str, want: &[usize], fields: &str| {
                    check(&PREFIXES, &format!("layers.{layer}.{name}.bias"), want, fields)
                };
                bias("self_attn.q_proj", &[q_rows], "[num_attention_heads × head_dim]")?;
                bias("self_attn.k_proj", &[kv_rows], "[num_key_value_heads × head_dim]")?;
                bias("self_attn.v_proj", &[kv_rows], "[num_key_value_heads × head_dim]")?;
            }
            at("mlp.gate_proj", &[inter, hidden], up)?;
            at("mlp.up_proj", &[inter, hidden], up)?;
            at(
                "mlp.down_proj",
                &[hidden, inter],
                "[hidden_size, intermediate_size]",
            )?;
        }
        Ok(())
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    fn uses_sliding_window(&self, arch: Arch) -> bool {
        (0..self.num_hidden_layers).any(|i| self.is_sliding(arch, i))
    }

    /// Whether layer `i` uses sliding-window attention: `layer_types` when given, else the
    /// model's default pattern (Gemma 2: even layers; Gemma 3: all but every `pattern`-th;
    /// Mistral: all layers when it has a window; Qwen: layers from `max_window_layers` on when
    /// `use_sliding_window`).
    fn is_sliding(&self, arch: Arch, i: usize) -> bool {
        if let Some(types) = &self.layer_types {
            return types.get(i).is_some_and(|t| t == "sliding_attention");
        }
        match arch {
            Arch::Gemma | Arch::Llama | Arch::Gpt2 => false,
            Arch::Gemma2 => i.is_multiple_of(2),
            Arch::Gemma3 => !(i + 1).is_multiple_of(self.sliding_window_pattern.unwrap_or(6)),
            Arch::Mistral => self.sliding_window.is_some(),
            Arch::Qwen2 | Arch::Qwen3 => {
                self.window(arch).is_some() && i >= self.max_window_layers.unwrap_or(28)
            }
        }
    }

    /// The sliding layers' window: `sliding_window`, which transformers' Qwen configs set to
    /// None unless `use_sliding_window` (released Qwen 2.5 configs give a window they do not use).
    fn window(&self, arch: Arch) -> Option<usize> {
        match arch {
            Arch::Qwen2 | Arch::Qwen3 if self.use_sliding_window != Some(true) => None,
            _ => self.sliding_window,
        }
    }

    /// The rotary scaling of `rope_scaling` (validated in `validate_layers`).
    fn rope_kind(&self) -> RopeKind {
        match &self.rope_scaling {
            Some(s) if s.kind() == "linear" => RopeKind::Linear(s.factor.unwrap_or(1.0)),
            Some(s) if s.kind() == "llama3" => RopeKind::Llama3 {
                factor: s.factor.unwrap_or(1.0),
                low_freq_factor: s.low_freq_factor.unwrap_or(1.0),
                high_freq_factor: s.high_freq_factor.unwrap_or(4.0),
                original_max_position_embeddings: s.original_max_position_embeddings.unwrap_or(8192.0),
            },
            _ => RopeKind::Linear(1.0),
        }
    }

    /// Attention facts of layer `i`. Gemma 3's sliding layers use the local RoPE base without
    /// scaling; its global layers use `rope_theta` with `rope_scaling`.
    pub fn layer_attention(&self, arch: Arch, i: usize) -> LayerAttention {
        let sliding = self.is_sliding(arch, i);
        match arch {
            Arch::Gemma3 if sliding => LayerAttention {
                sliding_window: self.sliding_window,
                rope: Rope {
                    base: self.rope_local_base_freq.unwrap_or(10000.0),
                    scaling: RopeKind::Linear(1.0),
                },
            },
            _ => LayerAttention {
                sliding_window: if sliding { self.window(arch) } else { None },
                rope: Rope {
                    base: self.rope_theta,
                    scaling: self.rope_kind(),
                },
            },
        }
    }
}
