//! `sae-onnx compare`: is a steered model's score really different from the baseline's?
//!
//! Reads two or more runs (lm-eval's results JSON and `--log-samples` files, as `sae-onnx eval`
//! and lm-eval write them), and for every task, group and metric gives both scores, their
//! difference and a paired test on the documents both runs scored: the exact McNemar test for
//! 0/1 metrics (acc, acc_norm, exact_match), a seeded paired bootstrap for the rest
//! (perplexities). The first run is the baseline; each other run is compared with it. For a
//! coefficient sweep, [`sweep_figure`] draws the metric against the coefficient.

pub mod load;
pub mod plot;
pub mod stats;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Result, bail};
use serde::Serialize;
use serde_json::Value;

pub use load::Run;
use stats::Aggregation;

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Seed of the bootstrap's `random.Random`.
    pub seed: u64,
    /// Significance level; the bootstrap interval is the `1 - alpha` one.
    pub alpha: f64,
    /// Only these tasks or groups (and a group's subtasks); empty: all.
    pub tasks: Vec<String>,
    /// Only these metrics; empty: all.
    pub metrics: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            resamples: 10_000,
            seed: 1234,
            alpha: 0.05,
            tasks: Vec::new(),
            metrics: Vec::new(),
        }
    }
}

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
fn score_keys(entry: &serde_json::Map<String, Value>) -> Vec<(String, String, f64)> {
    entry
        .iter()
        .filter_map(|(k, v)| {
            let (metric, filter) = k.split_once(',')?;
            if metric.ends_with("_stderr") {
                return None;
            }
            Some((metric.to_owned(), filter.to_owned(), v.as_f64()?))
        })
        .collect()
}

