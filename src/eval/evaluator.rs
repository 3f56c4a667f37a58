//! The evaluation run: resolve task, group and tag names; build every document's requests with
//! lm-eval's prompts; tokenize them as lm-eval's HFLM does; score them all in one batched pass
//! (resuming from `--cache`); compute, aggregate and write lm-eval's results and samples.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::cache::{CacheKey, ResultCache};

/// Per task or group: metric -> (mean, stderr), and the number of documents.
type Scores = HashMap<String, (BTreeMap<String, (f64, Option<f64>)>, usize)>;
use super::metrics;
use super::output::{self, doc_json_indented, py_str, sanitize_model_name};
use super::task::{DocText, Entry, FEWSHOT_SEED, OutputType, Target, Task, TaskIndex};
use crate::contract::{MAX_CONTEXT, meta};
use crate::digest::hash_string;
use crate::files::Inputs;
use crate::hub::Hub;
use crate::infer::lm::{Loglikelihood, ScoringModel, TokenRequest};
use crate::infer::runtime::{ScalarFeed, SessionOptions};
use crate::onnx::Model;
use crate::progress;
use crate::pycompat::literal::repr_float;
use crate::tokenizer::Tokenizer;

/// The lm-eval version whose semantics (prompts, metrics, files) this reproduces.
pub const LM_EVAL_VERSION: &str = "0.4.13";

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub tasks: Vec<String>,
    pub num_fewshot: Option<usize>,
    /// An integer count per task, or a fraction of each task below 1.0.
    pub limit: Option<f64>,
    pub batch_size: BatchSize,
    pub session: SessionOptions,
    pub output_path: Option<PathBuf>,
    pub log_samples: bool,
    pub tokenizer: Option<String>,
    pub fewshot_seed: u64,
    pub cache: Option<PathBuf>,
    /// Task folders searched besides the bundled one.
    pub include_paths: Vec<PathBuf>,
    /// Overrides the model's context length.
    pub max_length: Option<usize>,
    pub progress: bool,
    /// Replace an existing `--output-path x.json`.
    pub force: bool,
    /// Where hub tokenizers and datasets come from (the command's one [`Hub`]).
    pub hub: Hub,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            num_fewshot: None,
            limit: None,
            batch_size: BatchSize::Fixed(16),
            session: SessionOptions::default(),
            output_path: None,
            log_samples: false,
            tokenizer: None,
            fewshot_seed: FEWSHOT_SEED,
            cache: None,
            include_paths: Vec::new(),
            max_length: None,
            progress: false,
            force: false,
            hub: Hub::from_env(),
        }
    }
}

/// How many sequences go into one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    /// The largest that runs at the longest request's length, up to [`AUTO_BATCH_CAP`].
    Auto,
}

/// `--batch-size auto` tries this first, then halves.
pub const AUTO_BATCH_CAP: usize = 64;

/// Without `max_position_embeddings` in the metadata (a foreign graph): lm-eval's HFLM default.
const DEFAULT_MAX_LENGTH: usize = 2048;

/// The bundled task folder: `SAE_ONNX_TASKS` when set, else the lm-eval YAMLs built into the
/// binary, written once under the cache root (an installed binary has no checkout to read).
pub fn bundled_tasks_dir() -> Result<PathBuf> {
    match std::env::var_os("SAE_ONNX_TASKS").filter(|v| !v.is_empty()) {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            if !dir.is_dir() {
                bail!(
                    "SAE_ONNX_TASKS is '{}', which is not a folder; point it at a folder of task YAMLs, or unset it for the bundled tasks",
                    dir.display()
                );
            }
            Ok(dir)
        }
        None => super::bundled::extract(&crate::paths::cache_root()),
    }
}

/// A resolved name: a task, or a group of children with its aggregation.
enum Node {
    Task {
        name: String,
    },
    Group {
        name: String,
        alias: Option<String>,
        children: Vec<Node>,
        weight_by_size: BTreeMap<String, bool>,
        version: Value,
    },
}

/// One request of one document: lm-eval's arguments (context and continuation, or the text of a
/// rolling request) and the token windows scored for it (one, or a rolling request's windows).
struct DocRequest {
    args: Vec<Value>,
    windows: Vec<TokenRequest>,
}

impl DocRequest {
    /// The request's answer: log-probabilities summed over its windows (in order, as lm-eval's
    /// Python `sum`), greedy when every window is.
    fn answer(&self, answers: &HashMap<TokenRequest, Loglikelihood>) -> Loglikelihood {
        self.windows.iter().map(|w| answers[w]).fold(
            Loglikelihood {
                logprob: 0.0,
                is_greedy: true,
            },
            |acc, a| Loglikelihood {
                logprob: acc.logprob + a.logprob,
                is_greedy: acc.is_greedy && a.is_greedy,
            },
        )
    }
}

struct DocWork {
    doc_id: usize,
    doc: Value,
    /// `doc_to_target`, as the samples log it.
    target: Target,
    /// What the metrics compare with: the target, or a multiple-input task's `doc_to_text`.
    gold: Target,
    choices: Vec<String>,
    requests: Vec<DocRequest>,
}

pub struct EvalOutcome {
    pub results: Map<String, Value>,
    pub results_path: Option<PathBuf>,
    pub table: String,
    pub stats: crate::infer::lm::ScoringStats,
    pub seconds: f64,
    /// Opening the inference session (weights to the device included), and answering the
    /// loglikelihood requests: the two costs a benchmark wants apart.
    pub session_seconds: f64,
    pub scoring_seconds: f64,
}

/// What every pass over one model and task list shares: the documents, their prompts and token
/// requests, built once (a coefficient sweep scores them once per value).
struct Prepared {
    model: Model,
    tokenizer: Tokenizer,
    max_length: usize,
    prefix_token: u32,
    roots: Vec<Node>,
    tasks: Vec<(Task, Vec<DocWork>)>,
    /// Every file the evaluation reads: no output may replace one.
    inputs: Inputs,
    /// With `--cache`: what every pass's answers depend on besides its feeds.
    identity: Option<serde_json::Map<String, Value>>,
}

/// Sessions opened on a pass's first use and kept for the passes after it.
#[derive(Default)]
struct Engines {
    scorer: Option<ScoringModel>,
    generator: Option<crate::infer::generate::Generator>,
}

/// One evaluation of the prepared requests: the graph inputs to feed (a sweep's coefficient),
/// its answers cache, where results are written, and the sweep point it records.
struct Pass {
    feeds: Vec<ScalarFeed>,
    cache: ResultCache,
    output_path: Option<PathBuf>,
    sweep: Option<(String, f64)>,
}

impl Pass {
    /// Checks the output path and opens the cache before anything is scored: a bad path must
    /// not cost the hours of scoring before it.
    fn open(
        model_path: &Path,
        options: &EvalOptions,
        prepared: &Prepared,
        feeds: Vec<ScalarFeed>,
        cache: Option<&Path>,
        output_path: Option<PathBuf>,
    ) -> Result<Self> {
        if let Some(out) = &output_path {
            output::check(
                out,
                &model_path.display().to_string(),
                &prepared.inputs,
                options.force,
            )?;
            // The cache may not exist yet, so identity cannot tell; the names can.
            if let Some(cache) = cache
                && std::path::absolute(cache).ok() == std::path::absolute(out).ok()
            {
                bail!(
                    "--cache and --output-path are the same file '{}'; give each its own",
                    out.display()
                );
            }
        }
        let cache = match (cache, &prepared.identity) {
            (Some(path), Some(identity)) => {
                let mut key = identity.clone();
                key.insert(
                    "inputs".into(),
                    feeds
                        .iter()
                        .map(|f| json!({"name": f.name, "value": f.value, "dtype": format!("{:?}", f.dtype)}))
                        .collect(),
                );
                ResultCache::open(path, &CacheKey(key), &prepared.inputs)?
            }
            _ => ResultCache::none(),
        };
        Ok(Self {
            feeds,
            cache,
            output_path,
            sweep: None,
        })
    }
}

