//! The files of the checkpoint a model was exported from that a runtime needs beside the graph:
//! `config.json`, `generation_config.json` and the tokenizer's files. Found in `--checkpoint DIR`,
//! else where the model's metadata says it came from (a folder, or a Hugging Face id read
//! through the cache).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::contract::meta;
use crate::hub::{Hub, RepoKind, looks_like_repo_id};
use crate::onnx::Model;

/// Tokenizer files a runtime may read, with whether every runtime needs it.
const TOKENIZER_FILES: [(&str, bool); 4] = [
    ("tokenizer.json", true),
    ("tokenizer_config.json", true),
    ("special_tokens_map.json", false),
    ("tokenizer.model", false),
];

#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub config: PathBuf,
    pub generation_config: Option<PathBuf>,
    /// (file name, path) of each tokenizer file found.
    pub tokenizer: Vec<(&'static str, PathBuf)>,
}

/// Where one kind of file comes from.
enum Origin<'a> {
    Folder(PathBuf),
    Repo { id: &'a str, revision: &'a str },
}

impl Origin<'_> {
    fn file(&self, hub: &Hub, name: &str) -> Result<Option<PathBuf>> {
        match self {
            Self::Folder(dir) => {
                let path = dir.join(name);
                Ok(path.is_file().then_some(path))
            }
            Self::Repo { id, revision } => match hub.file(id, RepoKind::Model, revision, name) {
                Ok(path) => Ok(Some(path)),
                Err(_)
                    if hub
                        .list(id, RepoKind::Model, revision)
                        .is_ok_and(|l| !l.iter().any(|f| f == name)) =>
                {
                    Ok(None)
                }
                Err(e) => Err(e),
            },
        }
    }

    fn describe(&self) -> String {
        match self {
            Self::Folder(dir) => format!("'{}'", dir.display()),
            Self::Repo { id, .. } => format!("the Hugging Face repository {id}"),
        }
    }
}

impl CheckpointFiles {
    pub fn find(hub: &Hub, model: &Model, checkpoint: Option<&Path>) -> Result<Self> {
        let revision = model.metadata(meta::REVISION).unwrap_or("main");
        let origin = |key: &str| -> Result<Origin<'_>> {
            if let Some(dir) = checkpoint {
                if !dir.is_dir() {
                    bail!("--checkpoint '{}' is not a folder", dir.display());
                }
                return Ok(Origin::Folder(dir.to_path_buf()));
            }
            let Some(source) = model.metadata(key) else {
                bail!(
                    "the model's metadata has no {key} (it was not exported by sae-onnx): pass --checkpoint DIR, \
                     the Hugging Face checkpoint folder with config.json and the tokenizer files"
                );
            };
            let path = Path::new(source);
            if path.is_dir() {
                Ok(Origin::Folder(path.to_path_buf()))
            } else if path.is_file() {
                Ok(Origin::Folder(crate::files::parent_dir(path).to_path_buf()))
            } else if looks_like_repo_id(source) {
                Ok(Origin::Repo { id: source, revision })
            } else {
                bail!(
                    "the model was exported from '{source}', which is no longer there: pass --checkpoint DIR, \
                     the checkpoint folder with config.json and the tokenizer files"
                )
            }
        };
        let source = origin(meta::SOURCE)?;
        let config = source
            .file(hub, "config.json")?
            .with_context(|| format!("{} has no config.json; pass --checkpoint DIR", source.describe()))?;
        let generation_config = source.file(hub, "generation_config.json")?;
        let tokenizer_origin = origin(meta::TOKENIZER)?;
        let mut tokenizer = Vec::new();
        for (name, required) in TOKENIZER_FILES {
            match tokenizer_origin.file(hub, name)? {
                Some(path) => tokenizer.push((name, path)),
                None if required => bail!(
                    "the model has no tokenizer to package: {} has no {name}. Pass --checkpoint DIR, a folder with \
                     the model's tokenizer.json and tokenizer_config.json (and config.json)",
                    tokenizer_origin.describe()
                ),
                None => {}
            }
        }
        Ok(Self {
            config,
            generation_config,
            tokenizer,
        })
    }

    /// Every file found, for the command's list of inputs.
    pub fn paths(&self) -> Vec<PathBuf> {
        std::iter::once(&self.config)
            .chain(&self.generation_config)
            .chain(self.tokenizer.iter().map(|(_, p)| p))
            .cloned()
            .collect()
    }
}
