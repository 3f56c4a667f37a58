//! `generate` stops where transformers' `generate` stops: at the ids of the checkpoint's
//! `generation_config.json` `eos_token_id` (an id or a list, Llama 3 / Qwen style), else
//! config.json's. By construction from transformers' own greedy tokens
//! (tests/fixtures/families, make_families.py, generated with eos 1 which they never reach):
//! naming one of those tokens as an end-of-sequence id makes greedy generation (deterministic,
//! so transformers' tokens up to there are the same) stop exactly there, and without it the same
//! generation runs past it.

use crate::common;

use std::path::{Path, PathBuf};

use common::golden::Golden;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};

/// make_families.py's MAX_NEW_TOKENS.
const MAX_NEW_TOKENS: usize = 16;

/// The family's fixture copied to `dir`, with `edit` applied to the copy's JSON file `file`
/// (`None` deletes it).
fn edited_copy(family: &str, dir: &Path, file: &str, edit: Option<serde_json::Value>) -> PathBuf {
    let source = common::fixture(&format!("families/{family}"));
    let copy = dir.join(family);
    std::fs::create_dir_all(&copy).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, copy.join(path.file_name().unwrap())).unwrap();
    }
    match edit {
        Some(patch) => {
            let path = copy.join(file);
            let mut json: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            for (k, v) in patch.as_object().unwrap() {
                json[k] = v.clone();
            }
            std::fs::write(&path, json.to_string()).unwrap();
        }
        None => std::fs::remove_file(copy.join(file)).unwrap(),
    }
    copy
}

/// Greedy tokens and finish reason of prompt 0 of the family's golden, from the checkpoint at `dir`.
fn generate(dir: &Path, out: &Path, family: &str) -> (Vec<u32>, String) {
    export::export(dir.to_str().unwrap(), out, &ExportOptions::default()).unwrap();
    let golden = Golden::load(&common::fixture(&format!(
        "families/{family}/golden_generate.safetensors"
    )));
    let prompt: Vec<u32> = golden.i64s("p0.prompt_ids").1.iter().map(|&t| t as u32).collect();
    let options = GenerateOptions {
        max_new_tokens: MAX_NEW_TOKENS,
        ..Default::default()
    };
    let mut generator = Generator::open(out, &options).unwrap();
    let g = generator.generate(&prompt, &options, |_| {}).unwrap();
    (g.tokens, g.finish.to_string())
}

/// transformers' greedy tokens for prompt 0, and a token among them (not the first) with the
/// index where it first appears.
fn golden_tokens(family: &str) -> (Vec<u32>, u32, usize) {
    let golden = Golden::load(&common::fixture(&format!(
        "families/{family}/golden_generate.safetensors"
    )));
    let tokens: Vec<u32> = golden
        .i64s("p0.generated_ids")
        .1
        .iter()
        .map(|&t| t as u32)
        .collect();
    let (at, &stop) = tokens
        .iter()
        .enumerate()
        .skip(2)
        .find(|(i, t)| !tokens[..*i].contains(t))
        .expect("a token that first appears past the start");
    (tokens, stop, at)
}

#[test]
fn generate_stops_at_the_generation_configs_eos_ids_as_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for (family, file, list) in [
        // Llama 3 Instruct style: a list in generation_config.json.
        ("llama", "generation_config.json", true),
        // Qwen style: an id in generation_config.json.
        ("qwen3", "generation_config.json", false),
        // No generation_config.json: config.json's, as GenerationConfig.from_model_config.
        ("qwen2", "config.json", false),
    ] {
        let (golden, stop, at) = golden_tokens(family);
        let family_dir = tmp.path().join(family);
        let (unedited, finish) = generate(
            &common::fixture(&format!("families/{family}")),
            &tmp.path().join(format!("{family}_base.onnx")),
            family,
        );
        assert_eq!(unedited, golden, "{family}: unedited");
        assert_eq!(finish, "length", "{family}: the golden runs past {stop}");
        let eos = if list {
            serde_json::json!([1, stop])
        } else {
            serde_json::json!(stop)
        };
        let dir = edited_copy(
            family,
            &family_dir,
            file,
            Some(serde_json::json!({"eos_token_id": eos})),
        );
        if file == "config.json" {
            std::fs::remove_file(dir.join("generation_config.json")).unwrap();
        }
        let (tokens, finish) = generate(&dir, &tmp.path().join(format!("{family}_stop.onnx")), family);
        // transformers keeps the id it stopped at; generate stops before it.
        assert_eq!(tokens, golden[..at], "{family}: eos {eos} in {file}");
        assert_eq!(finish, "eos", "{family}: eos {eos} in {file}");
    }
}

#[test]
fn a_malformed_eos_token_id_is_refused_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = edited_copy(
        "llama",
        tmp.path(),
        "generation_config.json",
        Some(serde_json::json!({"eos_token_id": "<|eot_id|>"})),
    );
    let out = tmp.path().join("llama.onnx");
    export::export(dir.to_str().unwrap(), &out, &ExportOptions::default()).unwrap();
    let e = match Generator::open(&out, &GenerateOptions::default()) {
        Ok(_) => panic!("a string eos_token_id was accepted"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        e.contains("generation_config.json") && e.contains("eos_token_id"),
        "{e}"
    );
}