/// Evaluates `model_path` on `options.tasks` as lm-eval would.
pub fn evaluate(model_path: &Path, options: &EvalOptions) -> Result<EvalOutcome> {
    let start = Instant::now();
    let prepared = prepare(model_path, options)?;
    let mut pass = Pass::open(
        model_path,
        options,
        &prepared,
        Vec::new(),
        options.cache.as_deref(),
        options.output_path.clone(),
    )?;
    run_pass(
        model_path,
        options,
        &prepared,
        &mut Engines::default(),
        &mut pass,
        start,
    )
}

/// One point of a coefficient sweep.
pub struct SweepPoint {
    pub value: f64,
    pub outcome: EvalOutcome,
}

/// Evaluates a `--sweepable` steered model once per value of the coefficient input `input`,
/// in one session: the requests are built once, the model is opened once, and each value is
/// fed as the input's value. Results go to `<output>/sweep_<input>_<value>/`, answers to a
/// cache file per value (`<cache stem>.<input>=<value>.<ext>`).
pub fn evaluate_sweep(
    model_path: &Path,
    options: &EvalOptions,
    input: &crate::contract::sweep::CoefficientInput,
    values: &[f64],
) -> Result<Vec<SweepPoint>> {
    let prepared = prepare(model_path, options)?;
    // Every point's output path and cache are checked before the first is scored.
    let mut passes = Vec::with_capacity(values.len());
    for &value in values {
        let label = format!("{}={value}", input.input);
        let feeds = vec![ScalarFeed {
            name: input.input.clone(),
            value,
            dtype: input.dtype,
        }];
        let cache = options.cache.as_deref().map(|c| suffixed(c, &label));
        let output_path = options
            .output_path
            .as_ref()
            .map(|o| o.join(format!("sweep_{}_{value}", input.input)));
        let mut pass = Pass::open(
            model_path,
            options,
            &prepared,
            feeds,
            cache.as_deref(),
            output_path,
        )
        .with_context(|| format!("sweep point {label}"))?;
        pass.sweep = Some((input.input.clone(), value));
        passes.push((value, label, pass));
    }
    let mut engines = Engines::default();
    let mut points = Vec::with_capacity(values.len());
    for (value, label, mut pass) in passes {
        let start = Instant::now();
        eprintln!("sweep: {label}");
        let outcome = run_pass(model_path, options, &prepared, &mut engines, &mut pass, start)
            .with_context(|| format!("sweep point {label}"))?;
        points.push(SweepPoint { value, outcome });
    }
    Ok(points)
}

/// `answers.jsonl` -> `answers.<label>.jsonl`.
fn suffixed(path: &Path, label: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{label}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{label}"),
    };
    path.with_file_name(name)
}

fn prepare(model_path: &Path, options: &EvalOptions) -> Result<Prepared> {
    if let Some(limit) = options.limit
        && !(limit.is_finite() && limit > 0.0)
    {
        bail!("limit {limit} is not a number of documents nor a fraction above 0");
    }
    let model = Model::load(model_path)?;
    let tokenizer = Tokenizer::for_model(&options.hub, &model, options.tokenizer.as_deref())?;
    check_vocab(&model, &tokenizer)?;
    let max_length = match (options.max_length, model.metadata(meta::MAX_POSITIONS)) {
        (Some(n), _) => n,
        (None, None) => DEFAULT_MAX_LENGTH,
        (None, Some(text)) => match text.trim().parse::<usize>() {
            Ok(n) if (1..=MAX_CONTEXT).contains(&n) => n,
            _ => bail!(
                "'{}' gives max_position_embeddings {:?} in its metadata, not a context length \
                 (1 to {MAX_CONTEXT}); pass --max-length N",
                model_path.display(),
                crate::files::printable(text, 40)
            ),
        },
    };
    if !(1..=MAX_CONTEXT).contains(&max_length) {
        bail!("--max-length {max_length} is not a context length: give 1 to {MAX_CONTEXT} tokens");
    }
    // lm-eval 0.4.13's HFLM encodes with the tokenizer's default special tokens: Gemma's
    // template puts BOS first; tokenizers without one add nothing.
    let add_bos = true;
    let prefix_token = tokenizer
        .bos_id
        .or(tokenizer.eos_id)
        .context("the tokenizer has neither BOS nor EOS")?;

    let mut dirs = vec![bundled_tasks_dir()?];
    dirs.extend(options.include_paths.iter().cloned());
    let mut index = TaskIndex::scan(&dirs)?;
    let mut roots = Vec::new();
    for name in &options.tasks {
        roots.push(resolve(&mut index, name, 0)?);
    }
    let mut leaf_names = Vec::new();
    for root in &roots {
        collect_leaves(root, &mut leaf_names);
    }
    leaf_names.dedup();

    // Build every task's documents and requests (few-shot draws in document order, as lm-eval).
    let mut tasks: Vec<(Task, Vec<DocWork>)> = Vec::new();
    for name in &leaf_names {
        let Some(Entry::Task { path, config }) = index.entries.get(name) else {
            bail!("'{name}' is not a task");
        };
        let mut task = Task::load_from(
            &options.hub,
            name,
            path,
            config.clone(),
            options.num_fewshot,
            options.fewshot_seed,
        )?;
        let total = task.eval_docs.len();
        if total == 0 {
            bail!(
                "task '{name}' ({}) has no documents to evaluate: its evaluation split is empty",
                path.display()
            );
        }
        let n = match options.limit {
            None => total,
            Some(l) if l < 1.0 => (total as f64 * l).ceil() as usize,
            Some(l) => (l as usize).min(total),
        };
        let docs: Vec<Value> = task.eval_docs[..n].to_vec();
        let mut work = Vec::with_capacity(n);
        for (doc_id, doc) in docs.into_iter().enumerate() {
            let w = build_doc(
                &mut task,
                doc_id,
                doc,
                &tokenizer,
                add_bos,
                prefix_token,
                max_length,
            )
            .with_context(|| format!("task '{name}', document {doc_id}"))?;
            work.push(w);
        }
        tasks.push((task, work));
    }
    let inputs = inputs_of(model_path, &model, &tokenizer, &index, &tasks)?;
    let identity = match &options.cache {
        Some(_) => Some(cache_identity(
            model_path, &model, &tokenizer, options, max_length,
        )?),
        None => None,
    };
    Ok(Prepared {
        model,
        tokenizer,
        max_length,
        prefix_token,
        roots,
        tasks,
        inputs,
        identity,
    })
}

