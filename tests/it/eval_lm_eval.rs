//! `eval` against lm-evaluation-harness 0.4.13 itself (HF backend, float32, eager attention):
//! every request's tokens and loglikelihood, the metrics, the results JSON keys and the samples
//! (tests/fixtures/lm_eval/make_goldens.py made the goldens on the same tiny models: Gemma 2 and
//! 3, the demo model, and one other family, Llama).

use crate::common;

use std::path::{Path, PathBuf};

use sae_onnx::eval::evaluator;
use sae_onnx::eval::options::EvalOptions;
use sae_onnx::eval::requests::encode_pair;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::tokenizer::Tokenizer;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn golden_dir(run: &str) -> PathBuf {
    common::fixture(&format!("lm_eval/out/{run}"))
}

fn export_arch(arch: &str, dir: &Path) -> PathBuf {
    let out = dir.join(format!("{arch}.onnx"));
    let source = format!("tests/fixtures/gemma/{arch}");
    export::export(&source, &out, &ExportOptions::default()).unwrap();
    out
}

/// Runs one golden configuration and checks everything lm-eval wrote.
fn check_run(arch: &str, run: &str, task: &str, num_fewshot: usize, seed: u64, samples_tasks: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_arch(arch, tmp.path());
    check_model_run(&model, tmp.path(), run, task, num_fewshot, seed, samples_tasks);
}

fn check_model_run(
    model: &Path,
    tmp: &Path,
    run: &str,
    task: &str,
    num_fewshot: usize,
    seed: u64,
    samples_tasks: &[&str],
) -> sae_onnx::infer::lm::ScoringStats {
    let model = model.to_path_buf();
    let output = tmp.join("out");
    let options = EvalOptions {
        tasks: vec![task.to_owned()],
        num_fewshot: Some(num_fewshot),
        fewshot_seed: seed,
        include_paths: vec![PathBuf::from("tests/fixtures/lm_eval/tasks")],
        output_path: Some(output.clone()),
        log_samples: true,
        batch_size: sae_onnx::eval::options::BatchSize::Fixed(5),
        ..Default::default()
    };
    let outcome = evaluator::evaluate(&model, &options).unwrap();
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(golden_dir(run).join("results.json")).unwrap())
            .unwrap();

    common::lm_eval::assert_results_match(&outcome.results.to_json(), &golden, run);

    // Samples: same prompts, hashes and loglikelihoods.
    for task in samples_tasks {
        let golden_samples = common::read_jsonl(&golden_dir(run).join(format!("samples_{task}.jsonl")));
        let ours = common::read_jsonl(&common::lm_eval::samples_file(&output, task));
        common::lm_eval::assert_samples_match(&ours, &golden_samples, TOLERANCE, &format!("{run} {task}"));
    }
    outcome.stats
}

