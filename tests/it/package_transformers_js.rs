//! `package --format transformers.js` run in transformers.js itself (@huggingface/transformers
//! 3.8.1 on onnxruntime-node, tests/runtimes/transformers_js_greedy.mjs): greedy tokens and the
//! first step's logits equal transformers' `generate` (tests/fixtures/generate), plain and steered.
//!
//! Node finds the package through SAE_ONNX_NODE_PATH (a node_modules folder holding
//! @huggingface/transformers 3.8.1; `scripts/test.sh` installs it into .venv/node and sets it). By hand:
//!   eval "$(scripts/runtimes.sh)" && cargo test --release --test it package_transformers_js
//! Without it these tests say so and pass, except under CI, where they fail.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::golden::Golden;
use serde_json::{Value, json};

const RUNNER: &str = "tests/runtimes/transformers_js_greedy.mjs";
/// Largest |logit difference| from transformers accepted (measured below 5e-4 elsewhere on the
/// same graphs in ONNX Runtime).
const LOGIT_TOLERANCE: f32 = 2e-3;

fn node_modules() -> Option<PathBuf> {
    common::runtime_from_env(
        "SAE_ONNX_NODE_PATH",
        "a node_modules with @huggingface/transformers@3.8.1",
        "tests/it/package_transformers_js.rs",
    )
}

fn sae_onnx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .output()
        .unwrap()
}

fn golden(name: &str) -> Golden {
    Golden::load(&common::fixture(&format!("generate/{name}.safetensors")))
}

fn run_node(node_modules: &Path, package: &Path, golden: &Golden) -> Value {
    let runs: Vec<Value> = (0..)
        .take_while(|p| golden.has(&format!("p{p}.prompt_ids")))
        .map(|p| {
            json!({
                "prompt_ids": golden.i64s(&format!("p{p}.prompt_ids")).1,
                "max_new_tokens": golden.i64s(&format!("p{p}.generated_ids")).1.len(),
                "inputs": {},
            })
        })
        .collect();
    let mut child = Command::new("node")
        .arg(RUNNER)
        .env("NODE_PATH", node_modules)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("node is not installed");
    serde_json::to_writer(
        child.stdin.take().unwrap(),
        &json!({"model": package, "runs": runs}),
    )
    .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn assert_matches(answer: &Value, golden: &Golden, what: &str) -> usize {
    assert_eq!(answer["transformers_js"], "3.8.1");
    let mut compared = 0;
    for (p, run) in answer["runs"].as_array().unwrap().iter().enumerate() {
        let expected = golden.i64s(&format!("p{p}.generated_ids")).1;
        let tokens: Vec<i64> = serde_json::from_value(run["tokens"].clone()).unwrap();
        assert_eq!(tokens, expected, "{what}: prompt {p}");
        let first: Vec<f32> = serde_json::from_value(run["first_logits"].clone()).unwrap();
        let worst = first
            .iter()
            .zip(&golden.f32s(&format!("p{p}.step_logits"))[..first.len()])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst < LOGIT_TOLERANCE,
            "{what}: prompt {p}: max |Δ logit| {worst}"
        );
        compared += tokens.len();
    }
    compared
}

fn package(model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "package",
        model.to_str().unwrap(),
        "--format",
        "transformers.js",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::succeeded(&sae_onnx(&args));
}

#[test]
fn transformers_js_greedy_equals_transformers_plain_and_steered() {
    let Some(node_modules) = node_modules() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (arch, source) in [
        ("gemma", "tests/fixtures/gemma/gemma"),
        ("gemma2", "tests/fixtures/gemma/gemma2"),
        ("gemma3", "tests/fixtures/gemma/gemma3"),
        ("demo", "models/tiny-gemma2"),
    ] {
        let model = tmp.path().join(format!("{arch}.onnx"));
        common::succeeded(&sae_onnx(&[
            "export",
            source,
            "-o",
            model.to_str().unwrap(),
            "--kv-cache",
        ]));
        let out = tmp.path().join(format!("{arch}-js"));
        package(&model, &out, &[]);
        let golden = golden(&format!("golden_{arch}"));
        compared += assert_matches(&run_node(&node_modules, &out, &golden), &golden, arch);
        if arch == "gemma" || arch == "gemma2" {
            let csv = "tests/fixtures/steer/case_a.csv";
            let steered = tmp.path().join(format!("{arch}.steered.onnx"));
            let patch = |out: &Path, extra: &[&str]| {
                let mut args = vec![
                    "patch",
                    "--csv",
                    csv,
                    "--model",
                    model.to_str().unwrap(),
                    "-o",
                    out.to_str().unwrap(),
                ];
                args.extend_from_slice(extra);
                common::succeeded(&sae_onnx(&args));
            };
            patch(&steered, &[]);
            let golden = self::golden(&format!("golden_{arch}_steered"));
            let out = tmp.path().join(format!("{arch}-steered-js"));
            package(&steered, &out, &[]);
            compared += assert_matches(
                &run_node(&node_modules, &out, &golden),
                &golden,
                &format!("{arch} steered"),
            );
            // A sweepable model, its coefficients fixed at the steer.csv values.
            let sweepable = tmp.path().join(format!("{arch}.sweep.onnx"));
            patch(&sweepable, &["--sweepable"]);
            let out = tmp.path().join(format!("{arch}-fixed-js"));
            package(&sweepable, &out, &["--coefficients", "fixed"]);
            compared += assert_matches(
                &run_node(&node_modules, &out, &golden),
                &golden,
                &format!("{arch} fixed"),
            );
        }
    }
    assert!(compared >= 24 * 3 * 8, "only {compared} tokens compared");
}
