//! Reading a run: the results JSON that `sae-onnx eval --output-path` or lm-eval's `--output_path`
//! wrote, and the `samples_<task>_<date>.jsonl` files beside it (`--log-samples`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::contract::results::{ResultsFile, Scores};

/// One evaluation run.
#[derive(Debug, Clone)]
pub struct Run {
    /// The results JSON.
    pub path: PathBuf,
    /// The results file (`results`, `group_subtasks`, `configs`, `higher_is_better`, ...).
    pub results: ResultsFile,
    /// Per task with a samples file beside the results: its documents' scores.
    pub samples: BTreeMap<String, TaskSamples>,
}

/// One task's samples file.
#[derive(Debug, Clone)]
pub struct TaskSamples {
    pub path: PathBuf,
    pub lines: Vec<SampleLine>,
}

/// The parts of one `samples_*.jsonl` line that a paired test needs.
#[derive(Debug, Clone)]
pub struct SampleLine {
    /// 1-based line number, for messages.
    pub line: usize,
    pub doc_id: i64,
    /// `doc_hash` (sha256 of the document), or the document's JSON where an old file has none.
    pub identity: String,
    pub filter: String,
    /// The per-document metric values, as written (`0.0`, `true`, `[loglikelihood, weight]`).
    pub metrics: Vec<(String, Value)>,
}

/// A results JSON is kilobytes to a few megabytes (mmlu's configs); the bound turns a wrong path
/// (`/dev/zero`, a checkpoint) into an error instead of an out-of-memory kill.
const RESULTS_MAX_BYTES: u64 = 256 << 20;
/// Samples files hold every document and response (hundreds of megabytes for 5-shot MMLU); the
/// bound keeps a wrong file within this machine's memory, as the text is held whole.
const SAMPLES_MAX_BYTES: u64 = 4 << 30;

/// Fields of a samples line that are never metrics (for files without a `metrics` list).
const NOT_METRICS: &[&str] = &[
    "doc_id",
    "doc",
    "target",
    "arguments",
    "resps",
    "filtered_resps",
    "filter",
    "metrics",
    "doc_hash",
    "prompt_hash",
    "target_hash",
];

impl Run {
    /// Reads a results JSON, or the one inside `path` (or inside one of its subfolders, where
    /// `--output-path DIR` puts it under the model's name), and the samples files beside it.
    pub fn load(path: &Path) -> Result<Self> {
        let file = find_results(path)?;
        let text = crate::files::read_text(&file, "results file", RESULTS_MAX_BYTES)?;
        let json: Map<String, Value> = serde_json::from_str(&text).with_context(|| {
            format!(
                "'{}' is not a results JSON (lm-eval's results_<date>.json)",
                file.display()
            )
        })?;
        if !json.get("results").is_some_and(Value::is_object) {
            bail!(
                "'{}' has no \"results\" object: pass the results_<date>.json that `sae-onnx eval \
                 --output-path` or lm-eval's --output_path wrote",
                file.display()
            );
        }
        let results = ResultsFile::deserialize(Value::Object(json))
            .with_context(|| format!("'{}' is not a results file as lm-eval writes it", file.display()))?;
        let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
        // results_<date>.json and samples_<task>_<date>.jsonl share the date; renamed copies
        // (results.json beside samples_<task>.jsonl) are accepted too.
        let date = file
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.strip_prefix("results_"))
            .map(str::to_owned);
        let tasks: Vec<String> = results.configs.keys().cloned().collect();
        let mut samples = BTreeMap::new();
        for task in tasks {
            let candidates = date
                .iter()
                .map(|d| dir.join(format!("samples_{task}_{d}.jsonl")))
                .chain([dir.join(format!("samples_{task}.jsonl"))]);
            if let Some(p) = candidates.into_iter().find(|p| p.is_file()) {
                let lines = read_samples(&p)?;
                samples.insert(task, TaskSamples { path: p, lines });
            }
        }
        Ok(Self {
            path: file,
            results,
            samples,
        })
    }

    /// The `results` entry of a task or group.
    pub fn entry(&self, task: &str) -> Option<&Scores> {
        self.results.results.get(task)
    }

    /// The direct subtasks of a group (`group_subtasks`); empty for a task.
    pub fn subtasks(&self, task: &str) -> Vec<String> {
        self.results.subtasks(task).to_vec()
    }

    /// The tasks (not groups) under `task`, in `group_subtasks` order; `[task]` for a task.
    pub fn leaves(&self, task: &str) -> Vec<String> {
        let children = self.subtasks(task);
        if children.is_empty() {
            return vec![task.to_owned()];
        }
        children.iter().flat_map(|c| self.leaves(c)).collect()
    }

    /// Every task and group in `results`, each group followed by its subtasks, with its depth.
    pub fn task_tree(&self) -> Vec<(String, usize)> {
        let names: Vec<String> = self.results.results.keys().cloned().collect();
        let children: std::collections::HashSet<String> =
            names.iter().flat_map(|n| self.subtasks(n)).collect();
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        fn visit(
            run: &Run,
            names: &[String],
            task: &str,
            depth: usize,
            out: &mut Vec<(String, usize)>,
            seen: &mut std::collections::HashSet<String>,
        ) {
            if !names.iter().any(|n| n == task) || !seen.insert(task.to_owned()) {
                return;
            }
            out.push((task.to_owned(), depth));
            for child in run.subtasks(task) {
                visit(run, names, &child, depth + 1, out, seen);
            }
        }
        for name in names.iter().filter(|n| !children.contains(*n)) {
            visit(self, &names, name, 0, &mut out, &mut seen);
        }
        // Subtasks whose group is missing from `results` still get a row.
        for name in &names {
            visit(self, &names, name, 0, &mut out, &mut seen);
        }
        out
    }

    /// The aggregation lm-eval used for `metric` of a task: its config's `metric_list`, else the
    /// registry default.
    pub fn aggregation(&self, task: &str, metric: &str) -> String {
        let config = self.results.config(task).unwrap_or_default();
        config
            .aggregation(metric)
            .unwrap_or_else(|| super::stats::Aggregation::default_name(metric))
            .to_owned()
    }

    /// `higher_is_better[task][metric]`, where recorded.
    pub fn higher_is_better(&self, task: &str, metric: &str) -> Option<bool> {
        self.results.higher_is_better(task, metric)
    }
}

