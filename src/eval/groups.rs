//! The group tree: what a task, group or tag name on the command line stands for, and the group
//! scores pooled from their subtasks (lm-eval's `get_task_dict` and
//! `consolidate_group_results`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde_json::{Value, json};

use super::metrics;
use super::task_index::{Entry, TaskIndex};
use crate::contract::results::{ResultsFile, Scores, Stderr};

/// A resolved name: a task, or a group of children with its aggregation. A shard record keeps
/// it, so that a merge pools the groups as the unsharded run did.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub enum TaskTree {
    Task {
        name: String,
    },
    Group {
        name: String,
        alias: Option<String>,
        children: Vec<TaskTree>,
        /// Per metric of `aggregate_metric_list`: whether subtasks weigh by their size.
        weight_by_size: BTreeMap<String, bool>,
        version: Value,
    },
}

/// A task's or group's scores under filter `none`, which the groups above it pool.
#[derive(Debug, Default)]
pub struct Summary {
    pub metrics: BTreeMap<String, MetricMean>,
    pub documents: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct MetricMean {
    pub mean: f64,
    pub stderr: Option<f64>,
}

/// Nesting deeper than this is taken for a cycle of groups.
const MAX_DEPTH: usize = 16;

impl TaskTree {
    /// Resolves `name`: a task, a group (with its subtasks, recursively), a tag, or the path of
    /// a task or group YAML file.
    pub fn resolve(index: &mut TaskIndex, name: &str) -> Result<Self> {
        Self::resolve_at(index, name, 0)
    }

    fn resolve_at(index: &mut TaskIndex, name: &str, depth: usize) -> Result<Self> {
        if depth > MAX_DEPTH {
            bail!("group '{name}' nests too deeply (a cycle?)");
        }
        let as_path = Path::new(name);
        let name = if as_path.extension().is_some_and(|e| e == "yaml" || e == "yml") && as_path.is_file() {
            index
                .add_file(as_path)?
                .with_context(|| format!("'{name}' defines no task or group"))?
        } else {
            name.to_owned()
        };
        index.usable(&name)?;
        match index.entries.get(&name).cloned() {
            Some(Entry::Task { .. }) => Ok(Self::Task { name }),
            Some(Entry::Group { config, .. }) => Self::group(index, name, &config, depth),
            None => match index.tags.get(&name).cloned() {
                // A tag is a plain list of tasks, reported one by one.
                Some(tasks) => Ok(Self::Group {
                    name,
                    alias: None,
                    children: tasks.into_iter().map(|t| Self::Task { name: t }).collect(),
                    weight_by_size: BTreeMap::new(),
                    version: Value::Null,
                }),
                None => Err(unknown_name(index, &name)),
            },
        }
    }

