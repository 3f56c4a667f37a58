//! The report: each run against the baseline, task by task and metric by metric, within the
//! tasks and metrics asked for.

use std::collections::BTreeSet;
use std::path::PathBuf;

use crate::contract::results::Scores;
use anyhow::{Result, bail};
use serde::Serialize;

use super::{CompareOptions, Run, pairing};

/// Everything `compare` found; `--json` prints it as is.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub baseline: RunInfo,
    pub alpha: f64,
    pub resamples: usize,
    pub seed: u64,
    pub comparisons: Vec<Comparison>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub path: PathBuf,
    /// The run's steering coefficient, where known (see [`sweep_values`]).
    pub x: Option<f64>,
}

/// One run against the baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub run: RunInfo,
    pub rows: Vec<Row>,
    /// Tasks only one of the two runs has.
    pub only_in_baseline: Vec<String>,
    pub only_in_run: Vec<String>,
}

/// One task (or group) and metric: baseline `a`, this run `b`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub task: String,
    /// 0 for top-level tasks and groups, 1 for a group's subtasks, ...
    pub depth: usize,
    pub metric: String,
    pub filter: String,
    /// Documents in the test (`None` without samples).
    pub n: Option<usize>,
    pub a: f64,
    pub b: f64,
    /// `b - a`.
    pub delta: f64,
    pub a_stderr: Option<f64>,
    pub b_stderr: Option<f64>,
    pub higher_is_better: Option<bool>,
    pub test: Option<Test>,
    /// `p_value < alpha`; `None` without a test.
    pub significant: Option<bool>,
    /// Why there is no test, where there is none.
    pub note: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Test {
    /// Exact McNemar: `lost` documents the baseline got right and this run wrong, `gained` the
    /// reverse; binomial test on the `lost + gained` that changed.
    Mcnemar { lost: u64, gained: u64, p_value: f64 },
    /// Paired bootstrap of `b - a` over documents.
    Bootstrap {
        resamples: usize,
        seed: u64,
        ci_level: f64,
        ci_low: f64,
        ci_high: f64,
        p_value: f64,
    },
}

impl Test {
    pub fn p_value(&self) -> f64 {
        match self {
            Test::Mcnemar { p_value, .. } | Test::Bootstrap { p_value, .. } => *p_value,
        }
    }
}

/// Compares every run after the first with the first.
pub fn compare(runs: &[Run], x: &[Option<f64>], options: &CompareOptions) -> Result<Report> {
    if runs.len() < 2 {
        bail!("compare needs at least two runs: the baseline first, then the runs to compare with it");
    }
    check_selection(runs, options)?;
    let base = &runs[0];
    let mut comparisons = Vec::new();
    for (run, x) in runs.iter().zip(x).skip(1) {
        comparisons.push(compare_pair(base, run, *x, options)?);
    }
    Ok(Report {
        baseline: RunInfo {
            path: base.path.clone(),
            x: x.first().copied().flatten(),
        },
        alpha: options.alpha,
        resamples: options.resamples,
        seed: options.seed,
        comparisons,
    })
}

/// Refuses a `--task` the baseline does not have and a `--metric` that no run has for the
/// chosen tasks: a misspelt name would otherwise give an empty table and exit 0.
fn check_selection(runs: &[Run], options: &CompareOptions) -> Result<()> {
    let base = &runs[0];
    let known: Vec<String> = base.task_tree().into_iter().map(|(t, _)| t).collect();
    let unknown: Vec<&str> = options
        .tasks
        .iter()
        .filter(|t| !known.contains(t))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        bail!(
            "--task {}: no such task or group in '{}'; it has: {}",
            crate::files::printable(&unknown.join(", "), 200),
            base.path.display(),
            known.join(", ")
        );
    }
    if options.metrics.is_empty() {
        return Ok(());
    }
    let mut metrics = BTreeSet::new();
    for run in runs {
        for (task, _) in selected_tasks(run, options) {
            if let Some(entry) = run.entry(&task) {
                metrics.extend(score_keys(entry).into_iter().map(|(m, _, _)| m));
            }
        }
    }
    let unknown: Vec<&str> = options
        .metrics
        .iter()
        .filter(|m| !metrics.contains(*m))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        let has: Vec<&str> = metrics.iter().map(String::as_str).collect();
        bail!(
            "--metric {}: no run has it for the chosen tasks; they have: {}",
            crate::files::printable(&unknown.join(", "), 200),
            has.join(", ")
        );
    }
    Ok(())
}

/// Tasks of `run` to report, with depth: those named in `options.tasks` and everything under
/// them, or all.
fn selected_tasks(run: &Run, options: &CompareOptions) -> Vec<(String, usize)> {
    let tree = run.task_tree();
    if options.tasks.is_empty() {
        return tree;
    }
    let mut out = Vec::new();
    // Depth of the selected ancestor, while inside one.
    let mut inside: Option<usize> = None;
    for (task, depth) in tree {
        if inside.is_some_and(|d| depth <= d) {
            inside = None;
        }
        if inside.is_none() && options.tasks.contains(&task) {
            inside = Some(depth);
        }
        if let Some(d) = inside {
            out.push((task, depth - d));
        }
    }
    out
}

/// `metric,filter` keys of a results entry that hold a score (not a stderr, not "N/A").
pub(super) fn score_keys(entry: &Scores) -> Vec<(String, String, f64)> {
    entry
        .values()
        .filter_map(|m| Some((m.metric.to_owned(), m.filter.to_owned(), m.value.as_f64()?)))
        .collect()
}

pub(super) fn stderr_of(entry: &Scores, metric: &str, filter: &str) -> Option<f64> {
    entry.stderr(metric, filter)?.as_f64()
}

fn compare_pair(a: &Run, b: &Run, x: Option<f64>, options: &CompareOptions) -> Result<Comparison> {
    let mut rows = Vec::new();
    let tasks = selected_tasks(a, options);
    for (task, depth) in &tasks {
        let (Some(ea), Some(eb)) = (a.entry(task), b.entry(task)) else {
            continue;
        };
        for (metric, filter, va) in score_keys(ea) {
            if !options.metrics.is_empty() && !options.metrics.contains(&metric) {
                continue;
            }
            let Some(vb) = eb.value(&format!("{metric},{filter}")) else {
                continue;
            };
            let mut row = Row {
                task: task.clone(),
                depth: *depth,
                metric: metric.clone(),
                filter: filter.clone(),
                n: None,
                a: va,
                b: vb,
                delta: vb - va,
                a_stderr: stderr_of(ea, &metric, &filter),
                b_stderr: stderr_of(eb, &metric, &filter),
                higher_is_better: a.higher_is_better(task, &metric),
                test: None,
                significant: None,
                note: None,
            };
            match pairing::paired_test(a, b, task, &metric, &filter, options)? {
                Ok((n, test)) => {
                    row.n = Some(n);
                    row.significant = Some(test.p_value() < options.alpha);
                    row.test = Some(test);
                }
                Err(note) => row.note = Some(note),
            }
            rows.push(row);
        }
    }
    // Within the tasks asked for, so that `--task` does not list every other task as missing.
    let names =
        |r: &Run| -> BTreeSet<String> { selected_tasks(r, options).into_iter().map(|(t, _)| t).collect() };
    let (na, nb) = (names(a), names(b));
    Ok(Comparison {
        run: RunInfo {
            path: b.path.clone(),
            x,
        },
        rows,
        only_in_baseline: na.difference(&nb).cloned().collect(),
        only_in_run: nb.difference(&na).cloned().collect(),
    })
}
