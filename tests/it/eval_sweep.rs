//! `eval --sweep` against lm-evaluation-harness itself: one `--sweepable` patch of the tiny
//! Gemma 2, evaluated at coefficients 0, 8 and 32 in one session, must give what lm-eval 0.4.13's
//! `steered` model gave at those coefficients (tests/fixtures/compare/make_golden.py ran it:
//! lm_eval/{base,coef8,coef32}): every choice's loglikelihood, every rolling perplexity, the metrics.

use crate::common;

use std::path::{Path, PathBuf};

use sae_onnx::eval::evaluator;
use sae_onnx::eval::options::{BatchSize, EvalOptions};
use sae_onnx::eval::sweep::SweepSpec;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::steer::patch::{PatchOptions, PatchOutput, patch_with_output};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;
const TASKS: [&str; 4] = [
    "tiny_mc",
    "tiny_mmlu_format_animals",
    "tiny_mmlu_format_numbers",
    "tiny_text",
];

pub(crate) fn sweepable_steered_model(dir: &Path) -> PathBuf {
    let (vector, coefficient) = common::lm_eval_steer_vector();
    let sae = common::write_vector_sae(dir, &vector);
    let csv = dir.join("steer.csv");
    std::fs::write(
        &csv,
        format!(
            "latent_idx,steering_coefficient,sae_release,sae_id,description\n0,{coefficient},{},,lm-eval .pt vector\n",
            sae.display()
        ),
    )
    .unwrap();
    let base = dir.join("gemma2.onnx");
    export::export("tests/fixtures/gemma/gemma2", &base, &ExportOptions::default()).unwrap();
    let steered = dir.join("steered.onnx");
    let options = PatchOptions {
        csv,
        output: steered.clone(),
        model: Some(base.display().to_string()),
        replace: false,
        progress: false,
    };
    patch_with_output(
        &options,
        &PatchOutput {
            sweepable: true,
            force: false,
        },
    )
    .unwrap();
    steered
}

/// The samples of `task` in an output folder (lm-eval's or ours), by doc_id.
fn samples_in(dir: &Path, task: &str) -> Vec<Value> {
    let file = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.starts_with(&format!("samples_{task}_2"))
        })
        .unwrap_or_else(|| panic!("no samples of {task} in {}", dir.display()));
    let mut samples = common::read_jsonl(&file);
    samples.sort_by_key(|s| s["doc_id"].as_u64());
    samples
}

/// Every number lm-eval logged per document: `filtered_resps` (loglikelihoods, or a rolling
/// request's total) and the per-document metrics.
fn assert_samples_close(ours: &[Value], theirs: &[Value], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: documents");
    for (o, t) in ours.iter().zip(theirs) {
        common::assert_fields_equal(o, t, &["doc_id", "doc_hash", "prompt_hash", "target"], what);
        // lm-eval logs each response as a string of the float (a [loglikelihood, is_greedy]
        // pair for multiple choice).
        let number = |v: &Value| match v {
            Value::String(text) => text.parse::<f64>().unwrap(),
            other => other.as_f64().unwrap(),
        };
        let numbers = |s: &Value| -> Vec<f64> {
            s["filtered_resps"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| match r {
                    Value::Array(pair) => number(&pair[0]),
                    other => number(other),
                })
                .collect()
        };
        let (a, b) = (numbers(o), numbers(t));
        assert_eq!(a.len(), b.len(), "{what}: doc {}", o["doc_id"]);
        for (x, y) in a.iter().zip(&b) {
            assert!(
                (x - y).abs() <= TOLERANCE * y.abs().max(1.0),
                "{what}: doc {}: {x} vs lm-eval {y}",
                o["doc_id"]
            );
        }
        for key in ["acc", "acc_norm"] {
            if t.get(key).is_some() {
                assert_eq!(o[key], t[key], "{what}: doc {} {key}", o["doc_id"]);
            }
        }
    }
}

