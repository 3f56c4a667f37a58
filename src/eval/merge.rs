//! `sae-onnx merge`: a complete set of `eval --shard K/N` outputs combined into the results and
//! samples files of the unsharded run. Per-document metric values are re-aggregated by the code
//! `eval` scores with ([`super::assemble`]), never averaged from shard results; sample lines
//! are put back in the unsharded order (by filter, then document). A set that is incomplete,
//! repeats a shard, or mixes runs is refused, naming the files and what differs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::assemble::{self, TaskPart};
use super::output;
use super::shard::{self, RECORD_FORMAT, ShardRecord};
use super::task_output::TaskOutput;
use crate::contract::results::{ResultsFile, SweepValue};
use crate::files::{self, Inputs};

pub struct MergeOptions {
    /// Each shard's `--output-path` (or any folder above its record, up to [`SEARCH_DEPTH`]).
    pub dirs: Vec<PathBuf>,
    pub output_path: PathBuf,
    pub force: bool,
}

/// One merged run: a plain run, or one point of a sweep.
pub struct MergedRun {
    pub sweep: Option<SweepValue>,
    pub shards: usize,
    pub results: ResultsFile,
    pub results_path: PathBuf,
    pub table: String,
}

/// Folders below a given one searched for records: `<out>/<model>/` and
/// `<out>/sweep_<input>_<value>/<model>/`.
const SEARCH_DEPTH: usize = 3;
/// A record holds a few numbers per document: far below this even for MMLU.
const MAX_RECORD_BYTES: u64 = 1 << 30;
const MAX_RESULTS_BYTES: u64 = 256 << 20;
const MAX_SAMPLES_BYTES: u64 = 16 << 30;

/// A shard's record and the files beside it.
struct ShardFiles {
    path: PathBuf,
    record: ShardRecord,
    results: ResultsFile,
}

/// Merges every run found under `options.dirs` (one, or one per sweep point).
pub fn merge(options: &MergeOptions) -> Result<Vec<MergedRun>> {
    let mut inputs = Inputs::new();
    let mut by_run: Vec<(Option<Value>, Vec<ShardFiles>)> = Vec::new();
    for dir in &options.dirs {
        let found = find_records(dir)?;
        if found.is_empty() {
            bail!(
                "'{}' holds no shard record (shard_<K>_of_<N>_<date>.json): give the --output-path of \
                 an `eval --shard K/N` run that finished (the record is its last file)",
                dir.display()
            );
        }
        for path in found {
            let shard = load_shard(&path, &mut inputs)?;
            let key = shard.record.identity.sweep.clone();
            match by_run.iter_mut().find(|(k, _)| *k == key) {
                Some((_, shards)) => shards.push(shard),
                None => by_run.push((key, vec![shard])),
            }
        }
    }
    // Every output is checked before the first is written.
    let mut plans = Vec::with_capacity(by_run.len());
    for (sweep, shards) in by_run {
        let shards = complete_set(shards)?;
        let sweep: Option<SweepValue> = sweep.map(serde_json::from_value).transpose()?;
        let output_path = match &sweep {
            Some(s) => options.output_path.join(format!("sweep_{}_{}", s.input, s.value)),
            None => options.output_path.clone(),
        };
        let model_name = shards[0].record.identity.model_name.clone();
        output::check(&output_path, &model_name, &inputs, options.force)?;
        plans.push((sweep, shards, output_path, model_name));
    }
    let mut merged = Vec::with_capacity(plans.len());
    for (sweep, shards, output_path, model_name) in plans {
        let (results, samples) = merged_files(&shards)?;
        let written = output::write(
            &output_path,
            &model_name,
            &results,
            &samples,
            &inputs,
            options.force,
        )?;
        merged.push(MergedRun {
            sweep,
            shards: shards.len(),
            table: super::table::render(&results),
            results,
            results_path: written.results,
        });
    }
    Ok(merged)
}

/// The shard records in `dir` and the folders below it, in name order.
fn find_records(dir: &Path) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read folder '{}'", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for path in entries {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if path.is_file() && shard::is_record_file_name(&name) {
                out.push(path);
            } else if path.is_dir() && depth < SEARCH_DEPTH {
                walk(&path, depth + 1, out)?;
            }
        }
        Ok(())
    }
    if !dir.is_dir() {
        bail!("'{}' is not a folder of shard outputs", dir.display());
    }
    let mut out = Vec::new();
    walk(dir, 0, &mut out)?;
    Ok(out)
}

