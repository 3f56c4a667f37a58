//! `package --format genai` run in onnxruntime-genai itself (tests/runtimes/genai_greedy.py):
//! greedy tokens and each step's logits equal transformers' `generate` (tests/fixtures/generate),
//! plain and steered; a sweepable model's coefficient fed through genai works (0 = the plain
//! model, the steer.csv value = the steered one) without ONNX Runtime's "Initializer ... appears
//! in graph inputs" warning; bad input is refused with nothing written.
//!
//! The runtime is Python's onnxruntime-genai 0.18.0, found through SAE_ONNX_GENAI_PYTHON (an
//! interpreter that imports it; `scripts/test.sh` makes `.venv/genai` and sets it). By hand:
//!   eval "$(scripts/runtimes.sh)" && cargo test --release --test it package_genai
//! Without it these tests say so and pass, except under CI, where they fail.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::golden::Golden;
use serde_json::{Value, json};

const RUNNER: &str = "tests/runtimes/genai_greedy.py";
/// Largest |logit difference| from transformers accepted at any step (measured: 4.8e-4, on
/// steered Gemma 1 whose logits reach ~30; steering moves them by 0.1 and more).
const LOGIT_TOLERANCE: f32 = 2e-3;

fn genai_python() -> Option<PathBuf> {
    common::runtime_from_env(
        "SAE_ONNX_GENAI_PYTHON",
        "a python with onnxruntime-genai==0.18.0",
        "tests/it/package_genai.rs",
    )
}

fn sae_onnx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .output()
        .unwrap()
}

fn export_kv(source: &str, out: &Path) {
    common::succeeded(&sae_onnx(&[
        "export",
        source,
        "-o",
        out.to_str().unwrap(),
        "--kv-cache",
        "--force",
    ]));
}

fn package(model: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "package",
        model.to_str().unwrap(),
        "--format",
        "genai",
        "-o",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    common::succeeded(&sae_onnx(&args));
}

/// The golden's prompts as genai runs, each with `inputs` fed.
fn runs_of(golden: &Golden, inputs: &Value) -> Vec<Value> {
    (0..)
        .take_while(|p| golden.has(&format!("p{p}.prompt_ids")))
        .map(|p| {
            json!({
                "prompt_ids": golden.i64s(&format!("p{p}.prompt_ids")).1,
                "max_new_tokens": golden.i64s(&format!("p{p}.generated_ids")).1.len(),
                "inputs": inputs,
            })
        })
        .collect()
}

/// Runs genai on `package`; returns its JSON answer and its stderr.
fn run_genai(python: &Path, package: &Path, runs: Vec<Value>) -> (Value, String) {
    let mut child = Command::new(python)
        .arg(RUNNER)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let request = json!({"model": package, "runs": runs});
    serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "genai failed: {stderr}");
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

/// Every run's tokens and step logits against the golden's prompts; returns the tokens compared.
fn assert_matches(answer: &Value, golden: &Golden, what: &str) -> usize {
    assert_eq!(answer["onnxruntime_genai"], "0.18.0");
    let mut compared = 0;
    for (p, run) in answer["runs"].as_array().unwrap().iter().enumerate() {
        let expected = golden.i64s(&format!("p{p}.generated_ids")).1;
        let tokens: Vec<i64> = serde_json::from_value(run["tokens"].clone()).unwrap();
        assert_eq!(tokens, expected, "{what}: prompt {p}");
        let golden_logits = golden.f32s(&format!("p{p}.step_logits"));
        let vocab = golden_logits.len() / expected.len();
        for (t, row) in run["last_logits"].as_array().unwrap().iter().enumerate() {
            let row: Vec<f32> = serde_json::from_value(row.clone()).unwrap();
            let worst = row
                .iter()
                .zip(&golden_logits[t * vocab..(t + 1) * vocab])
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst < LOGIT_TOLERANCE,
                "{what}: prompt {p} step {t}: max |Δ logit| {worst}"
            );
        }
        compared += tokens.len();
    }
    compared
}