#[test]
fn a_sweep_equals_lm_eval_steered_at_each_coefficient() {
    let tmp = tempfile::tempdir().unwrap();
    let model = sweepable_steered_model(tmp.path());
    let loaded = sae_onnx::onnx::Model::load(&model).unwrap();
    let inputs = sae_onnx::contract::sweep::coefficient_inputs(&loaded.proto).unwrap();
    let spec: SweepSpec = "0,8,32".parse().unwrap();
    let input = spec.resolve(&inputs).unwrap().clone();
    assert_eq!(input.input, "steer.coeff.0");
    let output = tmp.path().join("out");
    let options = EvalOptions {
        tasks: vec!["tiny_mc".into(), "tiny_mmlu_format".into(), "tiny_text".into()],
        num_fewshot: Some(0),
        include_paths: vec![
            PathBuf::from("tests/fixtures/lm_eval/tasks"),
            PathBuf::from("tests/fixtures/lm_eval_gen/tasks"),
        ],
        output_path: Some(output.clone()),
        log_samples: true,
        batch_size: BatchSize::Fixed(4),
        cache: Some(tmp.path().join("answers.jsonl")),
        ..Default::default()
    };
    let points = evaluator::evaluate_sweep(&model, &options, &input, &spec.values).unwrap();
    assert_eq!(points.len(), 3);
    for (point, run) in points.iter().zip(["base", "coef8", "coef32"]) {
        let results = point.outcome.results_path.as_ref().unwrap();
        assert!(
            results.starts_with(output.join(format!("sweep_steer.coeff.0_{}", point.value))),
            "{}",
            results.display()
        );
        let written: Value = serde_json::from_str(&std::fs::read_to_string(results).unwrap()).unwrap();
        assert_eq!(written["sae_onnx"]["sweep"]["input"], "steer.coeff.0");
        assert_eq!(written["sae_onnx"]["sweep"]["value"].as_f64(), Some(point.value));
        for task in TASKS {
            let what = format!("{task} at {}", point.value);
            let golden = common::fixture(&format!("compare/lm_eval/{run}/tests__fixtures__gemma__gemma2"));
            assert_samples_close(
                &samples_in(results.parent().unwrap(), task),
                &samples_in(&golden, task),
                &what,
            );
        }
        // One answers cache per value, so a resumed sweep never mixes coefficients.
        assert!(
            tmp.path()
                .join(format!("answers.steer.coeff.0={}.jsonl", point.value))
                .exists()
        );
    }
    let table = sae_onnx::eval::sweep::table("steer.coeff.0", &points);
    assert!(
        table.starts_with("| steer.coeff.0 | tiny_mmlu_format acc |"),
        "{table}"
    );
    assert_eq!(table.lines().count(), 5, "{table}");
}

#[test]
fn sweeping_needs_a_sweepable_model_and_names_the_input_when_there_are_several() {
    let spec: SweepSpec = "0,1".parse().unwrap();
    let err = spec.resolve(&[]).unwrap_err().to_string();
    assert!(err.contains("patch --sweepable"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let model = sweepable_steered_model(tmp.path());
    let loaded = sae_onnx::onnx::Model::load(&model).unwrap();
    let mut inputs = sae_onnx::contract::sweep::coefficient_inputs(&loaded.proto).unwrap();
    let mut second = inputs[0].clone();
    second.input = "steer.coeff.1".into();
    inputs.push(second);
    let err = spec.resolve(&inputs).unwrap_err().to_string();
    assert!(
        err.contains("--sweep steer.coeff.0=0,60,120") && err.contains("steer.coeff.1"),
        "{err}"
    );
    let named: SweepSpec = "steer.coeff.1=0,1".parse().unwrap();
    assert_eq!(named.resolve(&inputs).unwrap().input, "steer.coeff.1");
    let err = "steer.coeff.7=0"
        .parse::<SweepSpec>()
        .unwrap()
        .resolve(&inputs)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no coefficient input 'steer.coeff.7'"), "{err}");
}
