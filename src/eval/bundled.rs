//! The task files built into the binary (`build.rs` embeds `tasks/`). The task loader reads
//! folders (includes, local data files and `config_source` in the results are paths), so the
//! files are written once to `$SAE_ONNX_HOME/tasks/<content hash>/` and read from there: an
//! installed binary needs no checkout, and binaries with different tasks never share a folder.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::files;

mod embedded {
    include!(concat!(env!("OUT_DIR"), "/bundled_tasks.rs"));
}

/// The bundled task folder: `SAE_ONNX_TASKS` when set, else the lm-eval YAMLs built into the
/// binary, written once under the cache root (an installed binary has no checkout to read).
pub fn tasks_dir() -> Result<PathBuf> {
    match std::env::var_os("SAE_ONNX_TASKS").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                bail!(
                    "SAE_ONNX_TASKS is '{}', which is not a folder; point it at a folder of task YAMLs, or unset it for the bundled tasks",
                    dir.display()
                );
            }
            Ok(dir)
        }
        None => extract(&crate::paths::cache_root()),
    }
}

/// The embedded files: paths relative to the task folder, and their bytes.
pub fn files() -> &'static [(&'static str, &'static [u8])] {
    embedded::FILES
}

/// The folder name: the first 16 hex digits of a SHA-256 over every file's name and bytes.
fn content_hash() -> String {
    let mut hasher = Sha256::new();
    for (name, bytes) in files() {
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    }
    hasher
        .finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The bundled task folder under `root` (the cache root), written there first if missing or
/// not exactly the embedded files (an interrupted copy, or an edit: the scores must come from
/// the tasks this binary ships).
pub fn extract(root: &Path) -> Result<PathBuf> {
    let parent = root.join("tasks");
    let hash = content_hash();
    let dir = parent.join(&hash);
    if matches(&dir) {
        return Ok(dir);
    }
    let fix = "set SAE_ONNX_HOME to a writable folder, or SAE_ONNX_TASKS to a folder of task YAMLs";
    fs::create_dir_all(&parent).with_context(|| {
        format!(
            "cannot create '{}' for the bundled tasks; {fix}",
            parent.display()
        )
    })?;
    let temp =
        files::temp_dir(&parent, &hash).with_context(|| format!("cannot write the bundled tasks; {fix}"))?;
    write_all(temp.path()).with_context(|| format!("cannot write the bundled tasks; {fix}"))?;
    if dir.exists() {
        // Not the embedded files (checked above, or another run is replacing it now): moved
        // aside whole, since a folder cannot be renamed over a non-empty one.
        let aside = files::temp_dir(&parent, &hash)?;
        if fs::rename(&dir, aside.path().join("old")).is_err() && matches(&dir) {
            return Ok(dir);
        }
    }
    match fs::rename(temp.path(), &dir) {
        Ok(()) => {
            let _ = temp.keep();
            Ok(dir)
        }
        // Another run put the same files there first.
        Err(_) if matches(&dir) => Ok(dir),
        Err(e) => {
            Err(e).with_context(|| format!("cannot move the bundled tasks into '{}'; {fix}", dir.display()))
        }
    }
}

fn write_all(dir: &Path) -> Result<()> {
    for (name, bytes) in files() {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).with_context(|| format!("cannot create '{}'", parent.display()))?;
        }
        let mut temp = files::temp_file_for(&path)?;
        std::io::Write::write_all(&mut temp, bytes)
            .with_context(|| format!("cannot write '{}'", path.display()))?;
        files::persist(temp, &path)?;
    }
    Ok(())
}

/// Whether `dir` holds exactly the embedded files, byte for byte, and nothing else.
fn matches(dir: &Path) -> bool {
    let mut found = BTreeSet::new();
    if !list(dir, dir, &mut found) {
        return false;
    }
    let expected: BTreeSet<PathBuf> = files().iter().map(|(name, _)| PathBuf::from(name)).collect();
    found == expected
        && files()
            .iter()
            .all(|(name, bytes)| fs::read(dir.join(name)).is_ok_and(|b| b == *bytes))
}

/// The regular files below `dir`, relative to `root`; false if anything cannot be listed or
/// is neither a folder nor a regular file (a link could point anywhere).
fn list(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) -> bool {
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };
    for entry in entries {
        let Ok(entry) = entry else { return false };
        let Ok(kind) = entry.file_type() else {
            return false;
        };
        let path = entry.path();
        if kind.is_dir() {
            if !list(root, &path, out) {
                return false;
            }
        } else if kind.is_file() {
            let Ok(relative) = path.strip_prefix(root) else {
                return false;
            };
            out.insert(relative.to_path_buf());
        } else {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeds_the_tasks_but_not_the_scripts() {
        let names: Vec<&str> = files().iter().map(|(n, _)| *n).collect();
        assert!(
            names.contains(&"mmlu/default/_default_template_yaml"),
            "{names:?}"
        );
        assert!(names.contains(&"local_text/local_text.jsonl"), "{names:?}");
        assert!(
            !names.iter().any(|n| n.ends_with(".py") || *n == "README.md"),
            "{names:?}"
        );
    }

    #[test]
    fn extracts_once_and_repairs_an_edited_copy() {
        let root = tempfile::tempdir().unwrap();
        let dir = extract(root.path()).unwrap();
        assert!(dir.join("mmlu/default/_mmlu.yaml").is_file());
        let yaml = dir.join("local_text/local_text.yaml");
        fs::write(&yaml, "task: tampered\n").unwrap();
        fs::write(dir.join("extra.yaml"), "task: extra\n").unwrap();
        assert_eq!(extract(root.path()).unwrap(), dir);
        assert!(!dir.join("extra.yaml").exists());
        let original = files()
            .iter()
            .find(|(n, _)| *n == "local_text/local_text.yaml")
            .unwrap()
            .1;
        assert_eq!(fs::read(&yaml).unwrap(), original);
        // Nothing is left beside the folder: no temporary or set-aside copies.
        let siblings: Vec<_> = fs::read_dir(root.path().join("tasks"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(siblings.len(), 1, "{siblings:?}");
    }
}
