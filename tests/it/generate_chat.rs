//! `generate --chat` end to end on the demo model: with Gemma 2's and Qwen 3's real chat
//! templates in its tokenizer_config.json, the ids fed to the model (and shown by `--verbose`)
//! are the ids transformers' `apply_chat_template(tokenize=True)` gives
//! (tests/fixtures/chat/golden.json, make_chat.py); `--prepend-bos` puts BOS first where the
//! template writes none; a tokenizer without a template is an error that says so.

use crate::common;

use std::path::{Path, PathBuf};

use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};
use serde_json::Value;

/// transformers' text and ids for `template`'s single-turn conversation with a generation prompt.
fn golden(template: &str) -> (String, Vec<u32>, String) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("chat/golden.json")).unwrap()).unwrap();
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["template"] == template && c["conversation"] == "single" && c["add_generation_prompt"] == true
        })
        .unwrap_or_else(|| panic!("no golden for {template}"));
    let ids = case["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect();
    (
        case["text"].as_str().unwrap().to_owned(),
        ids,
        case["messages"][0]["content"].as_str().unwrap().to_owned(),
    )
}

/// A tokenizer folder: the demo model's tokenizer, with `template` (a file of
/// tests/fixtures/chat/templates) as the chat_template of its tokenizer_config.json.
fn tokenizer_with(dir: &Path, template: Option<&str>) -> PathBuf {
    let out = dir.join(template.unwrap_or("no-template"));
    std::fs::create_dir_all(&out).unwrap();
    std::fs::copy("models/tiny-gemma2/tokenizer.json", out.join("tokenizer.json")).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string("models/tiny-gemma2/tokenizer_config.json").unwrap())
            .unwrap();
    assert!(
        config.get("chat_template").is_none(),
        "the demo config has no template of its own"
    );
    if let Some(t) = template {
        let source = std::fs::read_to_string(common::fixture(&format!("chat/templates/{t}"))).unwrap();
        config["chat_template"] = Value::String(source);
    }
    std::fs::write(out.join("tokenizer_config.json"), config.to_string()).unwrap();
    out
}

/// The binary's `generate` (offline: every file it needs is local).
fn generate(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .arg("generate")
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn options(tokenizer: &Path, prepend_bos: bool) -> GenerateOptions {
    GenerateOptions {
        max_new_tokens: 2,
        chat: true,
        prepend_bos,
        tokenizer: Some(tokenizer.display().to_string()),
        ..Default::default()
    }
}

#[test]
fn chat_prompts_are_the_ids_transformers_renders() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("demo.onnx");
    export::export("models/tiny-gemma2", &model, &ExportOptions::default()).unwrap();

    let gemma = tokenizer_with(tmp.path(), Some("google-gemma-2-2b-it.jinja"));
    let (text, ids, prompt) = golden("google-gemma-2-2b-it.jinja");
    let generator = Generator::open(&model, &options(&gemma, false)).unwrap();
    assert_eq!(generator.encode_prompt(&prompt, true).unwrap(), ids);
    // The template writes <bos>: --prepend-bos adds no second one.
    let with_bos = Generator::open(&model, &options(&gemma, true)).unwrap();
    assert_eq!(with_bos.encode_prompt(&prompt, true).unwrap(), ids);

    // Qwen's template writes no BOS; --prepend-bos puts the tokenizer's first.
    let qwen = tokenizer_with(tmp.path(), Some("Qwen-Qwen3-0.6B.jinja"));
    let (_, qwen_ids, qwen_prompt) = golden("Qwen-Qwen3-0.6B.jinja");
    let plain = Generator::open(&model, &options(&qwen, false)).unwrap();
    assert_eq!(plain.encode_prompt(&qwen_prompt, true).unwrap(), qwen_ids);
    let bos = Generator::open(&model, &options(&qwen, true)).unwrap();
    let bos_id = sae_onnx::tokenizer::Tokenizer::from_file(&qwen.join("tokenizer.json"))
        .unwrap()
        .bos_id
        .unwrap();
    assert_eq!(
        bos.encode_prompt(&qwen_prompt, true).unwrap(),
        [vec![bos_id], qwen_ids].concat()
    );

    // The command feeds the same ids, and --verbose shows them with the rendered text.
    let out = generate(&[
        model.to_str().unwrap(),
        "--tokenizer",
        gemma.to_str().unwrap(),
        "--chat",
        "-v",
        "--max-new-tokens",
        "2",
        "--prompt",
        &prompt,
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let shown = format!("[prompt of {} tokens {ids:?}: {text:?}]", ids.len());
    assert!(stderr.contains(&shown), "expected {shown} in:\n{stderr}");
}

#[test]
fn chat_without_a_template_says_the_model_has_none() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("demo.onnx");
    export::export("models/tiny-gemma2", &model, &ExportOptions::default()).unwrap();
    let none = tokenizer_with(tmp.path(), None);
    let error = Generator::open(&model, &options(&none, false))
        .err()
        .expect("no template")
        .to_string();
    assert!(
        error.contains("--chat needs the model's chat template")
            && error.contains("tokenizer_config.json' has no chat_template"),
        "{error}"
    );
    // The command says the same and exits non-zero.
    let out = generate(&[
        model.to_str().unwrap(),
        "--tokenizer",
        none.to_str().unwrap(),
        "--chat",
        "--prompt",
        "hi",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no chat_template"));
}