fn load_shard(path: &Path, inputs: &mut Inputs) -> Result<ShardFiles> {
    let text = files::read_text(path, "shard record", MAX_RECORD_BYTES)?;
    let record: ShardRecord = serde_json::from_str(&text).with_context(|| {
        format!(
            "'{}' is not a shard record this sae-onnx reads (format {RECORD_FORMAT})",
            path.display()
        )
    })?;
    if record.sae_onnx_shard_record != RECORD_FORMAT {
        bail!(
            "'{}' is a shard record of format {}, this sae-onnx reads format {RECORD_FORMAT}",
            path.display(),
            record.sae_onnx_shard_record
        );
    }
    let results_path = files::parent_dir(path).join(&record.results_file);
    let results_text = files::read_text(&results_path, "shard results", MAX_RESULTS_BYTES)
        .with_context(|| format!("the results file of shard record '{}'", path.display()))?;
    let results: ResultsFile = serde_json::from_str(&results_text)
        .with_context(|| format!("'{}' is not a results file", results_path.display()))?;
    inputs.add(path);
    inputs.add(&results_path);
    for task in &record.tasks {
        if let Some(name) = &task.samples_file {
            inputs.add(&files::parent_dir(path).join(name));
        }
    }
    Ok(ShardFiles {
        path: path.to_path_buf(),
        record,
        results,
    })
}

/// The shards of one run, ordered by index: refused unless all N are there, once each, and
/// they agree on what was run.
fn complete_set(mut shards: Vec<ShardFiles>) -> Result<Vec<ShardFiles>> {
    shards.sort_by_key(|s| s.record.shard.index);
    let first = &shards[0];
    for other in &shards[1..] {
        let (a, b) = (&first.record, &other.record);
        let differ = |what: &str, x: String, y: String| {
            anyhow::anyhow!(
                "'{}' and '{}' are not shards of one run: they differ in {what}: {x} vs {y}",
                first.path.display(),
                other.path.display()
            )
        };
        if a.shard.count != b.shard.count {
            return Err(differ(
                "the shard count N",
                a.shard.count.to_string(),
                b.shard.count.to_string(),
            ));
        }
        if let Some((what, x, y)) = a.identity.difference(&b.identity) {
            return Err(differ(what, x, y));
        }
        if a.roots != b.roots {
            return Err(differ(
                "the task tree",
                json!(a.roots).to_string(),
                json!(b.roots).to_string(),
            ));
        }
        for (ta, tb) in a.tasks.iter().zip(&b.tasks) {
            if ta.label != tb.label || ta.documents != tb.documents || ta.filters != tb.filters {
                return Err(differ(
                    &format!("task '{}'", ta.label.name),
                    format!("{} documents", ta.documents),
                    format!("{} documents", tb.documents),
                ));
            }
            let name = &ta.label.name;
            if first.results.configs.get(name) != other.results.configs.get(name) {
                return Err(differ(
                    &format!("the config of task '{name}'"),
                    "one".into(),
                    "another".into(),
                ));
            }
        }
    }
    let count = first.record.shard.count;
    let have: Vec<usize> = shards.iter().map(|s| s.record.shard.index).collect();
    let missing: Vec<String> = (0..count)
        .filter(|k| !have.contains(k))
        .map(|k| format!("{k}/{count}"))
        .collect();
    if !missing.is_empty() {
        bail!(
            "the shard set of '{}' is incomplete: {} of {count} shards found; missing {} \
             (run `eval --shard` for them, or give their folders)",
            first.record.identity.model_name,
            shards.len(),
            missing.join(", ")
        );
    }
    // Indices are sorted: a repeat is a neighbour.
    for pair in shards.windows(2) {
        if pair[0].record.shard.index == pair[1].record.shard.index {
            bail!(
                "shard {} appears twice: '{}' and '{}'; keep one",
                pair[0].record.shard,
                pair[0].path.display(),
                pair[1].path.display()
            );
        }
    }
    Ok(shards)
}

/// Per task, its sample lines.
type SampleLines = Vec<(String, Vec<Value>)>;

