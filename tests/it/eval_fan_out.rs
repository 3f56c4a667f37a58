//! Sweep fan-out (`eval --sweep` without `--no-fan-out`): the scoring graph split at the swept
//! coefficient, the part below it run once per batch. Every point's results and samples must be
//! those of one pass per value (`--no-fan-out`, which the lm-eval goldens of eval_sweep.rs pin):
//! each loglikelihood within 1e-5, the same greedy flags and metrics, the same results files but
//! for their timings. Covered: one hook (lm-eval's vector); several hooks at different layers with
//! `clamp`, `add_if_active` and `clamp_projection` rows, swept at the lowest, a middle and the
//! highest row; batches the units do not fill; a decoding graph with shared few-shot prefixes (its
//! caches below the hook computed once, above it once per value); generate_until on a decoding
//! graph (each prompt's prefill below the hook once, then the values decode as rows of one batch,
//! each row leaving it when it stops), against one pass per value and against `Generator`.

use crate::common;

use std::path::{Path, PathBuf};

use sae_onnx::contract::sweep::{CoefficientInput, coefficient_inputs};
use sae_onnx::eval::evaluator::{self, SweepPoint};
use sae_onnx::eval::options::{BatchSize, EvalOptions};
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};
use sae_onnx::infer::lm::{FanOutOpening, ScoringModel};
use sae_onnx::infer::runtime::{ScalarFeed, SessionOptions};
use sae_onnx::infer::sweep_decode::SweepDecoder;
use sae_onnx::onnx::Model;
use sae_onnx::steer::patch::{PatchOptions, PatchOutput, patch_with_output};
use serde_json::Value;

const TOLERANCE: f64 = 1e-5;

fn sweep(
    model: &Path,
    input: &CoefficientInput,
    values: &[f64],
    options: &EvalOptions,
    fan_out: bool,
) -> Vec<SweepPoint> {
    let options =
        EvalOptions {
            fan_out,
            output_path: Some(options.output_path.as_ref().unwrap().join(if fan_out {
                "fan"
            } else {
                "passes"
            })),
            ..options.clone()
        };
    evaluator::evaluate_sweep(model, &options, input, values).unwrap()
}

/// Every loglikelihood (or rolling total) a samples line holds, and its greedy flags.
fn responses(sample: &Value) -> Vec<(f64, Option<String>)> {
    let number = |v: &Value| match v {
        Value::String(text) => text.parse::<f64>().unwrap(),
        other => other.as_f64().unwrap(),
    };
    sample["filtered_resps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| match r {
            Value::Array(pair) => (number(&pair[0]), Some(pair[1].to_string())),
            other => (number(other), None),
        })
        .collect()
}

