//! Exporting a Hugging Face id through the real hf-hub cache code: a cache folder laid out as
//! huggingface_hub writes it (`models--org--name/refs/main`, `snapshots/<commit>/`), offline.

use crate::common;

use std::path::Path;
use std::process::Command;

const COMMIT: &str = "4f1c2a9e0b7d3c5a6e8f9a0b1c2d3e4f5a6b7c8d";

fn lay_out_cache(cache: &Path) {
    let repo = cache.join("models--tiny-org--tiny-gemma2");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(common::fixture("gemma/gemma2").join(file), snapshot.join(file)).unwrap();
    }
}

fn sae_onnx(cache: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HOME")
        .output()
        .unwrap()
}

#[test]
fn hub_ids_export_from_the_local_cache_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    lay_out_cache(&cache);
    let out = tmp.path().join("tiny.onnx");
    let run = sae_onnx(
        &cache,
        &["export", "tiny-org/tiny-gemma2", "-o", out.to_str().unwrap()],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    let inspect = sae_onnx(&cache, &["inspect", out.to_str().unwrap(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(report["metadata"]["sae_onnx.source"], "tiny-org/tiny-gemma2");
    assert_eq!(report["metadata"]["sae_onnx.revision"], COMMIT);
    assert_eq!(report["metadata"]["sae_onnx.architecture"], "Gemma2ForCausalLM");

    let by_commit = tmp.path().join("by_commit.onnx");
    let run = sae_onnx(
        &cache,
        &[
            "export",
            "tiny-org/tiny-gemma2",
            "--revision",
            COMMIT,
            "-o",
            by_commit.to_str().unwrap(),
        ],
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

#[test]
fn a_model_missing_from_the_cache_is_a_clear_offline_error() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");
    lay_out_cache(&cache);
    let out = tmp.path().join("x.onnx");
    let run = sae_onnx(
        &cache,
        &["export", "google/gemma-2-2b", "-o", out.to_str().unwrap()],
    );
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("google/gemma-2-2b") && stderr.contains("HF_HUB_OFFLINE"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"));
    assert!(!out.exists());
}
