//! `config.json` of the Gemma family, with Hugging Face's field names (as candle does), and the
//! per-layer facts transformers derives from it: attention kind, RoPE base and scaling.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// The architectures we export, from `config.json`'s `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    Gemma,
    Gemma2,
    Gemma3,
}

pub const SUPPORTED: &str =
    "GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3ForConditionalGeneration (its text model)";

impl Arch {
    pub fn hf_name(self) -> &'static str {
        match self {
            Self::Gemma => "GemmaForCausalLM",
            Self::Gemma2 => "Gemma2ForCausalLM",
            Self::Gemma3 => "Gemma3ForCausalLM",
        }
    }
}

/// GeGLU's gate activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    GeluTanh,
    GeluExact,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RopeScaling {
    pub rope_type: Option<String>,
    #[serde(rename = "type")]
    pub legacy_type: Option<String>,
    pub factor: Option<f64>,
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
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub torch_dtype: Option<String>,
    #[serde(default)]
    pub dtype: Option<String>,
    #[serde(default)]
    pub model_type: Option<String>,
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
fn default_true() -> bool {
    true
}

/// How one decoder layer attends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LayerAttention {
    /// `Some(w)`: each query sees only the last `w` keys (itself included).
    pub sliding_window: Option<usize>,
    pub rope_base: f64,
    /// Linear RoPE scaling divides the inverse frequencies by this factor.
    pub rope_linear_factor: f64,
}

impl Config {
    /// Reads `config.json`; for Gemma3ForConditionalGeneration, its `text_config`.
    pub fn load(path: &Path) -> Result<(Self, Arch)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read '{}'", path.display()))?;
        let value: serde_json::Value =
            serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))?;
        let architectures: Vec<String> = value
            .get("architectures")
            .and_then(|a| serde_json::from_value(a.clone()).ok())
            .unwrap_or_default();
        let arch = match architectures.first().map(String::as_str) {
            Some("GemmaForCausalLM") => Arch::Gemma,
            Some("Gemma2ForCausalLM") => Arch::Gemma2,
            Some("Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration") => Arch::Gemma3,
            Some(other) => bail!(
                "'{}': architecture {other} is not supported; sae-onnx exports {SUPPORTED}",
                path.display()
            ),
            None => bail!(
                "'{}' names no `architectures`; sae-onnx exports {SUPPORTED}",
                path.display()
            ),
        };
        let text_value = match value.get("text_config") {
            Some(text_config) if architectures[0] == "Gemma3ForConditionalGeneration" => text_config.clone(),
            _ => value,
        };
        let mut config: Config = serde_json::from_value(text_value).with_context(|| {
            format!(
                "'{}' lacks a field a {} config must have",
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

    fn validate(&self, arch: Arch) -> Result<()> {
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            bail!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            );
        }
        self.activation(arch)?;
        if let Some(scaling) = &self.rope_scaling {
            let kind = scaling
                .rope_type
                .as_deref()
                .or(scaling.legacy_type.as_deref())
                .unwrap_or("default");
            if !matches!(kind, "default" | "linear") {
                bail!("rope_scaling type '{kind}' is not supported (default and linear are)");
            }
        }
        if arch != Arch::Gemma && self.uses_sliding_window(arch) && self.sliding_window.is_none() {
            bail!("the config has sliding-window layers but no `sliding_window`");
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
                bail!("layer type '{bad}' is not supported");
            }
        }
        Ok(())
    }

    /// The MLP activation as transformers 4.57 picks it: Gemma 1 reads `hidden_act`, Gemma 2 and 3
    /// read `hidden_activation`.
    pub fn activation(&self, arch: Arch) -> Result<Activation> {
        let name = match arch {
            Arch::Gemma => self.hidden_act.as_deref(),
            Arch::Gemma2 | Arch::Gemma3 => self.hidden_activation.as_deref(),
        }
        .unwrap_or("gelu_pytorch_tanh");
        match name {
            "gelu_pytorch_tanh" => Ok(Activation::GeluTanh),
            "gelu" => Ok(Activation::GeluExact),
            other => bail!("activation '{other}' is not supported (Gemma uses gelu_pytorch_tanh)"),
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Attention scores are multiplied by this: `query_pre_attn_scalar^-0.5` (Gemma 2/3), else `head_dim^-0.5`.
    pub fn attention_scale(&self, arch: Arch) -> f64 {
        match (arch, self.query_pre_attn_scalar) {
            (Arch::Gemma, _) | (_, None) => (self.head_dim() as f64).powf(-0.5),
            (_, Some(s)) => s.powf(-0.5),
        }
    }

    /// Attention-logit softcap as transformers applies it: Gemma 2 only (4.57 ignores it for Gemma 3).
    pub fn attention_softcap(&self, arch: Arch) -> Option<f64> {
        match arch {
            Arch::Gemma2 => self.attn_logit_softcapping,
            Arch::Gemma | Arch::Gemma3 => None,
        }
    }

    pub fn final_softcap(&self, arch: Arch) -> Option<f64> {
        match arch {
            Arch::Gemma => None,
            Arch::Gemma2 | Arch::Gemma3 => self.final_logit_softcapping,
        }
    }

    fn uses_sliding_window(&self, arch: Arch) -> bool {
        (0..self.num_hidden_layers).any(|i| self.is_sliding(arch, i))
    }

    /// Whether layer `i` uses sliding-window attention: `layer_types` when given, else the
    /// model's default pattern (Gemma 2: even layers; Gemma 3: all but every `pattern`-th).
    fn is_sliding(&self, arch: Arch, i: usize) -> bool {
        if let Some(types) = &self.layer_types {
            return types.get(i).is_some_and(|t| t == "sliding_attention");
        }
        match arch {
            Arch::Gemma => false,
            Arch::Gemma2 => i.is_multiple_of(2),
            Arch::Gemma3 => !(i + 1).is_multiple_of(self.sliding_window_pattern.unwrap_or(6)),
        }
    }

    /// Attention facts of layer `i`. Gemma 3's sliding layers use the local RoPE base without
    /// scaling; its global layers use `rope_theta` with `rope_scaling`.
    pub fn layer_attention(&self, arch: Arch, i: usize) -> LayerAttention {
        let sliding = self.is_sliding(arch, i);
        let linear_factor = self
            .rope_scaling
            .as_ref()
            .filter(|s| s.rope_type.as_deref().or(s.legacy_type.as_deref()) == Some("linear"))
            .and_then(|s| s.factor)
            .unwrap_or(1.0);
        match arch {
            Arch::Gemma3 if sliding => LayerAttention {
                sliding_window: self.sliding_window,
                rope_base: self.rope_local_base_freq.unwrap_or(10000.0),
                rope_linear_factor: 1.0,
            },
            _ => LayerAttention {
                sliding_window: if sliding { self.sliding_window } else { None },
                rope_base: self.rope_theta,
                rope_linear_factor: linear_factor,
            },
        }
    }

    /// Gemma 2 and 3 norm the attention and MLP outputs before adding them to the residual.
    pub fn has_post_norms(arch: Arch) -> bool {
        arch != Arch::Gemma
    }
}
