//! Where an SAE's weights came from, for the patched model's metadata: the source the plan named,
//! the registry entry, the Hugging Face snapshot commit, and the file's size and hash.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

use super::source::{Origin, SaeSource};
use super::weights::SaeFormat;

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
    /// SAELens's `prepend_bos`: whether the SAE's training text started with BOS (null: unstated).
    pub prepend_bos: Option<bool>,
}

/// Files at least this large are not hashed: hashing streams the whole file (a 1m-wide Gemma Scope
/// npz is 19 GB, minutes of reading just to steer with a few rows); size and mtime identify them.
pub const HASH_LIMIT: u64 = 1 << 30;

impl SaeProvenance {
    /// The provenance of weights `file` in `format`, found where `origin` says, of an SAE trained
    /// with `prepend_bos`.
    pub(super) fn record(
        file: &Path,
        format: SaeFormat,
        origin: &Origin,
        prepend_bos: Option<bool>,
    ) -> Result<Self> {
        let meta = std::fs::metadata(file).with_context(|| format!("cannot stat '{}'", file.display()))?;
        let size = meta.len();
        let (sha256, mtime_unix) = if size < HASH_LIMIT {
            (Some(crate::digest::sha256_file(file, "SAE file")?), None)
        } else {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_secs());
            (None, mtime)
        };
        Ok(SaeProvenance {
            source: origin.source.clone(),
            release: origin.release.clone(),
            repo_id: origin.repo_id.clone(),
            revision: snapshot_commit(file),
            sae_id: origin.sae_id.clone(),
            path: origin.path.clone(),
            file: file.canonicalize().unwrap_or_else(|_| PathBuf::from(file)),
            format,
            size,
            sha256,
            mtime_unix,
            prepend_bos,
        })
    }
}

/// The snapshot commit in an HF cache path (`.../snapshots/<40 hex>/...`).
fn snapshot_commit(path: &Path) -> Option<String> {
    let parts: Vec<_> = path.components().collect();
    parts.windows(2).find_map(|w| match (w[0], w[1]) {
        (Component::Normal(a), Component::Normal(b))
            if a == "snapshots"
                && b.len() == 40
                && b.to_string_lossy().bytes().all(|c| c.is_ascii_hexdigit()) =>
        {
            Some(b.to_string_lossy().into_owned())
        }
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snapshot_commit_is_read_from_a_cache_path() {
        assert_eq!(
            snapshot_commit(Path::new(
                "/c/models--a--b/snapshots/5ae0000000000000000000000000000000c0ffee/x/params.npz"
            ))
            .as_deref(),
            Some("5ae0000000000000000000000000000000c0ffee")
        );
    }
}
