//! `sae-onnx export`: a Hugging Face checkpoint (hub id or local folder) of a family in
//! [`config::SUPPORTED`] to an ONNX model whose weights stream from the memory-mapped safetensors
//! into one external data file.

pub mod config;
pub mod decoder;
pub mod family;
pub mod gemma;
pub mod gpt2;
pub mod gpt2_config;
pub mod llama;
pub mod ops;
pub mod qwen;
pub mod weight_sink;
pub mod weights;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use tempfile::NamedTempFile;

use self::config::{Arch, Config};
use self::decoder::{DecoderGraph, LAYER_HOOKS, hook_name};
use self::family::Family;
use self::weight_sink::{WeightSink, data_tempfile};
use self::weights::Checkpoint;
use crate::contract::{ATTENTION_MASK, INPUT_IDS, LOGITS, meta, past_name, present_name};
use crate::hub::{Hub, RepoKind, looks_like_repo_id};
use crate::onnx::builder::{GraphBuilder, GraphFragment};
use crate::onnx::datafile::DataRecord;
use crate::onnx::make::{Dim, make_graph, make_model, make_opsetid, make_tensor_value_info};
use crate::onnx::pb::{NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::{DataType, ExternalDataPolicy, MS_DOMAIN, Model, OPSET, SaveOptions, SaveReport};
use crate::progress;

pub use self::ops::Ops;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Weight and activation type; norms, softmax and the logits stay float32.
    pub dtype: DataType,
    /// Standard operators only, or ONNX Runtime's fused ones; `None`: [`Ops::default_for`] the dtype.
    pub ops: Option<Ops>,
    /// Branch, tag or commit for a hub id.
    pub revision: String,
    /// Export the decoding graph (KV cache in and out) instead of the full-sequence graph.
    pub kv_cache: bool,
    /// Replace an existing output file.
    pub force: bool,
    pub progress: bool,
    /// Where a hub id's files come from (the command's one [`Hub`]).
    pub hub: Hub,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            dtype: DataType::Float,
            ops: None,
            revision: "main".into(),
            kv_cache: false,
            force: false,
            progress: false,
            hub: Hub::from_env(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportReport {
    pub architecture: Arch,
    pub layers: usize,
    pub nodes: usize,
    pub parameters: u64,
    pub save: SaveReport,
    pub seconds: f64,
}

/// A checkpoint folder and how to name where it came from.
struct Source {
    dir: PathBuf,
    /// What the metadata records: the hub id, or the folder's absolute path.
    name: String,
    revision: Option<String>,
}

pub fn export(model: &str, out: &Path, options: &ExportOptions) -> Result<ExportReport> {
    let start = Instant::now();
    if !matches!(
        options.dtype,
        DataType::Float | DataType::Float16 | DataType::Bfloat16
    ) {
        bail!("export dtype must be f32, f16 or bf16");
    }
    let ops = options.ops.unwrap_or_else(|| Ops::default_for(options.dtype));
    let checkpoint = open_checkpoint(model, out, options)?;
    let files = OutputFiles::create_for(out)?;
    let built = build_graph(&checkpoint, ops, options, &files)?;
    let parameters: u64 = built
        .initializers
        .iter()
        .filter(|t| !t.name().starts_with("/const/"))
        .map(|t| t.numel())
        .sum();
    let node_count = built.nodes.len();
    let (inputs, outputs) = graph_interface(&checkpoint.config, options);
    let graph = make_graph(built.nodes, "main_graph", inputs, outputs, built.initializers);
    let mut opsets = vec![make_opsetid("", OPSET)];
    if ops == Ops::Ort {
        opsets.push(make_opsetid(MS_DOMAIN, 1));
    }
    let mut model = Model::in_dir(make_model(graph, opsets), files.dir.clone());
    record_metadata(&mut model, &checkpoint, ops, options)?;
    // The record of the data exactly as this export wrote it: saving checks the file in place
    // against it, so a concurrent export that replaced the file in between is an error here,
    // and a later one an error when the model is loaded.
    let records = std::collections::BTreeMap::from([(files.data_name.clone(), built.data_record.clone())]);
    model.set_metadata(
        crate::onnx::datafile::RECORDS_KEY,
        &serde_json::to_string(&records)?,
    );
    let save = save_with_data(&model, out, built.data, &files.data_path, &built.data_record)?;
    Ok(ExportReport {
        architecture: checkpoint.arch,
        layers: checkpoint.config.num_hidden_layers,
        nodes: node_count,
        parameters,
        save,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// A checkpoint whose config and weights agree.
struct CheckedCheckpoint {
    source: Source,
    config: Config,
    arch: Arch,
    family: Family,
    weights: Checkpoint,
}

/// Finds `model`'s folder (downloading a hub id) and checks its config against its weights.
fn open_checkpoint(model: &str, out: &Path, options: &ExportOptions) -> Result<CheckedCheckpoint> {
    // The output is checked before a download (a refused path should not cost one) and again,
    // against the checkpoint's files, once the folder is known to be a checkpoint (so a wrong
    // MODEL such as `/` is not walked file by file).
    let data_out = data_path_for(out)?;
    let check_outputs = |inputs: &crate::files::Inputs| -> Result<()> {
        crate::files::check_output(out, inputs, options.force)?;
        crate::files::check_output(&data_out, inputs, options.force)
    };
    let mut inputs = crate::files::Inputs::new();
    check_outputs(&inputs)?;
    let source = resolve_source(&options.hub, model, &options.revision)?;
    let config_path = source.dir.join("config.json");
    let (config, arch) = Config::load(&config_path)?;
    let family = family_of(&config, arch).with_context(|| format!("in '{}'", config_path.display()))?;
    let weights = Checkpoint::open(&source.dir)?;
    inputs.add_tree(&source.dir);
    check_outputs(&inputs)?;
    match family.layout {
        family::Layout::Gpt2 => gpt2::check_weights(&config, &family, &weights, &config_path)?,
        family::Layout::Rotary => config.check_weights(arch, &family, &weights, &config_path)?,
    }
    Ok(CheckedCheckpoint {
        source,
        config,
        arch,
        family,
        weights,
    })
}

/// What the decoder of `arch` does differently, from its family's file.
pub fn family_of(config: &Config, arch: Arch) -> Result<Family> {
    match arch {
        Arch::Gemma | Arch::Gemma2 | Arch::Gemma3 => gemma::family(config, arch),
        Arch::Llama | Arch::Mistral => llama::family(config, arch),
        Arch::Qwen2 | Arch::Qwen3 => qwen::family(config, arch),
        Arch::Gpt2 => gpt2::family(config),
    }
}

/// Where an export writes: the graph, and its data file beside it.
struct OutputFiles {
    dir: PathBuf,
    /// The data file's name, as the graph's external-data locations give it.
    data_name: String,
    data_path: PathBuf,
}

impl OutputFiles {
    /// The files for the graph `out`, its folder created.
    fn create_for(out: &Path) -> Result<Self> {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
        let file_name = out
            .file_name()
            .and_then(|n| n.to_str())
            .context("the output path has no file name")?;
        let data_name = format!("{file_name}.data");
        Ok(Self {
            data_path: dir.join(&data_name),
            dir,
            data_name,
        })
    }
}

/// The graph's nodes and initializers, with the weights they refer to written to a temporary
/// data file.
struct BuiltGraph {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    /// The data file, complete with its trailer, not yet in place.
    data: NamedTempFile,
    data_record: DataRecord,
}

/// Builds the decoder graph, streaming each weight from the checkpoint into the data file.
fn build_graph(
    checkpoint: &CheckedCheckpoint,
    ops: Ops,
    options: &ExportOptions,
    files: &OutputFiles,
) -> Result<BuiltGraph> {
    let data = data_tempfile(&files.dir, &files.data_name)?;
    let bar = progress::bytes_bar(
        checkpoint.weights.total_bytes(),
        "exporting weights",
        options.progress,
    );
    let mut sink = WeightSink::new(data.as_file().try_clone()?, &files.data_name, bar);
    let mut builder = GraphBuilder::with_store(&mut sink);
    DecoderGraph {
        config: &checkpoint.config,
        arch: checkpoint.arch,
        family: &checkpoint.family,
        dtype: options.dtype,
        ops,
        kv_cache: options.kv_cache,
    }
    .build(&mut builder, &checkpoint.weights)?;
    let GraphFragment {
        nodes, initializers, ..
    } = builder.finish();
    let data_record = sink
        .finish()
        .with_context(|| format!("cannot write '{}'", files.data_path.display()))?;
    Ok(BuiltGraph {
        nodes,
        initializers,
        data,
        data_record,
    })
}

/// The graph's inputs and outputs: token ids, the attention mask and the logits, and for a
/// decoding graph the KV cache of every layer in and out.
fn graph_interface(config: &Config, options: &ExportOptions) -> (Vec<ValueInfoProto>, Vec<ValueInfoProto>) {
    let token_dims = ["batch".into(), "sequence".into()];
    let mut inputs = vec![make_tensor_value_info(INPUT_IDS, DataType::Int64, &token_dims)];
    let mut outputs = vec![make_tensor_value_info(
        LOGITS,
        DataType::Float,
        &[
            "batch".into(),
            "sequence".into(),
            (config.vocab_size as i64).into(),
        ],
    )];
    if !options.kv_cache {
        inputs.push(make_tensor_value_info(
            ATTENTION_MASK,
            DataType::Int64,
            &token_dims,
        ));
        return (inputs, outputs);
    }
    // The mask covers the cached and the new tokens.
    inputs.push(make_tensor_value_info(
        ATTENTION_MASK,
        DataType::Int64,
        &["batch".into(), "total_sequence".into()],
    ));
    let cache_dims = |len: &str| -> Vec<Dim> {
        vec![
            "batch".into(),
            (config.kv_heads() as i64).into(),
            len.into(),
            (config.head_dim() as i64).into(),
        ]
    };
    for layer in 0..config.num_hidden_layers {
        for kind in ["key", "value"] {
            inputs.push(make_tensor_value_info(
                &past_name(layer, kind),
                options.dtype,
                &cache_dims("past_sequence"),
            ));
            outputs.push(make_tensor_value_info(
                &present_name(layer, kind),
                options.dtype,
                &cache_dims("total_sequence"),
            ));
        }
    }
    (inputs, outputs)
}

/// The `sae_onnx.*` metadata: where the model came from, its shape, and its hooks.
fn record_metadata(
    model: &mut Model,
    checkpoint: &CheckedCheckpoint,
    ops: Ops,
    options: &ExportOptions,
) -> Result<()> {
    let config = &checkpoint.config;
    let source = &checkpoint.source;
    // GPT-2 adds its learned position embeddings (TransformerLens' `hook_pos_embed`).
    let embeddings: &[&str] = match checkpoint.family.layout {
        self::family::Layout::Rotary => &["hook_embed"],
        self::family::Layout::Gpt2 => &["hook_embed", "hook_pos_embed"],
    };
    let hooks: Vec<String> = embeddings
        .iter()
        .map(|&hook| hook.to_owned())
        .chain(
            (0..config.num_hidden_layers)
                .flat_map(|l| LAYER_HOOKS.iter().map(move |site| hook_name(l, site))),
        )
        .collect();
    for (key, value) in [
        (meta::FORMAT, "1".to_owned()),
        (meta::SOURCE, source.name.clone()),
        (meta::ARCHITECTURE, checkpoint.arch.hf_name().to_owned()),
        (meta::NUM_LAYERS, config.num_hidden_layers.to_string()),
        (meta::D_MODEL, config.hidden_size.to_string()),
        (
            meta::D_ATTN_Z,
            (config.num_attention_heads * config.head_dim()).to_string(),
        ),
        (meta::VOCAB_SIZE, config.vocab_size.to_string()),
        (meta::MAX_POSITIONS, config.max_position_embeddings.to_string()),
        (
            meta::DTYPE,
            crate::onnx::tensor::dtype_name(options.dtype).to_owned(),
        ),
        (meta::TOKENIZER, source.name.clone()),
        (meta::HOOKS, serde_json::to_string(&hooks)?),
        (meta::OPS, ops.name().to_owned()),
        (
            meta::KV_CACHE,
            if options.kv_cache { "1" } else { "0" }.to_owned(),
        ),
    ] {
        model.set_metadata(key, &value);
    }
    if let Some(revision) = &source.revision {
        model.set_metadata(meta::REVISION, revision);
    }
    Ok(())
}

/// Puts the data file in place, then saves the graph that reads it.
fn save_with_data(
    model: &Model,
    out: &Path,
    data: NamedTempFile,
    data_path: &Path,
    data_record: &DataRecord,
) -> Result<SaveReport> {
    // The data file goes into place first, so the model never appears without its weights; a
    // failure to write the model removes it again.
    data.persist(data_path)
        .with_context(|| format!("cannot write '{}'", data_path.display()))?;
    let saved = model.save(
        out,
        &SaveOptions {
            external: ExternalDataPolicy::Never,
            progress: false,
        },
    );
    let mut save = match saved {
        Ok(save) => save,
        Err(err) => {
            // Only our own data file goes: another export to the same path may have replaced
            // it meanwhile, and that one's graph needs it.
            if DataRecord::of_file(data_path).is_ok_and(|r| &r == data_record) {
                let _ = std::fs::remove_file(data_path);
            }
            return Err(err);
        }
    };
    save.shared.clear();
    save.data_file = Some((data_path.to_path_buf(), data_record.bytes));
    Ok(save)
}

/// `OUT.data`, the data file written beside `out` (by export, and by a patch too big to stay
/// inline).
pub fn data_path_for(out: &Path) -> Result<PathBuf> {
    let name = out.file_name().and_then(|n| n.to_str()).with_context(|| {
        format!(
            "'{}' has no file name; give the .onnx file to write",
            out.display()
        )
    })?;
    Ok(out.with_file_name(format!("{name}.data")))
}

/// A local folder as it is; a hub id through the Hugging Face cache (downloading what is missing).
fn resolve_source(hub: &Hub, model: &str, revision: &str) -> Result<Source> {
    let path = Path::new(model);
    if path.is_dir() {
        let dir = path.canonicalize()?;
        return Ok(Source {
            name: dir.display().to_string(),
            dir,
            revision: None,
        });
    }
    if !looks_like_repo_id(model) {
        bail!("'{model}' is neither a folder nor a Hugging Face model id (org/name)");
    }
    let config = hub.file(model, RepoKind::Model, revision, "config.json")?;
    let dir = config.parent().context("cache path has a parent")?.to_path_buf();
    for optional in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if let Err(err) = hub.file(model, RepoKind::Model, revision, optional) {
            tracing::warn!("{optional}: {err:#}");
        }
    }
    match hub.file(model, RepoKind::Model, revision, "model.safetensors.index.json") {
        Ok(index) => {
            let text = crate::files::read_text(&index, "safetensors index", 64 << 20)?;
            let index: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("'{}' is not a safetensors index", index.display()))?;
            let mut shards: Vec<&str> = index["weight_map"]
                .as_object()
                .context("safetensors index without weight_map")?
                .values()
                .filter_map(|v| v.as_str())
                .collect();
            shards.sort_unstable();
            shards.dedup();
            for shard in shards {
                hub.file(model, RepoKind::Model, revision, shard)?;
            }
        }
        Err(_) => {
            hub.file(model, RepoKind::Model, revision, "model.safetensors")?;
        }
    }
    // The snapshot folder is named by the commit the revision resolved to.
    let commit = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    Ok(Source {
        dir,
        name: model.to_owned(),
        revision: commit,
    })
}
