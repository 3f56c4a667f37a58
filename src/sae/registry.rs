//! The SAE release registry: `models/saes/registry.json` (converted from SAELens's
//! `pretrained_saes.yaml`, see `models/saes/README.md`), embedded in the binary and parsed once.

use std::sync::OnceLock;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::weights::SaeFormat;
use crate::hook::HookPoint;

const REGISTRY_JSON: &str = include_str!("../../models/saes/registry.json");

/// The whole registry.
#[derive(Debug, Clone, Deserialize)]
pub struct Registry {
    /// Where it came from, e.g. `sae-lens 6.54.12 pretrained_saes.yaml`.
    pub source: String,
    pub releases: Vec<Release>,
}

/// A release: one Hugging Face repository (or a part of one) holding SAEs of one family.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Release {
    pub release: String,
    /// `gemma-scope`, `gemma-scope-2` or `other`.
    pub family: String,
    pub repo_id: String,
    pub model: String,
    /// The base model on the Hub, e.g. `google/gemma-2-2b`.
    pub base_model_hf: String,
    pub conversion_func: Option<String>,
    pub format: SaeFormat,
    /// The weights file in each SAE's folder (`params.npz`, `params.safetensors`, ...); `None`:
    /// each SAE's `path` is its weights file (single-file pickles).
    pub weights_file: Option<String>,
    pub config_overrides: Option<serde_json::Value>,
    pub saes: Vec<RegistrySae>,
}

/// One SAE of a release.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RegistrySae {
    /// The id users give (`layer_20/width_16k/canonical`).
    pub id: String,
    /// Its folder in the repository (`layer_20/width_16k/average_l0_71`).
    pub path: String,
    /// TransformerLens hook name.
    pub hook: String,
    pub layer: Option<usize>,
    pub site: String,
    pub d_in: usize,
    /// `None` where neither the yaml nor the names say it (the SAE's cfg.json does).
    pub d_sae: Option<usize>,
    pub neuronpedia: Option<String>,
    pub l0: Option<f64>,
    /// SAELens folds this into the weights when the SAE's cfg says
    /// `normalize_activations: expected_average_only_in`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub norm_scaling_factor: Option<f64>,
}

/// A release together with one of its SAEs.
#[derive(Debug, Clone, Copy)]
pub struct SaeEntry<'a> {
    pub release: &'a Release,
    pub sae: &'a RegistrySae,
}

/// The embedded registry, parsed on first use.
pub fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        serde_json::from_str(REGISTRY_JSON).expect("models/saes/registry.json (embedded) does not parse")
    })
}

impl Registry {
    /// The release named `name`, or an error with the nearest release names.
    pub fn release(&self, name: &str) -> Result<&Release> {
        if let Some(r) = self.get_release(name) {
            return Ok(r);
        }
        let near = nearest(name, self.releases.iter().map(|r| r.release.as_str()), 5);
        bail!(
            "unknown SAE release '{name}'{}. List releases with `sae-onnx saes`",
            did_you_mean(&near)
        )
    }

    pub fn get_release(&self, name: &str) -> Option<&Release> {
        self.releases.iter().find(|r| r.release == name)
    }

    /// The SAE `id` of release `release`, or an error with the nearest release names / ids.
    pub fn sae(&self, release: &str, id: &str) -> Result<SaeEntry<'_>> {
        let release = self.release(release)?;
        release.sae(id).map(|sae| SaeEntry { release, sae })
    }

    /// Releases stored in Hugging Face repository `repo_id`.
    pub fn releases_for_repo<'a>(&'a self, repo_id: &'a str) -> impl Iterator<Item = &'a Release> + 'a {
        self.releases.iter().filter(move |r| r.repo_id == repo_id)
    }

    /// The registry entry whose repository is `repo_id` and whose folder is `path`, if any. Several
    /// releases may list the same folder (a canonical release and its all-sparsities release); they
    /// agree on everything that matters for loading, and the first in name order is returned.
    pub fn by_repo_path(&self, repo_id: &str, path: &str) -> Option<SaeEntry<'_>> {
        let path = path.trim_matches('/');
        self.releases
            .iter()
            .filter(|r| r.repo_id == repo_id)
            .find_map(|release| {
                release
                    .saes
                    .iter()
                    .find(|s| s.path == path)
                    .map(|sae| SaeEntry { release, sae })
            })
    }

    /// Every SAE whose release, id, path, repository, model, hook or Neuronpedia id contains
    /// `filter` (case-insensitive; all words of `filter` must match). An empty filter lists all.
    pub fn search(&self, filter: &str) -> Vec<SaeEntry<'_>> {
        let words: Vec<String> = filter.split_whitespace().map(str::to_lowercase).collect();
        let mut out = Vec::new();
        for release in &self.releases {
            let head = format!(
                "{} {} {} {}",
                release.release, release.repo_id, release.model, release.base_model_hf
            )
            .to_lowercase();
            for sae in &release.saes {
                let matches = words.iter().all(|w| {
                    head.contains(w.as_str())
                        || [sae.id.as_str(), sae.path.as_str(), sae.hook.as_str()]
                            .into_iter()
                            .chain(sae.neuronpedia.as_deref())
                            .any(|field| field.to_lowercase().contains(w.as_str()))
                });
                if matches {
                    out.push(SaeEntry { release, sae });
                }
            }
        }
        out
    }
}

