//! Hugging Face datasets through hf-hub: the repository's own parquet files, or its parquet
//! conversion branch (`refs/convert/parquet`), read from the standard cache and downloaded when
//! missing (unless offline). Rows become JSON documents, columns in file order.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::data::{Dataset, read_parquet};
use crate::hub::{Hub, RepoKind};

const CONVERTED: &str = "refs/convert/parquet";

/// Loads every split of `config` (lm-eval's `dataset_name`; `default` when absent) of `repo`.
pub fn load_hub_dataset(
    hub: &Hub,
    repo: &str,
    config: Option<&str>,
    kwargs: Option<&Map<String, Value>>,
) -> Result<Dataset> {
    if kwargs.is_some_and(|k| k.keys().any(|key| key != "trust_remote_code")) {
        bail!("dataset_kwargs other than data_files are not supported for hub dataset '{repo}'");
    }
    let config = config.unwrap_or("default");
    let mut last_error = None;
    for revision in ["main", CONVERTED] {
        match parquet_files(hub, repo, revision, config) {
            Ok(files) if !files.is_empty() => return read_splits(hub, repo, revision, &files),
            Ok(_) => {}
            Err(err) => last_error = Some(err),
        }
    }
    let why = last_error.map(|e| format!(": {e:#}")).unwrap_or_default();
    bail!(
        "found no parquet files for config '{config}' of dataset '{repo}' (looked in its main branch and {CONVERTED}){why}"
    )
}

/// `(split, file in repo)` for the config's parquet files at `revision`.
fn parquet_files(hub: &Hub, repo: &str, revision: &str, config: &str) -> Result<Vec<(String, String)>> {
    let names = list_files(hub, repo, revision)?;
    let mut files: Vec<(String, String)> = names
        .into_iter()
        .filter(|f| f.ends_with(".parquet"))
        .filter_map(|f| {
            let rest = f
                .strip_prefix(&format!("{config}/"))
                .or_else(|| (config == "default").then_some(f.as_str()))?;
            split_of(rest).map(|split| (split, f.clone()))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The split a parquet path names: `test/0000.parquet`, `test-00000-of-00001.parquet`, or
/// `data/test-00000-of-00001.parquet`.
fn split_of(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = path.split('/').collect();
    let file = parts.pop()?;
    if parts.first() == Some(&"data") {
        parts.remove(0);
    }
    match parts.as_slice() {
        [split] => Some((*split).to_owned()),
        [] => file
            .split(['-', '.'])
            .next()
            .filter(|s| !s.is_empty())
            .map(str::to_owned),
        _ => None,
    }
}

/// Files of the repository at `revision`: from the cached snapshot, or from the hub's listing.
fn list_files(hub: &Hub, repo: &str, revision: &str) -> Result<Vec<String>> {
    let repo_dir = hub.repo_dir(repo, RepoKind::Dataset);
    if let Ok(commit) = std::fs::read_to_string(repo_dir.join("refs").join(revision)) {
        let snapshot = repo_dir.join("snapshots").join(commit.trim());
        let mut files = Vec::new();
        walk(&snapshot, &snapshot, &mut files)?;
        if !files.is_empty() {
            return Ok(files);
        }
    }
    if hub.offline {
        return Ok(Vec::new());
    }
    hub.list(repo, RepoKind::Dataset, revision)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    for entry in entries {
        let path = entry
            .with_context(|| format!("cannot list '{}'", dir.display()))?
            .path();
        if path.is_dir() {
            walk(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    Ok(())
}

fn read_splits(hub: &Hub, repo: &str, revision: &str, files: &[(String, String)]) -> Result<Dataset> {
    let mut dataset = Dataset::new();
    for (split, file) in files {
        let path: PathBuf = hub.file(repo, RepoKind::Dataset, revision, file)?;
        let part = read_parquet(&path)?;
        let entry = dataset.entry(split.clone()).or_default();
        if entry.columns.is_empty() {
            entry.columns = part.columns;
        }
        entry.docs.extend(part.docs);
    }
    Ok(dataset)
}

#[cfg(test)]
mod tests {
    use super::split_of;

    #[test]
    fn split_names_come_from_folders_or_file_prefixes() {
        assert_eq!(split_of("test/0000.parquet").as_deref(), Some("test"));
        assert_eq!(split_of("dev-00000-of-00001.parquet").as_deref(), Some("dev"));
        assert_eq!(
            split_of("data/validation-00000-of-00001.parquet").as_deref(),
            Some("validation")
        );
        assert_eq!(split_of("a/b/c.parquet"), None);
    }
}
