//! `eval --shard K/N` and `merge`: a complete shard set merges into the files of the unsharded
//! run, byte for byte except timestamps and durations (every metric, stderr, group aggregate,
//! n-samples, config, sample line and its order), on a group with few-shot examples drawn at
//! random, a generate_until task, a loglikelihood_rolling task and a sweep. The unsharded run is
//! the reference: the lm-eval goldens of eval_lm_eval, eval_rolling_gen and eval_sweep hold it
//! to lm-eval 0.4.13. Incomplete and mixed sets are refused, naming what is missing or differs.

use std::path::{Path, PathBuf};

use sae_onnx::eval::evaluator;
use sae_onnx::eval::merge::{self, MergeOptions};
use sae_onnx::eval::options::{BatchSize, EvalOptions};
use sae_onnx::eval::shard::Shard;
use sae_onnx::export::{self, ExportOptions};
use serde_json::Value;

fn tiny_gemma2(dir: &Path) -> PathBuf {
    let model = dir.join("gemma2.onnx");
    export::export("tests/fixtures/gemma/gemma2", &model, &ExportOptions::default()).unwrap();
    model
}

fn options(tasks: &[&str], num_fewshot: Option<usize>, output: &Path, shard: Option<Shard>) -> EvalOptions {
    EvalOptions {
        tasks: tasks.iter().map(|t| (*t).to_owned()).collect(),
        num_fewshot,
        include_paths: vec![
            PathBuf::from("tests/fixtures/lm_eval/tasks"),
            PathBuf::from("tests/fixtures/lm_eval_gen/tasks"),
        ],
        output_path: Some(output.to_path_buf()),
        log_samples: true,
        batch_size: BatchSize::Fixed(4),
        shard,
        ..Default::default()
    }
}

fn shard(index: usize, count: usize) -> Option<Shard> {
    Some(Shard { index, count })
}

/// The results file and the samples files (by task) in the folder a run wrote to.
fn files_in(dir: &Path) -> (Value, Vec<(String, String)>) {
    let mut results = None;
    let mut samples = Vec::new();
    for path in std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("results_") {
            assert!(results.is_none(), "two results files in {}", dir.display());
            results = Some(serde_json::from_str::<Value>(&std::fs::read_to_string(&path).unwrap()).unwrap());
        } else if let Some(rest) = name.strip_prefix("samples_") {
            // samples_<task>_<stamp>.jsonl; the stamp starts with the year.
            let task = &rest[..rest.rfind("_20").unwrap()];
            samples.push((task.to_owned(), std::fs::read_to_string(&path).unwrap()));
        }
    }
    samples.sort();
    (results.expect("a results file"), samples)
}

/// The unsharded run's files and the merged ones are the same but for the evaluation time.
fn assert_same_run(merged_dir: &Path, unsharded_dir: &Path) {
    let (mut merged, merged_samples) = files_in(merged_dir);
    let (mut unsharded, unsharded_samples) = files_in(unsharded_dir);
    for file in [&mut merged, &mut unsharded] {
        let time = file
            .as_object_mut()
            .unwrap()
            .remove("total_evaluation_time_seconds");
        assert!(time.is_some(), "results without an evaluation time");
    }
    // Serialized, so key order counts too.
    assert_eq!(
        serde_json::to_string_pretty(&merged).unwrap(),
        serde_json::to_string_pretty(&unsharded).unwrap()
    );
    assert!(!unsharded_samples.is_empty());
    assert_eq!(
        merged_samples.iter().map(|s| &s.0).collect::<Vec<_>>(),
        unsharded_samples.iter().map(|s| &s.0).collect::<Vec<_>>()
    );
    for ((task, a), (_, b)) in merged_samples.iter().zip(&unsharded_samples) {
        assert!(a == b, "samples of {task} differ");
    }
}

fn model_dir(output: &Path, model: &Path) -> PathBuf {
    output.join(sae_onnx::eval::output::sanitize_model_name(
        &model.display().to_string(),
    ))
}

fn merge_into(dirs: &[PathBuf], output: &Path) -> anyhow::Result<Vec<merge::MergedRun>> {
    merge::merge(&MergeOptions {
        dirs: dirs.to_vec(),
        output_path: output.to_path_buf(),
        force: false,
    })
}

/// A group (size-weighted, pooled stderr) and a multiple-choice task, both two-shot (tiny_mc
/// draws its examples at random, in document order), in three shards.
#[test]
fn merged_shards_equal_the_unsharded_run_on_a_group_and_few_shot() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_gemma2(tmp.path());
    let tasks = ["tiny_mmlu_format", "tiny_mc"];
    let full = tmp.path().join("full");
    evaluator::evaluate(&model, &options(&tasks, Some(2), &full, None)).unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|k| tmp.path().join(format!("shard{k}"))).collect();
    for (k, dir) in dirs.iter().enumerate() {
        let outcome = evaluator::evaluate(&model, &options(&tasks, Some(2), dir, shard(k, 3))).unwrap();
        // A shard's own results cover its slice: document i % 3 == k.
        let expected = (0..24).filter(|i| i % 3 == k).count();
        assert_eq!(outcome.results.n_samples["tiny_mc"].effective, expected);
    }
    let merged = tmp.path().join("merged");
    // Given in another order: the merge orders shards by index.
    let runs = merge_into(&[dirs[2].clone(), dirs[0].clone(), dirs[1].clone()], &merged).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].shards, 3);
    assert_same_run(&model_dir(&merged, &model), &model_dir(&full, &model));
}

