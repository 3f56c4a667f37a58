//! `sae-onnx eval` never reports a wrong number, never destroys a file, never panics (issue 12),
//! through the binary on the demo model: a cache is tied to the model, tokenizer, coefficient and
//! device that wrote it; a file that is not a cache is never appended to; outputs never replace
//! inputs, nor existing files without --force, and a bad --output-path fails before scoring;
//! nonsense numbers, empty choices and out-of-range labels are errors naming the document.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn sae_onnx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts a clean failure (an error, not a panic) whose message holds every one of `needles`.
fn assert_error(o: &Output, needles: &[&str]) {
    let e = stderr(o);
    assert!(!o.status.success(), "expected a failure: {e}");
    assert!(!e.contains("panicked"), "a panic: {e}");
    for needle in needles {
        assert!(e.contains(needle), "no {needle:?} in: {e}");
    }
}

fn assert_ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// The demo model exported as `base.onnx` and patched with its steer.csv as `steered.onnx`.
fn demo_models(dir: &Path) -> (PathBuf, PathBuf) {
    let base = dir.join("base.onnx");
    let steered = dir.join("steered.onnx");
    assert_ok(&sae_onnx(&["export", "models/tiny-gemma2", "-o", s(&base)]));
    patch_demo(&base, &steered, &[]);
    (base, steered)
}

/// `base` patched with the demo's steer.csv into `out`, with `extra` arguments.
fn patch_demo(base: &Path, out: &Path, extra: &[&str]) {
    let mut args = vec![
        "patch",
        "--csv",
        "models/tiny-gemma2/steer.csv",
        "--model",
        s(base),
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    assert_ok(&sae_onnx(&args));
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

const TASK: &str = "models/tiny-gemma2/demo_mc.yaml";

/// `eval MODEL --task TASK` plus `extra`.
fn eval(model: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["eval", s(model), "--task", TASK];
    args.extend_from_slice(extra);
    sae_onnx(&args)
}

fn results(path: &Path) -> Value {
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    json["results"].clone()
}

#[test]
fn a_cache_answers_only_the_evaluation_that_wrote_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, steered) = demo_models(tmp.path());
    let cache = tmp.path().join("run.cache.jsonl");
    let out = |name: &str| tmp.path().join(name);
    assert_ok(&eval(
        &base,
        &["--cache", s(&cache), "--output-path", s(&out("base.json"))],
    ));
    let header: Value =
        serde_json::from_str(std::fs::read_to_string(&cache).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(header["sae_onnx_cache"], 1, "{header}");

    // Before: the steered model was given the base model's answers ("0 requests in 0 forwards").
    let o = eval(&steered, &["--cache", s(&cache)]);
    assert_error(
        &o,
        &["run.cache.jsonl", "the model graph", "another --cache path"],
    );
    // Another context length changes truncated answers: refused too, naming it.
    let o = eval(&base, &["--cache", s(&cache), "--max-length", "8"]);
    assert_error(&o, &["the context length: cached 1024, now 8"]);

    assert_ok(&eval(&steered, &["--output-path", s(&out("plain.json"))]));
    let fresh = tmp.path().join("steered.cache.jsonl");
    for name in ["cached.json", "resumed.json"] {
        assert_ok(&eval(
            &steered,
            &["--cache", s(&fresh), "--output-path", s(&out(name))],
        ));
    }
    let plain = results(&out("plain.json"));
    assert_eq!(results(&out("cached.json")), plain);
    assert_eq!(results(&out("resumed.json")), plain);
    assert_ne!(
        results(&out("base.json")),
        plain,
        "the steering changes the scores, so the refusal above mattered"
    );
}

#[test]
fn a_file_that_is_not_our_cache_is_never_appended_to() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = demo_models(tmp.path());
    let docs = std::fs::read_to_string("models/tiny-gemma2/demo_mc_test.jsonl").unwrap();
    let task = task_with(tmp.path(), "copy", &docs, "acc_norm");
    let data = tmp.path().join("copy.jsonl");
    let notes = tmp.path().join("notes.txt");
    std::fs::write(&notes, "my notes\n").unwrap();
    // A cache of a version without header: its answers cannot be tied to a model.
    let old = tmp.path().join("old.jsonl");
    let old_text = "{\"context\":[2],\"continuation\":[3],\"logprob\":-1.0,\"is_greedy\":true}\n";
    std::fs::write(&old, old_text).unwrap();
    let task_text = std::fs::read_to_string(&task).unwrap();
    let run = |cache: &str| sae_onnx(&["eval", s(&base), "--task", s(&task), "--cache", cache]);

    assert_error(&run(s(&task)), &["copy.yaml", "an input of this evaluation"]);
    assert_error(&run(s(&data)), &["copy.jsonl", "an input of this evaluation"]);
    assert_error(
        &run(s(&notes)),
        &["notes.txt", "is not a sae-onnx cache", "refusing to append"],
    );
    assert_error(&run(s(&old)), &["old.jsonl", "is not a sae-onnx cache"]);
    assert_error(&run("/dev/zero"), &["/dev/zero", "not a regular file"]);
    assert_error(&run(s(tmp.path())), &["is a folder"]);
    assert_eq!(std::fs::read_to_string(&task).unwrap(), task_text);
    assert_eq!(std::fs::read_to_string(&data).unwrap(), docs);
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    assert_eq!(std::fs::read_to_string(&old).unwrap(), old_text);
}

