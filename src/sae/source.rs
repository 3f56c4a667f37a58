//! Where an SAE's files come from: a registry release, a Hugging Face repository (listed in the
//! registry or not) or a local folder; each gives the weights file, the description of the SAE
//! and what provenance records of its origin.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;

use super::config::{Description, gemma_scope, saelens};
use super::registry::{self, SaeEntry, registry};
use super::weights::{ExpectedDims, SaeFormat};
use crate::hub::{Hub, RepoKind};

/// The revision SAEs are fetched at.
const REVISION: &str = "main";

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

/// What is known of an SAE's origin before its weights are opened.
pub(super) struct Origin {
    pub source: SaeSource,
    pub release: Option<String>,
    pub repo_id: Option<String>,
    pub sae_id: String,
    pub path: Option<String>,
    /// `release/id`, `repo/id` or the folder, for messages.
    pub label: String,
}

/// An SAE found at its source: its weights file, not opened yet, and its description.
pub(super) struct Located {
    pub weights: PathBuf,
    pub description: Description,
    pub origin: Origin,
}

impl Located {
    fn new(weights: &Path, description: Description, origin: Origin) -> Self {
        Located {
            weights: weights.to_path_buf(),
            description,
            origin,
        }
    }
}

/// Finds the SAE `sae_id` of `source`: downloads (or finds in the cache) its files and reads its
/// description.
pub(super) fn locate(hub: &Hub, source: &SaeSource, sae_id: &str) -> Result<Located> {
    let sae_id = sae_id.trim();
    match source {
        SaeSource::Release(name) => {
            let entry = registry().sae(name, sae_id)?;
            locate_in_registry(hub, source, entry, sae_id)
        }
        SaeSource::HfRepo(repo) => match registry().by_repo_path(repo, sae_id) {
            Some(entry) => locate_in_registry(hub, source, entry, sae_id),
            None => locate_in_hub_folder(hub, source, repo, sae_id),
        },
        SaeSource::Folder(dir) => {
            let dir = sae_folder(dir, sae_id)?;
            let origin = Origin {
                source: source.clone(),
                release: None,
                repo_id: None,
                sae_id: sae_id.to_owned(),
                path: None,
                label: format!("'{}'", dir.display()),
            };
            locate_in_folder(&dir, origin)
        }
    }
}

/// The SAE's folder: `dir`, or its subfolder `sae_id`.
fn sae_folder(dir: &Path, sae_id: &str) -> Result<PathBuf> {
    if sae_id.is_empty() {
        return Ok(dir.to_path_buf());
    }
    check_sae_id(sae_id)?;
    let sub = dir.join(sae_id);
    // A subfolder that is a link out of the SAE folder is refused like `..`.
    if let (Ok(real), Ok(root)) = (sub.canonicalize(), dir.canonicalize())
        && !real.starts_with(&root)
    {
        bail!(
            "sae_id '{}' leads to '{}', outside the SAE folder '{}'",
            crate::files::printable(sae_id, 200),
            real.display(),
            root.display()
        );
    }
    Ok(sub)
}

fn locate_in_registry(hub: &Hub, source: &SaeSource, entry: SaeEntry<'_>, sae_id: &str) -> Result<Located> {
    let SaeEntry { release, sae } = entry;
    let label = format!("{}/{}", release.release, sae.id);
    let origin = Origin {
        source: source.clone(),
        release: Some(release.release.clone()),
        repo_id: Some(release.repo_id.clone()),
        sae_id: sae_id.to_owned(),
        path: Some(sae.path.clone()),
        label: label.clone(),
    };
    let unreadable = match release.format {
        SaeFormat::DictionaryLearning => Some("the dictionary_learning format (`ae.pt`, a PyTorch pickle)"),
        SaeFormat::TorchPickle => Some("a PyTorch pickle"),
        SaeFormat::LlamaScope => {
            Some("the Llama Scope layout (hyperparams.json + checkpoints/final.safetensors)")
        }
        SaeFormat::LlamaScopeR1 => Some("the Llama Scope R1 layout (config.json + final.safetensors)"),
        SaeFormat::GemmaScopeNpz | SaeFormat::GemmaScope2Safetensors | SaeFormat::SaeLens => None,
    };
    if let Some(what) = unreadable {
        bail!(
            "SAE {label} is stored in {what} ('{}' in {}), which sae-onnx cannot read yet. Convert it to a \
             SAELens folder (cfg.json + sae_weights.safetensors, e.g. with SAELens's `SAE.from_pretrained(...)` \
             then `save_model`) and give that folder",
            release.weights_path(sae),
            release.repo_id
        );
    }
    let weights = hub.file(
        &release.repo_id,
        RepoKind::Model,
        REVISION,
        &release.weights_path(sae),
    )?;
    let description = match release.format {
        SaeFormat::DictionaryLearning
        | SaeFormat::TorchPickle
        | SaeFormat::LlamaScope
        | SaeFormat::LlamaScopeR1 => unreachable!("refused above"),
        SaeFormat::GemmaScopeNpz | SaeFormat::GemmaScope2Safetensors => {
            let hook = sae.hook_point()?;
            let d_sae = sae
                .d_sae
                .with_context(|| format!("the registry entry {label} gives no d_sae"))?;
            let registry_dims = Some(ExpectedDims {
                d_in: sae.d_in,
                d_sae,
                stated_by: format!("the registry entry {label}"),
            });
            gemma_scope::description(release.format, hook, None, registry_dims)
        }
        SaeFormat::SaeLens => {
            let cfg = hub.file(
                &release.repo_id,
                RepoKind::Model,
                REVISION,
                &format!("{}/cfg.json", sae.path),
            )?;
            saelens::description(
                &cfg,
                sae.norm_scaling_factor,
                release.config_overrides.as_ref(),
                &label,
            )?
        }
    };
    Ok(Located::new(&weights, description, origin))
}

