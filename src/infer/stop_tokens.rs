//! The token ids that end a generation, chosen as transformers' `generate` chooses them: the
//! model's `generation_config.json` `eos_token_id` (an id or a list of ids: Gemma 2 IT
//! `[1, 107]` = `<eos>`, `<end_of_turn>`; Llama 3 Instruct `<|end_of_text|>`, `<|eom_id|>`,
//! `<|eot_id|>`; Qwen 3 `<|im_end|>`, `<|endoftext|>`), else `config.json`'s (what
//! `GenerationConfig.from_model_config` copies when the checkpoint has no generation config),
//! else the tokenizer's `eos_token` (GPT-2: `<|endoftext|>`), else `<eos>` or `</s>`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

use crate::contract::meta;
use crate::hub::{Hub, RepoKind, looks_like_repo_id};
use crate::onnx::Model;
use crate::tokenizer::Tokenizer;

/// The checkpoint files that can name the end-of-sequence ids, first found wins.
const CONFIG_FILES: [&str; 2] = ["generation_config.json", "config.json"];

/// The sorted end-of-sequence ids of `model` (see the module comment); a malformed
/// `eos_token_id` is an error naming its file.
pub fn eos_token_ids(hub: &Hub, model: &Model, tokenizer: &Tokenizer) -> Result<Vec<u32>> {
    for name in CONFIG_FILES {
        let Some(path) = checkpoint_file(hub, model, name) else {
            continue;
        };
        if let Some(mut ids) = eos_field(&path)? {
            ids.sort_unstable();
            ids.dedup();
            return Ok(ids);
        }
    }
    Ok(tokenizer.eos_token_id()?.into_iter().collect())
}

/// `name` in the checkpoint the model was exported from (its folder, or its hub id at the
/// exported revision); `None` when the metadata names no checkpoint or it has no such file
/// (transformers, too, goes on without a missing generation config).
fn checkpoint_file(hub: &Hub, model: &Model, name: &str) -> Option<PathBuf> {
    let source = model.metadata(meta::SOURCE)?;
    if Path::new(source).is_dir() {
        let path = Path::new(source).join(name);
        return path.is_file().then_some(path);
    }
    if !looks_like_repo_id(source) {
        return None;
    }
    let revision = model.metadata(meta::REVISION).unwrap_or("main");
    hub.file(source, RepoKind::Model, revision, name).ok()
}

/// The `eos_token_id` of the JSON file at `path`: `None` when absent, null or an empty list.
fn eos_field(path: &Path) -> Result<Option<Vec<u32>>> {
    let text = crate::files::read_text(path, "model configuration", 16 << 20)?;
    let value: serde_json::Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => bail!(
            "'{}' is not valid JSON ({e}); fix or delete the file",
            path.display()
        ),
    };
    let field = match &value {
        serde_json::Value::Object(o) => o.get("eos_token_id"),
        _ => bail!(
            "'{}' is not a JSON object; fix or delete the file",
            path.display()
        ),
    };
    let listed: Vec<&serde_json::Value> = match field {
        None | Some(serde_json::Value::Null) => return Ok(None),
        Some(serde_json::Value::Array(a)) => a.iter().collect(),
        Some(v) => vec![v],
    };
    let ids = listed
        .iter()
        .map(|v| v.as_u64().and_then(|n| u32::try_from(n).ok()))
        .collect::<Option<Vec<u32>>>();
    match ids {
        Some(ids) if ids.is_empty() => Ok(None),
        Some(ids) => Ok(Some(ids)),
        None => bail!(
            "'{}': eos_token_id is {}, not a token id or a list of token ids; fix the file",
            path.display(),
            crate::files::printable(&field.map(|v| v.to_string()).unwrap_or_default(), 80)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(json: &str) -> Result<Option<Vec<u32>>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("generation_config.json");
        std::fs::write(&path, json).unwrap();
        eos_field(&path)
    }

    #[test]
    fn eos_token_id_is_an_id_or_a_list_of_ids() {
        assert_eq!(field(r#"{"eos_token_id": 1}"#).unwrap(), Some(vec![1]));
        assert_eq!(
            field(r#"{"eos_token_id": [1, 107]}"#).unwrap(),
            Some(vec![1, 107])
        );
        assert_eq!(field(r#"{"eos_token_id": null}"#).unwrap(), None);
        assert_eq!(field(r#"{"eos_token_id": []}"#).unwrap(), None);
        assert_eq!(field(r#"{"bos_token_id": 2}"#).unwrap(), None);
    }

    #[test]
    fn a_malformed_eos_token_id_is_an_error_naming_the_file() {
        for bad in [
            r#"{"eos_token_id": "</s>"}"#,
            r#"{"eos_token_id": -1}"#,
            r#"{"eos_token_id": [1, 2.5]}"#,
            r#"{"eos_token_id": 4294967296}"#,
            r#"[1]"#,
            "{",
        ] {
            let e = format!("{:#}", field(bad).unwrap_err());
            assert!(e.contains("generation_config.json"), "{bad}: {e}");
        }
    }
}
