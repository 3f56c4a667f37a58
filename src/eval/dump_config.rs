//! A task's config as lm-eval's results file reports it (`TaskConfig.to_dict` via
//! `Task.dump_config`): the config's fields in TaskConfig's order, defaults filled in, None left
//! out, and the model and config file recorded in `metadata`.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::task::Task;

/// lm-eval's task config as the results file shows it: TaskConfig fields in order, None skipped.
pub fn dump_config(task: &Task, model_path: &Path) -> Value {
    let c = &task.config;
    let mut out = Map::new();
    let get = |k: &str| c.get(k).filter(|v| !v.is_null()).cloned();
    for key in [
        "task",
        "task_alias",
        "dataset_path",
        "dataset_name",
        "dataset_kwargs",
        "training_split",
        "validation_split",
        "test_split",
        "fewshot_split",
        "doc_to_text",
        "doc_to_target",
    ] {
        if let Some(v) = get(key) {
            out.insert(key.into(), v);
        }
    }
    out.insert("unsafe_code".into(), get("unsafe_code").unwrap_or(json!(false)));
    if let Some(v) = get("doc_to_choice") {
        out.insert("doc_to_choice".into(), v);
    }
    out.insert("description".into(), get("description").unwrap_or(json!("")));
    out.insert("target_delimiter".into(), json!(task.target_delimiter()));
    out.insert("fewshot_delimiter".into(), json!(task.fewshot_delimiter()));
    let fewshot = c
        .get("fewshot_config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    out.insert(
        "fewshot_config".into(),
        json!({
            "sampler": fewshot.get("sampler").cloned().unwrap_or(json!("default")),
            "split": fewshot.get("split").cloned().or_else(|| get("fewshot_split")),
            "process_docs": Value::Null,
            "fewshot_indices": fewshot.get("fewshot_indices").cloned(),
            "samples": fewshot.get("samples").cloned(),
            "doc_to_text": fewshot.get("doc_to_text").cloned().or_else(|| get("doc_to_text")),
            "doc_to_choice": fewshot.get("doc_to_choice").cloned().or_else(|| get("doc_to_choice")),
            "doc_to_target": fewshot.get("doc_to_target").cloned().or_else(|| get("doc_to_target")),
            "gen_prefix": Value::Null,
            "fewshot_delimiter": json!(task.fewshot_delimiter()),
            "target_delimiter": json!(task.target_delimiter()),
        }),
    );
    out.insert("num_fewshot".into(), json!(task.num_fewshot));
    if let Some(v) = get("metric_list") {
        out.insert("metric_list".into(), v);
    }
    out.insert("output_type".into(), json!(task.output_type.name()));
    out.insert("repeats".into(), get("repeats").unwrap_or(json!(1)));
    out.insert(
        "should_decontaminate".into(),
        get("should_decontaminate").unwrap_or(json!(false)),
    );
    if let Some(query) = get("doc_to_decontamination_query") {
        out.insert("doc_to_decontamination_query".into(), query);
    }
    let mut metadata = c
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    metadata.insert("model".into(), json!(model_path.display().to_string()));
    metadata.insert("config_source".into(), json!(task.path.display().to_string()));
    out.insert("metadata".into(), Value::Object(metadata));
    Value::Object(out)
}
