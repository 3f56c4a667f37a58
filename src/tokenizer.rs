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

    /// transformers' `tokenizer.all_special_ids`, sorted: the ids of the special tokens that
    /// `tokenizer_config.json` and `special_tokens_map.json` beside the tokenizer name (`bos_token`,
    /// `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token`,
    /// `additional_special_tokens`, `extra_special_tokens`; the map overrides the config, as
    /// `from_pretrained` reads them). A token missing from the vocabulary is `<unk>`'s id, as
    /// `convert_tokens_to_ids` gives it.
    pub fn all_special_ids(&self) -> Result<Vec<u32>> {
        let named = self.named_special_tokens()?;
        let mut tokens: Vec<String> = Vec::new();
        for key in special_token_keys() {
            let Some(value) = named.get(key) else { continue };
            let listed: Vec<&serde_json::Value> = match value {
                serde_json::Value::Array(a) => a.iter().collect(),
                serde_json::Value::Object(o) if key == "extra_special_tokens" => o.values().collect(),
                v => vec![v],
            };
            tokens.extend(listed.into_iter().filter_map(token_content));
        }
        let unk = named.get("unk_token").and_then(token_content);
        let mut ids: Vec<u32> = tokens
            .iter()
            .filter_map(|t| {
                self.token_id(t)
                    .or_else(|| unk.as_deref().and_then(|u| self.token_id(u)))
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The special tokens `tokenizer_config.json` and `special_tokens_map.json` beside the
    /// tokenizer name, by attribute (the map overrides the config, as `from_pretrained` reads
    /// them); absent files name none.
    fn named_special_tokens(&self) -> Result<serde_json::Map<String, serde_json::Value>> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut named = serde_json::Map::new();
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            let path = dir.join(file);
            if !path.is_file() {
                continue;
            }
            let text = crate::files::read_text(&path, "tokenizer configuration", 64 << 20)?;
            let value: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", path.display()))?;
            if let serde_json::Value::Object(map) = value {
                for (k, v) in map {
                    if special_token_keys().any(|key| key == k) && !v.is_null() {
                        named.insert(k, v);
                    }
                }
            }
        }
        Ok(named)
    }

    /// transformers' `bos_token_id`: the configuration's `bos_token` (GPT-2: `<|endoftext|>`), else
    /// `<bos>` or `<s>` when no configuration names one.
    pub fn bos_token_id(&self) -> Result<Option<u32>> {
        self.configured_token_id("bos_token", self.bos_id)
    }

    /// transformers' `eos_token_id`: the configuration's `eos_token` (GPT-2 and Qwen:
    /// `<|endoftext|>`, Llama 3: `<|end_of_text|>`), else `<eos>` or `</s>` when no configuration
    /// names one.
    pub fn eos_token_id(&self) -> Result<Option<u32>> {
        self.configured_token_id("eos_token", self.eos_id)
    }

    /// The id of the special token the configuration names as `key`, else `usual`.
    fn configured_token_id(&self, key: &str, usual: Option<u32>) -> Result<Option<u32>> {
        match self.named_special_tokens()?.get(key).and_then(token_content) {
            Some(token) => Ok(self.token_id(&token)),
            None => Ok(usual),
        }
    }

    /// Whether encoding with special tokens starts the text with BOS, as Gemma's and Llama's
    /// tokenizers do and GPT-2's and Qwen's do not.
    pub fn adds_bos(&self) -> Result<bool> {
        let Some(bos) = self.bos_token_id()? else {
            return Ok(false);
        };
        let with = self.encode("a", true)?;
        let without = self.encode("a", false)?;
        Ok(with.first() == Some(&bos) && without.first() != Some(&bos))
    }
}

/// transformers' single-token special attributes, in `SPECIAL_TOKENS_ATTRIBUTES` order (what a
/// chat template sees as variables).
pub const SPECIAL_TOKEN_ATTRIBUTES: [&str; 7] = [
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// After them, the lists: `additional_special_tokens` and the model-specific `extra_special_tokens`.
const SPECIAL_TOKEN_LISTS: [&str; 2] = ["additional_special_tokens", "extra_special_tokens"];

fn special_token_keys() -> impl Iterator<Item = &'static str> {
    SPECIAL_TOKEN_ATTRIBUTES.into_iter().chain(SPECIAL_TOKEN_LISTS)
}