fn stderr_of(entry: &serde_json::Map<String, Value>, metric: &str, filter: &str) -> Option<f64> {
    entry.get(&format!("{metric}_stderr,{filter}"))?.as_f64()
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
            let Some(vb) = eb.get(&format!("{metric},{filter}")).and_then(Value::as_f64) else {
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
            match paired_test(a, b, task, &metric, &filter, options)? {
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

/// The test of one row: `Ok(Ok((n, test)))`, `Ok(Err(why there is none))`, or an error where the
/// runs scored different documents.
fn paired_test(
    a: &Run,
    b: &Run,
    task: &str,
    metric: &str,
    filter: &str,
    options: &CompareOptions,
) -> Result<std::result::Result<(usize, Test), String>> {
    let leaves = a.leaves(task);
    let agg_name = a.aggregation(&leaves[0], metric);
    let Some(agg) = Aggregation::from_name(&agg_name) else {
        return Ok(Err(format!("no paired test for the '{agg_name}' aggregation")));
    };
    if leaves.len() > 1 && agg != Aggregation::Mean {
        return Ok(Err(format!("a group's {agg_name} is not pooled over documents")));
    }
    let (mut xa, mut xb) = (Vec::new(), Vec::new());
    for leaf in &leaves {
        let (Some(sa), Some(sb)) = (a.samples.get(leaf), b.samples.get(leaf)) else {
            let which = if a.samples.contains_key(leaf) {
                &b.path
            } else {
                &a.path
            };
            return Ok(Err(format!(
                "no samples of {leaf} beside {}: evaluate with --log-samples",
                which.display()
            )));
        };
        let da = documents(sa, metric, filter, agg)?;
        let db = documents(sb, metric, filter, agg)?;
        same_documents(leaf, filter, sa, &da, sb, &db)?;
        xa.extend(da.iter().map(|d| d.value));
        xb.extend(db.iter().map(|d| d.value));
    }
    if xa.is_empty() {
        return Ok(Err(format!("the samples hold no {metric} values")));
    }
    let n = xa.len();
    let binary = agg == Aggregation::Mean && xa.iter().chain(&xb).all(|v| v.0 == 0.0 || v.0 == 1.0);
    let test = if binary {
        let lost = xa
            .iter()
            .zip(&xb)
            .filter(|(x, y)| x.0 == 1.0 && y.0 == 0.0)
            .count() as u64;
        let gained = xa
            .iter()
            .zip(&xb)
            .filter(|(x, y)| x.0 == 0.0 && y.0 == 1.0)
            .count() as u64;
        Test::Mcnemar {
            lost,
            gained,
            p_value: stats::mcnemar_exact(lost, gained),
        }
    } else {
        let r = stats::paired_bootstrap(agg, &xa, &xb, options.resamples, options.seed, options.alpha);
        Test::Bootstrap {
            resamples: options.resamples,
            seed: options.seed,
            ci_level: 1.0 - options.alpha,
            ci_low: r.ci.0,
            ci_high: r.ci.1,
            p_value: r.p_value,
        }
    };
    Ok(Ok((n, test)))
}

/// One document's score in one run.
struct Doc {
    id: i64,
    /// Index into the task's sample lines.
    line: usize,
    /// `(value, weight)`; the weight only for weighted aggregations.
    value: (f64, f64),
}

/// A task's documents for one metric and filter, sorted by doc_id.
fn documents(samples: &load::TaskSamples, metric: &str, filter: &str, agg: Aggregation) -> Result<Vec<Doc>> {
    let mut out = Vec::new();
    for (i, line) in samples.lines.iter().enumerate() {
        if line.filter != filter {
            continue;
        }
        let Some((_, v)) = line.metrics.iter().find(|(m, _)| m == metric) else {
            continue;
        };
        let value = match (v, agg.weighted()) {
            (Value::Bool(b), false) => (f64::from(u8::from(*b)), 0.0),
            (Value::Number(x), false) => (x.as_f64().unwrap_or(f64::NAN), 0.0),
            (Value::Array(pair), true) if pair.len() == 2 && pair.iter().all(Value::is_number) => (
                pair[0].as_f64().unwrap_or(f64::NAN),
                pair[1].as_f64().unwrap_or(f64::NAN),
            ),
            _ => bail!(
                "{}:{}: {metric} is {v}, expected {}",
                samples.path.display(),
                line.line,
                if agg.weighted() {
                    "a [loglikelihood, weight] pair"
                } else {
                    "a number"
                }
            ),
        };
        out.push(Doc {
            id: line.doc_id,
            line: i,
            value,
        });
    }
    out.sort_by_key(|d| d.id);
    Ok(out)
}

/// Refuses to pair documents that differ: a paired test is only meaningful on the same questions.
fn same_documents(
    task: &str,
    filter: &str,
    sa: &load::TaskSamples,
    da: &[Doc],
    sb: &load::TaskSamples,
    db: &[Doc],
) -> Result<()> {
    let advice = "a paired test needs both runs to score the same documents: evaluate the same task \
                  version with the same --limit (and the same dataset revision)";
    let ids_a: BTreeSet<i64> = da.iter().map(|d| d.id).collect();
    let ids_b: BTreeSet<i64> = db.iter().map(|d| d.id).collect();
    if let Some(id) = ids_a.difference(&ids_b).next() {
        bail!(
            "task {task}: document {id} is in {} ({} documents) but not in {} ({} documents); {advice}",
            sa.path.display(),
            da.len(),
            sb.path.display(),
            db.len()
        );
    }
    if let Some(id) = ids_b.difference(&ids_a).next() {
        bail!(
            "task {task}: document {id} is in {} ({} documents) but not in {} ({} documents); {advice}",
            sb.path.display(),
            db.len(),
            sa.path.display(),
            da.len()
        );
    }
    if da.len() != db.len() {
        bail!(
            "task {task} (filter {filter}): {} has {} sample lines and {} has {}; {advice}",
            sa.path.display(),
            da.len(),
            sb.path.display(),
            db.len()
        );
    }
    for (x, y) in da.iter().zip(db) {
        let (la, lb) = (&sa.lines[x.line], &sb.lines[y.line]);
        if la.identity != lb.identity {
            let short = |s: &str| s.chars().take(16).collect::<String>();
            bail!(
                "task {task}: document {} differs: doc_hash {}… at {}:{} but {}… at {}:{}; {advice}",
                x.id,
                short(&la.identity),
                sa.path.display(),
                la.line,
                short(&lb.identity),
                sb.path.display(),
                lb.line
            );
        }
    }
    Ok(())
}

/// Where the steering coefficient of each run comes from, for the table and the plot's x axis.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepValues {
    pub x: Vec<Option<f64>>,
    /// Axis label: what was swept.
    pub label: String,
}

/// Each run's steering coefficient: `explicit` (`--x-values`, one per run) if given; else the
/// results' `sae_onnx.sweep.value` (written by `sae-onnx eval` for a sweep); else, from the
/// steering provenance (`steering`: the patches `sae-onnx patch` recorded), the coefficient of
/// the one steering row that differs between the runs (a run without it: 0).
pub fn sweep_values(runs: &[Run], explicit: Option<&[f64]>) -> Result<SweepValues> {
    if let Some(values) = explicit {
        if values.len() != runs.len() {
            bail!(
                "--x-values has {} values for {} runs: give one per results file, in the order of the files",
                values.len(),
                runs.len()
            );
        }
        return Ok(SweepValues {
            x: values.iter().copied().map(Some).collect(),
            label: "steering coefficient".to_owned(),
        });
    }
    let sweep = |r: &Run| r.json.get("sae_onnx").and_then(|s| s.get("sweep")).cloned();
    let from_sweep: Vec<Option<f64>> = runs
        .iter()
        .map(|r| sweep(r).and_then(|s| s.get("value").and_then(Value::as_f64)))
        .collect();
    let sweep_input = runs
        .iter()
        .find_map(|r| sweep(r).and_then(|s| s.get("input").and_then(Value::as_str).map(str::to_owned)));
    let (from_steering, steering_label) = steering_coefficients(runs);
    let x = from_sweep
        .iter()
        .zip(&from_steering)
        .map(|(s, p)| s.or(*p))
        .collect();
    let label = match (sweep_input, steering_label) {
        (Some(input), _) => format!("steering coefficient ({input})"),
        (None, Some(what)) => format!("steering coefficient ({what})"),
        (None, None) => "steering coefficient".to_owned(),
    };
    Ok(SweepValues { x, label })
}

/// From the `steering` provenance: per run, the coefficient of the single (latent, SAE, hook)
/// whose coefficient differs between runs, and a description of it. `None`s where the runs do
/// not differ in exactly one steering row.
fn steering_coefficients(runs: &[Run]) -> (Vec<Option<f64>>, Option<String>) {
    let none = (vec![None; runs.len()], None);
    // (latent, sae, sae_id, hook) -> summed coefficient, per run.
    let mut per_run: Vec<BTreeMap<(i64, String, String, String), f64>> = Vec::new();
    for run in runs {
        let mut rows = BTreeMap::new();
        let patches = run.json.get("steering").and_then(Value::as_array);
        for row in patches
            .into_iter()
            .flatten()
            .filter_map(|p| p.get("rows")?.as_array())
            .flatten()
        {
            let text = |k: &str| row.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
            let (Some(latent), Some(c)) = (
                row.get("latent").and_then(Value::as_i64),
                row.get("coefficient").and_then(Value::as_f64),
            ) else {
                continue;
            };
            *rows
                .entry((latent, text("sae"), text("sae_id"), text("hook")))
                .or_insert(0.0) += c;
        }
        per_run.push(rows);
    }
    let keys: BTreeSet<_> = per_run.iter().flat_map(|r| r.keys().cloned()).collect();
    let varying: Vec<_> = keys
        .into_iter()
        .filter(|k| {
            let first = per_run[0].get(k).copied().unwrap_or(0.0);
            per_run.iter().any(|r| r.get(k).copied().unwrap_or(0.0) != first)
        })
        .collect();
    let [key] = &varying[..] else {
        return none;
    };
    let x = per_run
        .iter()
        .map(|r| Some(r.get(key).copied().unwrap_or(0.0)))
        .collect();
    let hook = if key.3.is_empty() {
        String::new()
    } else {
        format!(" at {}", key.3)
    };
    (x, Some(format!("latent {}{hook}", key.0)))
}

/// The figure for `--plot`: one panel per metric, one series per top-level task (or per task
/// named in `options.tasks`), the metric at each run's x with its stderr as error bars.
pub fn sweep_figure(runs: &[Run], sweep: &SweepValues, options: &CompareOptions) -> Result<plot::Figure> {
    let mut xs = Vec::new();
    for (run, x) in runs.iter().zip(&sweep.x) {
        let Some(x) = x else {
            bail!(
                "--plot needs each run's steering coefficient, and '{}' does not say it (no \
                 sae_onnx.sweep.value in its results, and no steering provenance that differs from \
                 the other runs in a single coefficient); give them in order with --x-values, e.g. \
                 --x-values 0,60,120",
                run.path.display()
            );
        };
        xs.push(*x);
    }
    let base = &runs[0];
    let tasks: Vec<String> = if options.tasks.is_empty() {
        base.task_tree()
            .into_iter()
            .filter(|(_, d)| *d == 0)
            .map(|(t, _)| t)
            .collect()
    } else {
        options.tasks.clone()
    };
    // (metric, filter) -> series, in first-seen order.
    let mut panels: Vec<((String, String), Vec<plot::Series>)> = Vec::new();
    for task in &tasks {
        let Some(entry) = base.entry(task) else {
            bail!("--task {task}: no such task in '{}'", base.path.display());
        };
        for (metric, filter, _) in score_keys(entry) {
            if !options.metrics.is_empty() && !options.metrics.contains(&metric) {
                continue;
            }
            let mut points = Vec::new();
            for (run, &x) in runs.iter().zip(&xs) {
                let Some(e) = run.entry(task) else { continue };
                let Some(y) = e.get(&format!("{metric},{filter}")).and_then(Value::as_f64) else {
                    continue;
                };
                points.push((x, y, stderr_of(e, &metric, &filter)));
            }
            let key = (metric, filter);
            let series = plot::Series {
                label: task.clone(),
                points,
            };
            match panels.iter_mut().find(|(k, _)| *k == key) {
                Some((_, list)) => list.push(series),
                None => panels.push((key, vec![series])),
            }
        }
    }
    if panels.is_empty() {
        bail!("nothing to plot: no metric of the chosen tasks is in every run");
    }
    let panels = panels
        .into_iter()
        .map(|((metric, filter), series)| {
            let better = base.higher_is_better(&series[0].label, &metric);
            let named = if filter == "none" {
                metric.clone()
            } else {
                format!("{metric} ({filter})")
            };
            plot::Panel {
                title: format!("{named} vs {}", sweep.label),
                y_label: match better {
                    Some(true) => format!("{named}  (higher is better)"),
                    Some(false) => format!("{named}  (lower is better)"),
                    None => named,
                },
                series,
            }
        })
        .collect();
    Ok(plot::Figure {
        x_label: sweep.label.clone(),
        panels,
    })
}

/// A score for the table: 4 decimals, or scientific where that would hide it.
fn number(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e5 || v.abs() < 1e-3) {
        format!("{v:.3e}")
    } else {
        format!("{v:.4}")
    }
}

fn signed(v: f64) -> String {
    let s = number(v);
    if v >= 0.0 { format!("+{s}") } else { s }
}

/// `text` broken into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = 0;
    for word in text.split_whitespace() {
        let len = word.chars().count();
        if line > 0 && line + 1 + len > width {
            out.push('\n');
            line = 0;
        } else if line > 0 {
            out.push(' ');
            line += 1;
        }
        out.push_str(word);
        line += len;
    }
    out.push('\n');
    out
}