#[test]
fn outputs_are_checked_before_scoring_and_never_replace_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = demo_models(tmp.path());
    let file = tmp.path().join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let cache = tmp.path().join("c.jsonl");
    // A folder under a regular file: refused before the cache is opened, so before any scoring.
    let o = eval(
        &base,
        &["--output-path", s(&file.join("out")), "--cache", s(&cache)],
    );
    assert_error(&o, &["file.txt", "is a file, not a folder"]);
    assert!(!cache.exists(), "nothing was scored");

    let json = tmp.path().join("r.json");
    assert_ok(&eval(&base, &["--output-path", s(&json)]));
    let first = std::fs::read(&json).unwrap();
    let o = eval(&base, &["--output-path", s(&json), "--cache", s(&cache)]);
    assert_error(&o, &["r.json", "already exists; pass --force"]);
    assert!(!cache.exists(), "nothing was scored");
    assert_eq!(std::fs::read(&json).unwrap(), first);
    assert_ok(&eval(&base, &["--output-path", s(&json), "--force"]));

    // The tokenizer is an input even with --force (the model's metadata names this one).
    let tokenizer = "models/tiny-gemma2/tokenizer.json";
    let bytes = std::fs::read(tokenizer).unwrap();
    let o = eval(&base, &["--output-path", tokenizer, "--force"]);
    assert_error(&o, &["tokenizer.json", "input of this command"]);
    assert_eq!(std::fs::read(tokenizer).unwrap(), bytes);
    let o = eval(&base, &["--output-path", "/dev/null", "--force"]);
    assert_error(&o, &["/dev/null"]);
}

