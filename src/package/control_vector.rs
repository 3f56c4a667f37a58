//! `package --format llama.cpp`: the steering a llama.cpp control vector can carry, taken from
//! the model (the constants our patch spliced in, so the file holds the very float values the
//! graph adds) or from a steer.csv (the same sums `patch` would splice), then written by
//! [`super::llama_cpp`].
//!
//! llama.cpp adds one fixed vector per decoder layer output, at every position
//! ([`super::llama_cpp`] cites where in its source), so only steering that is exactly that is
//! accepted: `add` rows (plain, or `normalize unit`, which are constants too) with fixed
//! coefficients at `blocks.L.hook_resid_post`, 1 <= L < n_layer, on all positions. Everything
//! else is refused with what llama.cpp can express, before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::llama_cpp::ControlVector;
use crate::contract::meta;
use crate::contract::{STEER_TENSOR_PREFIX, is_steering_add};
use crate::files::Inputs;
use crate::hook::{HookPoint, Site};
use crate::hub::Hub;
use crate::onnx::DataType;
use crate::onnx::Model;
use crate::steer::plan::{SteerAction, SteeringPlan};
use crate::steer::rules::{Normalize, PositionRule};

#[derive(Debug, Clone)]
pub struct ControlVectorOptions {
    /// The model: its steering is packaged, or with `csv` only its shape (architecture, layers,
    /// width) is read.
    pub model: PathBuf,
    /// A steer.csv to package instead of the model's recorded steering.
    pub csv: Option<PathBuf>,
    pub output: PathBuf,
    pub force: bool,
}

#[derive(Debug, Clone)]
pub struct ControlVectorReport {
    pub output: PathBuf,
    pub bytes: u64,
    pub model_hint: String,
    pub layer_count: u32,
    /// Decoder layer → the L2 norm of the vector added to its output.
    pub norms: Vec<(u32, f64)>,
    pub seconds: f64,
}

/// What llama.cpp can express, said in every refusal.
const EXPRESSIBLE: &str = "a llama.cpp control vector adds one fixed vector to the output of decoder layers 1..n_layer-1 \
     at every position: only `add` rows with fixed coefficients at blocks.L.hook_resid_post (L >= 1), positions all, \
     normalize none or unit";

