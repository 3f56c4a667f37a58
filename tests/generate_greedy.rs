//! `generate` against transformers' `generate(do_sample=False)` (tests/fixtures/generate,
//! make_generate.py): token for token on Gemma 1/2/3 and the demo model, from prompts longer than
//! the sliding window and past it; and steered (a vector added at blocks.1.hook_resid_post by a
//! forward hook there, by `patch` here) on the decoding graph.

mod common;

use std::path::{Path, PathBuf};

use common::golden::Golden;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::generate::{GenerateOptions, Generator};
use sae_onnx::steer::patch::{PatchOptions, patch};

const EOS: i64 = 1;

fn export_kv(source: &str, dir: &Path, name: &str) -> PathBuf {
    let out = dir.join(format!("{name}.onnx"));
    export::export(
        source,
        &out,
        &ExportOptions {
            kv_cache: true,
            ..Default::default()
        },
    )
    .unwrap();
    out
}

/// Checks every prompt of a golden file; returns how many tokens were compared.
fn check(model: &Path, golden: &str) -> usize {
    let golden = Golden::load(&common::fixture(&format!("generate/{golden}")));
    let options = GenerateOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let mut generator = Generator::open(model, &options).unwrap();
    let mut compared = 0;
    for p in 0.. {
        if !golden.has(&format!("p{p}.prompt_ids")) {
            break;
        }
        let prompt: Vec<u32> = golden
            .i64s(&format!("p{p}.prompt_ids"))
            .1
            .iter()
            .map(|&t| t as u32)
            .collect();
        let mut expected: Vec<u32> = golden
            .i64s(&format!("p{p}.generated_ids"))
            .1
            .iter()
            .map(|&t| t as u32)
            .collect();
        // transformers keeps the EOS it stopped at; generate stops before it.
        if expected.last() == Some(&(EOS as u32)) {
            expected.pop();
        }
        let generation = generator.generate(&prompt, &options, |_| {}).unwrap();
        assert_eq!(generation.tokens, expected, "prompt {p} of {}", model.display());
        compared += expected.len();
    }
    compared
}

#[test]
fn greedy_tokens_equal_transformers_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let mut total = 0;
    for arch in ["gemma", "gemma2", "gemma3"] {
        let model = export_kv(&format!("tests/fixtures/gemma/{arch}"), tmp.path(), arch);
        total += check(&model, &format!("golden_{arch}.safetensors"));
    }
    let demo = export_kv("models/tiny-gemma2", tmp.path(), "demo");
    total += check(&demo, "golden_demo.safetensors");
    assert!(total > 200, "only {total} tokens compared");
}

#[test]
fn steered_greedy_tokens_equal_transformers_with_a_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_kv("tests/fixtures/gemma/gemma2", tmp.path(), "gemma2");
    let steered = tmp.path().join("steered.onnx");
    patch(&PatchOptions {
        csv: common::fixture("steer/case_a.csv"),
        output: steered.clone(),
        model: Some(base.display().to_string()),
        replace: false,
        progress: false,
    })
    .unwrap();
    check(&steered, "golden_gemma2_steered.safetensors");
}
