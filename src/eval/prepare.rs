//! What every pass over one model and task list shares, built once: the model and tokenizer,
//! the context length, the task tree, every document's requests, the files read, and (with
//! `--cache`) what the answers depend on.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use super::groups::TaskTree;
use super::options::EvalOptions;
use super::requests::{Document, RequestEncoder};
use super::shard::{RunIdentity, Shard};
use super::task::Task;
use super::task_index::{Entry, TaskIndex};
use crate::contract::{MAX_CONTEXT, meta};
use crate::files::Inputs;
use crate::onnx::Model;
use crate::tokenizer::Tokenizer;

/// Without `max_position_embeddings` in the metadata (a foreign graph): lm-eval's HFLM default.
const DEFAULT_MAX_LENGTH: usize = 2048;

/// The documents and requests of a model and task list (a coefficient sweep scores them once
/// per value).
pub struct PreparedEval {
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub max_length: usize,
    /// The token a context that is empty or a rolling window starts from (BOS, else EOS).
    pub prefix_token: u32,
    pub roots: Vec<TaskTree>,
    /// Each task and the documents scored (under `--shard`, its slice).
    pub tasks: Vec<(Task, Vec<Document>)>,
    /// Per task of `tasks`, the documents of the whole evaluation (`--limit` of them): what an
    /// unsharded run scores.
    pub evaluated_documents: Vec<usize>,
    /// Every file the evaluation reads: no output may replace one.
    pub inputs: Inputs,
    /// With `--cache`: what every pass's answers depend on besides its feeds.
    pub identity: Option<Map<String, Value>>,
    /// With `--shard`: what every shard of the run must share (its sweep point filled per pass).
    pub shard_identity: Option<RunIdentity>,
}

impl PreparedEval {
    pub fn new(model_path: &Path, options: &EvalOptions) -> Result<Self> {
        if let Some(limit) = options.limit
            && !(limit.is_finite() && limit > 0.0)
        {
            bail!("limit {limit} is not a number of documents nor a fraction above 0");
        }
        let model = Model::load(model_path)?;
        let tokenizer = Tokenizer::for_model(&options.hub, &model, options.tokenizer.as_deref())?;
        check_vocab(&model, &tokenizer)?;
        let max_length = context_length(model_path, &model, options.max_length)?;
        let prefix_token = tokenizer
            .bos_id
            .or(tokenizer.eos_id)
            .context("the tokenizer has neither BOS nor EOS")?;
        // lm-eval 0.4.13's HFLM encodes with the tokenizer's default special tokens: Gemma's
        // template puts BOS first; tokenizers without one add nothing.
        let encoder = RequestEncoder {
            tokenizer: &tokenizer,
            add_bos: true,
            prefix_token,
            max_length,
        };

        let mut dirs = vec![super::bundled::tasks_dir()?];
        dirs.extend(options.include_paths.iter().cloned());
        let mut index = TaskIndex::scan(&dirs)?;
        let roots = options
            .tasks
            .iter()
            .map(|name| TaskTree::resolve(&mut index, name))
            .collect::<Result<Vec<_>>>()?;
        let mut task_names = Vec::new();
        for root in &roots {
            root.collect_tasks(&mut task_names);
        }
        // Few-shot draws happen in document order, as in lm-eval.
        let mut tasks = task_names
            .iter()
            .map(|name| task_documents(&index, name, options, encoder))
            .collect::<Result<Vec<_>>>()?;
        let evaluated_documents = tasks.iter().map(|(_, docs)| docs.len()).collect();
        if let Some(shard) = options.shard {
            take_shard(&mut tasks, shard)?;
        }
        let inputs = inputs_of(model_path, &model, &tokenizer, &index, &tasks)?;
        let identity = match &options.cache {
            Some(_) => Some(cache_identity(
                model_path, &model, &tokenizer, options, max_length,
            )?),
            None => None,
        };
        let shard_identity = match options.shard {
            Some(_) => Some(shard_identity(
                model_path, &model, &tokenizer, options, max_length, &tasks,
            )?),
            None => None,
        };
        Ok(Self {
            model,
            tokenizer,
            max_length,
            prefix_token,
            roots,
            tasks,
            evaluated_documents,
            inputs,
            identity,
            shard_identity,
        })
    }
}

