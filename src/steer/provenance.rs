//! Provenance of steering in the model's metadata: each patch's record (`sae_onnx.steering`: the
//! plan, its rows, the SAEs read, what each hook got), and removing earlier steering for `replace`.

use std::collections::HashSet;

use anyhow::Result;
use serde::Serialize;
use serde_json::{Value, json};

use super::hook_nodes::CoefficientInputOf;
use super::plan::SteeringPlan;
use super::rules::{Normalize, PositionRule};
use super::steering::HookSteering;
use crate::contract::meta::STEERING;
use crate::contract::sweep::COEFFICIENT_INPUTS;
use crate::contract::{STEER_NODE_PREFIX, STEER_TENSOR_PREFIX, is_steering_add};
use crate::onnx::Model;
use crate::onnx::pb::NodeProto;
use crate::sae::SaeProvenance;

/// One plan row as the patch record keeps it.
#[derive(Debug, Clone, Serialize)]
struct RowRecord {
    line: usize,
    action: String,
    latent: usize,
    coefficient: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    threshold: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    coefficient_input: Option<String>,
    /// Absent for `all` (and in records older than the column).
    #[serde(skip_serializing_if = "Option::is_none")]
    positions: Option<String>,
    /// Absent for `none`.
    #[serde(skip_serializing_if = "Option::is_none")]
    normalize: Option<String>,
    sae: String,
    sae_id: String,
    hook: String,
    description: String,
}

/// Removes earlier steering (every node we spliced, the constants and coefficient inputs only
/// they read), rewiring the hooks' readers back. Returns how many patches-at-a-hook were removed.
pub(super) fn remove_steering(model: &mut Model) -> usize {
    let graph = model.graph_mut();
    let mut removed = 0;
    // Stacked Adds read each other, so each is looked up afresh after the previous removal.
    while let Some(i) = graph.node.iter().position(is_steering_add) {
        let node = graph.node.remove(i);
        graph.replace_all_uses_with(&node.output[0], &node.input[0]);
        removed += 1;
    }
    let ours: Vec<NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.name().starts_with(STEER_NODE_PREFIX))
        .cloned()
        .collect();
    graph.node.retain(|n| !n.name().starts_with(STEER_NODE_PREFIX));
    let mut read_by_ours: HashSet<String> = ours.iter().flat_map(|n| n.input.iter().cloned()).collect();
    // The final Adds' constants were read by the removed Adds themselves.
    read_by_ours.extend(
        graph
            .initializer
            .iter()
            .filter(|t| t.name().starts_with(STEER_TENSOR_PREFIX))
            .map(|t| t.name().to_owned()),
    );
    let still_read: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.input.iter().cloned())
        .chain(graph.output.iter().map(|o| o.name().to_owned()))
        .collect();
    let orphan = |name: &str| read_by_ours.contains(name) && !still_read.contains(name);
    graph.initializer.retain(|t| !orphan(t.name()));
    graph.input.retain(|v| !orphan(v.name()));
    model
        .proto
        .metadata_props
        .retain(|e| e.key() != STEERING && e.key() != COEFFICIENT_INPUTS);
    removed
}

/// The steering patches recorded in the model, oldest first.
pub(super) fn steering_patches(model: &Model) -> Vec<Value> {
    model
        .metadata(STEERING)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

/// Records the patch in the model's metadata, after the earlier ones unless `replace`.
pub(super) fn record(
    model: &mut Model,
    plan: &SteeringPlan,
    hooks: &[HookSteering],
    provenance: &[SaeProvenance],
    replace: bool,
    input_of: CoefficientInputOf,
    special_ids: Option<&[i64]>,
) -> Result<()> {
    let csv_bytes = std::fs::read(&plan.source_path).unwrap_or_default();
    let rows: Vec<RowRecord> = plan
        .rows
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let hook = hooks
                .iter()
                .find(|h| h.rows.contains(&i))
                .map(|h| h.hook.to_string())
                .unwrap_or_default();
            RowRecord {
                line: r.line,
                action: r.action.to_string(),
                latent: r.latent,
                coefficient: r.coefficient,
                threshold: r.threshold,
                coefficient_input: input_of(i),
                positions: (r.steer_at != PositionRule::All).then(|| r.steer_at.to_string()),
                normalize: (r.normalize != Normalize::None).then(|| r.normalize.to_string()),
                sae: r.sae.to_string(),
                sae_id: r.sae_id.clone(),
                hook,
                description: r.description.clone(),
            }
        })
        .collect();
    let hooks_json: Vec<Value> = hooks
        .iter()
        .map(|h| {
            let norm = h.constant.as_ref().map_or(0.0, |v| {
                v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt()
            });
            let computed: Vec<Value> = h
                .terms
                .iter()
                .map(|t| {
                    let mut term = json!({
                        "action": t.action.name(),
                        "lines": t.rows.iter().map(|&i| plan.rows[i].line).collect::<Vec<_>>(),
                    });
                    if t.steer_at != PositionRule::All {
                        term["positions"] = json!(t.steer_at.to_string());
                    }
                    if t.normalize != Normalize::None {
                        term["normalize"] = json!(t.normalize.name());
                    }
                    term
                })
                .collect();
            json!({"hook": h.hook.to_string(), "norm": norm, "computed": computed})
        })
        .collect();
    let mut patch = json!({
        "tool": format!("sae-onnx {}", env!("CARGO_PKG_VERSION")),
        "csv": plan.source_path.display().to_string(),
        "csv_sha256": crate::digest::sha256_hex(&csv_bytes),
        "format": format!("{:?}", plan.format),
        "semantics": "rows on a hook read its value before this patch; their changes are summed",
        "rows": rows,
        "saes": provenance,
        "hooks": hooks_json,
    });
    let rules = || plan.rows.iter().map(|r| r.steer_at);
    if rules().any(|r| r == PositionRule::NoSpecial)
        && let Some(ids) = special_ids
    {
        patch["special_ids"] = json!(ids);
    }
    if rules().any(PositionRule::reads_prompt_length) {
        patch["prompt_length_input"] = json!(crate::contract::PROMPT_LENGTH);
    }
    if rules().any(|r| r != PositionRule::All) {
        patch["positions"] = json!(
            "a token's position is its index among its row's tokens (padding not counted); prompt rows steer \
             positions below the prompt_length input, generated rows the others"
        );
    }
    let mut patches = if replace {
        Vec::new()
    } else {
        steering_patches(model)
    };
    patches.push(patch);
    model.set_metadata(STEERING, &serde_json::to_string(&patches)?);
    Ok(())
}