/// The samples lines of every task in a point's folder, by file prefix and doc_id.
fn samples(point: &SweepPoint) -> Vec<(String, Vec<Value>)> {
    let dir = point.outcome.results_path.as_ref().unwrap().parent().unwrap();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("samples_"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no samples in {}", dir.display());
    files
        .into_iter()
        .map(|f| {
            let name = f.file_name().unwrap().to_string_lossy();
            let task = name.rsplit_once('_').unwrap().0.to_owned();
            let mut lines = common::read_jsonl(&f);
            lines.sort_by_key(|s| s["doc_id"].as_u64());
            (task, lines)
        })
        .collect()
}

/// The largest difference between two points' loglikelihoods; greedy flags and per-document
/// metrics must agree exactly.
fn largest_difference(a: &SweepPoint, b: &SweepPoint, what: &str) -> f64 {
    let mut largest = 0.0f64;
    for ((task_a, lines_a), (task_b, lines_b)) in samples(a).iter().zip(samples(b)) {
        assert_eq!(*task_a, task_b, "{what}");
        assert_eq!(lines_a.len(), lines_b.len(), "{what}: {task_a}");
        for (x, y) in lines_a.iter().zip(&lines_b) {
            let (rx, ry) = (responses(x), responses(y));
            assert_eq!(rx.len(), ry.len());
            for ((lx, gx), (ly, gy)) in rx.iter().zip(&ry) {
                largest = largest.max((lx - ly).abs() / ly.abs().max(1.0));
                assert_eq!(gx, gy, "{what}: {task_a} doc {}: greedy flags", x["doc_id"]);
            }
        }
    }
    largest
}

/// The results file without what differs between two runs of the same scores: timings and the
/// output folder.
fn results_without_timings(point: &SweepPoint) -> Value {
    let mut file: Value =
        serde_json::from_str(&std::fs::read_to_string(point.outcome.results_path.as_ref().unwrap()).unwrap())
            .unwrap();
    let map = file.as_object_mut().unwrap();
    for key in ["total_evaluation_time_seconds", "date", "start_time", "end_time"] {
        map.remove(key);
    }
    file
}

/// Fan-out and one pass per value agree at every point, and a wrong pairing of values would be
/// seen (the check can fail). Returns the fanned-out points.
fn assert_fan_out_matches_passes(
    model: &Path,
    input: &CoefficientInput,
    values: &[f64],
    options: &EvalOptions,
) -> Vec<SweepPoint> {
    let fanned = sweep(model, input, values, options, true);
    let passes = sweep(model, input, values, options, false);
    for (f, p) in fanned.iter().zip(&passes) {
        let what = format!("{} = {}", input.input, f.value);
        let difference = largest_difference(f, p, &what);
        assert!(difference <= TOLERANCE, "{what}: fan-out differs by {difference}");
        assert_eq!(results_without_timings(f), results_without_timings(p), "{what}");
        assert_eq!(f.outcome.stats.forwards, p.outcome.stats.forwards, "{what}");
        assert_eq!(
            f.outcome.stats.shared_prefix_tokens, p.outcome.stats.shared_prefix_tokens,
            "{what}"
        );
    }
    let swapped = largest_difference(&fanned[0], &passes[values.len() - 1], "swapped values");
    assert!(
        swapped > 100.0 * TOLERANCE,
        "{}: the first and last values score alike ({swapped}); the test could not fail",
        input.input
    );
    fanned
}

#[test]
fn one_hook_fanned_out_equals_one_pass_per_value() {
    let tmp = tempfile::tempdir().unwrap();
    let model = crate::eval_sweep::sweepable_steered_model(tmp.path());
    let inputs = coefficient_inputs(&Model::load(&model).unwrap().proto).unwrap();
    let options = EvalOptions {
        tasks: vec!["tiny_mc".into(), "tiny_mmlu_format".into(), "tiny_text".into()],
        num_fewshot: Some(0),
        include_paths: vec![
            PathBuf::from("tests/fixtures/lm_eval/tasks"),
            PathBuf::from("tests/fixtures/lm_eval_gen/tasks"),
        ],
        output_path: Some(tmp.path().join("out")),
        log_samples: true,
        // Three units a batch: the last batch of each length group is short.
        batch_size: BatchSize::Fixed(3),
        ..Default::default()
    };
    assert_fan_out_matches_passes(&model, &inputs[0], &[0.0, 8.0, 32.0, -16.0], &options);
}

/// The demo model exported with `export_options` and patched `--sweepable` with the fixture
/// `csv` (each coefficient an input).
pub(crate) fn sweepable_demo(dir: &Path, csv: &str, export_options: &ExportOptions) -> PathBuf {
    let base = dir.join("demo.onnx");
    export::export("models/tiny-gemma2", &base, export_options).unwrap();
    let out = dir.join("steered.onnx");
    patch_with_output(
        &PatchOptions {
            csv: common::fixture(csv),
            output: out.clone(),
            model: Some(base.display().to_string()),
            replace: false,
            progress: false,
        },
        &PatchOutput {
            sweepable: true,
            force: false,
        },
    )
    .unwrap();
    out
}

/// tests/fixtures/steer_actions/mixed.csv (`add`, `clamp`, `add_if_active` and
/// `clamp_projection` rows at `blocks.1.hook_mlp_out` and `blocks.2.hook_resid_post`) patched
/// `--sweepable` on the demo model, a decoding graph with `kv_cache`, and its coefficient inputs.
fn mixed_sweepable(dir: &Path, kv_cache: bool) -> (PathBuf, Vec<CoefficientInput>) {
    let export_options = ExportOptions {
        kv_cache,
        ..Default::default()
    };
    let model = sweepable_demo(dir, "steer_actions/mixed.csv", &export_options);
    let inputs = coefficient_inputs(&Model::load(&model).unwrap().proto).unwrap();
    (model, inputs)
}

/// The coefficient input of the `action` row at `hook`.
fn row<'a>(inputs: &'a [CoefficientInput], action: &str, hook: &str) -> &'a CoefficientInput {
    inputs
        .iter()
        .find(|c| c.action == action && c.hook == hook)
        .unwrap_or_else(|| panic!("no {action} row at {hook}"))
}