/// A repository the registry does not list (or a folder of it that it does not list).
fn locate_in_hub_folder(hub: &Hub, source: &SaeSource, repo: &str, sae_id: &str) -> Result<Located> {
    let folder = sae_id.trim_matches('/');
    if !folder.is_empty() {
        check_sae_id(folder)?;
    }
    let prefix = if folder.is_empty() {
        String::new()
    } else {
        format!("{folder}/")
    };
    let origin = || Origin {
        source: source.clone(),
        release: None,
        repo_id: Some(repo.to_owned()),
        sae_id: sae_id.to_owned(),
        path: Some(folder.to_owned()),
        label: format!("{repo}/{sae_id}"),
    };
    let get = |name: &str| hub.file(repo, RepoKind::Model, REVISION, &format!("{prefix}{name}"));
    let mut tried = Vec::new();
    match get("cfg.json") {
        Ok(cfg) => {
            let weights = get("sae_weights.safetensors")?;
            let description = saelens::description(&cfg, None, None, &format!("{repo}/{sae_id}"))?;
            return Ok(Located::new(&weights, description, origin()));
        }
        Err(e) => tried.push(format!("SAELens cfg.json: {e:#}")),
    }
    for (format, file) in PARAMS_FILES {
        match get(file) {
            Ok(weights) => {
                let in_repo = format!("{repo}/{prefix}");
                let config = get("config.json").ok();
                let description =
                    gemma_scope::description_inferred(format, &weights, config.as_deref(), &in_repo)?;
                return Ok(Located::new(&weights, description, origin()));
            }
            Err(e) => tried.push(format!("{file}: {e:#}")),
        }
    }
    bail!(
        "found no SAE in Hugging Face repo '{repo}' folder '{folder}': tried a SAELens folder (cfg.json + \
         sae_weights.safetensors), Gemma Scope 2 (params.safetensors) and Gemma Scope (params.npz):\n  {}",
        tried.join("\n  ")
    )
}

/// The Gemma Scope formats by their weights file, in the order they are looked for.
const PARAMS_FILES: [(SaeFormat, &str); 2] = [
    (SaeFormat::GemmaScope2Safetensors, "params.safetensors"),
    (SaeFormat::GemmaScopeNpz, "params.npz"),
];

fn locate_in_folder(dir: &Path, origin: Origin) -> Result<Located> {
    ensure!(dir.is_dir(), "SAE folder '{}' does not exist", dir.display());
    let has = |f: &str| dir.join(f).is_file();
    if has("cfg.json") && has("sae_weights.safetensors") {
        let description = saelens::description(&dir.join("cfg.json"), None, None, &origin.label)?;
        return Ok(Located::new(
            &dir.join("sae_weights.safetensors"),
            description,
            origin,
        ));
    }
    for (format, file) in PARAMS_FILES {
        if has(file) {
            let weights = dir.join(file);
            let config = ["config.json", "cfg.json"]
                .into_iter()
                .map(|c| dir.join(c))
                .find(|c| c.is_file());
            let text = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
            let description = gemma_scope::description_inferred(
                format,
                &weights,
                config.as_deref(),
                &text.to_string_lossy(),
            )?;
            return Ok(Located::new(&weights, description, origin));
        }
    }
    if has("ae.pt") {
        bail!(
            "'{}' holds a dictionary_learning `ae.pt` (a PyTorch pickle), which sae-onnx cannot read",
            dir.display()
        );
    }
    let subfolders = std::fs::read_dir(dir)
        .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
        .unwrap_or(0);
    let hint = if subfolders > 0 && origin.sae_id.is_empty() {
        " It has subfolders: give the SAE's subfolder as the sae_id."
    } else {
        ""
    };
    bail!(
        "'{}' holds no SAE: expected cfg.json + sae_weights.safetensors (SAELens), params.safetensors \
         (Gemma Scope 2) or params.npz (Gemma Scope).{hint}",
        dir.display()
    )
}

/// An sae_id names a folder inside its SAE source; `..` or an absolute path would read SAEs (or
/// any file) elsewhere.
fn check_sae_id(sae_id: &str) -> Result<()> {
    let plain = Path::new(sae_id)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    ensure!(
        plain,
        "sae_id '{}' is not a folder inside the SAE source ('..' and absolute paths are refused)",
        crate::files::printable(sae_id, 200)
    );
    Ok(())
}
