//! The bundled task YAMLs (`tasks/`) against lm-evaluation-harness 0.4.13 itself.
//!
//! `tests/fixtures/tasks_golden.json` was made by `tasks/verify_with_lm_eval.py`: made-up
//! documents with the real columns and types of each task's Hugging Face dataset (as the parquet
//! files pyarrow writes, and as JSON), and the requests lm-eval builds for them from its *own*
//! task files (contexts with description and few-shot examples, continuations, targets), per
//! task and few-shot setting, plus how lm-eval expands the groups and tags. Here the parquet files
//! are laid out as a Hugging Face cache, every task is loaded from `tasks/` through
//! `Task::load` (the hub loader, offline), and sae-onnx must build the same requests.

use crate::common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sae_onnx::eval::task::{Target, Task};
use sae_onnx::eval::task_index::{Entry, TaskIndex, load_yaml_config};
use serde_json::{Value, json};

fn tasks_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks")
}

fn golden() -> &'static Value {
    static GOLDEN: OnceLock<Value> = OnceLock::new();
    GOLDEN.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tasks_golden.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        serde_json::from_str(&text).unwrap()
    })
}

fn index() -> TaskIndex {
    TaskIndex::scan(&[tasks_dir()]).expect("tasks/ scans")
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.trim_end_matches('=').as_bytes().chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c) << (18 - 6 * i);
        }
        let bytes = acc.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

/// Lays the golden datasets out in this process's Hugging Face cache (`datasets--org--name/refs/<revision>`,
/// `snapshots/<commit>/<file>`; `common::fake_hub_cache`, offline) once per process. Every test
/// of this file goes through here first, and no test here reads the environment otherwise.
fn fake_hub() -> &'static Path {
    static HUB: OnceLock<&'static Path> = OnceLock::new();
    HUB.get_or_init(|| {
        let root = common::fake_hub_cache();
        for dataset in golden()["datasets"].as_array().unwrap() {
            let repo = dataset["path"].as_str().unwrap();
            let repo_dir = root.join(format!("datasets--{}", repo.replace('/', "--")));
            for split in dataset["splits"].as_object().unwrap().values() {
                let revision = split["file"]["revision"].as_str().unwrap();
                let commit = if revision == "main" {
                    "1111111111111111111111111111111111111111"
                } else {
                    "2222222222222222222222222222222222222222"
                };
                let reference = repo_dir.join("refs").join(revision);
                std::fs::create_dir_all(reference.parent().unwrap()).unwrap();
                std::fs::write(&reference, commit).unwrap();
                let file = repo_dir
                    .join("snapshots")
                    .join(commit)
                    .join(split["file"]["path"].as_str().unwrap());
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(&file, decode_base64(split["parquet_base64"].as_str().unwrap())).unwrap();
            }
        }
        root
    })
}

fn target_json(target: &Target) -> Value {
    match target {
        Target::Index(i) => json!(i),
        Target::Text(t) => json!(t),
        Target::List(l) => Value::Array(l.clone()),
    }
}

