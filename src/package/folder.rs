//! The output folder of `package`: built under a temporary name beside OUT and renamed into
//! place when complete, so OUT is either the whole package or what it was before. `--force`
//! replaces an existing OUT only after the new one is complete, and never a folder holding one
//! of the command's inputs.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub struct OutputFolder {
    staging: tempfile::TempDir,
    target: PathBuf,
    replace: bool,
}

impl OutputFolder {
    /// Checks `target` (absent, or a folder that `force` allows to replace and that holds none
    /// of `inputs`) and makes the staging folder beside it.
    pub fn create(target: &Path, inputs: &[PathBuf], force: bool) -> Result<Self> {
        let name = target
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("'{}' is not a folder name for the output", target.display()))?
            .to_owned();
        let parent = crate::files::parent_dir(target);
        if !parent.is_dir() {
            bail!("the folder '{}' for the output does not exist", parent.display());
        }
        let replace = match fs::symlink_metadata(target) {
            Err(_) => false,
            Ok(meta) if !meta.is_dir() => bail!(
                "'{}' exists and is not a folder; the package is a folder: choose another -o",
                target.display()
            ),
            Ok(_) if !force => bail!(
                "'{}' already exists; pass --force to replace it",
                target.display()
            ),
            Ok(_) => {
                let out = fs::canonicalize(target)
                    .with_context(|| format!("cannot read '{}'", target.display()))?;
                for input in inputs {
                    if fs::canonicalize(input).is_ok_and(|i| i.starts_with(&out)) {
                        bail!(
                            "refusing to replace '{}': it holds '{}', an input of this command",
                            target.display(),
                            input.display()
                        );
                    }
                }
                true
            }
        };
        Ok(Self {
            staging: crate::files::temp_dir(parent, &name)?,
            target: target.to_path_buf(),
            replace,
        })
    }

    /// The staging folder to write into.
    pub fn path(&self) -> &Path {
        self.staging.path()
    }

    /// Renames the complete package into place (an existing OUT moves aside first and is
    /// removed after).
    pub fn commit(self) -> Result<()> {
        let staged = self.staging.keep();
        let result = if self.replace {
            replace_folder(&staged, &self.target)
        } else {
            fs::rename(&staged, &self.target)
                .with_context(|| format!("cannot create '{}'", self.target.display()))
        };
        if result.is_err() {
            let _ = fs::remove_dir_all(&staged);
        }
        result
    }
}

fn replace_folder(staged: &Path, target: &Path) -> Result<()> {
    let old = staged.with_extension("old");
    fs::rename(target, &old)
        .with_context(|| format!("cannot move '{}' aside to replace it", target.display()))?;
    if let Err(err) = fs::rename(staged, target) {
        let _ = fs::rename(&old, target);
        return Err(err).with_context(|| format!("cannot create '{}'", target.display()));
    }
    fs::remove_dir_all(&old).with_context(|| {
        format!(
            "replaced '{}' but cannot remove its old copy '{}'",
            target.display(),
            old.display()
        )
    })
}