/// Keeps each task's documents of `shard`. Every document was built (few-shot draws in order)
/// before: a shard's prompts are the unsharded run's. A shard with no document of a task would
/// have nothing to score, so N is bounded by the smallest task.
fn take_shard(tasks: &mut [(Task, Vec<Document>)], shard: Shard) -> Result<()> {
    for (task, documents) in tasks {
        if documents.len() < shard.count {
            bail!(
                "--shard {shard}: task '{}' has {} documents to evaluate, fewer than the {} shards; \
                 use at most {} shards",
                task.name,
                documents.len(),
                shard.count,
                documents.len()
            );
        }
        documents.retain(|d| shard.selects(d.doc_id));
    }
    Ok(())
}

/// What must be equal across the shards of one run for their merge to be the unsharded run.
fn shard_identity(
    model_path: &Path,
    model: &Model,
    tokenizer: &Tokenizer,
    options: &EvalOptions,
    max_length: usize,
    tasks: &[(Task, Vec<Document>)],
) -> Result<RunIdentity> {
    use crate::digest::sha256_file;
    Ok(RunIdentity {
        model_name: model_path.display().to_string(),
        model: json!({
            "graph": sha256_file(model_path, "model")?,
            "data": model.data_identities()?,
        }),
        tokenizer: sha256_file(&tokenizer.path, "tokenizer")?,
        steering: model
            .metadata("sae_onnx.steering")
            .map(|s| serde_json::from_str(s).unwrap_or(json!(s))),
        sweep: None,
        tasks: options.tasks.clone(),
        versions: tasks
            .iter()
            .map(|(task, _)| (task.name.clone(), task.version()))
            .collect(),
        limit: options.limit,
        num_fewshot: options.num_fewshot,
        fewshot_seed: options.fewshot_seed,
        max_length,
        log_samples: options.log_samples,
    })
}

/// `--max-length`, else the model's `max_position_embeddings`, else lm-eval's default.
fn context_length(model_path: &Path, model: &Model, requested: Option<usize>) -> Result<usize> {
    let max_length = match (requested, model.metadata(meta::MAX_POSITIONS)) {
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
    Ok(max_length)
}

/// Loads task `name` and builds the requests of its evaluated documents (`--limit` of them).
fn task_documents(
    index: &TaskIndex,
    name: &str,
    options: &EvalOptions,
    encoder: RequestEncoder,
) -> Result<(Task, Vec<Document>)> {
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
    let mut documents = Vec::with_capacity(n);
    for (doc_id, doc) in docs.into_iter().enumerate() {
        let document = encoder
            .document(&mut task, doc_id, doc)
            .with_context(|| format!("task '{name}', document {doc_id}"))?;
        documents.push(document);
    }
    Ok((task, documents))
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

/// Every file the evaluation reads: the model and its data files, the tokenizer, the task and
/// group YAMLs, the local dataset files.
fn inputs_of(
    model_path: &Path,
    model: &Model,
    tokenizer: &Tokenizer,
    index: &TaskIndex,
    tasks: &[(Task, Vec<Document>)],
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
            .dataset_path
            .as_deref()
            .is_some_and(|p| matches!(p, "json" | "csv" | "parquet"));
        let files = task
            .config
            .dataset_kwargs
            .as_ref()
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
) -> Result<Map<String, Value>> {
    use crate::digest::sha256_file;
    let mut key = Map::new();
    key.insert("model".into(), json!(sha256_file(model_path, "model")?));
    key.insert("data".into(), serde_json::to_value(model.data_identities()?)?);
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
