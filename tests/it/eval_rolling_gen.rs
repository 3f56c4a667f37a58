//! loglikelihood_rolling and generate_until against lm-eval 0.4.13 itself
//! (tests/fixtures/lm_eval_gen/make_goldens_gen.py): rolling windows token for token, per-document
//! loglikelihoods, perplexities and samples; generations, filters and exact_match.

use crate::common;

use std::path::{Path, PathBuf};

use sae_onnx::eval::evaluator;
use sae_onnx::eval::options::EvalOptions;
use sae_onnx::eval::requests::rolling_windows;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::tokenizer::Tokenizer;
use serde_json::Value;

fn golden(run: &str, file: &str) -> PathBuf {
    common::fixture(&format!("lm_eval_gen/out/{run}/{file}"))
}

fn run_eval(arch: &str, yaml: &str, tmp: &Path) -> (Value, Vec<Value>) {
    let model = tmp.join(format!("{arch}.onnx"));
    export::export(
        &format!("tests/fixtures/gemma/{arch}"),
        &model,
        &ExportOptions::default(),
    )
    .unwrap();
    let out = tmp.join("out");
    let options = EvalOptions {
        tasks: vec![yaml.to_owned()],
        output_path: Some(out.clone()),
        log_samples: true,
        ..Default::default()
    };
    let outcome = evaluator::evaluate(&model, &options).unwrap();
    let dir = out.join(sae_onnx::eval::output::sanitize_model_name(
        &model.display().to_string(),
    ));
    let samples_path = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("samples_"))
        .unwrap();
    (
        Value::Object(outcome.results.to_json()),
        common::read_jsonl(&samples_path),
    )
}

#[test]
fn rolling_windows_and_perplexities_match_lm_eval() {
    let run = "gemma2_tiny_text";
    let tokenizer = Tokenizer::from_file(&common::fixture("gemma/gemma2/tokenizer.json")).unwrap();
    let requests = common::read_jsonl(&golden(run, &format!("requests_{run}.jsonl")));
    let mut windows_checked = 0;
    for r in requests.iter().filter(|r| r.get("_meta").is_none()) {
        let ids = |v: &Value| {
            v.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect::<Vec<_>>()
        };
        let tokens = tokenizer.encode(r["string"].as_str().unwrap(), true).unwrap();
        assert_eq!(tokens, ids(&r["token_list"]), "doc {}: tokens", r["doc_id"]);
        let ours = rolling_windows(&tokens, 2, 128);
        let theirs = r["windows"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "doc {}: window count", r["doc_id"]);
        for (o, t) in ours.iter().zip(theirs) {
            assert_eq!(o.context, ids(&t["context_ids"]));
            assert_eq!(o.continuation, ids(&t["predicted_ids"]));
            windows_checked += 1;
        }
    }
    assert!(windows_checked > 8, "some documents need several windows");

    let tmp = tempfile::tempdir().unwrap();
    let (results, samples) = run_eval(
        "gemma2",
        "tests/fixtures/lm_eval_gen/tasks/tiny_text.yaml",
        tmp.path(),
    );
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(golden(run, "results.json")).unwrap()).unwrap();
    for (key, value) in expected["results"]["tiny_text"].as_object().unwrap() {
        let ours = &results["results"]["tiny_text"][key];
        match (ours.as_f64(), value.as_f64()) {
            (Some(a), Some(e)) => assert!(((a - e) / e).abs() < 1e-5, "{key}: {a} vs lm-eval {e}"),
            _ => assert_eq!(ours, value, "{key}"),
        }
    }
    let golden_samples = common::read_jsonl(&golden(run, "samples_tiny_text.jsonl"));
    assert_eq!(samples.len(), golden_samples.len());
    for (o, g) in samples.iter().zip(&golden_samples) {
        common::assert_fields_equal(
            o,
            g,
            &common::lm_eval::SAMPLE_FIELDS,
            &format!("doc {}", g["doc_id"]),
        );
        let ll = |v: &Value| v["filtered_resps"][0].as_str().unwrap().parse::<f64>().unwrap();
        assert!(
            (ll(o) - ll(g)).abs() <= 1e-3,
            "doc {}: {} vs {}",
            g["doc_id"],
            ll(o),
            ll(g)
        );
        assert_eq!(o["word_perplexity"][1], g["word_perplexity"][1], "word count");
        assert_eq!(o["byte_perplexity"][1], g["byte_perplexity"][1], "byte count");
    }
}

#[test]
fn wikitext_detokenizer_matches_lm_eval() {
    let cases: Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture("lm_eval_gen/out/wikitext_detokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    let cases = cases["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let input = case["page"].as_str().unwrap();
        let expected = case["detokenized"].as_str().unwrap();
        assert_eq!(
            sae_onnx::eval::builtins::wikitext_detokenizer(input),
            expected,
            "input {input:?}"
        );
    }
}

/// generate_until: the same prompts, greedy generations (to the character), filters and scores.
fn check_generation_run(run: &str, num_fewshot: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gemma2.onnx");
    export::export("tests/fixtures/gemma/gemma2", &model, &ExportOptions::default()).unwrap();
    let out = tmp.path().join("out");
    let options = EvalOptions {
        tasks: vec!["tiny_gsm".into(), "tiny_gsm_stops".into()],
        include_paths: vec![PathBuf::from("tests/fixtures/lm_eval_gen/tasks")],
        num_fewshot: Some(num_fewshot),
        output_path: Some(out.clone()),
        log_samples: true,
        ..Default::default()
    };
    let outcome = evaluator::evaluate(&model, &options).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(golden(run, "results.json")).unwrap()).unwrap();
    for task in ["tiny_gsm", "tiny_gsm_stops"] {
        assert_eq!(
            outcome.results.to_json()["results"][task],
            expected["results"][task],
            "{run} {task}"
        );
        let dir = out.join(sae_onnx::eval::output::sanitize_model_name(
            &model.display().to_string(),
        ));
        let ours_path = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(&format!("samples_{task}_2"))
            })
            .unwrap();
        let ours = common::read_jsonl(&ours_path);
        let theirs = common::read_jsonl(&golden(run, &format!("samples_{task}.jsonl")));
        assert_eq!(ours.len(), theirs.len(), "{run} {task}: samples");
        for (o, g) in ours.iter().zip(&theirs) {
            common::assert_fields_equal(
                o,
                g,
                &[
                    "doc_id",
                    "target",
                    "arguments",
                    "resps",
                    "filtered_resps",
                    "filter",
                    "doc_hash",
                    "prompt_hash",
                    "target_hash",
                    "exact_match",
                ],
                &format!("{run} {task} doc {} filter {}", g["doc_id"], g["filter"]),
            );
        }
    }
}

#[test]
fn generate_until_matches_lm_eval_zero_shot() {
    check_generation_run("gemma2_tiny_gsm_0shot", 0);
}

#[test]
fn generate_until_matches_lm_eval_two_shot() {
    check_generation_run("gemma2_tiny_gsm_2shot", 2);
}
