//! Splicing a steering plan into an ONNX graph, at each hook point, so that every reader of the
//! hook tensor sees the steered value: [`super::steering`] resolves the rows, `hook_nodes` builds
//! each hook's nodes, this module wires them in, and `provenance` records the patch in
//! `metadata_props`. Patching a steered model
//! stacks (the new patch reads the value the earlier ones produced); with `replace`, earlier
//! steering is removed first.
//!
//! Per hook `x` (element type `T`), all rows of the plan read `x` and their changes are summed
//! (what SAELens gives when several features of one SAE are clamped in one encode/decode with the
//! error term kept, and what DESIGN §3 asks of rows on one hook; lm-eval instead keeps only the last
//! row of a hook):
//! - `add` rows with fixed coefficients fold into one constant `Σ c·W_dec[i]` of type `T` and a
//!   single `Add` (the original splice, unchanged);
//! - every other row is a column of a small subgraph per (action, SAE), computed in float32 (as
//!   SAELens encodes: it casts the hook's value to the SAE's float32) and cast back to `T`:
//!   `P = ((x − b_dec) or x) @ R + b`, `K` from `P` and the coefficients `C`, `Δ = K @ W`, with
//!   `clamp: K = C − P·[P > g]`, `add_if_active: K = C·[P > g]`, `clamp_projection: K = C − P`,
//!   and, in a sweepable patch, `add: K = C`.
//!
//! Each term's change is then scaled by `‖x_t‖` (`normalize residual`) and by its rule's position
//! mask (`positions` other than `all`, see `position_mask`); rows with different rules at one hook
//! are different terms, each with its own mask.
//!
//! A sweepable patch turns each row's coefficient into a scalar graph input `steer.coeff.<k>` that
//! is also an initializer holding the plan's value, so ONNX Runtime uses the plan's value unless the
//! caller feeds another (see [`crate::contract::sweep`]).

use std::collections::HashSet;

use anyhow::{Context, Result, bail};

use super::hook_nodes::{CoefficientInputOf, HookNodes, HookValue, hook_nodes};
use super::plan::{PlanField, SteeringPlan};
use super::position_mask::{self, MaskInputs};
use super::provenance::{record, remove_steering, steering_patches};
use super::rules::PositionRule;
use super::steering::{HookSteering, MAX_WIDTH};
use crate::contract::hook_site::{HookSite, locate};
use crate::contract::meta;
use crate::contract::sweep::{COEFFICIENT_INPUTS, CoefficientInput, coefficient_input_name};
use crate::contract::{STEER_NODE_PREFIX, is_steering_add};
use crate::hook::{HookPoint, Site};
use crate::onnx::Model;
use crate::onnx::pb::GraphProto;
use crate::sae::SaeProvenance;

/// The smallest default-domain opset whose Add/Sub/Mul/Greater broadcast numpy-style and whose
/// Cast takes an integer `to`: what the computed (non-constant) steering needs.
const MIN_OPSET: i64 = 7;

/// Choices for a splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceOptions {
    /// Remove earlier steering instead of stacking on it.
    pub replace: bool,
    /// Every row's coefficient becomes an overridable graph input `steer.coeff.<k>`.
    pub sweepable: bool,
}

/// What a patch did, for the summary line and tests.
#[derive(Debug, Clone)]
pub struct SpliceReport {
    pub hooks: Vec<SteeredHook>,
    /// Hooks with rows other than fixed-coefficient `add`s.
    pub computed: Vec<ComputedSteering>,
    /// Steering patches (their final Adds) removed by `replace`.
    pub removed: usize,
    /// The coefficient inputs a sweepable patch added, in plan order.
    pub coefficient_inputs: Vec<String>,
}

/// A hook the patch steered.
#[derive(Debug, Clone)]
pub struct SteeredHook {
    pub hook: HookPoint,
    /// The tensor steered.
    pub tensor: String,
    /// Norm of the constant part of the change.
    pub norm: f32,
}

/// What a patch computes at a hook from its value.
#[derive(Debug, Clone)]
pub struct ComputedSteering {
    pub hook: HookPoint,
    /// The terms and their plan lines: `clamp (lines 3, 5), add_if_active (line 7)`.
    pub terms: String,
}