/// Every file the evaluation reads: the model and its data files, the tokenizer, the task and
/// group YAMLs, the local dataset files.
fn inputs_of(
    model_path: &Path,
    model: &Model,
    tokenizer: &Tokenizer,
    index: &TaskIndex,
    tasks: &[(Task, Vec<DocWork>)],
) -> Result<Inputs> {
    let mut inputs = Inputs::new();
    inputs.add(model_path);
    let model_dir = crate::files::parent_dir(model_path);
    for location in model.external_locations()? {
        inputs.add(&model_dir.join(location));
    }
    inputs.add(&tokenizer.path);
    for entry in index.entries.values() {
        let (Entry::Task { path, .. } | Entry::Group { path, .. }) = entry;
        inputs.add(path);
    }
    for (task, _) in tasks {
        inputs.add(&task.path);
        let local = task
            .config
            .get("dataset_path")
            .and_then(Value::as_str)
            .is_some_and(|p| matches!(p, "json" | "csv" | "parquet"));
        let files = task
            .config
            .get("dataset_kwargs")
            .and_then(|k| k.get("data_files"));
        if let (true, Some(files)) = (local, files) {
            let yaml_dir = crate::files::parent_dir(&task.path);
            for file in super::data::local_files(files, yaml_dir)? {
                inputs.add(&file);
            }
        }
    }
    Ok(inputs)
}

/// What a cached answer depends on besides its request and the pass's feeds (see
/// [`super::cache`]): the graph's bytes (steering and coefficients are in them, and so are the
/// content hashes of the data files sae-onnx wrote), each external data file, the tokenizer, the
/// device and TF32, the context length, this version.
fn cache_identity(
    model_path: &Path,
    model: &Model,
    tokenizer: &Tokenizer,
    options: &EvalOptions,
    max_length: usize,
) -> Result<serde_json::Map<String, Value>> {
    use crate::digest::sha256_file;
    // Data files whose hash the graph records are covered by the graph's hash; others are
    // known by size and modification time, which every rewrite changes.
    let records: serde_json::Map<String, Value> = model
        .metadata(crate::onnx::datafile::RECORDS_KEY)
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    let model_dir = crate::files::parent_dir(model_path);
    let mut data = serde_json::Map::new();
    for location in model.external_locations()? {
        let path = model_dir.join(&location);
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("cannot read data file '{}'", path.display()))?;
        let identity = match records
            .get(&location)
            .and_then(|r| r.get("xxh3_128"))
            .and_then(Value::as_str)
        {
            Some(hash) => json!({"bytes": meta.len(), "xxh3_128": hash}),
            None => {
                let modified = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos() as u64);
                json!({"bytes": meta.len(), "modified_ns": modified})
            }
        };
        data.insert(location, identity);
    }
    let mut key = serde_json::Map::new();
    key.insert("model".into(), json!(sha256_file(model_path, "model")?));
    key.insert("data".into(), Value::Object(data));
    key.insert(
        "tokenizer".into(),
        json!(sha256_file(&tokenizer.path, "tokenizer")?),
    );
    key.insert("device".into(), json!(options.session.device.to_string()));
    key.insert("tf32".into(), json!(options.session.tf32));
    key.insert("max_length".into(), json!(max_length));
    key.insert("sae_onnx".into(), json!(env!("CARGO_PKG_VERSION")));
    Ok(key)
}

