//! A coefficient sweep: each run's steering coefficient, and the `--plot` figure of the metrics
//! against it.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Result, bail};
use serde_json::Value;

use super::report::{score_keys, stderr_of};
use super::{CompareOptions, Run, plot};

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
    let sweep = |r: &Run| {
        r.results
            .run
            .get("sae_onnx")
            .and_then(|s| s.get("sweep"))
            .cloned()
    };
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
        let patches = run.results.run.get("steering").and_then(Value::as_array);
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
    let xs = plot_coefficients(runs, sweep)?;
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
    let panels = series_by_metric(runs, &xs, &tasks, options)?;
    if panels.is_empty() {
        bail!("nothing to plot: no metric of the chosen tasks is in every run");
    }
    let panels = panels.into_iter().map(|m| panel(base, m, &sweep.label)).collect();
    Ok(plot::Figure {
        x_label: sweep.label.clone(),
        panels,
    })
}

/// Every run's coefficient, or an error naming the first run that has none.
fn plot_coefficients(runs: &[Run], sweep: &SweepValues) -> Result<Vec<f64>> {
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
    Ok(xs)
}

/// The series of one metric and filter: one panel of the figure.
struct MetricSeries {
    metric: String,
    filter: String,
    series: Vec<plot::Series>,
}

/// Per (metric, filter) of the baseline's `tasks`, in first-seen order: one series per task, its
/// score in each run that has it.
fn series_by_metric(
    runs: &[Run],
    xs: &[f64],
    tasks: &[String],
    options: &CompareOptions,
) -> Result<Vec<MetricSeries>> {
    let base = &runs[0];
    let mut panels: Vec<MetricSeries> = Vec::new();
    for task in tasks {
        let Some(entry) = base.entry(task) else {
            bail!("--task {task}: no such task in '{}'", base.path.display());
        };
        for (metric, filter, _) in score_keys(entry) {
            if !options.metrics.is_empty() && !options.metrics.contains(&metric) {
                continue;
            }
            let mut points = Vec::new();
            for (run, &x) in runs.iter().zip(xs) {
                let Some(e) = run.entry(task) else { continue };
                let Some(y) = e.value(&format!("{metric},{filter}")) else {
                    continue;
                };
                points.push((x, y, stderr_of(e, &metric, &filter)));
            }
            let series = plot::Series {
                label: task.clone(),
                points,
            };
            match panels
                .iter_mut()
                .find(|p| p.metric == metric && p.filter == filter)
            {
                Some(panel) => panel.series.push(series),
                None => panels.push(MetricSeries {
                    metric,
                    filter,
                    series: vec![series],
                }),
            }
        }
    }
    Ok(panels)
}

/// One metric's panel: its title and y label say what is plotted and which way is better.
fn panel(base: &Run, m: MetricSeries, x_label: &str) -> plot::Panel {
    let MetricSeries {
        metric,
        filter,
        series,
    } = m;
    let better = base.higher_is_better(&series[0].label, &metric);
    let named = if filter == "none" {
        metric
    } else {
        format!("{metric} ({filter})")
    };
    plot::Panel {
        title: format!("{named} vs {x_label}"),
        y_label: match better {
            Some(true) => format!("{named}  (higher is better)"),
            Some(false) => format!("{named}  (lower is better)"),
            None => named,
        },
        series,
    }
}