/// The unsharded run's results file and sample lines, from a complete set.
fn merged_files(shards: &[ShardFiles]) -> Result<(ResultsFile, SampleLines)> {
    let first = &shards[0];
    let log_samples = first.record.identity.log_samples;
    let mut parts = Vec::with_capacity(first.record.tasks.len());
    let mut samples = Vec::new();
    for (i, task) in first.record.tasks.iter().enumerate() {
        let name = &task.label.name;
        let mut items: BTreeMap<String, Vec<(usize, super::metrics::MetricItem)>> = BTreeMap::new();
        let mut doc_ids = Vec::with_capacity(task.documents);
        for shard in shards {
            let part = &shard.record.tasks[i];
            doc_ids.extend_from_slice(&part.doc_ids);
            for (key, values) in &part.items {
                if values.len() != part.doc_ids.len() {
                    bail!(
                        "'{}': task '{name}' has {} values of {key} for {} documents",
                        shard.path.display(),
                        values.len(),
                        part.doc_ids.len()
                    );
                }
                items
                    .entry(key.clone())
                    .or_default()
                    .extend(part.doc_ids.iter().copied().zip(values.iter().copied()));
            }
        }
        doc_ids.sort_unstable();
        if doc_ids != (0..task.documents).collect::<Vec<_>>() {
            bail!(
                "the shards of '{}' do not cover task '{name}''s {} documents once each: \
                 were they written by this sae-onnx's `eval --shard`?",
                first.path.display(),
                task.documents
            );
        }
        // Document order, as the unsharded run summed them: the means are bit for bit its own.
        let items = items
            .into_iter()
            .map(|(key, mut values)| {
                values.sort_by_key(|(doc, _)| *doc);
                (key, values.into_iter().map(|(_, v)| v).collect())
            })
            .collect();
        if log_samples {
            samples.push((name.clone(), merged_samples(shards, i)?));
        }
        let r = &first.results;
        let original = r
            .n_samples
            .get(name)
            .map(|c| c.original)
            .with_context(|| format!("'{}' has no n-samples of task '{name}'", first.path.display()))?;
        parts.push(TaskPart {
            label: task.label.clone(),
            output: TaskOutput {
                items,
                samples: Vec::new(),
            },
            documents: task.documents,
            original,
            config: r.configs.get(name).cloned().unwrap_or(Value::Null),
            version: r.versions.get(name).cloned().unwrap_or(Value::Null),
            n_shot: r.n_shot.get(name).cloned().unwrap_or(Value::Null),
            higher_is_better: r.higher_is_better.get(name).cloned().unwrap_or_default(),
        });
    }
    let mut file = assemble::results_file(&parts, &first.record.roots);
    file.run = first.results.run.clone();
    file.run.insert(
        "task_hashes".into(),
        serde_json::to_value(assemble::task_hashes(&samples))?,
    );
    // The run's time is the shards' together.
    let seconds: f64 = shards
        .iter()
        .filter_map(|s| {
            s.results
                .run
                .get("total_evaluation_time_seconds")?
                .as_str()?
                .parse::<f64>()
                .ok()
        })
        .sum();
    file.run
        .insert("total_evaluation_time_seconds".into(), json!(seconds.to_string()));
    Ok((file, samples))
}

/// Task `i`'s sample lines of every shard, in the unsharded order: by filter (as the task lists
/// them), then by document.
fn merged_samples(shards: &[ShardFiles], i: usize) -> Result<Vec<Value>> {
    let filters = &shards[0].record.tasks[i].filters;
    let mut keyed = Vec::new();
    for shard in shards {
        let task = &shard.record.tasks[i];
        let name = task.samples_file.as_deref().with_context(|| {
            format!(
                "'{}' ran with --log-samples but lists no samples file of task '{}'",
                shard.path.display(),
                task.label.name
            )
        })?;
        let path = files::parent_dir(&shard.path).join(name);
        let text = files::read_text(&path, "samples file", MAX_SAMPLES_BYTES)?;
        for (n, line) in text.lines().enumerate() {
            let value: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a sample line", path.display(), n + 1))?;
            let doc = value["doc_id"].as_u64();
            let filter = value["filter"]
                .as_str()
                .and_then(|f| filters.iter().position(|x| x == f));
            let (Some(doc), Some(filter)) = (doc, filter) else {
                bail!(
                    "{}:{}: a sample line without a doc_id or with a filter the task does not have",
                    path.display(),
                    n + 1
                );
            };
            keyed.push(((filter, doc), value));
        }
    }
    keyed.sort_by_key(|(key, _)| *key);
    if keyed.windows(2).any(|w| w[0].0 == w[1].0) {
        bail!(
            "the samples of task '{}' repeat a document: the shard set overlaps",
            shards[0].record.tasks[i].label.name
        );
    }
    Ok(keyed.into_iter().map(|(_, v)| v).collect())
}