fn run_pass(
    model_path: &Path,
    options: &EvalOptions,
    prepared: &Prepared,
    engines: &mut Engines,
    pass: &mut Pass,
    start: Instant,
) -> Result<EvalOutcome> {
    let Prepared {
        model,
        tokenizer,
        max_length,
        prefix_token,
        roots,
        tasks,
        inputs,
        ..
    } = prepared;
    let (max_length, prefix_token) = (*max_length, *prefix_token);

    // Score all requests, reusing the cache.
    let all: Vec<&TokenRequest> = tasks
        .iter()
        .flat_map(|(_, w)| w.iter().flat_map(|d| d.requests.iter().flat_map(|r| &r.windows)))
        .collect();
    let cache = &mut pass.cache;
    let missing: Vec<TokenRequest> = {
        let mut seen = std::collections::HashSet::new();
        all.iter()
            .filter(|r| !cache.answers.contains_key(**r) && seen.insert(**r))
            .map(|r| (*r).clone())
            .collect()
    };
    let mut stats = crate::infer::lm::ScoringStats::default();
    let (mut session_seconds, mut scoring_seconds) = (0.0, 0.0);
    let mut batch_sizes: Vec<usize> = Vec::new();
    if !missing.is_empty() {
        let fixed = match options.batch_size {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto => AUTO_BATCH_CAP,
        };
        let fresh = engines.scorer.is_none();
        if fresh {
            let opening = Instant::now();
            engines.scorer = Some(ScoringModel::open(
                model_path,
                &options.session,
                max_length,
                fixed,
            )?);
            session_seconds = opening.elapsed().as_secs_f64();
        }
        let scorer = engines.scorer.as_mut().expect("opened above");
        scorer.feeds = pass.feeds.clone();
        if fresh && options.batch_size == BatchSize::Auto {
            let longest = missing
                .iter()
                .map(|r| (r.context.len() + r.continuation.len()).min(max_length + 1) - 1)
                .max()
                .unwrap_or(1);
            scorer.batch_size = scorer.largest_batch_that_runs(longest, AUTO_BATCH_CAP)?;
            eprintln!(
                "batch size auto: {} (sequences of up to {longest} tokens)",
                scorer.batch_size
            );
        }
        let batch_size_used = scorer.batch_size;
        let bar = progress::items_bar(missing.len() as u64, "loglikelihood", options.progress);
        let tokens_total: usize = missing
            .iter()
            .map(|r| r.context.len() + r.continuation.len())
            .sum();
        let bar_start = Instant::now();
        let (answers, s) = scorer.loglikelihood(&missing, |done, batch_answers| {
            bar.inc(done as u64);
            let elapsed = bar_start.elapsed().as_secs_f64().max(1e-9);
            let fraction = bar.position() as f64 / missing.len().max(1) as f64;
            bar.set_message(format!("{:.0} tok/s", tokens_total as f64 * fraction / elapsed));
            cache.append(batch_answers)
        })?;
        bar.finish_and_clear();
        scoring_seconds = bar_start.elapsed().as_secs_f64();
        stats = s;
        if options.batch_size == BatchSize::Auto {
            batch_sizes.push(batch_size_used);
        }
        for (request, answer) in missing.iter().zip(answers) {
            cache.answers.insert(request.clone(), answer);
        }
    }

    // generate_until tasks: greedy generations, one per document.
    let mut generations: HashMap<(String, usize), String> = HashMap::new();
    if tasks
        .iter()
        .any(|(t, _)| t.output_type == OutputType::GenerateUntil)
    {
        if engines.generator.is_none() {
            let base = crate::infer::generate::GenerateOptions {
                session: options.session.clone(),
                tokenizer: options.tokenizer.clone(),
                hub: options.hub.clone(),
                ..Default::default()
            };
            engines.generator = Some(crate::infer::generate::Generator::open(model_path, &base)?);
        }
        let generator = engines.generator.as_mut().expect("opened above");
        generator.set_feeds(pass.feeds.clone());
        generate_all(
            generator,
            options,
            tasks,
            tokenizer,
            prefix_token,
            max_length,
            &mut generations,
        )?;
    }

    // Metrics per document, aggregated per task.
    let mut results = Map::new();
    let mut configs = Map::new();
    let mut versions = Map::new();
    let mut n_shot = Map::new();
    let mut higher_is_better = Map::new();
    let mut n_samples = Map::new();
    let mut task_hashes = Map::new();
    let mut samples_out = Vec::new();
    let mut task_scores: Scores = HashMap::new();
    for (task, work) in tasks {
        let metric_names: Vec<String> = task.metrics.iter().map(|m| m.name.clone()).collect();
        let mut per_metric: BTreeMap<String, Vec<Item>> = BTreeMap::new();
        let mut samples = Vec::new();
        if task.output_type == OutputType::GenerateUntil {
            let outcome = score_generations(task, work, &generations)?;
            per_metric = outcome.0;
            samples = outcome.1;
        }
        for doc in work
            .iter()
            .filter(|_| task.output_type != OutputType::GenerateUntil)
        {
            let answers: Vec<Loglikelihood> = doc.requests.iter().map(|r| r.answer(&cache.answers)).collect();
            let doc_metrics: Vec<(String, Item)> = match task.output_type {
                OutputType::MultipleChoice => {
                    metrics::multiple_choice(&answers, &doc.choices, &doc.gold, &metric_names)
                        .into_iter()
                        .map(|(m, v)| (m, Item::Value(v)))
                        .collect()
                }
                OutputType::Loglikelihood => {
                    vec![(
                        "acc".to_owned(),
                        Item::Value(f64::from(u8::from(answers[0].is_greedy))),
                    )]
                }
                OutputType::GenerateUntil => unreachable!("scored above"),
                OutputType::LoglikelihoodRolling => {
                    let text = super::builtins::counted_text(
                        task.process_results_builtin(),
                        &doc.doc,
                        doc.requests[0].args[0].as_str().unwrap_or_default(),
                    )?;
                    let (words, bytes) = (metrics::count_words(text) as f64, text.len() as f64);
                    let ll = answers[0].logprob;
                    vec![
                        ("word_perplexity".to_owned(), Item::Weighted(ll, words)),
                        ("byte_perplexity".to_owned(), Item::Weighted(ll, bytes)),
                        ("bits_per_byte".to_owned(), Item::Weighted(ll, bytes)),
                    ]
                }
            };
            let doc_metrics: Vec<(String, Item)> = doc_metrics
                .into_iter()
                .filter(|(m, _)| metric_names.contains(m))
                .collect();
            for (m, v) in &doc_metrics {
                per_metric.entry(m.clone()).or_default().push(*v);
            }
            let rolling = task.output_type == OutputType::LoglikelihoodRolling;
            samples.push(sample_line(doc, &answers, &doc_metrics, rolling));
        }
        let mut entry = Map::new();
        entry.insert("name".into(), json!(task.name));
        entry.insert(
            "alias".into(),
            json!(task.alias.clone().unwrap_or_else(|| task.name.clone())),
        );
        entry.insert("sample_len".into(), json!(work.len()));
        let mut scores = BTreeMap::new();
        // Keys are `metric` (filter "none") or `metric,filter` (generate_until filter pipelines).
        for (key, items) in &per_metric {
            let (metric, filter) = key.split_once(',').unwrap_or((key, "none"));
            if !metric_names.iter().any(|m| m == metric) || items.is_empty() {
                continue;
            }
            let (mean, stderr) = aggregate_items(metric, items);
            entry.insert(format!("{metric},{filter}"), json!(mean));
            entry.insert(
                format!("{metric}_stderr,{filter}"),
                stderr.map_or(json!("N/A"), |s| json!(s)),
            );
            if filter == "none" {
                scores.insert(metric.to_owned(), (mean, stderr));
            }
        }
        task_scores.insert(task.name.clone(), (scores, work.len()));
        results.insert(task.name.clone(), Value::Object(entry));
        configs.insert(task.name.clone(), task_config_json(task, model_path));
        versions.insert(task.name.clone(), task.version());
        n_shot.insert(task.name.clone(), json!(task.num_fewshot));
        higher_is_better.insert(
            task.name.clone(),
            Value::Object(
                task.metrics
                    .iter()
                    .map(|m| (m.name.clone(), json!(m.higher_is_better)))
                    .collect(),
            ),
        );
        n_samples.insert(
            task.name.clone(),
            json!({"original": task.eval_docs.len(), "effective": work.len()}),
        );
        let joined: String = samples
            .iter()
            .map(|s| {
                format!(
                    "{}{}{}",
                    s["doc_hash"].as_str().unwrap_or(""),
                    s["prompt_hash"].as_str().unwrap_or(""),
                    s["target_hash"].as_str().unwrap_or("")
                )
            })
            .collect();
        if options.log_samples {
            task_hashes.insert(task.name.clone(), json!(hash_string(&joined)));
            samples_out.push((task.name.clone(), samples));
        }
    }

    // Groups, children first.
    let mut groups = Map::new();
    let mut group_subtasks = Map::new();
    for root in roots {
        aggregate(
            root,
            &mut task_scores,
            &mut results,
            &mut groups,
            &mut group_subtasks,
            &mut versions,
            &mut n_shot,
            &mut higher_is_better,
        );
    }

    let model_name = model_path.display().to_string();
    let mut out = Map::new();
    // Groups are listed after their tasks in `results`, as lm-eval does.
    out.insert("results".into(), Value::Object(results));
    if !groups.is_empty() {
        out.insert("groups".into(), Value::Object(groups));
    }
    out.insert("group_subtasks".into(), Value::Object(group_subtasks));
    out.insert("configs".into(), Value::Object(configs));
    out.insert("versions".into(), Value::Object(versions));
    out.insert("n-shot".into(), Value::Object(n_shot));
    out.insert("higher_is_better".into(), Value::Object(higher_is_better));
    out.insert("n-samples".into(), Value::Object(n_samples));
    out.insert(
        "config".into(),
        json!({
            "model": "sae-onnx",
            "model_args": {"model": model_name, "device": options.session.device.to_string()},
            "model_num_parameters": Value::Null,
            "model_dtype": model.metadata(meta::DTYPE),
            "model_revision": model.metadata(meta::REVISION).unwrap_or("main"),
            "model_sha": "",
            "batch_size": match options.batch_size { BatchSize::Fixed(n) => n.to_string(), BatchSize::Auto => "auto".to_owned() },
            "batch_sizes": batch_sizes,
            "device": options.session.device.to_string(),
            "use_cache": options.cache.as_ref().map(|p| p.display().to_string()),
            "limit": options.limit,
            "bootstrap_iters": 100000,
            "gen_kwargs": {},
            "random_seed": 0,
            "numpy_seed": 1234,
            "torch_seed": 1234,
            "fewshot_seed": options.fewshot_seed,
        }),
    );
    out.insert("transformers_version".into(), Value::Null);
    out.insert("lm_eval_version".into(), json!(LM_EVAL_VERSION));
    out.insert("sae_onnx_version".into(), json!(env!("CARGO_PKG_VERSION")));
    let token = |id: Option<u32>| {
        id.map_or(Value::Null, |i| {
            json!([tokenizer_token(tokenizer, i), i.to_string()])
        })
    };
    out.insert("tokenizer_pad_token".into(), token(Some(0)));
    out.insert("tokenizer_eos_token".into(), token(tokenizer.eos_id));
    out.insert("tokenizer_bos_token".into(), token(tokenizer.bos_id));
    out.insert("eot_token_id".into(), json!(tokenizer.eos_id));
    out.insert("max_length".into(), json!(max_length));
    out.insert("task_hashes".into(), Value::Object(task_hashes));
    out.insert("model_source".into(), json!("sae-onnx"));
    out.insert("model_name".into(), json!(model_name));
    out.insert(
        "model_name_sanitized".into(),
        json!(sanitize_model_name(&model_name)),
    );
    for key in [
        "system_instruction",
        "system_instruction_sha",
        "fewshot_as_multiturn",
        "chat_template",
        "chat_template_sha",
    ] {
        out.insert(key.into(), Value::Null);
    }
    if let Some((input, value)) = &pass.sweep {
        out.insert(
            "sae_onnx".into(),
            json!({"sweep": {"input": input, "value": value}}),
        );
    }
    if let Some(steering) = model.metadata("sae_onnx.steering") {
        out.insert(
            "steering".into(),
            serde_json::from_str(steering).unwrap_or(json!(steering)),
        );
    }
    let seconds = start.elapsed().as_secs_f64();
    out.insert("total_evaluation_time_seconds".into(), json!(seconds.to_string()));

    let table = super::table::render(&out);
    let results_path = match &pass.output_path {
        Some(path) => Some(output::write(
            path,
            &model_name,
            &out,
            &samples_out,
            inputs,
            options.force,
        )?),
        None => None,
    };
    Ok(EvalOutcome {
        results: out,
        results_path,
        table,
        stats,
        seconds,
        session_seconds,
        scoring_seconds,
    })
}

