//! `package`: a model made ready for another runtime, as that runtime expects to find it. One
//! file per target format; the shared parts are the checkpoint files the model came from
//! ([`checkpoint_files`]), the graph with its data file under the runtime's name
//! ([`graph`]), and the output folder built beside OUT and renamed into place ([`folder`]).
//! `--format llama.cpp` writes one file instead, a control vector ([`control_vector`]).

pub mod checkpoint_files;
pub mod control_vector;
pub mod folder;
pub mod genai;
pub mod graph;
pub mod llama_cpp;
pub mod transformers_js;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::hub::Hub;
use crate::infer::kv_cache::CacheLayout;
use crate::onnx::Model;

/// The runtimes `package` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A folder onnxruntime-genai opens with `og.Model(OUT)`.
    Genai,
    /// A folder transformers.js loads with `AutoModelForCausalLM.from_pretrained`.
    TransformersJs,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Self::Genai => "genai",
            Self::TransformersJs => "transformers.js",
        }
    }
}

/// What a sweepable model's coefficient inputs become in the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Coefficients {
    /// Plain graph inputs without a default: the caller feeds every one, every run (runtimes
    /// do not feed initializer-backed inputs, see [`graph`]).
    #[default]
    Inputs,
    /// Constants at the steer.csv values: no inputs left, the steered model as `patch` made it.
    Fixed,
}

#[derive(Debug, Clone)]
pub struct PackageOptions {
    pub model: PathBuf,
    pub format: Format,
    pub output: PathBuf,
    /// The checkpoint folder (config.json, generation_config.json, tokenizer files) when the
    /// model's metadata does not name one that can be read.
    pub checkpoint: Option<PathBuf>,
    pub coefficients: Coefficients,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct PackageReport {
    pub output: PathBuf,
    /// Files written into OUT, relative to it, with their sizes.
    pub files: Vec<(String, u64)>,
    /// How the weights got there.
    pub weights: graph::Placement,
    /// The coefficient inputs the caller must feed (empty unless [`Coefficients::Inputs`] on a
    /// sweepable model), with the steer.csv value of each.
    pub coefficient_inputs: Vec<(String, f64)>,
    pub seconds: f64,
}

/// Writes the package; nothing appears at `options.output` unless all of it was written.
pub fn package(hub: &Hub, options: &PackageOptions) -> Result<PackageReport> {
    let start = Instant::now();
    let model = Model::load(&options.model)?;
    match options.format {
        Format::Genai | Format::TransformersJs => {
            require_kv_cache(&model, &options.model, options.format)?;
            refuse_prompt_boundary(&model, &options.model, options.format)?;
        }
    }
    let files = checkpoint_files::CheckpointFiles::find(hub, &model, options.checkpoint.as_deref())
        .with_context(|| format!("packaging '{}'", options.model.display()))?;
    let mut inputs = vec![options.model.clone()];
    for location in model.external_locations()? {
        inputs.push(crate::onnx::external::resolve(&model.dir, &location)?);
    }
    inputs.extend(files.paths());
    let out = folder::OutputFolder::create(&options.output, &inputs, options.force)?;
    let written = match options.format {
        Format::Genai => genai::write(&model, &files, options.coefficients, out.path())?,
        Format::TransformersJs => transformers_js::write(&model, &files, options.coefficients, out.path())?,
    };
    out.commit()?;
    Ok(PackageReport {
        output: options.output.clone(),
        files: sizes(&options.output, &written.files)?,
        weights: written.weights,
        coefficient_inputs: written.coefficient_inputs,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What a format writer put into the folder.
#[derive(Debug, Clone)]
pub struct Written {
    pub files: Vec<String>,
    pub weights: graph::Placement,
    pub coefficient_inputs: Vec<(String, f64)>,
}

/// Runtimes that generate feed one token at a time and need the graph's KV cache.
fn require_kv_cache(model: &Model, path: &Path, format: Format) -> Result<()> {
    if CacheLayout::of(model)?.is_none() {
        anyhow::bail!(
            "'{}' is a full-sequence graph (no past_key_values inputs); --format {} needs a decoding graph: \
             export the checkpoint with `sae-onnx export CHECKPOINT -o base.onnx --kv-cache`, patch that, and package the result",
            path.display(),
            format.name()
        );
    }
    Ok(())
}

/// `prompt` / `generated` rows read the prompt boundary, an input these runtimes' generators
/// never feed: its default ("everything is prompt") would steer every token for `prompt` rows
/// and none for `generated` ones, silently.
fn refuse_prompt_boundary(model: &Model, path: &Path, format: Format) -> Result<()> {
    let reads_boundary = model
        .graph()
        .input
        .iter()
        .any(|i| i.name() == crate::contract::PROMPT_LENGTH);
    if reads_boundary {
        anyhow::bail!(
            "'{}' has steering rows with `positions` prompt or generated, which read the graph input {}; \
             {} does not feed it during generation, so those rows would steer every token (prompt) or none \
             (generated). Re-patch those rows with positions all, no_special or a range N:M (`sae-onnx inspect` \
             lists the rows and their rules)",
            path.display(),
            crate::contract::PROMPT_LENGTH,
            format.name()
        );
    }
    Ok(())
}

fn sizes(dir: &Path, files: &[String]) -> Result<Vec<(String, u64)>> {
    files
        .iter()
        .map(|f| {
            let meta = std::fs::metadata(dir.join(f))
                .with_context(|| format!("cannot read '{f}' in '{}'", dir.display()))?;
            Ok((f.clone(), meta.len()))
        })
        .collect()
}