fn p_text(p: f64) -> String {
    if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

impl Report {
    /// The tables a person reads: one per run against the baseline.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let alpha = self.alpha;
        let x_note = |x: Option<f64>| x.map(|x| format!("  (x = {x})")).unwrap_or_default();
        for c in &self.comparisons {
            let _ = writeln!(
                out,
                "A (baseline): {}{}",
                self.baseline.path.display(),
                x_note(self.baseline.x)
            );
            let _ = writeln!(out, "B:            {}{}", c.run.path.display(), x_note(c.run.x));
            let show_filter = c.rows.iter().any(|r| r.filter != "none");
            let mut table: Vec<Vec<String>> = vec![
                [
                    "Task",
                    "Metric",
                    "Filter",
                    "n",
                    "A",
                    "B",
                    "Δ (B−A)",
                    "Paired test",
                    "p",
                    "",
                ]
                .map(str::to_owned)
                .to_vec(),
            ];
            for r in &c.rows {
                let (test, p, verdict) = match (&r.test, &r.note) {
                    (Some(t), _) => {
                        let text = match t {
                            Test::Mcnemar { lost, gained, .. } => {
                                format!("McNemar: {gained} gained, {lost} lost")
                            }
                            Test::Bootstrap {
                                ci_level,
                                ci_low,
                                ci_high,
                                ..
                            } => format!(
                                "bootstrap {:.0}% CI [{}, {}]",
                                ci_level * 100.0,
                                signed(*ci_low),
                                signed(*ci_high)
                            ),
                        };
                        let p = t.p_value();
                        let verdict = if p < alpha {
                            let up = r.delta > 0.0;
                            let which = match r.higher_is_better {
                                Some(h) if h == up => "B better",
                                Some(_) => "B worse",
                                None if up => "B higher",
                                None => "B lower",
                            };
                            format!("significant at α={alpha} ({which})")
                        } else {
                            format!("not significant at α={alpha}")
                        };
                        (text, p_text(p), verdict)
                    }
                    (None, note) => ("-".to_owned(), "-".to_owned(), note.clone().unwrap_or_default()),
                };
                table.push(vec![
                    // Subtasks indented under their group, as lm-eval's table shows them.
                    match r.depth {
                        0 => r.task.clone(),
                        d => format!("{}- {}", " ".repeat(2 * d - 1), r.task),
                    },
                    r.metric.clone(),
                    r.filter.clone(),
                    r.n.map_or("-".to_owned(), |n| n.to_string()),
                    number(r.a),
                    number(r.b),
                    signed(r.delta),
                    test,
                    p,
                    verdict,
                ]);
            }
            if !show_filter {
                for row in &mut table {
                    row.remove(2);
                }
            }
            let cols = table[0].len();
            let widths: Vec<usize> = (0..cols)
                .map(|i| table.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
                .collect();
            // Numbers right-aligned, words left-aligned.
            let numeric = |i: usize| {
                let h = table[0][i].as_str();
                matches!(h, "n" | "A" | "B" | "Δ (B−A)" | "p")
            };
            for row in &table {
                let mut line = String::new();
                for (i, cell) in row.iter().enumerate() {
                    let pad = widths[i] - cell.chars().count();
                    if numeric(i) {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    } else {
                        line.push_str(cell);
                        if i + 1 < cols {
                            line.push_str(&" ".repeat(pad));
                        }
                    }
                    if i + 1 < cols {
                        line.push_str("  ");
                    }
                }
                let _ = writeln!(out, "{}", line.trim_end());
            }
            if !c.only_in_baseline.is_empty() {
                let _ = writeln!(out, "only in A: {}", c.only_in_baseline.join(", "));
            }
            if !c.only_in_run.is_empty() {
                let _ = writeln!(out, "only in B: {}", c.only_in_run.join(", "));
            }
            let _ = writeln!(out);
        }
        let tested = self
            .comparisons
            .iter()
            .flat_map(|c| &c.rows)
            .filter(|r| r.test.is_some())
            .count();
        let note = format!(
            "Paired tests on the documents both runs scored (matched by doc_id and doc_hash; a group pools \
             its subtasks). 0/1 metrics: exact McNemar test, two-sided binomial on the documents that \
             changed (gained: right only in B, lost: right only in A). Other metrics: paired bootstrap, {} \
             resamples of the documents (seed {}), {:.0}% percentile interval of Δ. p-values are per row, \
             not corrected for the {tested} rows tested.",
            self.resamples,
            self.seed,
            (1.0 - alpha) * 100.0
        );
        out.push_str(&wrap(&note, 100));
        out
    }
}
