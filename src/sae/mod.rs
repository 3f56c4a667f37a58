//! Sparse autoencoders: the release registry and loaders that read only the decoder rows (and
//! encoder parts) of the latents a steering plan names.
//!
//! Formats (DESIGN.md §3, `models/saes/README.md`):
//! - Gemma Scope (Gemma 2): `params.npz`, float32 `W_enc [d_in,d_sae]`, `W_dec [d_sae,d_in]`,
//!   `b_enc`, `b_dec`, `threshold` (JumpReLU, `b_dec` not subtracted from the input).
//! - Gemma Scope 2 (Gemma 3): `params.safetensors` with lowercase `w_enc`, `w_dec`, ...
//! - SAELens folders: `cfg.json` + `sae_weights.safetensors`.
//!
//! Sources: a registry release (`gemma-scope-2b-pt-res-canonical` + id), a Hugging Face repository
//! id (+ the SAE's folder in it), or a local folder. Files come through [`crate::hub::Hub`].

mod loader;
pub mod npz;
pub mod registry;

use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use crate::hook::HookPoint;
pub use loader::{NonFiniteLatent, Sae, load_decoder_rows, load_encoder_parts};
pub use registry::{Registry, RegistrySae, Release, SaeEntry, registry};

/// Where an SAE comes from (as a steering plan names it in `sae_release` / `sparse_model`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum SaeSource {
    /// A release of the registry (SAELens's `pretrained_saes.yaml` names).
    Release(String),
    /// A Hugging Face repository id (`org/name`); the sae_id is the SAE's folder in it.
    HfRepo(String),
    /// A local folder; the sae_id, if any, is a subfolder.
    Folder(PathBuf),
}

impl SaeSource {
    /// Classifies what a plan wrote: a registry release name, else an existing folder (relative to
    /// the current directory, then to `base_dir`, the plan's folder), else a Hub repo id (`org/name`).
    pub fn classify(text: &str, base_dir: Option<&Path>) -> Result<SaeSource> {
        let s = text.trim();
        if s.is_empty() {
            bail!("empty SAE source: give a registry release, a Hugging Face repo id or a local folder");
        }
        if registry().get_release(s).is_some() {
            return Ok(SaeSource::Release(s.to_owned()));
        }
        let candidates = std::iter::once(PathBuf::from(s))
            .chain(base_dir.filter(|_| Path::new(s).is_relative()).map(|d| d.join(s)));
        for path in candidates {
            if path.is_dir() {
                return Ok(SaeSource::Folder(path));
            }
            if path.exists() {
                bail!(
                    "SAE source '{}' is a file; give the folder that holds it",
                    path.display()
                );
            }
        }
        if crate::hub::looks_like_repo_id(s) {
            return Ok(SaeSource::HfRepo(s.to_owned()));
        }
        let near = registry::nearest(s, registry().releases.iter().map(|r| r.release.as_str()), 5);
        let hint = if near.is_empty() {
            String::new()
        } else {
            format!(" Nearest releases: {}.", near.join(", "))
        };
        bail!(
            "'{s}' is not a release of the SAE registry, an existing folder, or a Hugging Face repo id (org/name).{hint} \
             List releases with `sae-onnx saes`"
        )
    }
}

impl fmt::Display for SaeSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SaeSource::Release(r) => write!(f, "release '{r}'"),
            SaeSource::HfRepo(r) => write!(f, "Hugging Face repo '{r}'"),
            SaeSource::Folder(p) => write!(f, "folder '{}'", p.display()),
        }
    }
}

/// How an SAE's weights are stored (the registry's `format` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaeFormat {
    /// Gemma Scope: `params.npz`.
    GemmaScopeNpz,
    /// Gemma Scope 2: `params.safetensors` with lowercase names.
    #[serde(rename = "gemma_scope_2_safetensors")]
    GemmaScope2Safetensors,
    /// SAELens: `cfg.json` + `sae_weights.safetensors`.
    #[serde(rename = "saelens")]
    SaeLens,
    /// dictionary_learning: `ae.pt`, a PyTorch pickle (not readable here).
    DictionaryLearning,
}

