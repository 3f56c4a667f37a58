//! Splicing a steering plan into an ONNX graph: one `Add` of a constant per hook point (rows on
//! one hook are summed), in the activation's dtype, placed so that every reader of the hook tensor
//! sees the steered value; provenance in `metadata_props`. Patching a steered model stacks; with
//! `replace`, earlier steering is removed first.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::locate::locate;
use super::plan::{SteerAction, SteeringPlan};
use crate::export::meta;
use crate::hook::{HookPoint, Site};
use crate::hub::Hub;
use crate::onnx::make::{make_node, make_tensor};
use crate::onnx::{DataType, Model};
use crate::sae::{DecoderRows, LatentOutOfRange, SaeProvenance, load_decoder_rows};

/// Metadata key holding the JSON list of steering patches applied, oldest first.
pub const STEERING: &str = "sae_onnx.steering";
/// Node-name prefix of the Adds we splice (how `replace` and `inspect` find them).
pub const NODE_PREFIX: &str = "/sae_onnx/steer/";

/// One hook's summed steering vector.
#[derive(Debug, Clone)]
pub struct HookVector {
    pub hook: HookPoint,
    pub vector: Vec<f32>,
    /// Plan lines that contributed.
    pub lines: Vec<usize>,
}

#[derive(Debug, Clone, Serialize)]
struct RowRecord {
    line: usize,
    action: String,
    latent: usize,
    coefficient: f64,
    sae: String,
    sae_id: String,
    hook: String,
    description: String,
}

/// What a patch did, for the summary line and tests.
#[derive(Debug, Clone)]
pub struct SpliceReport {
    pub hooks: Vec<(HookPoint, String, f32)>,
    pub removed: usize,
}

/// Reads the decoder rows the plan needs (one SAE opened once) and sums coefficient × row per hook.
pub fn steering_vectors(plan: &SteeringPlan, hub: &Hub) -> Result<(Vec<HookVector>, Vec<SaeProvenance>)> {
    let mut by_sae: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, row) in plan.rows.iter().enumerate() {
        if row.action != SteerAction::Add {
            bail!(
                "{}: action '{}' is not supported by `patch` yet (add is)",
                plan.location(row, super::plan::PlanField::Action),
                row.action
            );
        }
        by_sae
            .entry((format!("{:?}", row.sae), row.sae_id.clone()))
            .or_default()
            .push(i);
    }
    let mut sums: BTreeMap<HookPoint, (Vec<f64>, Vec<usize>)> = BTreeMap::new();
    let mut provenance = Vec::new();
    for rows in by_sae.values() {
        let first = &plan.rows[rows[0]];
        let latents: Vec<usize> = rows.iter().map(|&i| plan.rows[i].latent).collect();
        let decoder: DecoderRows =
            load_decoder_rows(hub, &first.sae, &first.sae_id, &latents).map_err(|err| {
                // A latent out of range is the fault of its own row; anything else, of the SAE column.
                let culprit = err
                    .downcast_ref::<LatentOutOfRange>()
                    .and_then(|e| rows.iter().map(|&i| &plan.rows[i]).find(|r| r.latent == e.latent));
                match culprit {
                    Some(row) => err.context(plan.location(row, super::plan::PlanField::Latent)),
                    None => {
                        let where_ = plan.location(first, super::plan::PlanField::Sae);
                        err.context(format!("{where_}: loading SAE {} '{}'", first.sae, first.sae_id))
                    }
                }
            })?;
        provenance.push(decoder.provenance.clone());
        for (k, &i) in rows.iter().enumerate() {
            let row = &plan.rows[i];
            let hook = row.hook.unwrap_or(decoder.hook);
            let mut vector: Vec<f64> = decoder.rows[k]
                .iter()
                .map(|&x| f64::from(x) * row.coefficient)
                .collect();
            if let Some(head) = decoder
                .head_index
                .or(row.head_index)
                .filter(|_| hook.site == Site::AttnZ)
            {
                // A single-head hook_z SAE writes into its head's slice of the concatenated heads;
                // zeros pad it, and the width check against the model follows in `splice`.
                let d_head = decoder.d_in;
                let mut full = vec![0.0; d_head * (head + 1)];
                full[head * d_head..].copy_from_slice(&vector);
                vector = full;
            }
            let entry = sums
                .entry(hook)
                .or_insert_with(|| (vec![0.0; vector.len()], Vec::new()));
            if entry.0.len() < vector.len() {
                entry.0.resize(vector.len(), 0.0);
            }
            for (acc, v) in entry.0.iter_mut().zip(&vector) {
                *acc += v;
            }
            entry.1.push(row.line);
        }
    }
    let vectors = sums
        .into_iter()
        .map(|(hook, (sum, lines))| HookVector {
            hook,
            vector: sum.into_iter().map(|x| x as f32).collect(),
            lines,
        })
        .collect();
    Ok((vectors, provenance))
}