/// The results JSON named by `path`: the file itself, or the single `results_*.json` in the folder
/// or one level below it.
fn find_results(path: &Path) -> Result<PathBuf> {
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if path.exists() && !path.is_dir() {
        bail!(
            "'{}' is not a regular file or a folder: pass a results_<date>.json or the folder `eval --output-path` wrote it to",
            path.display()
        );
    }
    if !path.is_dir() {
        bail!(
            "'{}' does not exist: pass a results_<date>.json or the folder `eval --output-path` wrote it to",
            path.display()
        );
    }
    let results_in = |dir: &Path| -> Vec<PathBuf> {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.is_file()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("results") && n.ends_with(".json"))
            })
            .collect();
        found.sort();
        found
    };
    let mut found = results_in(path);
    if found.is_empty() {
        let mut subdirs: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot list '{}'", path.display()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        subdirs.sort();
        found = subdirs.iter().flat_map(|d| results_in(d)).collect();
    }
    match found.len() {
        0 => bail!(
            "no results_*.json in '{}' or its subfolders: pass the results file of `sae-onnx eval \
             --output-path DIR --log-samples` (or lm-eval's --output_path)",
            path.display()
        ),
        1 => Ok(found.remove(0)),
        n => {
            let list: Vec<String> = found
                .iter()
                .take(6)
                .map(|p| format!("  {}", p.display()))
                .collect();
            bail!(
                "'{}' holds {n} results files; name the one to compare:\n{}{}",
                path.display(),
                list.join("\n"),
                if n > 6 { "\n  ..." } else { "" }
            )
        }
    }
}

fn read_samples(path: &Path) -> Result<Vec<SampleLine>> {
    let text = crate::files::read_text(path, "samples file", SAMPLES_MAX_BYTES)?;
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let at = || format!("{}:{line}", path.display());
        let value: Value = serde_json::from_str(raw)
            .with_context(|| format!("{}: not a JSON line of lm-eval's --log_samples output", at()))?;
        let Value::Object(mut obj) = value else {
            bail!("{}: expected a JSON object (a logged sample)", at());
        };
        let doc_id = obj.get("doc_id").and_then(Value::as_i64).with_context(|| {
            format!(
                "{}: no integer doc_id; is this a samples file of --log-samples?",
                at()
            )
        })?;
        let identity = match obj.get("doc_hash").and_then(Value::as_str) {
            Some(h) => h.to_owned(),
            None => serde_json::to_string(obj.get("doc").unwrap_or(&Value::Null))?,
        };
        let filter = obj
            .get("filter")
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned();
        let names: Vec<String> = match obj.get("metrics").and_then(Value::as_array) {
            Some(list) => list
                .iter()
                .filter_map(|m| m.as_str().map(str::to_owned))
                .collect(),
            None => obj
                .keys()
                .filter(|k| !NOT_METRICS.contains(&k.as_str()))
                .cloned()
                .collect(),
        };
        let metrics = names
            .into_iter()
            .filter_map(|m| obj.remove(&m).map(|v| (m, v)))
            .collect();
        out.push(SampleLine {
            line,
            doc_id,
            identity,
            filter,
            metrics,
        });
    }
    Ok(out)
}