    fn group(
        index: &mut TaskIndex,
        name: String,
        config: &serde_json::Map<String, Value>,
        depth: usize,
    ) -> Result<Self> {
        let mut children = Vec::new();
        for child in config.get("task").and_then(Value::as_array).into_iter().flatten() {
            match child {
                // A tag inside a group stands for its tasks, listed as the group's own subtasks.
                Value::String(child)
                    if !index.entries.contains_key(child) && index.tags.contains_key(child) =>
                {
                    index.usable(child)?;
                    let tasks = index.tags[child].clone();
                    children.extend(tasks.into_iter().map(|name| Self::Task { name }));
                }
                Value::String(child) => children.push(Self::resolve_at(index, child, depth + 1)?),
                other => bail!(
                    "group '{name}': inline task definitions ({other}) are not supported; put them in their own YAML file"
                ),
            }
        }
        let weight_by_size = config
            .get("aggregate_metric_list")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|m| {
                Some((
                    m.get("metric")?.as_str()?.to_owned(),
                    m.get("weight_by_size").and_then(Value::as_bool).unwrap_or(true),
                ))
            })
            .collect();
        let version = config
            .get("metadata")
            .and_then(|m| m.get("version"))
            .map_or(Value::Null, |v| json!(super::task::value_text(v)));
        let alias = config
            .get("group_alias")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Self::Group {
            name,
            alias,
            children,
            weight_by_size,
            version,
        })
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Task { name } | Self::Group { name, .. } => name,
        }
    }

    /// The tasks under this tree, each once, in the order they first appear.
    pub fn collect_tasks(&self, out: &mut Vec<String>) {
        match self {
            Self::Task { name } => {
                if !out.contains(name) {
                    out.push(name.clone());
                }
            }
            Self::Group { children, .. } => children.iter().for_each(|c| c.collect_tasks(out)),
        }
    }

    /// Fills the groups' sections of `file` from their subtasks' summaries, children first: their
    /// subtasks, version, n-shot (where the children agree), higher_is_better and, with an
    /// `aggregate_metric_list`, the pooled scores.
    pub fn consolidate(&self, summaries: &mut HashMap<String, Summary>, file: &mut ResultsFile) {
        let Self::Group {
            name,
            alias,
            children,
            weight_by_size,
            version,
        } = self
        else {
            return;
        };
        for child in children {
            child.consolidate(summaries, file);
        }
        let child_names: Vec<String> = children.iter().map(|c| c.name().to_owned()).collect();
        file.versions.insert(name.clone(), version.clone());
        let shots: BTreeSet<String> = child_names
            .iter()
            .filter_map(|c| file.n_shot.get(c).map(Value::to_string))
            .collect();
        if shots.len() == 1
            && let Some(v) = child_names.iter().find_map(|c| file.n_shot.get(c).cloned())
        {
            file.n_shot.insert(name.clone(), v);
        }
        let mut higher_is_better = IndexMap::new();
        for c in &child_names {
            for (metric, higher) in file.higher_is_better.get(c).into_iter().flatten() {
                higher_is_better.entry(metric.clone()).or_insert(*higher);
            }
        }
        file.group_subtasks.insert(name.clone(), child_names);
        if weight_by_size.is_empty() {
            // No aggregate_metric_list (e.g. a tag): lm-eval reports the children only.
            return;
        }
        let subtasks = file.subtasks(name).to_vec();
        let (scores, summary) = pool(name, alias, &subtasks, weight_by_size, summaries);
        higher_is_better.retain(|metric, _| summary.metrics.contains_key(metric));
        file.higher_is_better.insert(name.clone(), higher_is_better);
        summaries.insert(name.clone(), summary);
        file.results.insert(name.clone(), scores.clone());
        file.groups.insert(name.clone(), scores);
    }
}

/// A group's scores: each metric of its `aggregate_metric_list` pooled over the subtasks that
/// have it (lm-eval's `aggregate_subtask_metrics` and `pooled_sample_stderr`).
fn pool(
    name: &str,
    alias: &Option<String>,
    subtasks: &[String],
    weight_by_size: &BTreeMap<String, bool>,
    summaries: &HashMap<String, Summary>,
) -> (Scores, Summary) {
    let mut scores = Scores {
        alias: Some(alias.clone().unwrap_or_else(|| name.to_owned())),
        name: Some(name.to_owned()),
        sample_count: Some(IndexMap::new()),
        ..Scores::default()
    };
    let mut summary = Summary::default();
    for (metric, weighted) in weight_by_size {
        let parts: Vec<(MetricMean, usize)> = subtasks
            .iter()
            .filter_map(|c| {
                let s = summaries.get(c)?;
                Some((*s.metrics.get(metric)?, s.documents))
            })
            .collect();
        if parts.is_empty() {
            continue;
        }
        let means: Vec<f64> = parts.iter().map(|p| p.0.mean).collect();
        let stderrs: Vec<f64> = parts.iter().map(|p| p.0.stderr.unwrap_or(0.0)).collect();
        let sizes: Vec<usize> = parts.iter().map(|p| p.1).collect();
        let (mean, stderr) = metrics::aggregate_group(&means, &stderrs, &sizes, *weighted);
        // A subtask without a stderr (one document) leaves the group's "N/A", as in lm-eval:
        // pooling it as 0 would report a precision nobody measured.
        let stderr = parts.iter().all(|p| p.0.stderr.is_some()).then_some(stderr);
        summary.documents = sizes.iter().sum();
        scores.insert(metric, "none", mean, Stderr::from_option(stderr));
        if let Some(counts) = scores.sample_count.as_mut() {
            counts.insert(format!("{metric},none"), summary.documents);
        }
        summary
            .metrics
            .insert(metric.clone(), MetricMean { mean, stderr });
    }
    scores.sample_len = Some(summary.documents);
    (scores, summary)
}

fn unknown_name(index: &TaskIndex, name: &str) -> anyhow::Error {
    let hints = index.suggestions(name);
    let hint = if hints.is_empty() {
        String::new()
    } else {
        format!(" Did you mean: {}?", hints.join(", "))
    };
    anyhow::anyhow!(
        "unknown task, group or tag '{}'.{hint} (`sae-onnx eval --list-tasks` lists them; a path to a .yaml file works too)",
        crate::files::printable(name, 100)
    )
}