fn golden(name: &str) -> Golden {
    Golden::load(&common::fixture(&format!("generate/{name}.safetensors")))
}

#[test]
fn genai_greedy_equals_transformers_plain_and_steered() {
    let Some(python) = genai_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let mut compared = 0;
    for (arch, source) in [
        ("gemma", "tests/fixtures/gemma/gemma"),
        ("gemma2", "tests/fixtures/gemma/gemma2"),
        ("gemma3", "tests/fixtures/gemma/gemma3"),
        ("demo", "models/tiny-gemma2"),
    ] {
        let model = tmp.path().join(format!("{arch}.onnx"));
        export_kv(source, &model);
        let out = tmp.path().join(format!("{arch}-genai"));
        package(&model, &out, &[]);
        let golden = golden(&format!("golden_{arch}"));
        let (answer, _) = run_genai(&python, &out, runs_of(&golden, &json!({})));
        compared += assert_matches(&answer, &golden, arch);
        if arch == "gemma" || arch == "gemma2" {
            let steered = tmp.path().join(format!("{arch}.steered.onnx"));
            common::succeeded(&sae_onnx(&[
                "patch",
                "--csv",
                "tests/fixtures/steer/case_a.csv",
                "--model",
                model.to_str().unwrap(),
                "-o",
                steered.to_str().unwrap(),
            ]));
            let out = tmp.path().join(format!("{arch}-steered-genai"));
            package(&steered, &out, &[]);
            let golden = self::golden(&format!("golden_{arch}_steered"));
            let (answer, _) = run_genai(&python, &out, runs_of(&golden, &json!({})));
            compared += assert_matches(&answer, &golden, &format!("{arch} steered"));
        }
    }
    assert!(compared >= 24 * 3 * 6, "only {compared} tokens compared");
}

#[test]
fn genai_sweepable_coefficient_takes_effect_without_the_initializer_warning() {
    let Some(python) = genai_python() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("gemma.onnx");
    export_kv("tests/fixtures/gemma/gemma", &base);
    let sweepable = tmp.path().join("gemma.sweep.onnx");
    common::succeeded(&sae_onnx(&[
        "patch",
        "--csv",
        "tests/fixtures/steer/case_a.csv",
        "--model",
        base.to_str().unwrap(),
        "-o",
        sweepable.to_str().unwrap(),
        "--sweepable",
    ]));
    let (plain, steered) = (golden("golden_gemma"), golden("golden_gemma_steered"));

    let out = tmp.path().join("sweep-genai");
    package(&sweepable, &out, &[]);
    let (at_zero, _) = run_genai(&python, &out, runs_of(&plain, &json!({"steer.coeff.0": 0.0})));
    assert_matches(&at_zero, &plain, "coefficient 0");
    // case_a.csv's coefficient.
    let (at_csv, _) = run_genai(&python, &out, runs_of(&steered, &json!({"steer.coeff.0": 8.0})));
    assert_matches(&at_csv, &steered, "coefficient 8");
    assert_no_initializer_input(&out.join("model.onnx"), true);

    let fixed = tmp.path().join("fixed-genai");
    package(&sweepable, &fixed, &["--coefficients", "fixed"]);
    let (answer, _) = run_genai(&python, &fixed, runs_of(&steered, &json!({})));
    assert_matches(&answer, &steered, "--coefficients fixed");
    assert_no_initializer_input(&fixed.join("model.onnx"), false);
}

/// ONNX Runtime prints "Initializer X appears in graph inputs" for each initializer that is also
/// a graph input (genai silences its logs, so the layout is checked, not genai's stderr): the
/// package has none. `input` says whether steer.coeff.0 is still an input.
fn assert_no_initializer_input(model: &Path, input: bool) {
    let model = sae_onnx::onnx::Model::load(model).unwrap();
    let graph = model.graph();
    for i in &graph.input {
        assert!(
            !graph.initializer.iter().any(|t| t.name() == i.name()),
            "{} is both",
            i.name()
        );
    }
    assert_eq!(graph.input.iter().any(|i| i.name() == "steer.coeff.0"), input);
}