fn load_task(index: &TaskIndex, name: &str, num_fewshot: Option<usize>, seed: u64) -> Task {
    fake_hub();
    let Some(Entry::Task { path, config }) = index.entries.get(name) else {
        panic!("'{name}' is not a task in tasks/");
    };
    Task::load(name, path, config.clone(), num_fewshot, seed).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// The golden documents of the split `task` evaluates.
fn golden_eval_docs(task: &Task) -> &'static Vec<Value> {
    let path = task.config.dataset_path.as_deref().unwrap();
    let name = task.config.dataset_name.clone().map_or(Value::Null, Value::from);
    let split = task.config.eval_split().unwrap();
    let dataset = golden()["datasets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["path"] == path && d["name"] == name)
        .unwrap_or_else(|| panic!("{}: no golden dataset {path} {name}", task.name));
    dataset["splits"][split]["docs"].as_array().unwrap()
}

/// Compares one golden run (one task, one few-shot setting) with what sae-onnx builds; returns
/// the differences.
fn compare_run(index: &TaskIndex, run: &Value) -> Vec<String> {
    let name = run["task"].as_str().unwrap();
    let requested = run["num_fewshot"].as_u64().map(|n| n as usize);
    let seed = run["seed"].as_u64().unwrap();
    let what = format!("{name} (num_fewshot {requested:?}, seed {seed})");
    let mut task = load_task(index, name, requested, seed);
    let mut problems = Vec::new();
    if json!(task.num_fewshot) != run["num_fewshot_effective"] {
        problems.push(format!(
            "{what}: {}-shot, lm-eval runs it {}-shot",
            task.num_fewshot, run["num_fewshot_effective"]
        ));
        return problems;
    }
    let expected_docs = golden_eval_docs(&task);
    if task.eval_docs != *expected_docs {
        problems.push(format!(
            "{what}: the documents read from parquet differ from the golden JSON"
        ));
        return problems;
    }
    let docs = task.eval_docs.clone();
    let golden_docs = run["docs"].as_array().unwrap();
    if docs.len() != golden_docs.len() {
        problems.push(format!(
            "{what}: {} documents, lm-eval has {}",
            docs.len(),
            golden_docs.len()
        ));
        return problems;
    }
    let delimiter = task.target_delimiter();
    for (doc_id, (doc, expected)) in docs.iter().zip(golden_docs).enumerate() {
        assert_eq!(expected["doc_id"], json!(doc_id));
        // In document order, as lm-eval draws its few-shot examples.
        let context = task.fewshot_context(doc).unwrap();
        let choices = task.doc_to_choice(doc).unwrap();
        let target = target_json(&task.doc_to_target(doc).unwrap());
        let continuations: Vec<String> = choices.iter().map(|c| format!("{delimiter}{c}")).collect();
        let checks = [
            ("context", json!(context)),
            ("choices", json!(choices)),
            ("continuations", json!(continuations)),
            ("target", target),
        ];
        for (key, actual) in checks {
            if actual != expected[key] {
                problems.push(format!(
                    "{what}, document {doc_id}: {key}\n  sae-onnx: {actual}\n  lm-eval:  {}",
                    expected[key]
                ));
            }
        }
    }
    problems
}

/// Every run whose few-shot count lm-eval takes from the request (all but the ones where a YAML
/// `num_fewshot: 0` wins, see `yaml_num_fewshot_zero_is_kept_like_lm_eval`).
#[test]
fn every_task_builds_lm_evals_requests() {
    let index = index();
    let mut problems = Vec::new();
    let mut runs = 0;
    for run in golden()["runs"].as_array().unwrap() {
        let run = with_effective(run);
        if !run["requested_num_fewshot"].is_null()
            && run["requested_num_fewshot"] != run["num_fewshot_effective"]
        {
            continue;
        }
        problems.extend(compare_run(&index, &run));
        runs += 1;
    }
    assert!(runs > 100, "only {runs} runs");
    assert!(
        problems.is_empty(),
        "{} difference(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// lm-eval's `simple_evaluate` never overrides a task whose YAML sets `num_fewshot: 0` (wmdp):
/// `--num_fewshot 2 --tasks wmdp_bio` still runs it 0-shot.
#[test]
fn yaml_num_fewshot_zero_is_kept_like_lm_eval() {
    let index = index();
    let mut problems = Vec::new();
    let mut runs = 0;
    for run in golden()["runs"].as_array().unwrap() {
        let run = with_effective(run);
        if !run["requested_num_fewshot"].is_null()
            && run["requested_num_fewshot"] != run["num_fewshot_effective"]
        {
            problems.extend(compare_run(&index, &run));
            runs += 1;
        }
    }
    assert!(runs > 0);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The golden run with the requested count under `num_fewshot` (what `Task::load` is given,
/// as `sae-onnx eval --num-fewshot` gives it) and lm-eval's effective count beside it.
fn with_effective(run: &Value) -> Value {
    let mut run = run.clone();
    run["num_fewshot_effective"] = run["num_fewshot"].clone();
    run["num_fewshot"] = run["requested_num_fewshot"].clone();
    run
}

/// Tasks copied unchanged from lm-eval (tasks/README.md) whose prompts tasks_golden.json does not
/// cover: they are checked by tests/eval_rolling_gen.rs (and winogrande by tests/eval_winogrande.rs)
/// on local data of the same form.
const GENERATIVE_AND_ROLLING: [&str; 5] = ["gsm8k", "local_text", "triviaqa", "wikitext", "winogrande"];

#[test]
fn tasks_report_lm_evals_versions_and_metrics() {
    let index = index();
    let expected = golden()["tasks"].as_object().unwrap();
    let ours: Vec<&String> = index
        .entries
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Task { .. }))
        .map(|(n, _)| n)
        .filter(|n| !GENERATIVE_AND_ROLLING.contains(&n.as_str()))
        .collect();
    assert_eq!(ours, expected.keys().collect::<Vec<_>>(), "the tasks of tasks/");
    for (name, info) in expected {
        let task = load_task(&index, name, None, 1234);
        let metrics: Vec<&str> = task.metrics.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(json!(metrics), info["metrics"], "{name} metrics");
        assert_eq!(task.output_type.name(), info["output_type"], "{name} output_type");
        assert_eq!(task.version(), info["version"], "{name} version");
        assert_eq!(json!(task.config.dataset_path), info["dataset_path"], "{name}");
        assert_eq!(json!(task.config.dataset_name), info["dataset_name"], "{name}");
        assert!(!task.eval_docs.is_empty(), "{name}");
    }
}

/// A group's children as sae-onnx's evaluator resolves them: a name that is no task or group
/// but a tag stands for the tag's tasks.
fn children(index: &TaskIndex, group: &str) -> Vec<String> {
    let Some(Entry::Group { config, .. }) = index.entries.get(group) else {
        panic!("'{group}' is not a group in tasks/");
    };
    let mut out = Vec::new();
    for child in config["task"].as_array().unwrap() {
        let child = child.as_str().unwrap();
        match (index.entries.get(child), index.tags.get(child)) {
            (None, Some(tasks)) => out.extend(tasks.iter().cloned()),
            (Some(_), _) => out.push(child.to_owned()),
            (None, None) => panic!("group '{group}' names '{child}', which tasks/ lacks"),
        }
    }
    out
}

fn leaves(index: &TaskIndex, name: &str, out: &mut Vec<String>) {
    match index.entries.get(name) {
        Some(Entry::Task { .. }) => out.push(name.to_owned()),
        Some(Entry::Group { .. }) => {
            for child in children(index, name) {
                leaves(index, &child, out);
            }
        }
        None => panic!("unknown '{name}'"),
    }
}

#[test]
fn groups_and_tags_expand_like_lm_eval() {
    let index = index();
    let golden = golden();
    for (name, expected) in golden["groups"].as_object().unwrap() {
        assert_eq!(
            json!(children(&index, name)),
            expected["children"],
            "children of group {name}"
        );
        let mut tasks = Vec::new();
        leaves(&index, name, &mut tasks);
        assert_eq!(json!(tasks), expected["tasks"], "tasks of group {name}, in order");
        let Some(Entry::Group { config, .. }) = index.entries.get(name) else {
            unreachable!()
        };
        let aggregate: Vec<Value> = config["aggregate_metric_list"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                json!({"metric": m["metric"], "weight_by_size": m.get("weight_by_size").cloned().unwrap_or(json!(true))})
            })
            .collect();
        assert_eq!(
            json!(aggregate),
            expected["aggregate_metric_list"],
            "group {name}"
        );
        assert_eq!(
            config.get("group_alias").cloned().unwrap_or(Value::Null),
            expected["alias"],
            "alias of group {name}"
        );
        assert_eq!(
            config["metadata"]["version"], expected["version"],
            "version of group {name}"
        );
    }
    for (tag, expected) in golden["tags"].as_object().unwrap() {
        assert_eq!(json!(index.tags[tag]), *expected, "tasks of tag {tag}, in order");
    }
    // Nothing more and nothing less than lm-eval finds in tasks/.
    let groups: Vec<&String> = index
        .entries
        .iter()
        .filter(|(_, e)| matches!(e, Entry::Group { .. }))
        .map(|(n, _)| n)
        .collect();
    assert_eq!(json!(groups), golden["all_groups"]);
    let tags: serde_json::Map<String, Value> = index
        .tags
        .iter()
        .filter(|(tag, _)| tag.as_str() != "math_word_problems")
        .map(|(tag, tasks)| {
            let mut sorted = tasks.clone();
            sorted.sort();
            (tag.clone(), json!(sorted))
        })
        .collect();
    assert_eq!(Value::Object(tags), golden["all_tags"]);
}

/// No task YAML here calls Python, and every include resolves.
#[test]
fn task_files_need_no_python() {
    let mut files = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml")
                || path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with("_yaml"))
            {
                out.push(path);
            }
        }
    }
    walk(&tasks_dir(), &mut files);
    assert!(files.len() > 70, "{} files", files.len());
    fn calls_python(value: &Value) -> bool {
        match value {
            // The wikitext helpers are ported (src/eval/builtins.rs); any other function is Python.
            Value::Object(map) => {
                map.get("!function")
                    .is_some_and(|f| !f.as_str().is_some_and(sae_onnx::eval::builtins::is_known))
                    || map.values().any(calls_python)
            }
            Value::Array(list) => list.iter().any(calls_python),
            _ => false,
        }
    }
    for file in files {
        let config = load_yaml_config(&file).unwrap_or_else(|e| panic!("{}: {e:#}", file.display()));
        assert!(
            !calls_python(&Value::Object(config)),
            "{} calls Python",
            file.display()
        );
    }
}

