//! `sae-onnx patch`: resolve the base model (an .onnx file, an HF id or folder exported once into
//! the cache, or the SAE release's own base model), splice the plan, and write the steered model
//! beside it so the weights are shared, not copied.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};

use super::bos;
use super::plan::{PlanField, SteeringPlan};
use super::rules::PositionRule;
use super::splice::{self, SpliceOptions, SpliceReport};
use super::steering;
use crate::export::{self, ExportOptions};
use crate::files::{self, Inputs};
use crate::hub::{Hub, RepoKind, looks_like_repo_id};
use crate::onnx::{Model, SaveOptions, SaveReport};
use crate::sae::{SaeSource, registry};

#[derive(Debug, Clone)]
pub struct PatchOptions {
    pub csv: PathBuf,
    pub output: PathBuf,
    /// An .onnx file, a Hugging Face id, or a checkpoint folder; `None`: the SAE release's base model.
    pub model: Option<String>,
    pub replace: bool,
    pub progress: bool,
}

pub struct PatchReport {
    pub base: PathBuf,
    pub splice: SpliceReport,
    pub save: SaveReport,
    pub seconds: f64,
    /// Where an SAE's `prepend_bos` and the model's tokenizer disagree (see [`super::bos`]).
    pub warnings: Vec<String>,
}

/// Patches with fixed coefficients, never over an existing file (see [`patch_with_output`]).
pub fn patch(options: &PatchOptions) -> Result<PatchReport> {
    patch_with_output(options, &PatchOutput::default())
}

/// How the patched model is written: with overridable coefficient inputs, over an existing file.
/// Kept apart from [`PatchOptions`] so code that builds `PatchOptions` literally keeps compiling
/// as choices are added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatchOutput {
    /// Each row's coefficient becomes an overridable graph input `steer.coeff.<k>` (see
    /// [`crate::contract::sweep`]).
    pub sweepable: bool,
    /// Replace an existing output file (never an input of the patch, nor anything that is not a
    /// regular file).
    pub force: bool,
}

/// [`patch_in`] with the Hub the environment configures (download bars as `options.progress`).
pub fn patch_with_output(options: &PatchOptions, output: &PatchOutput) -> Result<PatchReport> {
    patch_in(&Hub::from_env().with_progress(options.progress), options, output)
}

/// Patches, fetching hub SAEs and base models through `hub` (the command's one [`Hub`]).
pub fn patch_in(hub: &Hub, options: &PatchOptions, output: &PatchOutput) -> Result<PatchReport> {
    let start = Instant::now();
    let out = &options.output;
    let data_out = export::data_path_for(out)?;
    let check = |inputs: &Inputs| -> Result<()> {
        files::check_output(out, inputs, output.force)?;
        files::check_output(&data_out, inputs, output.force)
    };
    // Checked first with what is known before any work (a base export can take minutes), and
    // again once every input (base model data, SAE files) is known, before anything is written.
    let mut inputs = Inputs::new();
    inputs.add(&options.csv);
    if let Some(m) = &options.model {
        inputs.add_tree(Path::new(m));
    }
    check(&inputs)?;
    let plan = SteeringPlan::from_csv_file(&options.csv)?;
    if plan.rows.is_empty() {
        bail!("{}: the steering plan has no rows", options.csv.display());
    }
    for row in &plan.rows {
        if let SaeSource::Folder(dir) = &row.sae {
            inputs.add_tree(dir);
        }
    }
    check(&inputs)?;
    let base = base_model(hub, &plan, options)?;
    let mut model = Model::load(&base)?;
    inputs.add(&base);
    for location in model.external_locations()? {
        inputs.add(&crate::onnx::external::resolve(&model.dir, &location)?);
    }
    let (hooks, provenance) = steering::steering(&plan, hub, output.sweepable, &mut inputs)?;
    let warnings = bos::warnings(&provenance, || {
        bos::TokenizerStart::of(&crate::tokenizer::Tokenizer::for_model(hub, &model, None)?)
    });
    let special_ids = match plan.rows.iter().find(|r| r.steer_at == PositionRule::NoSpecial) {
        Some(row) => Some(special_ids(hub, &model).with_context(|| {
            format!(
                "{}: positions no_special needs the model's tokenizer",
                plan.location(row, PlanField::Positions)
            )
        })?),
        None => None,
    };
    check(&inputs)?;
    let report = splice::splice(
        &mut model,
        &plan,
        &hooks,
        &provenance,
        &SpliceOptions {
            replace: options.replace,
            sweepable: output.sweepable,
        },
        special_ids.as_deref(),
    )?;
    let save = model.save(
        &options.output,
        &SaveOptions {
            progress: options.progress,
            ..Default::default()
        },
    )?;
    Ok(PatchReport {
        base,
        splice: report,
        save,
        seconds: start.elapsed().as_secs_f64(),
        warnings,
    })
}

