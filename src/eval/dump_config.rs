//! A task's config as lm-eval's results file reports it (`TaskConfig.to_dict` via
//! `Task.dump_config`): the config's fields in TaskConfig's order, defaults filled in, None left
//! out, and the model and config file recorded in `metadata`.

use std::path::Path;

use serde_json::{Map, Value, json};

use super::task::Task;

/// lm-eval's task config as the results file shows it: TaskConfig fields in order, None skipped.
pub fn dump_config(task: &Task, model_path: &Path) -> Value {
    let c = &task.config;
    let rest = |k: &str| c.rest.get(k).filter(|v| !v.is_null()).cloned();
    let mut out = Map::new();
    let mut put = |key: &str, value: Option<Value>| {
        if let Some(v) = value.filter(|v| !v.is_null()) {
            out.insert(key.into(), v);
        }
    };
    put("task", c.task.clone());
    put("task_alias", c.task_alias.clone().map(Value::from));
    put("dataset_path", c.dataset_path.clone().map(Value::from));
    put("dataset_name", c.dataset_name.clone().map(Value::from));
    put("dataset_kwargs", c.dataset_kwargs.clone().map(Value::Object));
    put("training_split", c.training_split.clone().map(Value::from));
    put("validation_split", c.validation_split.clone().map(Value::from));
    put("test_split", c.test_split.clone().map(Value::from));
    put("fewshot_split", c.fewshot_split.clone().map(Value::from));
    put("doc_to_text", c.doc_to_text.clone());
    put("doc_to_target", c.doc_to_target.clone());
    put("unsafe_code", Some(rest("unsafe_code").unwrap_or(json!(false))));
    put("doc_to_choice", c.doc_to_choice.clone());
    put(
        "description",
        Some(
            c.description
                .clone()
                .filter(|v| !v.is_null())
                .unwrap_or(json!("")),
        ),
    );
    put("target_delimiter", Some(json!(task.target_delimiter())));
    put("fewshot_delimiter", Some(json!(task.fewshot_delimiter())));
    put("fewshot_config", Some(fewshot_config(task)));
    put("num_fewshot", Some(json!(task.num_fewshot)));
    put("metric_list", c.metric_list.clone().map(Value::from));
    put("output_type", Some(json!(task.output_type.name())));
    put("repeats", Some(rest("repeats").unwrap_or(json!(1))));
    put(
        "should_decontaminate",
        Some(rest("should_decontaminate").unwrap_or(json!(false))),
    );
    put(
        "doc_to_decontamination_query",
        rest("doc_to_decontamination_query"),
    );
    let mut metadata = c.metadata.clone().unwrap_or_default();
    metadata.insert("model".into(), json!(model_path.display().to_string()));
    metadata.insert("config_source".into(), json!(task.path.display().to_string()));
    put("metadata", Some(Value::Object(metadata)));
    Value::Object(out)
}

/// `fewshot_config` as lm-eval's FewshotConfig reports it: its own fields, else the task's.
fn fewshot_config(task: &Task) -> Value {
    let c = &task.config;
    let fewshot = c.fewshot_config.clone().unwrap_or_default();
    let own = |k: &str| fewshot.rest.get(k).cloned();
    json!({
        "sampler": fewshot.sampler.as_deref().unwrap_or("default"),
        "split": fewshot.split.as_deref().or(c.fewshot_split.as_deref()),
        "process_docs": Value::Null,
        "fewshot_indices": own("fewshot_indices"),
        "samples": own("samples"),
        "doc_to_text": own("doc_to_text").or_else(|| c.doc_to_text.clone()),
        "doc_to_choice": own("doc_to_choice").or_else(|| c.doc_to_choice.clone()),
        "doc_to_target": own("doc_to_target").or_else(|| c.doc_to_target.clone()),
        "gen_prefix": Value::Null,
        "fewshot_delimiter": task.fewshot_delimiter(),
        "target_delimiter": task.target_delimiter(),
    })
}
