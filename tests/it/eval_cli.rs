//! `sae-onnx eval` end to end through the binary: a task read from a Hugging Face dataset in a local
//! cache (offline), resuming from `--cache`, and the errors a user meets (bad task file, missing
//! column, tokenizer that does not fit the model, NaN logits).

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::export::{self, ExportOptions};
use sae_onnx::onnx::make::{make_node, make_tensor_f32};
use sae_onnx::onnx::{Model, SaveOptions};
use serde_json::Value;

fn sae_onnx(args: &[&str], env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sae-onnx"));
    cmd.args(args).env("HF_HUB_OFFLINE", "1").env_remove("HF_HOME");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn export_gemma2(dir: &Path) -> PathBuf {
    let out = dir.join("gemma2.onnx");
    export::export("tests/fixtures/gemma/gemma2", &out, &ExportOptions::default()).unwrap();
    out
}

fn results_in(dir: &Path) -> Value {
    let mut found = Vec::new();
    for entry in walk(dir) {
        if entry
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("results_")
        {
            found.push(entry);
        }
    }
    assert_eq!(found.len(), 1, "one results file in {}", dir.display());
    serde_json::from_str(&std::fs::read_to_string(&found[0]).unwrap()).unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path))
        } else {
            out.push(path)
        }
    }
    out
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn hub_datasets_load_from_the_local_cache_and_score_like_lm_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_gemma2(tmp.path());
    let out = tmp.path().join("out");
    let cache = common::fixture("hub_dataset/cache");
    let run = sae_onnx(
        &[
            "eval",
            model.to_str().unwrap(),
            "--task",
            "tests/fixtures/hub_dataset/tiny_mc_hub.yaml",
            "--batch-size",
            "auto",
            "--output-path",
            out.to_str().unwrap(),
        ],
        &[("HF_HUB_CACHE", &cache)],
    );
    assert!(run.status.success(), "{}", stderr(&run));
    let results = results_in(&out);
    // lm-eval 0.4.13 on the same documents (tests/fixtures/lm_eval/out/gemma2_tiny_mc_0shot).
    assert_eq!(results["results"]["tiny_mc_hub"]["acc,none"], 0.20833333333333334);
    assert_eq!(results["results"]["tiny_mc_hub"]["acc_norm,none"], 0.5);
    assert_eq!(results["config"]["batch_size"], "auto");
    assert!(stderr(&run).contains("batch size auto: 64"), "{}", stderr(&run));
}

#[test]
fn an_interrupted_run_resumes_from_its_cache_with_identical_results() {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_gemma2(tmp.path());
    let cache = tmp.path().join("run.cache.jsonl");
    let task = "tests/fixtures/lm_eval/tasks/tiny_mc.yaml";
    let run = |out: &str| {
        let out = tmp.path().join(out);
        let o = sae_onnx(
            &[
                "eval",
                model.to_str().unwrap(),
                "--task",
                task,
                "--num-fewshot",
                "2",
                "--cache",
                cache.to_str().unwrap(),
                "--output-path",
                out.to_str().unwrap(),
            ],
            &[],
        );
        assert!(o.status.success(), "{}", stderr(&o));
        (results_in(&out)["results"].clone(), stderr(&o))
    };
    let (full, _) = run("full");
    // A kill leaves the cache cut anywhere: keep a third of it and half a line.
    let text = std::fs::read_to_string(&cache).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let keep = lines.len() / 3;
    let mut cut = lines[..keep].join("\n");
    cut.push('\n');
    cut.push_str(&lines[keep][..lines[keep].len() / 2]);
    std::fs::write(&cache, cut).unwrap();
    let (resumed, log) = run("resumed");
    assert_eq!(resumed, full, "resumed results equal the uninterrupted run");
    // The first line is the cache's header, the others one answer each.
    assert!(
        !log.contains(&format!("{} requests", lines.len() - 1)),
        "only the missing requests were recomputed: {log}"
    );
    let (again, log) = run("again");
    assert_eq!(again, full);
    assert!(
        log.contains("0 requests in 0 forwards"),
        "a complete cache needs no forward: {log}"
    );
}

#[test]
fn bad_tasks_and_mismatched_models_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_gemma2(tmp.path());
    let m = model.to_str().unwrap();

    let bad_yaml = tmp.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "task: bad\ndataset_path: [json\n").unwrap();
    let o = sae_onnx(&["eval", m, "--task", bad_yaml.to_str().unwrap()], &[]);
    assert!(
        !o.status.success() && stderr(&o).contains("bad.yaml") && !stderr(&o).contains("panicked"),
        "{}",
        stderr(&o)
    );

    let missing_column = tmp.path().join("missing.yaml");
    let yaml = std::fs::read_to_string("tests/fixtures/lm_eval/tasks/tiny_mc.yaml")
        .unwrap()
        .replace("{{question}}", "{{questoin}}")
        .replace("task: tiny_mc", "task: misspelled");
    std::fs::write(&missing_column, yaml).unwrap();
    let o = sae_onnx(&["eval", m, "--task", missing_column.to_str().unwrap()], &[]);
    let e = stderr(&o);
    assert!(
        !o.status.success() && e.contains("misspelled") && e.contains("document 0") && e.contains("questoin"),
        "{e}"
    );

    let unknown = sae_onnx(
        &[
            "eval",
            m,
            "--task",
            "tiny_mcc",
            "--include-path",
            "tests/fixtures/lm_eval/tasks",
        ],
        &[],
    );
    assert!(
        stderr(&unknown).contains("Did you mean: tiny_mc"),
        "{}",
        stderr(&unknown)
    );

    // A model whose vocabulary is smaller than its tokenizer's.
    let mut small = Model::load(&model).unwrap();
    small.set_metadata("sae_onnx.vocab_size", "100");
    let small_path = tmp.path().join("small_vocab.onnx");
    small.save(&small_path, &SaveOptions::default()).unwrap();
    let o = sae_onnx(
        &[
            "eval",
            small_path.to_str().unwrap(),
            "--task",
            "tests/fixtures/lm_eval/tasks/tiny_mc.yaml",
        ],
        &[],
    );
    assert!(
        stderr(&o).contains("512 tokens but the model's vocabulary has 100"),
        "{}",
        stderr(&o)
    );

    // NaN in the residual stream.
    let mut broken = Model::load(&model).unwrap();
    let graph = broken.graph_mut();
    graph.initializer.push(make_tensor_f32("nan", &[], &[f32::NAN]));
    let mul = make_node(
        "Mul",
        &["blocks.0.hook_resid_post", "nan"],
        &["poisoned"],
        "poison",
    );
    graph
        .insert_after("blocks.0.hook_resid_post", vec![mul], "poisoned")
        .unwrap();
    let nan_path = tmp.path().join("nan.onnx");
    broken.save(&nan_path, &SaveOptions::default()).unwrap();
    let o = sae_onnx(
        &[
            "eval",
            nan_path.to_str().unwrap(),
            "--task",
            "tests/fixtures/lm_eval/tasks/tiny_mc.yaml",
        ],
        &[],
    );
    assert!(
        !o.status.success() && stderr(&o).contains("non-finite"),
        "{}",
        stderr(&o)
    );
}