fn tokenizer_token(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode_token(id).unwrap_or_default()
}

fn check_vocab(model: &Model, tokenizer: &Tokenizer) -> Result<()> {
    if let Some(vocab) = model
        .metadata(meta::VOCAB_SIZE)
        .and_then(|v| v.parse::<usize>().ok())
        && tokenizer.vocab_size() > vocab
    {
        bail!(
            "tokenizer '{}' has {} tokens but the model's vocabulary has {vocab}: they do not belong together (pass --tokenizer)",
            tokenizer.path.display(),
            tokenizer.vocab_size()
        );
    }
    Ok(())
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation, the
/// pair is tokenized whole, and the continuation is the tail beyond the context's tokens.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    add_bos: bool,
    prefix_token: u32,
    context: &str,
    continuation: &str,
) -> Result<TokenRequest> {
    if context.is_empty() {
        return Ok(TokenRequest {
            context: vec![prefix_token],
            continuation: tokenizer.encode(continuation, add_bos)?,
        });
    }
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed.to_owned(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_owned(), continuation.to_owned())
    };
    let whole = encode_text(
        tokenizer,
        add_bos,
        prefix_token,
        &format!("{context}{continuation}"),
    )?;
    let context_ids = encode_text(tokenizer, add_bos, prefix_token, &context)?;
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    Ok(TokenRequest {
        context: context_ids,
        continuation: continuation_ids,
    })
}

fn build_doc(
    task: &mut Task,
    doc_id: usize,
    doc: Value,
    tokenizer: &Tokenizer,
    add_bos: bool,
    prefix: u32,
    max_length: usize,
) -> Result<DocWork> {
    let target = task.doc_to_target(&doc)?;
    let kind = task.output_type.name();
    let target_text = || -> Result<String> {
        match &target {
            Target::Text(t) => Ok(t.clone()),
            Target::Index(i) => Ok(i.to_string()),
            Target::List(_) => bail!("a {kind} task's target must be text"),
        }
    };
    let pair = |context: String, continuation: String| -> Result<DocRequest> {
        let tokens = encode_pair(tokenizer, add_bos, prefix, &context, &continuation)?;
        if tokens.continuation.is_empty() {
            bail!("continuation {continuation:?} encodes to no tokens");
        }
        Ok(DocRequest {
            args: vec![json!(context), json!(continuation)],
            windows: vec![tokens],
        })
    };
    let mut gold = target.clone();
    let (choices, requests): (Vec<String>, Vec<DocRequest>) = match task.output_type {
        // lm-eval's multiple-input mode (winogrande): one context per choice, all with the same
        // continuation; the gold choice is `doc_to_text`.
        OutputType::MultipleChoice if task.multiple_input => {
            let contexts = task.multiple_input_contexts(&doc)?;
            let continuation = format!("{}{}", task.target_delimiter(), target_text()?);
            let requests = contexts
                .into_iter()
                .map(|context| pair(context, continuation.clone()))
                .collect::<Result<_>>()?;
            gold = match task.doc_to_text_value(&doc)? {
                DocText::Index(i) => Target::Index(i),
                DocText::Text(t) => Target::Text(t),
            };
            (task.doc_to_choice(&doc)?, requests)
        }
        OutputType::MultipleChoice => {
            let context = task.fewshot_context(&doc)?;
            let delimiter = task.target_delimiter();
            let choices = task.doc_to_choice(&doc)?;
            let requests = choices
                .iter()
                .map(|c| pair(context.clone(), format!("{delimiter}{c}")))
                .collect::<Result<_>>()?;
            (choices, requests)
        }
        OutputType::Loglikelihood => {
            let context = task.fewshot_context(&doc)?;
            (Vec::new(), vec![pair(context, target_text()?)?])
        }
        OutputType::LoglikelihoodRolling => {
            let text = target_text()?;
            let tokens = encode_text(tokenizer, add_bos, prefix, &text)?;
            let windows = rolling_windows(&tokens, prefix, max_length);
            (
                Vec::new(),
                vec![DocRequest {
                    args: vec![json!(text)],
                    windows,
                }],
            )
        }
        OutputType::GenerateUntil => {
            if let Target::Index(i) = target
                && task.config.get("doc_to_choice").is_some_and(|v| !v.is_null())
            {
                let choices = task.doc_to_choice(&doc)?;
                gold_index(&Target::Index(i), &choices)?;
            }
            let context = task.fewshot_context(&doc)?;
            let kwargs = task
                .config
                .get("generation_kwargs")
                .cloned()
                .unwrap_or_else(|| json!({}));
            (
                Vec::new(),
                vec![DocRequest {
                    args: vec![json!(context), kwargs],
                    windows: Vec::new(),
                }],
            )
        }
    };
    if task.output_type == OutputType::MultipleChoice {
        if choices.is_empty() {
            bail!(
                "doc_to_choice gives no choices: a multiple-choice document needs at least one \
                 (fix the document's choices or the task's doc_to_choice)"
            );
        }
        if requests.len() != choices.len() {
            bail!(
                "{} contexts for {} choices: a multiple-input task needs one context per choice",
                requests.len(),
                choices.len()
            );
        }
        // lm-eval 0.4.13 logs a warning for such a label and scores the document as wrong: a
        // score computed against no gold at all. We refuse it, naming the document.
        match &gold {
            Target::List(list) => {
                for label in list {
                    let label = match label {
                        Value::Number(n) => Target::Index(n.as_i64().unwrap_or(-1)),
                        other => Target::Text(super::task::value_text(other)),
                    };
                    gold_index(&label, &choices)?;
                }
            }
            single => {
                gold_index(single, &choices)?;
            }
        }
    }
    Ok(DocWork {
        doc_id,
        doc,
        target,
        gold,
        choices,
        requests,
    })
}