/// A special token as the files write it: `"<bos>"` or `{"content": "<bos>", ...}`.
fn token_content(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// The `tokenizer_config.json` beside `tokenizer` (the one [`Tokenizer::for_model`] found for
/// `model`), fetched from the hub first when the tokenizer came from there; it may not exist.
pub fn config_path(hub: &Hub, model: &Model, tokenizer: &Tokenizer, explicit: Option<&str>) -> PathBuf {
    let path = tokenizer.path.with_file_name("tokenizer_config.json");
    let source = explicit.or_else(|| model.metadata(meta::TOKENIZER));
    if !path.is_file()
        && let Some(source) = source
        && !Path::new(source).exists()
        && looks_like_repo_id(source)
    {
        let revision = model
            .metadata(meta::REVISION)
            .filter(|_| explicit.is_none())
            .unwrap_or("main");
        // A repository without one has no chat template: the caller says so, naming the path.
        if let Ok(fetched) = hub.file(source, RepoKind::Model, revision, "tokenizer_config.json") {
            return fetched;
        }
    }
    path
}

/// The special token ids of `model`'s tokenizer ([`Tokenizer::all_special_ids`]); for a tokenizer
/// from the hub, its two configuration files are fetched beside it first (a repository without
/// them has none).
pub fn special_token_ids(hub: &Hub, model: &Model) -> Result<Vec<u32>> {
    let tokenizer = Tokenizer::for_model(hub, model, None)?;
    if let Some(source) = model.metadata(meta::TOKENIZER)
        && !Path::new(source).exists()
        && looks_like_repo_id(source)
    {
        let revision = model.metadata(meta::REVISION).unwrap_or("main");
        for file in ["tokenizer_config.json", "special_tokens_map.json"] {
            // Absent files are what transformers also does without: no special tokens of that kind.
            let _ = hub.file(source, RepoKind::Model, revision, file);
        }
    }
    tokenizer.all_special_ids()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test tokenizer, beside `config` as its tokenizer_config.json, with its post-processor
    /// (which adds `<bos>`) kept or dropped.
    fn tokenizer(post_processor: bool, config: &str) -> (tempfile::TempDir, Tokenizer) {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tokenizer/tokenizer.json"
        );
        let mut json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        if !post_processor {
            json["post_processor"] = serde_json::Value::Null;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokenizer.json"), json.to_string()).unwrap();
        std::fs::write(dir.path().join("tokenizer_config.json"), config).unwrap();
        let t = Tokenizer::from_file(&dir.path().join("tokenizer.json")).unwrap();
        (dir, t)
    }

    #[test]
    fn adds_bos_tells_a_gemma_tokenizer_from_one_without_a_bos_template() {
        let (_d, gemma) = tokenizer(true, r#"{"bos_token": "<bos>"}"#);
        assert!(gemma.adds_bos().unwrap());
        let (_d, plain) = tokenizer(false, r#"{"bos_token": "<bos>"}"#);
        assert!(!plain.adds_bos().unwrap());
        assert_eq!(plain.bos_token_id().unwrap(), gemma.bos_id);
    }

    #[test]
    fn the_configured_bos_token_wins_over_the_usual_spellings() {
        let (_d, t) = tokenizer(false, r#"{"bos_token": {"content": "<eos>"}}"#);
        assert_eq!(t.bos_token_id().unwrap(), t.eos_id);
        let (_d, t) = tokenizer(false, "{}");
        assert_eq!(t.bos_token_id().unwrap(), t.bos_id);
    }

    #[test]
    fn the_configured_eos_token_wins_over_the_usual_spellings() {
        let (_d, t) = tokenizer(false, r#"{"eos_token": {"content": "<bos>"}}"#);
        assert_eq!(t.eos_token_id().unwrap(), t.bos_id);
        let (_d, t) = tokenizer(false, "{}");
        assert_eq!(t.eos_token_id().unwrap(), t.eos_id);
    }
}