/// A copy of the demo task reading `docs` (JSON lines) as its test split, `metric` its metric.
fn task_with(dir: &Path, name: &str, docs: &str, metric: &str) -> PathBuf {
    let data = dir.join(format!("{name}.jsonl"));
    std::fs::write(&data, docs).unwrap();
    let yaml = std::fs::read_to_string(TASK)
        .unwrap()
        .replace("task: demo_mc", &format!("task: {name}"))
        .replace("test: demo_mc_test.jsonl", &format!("test: {}", data.display()))
        .replace(
            "validation: demo_mc_validation.jsonl",
            "validation: models/tiny-gemma2/demo_mc_validation.jsonl",
        )
        .replace("metric: acc_norm", &format!("metric: {metric}"));
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn nonsense_is_an_error_naming_what_to_fix_never_a_panic_or_a_score() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = demo_models(tmp.path());
    for limit in ["NaN", "-1", "inf", "0"] {
        assert_error(&eval(&base, &["--limit", limit]), &["is not a limit"]);
    }
    assert_error(&eval(&base, &["--max-length", "0"]), &["is not a context length"]);
    // The library refuses them too.
    for (limit, max_length) in [(Some(f64::NAN), None), (None, Some(0))] {
        let options = sae_onnx::eval::options::EvalOptions {
            tasks: vec![TASK.to_owned()],
            limit,
            max_length,
            ..Default::default()
        };
        let err = sae_onnx::eval::evaluator::evaluate(&base, &options)
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("is not a"), "{err}");
    }

    let mut model = sae_onnx::onnx::Model::load(&base).unwrap();
    model.set_metadata(sae_onnx::contract::meta::MAX_POSITIONS, "0");
    let zero = tmp.path().join("zero_context.onnx");
    model
        .save(&zero, &sae_onnx::onnx::SaveOptions::default())
        .unwrap();
    assert_error(
        &eval(&zero, &[]),
        &["zero_context.onnx", "max_position_embeddings", "--max-length"],
    );

    let ok = r#"{"question": "The dog sees the", "choices": ["cat", "tree"], "label": 0}"#;
    let cases = [
        (
            "no_choices",
            r#"{"question": "The dog sees the", "choices": [], "label": 0}"#,
            "acc_norm",
            vec!["task 'no_choices', document 1", "no choices"],
        ),
        (
            "label_range",
            r#"{"question": "The dog sees the", "choices": ["cat", "tree"], "label": 2}"#,
            "acc_norm",
            vec!["task 'label_range', document 1", "gold label 2 is out of range"],
        ),
        (
            "label_text",
            r#"{"question": "The dog sees the", "choices": ["cat", "tree"], "label": "cow"}"#,
            "acc_norm",
            vec![
                "task 'label_text', document 1",
                "\"cow\" is not one of the choices",
            ],
        ),
        ("bogus_metric", ok, "bogus", vec!["bogus", "acc, acc_norm"]),
    ];
    for (name, doc, metric, needles) in cases {
        let task = task_with(tmp.path(), name, &format!("{ok}\n{doc}\n"), metric);
        let o = sae_onnx(&["eval", s(&base), "--task", s(&task)]);
        assert_error(&o, &needles);
    }

    let empty = task_with(tmp.path(), "empty", "", "acc_norm");
    assert_error(
        &sae_onnx(&["eval", s(&base), "--task", s(&empty)]),
        &["task 'empty'", "no documents"],
    );
    // Data files: a device is refused before it is read; text that is not UTF-8 names its line.
    let yaml = std::fs::read_to_string(&empty)
        .unwrap()
        .replace(s(&tmp.path().join("empty.jsonl")), "/dev/zero");
    let device = tmp.path().join("device.yaml");
    std::fs::write(&device, yaml).unwrap();
    assert_error(
        &sae_onnx(&["eval", s(&base), "--task", s(&device)]),
        &["/dev/zero", "not a regular file"],
    );
    let latin1 = task_with(tmp.path(), "latin1", "", "acc_norm");
    std::fs::write(
        tmp.path().join("latin1.jsonl"),
        b"{\"question\": \"ok\", \"choices\": [\"a\"], \"label\": 0}\n{\"question\": \"caf\xe9\"}\n",
    )
    .unwrap();
    assert_error(
        &sae_onnx(&["eval", s(&base), "--task", s(&latin1)]),
        &["latin1.jsonl", "not UTF-8", "line 2"],
    );
}

#[test]
fn each_sweep_point_has_its_own_cache_and_a_swapped_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = demo_models(tmp.path());
    let sweepable = tmp.path().join("sweepable.onnx");
    patch_demo(&base, &sweepable, &["--sweepable"]);
    let cache = tmp.path().join("c.jsonl");
    let sweep = |values: &str| eval(&sweepable, &["--sweep", values, "--cache", s(&cache)]);
    assert_ok(&sweep("0,24"));
    let at = |v: &str| tmp.path().join(format!("c.steer.coeff.0={v}.jsonl"));
    std::fs::copy(at("24"), at("0")).unwrap();
    assert_error(
        &sweep("0"),
        &["c.steer.coeff.0=0.jsonl", "the inputs fed to the graph"],
    );
}

#[test]
fn a_group_of_one_document_subtasks_has_no_stderr_as_in_lm_eval() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, _) = demo_models(tmp.path());
    let out = tmp.path().join("r.json");
    assert_ok(&sae_onnx(&[
        "eval",
        s(&base),
        "--task",
        "tiny_mmlu_format",
        "--include-path",
        "tests/fixtures/lm_eval/tasks",
        "--limit",
        "1",
        "--output-path",
        s(&out),
    ]));
    // Pooling the subtasks' missing stderrs as 0 gave 0/0: null in the JSON.
    let group = &results(&out)["tiny_mmlu_format"];
    assert_eq!(group["acc_stderr,none"], "N/A", "{group}");
}
