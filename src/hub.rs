//! The Hugging Face Hub: files of model, dataset and SAE repositories, resolved from the standard
//! cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`, laid out as
//! `models--org--name/snapshots/<commit>/`) and downloaded through hf-hub when missing, unless
//! `HF_HUB_OFFLINE=1`.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use hf_hub::api::Progress;
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use indicatif::ProgressBar;

use crate::progress;

/// Which kind of repository an id names (they live in different cache folders).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    Model,
    Dataset,
}

/// Access to the Hub as the environment configures it. A command builds one (`cli.rs`) and
/// passes it down, so every download it makes draws the same way.
#[derive(Clone)]
pub struct Hub {
    pub cache_dir: PathBuf,
    pub offline: bool,
    pub token: Option<String>,
    /// Draw a byte bar (size, throughput, ETA) on stderr for each download.
    pub progress: bool,
}

/// Never prints the token.
impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("progress", &self.progress)
            .finish()
    }
}

impl Hub {
    /// Reads `HF_HUB_CACHE`, `HF_HOME`, `HF_TOKEN` and `HF_HUB_OFFLINE` as the Python client does.
    pub fn from_env() -> Self {
        let cache_dir = match (std::env::var_os("HF_HUB_CACHE"), std::env::var_os("HF_HOME")) {
            (Some(cache), _) if !cache.is_empty() => PathBuf::from(cache),
            (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join("hub"),
            _ => Cache::default().path().clone(),
        };
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"));
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.is_empty())
            .or_else(|| Cache::new(cache_dir.clone()).token());
        Self {
            cache_dir,
            offline,
            token,
            progress: false,
        }
    }

    /// The same Hub, drawing download bars or not (`--quiet`, stderr not a terminal).
    pub fn with_progress(self, progress: bool) -> Self {
        Self { progress, ..self }
    }

    /// The local path of `filename` in `repo` at `revision` (a branch, tag or commit hash),
    /// downloading it into the cache if needed and allowed.
    pub fn file(&self, repo_id: &str, kind: RepoKind, revision: &str, filename: &str) -> Result<PathBuf> {
        check_in_repo("file", filename)?;
        check_in_repo("revision", revision)?;
        if let Some(path) = self.cached(repo_id, kind, revision, filename) {
            return Ok(path);
        }
        let what = format!(
            "'{filename}' of {} '{repo_id}' (revision {revision})",
            kind.noun()
        );
        if self.offline {
            bail!(
                "{what} is not in the Hugging Face cache '{}' and HF_HUB_OFFLINE is set. \
                 Download it once online, or point HF_HUB_CACHE / HF_HOME at a cache that has it",
                self.cache_dir.display()
            );
        }
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .context("cannot set up the Hugging Face Hub client")?;
        let repo = Repo::with_revision(repo_id.to_owned(), kind.repo_type(), revision.to_owned());
        // As hf-hub's `get` (its cache, then the download), with our bar in place of its own.
        let cached = Cache::new(self.cache_dir.clone())
            .repo(repo.clone())
            .get(filename);
        let fetched = match cached {
            Some(path) => Ok(path),
            None => {
                let bar = progress::bytes_bar(0, &bar_label(filename), self.progress);
                api.repo(repo).download_with_progress(filename, DownloadBar(bar))
            }
        };
        fetched.map_err(|err| {
            let text = err.to_string();
            let hint = if text.contains("401") || text.contains("403") {
                " The repository is gated or private: accept its license on huggingface.co and set HF_TOKEN \
                 (or run `huggingface-cli login`)."
            } else if text.contains("404") {
                " Check the repository id, revision and file name."
            } else {
                " Check your network, or use a local folder / HF_HUB_OFFLINE=1 with a filled cache."
            };
            anyhow::anyhow!("cannot download {what}: {text}.{hint}")
        })
    }

    /// The files of `repo` at `revision`, as the hub lists them (needs the network).
    pub fn list(&self, repo_id: &str, kind: RepoKind, revision: &str) -> Result<Vec<String>> {
        let api = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
            .with_token(self.token.clone())
            .with_progress(false)
            .build()
            .context("cannot set up the Hugging Face Hub client")?;
        let repo = Repo::with_revision(repo_id.to_owned(), kind.repo_type(), revision.to_owned());
        let info = api
            .repo(repo)
            .info()
            .map_err(|e| anyhow::anyhow!("cannot list {} '{repo_id}' at {revision}: {e}", kind.noun()))?;
        Ok(info.siblings.into_iter().map(|s| s.rfilename).collect())
    }

    /// The cached path, if present. A commit hash names its snapshot folder directly; a branch or
    /// tag is looked up in `refs/`.
    pub fn cached(&self, repo_id: &str, kind: RepoKind, revision: &str, filename: &str) -> Option<PathBuf> {
        if check_in_repo("file", filename).is_err() || check_in_repo("revision", revision).is_err() {
            return None;
        }
        let repo_dir = self.repo_dir(repo_id, kind);
        let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
        let commit = if is_commit {
            revision.to_owned()
        } else {
            std::fs::read_to_string(repo_dir.join("refs").join(revision))
                .ok()?
                .trim()
                .to_owned()
        };
        let path = repo_dir.join("snapshots").join(commit).join(filename);
        path.exists().then_some(path)
    }