#[test]
fn several_hooks_and_non_additive_rows_fanned_out_equal_one_pass_per_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, inputs) = mixed_sweepable(tmp.path(), false);
    let options = EvalOptions {
        tasks: vec!["demo_mc".into()],
        num_fewshot: Some(1),
        include_paths: vec![PathBuf::from("models/tiny-gemma2")],
        output_path: Some(tmp.path().join("out")),
        log_samples: true,
        batch_size: BatchSize::Fixed(5),
        ..Default::default()
    };
    // The lowest hook (rows above it, at the higher hook, read it), then rows at the higher hook
    // whose scale depends on the hook's value: the other rows keep their plan values.
    for (input, values) in [
        (row(&inputs, "clamp", "blocks.1.hook_mlp_out"), [0.0, 19.0, 60.0]),
        (
            row(&inputs, "clamp", "blocks.2.hook_resid_post"),
            [0.0, 43.0, -30.0],
        ),
        (
            row(&inputs, "add_if_active", "blocks.2.hook_resid_post"),
            [0.0, 16.0, 80.0],
        ),
    ] {
        let options = EvalOptions {
            output_path: Some(tmp.path().join(&input.input)),
            ..options.clone()
        };
        assert_fan_out_matches_passes(&model, input, &values, &options);
    }
}

/// A decoding graph (`export --kv-cache`) splits too, the caches of the layers below the hook
/// made by the lower part; 1-shot MMLU-format prompts share a prefix per subject, whose cache is
/// computed below the hook once and above it once per value. Swept at the lowest hook (every
/// layer above it varies) and at the higher one.
#[test]
fn a_decoding_graph_with_shared_prefixes_fanned_out_equals_one_pass_per_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (steered, inputs) = mixed_sweepable(tmp.path(), true);
    let options = EvalOptions {
        tasks: vec!["tiny_mmlu_format".into()],
        num_fewshot: Some(1),
        include_paths: vec![PathBuf::from("tests/fixtures/lm_eval/tasks")],
        log_samples: true,
        batch_size: BatchSize::Fixed(3),
        ..Default::default()
    };
    for (input, values) in [
        (row(&inputs, "clamp", "blocks.1.hook_mlp_out"), [0.0, 19.0, 60.0]),
        (
            row(&inputs, "add_if_active", "blocks.2.hook_resid_post"),
            [0.0, 16.0, 80.0],
        ),
    ] {
        let opening =
            ScoringModel::open_fanned_out(&steered, &SessionOptions::default(), 64, 4, &input.input).unwrap();
        assert!(
            matches!(opening, FanOutOpening::Opened(_)),
            "{}: the decoding graph was not split",
            input.input
        );
        let options = EvalOptions {
            output_path: Some(tmp.path().join(&input.input)),
            ..options.clone()
        };
        let fanned = assert_fan_out_matches_passes(&steered, input, &values, &options);
        let stats = fanned[0].outcome.stats;
        assert!(
            stats.shared_prefix_tokens > stats.tokens / 4,
            "{}: {} of {} tokens came from shared prefixes",
            input.input,
            stats.shared_prefix_tokens,
            stats.tokens
        );
    }
}

