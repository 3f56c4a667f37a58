//! `sweep GRID.yaml --status` and `--report`: which units are done, and once all are, one table
//! of every plan × coefficient × task × metric (CSV and JSON, with stderr), `compare`'s paired
//! tests of each coefficient against the plan's coefficient 0, and one plot per plan and task.
//! Sharded units are merged first ([`crate::eval::merge`]), exactly.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::grid::Grid;
use super::units::{self, Unit};
use crate::compare::{self, CompareOptions, Run};
use crate::eval::merge::{self, MergeOptions};

/// Each unit and its state.
pub struct Status {
    pub done: Vec<String>,
    /// Units not done, with the worker running them where one holds a fresh lock.
    pub missing: Vec<(String, Option<String>)>,
}

pub fn status(grid: &Grid) -> Status {
    let mut status = Status {
        done: Vec::new(),
        missing: Vec::new(),
    };
    for unit in units::expand(grid) {
        let dir = units::unit_dir(grid, &unit);
        if dir.is_dir() {
            status.done.push(unit.id);
        } else {
            status.missing.push((unit.id, super::run::holder(&dir)));
        }
    }
    status
}

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct ReportRow {
    pub model: String,
    pub plan: String,
    pub coefficient: f64,
    pub task: String,
    pub metric: String,
    pub filter: String,
    pub value: Option<f64>,
    pub stderr: Option<f64>,
    /// Against the plan's coefficient 0: the difference and the paired test's p-value.
    pub delta: Option<f64>,
    pub test: Option<String>,
    pub p_value: Option<f64>,
    pub significant: Option<bool>,
}

pub struct ReportFiles {
    pub csv: PathBuf,
    pub json: PathBuf,
    pub plots: Vec<PathBuf>,
    pub rows: Vec<ReportRow>,
}

/// One plan × coefficient × task's run, merged from its shards where the grid shards.
struct GridRun {
    model: usize,
    plan: usize,
    task: usize,
    coefficient: f64,
    run: Run,
}

/// Merges, tabulates, tests and plots a finished grid under `<output>/report/` (its own
/// files, replaced on each report).
pub fn report(grid: &Grid, options: &CompareOptions) -> Result<ReportFiles> {
    let state = status(grid);
    if !state.missing.is_empty() {
        let shown: Vec<&str> = state.missing.iter().take(5).map(|(id, _)| id.as_str()).collect();
        bail!(
            "{}: {} of {} units are not done (e.g. {}): run the workers first; `--status` lists them",
            grid.path.display(),
            state.missing.len(),
            state.missing.len() + state.done.len(),
            shown.join(", ")
        );
    }
    let out = grid.output.join("report");
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create '{}'", out.display()))?;
    let runs = load_runs(grid, &out)?;
    let mut rows = Vec::new();
    let mut tests = Vec::new();
    let mut plots = Vec::new();
    for (m, model) in grid.models.iter().enumerate() {
        for (p, plan) in grid.plans.iter().enumerate() {
            for (t, task) in grid.tasks.iter().enumerate() {
                let mut group: Vec<&GridRun> = runs
                    .iter()
                    .filter(|r| (r.model, r.plan, r.task) == (m, p, t))
                    .collect();
                // The baseline first, then the coefficients in the grid's order.
                group.sort_by_key(|r| r.coefficient != 0.0);
                let base_row = rows.len();
                for r in &group {
                    rows.extend(rows_of(&model.label, &plan.name, r));
                }
                if group.len() < 2 {
                    continue;
                }
                let plan_runs: Vec<Run> = group.iter().map(|r| r.run.clone()).collect();
                let x: Vec<Option<f64>> = group.iter().map(|r| Some(r.coefficient)).collect();
                if group[0].coefficient == 0.0 {
                    let tested = compare::compare(&plan_runs, &x, options)
                        .with_context(|| format!("plan '{}', task '{}'", plan.name, task.label))?;
                    for comparison in &tested.comparisons {
                        for row in &comparison.rows {
                            let target = rows[base_row..].iter_mut().find(|r| {
                                Some(r.coefficient) == comparison.run.x
                                    && r.task == row.task
                                    && r.metric == row.metric
                                    && r.filter == row.filter
                            });
                            if let Some(target) = target {
                                target.delta = Some(row.delta);
                                target.test = row.test.as_ref().map(test_name);
                                target.p_value = row.test.as_ref().map(compare::Test::p_value);
                                target.significant = row.significant;
                            }
                        }
                    }
                    tests.push(serde_json::json!({
                        "model": model.label, "plan": plan.name, "task": task.label, "compare": tested,
                    }));
                }
                // The plot's x axis ascends.
                let mut order: Vec<usize> = (0..group.len()).collect();
                order.sort_by(|&a, &b| group[a].coefficient.total_cmp(&group[b].coefficient));
                let sorted: Vec<Run> = order.iter().map(|&i| plan_runs[i].clone()).collect();
                let xs: Vec<f64> = order.iter().map(|&i| group[i].coefficient).collect();
                let sweep = compare::sweep_values(&sorted, Some(&xs))?;
                let figure = compare::sweep_figure(&sorted, &sweep, options)?;
                let png = out.join(format!("plot_{}_{}_{}.png", model.label, plan.name, task.label));
                compare::plot::write_png(&png, &figure)?;
                plots.push(png);
            }
        }
    }
    let csv = out.join("results.csv");
    crate::files::write_atomic(&csv, csv_text(&rows)?.as_bytes())?;
    let json = out.join("results.json");
    let text = serde_json::to_string_pretty(&serde_json::json!({"rows": rows, "tests": tests}))?;
    crate::files::write_atomic(&json, format!("{text}\n").as_bytes())?;
    Ok(ReportFiles {
        csv,
        json,
        plots,
        rows,
    })
}