/// The choice a gold label names: an index in range, or the text of one of the choices.
fn gold_index(gold: &Target, choices: &[String]) -> Result<usize> {
    let shown = || {
        let list: Vec<String> = choices
            .iter()
            .take(10)
            .map(|c| format!("{:?}", crate::files::printable(c, 60)))
            .collect();
        let more = if choices.len() > 10 { ", …" } else { "" };
        format!("[{}{more}]", list.join(", "))
    };
    match gold {
        Target::Index(i) => usize::try_from(*i)
            .ok()
            .filter(|&i| i < choices.len())
            .with_context(|| {
                format!(
                    "the gold label {i} is out of range: the document has {} choices (0 to {}) {}; \
                     fix the label or the task's doc_to_target",
                    choices.len(),
                    choices.len().saturating_sub(1),
                    shown()
                )
            }),
        Target::Text(text) => choices.iter().position(|c| c == text).with_context(|| {
            format!(
                "the gold answer {:?} is not one of the choices {}; fix the label or the task's doc_to_target",
                crate::files::printable(text, 60),
                shown()
            )
        }),
        Target::List(_) => bail!("a list of gold labels inside a list is not a label"),
    }
}

/// HFLM's `tok_encode`: the tokenizer's special tokens, unless the text already starts with BOS.
fn encode_text(tokenizer: &Tokenizer, add_special: bool, prefix: u32, text: &str) -> Result<Vec<u32>> {
    let starts_with_bos = tokenizer
        .decode_token(prefix)
        .is_some_and(|bos| text.starts_with(&bos));
    tokenizer.encode(text, add_special && !starts_with_bos)
}

/// lm-eval's `get_rolling_token_windows(context_len=1)` made disjoint: the first window predicts
/// the first `max_length` tokens after the prefix token; each next window predicts the following
/// `max_length` tokens with as much preceding context as fits.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_length: usize) -> Vec<TokenRequest> {
    let mut windows = Vec::new();
    if tokens.is_empty() {
        return windows;
    }
    // Evaluation refuses a context of 0; 1 keeps this total for any caller.
    let max_length = max_length.max(1);
    let first = max_length.min(tokens.len());
    let mut input: Vec<u32> = std::iter::once(prefix)
        .chain(tokens[..first - 1].iter().copied())
        .collect();
    let mut predicted = tokens[..first].to_vec();
    windows.push(disjoint(&input, &predicted));
    let mut done = first;
    while done < tokens.len() {
        let n = (tokens.len() - done).min(max_length);
        let end = done + n;
        let start = end.saturating_sub(max_length + 1);
        input = tokens[start..end - 1].to_vec();
        predicted = tokens[end - n..end].to_vec();
        windows.push(disjoint(&input, &predicted));
        done += n;
    }
    windows
}

/// `make_disjoint_window`: the context stops where the predicted tokens start.
fn disjoint(input: &[u32], predicted: &[u32]) -> TokenRequest {
    let keep = input.len() + 1 - predicted.len();
    TokenRequest {
        context: input[..keep].to_vec(),
        continuation: predicted.to_vec(),
    }
}