/// generate_until on a decoding graph: each prompt's prefill runs below the hook once and above
/// it once per value, then the values decode together, one row each. Every point's samples
/// (the generations, filtered responses and metrics) and results are those of one pass per
/// value; the first and last values generate differently (the check can fail).
#[test]
fn a_decoding_graph_generating_with_a_fanned_out_prefill_equals_one_pass_per_value() {
    let tmp = tempfile::tempdir().unwrap();
    let (steered, inputs) = mixed_sweepable(tmp.path(), true);
    let options = EvalOptions {
        tasks: vec!["tiny_gsm".into()],
        num_fewshot: Some(0),
        include_paths: vec![PathBuf::from("tests/fixtures/lm_eval_gen/tasks")],
        log_samples: true,
        ..Default::default()
    };
    // The second sweep decodes its three values in groups of at most two rows.
    for (input, values, batch_size) in [
        (
            row(&inputs, "clamp", "blocks.1.hook_mlp_out"),
            [0.0, 60.0, 600.0],
            options.batch_size,
        ),
        (
            row(&inputs, "add_if_active", "blocks.2.hook_resid_post"),
            [0.0, 80.0, 800.0],
            BatchSize::Fixed(2),
        ),
    ] {
        let opened = SweepDecoder::open(&steered, &input.input, &GenerateOptions::default()).unwrap();
        assert!(
            opened.is_ok(),
            "{}: the sweep does not decode fanned out: {:?}",
            input.input,
            opened.err()
        );
        let options = EvalOptions {
            output_path: Some(tmp.path().join(&input.input)),
            batch_size,
            ..options.clone()
        };
        let fanned = sweep(&steered, input, &values, &options, true);
        let passes = sweep(&steered, input, &values, &options, false);
        for (f, p) in fanned.iter().zip(&passes) {
            let what = format!("{} = {}", input.input, f.value);
            assert_eq!(samples(f), samples(p), "{what}: samples");
            assert_eq!(results_without_timings(f), results_without_timings(p), "{what}");
        }
        let generated = |point: &SweepPoint| -> Vec<Value> {
            samples(point)
                .into_iter()
                .flat_map(|(_, lines)| lines.into_iter().map(|l| l["resps"].clone()))
                .collect()
        };
        assert_ne!(
            generated(&fanned[0]),
            generated(&passes[values.len() - 1]),
            "{}: the first and last values generate alike; the test could not fail",
            input.input
        );
    }
}

/// The rows of a fanned-out generation stop on their own (here at stop strings or the budget,
/// at different steps) and each is the generation `Generator` makes at its value alone,
/// greedy and sampled (a random generator per row, seeded as a pass of its own).
#[test]
fn fanned_out_rows_stopping_at_different_steps_generate_as_each_value_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let (steered, inputs) = mixed_sweepable(tmp.path(), true);
    let input = row(&inputs, "clamp", "blocks.1.hook_mlp_out");
    let values = [0.0, 20.0, 60.0, 200.0, 600.0, -300.0];
    let mut decoder = SweepDecoder::open(&steered, &input.input, &GenerateOptions::default())
        .unwrap()
        .unwrap();
    let mut generator = Generator::open(&steered, &GenerateOptions::default()).unwrap();
    let mut lengths = std::collections::BTreeSet::new();
    for (prompt, options) in [
        (
            "Question: Tom has 3 apples and eats 1. How many are left?\nAnswer:",
            GenerateOptions {
                max_new_tokens: 24,
                // What the values repeat (the demo model loops), cut at different lengths.
                stop: vec!["nswer:nswer:nswer:".into(), "ctct".into(), "everyevery".into()],
                ..Default::default()
            },
        ),
        (
            "The cat",
            GenerateOptions {
                max_new_tokens: 16,
                temperature: 0.8,
                top_k: Some(20),
                seed: 7,
                stop: vec!["?\nA?\nA".into(), "ctctctct".into()],
                ..Default::default()
            },
        ),
    ] {
        let ids = generator.encode_prompt(prompt, false).unwrap();
        let together = decoder.generate(&ids, &values, &options).unwrap();
        for (&value, made) in values.iter().zip(&together) {
            generator.set_feeds(vec![ScalarFeed {
                name: input.input.clone(),
                value,
                dtype: input.dtype,
            }]);
            let alone = generator.generate(&ids, &options, |_| {}).unwrap();
            let what = format!("{prompt:?} at {value}");
            assert_eq!(made.tokens, alone.tokens, "{what}");
            assert_eq!(
                (made.text.as_str(), made.finish),
                (alone.text.as_str(), alone.finish),
                "{what}"
            );
            lengths.insert(made.tokens.len());
        }
    }
    assert!(
        lengths.len() >= 3,
        "the rows stopped after {lengths:?} tokens: too few different steps to show that rows leave the batch"
    );
}
