//! A task's YAML, its `include`s merged, as lm-eval's `TaskConfig`: the fields sae-onnx reads,
//! typed, and every other key kept as written (`rest`). Fields whose value is a template, a
//! column, a list or a `!function` stay JSON values; nested blocks that the results file reports
//! verbatim (`dataset_kwargs`, `metric_list`, ...) keep their key order.

use anyhow::{Context, Result};
use serde::Deserialize;
use serde_json::{Map, Value};

/// The config of one task.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct TaskConfig {
    pub task: Option<Value>,
    pub task_alias: Option<String>,
    pub dataset_path: Option<String>,
    pub dataset_name: Option<String>,
    pub dataset_kwargs: Option<Map<String, Value>>,
    pub training_split: Option<String>,
    pub validation_split: Option<String>,
    pub test_split: Option<String>,
    pub fewshot_split: Option<String>,
    pub doc_to_text: Option<Value>,
    pub doc_to_target: Option<Value>,
    pub doc_to_choice: Option<Value>,
    pub process_results: Option<Value>,
    pub description: Option<Value>,
    pub target_delimiter: Option<Value>,
    pub fewshot_delimiter: Option<Value>,
    pub fewshot_config: Option<FewshotConfig>,
    pub num_fewshot: Option<Value>,
    pub metric_list: Option<Vec<Value>>,
    pub output_type: Option<String>,
    pub generation_kwargs: Option<Map<String, Value>>,
    pub filter_list: Option<Vec<Value>>,
    pub metadata: Option<Map<String, Value>>,
    /// Every other key, as written.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `fewshot_config`: where few-shot examples come from and how they are drawn.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct FewshotConfig {
    pub split: Option<String>,
    pub sampler: Option<String>,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// One entry of `metric_list`, as read (the list itself is reported as written).
#[derive(Debug, Deserialize)]
pub struct MetricEntry {
    pub metric: Option<Value>,
    pub aggregation: Option<Value>,
    pub higher_is_better: Option<Value>,
    /// The metric's options (exact_match's `ignore_case`, `regexes_to_ignore`, ...).
    #[serde(flatten)]
    pub options: Map<String, Value>,
}

impl TaskConfig {
    /// Reads the merged YAML of a task.
    pub fn from_yaml(config: Map<String, Value>) -> Result<Self> {
        Self::deserialize(Value::Object(config)).context("the task's fields do not have lm-eval's types")
    }

    /// `doc_to_choice` is set (and not null).
    pub fn has_choices(&self) -> bool {
        self.doc_to_choice.as_ref().is_some_and(|v| !v.is_null())
    }

    /// The split evaluated: `test_split`, else `validation_split`.
    pub fn eval_split(&self) -> Option<&str> {
        self.test_split.as_deref().or(self.validation_split.as_deref())
    }

    /// The split lm-eval configured for few-shot examples (`fewshot_config.split`, else
    /// `fewshot_split`).
    pub fn configured_fewshot_split(&self) -> Option<&str> {
        self.fewshot_config
            .as_ref()
            .and_then(|f| f.split.as_deref())
            .or(self.fewshot_split.as_deref())
    }

    /// Where few-shot examples come from: the configured split, else the training split, else
    /// the validation split, else the evaluated one.
    pub fn fewshot_source(&self) -> Option<&str> {
        self.configured_fewshot_split()
            .or(self.training_split.as_deref())
            .or(self.validation_split.as_deref())
    }

    /// `num_fewshot` where it is a count (lm-eval reads other values as unset).
    pub fn num_fewshot(&self) -> Option<usize> {
        self.num_fewshot
            .as_ref()
            .and_then(Value::as_u64)
            .map(|n| n as usize)
    }

    /// A text field (a delimiter), or `default` where it is unset or not text.
    pub fn text_or<'a>(field: &'a Option<Value>, default: &'a str) -> &'a str {
        field.as_ref().and_then(Value::as_str).unwrap_or(default)
    }

    /// The `process_results` builtin the task names, if any.
    pub fn process_results_builtin(&self) -> Option<&str> {
        self.process_results.as_ref()?.get("!function")?.as_str()
    }

    /// `metadata.version`, or null.
    pub fn version(&self) -> Value {
        self.metadata
            .as_ref()
            .and_then(|m| m.get("version"))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// The entries of `metric_list`, if it is set.
    pub fn metric_entries(&self) -> Option<Result<Vec<MetricEntry>>> {
        self.metric_list.as_ref().map(|list| {
            list.iter()
                .map(|m| MetricEntry::deserialize(m).context("a metric_list entry is not a mapping"))
                .collect()
        })
    }
}