impl fmt::Display for SaeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SaeFormat::GemmaScopeNpz => "gemma_scope_npz",
            SaeFormat::GemmaScope2Safetensors => "gemma_scope_2_safetensors",
            SaeFormat::SaeLens => "saelens",
            SaeFormat::DictionaryLearning => "dictionary_learning",
        })
    }
}

/// Where the weights came from, for the patched model's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SaeProvenance {
    /// What the plan named: release, repo or folder.
    pub source: SaeSource,
    /// The registry release that described the SAE (also when the plan named its repo).
    pub release: Option<String>,
    pub repo_id: Option<String>,
    /// The commit of the Hugging Face snapshot the file came from, when known.
    pub revision: Option<String>,
    pub sae_id: String,
    /// The SAE's folder inside its repository (`layer_20/width_16k/average_l0_71`).
    pub path: Option<String>,
    /// The weights file on this machine.
    pub file: PathBuf,
    pub format: SaeFormat,
    /// Size of the weights file in bytes.
    pub size: u64,
    /// SHA-256 of the weights file, when it is under [`HASH_LIMIT`] bytes.
    pub sha256: Option<String>,
    /// Modification time (seconds since the Unix epoch), recorded instead of a hash for larger files.
    pub mtime_unix: Option<u64>,
}

/// Files at least this large are not hashed: hashing streams the whole file (a 1m-wide Gemma Scope
/// npz is 19 GB, minutes of reading just to steer with a few rows); size and mtime identify them.
pub const HASH_LIMIT: u64 = 1 << 30;

/// Decoder rows `W_dec[latent]`, one per requested latent, as f32, in the input space of the hook
/// (any scaling SAELens applies at load time, e.g. the Gemma Scope embedding SAEs' `sqrt(d_in)` or
/// a folded `norm_scaling_factor`, is applied).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderRows {
    pub hook: HookPoint,
    /// For SAEs trained on one attention head (`hook_head_index`): that head. `d_in` is then d_head.
    pub head_index: Option<usize>,
    pub d_in: usize,
    pub d_sae: usize,
    pub latents: Vec<usize>,
    /// `rows[i]` is `W_dec[latents[i]]`, `d_in` values.
    pub rows: Vec<Vec<f32>>,
    pub provenance: SaeProvenance,
}

/// What encoding needs for a few latents (for `clamp`): `pre_i = (x - [b_dec if
/// apply_b_dec_to_input]) · W_enc[:, i] + b_enc[i]`, then the architecture's activation
/// (JumpReLU: `pre_i · [pre_i > threshold_i]`; standard: ReLU).
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderParts {
    pub hook: HookPoint,
    pub head_index: Option<usize>,
    pub d_in: usize,
    pub d_sae: usize,
    pub latents: Vec<usize>,
    /// `w_enc_cols[i]` is `W_enc[:, latents[i]]`, `d_in` values.
    pub w_enc_cols: Vec<Vec<f32>>,
    /// `b_enc[latents[i]]`.
    pub b_enc: Vec<f32>,
    /// `threshold[latents[i]]` for JumpReLU SAEs.
    pub threshold: Option<Vec<f32>>,
    /// All of `b_dec` (`d_in` values).
    pub b_dec: Vec<f32>,
    pub apply_b_dec_to_input: bool,
    /// SAELens architecture name: `jumprelu`, `standard`, `topk`, ...
    pub architecture: String,
    pub provenance: SaeProvenance,
}

/// A latent index not below the SAE's width. The plan reader adds file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatentOutOfRange {
    pub latent: usize,
    pub d_sae: usize,
    /// The SAE, as `release/id`, `repo/id` or a folder.
    pub sae: String,
}

impl fmt::Display for LatentOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latent {} is out of range: SAE {} has d_sae = {} latents (0..={})",
            self.latent,
            self.sae,
            self.d_sae,
            self.d_sae.saturating_sub(1)
        )
    }
}

impl std::error::Error for LatentOutOfRange {}