    /// `models--org--name` (or `datasets--...`) under the cache folder.
    pub fn repo_dir(&self, repo_id: &str, kind: RepoKind) -> PathBuf {
        self.cache_dir
            .join(format!("{}--{}", kind.prefix(), repo_id.replace('/', "--")))
    }
}

/// A download's bar, fed by hf-hub: `init` at the start of each attempt (a resumed one then
/// reports the bytes already there through `update`), `update` per chunk, `finish` at the end.
struct DownloadBar(ProgressBar);

impl Progress for DownloadBar {
    fn init(&mut self, size: usize, _filename: &str) {
        self.0.set_length(size as u64);
        self.0.set_position(0);
    }

    fn update(&mut self, size: usize) {
        self.0.inc(size as u64);
    }

    fn finish(&mut self) {
        self.0.finish();
    }
}

/// The bar's label: the file name, its last 30 characters when longer.
fn bar_label(filename: &str) -> String {
    let count = filename.chars().count();
    if count > 30 {
        format!("..{}", filename.chars().skip(count - 30).collect::<String>())
    } else {
        filename.to_owned()
    }
}

impl RepoKind {
    fn repo_type(self) -> RepoType {
        match self {
            Self::Model => RepoType::Model,
            Self::Dataset => RepoType::Dataset,
        }
    }
    fn prefix(self) -> &'static str {
        match self {
            Self::Model => "models",
            Self::Dataset => "datasets",
        }
    }
    fn noun(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Dataset => "dataset",
        }
    }
}

/// Refuses a file name (or revision) that would leave the repository's snapshot folder: names
/// come from files we do not control (a safetensors index, a steering plan's sae_id), and the
/// cache is laid out as plain folders, so `../` or an absolute path would read any file.
fn check_in_repo(what: &str, name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        bail!(
            "the {what} '{}' is not a path inside a Hugging Face repository ('..' and absolute paths are refused)",
            crate::files::printable(name, 200)
        );
    }
    Ok(())
}

/// True when `s` looks like a Hub repository id (`org/name`) rather than a local path.
pub fn looks_like_repo_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && *p != ".."
        })
        && !Path::new(s).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lays out a cache the way huggingface_hub writes it: refs/main -> commit, snapshots/<commit>/file.
    fn fake_cache(root: &Path, repo_dir: &str, commit: &str, file: &str) {
        let repo = root.join(repo_dir);
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let snap = repo.join("snapshots").join(commit);
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join(file), "{}").unwrap();
    }

    #[test]
    fn cached_files_resolve_by_branch_and_commit() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        fake_cache(dir.path(), "models--google--gemma-2-2b", commit, "config.json");
        let hub = Hub {
            cache_dir: dir.path().into(),
            offline: true,
            token: None,
            progress: false,
        };
        let by_branch = hub
            .file("google/gemma-2-2b", RepoKind::Model, "main", "config.json")
            .unwrap();
        let by_commit = hub
            .file("google/gemma-2-2b", RepoKind::Model, commit, "config.json")
            .unwrap();
        assert_eq!(by_branch, by_commit);
        let err = hub
            .file("google/gemma-2-2b", RepoKind::Model, "main", "missing.json")
            .unwrap_err();
        assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
        assert!(
            hub.file("google/gemma-2-2b", RepoKind::Dataset, "main", "config.json")
                .is_err()
        );
    }

    #[test]
    fn names_leaving_the_snapshot_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let commit = "0123456789abcdef0123456789abcdef01234567";
        fake_cache(dir.path(), "models--a--b", commit, "config.json");
        std::fs::write(dir.path().join("secret.json"), "{}").unwrap();
        let hub = Hub {
            cache_dir: dir.path().into(),
            offline: true,
            token: None,
            progress: false,
        };
        let escape = "../../../secret.json";
        assert!(hub.cached("a/b", RepoKind::Model, "main", escape).is_none());
        let outside = dir.path().join("secret.json");
        for name in [escape, outside.to_str().unwrap()] {
            let err = hub
                .file("a/b", RepoKind::Model, "main", name)
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a path inside"), "{err}");
        }
        let err = hub
            .file("a/b", RepoKind::Model, "../../x", "config.json")
            .unwrap_err()
            .to_string();
        assert!(err.contains("revision"), "{err}");
    }

    #[test]
    fn download_bars_count_bytes_across_resumed_attempts() {
        let mut bar = DownloadBar(progress::bytes_bar(0, "model.safetensors", false));
        bar.init(1000, "model.safetensors");
        bar.update(300);
        // A retry resumes: init again, then the bytes already on disk.
        bar.init(1000, "model.safetensors");
        bar.update(300);
        bar.update(700);
        bar.finish();
        assert_eq!(bar.0.length(), Some(1000));
        assert_eq!(bar.0.position(), 1000);
        assert_eq!(bar_label("config.json"), "config.json");
        let long = format!("{}é.safetensors", "x".repeat(40));
        let label = bar_label(&long);
        assert!(
            label.starts_with("..") && label.ends_with("é.safetensors"),
            "{label}"
        );
        assert_eq!(label.chars().count(), 32);
    }

    #[test]
    fn repo_ids_are_told_from_paths() {
        assert!(looks_like_repo_id("google/gemma-2-2b"));
        assert!(!looks_like_repo_id("models/tiny-gemma2/extra"));
        assert!(!looks_like_repo_id("../x"));
        assert!(!looks_like_repo_id("gemma"));
    }
}
