//! A results file from its tasks' per-document metric values: the one path `eval` and `merge`
//! share, so a merged shard set is scored by the same code, in the same order, as the unsharded
//! run (lm-eval's per-task aggregation, then `consolidate_group_results`).

use std::collections::HashMap;

use indexmap::IndexMap;
use serde_json::Value;

use super::groups::TaskTree;
use super::task_output::{TaskLabel, TaskOutput};
use crate::contract::results::{ResultsFile, SampleCounts};

/// One task's part of a results file: its label and scored output, and its entries in the
/// sections beside `results`.
pub struct TaskPart {
    pub label: TaskLabel,
    pub output: TaskOutput,
    /// Documents scored (`n-samples.effective`, `sample_len`).
    pub documents: usize,
    /// Documents of the task's evaluation split (`n-samples.original`).
    pub original: usize,
    pub config: Value,
    pub version: Value,
    pub n_shot: Value,
    pub higher_is_better: IndexMap<String, bool>,
}

/// Every task's scores and sections, in task order, then the groups' (listed after their
/// tasks, as lm-eval does).
pub fn results_file(parts: &[TaskPart], roots: &[TaskTree]) -> ResultsFile {
    let mut file = ResultsFile::default();
    let mut summaries = HashMap::new();
    for part in parts {
        let name = &part.label.name;
        let (scores, summary) = part.output.scores(&part.label, part.documents);
        summaries.insert(name.clone(), summary);
        file.results.insert(name.clone(), scores);
        file.configs.insert(name.clone(), part.config.clone());
        file.versions.insert(name.clone(), part.version.clone());
        file.n_shot.insert(name.clone(), part.n_shot.clone());
        file.higher_is_better
            .insert(name.clone(), part.higher_is_better.clone());
        file.n_samples.insert(
            name.clone(),
            SampleCounts {
                original: part.original,
                effective: part.documents,
            },
        );
    }
    for root in roots {
        root.consolidate(&mut summaries, &mut file);
    }
    file
}

/// `task_hashes`: per task with sample lines, the hash of their three hashes.
pub fn task_hashes(samples: &[(String, Vec<Value>)]) -> IndexMap<String, String> {
    samples
        .iter()
        .map(|(task, lines)| (task.clone(), super::samples::task_hash(lines)))
        .collect()
}