/// Splices `hooks` into `model` and records the patch in its metadata.
pub fn splice(
    model: &mut Model,
    plan: &SteeringPlan,
    hooks: &[HookSteering],
    provenance: &[SaeProvenance],
    options: &SpliceOptions,
    special_ids: Option<&[i64]>,
) -> Result<SpliceReport> {
    let removed = if options.replace {
        remove_steering(model)
    } else {
        0
    };
    let mut coefficient_records: Vec<CoefficientInput> = match model.metadata(COEFFICIENT_INPUTS) {
        Some(text) => serde_json::from_str(text)
            .with_context(|| format!("the model's {COEFFICIENT_INPUTS} metadata is not valid"))?,
        None => Vec::new(),
    };
    // Inputs are numbered across stacked patches, so a second sweepable patch adds new names.
    let first_input = coefficient_records.len();
    let input_of = |row: usize| {
        options
            .sweepable
            .then(|| coefficient_input_name(first_input + row))
    };
    let mut report = SpliceReport {
        hooks: Vec::new(),
        computed: Vec::new(),
        removed,
        coefficient_inputs: Vec::new(),
    };
    for hs in hooks {
        report
            .hooks
            .push(splice_hook(model, plan, hs, &input_of, special_ids)?);
        if !hs.terms.is_empty() {
            report.computed.push(ComputedSteering {
                hook: hs.hook,
                terms: describe_terms(plan, hs),
            });
        }
    }
    model
        .graph_mut()
        .toposort()
        .context("ordering the patched graph")?;
    if options.sweepable {
        let added = coefficient_inputs(model, plan, hooks, first_input);
        report.coefficient_inputs = added.iter().map(|r| r.input.clone()).collect();
        coefficient_records.extend(added);
        model.set_metadata(COEFFICIENT_INPUTS, &serde_json::to_string(&coefficient_records)?);
    }
    record(
        model,
        plan,
        hooks,
        provenance,
        options.replace,
        &input_of,
        special_ids,
    )?;
    Ok(report)
}

/// Builds the steering of one hook and wires it in, so every reader of the hook (or, in fused
/// graphs, the one located reader) reads the steered value.
fn splice_hook(
    model: &mut Model,
    plan: &SteeringPlan,
    hs: &HookSteering,
    input_of: CoefficientInputOf,
    special_ids: Option<&[i64]>,
) -> Result<SteeredHook> {
    let at = rows_at(plan, hs);
    let layers: Option<usize> = model.metadata(meta::NUM_LAYERS).and_then(|v| v.parse().ok());
    if let (Some(layer), Some(n)) = (hs.hook.layer, layers)
        && layer >= n
    {
        bail!(
            "{at}: the row steers {}, but the model has {n} layers (blocks 0 to {}); is the SAE or \
             hookpoint meant for this model?",
            hs.hook,
            n.saturating_sub(1)
        );
    }
    let site = locate(model, hs.hook).with_context(|| format!("{at}: steering {}", hs.hook))?;
    let width = fit_width(model, plan, hs)?;
    if !hs.terms.is_empty() {
        check_opset(
            model,
            hs.hook,
            MIN_OPSET,
            "actions other than add need broadcasting Sub, Mul, Greater",
        )?;
    }
    if hs.terms.iter().any(|t| t.steer_at != PositionRule::All) {
        check_opset(
            model,
            hs.hook,
            position_mask::MIN_OPSET,
            "positions other than all need CumSum and Slice with inputs",
        )
        .with_context(|| at.clone())?;
    }
    let graph = model.graph_mut();
    let source = chain_end(graph, &site);
    if site.only_reader.is_none() && graph.consumers(&source).is_empty() {
        bail!(
            "{at}: {} is the tensor '{source}', which no node of the graph reads, so steering it would change \
             nothing; the graph does not compute on from this hook",
            hs.hook
        );
    }
    let value = HookValue {
        source: &source,
        dtype: site.dtype,
        width,
        node_name: graph.unique_name(&format!("{STEER_NODE_PREFIX}{}", hs.hook)),
    };
    let HookNodes {
        fragment,
        steered,
        norm,
    } = hook_nodes(graph, plan, hs, value, input_of, MaskInputs { special_ids })
        .with_context(|| format!("{at}: steering {}", hs.hook))?;
    graph.initializer.extend(fragment.initializers);
    graph.input.extend(fragment.inputs);
    match &site.only_reader {
        // Fused graphs: steer one input of one node (see contract/hook_site.rs).
        Some((node, input)) => {
            let at = graph
                .node
                .iter()
                .position(|n| n.name() == node)
                .context("located node vanished")?;
            graph.node[at].input[*input].clone_from(&steered);
            graph.node.splice(at..at, fragment.nodes);
        }
        None => graph.insert_after(&source, fragment.nodes, &steered)?,
    }
    Ok(SteeredHook {
        hook: hs.hook,
        tensor: site.tensor,
        norm,
    })
}

