//! lm-eval's multiple-input mode (winogrande: `doc_to_text` returns the gold choice's index, each
//! choice is a context of its own, all sharing one continuation) against lm-evaluation-harness
//! 0.4.13 itself: tests/fixtures/lm_eval_winogrande/make_golden.py ran lm-eval's winogrande YAML and
//! its own preprocess_winogrande.py on local documents, 0-shot and 2-shot, on the tiny Gemma 2.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sae_onnx::eval::evaluator;
use sae_onnx::eval::options::{BatchSize, EvalOptions};
use sae_onnx::eval::task_index::load_yaml_config;
use sae_onnx::export::{self, ExportOptions};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn golden_dir(run: &str) -> PathBuf {
    common::fixture(&format!("lm_eval_winogrande/out/{run}"))
}

fn golden_results(run: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(golden_dir(run).join("results.json")).unwrap()).unwrap()
}

fn golden_samples(run: &str) -> Vec<Value> {
    common::read_jsonl(&golden_dir(run).join("samples_tiny_winogrande.jsonl"))
}

/// The tiny Gemma 2, exported once per test process.
fn model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sae-onnx-winogrande")
            .tempdir()
            .unwrap()
            .keep();
        let out = dir.join("gemma2.onnx");
        export::export("tests/fixtures/gemma/gemma2", &out, &ExportOptions::default()).unwrap();
        out
    })
}

/// `eval` of `task` with lm-eval's settings of the goldens; returns the results and our samples.
fn run_eval(task: &str, num_fewshot: usize) -> (serde_json::Map<String, Value>, Vec<Value>) {
    let tmp = tempfile::tempdir().unwrap();
    let options = EvalOptions {
        tasks: vec![task.to_owned()],
        num_fewshot: Some(num_fewshot),
        include_paths: vec![PathBuf::from("tests/fixtures/lm_eval_winogrande/tasks")],
        output_path: Some(tmp.path().to_path_buf()),
        log_samples: true,
        batch_size: BatchSize::Fixed(5),
        ..Default::default()
    };
    let outcome = evaluator::evaluate(model(), &options).unwrap();
    let samples = common::read_jsonl(&common::lm_eval::samples_file(tmp.path(), task));
    (outcome.results.to_json(), samples)
}

fn check_run(run: &str, num_fewshot: usize) {
    let (results, samples) = run_eval("tiny_winogrande", num_fewshot);
    common::lm_eval::assert_results_match(&results, &golden_results(run), run);
    assert_eq!(
        results["task_hashes"],
        golden_results(run)["task_hashes"],
        "{run}: task_hashes"
    );
    common::lm_eval::assert_samples_match(&samples, &golden_samples(run), TOLERANCE, run);
}

#[test]
fn zero_shot_matches_lm_eval() {
    check_run("gemma2_tiny_winogrande_0shot", 0);
}

/// Few-shot examples are the gold choice's context, the target delimiter and `doc_to_target`;
/// an example whose target is empty adds no delimiters (train doc 3); validation doc 3 is also a
/// training doc (lm-eval's sampler draws one more and drops it).
#[test]
fn two_shot_matches_lm_eval() {
    check_run("gemma2_tiny_winogrande_2shot", 2);
}

/// The goldens exercise what the mode is about: contexts that differ, one continuation, a gold
/// from `doc_to_text`, a choice ending in a space (moved into the continuation when encoded), an
/// empty target, and both answers.
#[test]
fn goldens_cover_the_multiple_input_cases() {
    let samples = golden_samples("gemma2_tiny_winogrande_0shot");
    let mut golds = std::collections::BTreeSet::new();
    for s in &samples {
        let args = s["arguments"].as_object().unwrap();
        assert_eq!(args.len(), 2);
        assert_ne!(args["gen_args_0"]["arg_0"], args["gen_args_1"]["arg_0"]);
        assert_eq!(args["gen_args_0"]["arg_1"], args["gen_args_1"]["arg_1"]);
        golds.insert(s["doc"]["answer"].as_str().unwrap().to_owned());
    }
    assert_eq!(golds.len(), 2);
    assert!(samples.iter().any(|s| s["target"] == ""));
    assert!(samples.iter().any(|s| {
        s["arguments"]
            .as_object()
            .unwrap()
            .values()
            .any(|a| a["arg_0"].as_str().unwrap().ends_with(' '))
    }));
}

/// tasks/winogrande/default.yaml is lm-eval's YAML: the fixture's copy differs only in the task
/// name and the dataset.
#[test]
fn bundled_winogrande_is_lm_evals_yaml() {
    let mut bundled = load_yaml_config(Path::new("tasks/winogrande/default.yaml")).unwrap();
    let mut fixture =
        load_yaml_config(&common::fixture("lm_eval_winogrande/tasks/tiny_winogrande.yaml")).unwrap();
    assert_eq!(bundled["dataset_path"], "allenai/winogrande");
    assert_eq!(bundled["dataset_name"], "winogrande_xl");
    for key in ["task", "dataset_path", "dataset_name", "dataset_kwargs"] {
        bundled.remove(key);
        fixture.remove(key);
    }
    assert_eq!(bundled, fixture);
}

/// Lays the fixture's parquet files out in this process's Hugging Face cache as allenai/winogrande
/// (`winogrande_xl/<split>-00000-of-00001.parquet` on `main`; `common::fake_hub_cache`, offline).
/// Only the test below reads the hub.
fn fake_hub() {
    static HUB: OnceLock<()> = OnceLock::new();
    HUB.get_or_init(|| {
        let root = common::fake_hub_cache();
        let repo = root.join("datasets--allenai--winogrande");
        let commit = "1111111111111111111111111111111111111111";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let snapshot = repo.join("snapshots").join(commit).join("winogrande_xl");
        std::fs::create_dir_all(&snapshot).unwrap();
        for split in ["train", "validation"] {
            let name = format!("{split}-00000-of-00001.parquet");
            std::fs::copy(
                common::fixture(&format!("lm_eval_winogrande/hub/winogrande_xl/{name}")),
                snapshot.join(name),
            )
            .unwrap();
        }
    });
}

/// `--task winogrande` (the bundled task, from the hub) on the fixture's documents gives
/// lm-eval's prompts, scores, hashes and accuracy.
#[test]
fn bundled_winogrande_from_the_hub_matches_lm_eval() {
    fake_hub();
    for (run, shots) in [
        ("gemma2_tiny_winogrande_0shot", 0),
        ("gemma2_tiny_winogrande_2shot", 2),
    ] {
        let (results, samples) = run_eval("winogrande", shots);
        let golden = golden_results(run);
        for key in ["acc,none", "acc_stderr,none"] {
            assert_eq!(
                results["results"]["winogrande"][key], golden["results"]["tiny_winogrande"][key],
                "{run}: {key}"
            );
        }
        assert_eq!(
            results["versions"]["winogrande"],
            golden["versions"]["tiny_winogrande"]
        );
        assert_eq!(
            results["task_hashes"]["winogrande"],
            golden["task_hashes"]["tiny_winogrande"]
        );
        common::lm_eval::assert_samples_match(&samples, &golden_samples(run), TOLERANCE, run);
    }
}
