//! `GRID.yaml`: a steering study in one file (models, steering plans with their coefficients,
//! tasks, eval options, output folder), read strictly: an unknown key, a plan that does not
//! parse, a task that does not exist or a model that is not there is refused before any work,
//! naming the file and line.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use crate::eval::groups::TaskTree;
use crate::eval::task_index::TaskIndex;
use crate::steer::plan::SteeringPlan;

const GRID_MAX_BYTES: u64 = 1 << 20;

/// The file as written (paths relative to its folder).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GridFile {
    model: Option<PathBuf>,
    models: Option<Vec<PathBuf>>,
    plans: Vec<PlanEntry>,
    tasks: Vec<String>,
    #[serde(default)]
    eval: EvalEntry,
    /// Document shards per plan × coefficient × task (default 1: none).
    shards: Option<usize>,
    /// Workers of a Kubernetes Indexed Job (`--worker auto` without Slurm).
    workers: Option<usize>,
    output: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanEntry {
    name: String,
    csv: PathBuf,
    coefficients: Vec<f64>,
    /// The coefficient input to sweep, where the plan's patch has several (`steer.coeff.<k>`).
    input: Option<String>,
}

/// Eval's options, as `sae-onnx eval` takes them.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EvalEntry {
    num_fewshot: Option<usize>,
    limit: Option<f64>,
    batch_size: Option<usize>,
    device: Option<String>,
    seed: Option<u64>,
    log_samples: Option<bool>,
    max_length: Option<usize>,
    #[serde(default)]
    include_path: Vec<PathBuf>,
}

/// A grid, checked, with its paths resolved.
#[derive(Debug, Clone)]
pub struct Grid {
    pub path: PathBuf,
    pub models: Vec<GridModel>,
    pub plans: Vec<Plan>,
    /// As written (a task, group, tag or YAML path resolved against the grid's folder).
    pub tasks: Vec<GridTask>,
    pub eval: EvalSettings,
    pub shards: usize,
    pub workers: Option<usize>,
    pub output: PathBuf,
}

#[derive(Debug, Clone)]
pub struct GridModel {
    /// The model's file stem: its folder in unit ids.
    pub label: String,
    pub path: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub name: String,
    pub csv: PathBuf,
    pub coefficients: Vec<f64>,
    pub input: Option<String>,
}

#[derive(Debug, Clone)]
pub struct GridTask {
    /// Its folder in unit ids.
    pub label: String,
    /// What `eval --task` is given.
    pub name: String,
}

#[derive(Debug, Clone)]
pub struct EvalSettings {
    pub num_fewshot: Option<usize>,
    pub limit: Option<f64>,
    pub batch_size: usize,
    pub device: String,
    pub seed: u64,
    pub log_samples: bool,
    pub max_length: Option<usize>,
    pub include_paths: Vec<PathBuf>,
}

