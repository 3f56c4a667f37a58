//! The model's tokenizer (`tokenizer.json`, Hugging Face `tokenizers`), found from the model's
//! metadata: the export's source folder, or its hub id through the Hugging Face cache.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::contract::meta;
use crate::hub::{Hub, RepoKind, looks_like_repo_id};
use crate::onnx::Model;

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
}

impl Tokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| anyhow!("cannot read tokenizer '{}': {e}", path.display()))?;
        let id = |token: &str| inner.token_to_id(token);
        let bos_id = id("<bos>").or_else(|| id("<s>"));
        let eos_id = id("<eos>").or_else(|| id("</s>"));
        Ok(Self {
            inner,
            path: path.to_path_buf(),
            bos_id,
            eos_id,
        })
    }

    /// `--tokenizer` (a tokenizer.json, a folder holding one, or a hub id) if given, else where
    /// the model's metadata says it came from.
    pub fn for_model(hub: &Hub, model: &Model, explicit: Option<&str>) -> Result<Self> {
        let source = match explicit {
            Some(s) => s.to_owned(),
            None => model.metadata(meta::TOKENIZER).map(str::to_owned).with_context(|| {
                "the model's metadata names no tokenizer (it was not exported by sae-onnx): pass --tokenizer \
                 with a tokenizer.json, a folder, or a Hugging Face id"
            })?,
        };
        let path = Path::new(&source);
        let file = if path.is_file() {
            path.to_path_buf()
        } else if path.is_dir() {
            path.join("tokenizer.json")
        } else if looks_like_repo_id(&source) {
            let revision = model
                .metadata(meta::REVISION)
                .filter(|_| explicit.is_none())
                .unwrap_or("main");
            hub.file(&source, RepoKind::Model, revision, "tokenizer.json")?
        } else {
            bail!("tokenizer '{source}' is neither a file, a folder nor a Hugging Face id");
        };
        if !file.is_file() {
            bail!("no tokenizer.json at '{}'; pass --tokenizer", file.display());
        }
        Self::from_file(&file)
    }

    /// Token ids of `text`; `add_special_tokens` applies the tokenizer's template (Gemma: BOS first).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let encoding = self
            .inner
            .encode_fast(text, add_special_tokens)
            .map_err(|e| anyhow!("tokenizing {text:?}: {e}"))?;
        Ok(encoding.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| anyhow!("decoding {ids:?}: {e}"))
    }

    /// The token's text as the vocabulary spells it (`<bos>`).
    pub fn decode_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of a token spelled `token` in the vocabulary (`<end_of_turn>`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
