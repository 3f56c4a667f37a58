//! `eval --shard K/N`: the K-th of N deterministic slices of every task's documents, and the
//! record a shard writes beside its results so that [`super::merge`] can rebuild the unsharded
//! run exactly.
//!
//! The slice is lm-eval's own split across ranks (`islice(docs, rank, limit, world_size)`):
//! document `i` goes to shard `i % N`. Every document's requests are still built in order
//! before the slice is taken, so few-shot draws (a sequential random stream) are the unsharded
//! run's, which lm-eval's ranks do not guarantee.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::groups::TaskTree;
use super::metrics::MetricItem;
use super::output::Written;
use super::task_output::TaskLabel;
use crate::files::{self, Inputs};

/// Shard `index` of `count`: `0 <= index < count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Whether document `doc_id` (its position among the task's evaluated documents) is ours.
    pub fn selects(self, doc_id: usize) -> bool {
        doc_id % self.count == self.index
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let shown = crate::files::printable(s, 40);
        let parsed = s
            .split_once('/')
            .and_then(|(k, n)| Some((k.trim().parse::<usize>().ok()?, n.trim().parse::<usize>().ok()?)));
        match parsed {
            Some((index, count)) if count > 0 && index < count => Ok(Self { index, count }),
            Some((index, count)) => Err(format!(
                "'{shown}': shard index {index} is not below the shard count {count}; \
                 give K/N with 0 <= K < N (e.g. 0/4 .. 3/4)"
            )),
            None => Err(format!(
                "'{shown}' is not a shard: give K/N, the K-th (from 0) of N slices, e.g. 2/8"
            )),
        }
    }
}

/// The record format's version: a merge refuses records it does not know.
pub const RECORD_FORMAT: u32 = 1;

/// What a shard writes beside its results (`shard_<K>_of_<N>_<date>.json`): what the run was
/// (so a merge can refuse a mixed set), the task tree, and every document's metric values.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardRecord {
    pub sae_onnx_shard_record: u32,
    pub shard: Shard,
    pub identity: RunIdentity,
    pub roots: Vec<TaskTree>,
    pub tasks: Vec<TaskShard>,
    /// The shard's results file, beside this record.
    pub results_file: String,
}

/// Everything that must be equal across the shards of one run, by the name a refusal gives it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunIdentity {
    pub model_name: String,
    /// The graph's SHA-256 and its data files' identities.
    pub model: Value,
    pub tokenizer: String,
    pub steering: Option<Value>,
    pub sweep: Option<Value>,
    pub tasks: Vec<String>,
    pub versions: BTreeMap<String, Value>,
    pub limit: Option<f64>,
    pub num_fewshot: Option<usize>,
    pub fewshot_seed: u64,
    pub max_length: usize,
    pub log_samples: bool,
}

impl RunIdentity {
    /// The first field (by name) in which two identities differ, with both values.
    pub fn difference(&self, other: &Self) -> Option<(&'static str, String, String)> {
        let fields = |id: &Self| -> Vec<(&'static str, String)> {
            vec![
                ("model name", show(&id.model_name)),
                ("steering", show(&id.steering)),
                ("sweep point", show(&id.sweep)),
                ("model (graph and data files)", show(&id.model)),
                ("tokenizer", show(&id.tokenizer)),
                ("tasks", show(&id.tasks)),
                ("task versions", show(&id.versions)),
                ("limit", show(&id.limit)),
                ("few-shot (--num-fewshot)", show(&id.num_fewshot)),
                ("few-shot seed (--seed)", show(&id.fewshot_seed)),
                ("context length", show(&id.max_length)),
                ("--log-samples", show(&id.log_samples)),
            ]
        };
        fields(self)
            .into_iter()
            .zip(fields(other))
            .find(|((_, a), (_, b))| a != b)
            .map(|((name, a), (_, b))| (name, a, b))
    }
}

/// A field shown as JSON, so that any two compare and print alike.
fn show<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// One task's part of a shard: its label, the unsharded run's document count, the documents
/// this shard scored and their metric values, and its samples file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskShard {
    pub label: TaskLabel,
    /// Documents of the whole (unsharded) evaluation.
    pub documents: usize,
    /// This shard's documents, ascending.
    pub doc_ids: Vec<usize>,
    /// Per `metric` or `metric,filter`: one value per document of `doc_ids`, in that order.
    pub items: BTreeMap<String, Vec<MetricItem>>,
    /// The order of the filters in the samples file (each filter's lines by document).
    pub filters: Vec<String>,
    /// The shard's samples file of this task, beside the record (with `--log-samples`).
    pub samples_file: Option<String>,
}

/// `shard_<K>_of_<N>_<stamp>.json`.
pub fn record_file_name(shard: Shard, stamp: &str) -> String {
    format!("shard_{}_of_{}_{stamp}.json", shard.index, shard.count)
}

/// Whether a file name is a shard record's.
pub fn is_record_file_name(name: &str) -> bool {
    name.starts_with("shard_") && name.contains("_of_") && name.ends_with(".json")
}

impl ShardRecord {
    /// Writes the record beside its shard's results (`shard_<K>_of_<N>_<date>.json`, the
    /// results' stamp), atomically: it is the last file of a shard, so its presence means the
    /// shard is whole.
    pub fn write_beside(&self, written: &Written, inputs: &Inputs) -> anyhow::Result<PathBuf> {
        let path = files::parent_dir(&written.results).join(record_file_name(self.shard, &written.stamp));
        let mut text = serde_json::to_string(self)?;
        text.push('\n');
        files::check_output(&path, inputs, false)?;
        files::write_atomic(&path, text.as_bytes())?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_partition_documents_as_lm_eval_ranks() {
        let shard: Shard = "1/3".parse().unwrap();
        let ours: Vec<usize> = (0..8).filter(|&i| shard.selects(i)).collect();
        // list(islice(range(8), 1, None, 3))
        assert_eq!(ours, vec![1, 4, 7]);
        assert!("3/3".parse::<Shard>().unwrap_err().contains("not below"));
        assert!("0/0".parse::<Shard>().is_err());
        assert!("a/3".parse::<Shard>().unwrap_err().contains("K/N"));
        assert!("2".parse::<Shard>().is_err());
    }
}
