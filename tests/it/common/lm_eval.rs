//! Comparing an `eval` run with the real lm-eval's output (results JSON and `--log_samples`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Top-level keys of lm-eval's results that describe the Python install, with no counterpart here.
pub const ENVIRONMENT_ONLY: [&str; 4] = ["git_hash", "date", "pretty_env_info", "upper_git_hash"];

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

/// Our results against lm-eval's: every `metric,filter` value identical, the same keys per task,
/// lm-eval's top-level keys present, the same versions, n-shot, higher_is_better, n-samples and
/// group_subtasks, and the same config keys per task.
pub fn assert_results_match(ours: &Map<String, Value>, golden: &Value, run: &str) {
    for (name, expected) in golden["results"].as_object().unwrap() {
        let actual = &ours["results"][name];
        for (key, value) in expected.as_object().unwrap() {
            if key.contains(",none") {
                let (a, e) = (actual[key].as_f64(), value.as_f64());
                assert!(
                    matches!((a, e), (Some(a), Some(e)) if a == e) || actual[key] == *value,
                    "{run} {name} {key}: {} vs lm-eval {value}",
                    actual[key]
                );
            }
        }
        assert_eq!(keys(actual), keys(expected), "{run} {name}: result keys");
    }
    let missing: Vec<String> = keys(golden)
        .into_iter()
        .filter(|k| !ours.contains_key(k) && !ENVIRONMENT_ONLY.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{run}: results JSON lacks lm-eval keys {missing:?}"
    );
    for section in [
        "versions",
        "n-shot",
        "higher_is_better",
        "n-samples",
        "group_subtasks",
    ] {
        assert_eq!(ours[section], golden[section], "{run}: {section}");
    }
    for (name, config) in golden["configs"].as_object().unwrap() {
        assert_eq!(
            keys(&ours["configs"][name]),
            keys(config),
            "{run}: config keys of {name}"
        );
    }
}

/// The `samples_<task>_<date>.jsonl` our run wrote for `task` under `dir` (any depth).
pub fn samples_file(dir: &Path, task: &str) -> PathBuf {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(dir, &mut files);
    let prefix = format!("samples_{task}_");
    files
        .iter()
        .find(|p| {
            // samples_<task>_<date>.jsonl, the date starting with the year
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .strip_prefix(&prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .unwrap_or_else(|| panic!("no samples file for {task} in {files:?}"))
        .clone()
}

/// What a sample line of ours must share with lm-eval's exactly: the document, its target, the
/// request arguments, the three hashes, the filter and the metric names.
pub const SAMPLE_FIELDS: [&str; 9] = [
    "doc_id",
    "doc",
    "target",
    "arguments",
    "doc_hash",
    "prompt_hash",
    "target_hash",
    "filter",
    "metrics",
];

/// Our samples against lm-eval's, line by line: the same documents, targets, request arguments,
/// hashes, filter, metrics and metric values; every loglikelihood within `tolerance`, the same
/// is_greedy.
pub fn assert_samples_match(ours: &[Value], golden: &[Value], tolerance: f64, what: &str) {
    assert_eq!(ours.len(), golden.len(), "{what}: sample count");
    for (o, g) in ours.iter().zip(golden) {
        let what = format!("{what} doc {}", g["doc_id"]);
        super::assert_fields_equal(o, g, &SAMPLE_FIELDS, &what);
        for metric in g["metrics"].as_array().unwrap() {
            let metric = metric.as_str().unwrap();
            assert_eq!(o[metric].as_f64(), g[metric].as_f64(), "{what}: {metric}");
        }
        let (or, gr) = (
            o["filtered_resps"].as_array().unwrap(),
            g["filtered_resps"].as_array().unwrap(),
        );
        assert_eq!(or.len(), gr.len(), "{what}: number of answers");
        for (a, e) in or.iter().zip(gr) {
            let parse = |v: &Value| v[0].as_str().unwrap().parse::<f64>().unwrap();
            assert!(
                (parse(a) - parse(e)).abs() <= tolerance,
                "{what}: {a} vs lm-eval {e}"
            );
            assert_eq!(a[1], e[1], "{what}: is_greedy");
        }
    }
}