/// The hook's terms and their plan lines, for the report.
fn describe_terms(plan: &SteeringPlan, hs: &HookSteering) -> String {
    let parts: Vec<String> = hs
        .terms
        .iter()
        .map(|t| {
            let lines: Vec<String> = t.rows.iter().map(|&i| plan.rows[i].line.to_string()).collect();
            let s = if lines.len() == 1 { "" } else { "s" };
            format!("{} (line{s} {})", t.action, lines.join(", "))
        })
        .collect();
    parts.join(", ")
}

/// The records of the coefficient inputs this sweepable patch adds, in plan order.
fn coefficient_inputs(
    model: &Model,
    plan: &SteeringPlan,
    hooks: &[HookSteering],
    first_input: usize,
) -> Vec<CoefficientInput> {
    let patch = steering_patches(model).len();
    let mut added: Vec<CoefficientInput> = hooks
        .iter()
        .flat_map(|hs| {
            hs.rows.iter().map(move |&i| {
                let row = &plan.rows[i];
                CoefficientInput {
                    input: coefficient_input_name(first_input + i),
                    // Not recorded: the graph input states it.
                    dtype: crate::onnx::DataType::Undefined,
                    patch,
                    row: i,
                    line: row.line,
                    latent: row.latent,
                    action: row.action.to_string(),
                    hook: hs.hook.to_string(),
                    default: row.coefficient,
                }
            })
        })
        .collect();
    added.sort_by_key(|r| r.row);
    added
}

/// `file:line:col` of the rows steering a hook (at the field that chose the hook: the hookpoint,
/// else the SAE), for errors about the hook.
fn rows_at(plan: &SteeringPlan, hs: &HookSteering) -> String {
    let at: Vec<String> = hs
        .rows
        .iter()
        .map(|&i| {
            let row = &plan.rows[i];
            let field = if row.hook.is_some() {
                PlanField::Hook
            } else {
                PlanField::Sae
            };
            plan.location(row, field)
        })
        .collect();
    at.join(", ")
}

/// Where a new patch reads the hook: after the steering already spliced there, so stacked
/// patches apply in the order they were made.
fn chain_end(graph: &GraphProto, site: &HookSite) -> String {
    let mut tensor = site.tensor.clone();
    if let Some((name, input)) = &site.only_reader {
        // A fused reader reads the hook's latest value (the end of earlier steering) itself.
        return graph
            .node
            .iter()
            .find(|n| n.name() == name)
            .and_then(|n| n.input.get(*input))
            .cloned()
            .unwrap_or(tensor);
    }
    let mut seen = HashSet::new();
    while let Some(next) = graph
        .node
        .iter()
        .find(|n| is_steering_add(n) && n.input.first() == Some(&tensor))
        .and_then(|n| n.output.first())
    {
        if !seen.insert(next.clone()) {
            break; // a malformed cycle; the toposort reports it
        }
        tensor = next.clone();
    }
    tensor
}

/// The width every vector of the hook is brought to: the model's, from our export's metadata, or
/// else the longest vector.
fn fit_width(model: &Model, plan: &SteeringPlan, hs: &HookSteering) -> Result<usize> {
    let lens = hs.constant.iter().map(Vec::len).chain(
        hs.terms
            .iter()
            .flat_map(|t| t.read.iter().chain(&t.write).chain(t.offset.iter()).map(Vec::len)),
    );
    let len = lens.max().unwrap_or(0);
    match hook_width(model, hs.hook) {
        Some(width) if width > MAX_WIDTH => bail!(
            "the model's metadata gives {} a width of {width}, more than any model has ({MAX_WIDTH} at most); \
             the model's sae_onnx metadata is damaged",
            hs.hook
        ),
        // single-head hook_z vectors end before the last heads
        Some(width) if hs.hook.site == Site::AttnZ && len < width => Ok(width),
        Some(width) if width != len => {
            let lines: Vec<usize> = hs.rows.iter().map(|&i| plan.rows[i].line).collect();
            bail!(
                "{}: the steering vectors for {} have {len} values but the model's {} is {width} wide (lines {lines:?}); \
                 is the SAE for this model?",
                plan.source_path.display(),
                hs.hook,
                hs.hook,
            )
        }
        _ => Ok(len),
    }
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

fn check_opset(model: &Model, hook: HookPoint, min: i64, why: &str) -> Result<()> {
    let opset = model
        .proto
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version());
    match opset {
        Some(v) if v < min => {
            bail!("steering {hook} this way needs opset {min} or later ({why}); the model imports opset {v}")
        }
        _ => Ok(()),
    }
}
