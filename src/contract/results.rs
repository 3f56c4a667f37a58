//! The results file lm-eval writes (`results_<date>.json`), as types: `eval` builds one, its
//! tables render it, `compare` reads ours and lm-eval's own. The field order is
//! lm-eval's, so the file reads as theirs does; what only the writer fills (the run's settings,
//! tokenizer, versions) is [`RunInfo`], kept in [`ResultsFile::run`] as the JSON it became, so a
//! file from another lm-eval version still loads.

use indexmap::IndexMap;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// A whole `results_<date>.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResultsFile {
    /// Every task's and group's scores: tasks first, each group after its subtasks.
    pub results: IndexMap<String, Scores>,
    /// The groups' scores again (the groups with an `aggregate_metric_list`).
    #[serde(default, skip_serializing_if = "IndexMap::is_empty")]
    pub groups: IndexMap<String, Scores>,
    #[serde(default)]
    pub group_subtasks: IndexMap<String, Vec<String>>,
    /// Every task's config as lm-eval reports it (see [`ReportedConfig`]).
    #[serde(default)]
    pub configs: IndexMap<String, Value>,
    #[serde(default)]
    pub versions: IndexMap<String, Value>,
    #[serde(rename = "n-shot", default)]
    pub n_shot: IndexMap<String, Value>,
    #[serde(default)]
    pub higher_is_better: IndexMap<String, IndexMap<String, bool>>,
    #[serde(rename = "n-samples", default)]
    pub n_samples: IndexMap<String, SampleCounts>,
    /// Everything after: the run's settings and what produced it ([`RunInfo`] when we wrote it).
    #[serde(flatten)]
    pub run: Map<String, Value>,
}

/// One task's or group's entry of `results`: its metrics under `metric,filter` keys, with
/// `metric_stderr,filter` beside each (a number, or `"N/A"`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Scores {
    pub alias: Option<String>,
    pub name: Option<String>,
    pub sample_len: Option<usize>,
    /// A group's documents per metric (tasks have none).
    pub sample_count: Option<IndexMap<String, usize>>,
    #[serde(flatten)]
    pub metrics: IndexMap<String, Value>,
}

/// `n-samples`: the task's documents, and how many `--limit` kept.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct SampleCounts {
    pub original: usize,
    pub effective: usize,
}

/// A standard error as lm-eval writes it: a number, or `"N/A"` where none was computed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stderr {
    Value(f64),
    NotAvailable,
}

impl Stderr {
    pub fn from_option(stderr: Option<f64>) -> Self {
        stderr.map_or(Self::NotAvailable, Self::Value)
    }

    fn json(self) -> Value {
        match self {
            Self::Value(v) => Value::from(v),
            Self::NotAvailable => Value::from("N/A"),
        }
    }
}

/// One metric of an entry: its name, filter and value.
pub struct MetricValue<'a> {
    pub metric: &'a str,
    pub filter: &'a str,
    pub value: &'a Value,
}

impl Scores {
    /// Records `metric` under `filter` with its standard error.
    pub fn insert(&mut self, metric: &str, filter: &str, mean: f64, stderr: Stderr) {
        self.metrics
            .insert(format!("{metric},{filter}"), Value::from(mean));
        self.metrics
            .insert(format!("{metric}_stderr,{filter}"), stderr.json());
    }

    /// The metrics (not their standard errors), in the entry's order.
    pub fn values(&self) -> impl Iterator<Item = MetricValue<'_>> {
        self.metrics.iter().filter_map(|(key, value)| {
            let (metric, filter) = key.split_once(',')?;
            (!metric.ends_with("_stderr")).then_some(MetricValue {
                metric,
                filter,
                value,
            })
        })
    }

    /// `metric_stderr,filter`, where the entry has one.
    pub fn stderr(&self, metric: &str, filter: &str) -> Option<&Value> {
        self.metrics.get(&format!("{metric}_stderr,{filter}"))
    }

    /// The entry's metric as a number, where it is one.
    pub fn value(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(Value::as_f64)
    }

    fn is_group(&self) -> bool {
        self.sample_count.is_some()
    }
}

/// lm-eval writes a task's entry `name, alias, sample_len, metrics…` and a group's
/// `alias, name, sample_len, metrics…, sample_count`.
impl Serialize for Scores {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if self.is_group() {
            map.serialize_entry("alias", &self.alias)?;
            map.serialize_entry("name", &self.name)?;
        } else {
            map.serialize_entry("name", &self.name)?;
            map.serialize_entry("alias", &self.alias)?;
        }
        if let Some(n) = self.sample_len {
            map.serialize_entry("sample_len", &n)?;
        }
        for (key, value) in &self.metrics {
            map.serialize_entry(key, value)?;
        }
        if let Some(counts) = &self.sample_count {
            map.serialize_entry("sample_count", counts)?;
        }
        map.end()
    }
}

impl ResultsFile {
    /// The whole file as a JSON object.
    pub fn to_json(&self) -> Map<String, Value> {
        match serde_json::to_value(self) {
            Ok(Value::Object(map)) => map,
            _ => unreachable!("a results file serializes to a JSON object"),
        }
    }