/// Generates greedily for every document of the generate_until tasks, as HFLM.generate_until:
/// the prompt left-truncated to `max_length - max_gen_toks` tokens, stopped at EOS or an `until`
/// string, the decoded text cut before the first `until` string.
#[allow(clippy::too_many_arguments)]
fn generate_all(
    generator: &mut crate::infer::generate::Generator,
    options: &EvalOptions,
    tasks: &[(Task, Vec<DocWork>)],
    tokenizer: &Tokenizer,
    prefix: u32,
    max_length: usize,
    out: &mut HashMap<(String, usize), String>,
) -> Result<()> {
    use crate::infer::generate::GenerateOptions;
    let base = GenerateOptions {
        session: options.session.clone(),
        tokenizer: options.tokenizer.clone(),
        ..Default::default()
    };
    let total: usize = tasks
        .iter()
        .filter(|(t, _)| t.output_type == OutputType::GenerateUntil)
        .map(|(_, w)| w.len())
        .sum();
    let bar = progress::items_bar(total as u64, "generate_until", options.progress);
    for (task, work) in tasks
        .iter()
        .filter(|(t, _)| t.output_type == OutputType::GenerateUntil)
    {
        let spec = super::generative::GenSpec::from_config(&task.config, &task.fewshot_delimiter())?;
        let mut until = spec.until.clone();
        if let Some(eos) = tokenizer.eos_id.and_then(|e| tokenizer.decode_token(e))
            && !until.contains(&eos)
        {
            until.push(eos);
        }
        let gen_options = GenerateOptions {
            max_new_tokens: spec.max_gen_toks,
            stop: until.clone(),
            ..base.clone()
        };
        for doc in work {
            let context = doc.requests[0].args[0].as_str().unwrap_or_default();
            let mut ids = encode_text(tokenizer, true, prefix, context)?;
            let keep = max_length.saturating_sub(spec.max_gen_toks).max(1);
            if ids.len() > keep {
                ids.drain(..ids.len() - keep);
            }
            let generation = generator
                .generate(&ids, &gen_options, |_| {})
                .with_context(|| format!("task '{}', document {}", task.name, doc.doc_id))?;
            out.insert(
                (task.name.clone(), doc.doc_id),
                super::generative::cut_at_until(&generation.text, &until),
            );
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(())
}

/// Per-filter exact_match items and the sample lines (one per document and filter, as lm-eval).
fn score_generations(
    task: &Task,
    work: &[DocWork],
    generations: &HashMap<(String, usize), String>,
) -> Result<(MetricItems, Vec<Value>)> {
    use super::generative::{ExactMatch, Filter};
    let filters = Filter::from_config(&task.config)?;
    let metric_entry = task
        .config
        .get("metric_list")
        .and_then(Value::as_array)
        .and_then(|l| {
            l.iter()
                .find(|m| m.get("metric").and_then(Value::as_str) == Some("exact_match"))
                .cloned()
        })
        .unwrap_or_else(|| json!({"metric": "exact_match"}));
    let exact_match = ExactMatch::from_metric(&metric_entry)?;
    let mut items: BTreeMap<String, Vec<Item>> = BTreeMap::new();
    let mut samples = Vec::new();
    for filter in &filters {
        for doc in work {
            let response = &generations[&(task.name.clone(), doc.doc_id)];
            let filtered = filter.apply(response);
            // Several targets (triviaqa's aliases): a match with any of them counts.
            let has_choices = task.config.get("doc_to_choice").is_some_and(|v| !v.is_null());
            let golds: Vec<String> = match &doc.target {
                Target::Index(i) if has_choices => {
                    let choices = task.doc_to_choice(&doc.doc)?;
                    let gold = gold_index(&doc.target, &choices)
                        .with_context(|| format!("task '{}', document {}", task.name, doc.doc_id))?;
                    vec![choices[gold].clone()]
                }
                Target::Index(i) => vec![i.to_string()],
                Target::Text(t) => vec![t.clone()],
                Target::List(l) => l.iter().map(super::task::value_text).collect(),
            };
            let score = golds
                .iter()
                .map(|g| exact_match.score(&filtered, g))
                .fold(0.0, f64::max);
            items
                .entry(format!("exact_match,{}", filter.name))
                .or_default()
                .push(Item::Value(score));
            let target = target_value(&doc.target);
            let mut line = Map::new();
            line.insert("doc_id".into(), json!(doc.doc_id));
            line.insert("doc".into(), doc.doc.clone());
            line.insert("target".into(), json!(py_str(&target)));
            line.insert(
                "arguments".into(),
                json!({"gen_args_0": {"arg_0": doc.requests[0].args[0], "arg_1": doc.requests[0].args[1]}}),
            );
            line.insert("resps".into(), json!([[response]]));
            line.insert("filtered_resps".into(), json!([filtered]));
            line.insert("filter".into(), json!(filter.name));
            line.insert("metrics".into(), json!(["exact_match"]));
            insert_hashes(&mut line, doc, &target);
            line.insert("exact_match".into(), json!(score));
            samples.push(Value::Object(line));
        }
    }
    Ok((items, samples))
}

fn target_value(target: &Target) -> Value {
    match target {
        Target::Index(i) => json!(i),
        Target::Text(t) => json!(t),
        Target::List(l) => Value::Array(l.clone()),
    }
}

/// Per metric key (`metric` or `metric,filter`), every document's item.
type MetricItems = BTreeMap<String, Vec<Item>>;

/// A document's value for one metric: a number averaged over documents, or a (loglikelihood,
/// count) pair that perplexities weight by the count.
#[derive(Debug, Clone, Copy)]
enum Item {
    Value(f64),
    Weighted(f64, f64),
}

impl Item {
    fn json(self) -> Value {
        match self {
            Item::Value(v) => json!(v),
            // Counts are whole numbers of words or bytes.
            Item::Weighted(ll, n) => json!([ll, n as u64]),
        }
    }
}

/// lm-eval's aggregations: `mean` with the sample stderr; `weighted_perplexity`
/// (`exp(-Σll/Σcount)`) and `bits_per_byte` (`-Σll/Σbytes/ln 2`), whose stderr lm-eval leaves "N/A".
fn aggregate_items(metric: &str, items: &[Item]) -> (f64, Option<f64>) {
    let (mut ll, mut count, mut values) = (0.0, 0.0, Vec::new());
    for item in items {
        match *item {
            Item::Value(v) => values.push(v),
            Item::Weighted(l, n) => {
                ll += l;
                count += n;
            }
        }
    }
    match metric {
        "bits_per_byte" => (-(ll / count) / std::f64::consts::LN_2, None),
        "word_perplexity" | "byte_perplexity" => ((-(ll / count)).exp(), None),
        _ => metrics::mean_and_stderr(&values),
    }
}

/// lm-eval's three sample hashes: of the document (as its indented JSON), of the first request's
/// context, and of the target as Python's `str` prints it.
fn insert_hashes(line: &mut Map<String, Value>, doc: &DocWork, target: &Value) {
    line.insert(
        "doc_hash".into(),
        json!(hash_string(&doc_json_indented(&doc.doc))),
    );
    line.insert(
        "prompt_hash".into(),
        json!(hash_string(doc.requests[0].args[0].as_str().unwrap_or_default())),
    );
    line.insert("target_hash".into(), json!(hash_string(&py_str(target))));
}

fn sample_line(
    doc: &DocWork,
    answers: &[Loglikelihood],
    doc_metrics: &[(String, Item)],
    rolling: bool,
) -> Value {
    let target = target_value(&doc.target);
    let mut arguments = Map::new();
    for (i, r) in doc.requests.iter().enumerate() {
        let args: Map<String, Value> = r
            .args
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("arg_{j}"), json!(a)))
            .collect();
        arguments.insert(format!("gen_args_{i}"), Value::Object(args));
    }
    // A rolling request's answer is its loglikelihood alone; others pair it with is_greedy.
    let resp = |a: &Loglikelihood| {
        if rolling {
            json!(repr_float(a.logprob))
        } else {
            json!([repr_float(a.logprob), if a.is_greedy { "True" } else { "False" }])
        }
    };
    let mut line = Map::new();
    line.insert("doc_id".into(), json!(doc.doc_id));
    line.insert("doc".into(), doc.doc.clone());
    line.insert("target".into(), json!(py_str(&target)));
    line.insert("arguments".into(), Value::Object(arguments));
    line.insert(
        "resps".into(),
        Value::Array(answers.iter().map(|a| json!([resp(a)])).collect()),
    );
    line.insert(
        "filtered_resps".into(),
        Value::Array(answers.iter().map(resp).collect()),
    );
    line.insert("filter".into(), json!("none"));
    line.insert(
        "metrics".into(),
        json!(doc_metrics.iter().map(|(m, _)| m).collect::<Vec<_>>()),
    );
    insert_hashes(&mut line, doc, &target);
    for (m, v) in doc_metrics {
        line.insert(m.clone(), v.json());
    }
    Value::Object(line)
}

/// lm-eval's task config as the results file shows it: TaskConfig fields in order, None skipped.
fn task_config_json(task: &Task, model_path: &Path) -> Value {
    let c = &task.config;
    let mut out = Map::new();
    let get = |k: &str| c.get(k).filter(|v| !v.is_null()).cloned();
    for key in [
        "task",
        "task_alias",
        "dataset_path",
        "dataset_name",
        "dataset_kwargs",
        "training_split",
        "validation_split",
        "test_split",
        "fewshot_split",
        "doc_to_text",
        "doc_to_target",
    ] {
        if let Some(v) = get(key) {
            out.insert(key.into(), v);
        }
    }
    out.insert("unsafe_code".into(), get("unsafe_code").unwrap_or(json!(false)));
    if let Some(v) = get("doc_to_choice") {
        out.insert("doc_to_choice".into(), v);
    }
    out.insert("description".into(), get("description").unwrap_or(json!("")));
    out.insert("target_delimiter".into(), json!(task.target_delimiter()));
    out.insert("fewshot_delimiter".into(), json!(task.fewshot_delimiter()));
    let fewshot = c
        .get("fewshot_config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    out.insert(
        "fewshot_config".into(),
        json!({
            "sampler": fewshot.get("sampler").cloned().unwrap_or(json!("default")),
            "split": fewshot.get("split").cloned().or_else(|| get("fewshot_split")),
            "process_docs": Value::Null,
            "fewshot_indices": fewshot.get("fewshot_indices").cloned(),
            "samples": fewshot.get("samples").cloned(),
            "doc_to_text": fewshot.get("doc_to_text").cloned().or_else(|| get("doc_to_text")),
            "doc_to_choice": fewshot.get("doc_to_choice").cloned().or_else(|| get("doc_to_choice")),
            "doc_to_target": fewshot.get("doc_to_target").cloned().or_else(|| get("doc_to_target")),
            "gen_prefix": Value::Null,
            "fewshot_delimiter": json!(task.fewshot_delimiter()),
            "target_delimiter": json!(task.target_delimiter()),
        }),
    );
    out.insert("num_fewshot".into(), json!(task.num_fewshot));
    if let Some(v) = get("metric_list") {
        out.insert("metric_list".into(), v);
    }
    out.insert("output_type".into(), json!(task.output_type.name()));
    out.insert("repeats".into(), get("repeats").unwrap_or(json!(1)));
    out.insert(
        "should_decontaminate".into(),
        get("should_decontaminate").unwrap_or(json!(false)),
    );
    if let Some(query) = get("doc_to_decontamination_query") {
        out.insert("doc_to_decontamination_query".into(), query);
    }
    let mut metadata = c
        .get("metadata")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    metadata.insert("model".into(), json!(model_path.display().to_string()));
    metadata.insert("config_source".into(), json!(task.path.display().to_string()));
    out.insert("metadata".into(), Value::Object(metadata));
    Value::Object(out)
}

