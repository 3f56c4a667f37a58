//! The lines of `samples_<task>_<date>.jsonl` (`--log-samples`): per document its arguments,
//! responses, metrics and lm-eval's three hashes.

use serde_json::{Map, Value, json};

use super::metrics::MetricItem;
use super::output::{doc_json_indented, py_str};
use super::requests::Document;
use super::task::Target;
use crate::digest::hash_string;
use crate::infer::lm::Loglikelihood;
use crate::pycompat::repr::repr_float;

/// A loglikelihood document's line: one response per request (with is_greedy, except for a
/// rolling request) and its metric values.
pub fn scored(
    doc: &Document,
    answers: &[Loglikelihood],
    doc_metrics: &[(String, MetricItem)],
    rolling: bool,
) -> Value {
    let target = target_value(&doc.target);
    let mut arguments = Map::new();
    for (i, r) in doc.requests.iter().enumerate() {
        let args: Map<String, Value> = r
            .args
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("arg_{j}"), json!(a)))
            .collect();
        arguments.insert(format!("gen_args_{i}"), Value::Object(args));
    }
    // A rolling request's answer is its loglikelihood alone; others pair it with is_greedy.
    let resp = |a: &Loglikelihood| {
        if rolling {
            json!(repr_float(a.logprob))
        } else {
            json!([repr_float(a.logprob), if a.is_greedy { "True" } else { "False" }])
        }
    };
    let mut line = Map::new();
    line.insert("doc_id".into(), json!(doc.doc_id));
    line.insert("doc".into(), doc.doc.clone());
    line.insert("target".into(), json!(py_str(&target)));
    line.insert("arguments".into(), Value::Object(arguments));
    line.insert(
        "resps".into(),
        Value::Array(answers.iter().map(|a| json!([resp(a)])).collect()),
    );
    line.insert(
        "filtered_resps".into(),
        Value::Array(answers.iter().map(resp).collect()),
    );
    line.insert("filter".into(), json!("none"));
    line.insert(
        "metrics".into(),
        json!(doc_metrics.iter().map(|(m, _)| m).collect::<Vec<_>>()),
    );
    insert_hashes(&mut line, doc, &target);
    for (m, v) in doc_metrics {
        line.insert(m.clone(), v.json());
    }
    Value::Object(line)
}

/// A generate_until document's line under one filter: the generation, what the filter kept, and
/// its exact_match.
pub fn generated(doc: &Document, response: &str, filter: &str, filtered: &str, score: f64) -> Value {
    let target = target_value(&doc.target);
    let request = &doc.requests[0];
    let mut line = Map::new();
    line.insert("doc_id".into(), json!(doc.doc_id));
    line.insert("doc".into(), doc.doc.clone());
    line.insert("target".into(), json!(py_str(&target)));
    line.insert(
        "arguments".into(),
        json!({"gen_args_0": {"arg_0": request.args[0], "arg_1": request.args[1]}}),
    );
    line.insert("resps".into(), json!([[response]]));
    line.insert("filtered_resps".into(), json!([filtered]));
    line.insert("filter".into(), json!(filter));
    line.insert("metrics".into(), json!(["exact_match"]));
    insert_hashes(&mut line, doc, &target);
    line.insert("exact_match".into(), json!(score));
    Value::Object(line)
}

/// The task's `task_hashes` entry: the hash of its lines' three hashes, concatenated.
pub fn task_hash(lines: &[Value]) -> String {
    let joined: String = lines
        .iter()
        .map(|s| {
            format!(
                "{}{}{}",
                s["doc_hash"].as_str().unwrap_or(""),
                s["prompt_hash"].as_str().unwrap_or(""),
                s["target_hash"].as_str().unwrap_or("")
            )
        })
        .collect();
    hash_string(&joined)
}

fn target_value(target: &Target) -> Value {
    match target {
        Target::Index(i) => json!(i),
        Target::Text(t) => json!(t),
        Target::List(l) => Value::Array(l.clone()),
    }
}

/// lm-eval's three sample hashes: of the document (as its indented JSON), of the first request's
/// context, and of the target as Python's `str` prints it.
fn insert_hashes(line: &mut Map<String, Value>, doc: &Document, target: &Value) {
    line.insert(
        "doc_hash".into(),
        json!(hash_string(&doc_json_indented(&doc.doc))),
    );
    line.insert(
        "prompt_hash".into(),
        json!(hash_string(doc.requests[0].context())),
    );
    line.insert("target_hash".into(), json!(hash_string(&py_str(target))));
}
