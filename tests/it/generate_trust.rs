//! `generate` stays inside the model's context and refuses nonsense: a prompt longer than
//! `max_position_embeddings` is refused (it used to grow without bound: 22 GB for 25,000 words),
//! `--max-new-tokens` past the context stops there and says so, a context of 0 in the metadata
//! is an error, `--prompts /dev/zero` is a bounded read, and NaN, infinite or negative sampling
//! knobs are refused when the arguments are parsed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::contract::meta;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};
use sae_onnx::onnx::{Model, SaveOptions};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-gemma2");
const CONTEXT: usize = 24;

/// The demo model with a context of `CONTEXT` tokens, as a full-sequence and a decoding graph.
fn short_context_models(dir: &Path) -> [PathBuf; 2] {
    let ckpt = dir.join("ckpt");
    fs::create_dir(&ckpt).unwrap();
    for entry in fs::read_dir(DEMO).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), ckpt.join(entry.file_name())).unwrap();
        }
    }
    let config_path = ckpt.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&config_path).unwrap()).unwrap();
    config["max_position_embeddings"] = CONTEXT.into();
    fs::write(&config_path, config.to_string()).unwrap();
    [false, true].map(|kv_cache| {
        let out = dir.join(if kv_cache { "kv.onnx" } else { "full.onnx" });
        export::export(
            ckpt.to_str().unwrap(),
            &out,
            &ExportOptions {
                kv_cache,
                ..Default::default()
            },
        )
        .unwrap();
        out
    })
}

fn generate(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .arg("generate")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap()
}

fn fails(args: &[&str]) -> String {
    let out = generate(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "generate {args:?} must fail");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn generation_stays_inside_the_models_context() {
    let dir = tempfile::tempdir().unwrap();
    let long_prompt = "word ".repeat(200);
    for model in short_context_models(dir.path()) {
        let path = model.to_str().unwrap();
        let err = fails(&[path, "--prompt", &long_prompt]);
        assert!(
            err.contains(&format!("the model's context is {CONTEXT}")) && err.contains("Shorten"),
            "{err}"
        );
        // Several prompts go through the batched path on a decoding graph.
        let err = fails(&[path, "--prompt", "hi", "--prompt", &long_prompt]);
        assert!(err.contains("prompt 2") && err.contains("context"), "{err}");

        let out = generate(&[path, "--prompt", "I love", "--max-new-tokens", "1000"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(
            stderr.contains(&format!("context of {CONTEXT} tokens")),
            "the early stop is reported: {stderr}"
        );

        let options = GenerateOptions {
            max_new_tokens: 1000,
            ..Default::default()
        };
        let mut generator = Generator::open(&model, &options).unwrap();
        let prompts = [
            generator.encode_prompt("I love", false).unwrap(),
            generator.encode_prompt("The cat sat on the", false).unwrap(),
        ];
        let single = generator.generate(&prompts[0], &options, |_| {}).unwrap();
        let batch = generator.generate_batch(&prompts, &options).unwrap();
        for (g, prompt) in
            [&single, &batch[0], &batch[1]]
                .into_iter()
                .zip([&prompts[0], &prompts[0], &prompts[1]])
        {
            if g.finish == "context" {
                assert_eq!(prompt.len() + g.tokens.len(), CONTEXT, "{model:?}");
            } else {
                assert_eq!(g.finish, "eos", "{model:?}: stopped for a reason");
                assert!(prompt.len() + g.tokens.len() < CONTEXT);
            }
        }
        assert_eq!(single.finish, "context", "{model:?}: {:?}", single.tokens);
    }
}

#[test]
fn a_context_of_zero_in_the_metadata_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("a.onnx");
    export::export(DEMO, &base, &ExportOptions::default()).unwrap();
    let mut model = Model::load(&base).unwrap();
    model.set_metadata(meta::MAX_POSITIONS, "0");
    let zero = dir.path().join("zero.onnx");
    model.save(&zero, &SaveOptions::default()).unwrap();
    let err = fails(&[zero.to_str().unwrap(), "--prompt", "hi"]);
    assert!(
        err.contains("zero.onnx") && err.contains("max_position_embeddings"),
        "{err}"
    );
}

#[test]
fn unbounded_prompt_files_and_nonsense_sampling_knobs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Never reaches the model: the checks come first.
    let model = dir.path().join("missing.onnx");
    let model = model.to_str().unwrap();
    let err = fails(&[model, "--prompts", "/dev/zero"]);
    assert!(err.contains("/dev/zero") && err.contains("larger than"), "{err}");
    for (flag, value, says) in [
        ("--temperature", "NaN", "not a temperature"),
        ("--temperature", "inf", "not a temperature"),
        ("--temperature", "-1", "not a temperature"),
        ("--top-p", "0", "not a top-p"),
        ("--top-p", "1.5", "not a top-p"),
        ("--top-p", "NaN", "not a top-p"),
        ("--top-k", "0", "--top-k"),
    ] {
        let out = generate(&[model, "--prompt", "hi", &format!("{flag}={value}")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{flag} {value}: a usage error: {stderr}"
        );
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}
