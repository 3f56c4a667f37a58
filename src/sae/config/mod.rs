//! What an SAE is, apart from its weights: hook, architecture, dimensions, `b_dec` handling and
//! the scales SAELens applies at load time, read from a SAELens `cfg.json` ([`saelens`]) or
//! given by the Gemma Scope formats and inferred from their paths ([`gemma_scope`]).

pub(super) mod gemma_scope;
pub(super) mod saelens;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

use super::weights::{ExpectedDims, SaeFormat};
use crate::hook::HookPoint;

/// Everything but the weights, as the config sources describe it.
pub(super) struct Description {
    pub format: SaeFormat,
    pub hook: HookPoint,
    pub head_index: Option<usize>,
    /// `None`: taken from W_dec's shape.
    pub dims: Option<ExpectedDims>,
    pub architecture: SaeArchitecture,
    pub apply_b_dec_to_input: bool,
    pub scales: Scales,
    /// The SAE was trained on TransformerLens activations with `center_writing_weights`: every
    /// write to the residual stream has zero mean over d_model, so the SAE reads `x - mean(x)`
    /// where the Hugging Face model has `x` (see [`crate::sae::Sae::encoder_parts`]).
    pub centered_input: bool,
    /// The config file the description was read from, if any.
    pub config: Option<PathBuf>,
}

/// The SAE architectures SAELens loads for inference (its `register_sae_class` names);
/// transcoders are refused before this, as steering needs an SAE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SaeArchitecture {
    /// ReLU(W_enc x + b_enc).
    Standard,
    Gated,
    /// Gemma Scope and Gemma Scope 2: `pre · [pre > threshold]`.
    JumpRelu,
    TopK,
    AbsTopK,
    Temporal,
    MatchingPursuit,
}

impl SaeArchitecture {
    const ALL: [SaeArchitecture; 7] = [
        SaeArchitecture::Standard,
        SaeArchitecture::Gated,
        SaeArchitecture::JumpRelu,
        SaeArchitecture::TopK,
        SaeArchitecture::AbsTopK,
        SaeArchitecture::Temporal,
        SaeArchitecture::MatchingPursuit,
    ];

    /// The name SAELens gives it in `cfg.json`'s `architecture`.
    pub fn as_str(self) -> &'static str {
        match self {
            SaeArchitecture::Standard => "standard",
            SaeArchitecture::Gated => "gated",
            SaeArchitecture::JumpRelu => "jumprelu",
            SaeArchitecture::TopK => "topk",
            SaeArchitecture::AbsTopK => "abstopk",
            SaeArchitecture::Temporal => "temporal",
            SaeArchitecture::MatchingPursuit => "matching_pursuit",
        }
    }

    fn from_saelens_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }

    fn known_names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for SaeArchitecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Factors SAELens applies to the weights when loading; every value is computed in f32 as torch does.
#[derive(Debug, Clone, Copy)]
pub(super) enum Scale {
    One,
    Mul(f32),
    Div(f32),
}

impl Scale {
    pub fn apply(self, v: &mut [f32]) {
        match self {
            Scale::One => {}
            Scale::Mul(f) => v.iter_mut().for_each(|x| *x *= f),
            Scale::Div(f) => v.iter_mut().for_each(|x| *x /= f),
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Scales {
    pub w_enc: Scale,
    pub w_dec: Scale,
    pub b_dec: Scale,
}

const NO_SCALES: Scales = Scales {
    w_enc: Scale::One,
    w_dec: Scale::One,
    b_dec: Scale::One,
};

/// SAE configs are a few kilobytes; the bound makes a wrong file (`/dev/zero`) an error.
const CONFIG_MAX_BYTES: u64 = 16 << 20;

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::files::read_text(path, "SAE config", CONFIG_MAX_BYTES)?;
    serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))
}

fn string_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn usize_at(v: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .try_fold(v, |v, k| v.get(k))?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

/// `metadata.hook_name` (SAELens 6), `hook_name`, or `hook_point` (before 6.0).
fn saelens_hook_name(v: &Value) -> Option<&str> {
    string_at(v, &["metadata", "hook_name"])
        .or_else(|| string_at(v, &["hook_name"]))
        .or_else(|| string_at(v, &["hook_point"]))
}

fn saelens_head_index(v: &Value) -> Option<usize> {
    usize_at(v, &["metadata", "hook_head_index"])
        .or_else(|| usize_at(v, &["hook_head_index"]))
        .or_else(|| usize_at(v, &["hook_point_head_index"]))
}