/// Adds the vectors to `model` and records the patch in its metadata.
pub fn splice(
    model: &mut Model,
    plan: &SteeringPlan,
    vectors: &[HookVector],
    provenance: &[SaeProvenance],
    replace: bool,
) -> Result<SpliceReport> {
    let removed = if replace { remove_steering(model) } else { 0 };
    let mut hooks = Vec::new();
    for hv in vectors {
        let site = locate(model, hv.hook)?;
        let mut vector = hv.vector.clone();
        let expected = hook_width(model, hv.hook);
        if let Some(width) = expected
            && hv.hook.site == Site::AttnZ
            && vector.len() < width
        {
            vector.resize(width, 0.0); // single-head rows end before the last heads
        }
        if let Some(width) = expected
            && width != vector.len()
        {
            bail!(
                "{}: the steering vector for {} has {} values but the model's {} is {width} wide (lines {:?}); \
                 is the SAE for this model?",
                plan.source_path.display(),
                hv.hook,
                vector.len(),
                hv.hook,
                hv.lines
            );
        }
        let graph = model.graph_mut();
        let name = hv.hook.to_string();
        let constant = graph.unique_name(&format!("sae_onnx.steer.{name}"));
        let raw: Vec<u8> = match site.dtype {
            DataType::Float16 => vector
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                .collect(),
            DataType::Bfloat16 => vector
                .iter()
                .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
                .collect(),
            DataType::Float => vector.iter().flat_map(|v| v.to_le_bytes()).collect(),
            other => bail!("hook {name} is {other:?}; steering needs a float tensor"),
        };
        graph
            .initializer
            .push(make_tensor(&constant, site.dtype, &[vector.len() as i64], raw));
        let steered = graph.unique_name(&format!("{name}.steered"));
        let node_name = graph.unique_name(&format!("{NODE_PREFIX}{name}"));
        let add = make_node("Add", &[&site.tensor, &constant], &[&steered], node_name);
        match site.only_reader {
            // Fused graphs: steer one input of one node (see locate.rs).
            Some((node, input)) => {
                let at = graph
                    .node
                    .iter()
                    .position(|n| n.name() == node)
                    .context("located node vanished")?;
                graph.node[at].input[input].clone_from(&steered);
                graph.node.insert(at, add);
            }
            None => graph.insert_after(&site.tensor, vec![add], &steered)?,
        }
        let norm = vector.iter().map(|v| f64::from(*v).powi(2)).sum::<f64>().sqrt() as f32;
        hooks.push((hv.hook, site.tensor.clone(), norm));
    }
    model
        .graph_mut()
        .toposort()
        .context("ordering the patched graph")?;
    record(model, plan, vectors, provenance, replace)?;
    Ok(SpliceReport { hooks, removed })
}

/// The width a hook's vectors must have, from our export's metadata.
fn hook_width(model: &Model, hook: HookPoint) -> Option<usize> {
    let key = if hook.site == Site::AttnZ {
        meta::D_ATTN_Z
    } else {
        meta::D_MODEL
    };
    model.metadata(key).and_then(|v| v.parse().ok())
}

/// Removes earlier steering Adds (and their constants), rewiring their readers back. Stacked Adds
/// read each other, so each is looked up afresh after the previous removal.
fn remove_steering(model: &mut Model) -> usize {
    let graph = model.graph_mut();
    let mut removed = 0;
    while let Some(i) = graph
        .node
        .iter()
        .position(|n| n.name().starts_with(NODE_PREFIX) && n.op_type() == "Add")
    {
        let node = graph.node.remove(i);
        graph.replace_all_uses_with(&node.output[0], &node.input[0]);
        graph.initializer.retain(|t| t.name() != node.input[1]);
        removed += 1;
    }
    model.proto.metadata_props.retain(|e| e.key() != STEERING);
    removed
}

fn record(
    model: &mut Model,
    plan: &SteeringPlan,
    vectors: &[HookVector],
    provenance: &[SaeProvenance],
    replace: bool,
) -> Result<()> {
    let csv_bytes = std::fs::read(&plan.source_path).unwrap_or_default();
    let rows: Vec<RowRecord> = plan
        .rows
        .iter()
        .map(|r| {
            let hook = vectors
                .iter()
                .find(|v| v.lines.contains(&r.line))
                .map(|v| v.hook.to_string())
                .unwrap_or_default();
            RowRecord {
                line: r.line,
                action: r.action.to_string(),
                latent: r.latent,
                coefficient: r.coefficient,
                sae: r.sae.to_string(),
                sae_id: r.sae_id.clone(),
                hook,
                description: r.description.clone(),
            }
        })
        .collect();
    let patch = json!({
        "tool": format!("sae-onnx {}", env!("CARGO_PKG_VERSION")),
        "csv": plan.source_path.display().to_string(),
        "csv_sha256": crate::eval::output::sha256_hex(&csv_bytes),
        "format": format!("{:?}", plan.format),
        "rows": rows,
        "saes": provenance,
        "hooks": vectors.iter().map(|v| json!({"hook": v.hook.to_string(), "norm": v.vector.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()})).collect::<Vec<_>>(),
    });
    let mut patches: Vec<Value> = if replace {
        Vec::new()
    } else {
        model
            .metadata(STEERING)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default()
    };
    patches.push(patch);
    model.set_metadata(STEERING, &serde_json::to_string(&patches)?);
    Ok(())
}