fn test_name(test: &compare::Test) -> String {
    match test {
        compare::Test::Mcnemar { .. } => "mcnemar".to_owned(),
        compare::Test::Bootstrap { .. } => "bootstrap".to_owned(),
    }
}

/// Every plan × coefficient × task's run: the unit's folder, or its shards merged once into
/// `report/merged/<run>/`.
fn load_runs(grid: &Grid, out: &Path) -> Result<Vec<GridRun>> {
    let all = units::expand(grid);
    let mut runs = Vec::new();
    let mut seen: Vec<(usize, usize, usize, u64)> = Vec::new();
    for unit in &all {
        let key = (unit.model, unit.plan, unit.task, unit.coefficient.to_bits());
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        let dir = match unit.shard {
            None => units::unit_dir(grid, unit),
            Some(_) => merged_run(grid, &all, unit, out)?,
        };
        runs.push(GridRun {
            model: unit.model,
            plan: unit.plan,
            task: unit.task,
            coefficient: unit.coefficient,
            run: Run::load(&results_folder(&dir)?)?,
        });
    }
    Ok(runs)
}

/// The shards of `unit`'s run merged (once: a finished unit never changes).
fn merged_run(grid: &Grid, all: &[Unit], unit: &Unit, out: &Path) -> Result<PathBuf> {
    let run_id = unit.id.rsplit_once('/').map_or(unit.id.as_str(), |(run, _)| run);
    let dir = out.join("merged").join(run_id);
    if dir.is_dir() {
        return Ok(dir);
    }
    let dirs: Vec<PathBuf> = all
        .iter()
        .filter(|u| {
            (u.model, u.plan, u.task) == (unit.model, unit.plan, unit.task)
                && u.coefficient == unit.coefficient
        })
        .map(|u| units::unit_dir(grid, u))
        .collect();
    let parent = crate::files::parent_dir(&dir).to_path_buf();
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create '{}'", parent.display()))?;
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let temp = crate::files::temp_dir(&parent, &name)?;
    merge::merge(&MergeOptions {
        dirs,
        output_path: temp.path().to_path_buf(),
        force: false,
    })
    .with_context(|| format!("merging the shards of {run_id}"))?;
    let kept = temp.keep();
    if std::fs::rename(&kept, &dir).is_err() && dir.is_dir() {
        let _ = std::fs::remove_dir_all(&kept);
    }
    Ok(dir)
}

/// The folder holding a run's results file, at most three folders down.
fn results_folder(dir: &Path) -> Result<PathBuf> {
    fn walk(dir: &Path, depth: usize) -> Option<PathBuf> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        if entries.iter().any(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("results_"))
        }) {
            return Some(dir.to_path_buf());
        }
        if depth == 0 {
            return None;
        }
        entries
            .iter()
            .filter(|p| p.is_dir())
            .find_map(|p| walk(p, depth - 1))
    }
    walk(dir, 3).with_context(|| format!("'{}' holds no results file", dir.display()))
}

fn rows_of(model: &str, plan: &str, r: &GridRun) -> Vec<ReportRow> {
    let mut rows = Vec::new();
    for (task, scores) in &r.run.results.results {
        for v in scores.values() {
            rows.push(ReportRow {
                model: model.to_owned(),
                plan: plan.to_owned(),
                coefficient: r.coefficient,
                task: task.clone(),
                metric: v.metric.to_owned(),
                filter: v.filter.to_owned(),
                value: v.value.as_f64(),
                stderr: scores.stderr(v.metric, v.filter).and_then(Value::as_f64),
                delta: None,
                test: None,
                p_value: None,
                significant: None,
            });
        }
    }
    rows
}

fn csv_text(rows: &[ReportRow]) -> Result<String> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    for row in rows {
        writer.serialize(row)?;
    }
    Ok(String::from_utf8(writer.into_inner()?)?)
}