pub fn control_vector(hub: &Hub, options: &ControlVectorOptions) -> Result<ControlVectorReport> {
    let start = Instant::now();
    let path = &options.model;
    let model = Model::load(path)?;
    let shape = Shape::of(&model, path)?;
    let mut inputs = Inputs::new();
    inputs.add(path);
    if let Some(csv) = &options.csv {
        inputs.add(csv);
    }
    crate::files::check_output(&options.output, &inputs, options.force)?;
    let directions = match &options.csv {
        Some(csv) => from_csv(hub, csv, &mut inputs)?,
        None => from_model(&model, path)?,
    };
    for (&layer, v) in &directions {
        check_layer(layer, shape.layer_count, || {
            format!("blocks.{layer}.hook_resid_post")
        })?;
        if v.len() != shape.d_model {
            bail!(
                "the vector for blocks.{layer}.hook_resid_post has {} values but '{}' has d_model {}",
                v.len(),
                path.display(),
                shape.d_model
            );
        }
    }
    // SAE files read for --csv are inputs too.
    crate::files::check_output(&options.output, &inputs, options.force)?;
    let vector = ControlVector {
        model_hint: shape.model_hint.to_owned(),
        layer_count: shape.layer_count,
        directions,
    };
    vector.write(&options.output)?;
    let norms = vector
        .directions
        .iter()
        .map(|(&l, v)| (l, v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()))
        .collect();
    Ok(ControlVectorReport {
        output: options.output.clone(),
        bytes: std::fs::metadata(&options.output)
            .with_context(|| format!("cannot read '{}'", options.output.display()))?
            .len(),
        model_hint: vector.model_hint,
        layer_count: vector.layer_count,
        norms,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What the control vector's header needs from the model.
struct Shape {
    model_hint: &'static str,
    layer_count: u32,
    d_model: usize,
}

impl Shape {
    fn of(model: &Model, path: &Path) -> Result<Self> {
        let read = |key: &str| {
            model.metadata(key).with_context(|| {
                format!(
                    "'{}' has no {key} metadata: package takes models written by `sae-onnx export` or `patch`",
                    path.display()
                )
            })
        };
        // llama.cpp's architecture names (LLM_ARCH_NAMES in src/llama-arch.cpp).
        let model_hint = match read(meta::ARCHITECTURE)? {
            "GemmaForCausalLM" => "gemma",
            "Gemma2ForCausalLM" => "gemma2",
            "Gemma3ForCausalLM" => "gemma3",
            other => bail!(
                "'{}' is a {other}; --format llama.cpp knows the llama.cpp names of Gemma 1, 2 and 3",
                path.display()
            ),
        };
        let number = |key: &str| -> Result<u64> {
            let text = read(key)?;
            text.parse()
                .with_context(|| format!("'{}': {key} is '{text}', not a count", path.display()))
        };
        Ok(Self {
            model_hint,
            layer_count: u32::try_from(number(meta::NUM_LAYERS)?)
                .with_context(|| format!("'{}': {} is too large", path.display(), meta::NUM_LAYERS))?,
            d_model: number(meta::D_MODEL)? as usize,
        })
    }
}

fn check_layer(layer: u32, layer_count: u32, hook: impl Fn() -> String) -> Result<()> {
    if layer == 0 {
        bail!(
            "{}: llama.cpp cannot steer decoder layer 0's output (llama_adapter_cvec::apply starts at layer 1); {EXPRESSIBLE}",
            hook()
        );
    }
    if layer >= layer_count {
        bail!("{}: the model has {layer_count} decoder layers", hook());
    }
    Ok(())
}

/// The layer of a hook llama.cpp can steer, or why it cannot.
fn resid_post_layer(hook: HookPoint, at: &str) -> Result<u32> {
    match (hook.site, hook.layer) {
        (Site::ResidPost, Some(layer)) => Ok(layer as u32),
        _ => bail!("{at}: steers {hook}; {EXPRESSIBLE}"),
    }
}

/// The model's recorded steering, checked row by row, with the constants the graph adds.
fn from_model(model: &Model, path: &Path) -> Result<BTreeMap<u32, Vec<f32>>> {
    let patches: Vec<Value> = match model.metadata(meta::STEERING) {
        None => Vec::new(),
        Some(text) => serde_json::from_str(text).with_context(|| {
            format!(
                "'{}': the {} metadata is not JSON",
                path.display(),
                meta::STEERING
            )
        })?,
    };
    let rows: Vec<&Value> = patches
        .iter()
        .flat_map(|p| p["rows"].as_array().into_iter().flatten())
        .collect();
    if rows.is_empty() {
        bail!(
            "'{}' has no steering to package: patch it first (`sae-onnx patch --csv steer.csv --model {0} -o steered.onnx`), \
             or pass --csv steer.csv to package a plan directly",
            path.display()
        );
    }
    let mut recorded_layers = BTreeMap::new();
    for row in rows {
        let at = format!(
            "'{}' line {}",
            row["csv"].as_str().unwrap_or("steer.csv"),
            row["line"].as_u64().unwrap_or(0)
        );
        let text = |key: &str| row[key].as_str().unwrap_or_default();
        if let Some(input) = row["coefficient_input"].as_str() {
            bail!(
                "'{}' is sweepable (its coefficients are the graph input {input} and others): a control vector is one fixed \
                 vector; pass --csv steer.csv to package the CSV's coefficients, or re-patch without --sweepable",
                path.display()
            );
        }
        if text("action") != SteerAction::Add.name() {
            bail!(
                "{at}: action {} reads the residual stream; {EXPRESSIBLE}",
                text("action")
            );
        }
        if let Some(positions) = row["positions"].as_str() {
            bail!("{at}: positions {positions}; {EXPRESSIBLE}");
        }
        if let Some(normalize) = row["normalize"].as_str()
            && normalize != Normalize::Unit.to_string()
        {
            bail!("{at}: normalize {normalize} scales by the residual stream; {EXPRESSIBLE}");
        }
        let hook = HookPoint::parse(text("hook")).with_context(|| format!("{at}: the recorded hook"))?;
        recorded_layers.insert(resid_post_layer(hook, &at)?, at);
    }
    let constants = graph_constants(model, path)?;
    let graph_layers: Vec<u32> = constants.keys().copied().collect();
    if graph_layers != recorded_layers.keys().copied().collect::<Vec<_>>() {
        bail!(
            "'{}': the steering record names layers {:?} but the graph adds constants at layers {graph_layers:?}; \
             was the graph edited after `patch`?",
            path.display(),
            recorded_layers.keys().collect::<Vec<_>>()
        );
    }
    Ok(constants)
}

/// The constants our steering Adds add, summed per decoder layer (a hook patched twice has two).
fn graph_constants(model: &Model, path: &Path) -> Result<BTreeMap<u32, Vec<f32>>> {
    let graph = model.graph();
    let mut sums: BTreeMap<u32, Vec<f32>> = BTreeMap::new();
    for node in graph.node.iter().filter(|n| is_steering_add(n)) {
        let name = node.input.get(1).map(String::as_str).unwrap_or_default();
        let Some(tensor) = graph.initializer.iter().find(|t| t.name() == name) else {
            bail!(
                "'{}': the steering Add {} adds a computed value, not a constant; {EXPRESSIBLE}",
                path.display(),
                node.name()
            );
        };
        let hook = constant_hook(name).with_context(|| {
            format!(
                "'{}': the steering constant {name} does not name its hook",
                path.display()
            )
        })?;
        let layer = resid_post_layer(hook, &format!("'{}'", path.display()))?;
        let values = decode_floats(tensor.dtype(), &model.tensor_bytes(tensor)?)
            .with_context(|| format!("'{}': the steering constant {name}", path.display()))?;
        match sums.get_mut(&layer) {
            Some(sum) if sum.len() == values.len() => sum.iter_mut().zip(&values).for_each(|(s, v)| *s += v),
            Some(sum) => bail!(
                "'{}': steering constants of {} and {} values at one hook",
                path.display(),
                sum.len(),
                values.len()
            ),
            None => {
                sums.insert(layer, values);
            }
        }
    }
    Ok(sums)
}

/// `sae_onnx.steer.{hook}`, with the `_N` a second patch at the same hook gets.
fn constant_hook(name: &str) -> Option<HookPoint> {
    let rest = name.strip_prefix(STEER_TENSOR_PREFIX)?;
    HookPoint::parse(rest).ok().or_else(|| {
        let (base, n) = rest.rsplit_once('_')?;
        n.parse::<u32>().ok()?;
        HookPoint::parse(base).ok()
    })
}

/// The model's float type widened to float32, exactly.
fn decode_floats(dtype: DataType, bytes: &[u8]) -> Result<Vec<f32>> {
    let (width, decode): (usize, fn(&[u8]) -> f32) = match dtype {
        DataType::Float => (4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DataType::Float16 => (2, |b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DataType::Bfloat16 => (2, |b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => bail!("element type {other:?}: steering constants are float32, float16 or bfloat16"),
    };
    if !bytes.len().is_multiple_of(width) {
        bail!("{} bytes is not a whole number of {dtype:?} values", bytes.len());
    }
    Ok(bytes.chunks_exact(width).map(decode).collect())
}

/// A plan's rows checked, then summed per hook as `patch` sums them.
fn from_csv(hub: &Hub, csv: &Path, inputs: &mut Inputs) -> Result<BTreeMap<u32, Vec<f32>>> {
    let plan = SteeringPlan::from_csv_file(csv)?;
    for row in &plan.rows {
        let at = format!("'{}' line {}", csv.display(), row.line);
        if row.action != SteerAction::Add {
            bail!(
                "{at}: action {} reads the residual stream; {EXPRESSIBLE}",
                row.action
            );
        }
        if row.steer_at != PositionRule::All {
            bail!("{at}: positions {}; {EXPRESSIBLE}", row.steer_at);
        }
        if row.normalize == Normalize::Residual {
            bail!(
                "{at}: normalize {} scales by the residual stream; {EXPRESSIBLE}",
                row.normalize
            );
        }
    }
    let (hooks, _) = crate::steer::steering::steering(&plan, hub, false, inputs)?;
    let mut directions = BTreeMap::new();
    for hs in hooks {
        let lines: Vec<usize> = hs.rows.iter().map(|&i| plan.rows[i].line).collect();
        let at = format!("'{}' lines {lines:?}", csv.display());
        let layer = resid_post_layer(hs.hook, &at)?;
        match (hs.constant, hs.terms.is_empty()) {
            (Some(constant), true) => {
                directions.insert(layer, constant);
            }
            _ => bail!("{at}: steering computed from the residual stream; {EXPRESSIBLE}"),
        }
    }
    Ok(directions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_names_give_their_hook() {
        assert_eq!(
            constant_hook("sae_onnx.steer.blocks.2.hook_resid_post"),
            Some(HookPoint::resid_post(2))
        );
        assert_eq!(
            constant_hook("sae_onnx.steer.blocks.12.hook_resid_post_1"),
            Some(HookPoint::resid_post(12))
        );
        assert_eq!(constant_hook("sae_onnx.steer.blocks.2.hook_resid_post_x"), None);
        assert_eq!(constant_hook("other.blocks.2.hook_resid_post"), None);
    }

    #[test]
    fn floats_widen_exactly() {
        let f16 = half::f16::from_f32(-1.5).to_le_bytes();
        let bf16 = half::bf16::from_f32(3.0).to_le_bytes();
        assert_eq!(decode_floats(DataType::Float16, &f16).unwrap(), [-1.5]);
        assert_eq!(decode_floats(DataType::Bfloat16, &bf16).unwrap(), [3.0]);
        assert_eq!(
            decode_floats(DataType::Float, &0.25f32.to_le_bytes()).unwrap(),
            [0.25]
        );
        assert!(decode_floats(DataType::Float, &[0, 0]).is_err());
        assert!(decode_floats(DataType::Int64, &[0; 8]).is_err());
    }
}