    /// The direct subtasks of a group; empty for a task.
    pub fn subtasks(&self, name: &str) -> &[String] {
        self.group_subtasks.get(name).map_or(&[], Vec::as_slice)
    }

    /// `higher_is_better[task][metric]`, where recorded.
    pub fn higher_is_better(&self, task: &str, metric: &str) -> Option<bool> {
        self.higher_is_better.get(task)?.get(metric).copied()
    }

    /// The parts of a task's reported config that readers use.
    pub fn config(&self, task: &str) -> Option<ReportedConfig> {
        ReportedConfig::deserialize(self.configs.get(task)?).ok()
    }
}

/// What readers of a results file use from a task's reported config.
#[derive(Debug, Default, Deserialize)]
pub struct ReportedConfig {
    #[serde(default)]
    pub metric_list: Vec<ReportedMetric>,
}

#[derive(Debug, Deserialize)]
pub struct ReportedMetric {
    pub metric: Value,
    pub aggregation: Option<Value>,
}

impl ReportedConfig {
    /// The aggregation named for `metric` (a name; lm-eval writes a function's repr otherwise).
    pub fn aggregation(&self, metric: &str) -> Option<&str> {
        self.metric_list
            .iter()
            .find(|m| m.metric.as_str() == Some(metric))?
            .aggregation
            .as_ref()?
            .as_str()
    }
}

/// The run's settings and provenance, after the per-task sections, in lm-eval's order.
#[derive(Debug, Serialize)]
pub struct RunInfo {
    pub config: RunConfig,
    pub transformers_version: Option<String>,
    pub lm_eval_version: &'static str,
    pub sae_onnx_version: &'static str,
    pub tokenizer_pad_token: Option<[String; 2]>,
    pub tokenizer_eos_token: Option<[String; 2]>,
    pub tokenizer_bos_token: Option<[String; 2]>,
    pub eot_token_id: Option<u32>,
    pub max_length: usize,
    pub task_hashes: IndexMap<String, String>,
    pub model_source: &'static str,
    pub model_name: String,
    pub model_name_sanitized: String,
    pub system_instruction: Option<String>,
    pub system_instruction_sha: Option<String>,
    pub fewshot_as_multiturn: Option<bool>,
    pub chat_template: Option<String>,
    pub chat_template_sha: Option<String>,
    /// The sweep point this file is one of.
    #[serde(rename = "sae_onnx", skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepRecord>,
    /// The model's steering provenance, where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steering: Option<Value>,
    /// Seconds, as a string: lm-eval writes `str(time)`.
    pub total_evaluation_time_seconds: String,
}

/// `config`: the arguments of the run, with lm-eval's seeds.
#[derive(Debug, Serialize)]
pub struct RunConfig {
    pub model: &'static str,
    pub model_args: ModelArgs,
    pub model_num_parameters: Option<u64>,
    pub model_dtype: Option<String>,
    pub model_revision: String,
    pub model_sha: &'static str,
    pub batch_size: String,
    pub batch_sizes: Vec<usize>,
    pub device: String,
    pub use_cache: Option<String>,
    pub limit: Option<f64>,
    pub bootstrap_iters: u64,
    pub gen_kwargs: Map<String, Value>,
    pub random_seed: u64,
    pub numpy_seed: u64,
    pub torch_seed: u64,
    pub fewshot_seed: u64,
}

#[derive(Debug, Serialize)]
pub struct ModelArgs {
    pub model: String,
    pub device: String,
}

#[derive(Debug, Serialize)]
pub struct SweepRecord {
    pub sweep: SweepValue,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepValue {
    pub input: String,
    pub value: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_keep_lm_evals_key_order_through_a_round_trip() {
        let text = r#"{"results":{"t":{"name":"t","alias":"t","sample_len":3,"acc,none":0.5,"acc_stderr,none":0.1},"g":{"alias":"g","name":"g","sample_len":3,"acc,none":0.5,"acc_stderr,none":"N/A","sample_count":{"acc,none":3}}},"configs":{},"lm_eval_version":"0.4.13"}"#;
        let file: ResultsFile = serde_json::from_str(text).unwrap();
        assert!(file.results["g"].is_group());
        let scores: Vec<(&str, &str)> = file.results["t"].values().map(|m| (m.metric, m.filter)).collect();
        assert_eq!(scores, [("acc", "none")]);
        let back = serde_json::to_string(&file).unwrap();
        assert_eq!(
            back,
            r#"{"results":{"t":{"name":"t","alias":"t","sample_len":3,"acc,none":0.5,"acc_stderr,none":0.1},"g":{"alias":"g","name":"g","sample_len":3,"acc,none":0.5,"acc_stderr,none":"N/A","sample_count":{"acc,none":3}}},"group_subtasks":{},"configs":{},"versions":{},"n-shot":{},"higher_is_better":{},"n-samples":{},"lm_eval_version":"0.4.13"}"#
        );
    }
}