impl Grid {
    /// Reads and checks `path`: every error names the file and, where it can, the line.
    pub fn load(path: &Path) -> Result<Self> {
        let text = crate::files::read_text(path, "grid file", GRID_MAX_BYTES)?;
        let file: GridFile = serde_yaml_ng::from_str(&text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!(":{}:{}", l.line(), l.column()))
                .unwrap_or_default();
            anyhow!("{}{at}: {e}", path.display())
        })?;
        let at = |needle: &str, message: String| {
            anyhow!("{}:{}: {message}", path.display(), line_of(&text, needle))
        };
        let dir = crate::files::parent_dir(path);
        let resolve = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                dir.join(p)
            }
        };

        let models = match (file.model, file.models) {
            (Some(m), None) => vec![m],
            (None, Some(ms)) if !ms.is_empty() => ms,
            (Some(_), Some(_)) => bail!("{}: give `model` or `models`, not both", path.display()),
            _ => bail!(
                "{}: no `model` (an .onnx file) nor `models` (a list of them)",
                path.display()
            ),
        };
        let mut grid_models: Vec<GridModel> = Vec::new();
        for written in models {
            let shown = written.display().to_string();
            let model = resolve(&written);
            if !model.is_file() {
                return Err(at(&shown, format!("model '{}' is not a file", model.display())));
            }
            let label = written
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let label = label.strip_suffix(".onnx").unwrap_or(&label).to_owned();
            if grid_models.iter().any(|m| m.label == label) {
                return Err(at(
                    &shown,
                    format!("two models are named '{label}': give each file its own name"),
                ));
            }
            grid_models.push(GridModel { label, path: model });
        }

        if file.plans.is_empty() {
            return Err(at(
                "plans",
                "`plans` is empty: give at least one steering plan".into(),
            ));
        }
        let mut plans: Vec<Plan> = Vec::new();
        for entry in file.plans {
            let name_at = |m: String| at(&format!("name: {}", entry.name), m);
            if !is_label(&entry.name) {
                return Err(name_at(format!(
                    "plan name '{}' must be letters, digits, '-', '_' or '.' (it names folders)",
                    entry.name
                )));
            }
            if plans.iter().any(|p| p.name == entry.name) {
                return Err(name_at(format!("two plans are named '{}'", entry.name)));
            }
            let csv = resolve(&entry.csv);
            SteeringPlan::from_csv_file(&csv).map_err(|e| {
                at(
                    &entry.csv.display().to_string(),
                    format!("plan '{}': {e:#}", entry.name),
                )
            })?;
            if entry.coefficients.is_empty() {
                return Err(name_at(format!("plan '{}' has no coefficients", entry.name)));
            }
            for (i, c) in entry.coefficients.iter().enumerate() {
                if !c.is_finite() {
                    return Err(name_at(format!(
                        "plan '{}': coefficient {c} is not a finite number",
                        entry.name
                    )));
                }
                if entry.coefficients[..i].contains(c) {
                    return Err(name_at(format!(
                        "plan '{}' lists coefficient {c} twice",
                        entry.name
                    )));
                }
            }
            plans.push(Plan {
                name: entry.name,
                csv,
                coefficients: entry.coefficients,
                input: entry.input,
            });
        }

        let eval = EvalSettings {
            num_fewshot: file.eval.num_fewshot,
            limit: file.eval.limit,
            batch_size: file.eval.batch_size.unwrap_or(16),
            device: file.eval.device.unwrap_or_else(|| "cpu".to_owned()),
            seed: file.eval.seed.unwrap_or(crate::eval::task::FEWSHOT_SEED),
            log_samples: file.eval.log_samples.unwrap_or(true),
            max_length: file.eval.max_length,
            include_paths: file.eval.include_path.iter().map(|p| resolve(p)).collect(),
        };
        if let Some(limit) = eval.limit
            && !(limit.is_finite() && limit > 0.0)
        {
            return Err(at(
                "limit",
                format!("limit {limit} is not a number of documents nor a fraction above 0"),
            ));
        }
        if eval.batch_size == 0 {
            return Err(at("batch_size", "batch_size must be at least 1".into()));
        }
        eval.device
            .parse::<crate::infer::runtime::Device>()
            .map_err(|e| at("device", format!("{e:#}")))?;
        for dir in &eval.include_paths {
            if !dir.is_dir() {
                return Err(at(
                    "include_path",
                    format!("task folder '{}' is not a folder", dir.display()),
                ));
            }
        }

        if file.tasks.is_empty() {
            return Err(at("tasks", "`tasks` is empty: give at least one task".into()));
        }
        let mut dirs = vec![crate::eval::bundled::tasks_dir()?];
        dirs.extend(eval.include_paths.iter().cloned());
        let mut index = TaskIndex::scan(&dirs)?;
        let mut tasks: Vec<GridTask> = Vec::new();
        for written in &file.tasks {
            let is_file = written.ends_with(".yaml") || written.ends_with(".yml");
            let name = if is_file {
                resolve(Path::new(written)).display().to_string()
            } else {
                written.clone()
            };
            TaskTree::resolve(&mut index, &name).map_err(|e| at(written, format!("{e:#}")))?;
            let label = if is_file {
                Path::new(written)
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default()
            } else {
                written.clone()
            };
            let label: String = label
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if tasks.iter().any(|t| t.label == label) {
                return Err(at(
                    written,
                    format!("two tasks would share the folder name '{label}'"),
                ));
            }
            tasks.push(GridTask { label, name });
        }

        let shards = file.shards.unwrap_or(1);
        if shards == 0 {
            return Err(at("shards", "shards must be at least 1".into()));
        }
        if file.workers == Some(0) {
            return Err(at("workers", "workers must be at least 1".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            models: grid_models,
            plans,
            tasks,
            eval,
            shards,
            workers: file.workers,
            output: resolve(&file.output),
        })
    }
}

/// A name usable as one folder.
fn is_label(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// The 1-based line where `needle` first appears (the file's first line if nowhere).
fn line_of(text: &str, needle: &str) -> usize {
    text.lines().position(|l| l.contains(needle)).map_or(1, |i| i + 1)
}

/// The grid's output folder, created if missing.
pub fn output_dir(grid: &Grid) -> Result<&Path> {
    std::fs::create_dir_all(&grid.output).with_context(|| {
        format!(
            "{}: cannot create output folder '{}'",
            grid.path.display(),
            grid.output.display()
        )
    })?;
    Ok(&grid.output)
}