#[test]
fn requests_tokenize_exactly_as_lm_eval_hflm() {
    for (arch, run) in [
        ("gemma2", "gemma2_tiny_mc_2shot"),
        ("gemma2", "gemma2_tiny_mmlu_format_1shot"),
        ("gemma3", "gemma3_tiny_mc_0shot"),
    ] {
        let tokenizer =
            Tokenizer::from_file(&common::fixture(&format!("gemma/{arch}/tokenizer.json"))).unwrap();
        let requests = common::read_jsonl(&golden_dir(run).join(format!("requests_{run}.jsonl")));
        let mut checked = 0;
        for r in requests.iter().filter(|r| r.get("_meta").is_none()) {
            let pair = encode_pair(
                &tokenizer,
                true,
                2,
                r["context"].as_str().unwrap(),
                r["continuation"].as_str().unwrap(),
            )
            .unwrap();
            let ids = |k: &str| {
                r[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect::<Vec<_>>()
            };
            assert_eq!(pair.context, ids("context_ids"), "{run}: context of {r}");
            assert_eq!(
                pair.continuation,
                ids("continuation_ids"),
                "{run}: continuation of {r}"
            );
            checked += 1;
        }
        assert!(checked > 20, "{run}: only {checked} requests");
    }
}

#[test]
fn tiny_mc_zero_shot_matches_lm_eval() {
    check_run("gemma2", "gemma2_tiny_mc_0shot", "tiny_mc", 0, 1234, &["tiny_mc"]);
}

#[test]
fn tiny_mc_two_shot_draws_the_same_examples() {
    check_run("gemma2", "gemma2_tiny_mc_2shot", "tiny_mc", 2, 1234, &["tiny_mc"]);
    check_run(
        "gemma2",
        "gemma2_tiny_mc_2shot_fewshotseed42",
        "tiny_mc",
        2,
        42,
        &["tiny_mc"],
    );
}

#[test]
fn mmlu_format_group_aggregates_like_lm_eval() {
    let subjects = ["tiny_mmlu_format_animals", "tiny_mmlu_format_numbers"];
    check_run(
        "gemma2",
        "gemma2_tiny_mmlu_format_0shot",
        "tiny_mmlu_format",
        0,
        1234,
        &subjects,
    );
    check_run(
        "gemma2",
        "gemma2_tiny_mmlu_format_1shot",
        "tiny_mmlu_format",
        1,
        1234,
        &subjects,
    );
}

/// A decoding graph (`export --kv-cache`) computes each subject's shared few-shot prefix once
/// (MMLU's first_n sampler gives every question of a subject the same examples) and still gives
/// lm-eval's answers: Gemma 2's softcap and Gemma 3's sliding windows and q/k norms through the
/// cache path.
#[test]
fn decoding_graphs_compute_shared_prefixes_once_and_match_lm_eval() {
    let subjects = ["tiny_mmlu_format_animals", "tiny_mmlu_format_numbers"];
    for arch in ["gemma2", "gemma3"] {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join(format!("{arch}.kv.onnx"));
        let options = ExportOptions {
            kv_cache: true,
            ..Default::default()
        };
        export::export(&format!("tests/fixtures/gemma/{arch}"), &model, &options).unwrap();
        let run = format!("{arch}_tiny_mmlu_format_1shot");
        let stats = check_model_run(&model, tmp.path(), &run, "tiny_mmlu_format", 1, 1234, &subjects);
        assert!(
            stats.shared_prefix_tokens > stats.tokens / 4,
            "{arch}: {} of {} tokens came from shared prefixes",
            stats.shared_prefix_tokens,
            stats.tokens
        );
    }
}

#[test]
fn gemma3_matches_lm_eval() {
    check_run("gemma3", "gemma3_tiny_mc_2shot", "tiny_mc", 2, 1234, &["tiny_mc"]);
}

/// Another family (the tiny Llama of tests/fixtures/families, llama3 RoPE scaling): the same
/// requests, loglikelihoods and metrics as lm-eval's HF backend on it.
#[test]
fn llama_matches_lm_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama.onnx");
    export::export("tests/fixtures/families/llama", &model, &ExportOptions::default()).unwrap();
    check_model_run(
        &model,
        tmp.path(),
        "llama_tiny_mc_2shot",
        "tiny_mc",
        2,
        1234,
        &["tiny_mc"],
    );
}

/// lm-eval's `steered` model (a `.pt` adding 4·v at `layers.1`) against our patch of the same
/// vector: v is written as decoder row 0 of a one-latent SAELens folder, steered with coefficient 4.
#[test]
fn steered_model_matches_lm_eval_steered() {
    let tmp = tempfile::tempdir().unwrap();
    let (vector, coefficient) = common::lm_eval_steer_vector();
    let sae = common::write_vector_sae(tmp.path(), &vector);
    let csv = tmp.path().join("steer.csv");
    std::fs::write(&csv, format!("latent_idx,steering_coefficient,sae_release,sae_id,description\n0,{coefficient},{},,lm-eval .pt vector\n", sae.display())).unwrap();
    let base = export_arch("gemma2", tmp.path());
    let steered = tmp.path().join("steered.onnx");
    sae_onnx::steer::patch::patch(&sae_onnx::steer::patch::PatchOptions {
        csv,
        output: steered.clone(),
        model: Some(base.display().to_string()),
        replace: false,
        progress: false,
    })
    .unwrap();
    check_model_run(
        &steered,
        tmp.path(),
        "gemma2_steered_tiny_mc_0shot",
        "tiny_mc",
        0,
        1234,
        &["tiny_mc"],
    );
}