fn resolve(index: &mut TaskIndex, name: &str, depth: usize) -> Result<Node> {
    if depth > 16 {
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
        Some(Entry::Task { .. }) => Ok(Node::Task { name }),
        Some(Entry::Group { config, .. }) => {
            let mut children = Vec::new();
            for child in config.get("task").and_then(Value::as_array).into_iter().flatten() {
                match child {
                    // A tag inside a group stands for its tasks, listed as the group's own subtasks.
                    Value::String(child)
                        if !index.entries.contains_key(child) && index.tags.contains_key(child) =>
                    {
                        index.usable(child)?;
                        let tasks = index.tags[child].clone();
                        children.extend(tasks.into_iter().map(|name| Node::Task { name }));
                    }
                    Value::String(child) => children.push(resolve(index, child, depth + 1)?),
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
            Ok(Node::Group {
                name,
                alias,
                children,
                weight_by_size,
                version,
            })
        }
        None => match index.tags.get(&name).cloned() {
            // A tag is a plain list of tasks, reported one by one.
            Some(tasks) => Ok(Node::Group {
                name: name.clone(),
                alias: None,
                children: tasks.into_iter().map(|t| Node::Task { name: t }).collect(),
                weight_by_size: BTreeMap::new(),
                version: Value::Null,
            }),
            None => {
                let hints = index.suggestions(&name);
                let hint = if hints.is_empty() {
                    String::new()
                } else {
                    format!(" Did you mean: {}?", hints.join(", "))
                };
                bail!(
                    "unknown task, group or tag '{}'.{hint} (`sae-onnx eval --list-tasks` lists them; a path to a .yaml file works too)",
                    crate::files::printable(&name, 100)
                )
            }
        },
    }
}

fn collect_leaves(node: &Node, out: &mut Vec<String>) {
    match node {
        Node::Task { name } => {
            if !out.contains(name) {
                out.push(name.clone());
            }
        }
        Node::Group { children, .. } => children.iter().for_each(|c| collect_leaves(c, out)),
    }
}

#[allow(clippy::too_many_arguments)]
fn aggregate(
    node: &Node,
    scores: &mut Scores,
    results: &mut Map<String, Value>,
    groups: &mut Map<String, Value>,
    group_subtasks: &mut Map<String, Value>,
    versions: &mut Map<String, Value>,
    n_shot: &mut Map<String, Value>,
    higher_is_better: &mut Map<String, Value>,
) {
    let Node::Group {
        name,
        alias,
        children,
        weight_by_size,
        version,
    } = node
    else {
        return;
    };
    for child in children {
        aggregate(
            child,
            scores,
            results,
            groups,
            group_subtasks,
            versions,
            n_shot,
            higher_is_better,
        );
    }
    let child_names: Vec<String> = children
        .iter()
        .map(|c| match c {
            Node::Task { name } | Node::Group { name, .. } => name.clone(),
        })
        .collect();
    group_subtasks.insert(name.clone(), json!(child_names));
    versions.insert(name.clone(), version.clone());
    let shots: std::collections::BTreeSet<String> = child_names
        .iter()
        .filter_map(|c| n_shot.get(c).map(Value::to_string))
        .collect();
    if shots.len() == 1
        && let Some(v) = child_names.iter().find_map(|c| n_shot.get(c).cloned())
    {
        n_shot.insert(name.clone(), v);
    }
    let mut hib = Map::new();
    for c in &child_names {
        if let Some(Value::Object(m)) = higher_is_better.get(c) {
            for (k, v) in m {
                hib.entry(k.clone()).or_insert(v.clone());
            }
        }
    }
    if weight_by_size.is_empty() {
        // No aggregate_metric_list (e.g. a tag): lm-eval reports the children only.
        return;
    }
    let mut entry = Map::new();
    entry.insert(
        "alias".into(),
        json!(alias.clone().unwrap_or_else(|| name.clone())),
    );
    entry.insert("name".into(), json!(name));
    let mut group_scores = BTreeMap::new();
    let mut total = 0usize;
    let mut sample_count = Map::new();
    for (metric, weighted) in weight_by_size {
        let parts: Vec<(f64, Option<f64>, usize)> = child_names
            .iter()
            .filter_map(|c| {
                let (s, n) = scores.get(c)?;
                let (mean, se) = s.get(metric)?;
                Some((*mean, *se, *n))
            })
            .collect();
        if parts.is_empty() {
            continue;
        }
        let means: Vec<f64> = parts.iter().map(|p| p.0).collect();
        let ses: Vec<f64> = parts.iter().map(|p| p.1.unwrap_or(0.0)).collect();
        let sizes: Vec<usize> = parts.iter().map(|p| p.2).collect();
        let (mean, se) = metrics::aggregate_group(&means, &ses, &sizes, *weighted);
        // A subtask without a stderr (one document) leaves the group's "N/A", as in lm-eval:
        // pooling it as 0 would report a precision nobody measured.
        let se = parts.iter().all(|p| p.1.is_some()).then_some(se);
        total = sizes.iter().sum();
        entry.insert(format!("{metric},none"), json!(mean));
        entry.insert(
            format!("{metric}_stderr,none"),
            se.map_or(json!("N/A"), |se| json!(se)),
        );
        sample_count.insert(format!("{metric},none"), json!(total));
        group_scores.insert(metric.clone(), (mean, se));
    }
    let mut ordered = Map::new();
    ordered.insert("alias".into(), entry["alias"].clone());
    ordered.insert("name".into(), entry["name"].clone());
    ordered.insert("sample_len".into(), json!(total));
    for (k, v) in entry {
        if k != "alias" && k != "name" {
            ordered.insert(k, v);
        }
    }
    ordered.insert("sample_count".into(), Value::Object(sample_count));
    hib.retain(|k, _| group_scores.contains_key(k));
    higher_is_better.insert(name.clone(), Value::Object(hib));
    scores.insert(name.clone(), (group_scores, total));
    results.insert(name.clone(), Value::Object(ordered.clone()));
    groups.insert(name.clone(), Value::Object(ordered));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_windows_match_lm_eval() {
        // lm_eval.utils: [make_disjoint_window(w) for w in get_rolling_token_windows(list(range(1, 8)), 0, 3, 1)]
        let pairs = |ws: Vec<TokenRequest>| {
            ws.into_iter()
                .map(|w| (w.context, w.continuation))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(rolling_windows(&[1, 2, 3, 4, 5, 6, 7], 0, 3)),
            vec![
                (vec![0], vec![1, 2, 3]),
                (vec![3], vec![4, 5, 6]),
                (vec![4, 5, 6], vec![7])
            ]
        );
        assert_eq!(pairs(rolling_windows(&[5, 6], 0, 3)), vec![(vec![0], vec![5, 6])]);
        assert!(rolling_windows(&[], 0, 3).is_empty());
    }

    #[test]
    fn words_are_counted_as_python_splits_them() {
        // len(re.split(r"\s+", " a  b\nc ")) == 5
        assert_eq!(metrics::count_words(" a  b\nc "), 5);
    }
}