#[test]
fn list_tasks_shows_the_bundled_tasks() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(["eval", "--list-tasks"])
        .env("SAE_ONNX_TASKS", tasks_dir())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let listing = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = listing.lines().collect();
    let golden = golden();
    for task in golden["tasks"].as_object().unwrap().keys() {
        assert!(
            lines.contains(&format!("task   {task}").as_str()),
            "{task} missing from:\n{listing}"
        );
    }
    for group in golden["all_groups"].as_array().unwrap() {
        let group = group.as_str().unwrap();
        assert!(
            lines.contains(&format!("group  {group}").as_str()),
            "{group} missing"
        );
    }
    for (tag, tasks) in golden["all_tags"].as_object().unwrap() {
        let n = tasks.as_array().unwrap().len();
        assert!(
            lines.contains(&format!("tag    {tag} ({n} tasks)").as_str()),
            "{tag} missing"
        );
    }
}

/// `sae-onnx eval --task mmlu,wmdp,ai2_arc,...` end to end on the tiny Gemma 2 checkpoint:
/// the groups resolve as lm-eval's, every task is scored, and each logged prompt is lm-eval's.
#[test]
fn eval_runs_the_bundled_groups_end_to_end() {
    use sae_onnx::eval::evaluator;
    use sae_onnx::eval::options::EvalOptions;
    use sae_onnx::export::{self, ExportOptions};

    fake_hub();
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gemma2.onnx");
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gemma/gemma2");
    export::export(source.to_str().unwrap(), &model, &ExportOptions::default()).unwrap();
    let names = [
        "mmlu",
        "wmdp",
        "ai2_arc",
        "boolq",
        "openbookqa",
        "sciq",
        "piqa",
        "hellaswag",
    ];
    let options = EvalOptions {
        tasks: names.iter().map(|s| s.to_string()).collect(),
        limit: Some(2.0),
        log_samples: true,
        output_path: Some(tmp.path().join("out")),
        ..Default::default()
    };
    let outcome = evaluator::evaluate(&model, &options).unwrap();
    let results = &outcome.results.to_json();
    let golden = golden();

    for (group, expected) in golden["groups"].as_object().unwrap() {
        assert_eq!(
            results["group_subtasks"][group], expected["children"],
            "group_subtasks of {group}"
        );
        let acc = &results["results"][group]["acc,none"];
        assert!(
            acc.as_f64().is_some_and(|a| (0.0..=1.0).contains(&a)),
            "{group}: acc {acc}"
        );
    }
    assert_eq!(results["group_subtasks"]["ai2_arc"], golden["tags"]["ai2_arc"]);
    let tasks = golden["tasks"].as_object().unwrap();
    for (name, info) in tasks {
        let entry = &results["results"][name];
        for metric in info["metrics"].as_array().unwrap() {
            let key = format!("{},none", metric.as_str().unwrap());
            assert!(entry[&key].is_number(), "{name}: no {key} in {entry}");
        }
        assert_eq!(results["versions"][name], info["version"], "{name}");
    }

    // The logged prompts are lm-eval's 0-shot prompts for the same documents.
    let out_dir = tmp.path().join("out");
    let mut samples = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("samples_")
            {
                out.push(path);
            }
        }
    }
    walk(&out_dir, &mut samples);
    assert_eq!(samples.len(), tasks.len(), "one samples file per task");
    let mut checked = 0;
    for run in golden["runs"].as_array().unwrap() {
        if !run["requested_num_fewshot"].is_null() || run["seed"] != json!(1234) {
            continue;
        }
        let name = run["task"].as_str().unwrap();
        let file = samples
            .iter()
            .find(|p| {
                let f = p.file_name().unwrap().to_string_lossy().into_owned();
                // samples_<task>_<date>.jsonl, the date starting with the year
                f.strip_prefix(&format!("samples_{name}_"))
                    .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            })
            .unwrap_or_else(|| panic!("no samples file for {name}"));
        let text = std::fs::read_to_string(file).unwrap();
        for (line, expected) in text.lines().zip(run["docs"].as_array().unwrap()) {
            let sample: Value = serde_json::from_str(line).unwrap();
            let args = sample["arguments"].as_object().unwrap();
            let pairs: Vec<Value> = args.values().map(|a| json!([a["arg_0"], a["arg_1"]])).collect();
            let want: Vec<Value> = expected["continuations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| json!([expected["context"], c]))
                .collect();
            assert_eq!(pairs, want, "{name} document {}", sample["doc_id"]);
            checked += 1;
        }
    }
    assert!(checked >= 2 * tasks.len(), "only {checked} samples checked");
}