impl Release {
    /// The SAE `id`, or an error with the nearest ids of this release.
    pub fn sae(&self, id: &str) -> Result<&RegistrySae> {
        if let Some(sae) = self.saes.iter().find(|s| s.id == id) {
            return Ok(sae);
        }
        if id.trim().is_empty() {
            bail!(
                "release '{}' holds {} SAEs: give an sae_id (e.g. '{}')",
                self.release,
                self.saes.len(),
                self.saes.first().map_or("", |s| s.id.as_str())
            );
        }
        let near = nearest(id, self.saes.iter().map(|s| s.id.as_str()), 5);
        bail!(
            "release '{}' has no SAE '{id}'{}. List them with `sae-onnx saes {}`",
            self.release,
            did_you_mean(&near),
            self.release
        )
    }

    /// The weights file of `sae` inside the repository: `{path}/{weights_file}`, or `path` itself.
    pub fn weights_path(&self, sae: &RegistrySae) -> String {
        match &self.weights_file {
            Some(file) => format!("{}/{file}", sae.path),
            None => sae.path.clone(),
        }
    }
}

impl RegistrySae {
    pub fn hook_point(&self) -> Result<HookPoint> {
        HookPoint::parse(&self.hook)
    }
}

fn did_you_mean(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!(
            " (did you mean: {}?)",
            near.iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// Up to `n` candidates closest to `query`: those containing it first, then by edit distance.
/// Candidates that differ in more than half their characters are left out.
pub fn nearest<'a>(query: &str, candidates: impl Iterator<Item = &'a str>, n: usize) -> Vec<String> {
    let q = query.trim().to_lowercase();
    if q.is_empty() {
        return Vec::new();
    }
    let mut scored: Vec<(bool, usize, &str)> = candidates
        .filter_map(|c| {
            let lc = c.to_lowercase();
            let contains = lc.contains(&q);
            let dist = strsim::levenshtein(&q, &lc);
            let longest = q.chars().count().max(lc.chars().count());
            (contains || dist * 2 <= longest).then_some((!contains, dist, c))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.2 == b.2);
    scored.into_iter().take(n).map(|(_, _, c)| c.to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_parses_and_hooks_are_valid() {
        let reg = registry();
        assert!(reg.source.contains("sae-lens"));
        assert_eq!(reg.releases.len(), 141);
        let mut n = 0;
        for release in &reg.releases {
            for sae in &release.saes {
                let hook = sae.hook_point().unwrap();
                assert_eq!(hook.to_string(), sae.hook, "{} {}", release.release, sae.id);
                assert_eq!(hook.layer, sae.layer);
                n += 1;
            }
        }
        assert_eq!(n, 10018);
    }

    #[test]
    fn nearest_prefers_substrings_then_edit_distance() {
        let c = [
            "gemma-scope-2b-pt-res",
            "gemma-scope-2b-pt-res-canonical",
            "gemma-scope-9b-pt-res",
            "x",
        ];
        assert_eq!(
            nearest("gemma-scope-2b-pt-res-canonicl", c.into_iter(), 2)[0],
            "gemma-scope-2b-pt-res-canonical"
        );
        assert_eq!(
            nearest("2b-pt-res", c.into_iter(), 5),
            vec!["gemma-scope-2b-pt-res", "gemma-scope-2b-pt-res-canonical"]
        );
        assert!(nearest("", c.into_iter(), 5).is_empty());
    }
}