/// generate_until (two filters: one sample line per document and filter) and
/// loglikelihood_rolling (perplexities re-weighted from each document's loglikelihood and
/// counts) in three shards.
#[test]
fn merged_shards_equal_the_unsharded_run_on_generation_and_rolling_perplexity() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_gemma2(tmp.path());
    let tasks = ["tiny_gsm", "tiny_text"];
    let full = tmp.path().join("full");
    evaluator::evaluate(&model, &options(&tasks, Some(0), &full, None)).unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|k| tmp.path().join(format!("shard{k}"))).collect();
    for (k, dir) in dirs.iter().enumerate() {
        evaluator::evaluate(&model, &options(&tasks, Some(0), dir, shard(k, 3))).unwrap();
    }
    let merged = tmp.path().join("merged");
    merge_into(&dirs, &merged).unwrap();
    assert_same_run(&model_dir(&merged, &model), &model_dir(&full, &model));
}

/// A `--sweep` in two shards: each point's shards merge into that point's files, under the same
/// sweep_<input>_<value>/ names.
#[test]
fn merged_sweep_shards_equal_the_unsharded_sweep_at_each_point() {
    let tmp = tempfile::tempdir().unwrap();
    let model = crate::eval_sweep::sweepable_steered_model(tmp.path());
    let loaded = sae_onnx::onnx::Model::load(&model).unwrap();
    let inputs = sae_onnx::contract::sweep::coefficient_inputs(&loaded.proto).unwrap();
    let input = inputs[0].clone();
    drop(loaded);
    let values = [0.0, 8.0];
    let tasks = ["tiny_mmlu_format", "tiny_text"];
    let full = tmp.path().join("full");
    evaluator::evaluate_sweep(&model, &options(&tasks, Some(0), &full, None), &input, &values).unwrap();
    let dirs: Vec<PathBuf> = (0..2).map(|k| tmp.path().join(format!("shard{k}"))).collect();
    for (k, dir) in dirs.iter().enumerate() {
        evaluator::evaluate_sweep(
            &model,
            &options(&tasks, Some(0), dir, shard(k, 2)),
            &input,
            &values,
        )
        .unwrap();
    }
    let merged = tmp.path().join("merged");
    let runs = merge_into(&dirs, &merged).unwrap();
    assert_eq!(runs.len(), 2);
    for value in values {
        let point = format!("sweep_{}_{value}", input.input);
        assert_same_run(
            &model_dir(&merged.join(&point), &model),
            &model_dir(&full.join(&point), &model),
        );
    }
}

#[test]
fn incomplete_repeated_and_mixed_shard_sets_are_refused_naming_what_is_wrong() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tiny_gemma2(tmp.path());
    let tasks = ["tiny_mc"];
    let run = |name: &str, limit: Option<f64>, fewshot: Option<usize>, s: Option<Shard>| {
        let dir = tmp.path().join(name);
        let mut o = options(&tasks, fewshot, &dir, s);
        o.limit = limit;
        evaluator::evaluate(&model, &o).unwrap();
        dir
    };
    let s0 = run("s0", Some(9.0), None, shard(0, 3));
    let s1 = run("s1", Some(9.0), None, shard(1, 3));
    let s2 = run("s2", Some(9.0), None, shard(2, 3));
    let out = tmp.path().join("merged");
    let refused = |dirs: &[PathBuf]| format!("{:#}", merge_into(dirs, &out).err().expect("refused"));

    let err = refused(&[s0.clone(), s2.clone()]);
    assert!(err.contains("incomplete") && err.contains("missing 1/3"), "{err}");
    let err = refused(&[s0.clone(), s1.clone(), s1.clone(), s2.clone()]);
    assert!(err.contains("shard 1/3 appears twice"), "{err}");
    let other_limit = run("limit8", Some(8.0), None, shard(1, 3));
    let err = refused(&[s0.clone(), other_limit, s2.clone()]);
    assert!(err.contains("differ in limit: 9.0 vs 8.0"), "{err}");
    let other_shots = run("shots1", Some(9.0), Some(1), shard(1, 3));
    let err = refused(&[s0.clone(), other_shots, s2.clone()]);
    assert!(err.contains("differ in few-shot"), "{err}");
    let other_n = run("n4", Some(9.0), None, shard(1, 4));
    let err = refused(&[s0.clone(), other_n, s2.clone()]);
    assert!(err.contains("differ in the shard count N: 3 vs 4"), "{err}");
    let err = refused(&[tmp.path().join("s0").join("nothing-here")]);
    assert!(err.contains("not a folder"), "{err}");
    // Nothing was written by a refused merge.
    assert!(!out.exists());
    // The complete set merges.
    merge_into(&[s0, s1, s2], &out).unwrap();

    // More shards than a task has documents: refused before any scoring.
    let mut o = options(&tasks, None, &tmp.path().join("too_many"), shard(0, 10));
    o.limit = Some(9.0);
    let err = format!("{:#}", evaluator::evaluate(&model, &o).err().expect("refused"));
    assert!(err.contains("fewer than the 10 shards"), "{err}");
}
