//! The session cache: ONNX Runtime's optimised graph saved under `<cache root>/ort-optimized/<key>/`
//! on a first open, and loaded with graph optimisation off on later opens of the same graph.
//!
//! Opt-in (`--session-cache` or `SAE_ONNX_SESSION_CACHE=1`), because an entry holds a copy of
//! the weights, and on the CPU a second one packed for its matrix kernels (which a reopen maps
//! instead of packing again). The key covers everything the optimised graph depends on: the
//! graph bytes handed to ONNX Runtime, the external data files' identities, the runtime
//! version, the provider and the host's CPU. An entry is written in a temporary folder and renamed into place whole, so a
//! reader never sees half of one; an entry that fails to load is removed and rebuilt.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::onnx::Model;

/// The environment variable that turns the cache on for every command.
pub const ENV_VAR: &str = "SAE_ONNX_SESSION_CACHE";

/// The optimised graph's file name in an entry; its weights go in [`DATA_FILE`] beside it.
pub const MODEL_FILE: &str = "model.onnx";
pub const DATA_FILE: &str = "model.onnx.data";
/// Written last: the sizes of the entry's files. An entry without it, or whose files no longer
/// have those sizes, is incomplete.
const MANIFEST_FILE: &str = "manifest";

/// Bumped when what an entry holds changes meaning, so old entries stop matching (2: the CPU
/// kernels' prepacked weights saved in the data file).
const FORMAT: &str = "sae-onnx session cache 2";

/// How a session came to be: what `--verbose` reports and what tests check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SessionOrigin {
    /// Optimised now, with the cache off.
    #[default]
    Built,
    /// Optimised now, and the optimised graph saved for later opens.
    BuiltAndSaved,
    /// Loaded from a saved optimised graph, without optimising again.
    LoadedFromCache,
}

/// True when `SAE_ONNX_SESSION_CACHE` asks for the cache (`1`, `true`, `yes` or `on`).
fn enabled_by_env() -> bool {
    std::env::var(ENV_VAR).is_ok_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "on"
        )
    })
}

/// Where entries live unless a caller says otherwise.
pub fn default_dir() -> PathBuf {
    crate::paths::cache_root().join("ort-optimized")
}

/// The cache folder a command uses: [`default_dir`] when `--session-cache` or the environment
/// asks for the cache, none otherwise.
pub fn dir_if_enabled(flag: bool) -> Option<PathBuf> {
    (flag || enabled_by_env()).then(default_dir)
}

/// One cache entry: a folder named by the key.
#[derive(Debug, Clone)]
pub struct Entry {
    dir: PathBuf,
}

impl Entry {
    /// The entry in `cache_dir` for the graph whose serialized bytes hash to `graph_sha256`,
    /// with its external data in `model.dir`, opened by `runtime` (the ONNX Runtime version and
    /// the provider with what changes its optimisation, as [`crate::infer::runtime`] describes
    /// them).
    pub fn for_graph(cache_dir: &Path, graph_sha256: &str, model: &Model, runtime: &str) -> Result<Self> {
        let key = key(graph_sha256, model, runtime)?;
        Ok(Self {
            dir: cache_dir.join(key),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The saved optimised graph, when the entry is complete.
    pub fn complete_model(&self) -> Option<PathBuf> {
        let manifest = fs::read_to_string(self.dir.join(MANIFEST_FILE)).ok()?;
        for line in manifest.lines() {
            let (name, size) = line.rsplit_once(' ')?;
            let size: u64 = size.parse().ok()?;
            if fs::metadata(self.dir.join(name)).ok()?.len() != size {
                return None;
            }
        }
        Some(self.dir.join(MODEL_FILE))
    }

    /// Removes an entry that failed to load; another opener may have removed it already.
    pub fn remove(&self) {
        if let Err(e) = fs::remove_dir_all(&self.dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("cannot remove session cache entry '{}': {e}", self.dir.display());
        }
    }

    /// A temporary folder for ONNX Runtime to save the optimised graph in, beside the entry.
    pub fn staging(&self) -> Result<tempfile::TempDir> {
        let parent = crate::files::parent_dir(&self.dir);
        fs::create_dir_all(parent).with_context(|| format!("cannot create '{}'", parent.display()))?;
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        crate::files::temp_dir(parent, &name)
    }

    /// Records the staged files' sizes and renames the folder into place. When another opener
    /// published the same entry first, theirs stays and ours is dropped.
    pub fn publish(&self, staging: tempfile::TempDir) -> Result<()> {
        let mut manifest = String::new();
        for name in [MODEL_FILE, DATA_FILE] {
            let path = staging.path().join(name);
            // Small graphs have no initializer over the size threshold, hence no data file.
            if let Ok(meta) = fs::metadata(&path) {
                manifest.push_str(&format!("{name} {}\n", meta.len()));
            } else if name == MODEL_FILE {
                bail!(
                    "ONNX Runtime saved no optimised model in '{}'",
                    staging.path().display()
                );
            }
        }
        fs::write(staging.path().join(MANIFEST_FILE), manifest)
            .with_context(|| format!("cannot write in '{}'", staging.path().display()))?;
        let staged = staging.keep();
        if let Err(e) = fs::rename(&staged, &self.dir) {
            let _ = fs::remove_dir_all(&staged);
            if !self.dir.is_dir() {
                return Err(e).with_context(|| format!("cannot create '{}'", self.dir.display()));
            }
        }
        Ok(())
    }
}

/// The entry's name: a hash of everything the optimised graph depends on.
fn key(graph_sha256: &str, model: &Model, runtime: &str) -> Result<String> {
    let mut description = format!("{FORMAT}\n{runtime}\ngraph {graph_sha256}\n");
    // Without reading gigabytes of weights: hashing them would cost more than the cache saves.
    for (location, identity) in model.data_identities()? {
        description.push_str(&format!(
            "data {location} {}\n",
            serde_json::to_string(&identity)?
        ));
    }
    Ok(crate::digest::hash_string(&description))
}

/// The CPU model: a graph optimised at the highest level may use kernels laid out for this
/// CPU's instruction set, and a cache root can be shared between machines.
pub fn cpu_identity() -> String {
    let model_name = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.trim().to_owned())
        })
        .unwrap_or_default();
    format!("{} {model_name}", std::env::consts::ARCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_without_manifest_or_with_wrong_sizes_is_incomplete() {
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry {
            dir: dir.path().join("k"),
        };
        assert!(entry.complete_model().is_none());
        fs::create_dir(entry.dir()).unwrap();
        fs::write(entry.dir().join(MODEL_FILE), b"abc").unwrap();
        fs::write(entry.dir().join(MANIFEST_FILE), "model.onnx 4\n").unwrap();
        assert!(entry.complete_model().is_none());
        fs::write(entry.dir().join(MANIFEST_FILE), "model.onnx 3\n").unwrap();
        assert_eq!(entry.complete_model(), Some(entry.dir().join(MODEL_FILE)));
        fs::write(entry.dir().join(MANIFEST_FILE), "junk\n").unwrap();
        assert!(entry.complete_model().is_none());
    }
}