/// transformers' `all_special_ids` of the model's tokenizer, as the graph compares them.
fn special_ids(hub: &Hub, model: &Model) -> Result<Vec<i64>> {
    let ids = crate::tokenizer::special_token_ids(hub, model)?;
    if ids.is_empty() {
        bail!(
            "the model's tokenizer lists no special tokens (no tokenizer_config.json or special_tokens_map.json \
             beside its tokenizer.json)"
        );
    }
    Ok(ids.into_iter().map(i64::from).collect())
}

/// The .onnx file to patch.
fn base_model(hub: &Hub, plan: &SteeringPlan, options: &PatchOptions) -> Result<PathBuf> {
    let source = match &options.model {
        Some(m) if m.ends_with(".onnx") => return Ok(PathBuf::from(m)),
        Some(m) => m.clone(),
        None => release_base_model(plan)?,
    };
    exported_copy(hub, &source, options.progress)
}

/// The folder's path and, for each file in it, name, size, modification time and inode: what
/// changes when a checkpoint is rewritten, without reading gigabytes to hash them.
fn folder_identity(dir: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let mut entries: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let meta = std::fs::metadata(e.path()).ok()?;
                    meta.is_file().then(|| {
                        format!(
                            "{}\0{}\0{}.{}\0{}",
                            e.file_name().to_string_lossy(),
                            meta.len(),
                            meta.mtime(),
                            meta.mtime_nsec(),
                            meta.ino()
                        )
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    entries.sort();
    format!("{}\n{}", dir.display(), entries.join("\n"))
}

/// The base model every row's SAE release names (all must agree).
fn release_base_model(plan: &SteeringPlan) -> Result<String> {
    let mut base: Option<String> = None;
    for row in &plan.rows {
        let SaeSource::Release(release) = &row.sae else {
            bail!(
                "{}: the SAE comes from {}, which names no base model; pass --model (an .onnx file, a Hugging Face id or a folder)",
                plan.location(row, super::plan::PlanField::Sae),
                row.sae
            );
        };
        let model = registry().release(release)?.base_model_hf.clone();
        match &base {
            Some(b) if *b != model => {
                bail!("the plan's SAEs belong to different base models ({b} and {model}); pass --model")
            }
            _ => base = Some(model),
        }
    }
    base.context("the plan has no rows")
}

/// Exports `source` (hub id or folder) once into the cache and returns the .onnx path. The cache
/// key is the checkpoint's identity, not only its name: a folder whose files changed since, or a
/// hub id whose branch moved to another commit, gets a fresh export, never the stale one.
fn exported_copy(hub: &Hub, source: &str, progress: bool) -> Result<PathBuf> {
    let key: String = if Path::new(source).is_dir() {
        let abs = Path::new(source)
            .canonicalize()
            .with_context(|| format!("cannot read the checkpoint folder '{source}'"))?;
        format!(
            "dir-{}",
            &crate::digest::hash_string(&folder_identity(&abs))[..16]
        )
    } else if looks_like_repo_id(source) {
        let config = hub.file(source, RepoKind::Model, "main", "config.json")?;
        let commit = config
            .parent()
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        format!("{}--{commit}", source.replace('/', "--"))
    } else {
        bail!(
            "--model '{}' is neither an .onnx file, a checkpoint folder nor a Hugging Face model id (org/name)",
            files::printable(source, 200)
        );
    };
    let dir = crate::paths::cache_root().join("models").join(key);
    let path = dir.join("model.onnx");
    if path.exists() {
        tracing::info!("using the cached export {}", path.display());
        return Ok(path);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    eprintln!("exporting base model {source} once into {}", dir.display());
    export::export(
        source,
        &path,
        &ExportOptions {
            progress,
            hub: hub.clone(),
            ..Default::default()
        },
    )?;
    Ok(path)
}
