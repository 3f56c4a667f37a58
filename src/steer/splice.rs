//! Splicing a steering plan into an ONNX graph, at each hook point, so that every reader of the
//! hook tensor sees the steered value; provenance in `metadata_props`. Patching a steered model
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
//! A sweepable patch turns each row's coefficient into a scalar graph input `steer.coeff.<k>` that
//! is also an initializer holding the plan's value, so ONNX Runtime uses the plan's value unless the
//! caller feeds another (see [`crate::contract::sweep`]).

use std::collections::{BTreeMap, HashSet};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::plan::{PlanField, SteerAction, SteeringPlan};
use crate::contract::hook_site::{HookSite, locate};
use crate::contract::meta;
use crate::contract::meta::STEERING;
use crate::contract::sweep::{COEFFICIENT_INPUTS, CoefficientInput, coefficient_input_name};
use crate::files::Inputs;
use crate::hook::{HookPoint, Site};
use crate::hub::Hub;
use crate::onnx::make::{make_node, make_tensor, make_tensor_value_info};
use crate::onnx::pb::{GraphProto, NodeProto, TensorProto, ValueInfoProto};
use crate::onnx::{DataType, Model};
use crate::sae::{LatentOutOfRange, NonFiniteLatent, Sae, SaeProvenance};

/// Node-name prefix of the nodes we splice (how `replace` and `inspect` find them). The node that
/// adds the change to the hook is named `{NODE_PREFIX}{hook}` (maybe with a `_N` suffix); the nodes
/// computing the change are named below it, `{NODE_PREFIX}{hook}/...`.
pub const NODE_PREFIX: &str = "/sae_onnx/steer/";

/// The smallest default-domain opset whose Add/Sub/Mul/Greater broadcast numpy-style and whose
/// Cast takes an integer `to`: what the computed (non-constant) steering needs.
const MIN_OPSET: i64 = 7;

/// The widest hook vector we build (16M values, 4000 times Gemma 2 27B's attention width): a
/// head index or a metadata width past it is a mistake, and honouring it would allocate without
/// bound.
const MAX_WIDTH: usize = 1 << 24;

/// Choices for a splice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpliceOptions {
    /// Remove earlier steering instead of stacking on it.
    pub replace: bool,
    /// Every row's coefficient becomes an overridable graph input `steer.coeff.<k>`.
    pub sweepable: bool,
}

/// What one hook gets.
#[derive(Debug, Clone)]
pub struct HookSteering {
    pub hook: HookPoint,
    /// `Σ coefficient · W_dec[latent]` of the `add` rows with fixed coefficients.
    pub constant: Option<Vec<f32>>,
    /// The rows computed from the hook's value in the graph (and all rows of a sweepable patch).
    pub terms: Vec<Term>,
    /// The plan rows (indices) that contributed, in plan order.
    pub rows: Vec<usize>,
}

/// Rows of one action and one SAE at a hook, one column each, computed in float32:
/// `P = (x − offset) @ read + bias`, then the action's `K` from `P`, `gate` and the coefficients,
/// then `K @ write`.
#[derive(Debug, Clone, PartialEq)]
pub struct Term {
    pub action: SteerAction,
    /// Plan row indices, one per column.
    pub rows: Vec<usize>,
    pub coefficients: Vec<f64>,
    /// What `x` is multiplied with: `W_enc[:, latent]` (feature actions) or the unit decoder
    /// direction (`clamp_projection`); empty for `add`.
    pub read: Vec<Vec<f32>>,
    /// Subtracted from `x` first: `b_dec` when the SAE encodes so (or always, for lm-eval's clamp).
    pub offset: Option<Vec<f32>>,
    /// `b_enc[latent]` (feature actions).
    pub bias: Option<Vec<f32>>,
    /// Feature actions: the row is active where `P > gate` (ReLU: 0; JumpReLU: max(threshold, 0);
    /// `add_if_active` also at least its row's threshold: for a threshold t >= 0, `f > t` exactly
    /// when `pre > max(gate, t)`).
    pub gate: Option<Vec<f32>>,
    /// The directions written: `W_dec[latent]`, or the unit decoder direction.
    pub write: Vec<Vec<f32>>,
}

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
    sae: String,
    sae_id: String,
    hook: String,
    description: String,
}

/// What a patch did, for the summary line and tests.
#[derive(Debug, Clone)]
pub struct SpliceReport {
    /// (hook, tensor steered, norm of the constant part of the change).
    pub hooks: Vec<(HookPoint, String, f32)>,
    /// (hook, what is computed there from its value: `clamp (lines 3, 5)`, ...) for hooks with
    /// rows other than fixed-coefficient `add`s.
    pub computed: Vec<(HookPoint, String)>,
    /// Steering patches (their final Adds) removed by `replace`.
    pub removed: usize,
    /// The coefficient inputs a sweepable patch added, in plan order.
    pub coefficient_inputs: Vec<String>,
}

/// Reads what the plan needs from its SAEs (each opened once) and groups the rows per hook. The
/// SAE files read are recorded in `inputs`.
pub fn steering(
    plan: &SteeringPlan,
    hub: &Hub,
    sweepable: bool,
    inputs: &mut Inputs,
) -> Result<(Vec<HookSteering>, Vec<SaeProvenance>)> {
    let mut by_sae: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, row) in plan.rows.iter().enumerate() {
        by_sae
            .entry((format!("{:?}", row.sae), row.sae_id.clone()))
            .or_default()
            .push(i);
    }
    struct Acc {
        constant: Option<Vec<f64>>,
        terms: Vec<Term>,
        rows: Vec<usize>,
    }
    let mut hooks: BTreeMap<HookPoint, Acc> = BTreeMap::new();
    let mut provenance = Vec::new();
    for rows in by_sae.values() {
        let first = &plan.rows[rows[0]];
        let latents: Vec<usize> = rows.iter().map(|&i| plan.rows[i].latent).collect();
        let culprit = |err: anyhow::Error| {
            // A latent out of range is the fault of its own row; anything else, of the SAE column.
            let latent = err
                .downcast_ref::<LatentOutOfRange>()
                .map(|e| e.latent)
                .or_else(|| err.downcast_ref::<NonFiniteLatent>().map(|e| e.latent));
            let row = latent.and_then(|l| rows.iter().map(|&i| &plan.rows[i]).find(|r| r.latent == l));
            match row {
                Some(row) => err.context(plan.location(row, PlanField::Latent)),
                None => {
                    let where_ = plan.location(first, PlanField::Sae);
                    err.context(format!("{where_}: loading SAE {} '{}'", first.sae, first.sae_id))
                }
            }
        };
        let sae = Sae::open(hub, &first.sae, &first.sae_id).map_err(culprit)?;
        for file in &sae.files {
            inputs.add(file);
        }
        let decoder = sae.decoder_rows(&latents).map_err(culprit)?;
        let needs_encoder = rows.iter().any(|&i| plan.rows[i].action != SteerAction::Add);
        let encoder = if needs_encoder {
            Some(sae.encoder_parts(&latents).map_err(culprit)?)
        } else {
            None
        };
        provenance.push(decoder.provenance.clone());
        // This SAE's terms, by (hook, action), as indices into their hook's `terms`.
        let mut own_terms: BTreeMap<(HookPoint, SteerAction, Option<usize>), usize> = BTreeMap::new();
        for (k, &i) in rows.iter().enumerate() {
            let row = &plan.rows[i];
            let hook = row.hook.unwrap_or(decoder.hook);
            // A single-head hook_z SAE writes into its head's slice of the concatenated heads;
            // zeros pad it, and the width check against the model follows in `splice`.
            let head = decoder
                .head_index
                .or(row.head_index)
                .filter(|_| hook.site == Site::AttnZ);
            if let Some(h) = head
                && h.checked_add(1)
                    .and_then(|n| n.checked_mul(decoder.d_in))
                    .is_none_or(|end| end > MAX_WIDTH)
            {
                let field = if row.head_index.is_some() {
                    PlanField::HeadIndex
                } else {
                    PlanField::Sae
                };
                bail!(
                    "{}: head {h} of {} is beyond any model's attention heads (its {}-wide vector would end past \
                     {MAX_WIDTH} values); heads count from 0",
                    plan.location(row, field),
                    hook,
                    decoder.d_in
                );
            }
            let place = |v: &[f32]| -> Vec<f32> {
                match head {
                    Some(h) => {
                        let mut full = vec![0.0; v.len() * (h + 1)];
                        full[h * v.len()..].copy_from_slice(v);
                        full
                    }
                    None => v.to_vec(),
                }
            };
            let w_dec = place(&decoder.rows[k]);
            check_change_fits(plan, i, &w_dec)?;
            let acc = hooks.entry(hook).or_insert_with(|| Acc {
                constant: None,
                terms: Vec::new(),
                rows: Vec::new(),
            });
            acc.rows.push(i);
            if row.action == SteerAction::Add && !sweepable {
                let sum = acc.constant.get_or_insert_with(Vec::new);
                if sum.len() < w_dec.len() {
                    sum.resize(w_dec.len(), 0.0);
                }
                for (s, &w) in sum.iter_mut().zip(&w_dec) {
                    *s += f64::from(w) * row.coefficient;
                }
                continue;
            }
            let col = column(plan, i, &sae, encoder.as_ref(), k, w_dec, &place)?;
            let t = *own_terms.entry((hook, row.action, head)).or_insert_with(|| {
                acc.terms.push(Term {
                    action: row.action,
                    rows: Vec::new(),
                    coefficients: Vec::new(),
                    read: Vec::new(),
                    offset: col.offset.clone(),
                    bias: col.bias.map(|_| Vec::new()),
                    gate: col.gate.map(|_| Vec::new()),
                    write: Vec::new(),
                });
                acc.terms.len() - 1
            });
            let term = &mut acc.terms[t];
            term.rows.push(i);
            term.coefficients.push(row.coefficient);
            term.read.extend(col.read);
            if let (Some(b), Some(bias)) = (col.bias, term.bias.as_mut()) {
                bias.push(b);
            }
            if let (Some(g), Some(gate)) = (col.gate, term.gate.as_mut()) {
                gate.push(g);
            }
            term.write.push(col.write);
        }
    }
    for (hook, acc) in &hooks {
        if let Some(sum) = &acc.constant
            && sum.iter().any(|x| x.abs() > f64::from(f32::MAX))
        {
            let lines: Vec<usize> = acc.rows.iter().map(|&i| plan.rows[i].line).collect();
            bail!(
                "{}: the add rows on {hook} (lines {lines:?}) sum to a vector beyond float32's range; \
                 lower their coefficients",
                plan.source_path.display()
            );
        }
    }
    let hooks = hooks
        .into_iter()
        .map(|(hook, acc)| HookSteering {
            hook,
            constant: acc.constant.map(|s| s.into_iter().map(|x| x as f32).collect()),
            terms: acc.terms,
            rows: {
                let mut rows = acc.rows;
                rows.sort_unstable();
                rows
            },
        })
        .collect();
    Ok((hooks, provenance))
}

/// Refuses a row whose change at its own coefficient, `coefficient · W_dec[latent]`, is beyond
/// float32 (the type steering is computed in): it would add an infinite vector.
fn check_change_fits(plan: &SteeringPlan, i: usize, w_dec: &[f32]) -> Result<()> {
    let row = &plan.rows[i];
    let largest = w_dec.iter().fold(0.0f64, |m, &w| m.max(f64::from(w).abs()));
    if largest * row.coefficient.abs() > f64::from(f32::MAX) {
        bail!(
            "{}: steering_coefficient {} × W_dec[{}] (largest |value| {largest}) is beyond float32's range, in \
             which steering is computed; lower the coefficient",
            plan.location(row, PlanField::Coefficient),
            row.coefficient,
            row.latent
        );
    }
    Ok(())
}

/// One row's share of a [`Term`].
struct Column {
    read: Option<Vec<f32>>,
    offset: Option<Vec<f32>>,
    bias: Option<f32>,
    gate: Option<f32>,
    write: Vec<f32>,
}

/// What row `i` (the `k`-th latent read from `sae`) contributes to its term.
fn column(
    plan: &SteeringPlan,
    i: usize,
    sae: &Sae,
    encoder: Option<&crate::sae::EncoderParts>,
    k: usize,
    w_dec: Vec<f32>,
    place: &dyn Fn(&[f32]) -> Vec<f32>,
) -> Result<Column> {
    let row = &plan.rows[i];
    let nonzero = |v: Vec<f32>| v.iter().any(|&x| x != 0.0).then_some(v);
    if row.action == SteerAction::Add {
        return Ok(Column {
            read: None,
            offset: None,
            bias: None,
            gate: None,
            write: w_dec,
        });
    }
    let enc = encoder.context("the encoder parts were read for every row that is not `add`")?;
    if row.action == SteerAction::ClampProjection {
        let norm = w_dec.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
        if !(norm.is_finite() && norm > 0.0) {
            bail!(
                "{}: W_dec[{}] of SAE {} has norm {norm}, so clamp_projection has no direction",
                plan.location(row, PlanField::Latent),
                row.latent,
                sae.label
            );
        }
        let d: Vec<f32> = w_dec.iter().map(|&v| (f64::from(v) / norm) as f32).collect();
        // lm-eval's CSV loader passes the SAE's b_dec as `bias`, whatever apply_b_dec_to_input says.
        return Ok(Column {
            read: Some(d.clone()),
            offset: nonzero(place(&enc.b_dec)),
            bias: None,
            gate: None,
            write: d,
        });
    }
    let activation_gate = match enc.architecture.as_str() {
        "standard" => 0.0,
        "jumprelu" => {
            let thresholds = enc.threshold.as_ref().with_context(|| {
                format!(
                    "{}: SAE {} is a JumpReLU SAE without a threshold tensor",
                    plan.location(row, PlanField::Sae),
                    sae.label
                )
            })?;
            // relu(pre)·[pre > θ] is pre·[pre > max(θ, 0)]
            thresholds[k].max(0.0)
        }
        other => bail!(
            "{}: {} needs the activation of feature {}, but SAE {} is a '{other}' SAE; sae-onnx computes the \
             features of standard (ReLU) and jumprelu SAEs (use add or clamp_projection with this one)",
            plan.location(row, PlanField::Action),
            row.action,
            row.latent,
            sae.label
        ),
    };
    let gate = match (row.action, row.threshold) {
        (SteerAction::AddIfActive, Some(t)) => activation_gate.max(t as f32),
        _ => activation_gate,
    };
    Ok(Column {
        read: Some(place(&enc.w_enc_cols[k])),
        offset: if enc.apply_b_dec_to_input {
            nonzero(place(&enc.b_dec))
        } else {
            None
        },
        bias: Some(enc.b_enc[k]),
        gate: Some(gate),
        write: w_dec,
    })
}

/// Splices `hooks` into `model` and records the patch in its metadata.
pub fn splice(
    model: &mut Model,
    plan: &SteeringPlan,
    hooks: &[HookSteering],
    provenance: &[SaeProvenance],
    options: &SpliceOptions,
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
    let layers: Option<usize> = model.metadata(meta::NUM_LAYERS).and_then(|v| v.parse().ok());
    for hs in hooks {
        let at = rows_at(plan, hs);
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
            check_opset(model, hs.hook)?;
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
        let name = hs.hook.to_string();
        let node_name = graph.unique_name(&format!("{NODE_PREFIX}{name}"));
        let mut b = Builder {
            names: graph.names(),
            node_scope: node_name.clone(),
            tensor_scope: format!("sae_onnx.steer.{name}"),
            dtype: site.dtype,
            width,
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
        };
        let mut total: Option<String> = None;
        if !hs.terms.is_empty() {
            let x32 = b.cast_to_f32(&source, "x")?;
            let mut delta32: Option<String> = None;
            for (j, term) in hs.terms.iter().enumerate() {
                let d = b.term(plan, term, j, &x32, &input_of)?;
                delta32 = Some(match delta32 {
                    Some(acc) => b.node("Add", &[&acc, &d], "delta_sum", vec![])?,
                    None => d,
                });
            }
            let delta32 = delta32.context("terms is not empty")?;
            total = Some(b.cast_from_f32(&delta32, "delta")?);
        }
        let norm = match &hs.constant {
            Some(v) => {
                let v = b.fit(v);
                // The name the constant-only splice has always used.
                let c = b.fresh(&format!("sae_onnx.steer.{name}"));
                b.initializers.push(make_tensor(
                    &c,
                    site.dtype,
                    &[v.len() as i64],
                    raw(site.dtype, &v)?,
                ));
                total = Some(match total {
                    Some(t) => b.node("Add", &[&t, &c], "total", vec![])?,
                    None => c,
                });
                v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32
            }
            None => 0.0,
        };
        let total = total.context("a hook with neither a constant nor computed rows")?;
        let steered = b.fresh(&format!("{name}.steered"));
        let Builder {
            mut nodes,
            initializers,
            inputs,
            ..
        } = b;
        nodes.push(make_node("Add", &[&source, &total], &[&steered], node_name));
        graph.initializer.extend(initializers);
        graph.input.extend(inputs);
        match &site.only_reader {
            // Fused graphs: steer one input of one node (see contract/hook_site.rs).
            Some((node, input)) => {
                let at = graph
                    .node
                    .iter()
                    .position(|n| n.name() == node)
                    .context("located node vanished")?;
                graph.node[at].input[*input].clone_from(&steered);
                graph.node.splice(at..at, nodes);
            }
            None => graph.insert_after(&source, nodes, &steered)?,
        }
        report.hooks.push((hs.hook, site.tensor.clone(), norm));
        if !hs.terms.is_empty() {
            let parts: Vec<String> = hs
                .terms
                .iter()
                .map(|t| {
                    let lines: Vec<String> = t.rows.iter().map(|&i| plan.rows[i].line.to_string()).collect();
                    let s = if lines.len() == 1 { "" } else { "s" };
                    format!("{} (line{s} {})", t.action, lines.join(", "))
                })
                .collect();
            report.computed.push((hs.hook, parts.join(", ")));
        }
    }
    model
        .graph_mut()
        .toposort()
        .context("ordering the patched graph")?;
    if options.sweepable {
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
        report.coefficient_inputs = added.iter().map(|r| r.input.clone()).collect();
        coefficient_records.extend(added);
        model.set_metadata(COEFFICIENT_INPUTS, &serde_json::to_string(&coefficient_records)?);
    }
    record(model, plan, hooks, provenance, options.replace, &input_of)?;
    Ok(report)
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
    if site.only_reader.is_some() {
        return tensor;
    }
    let mut seen = HashSet::new();
    while let Some(next) = graph
        .node
        .iter()
        .find(|n| is_final_add(n) && n.input.first() == Some(&tensor))
        .and_then(|n| n.output.first())
    {
        if !seen.insert(next.clone()) {
            break; // a malformed cycle; the toposort reports it
        }
        tensor = next.clone();
    }
    tensor
}

/// The node that adds a patch's change to its hook (not one of the nodes computing the change).
fn is_final_add(node: &NodeProto) -> bool {
    node.op_type() == "Add"
        && node
            .name()
            .strip_prefix(NODE_PREFIX)
            .is_some_and(|rest| !rest.contains('/'))
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

fn check_opset(model: &Model, hook: HookPoint) -> Result<()> {
    let opset = model
        .proto
        .opset_import
        .iter()
        .find(|o| matches!(o.domain(), "" | "ai.onnx"))
        .map(|o| o.version());
    match opset {
        Some(v) if v < MIN_OPSET => bail!(
            "steering {hook} with actions other than add needs opset {MIN_OPSET} or later (broadcasting Sub, \
             Mul, Greater); the model imports opset {v}"
        ),
        _ => Ok(()),
    }
}

/// The bytes of `values` as `dtype` (the hook's float type).
fn raw(dtype: DataType, values: &[f32]) -> Result<Vec<u8>> {
    Ok(match dtype {
        DataType::Float16 => values
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
            .collect(),
        DataType::Bfloat16 => values
            .iter()
            .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
            .collect(),
        DataType::Float => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        other => bail!("the hook tensor is {other:?}; steering needs a float tensor"),
    })
}

/// Builds one hook's nodes, constants and coefficient inputs under fresh names.
struct Builder {
    /// Every name in use (graph and what this builder made).
    names: HashSet<String>,
    /// `{NODE_PREFIX}{hook}`: node names are `{node_scope}/...`.
    node_scope: String,
    /// `sae_onnx.steer.{hook}`: tensor names are `{tensor_scope}/...`.
    tensor_scope: String,
    /// The hook's element type.
    dtype: DataType,
    /// The hook's width; every vector is zero-padded to it.
    width: usize,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
}

impl Builder {
    fn fresh(&mut self, base: &str) -> String {
        let name = if self.names.contains(base) {
            (1..)
                .map(|i| format!("{base}_{i}"))
                .find(|n| !self.names.contains(n))
                .expect("some suffix is free")
        } else {
            base.to_owned()
        };
        self.names.insert(name.clone());
        name
    }

    fn fit(&self, v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        v.resize(self.width, 0.0);
        v
    }

    /// Adds a node named after `what` and returns its (fresh) output.
    fn node(&mut self, op: &str, inputs: &[&str], what: &str, attrs: Vec<(&str, i64)>) -> Result<String> {
        let output = self.fresh(&format!("{}/{what}", self.tensor_scope));
        let name = self.fresh(&format!("{}/{what}", self.node_scope));
        let mut node = make_node(op, inputs, &[&output], name);
        for (key, value) in attrs {
            node = node.with_attr(key, value);
        }
        self.nodes.push(node);
        Ok(output)
    }

    fn constant_f32(&mut self, what: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(&format!("{}/{what}", self.tensor_scope));
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers
            .push(make_tensor(&name, DataType::Float, &dims, raw));
        name
    }

    fn cast(&mut self, x: &str, to: DataType, what: &str) -> Result<String> {
        self.node("Cast", &[x], what, vec![("to", to as i64)])
    }

    fn cast_to_f32(&mut self, x: &str, what: &str) -> Result<String> {
        if self.dtype == DataType::Float {
            return Ok(x.to_owned());
        }
        self.cast(x, DataType::Float, &format!("{what}_f32"))
    }

    fn cast_from_f32(&mut self, x: &str, what: &str) -> Result<String> {
        if self.dtype == DataType::Float {
            return Ok(x.to_owned());
        }
        let dtype = self.dtype;
        self.cast(x, dtype, what)
    }

    /// The term's coefficients as a float32 vector `[m]`: constants, or (sweepable) the scalar
    /// graph inputs, each backed by an initializer holding the plan's value.
    fn coefficients(
        &mut self,
        term: &Term,
        scope: &str,
        input_of: &dyn Fn(usize) -> Option<String>,
    ) -> Result<String> {
        let names: Option<Vec<String>> = term.rows.iter().map(|&i| input_of(i)).collect();
        let Some(names) = names else {
            let values: Vec<f32> = term.coefficients.iter().map(|&c| c as f32).collect();
            return Ok(self.constant_f32(&format!("{scope}/coefficients"), &[values.len()], &values));
        };
        let shape = self.fresh(&format!("{}/{scope}/one", self.tensor_scope));
        self.initializers.push(make_tensor(
            &shape,
            DataType::Int64,
            &[1],
            1i64.to_le_bytes().to_vec(),
        ));
        let mut parts = Vec::new();
        for (name, &c) in names.iter().zip(&term.coefficients) {
            if self.names.contains(name) {
                bail!("cannot add the coefficient input '{name}': the graph already has that name");
            }
            self.names.insert(name.clone());
            let dtype = self.dtype;
            self.inputs.push(make_tensor_value_info(name, dtype, &[]));
            self.initializers
                .push(make_tensor(name, dtype, &[], raw(dtype, &[c as f32])?));
            let c32 = self.cast_to_f32(name, &format!("{scope}/{name}"))?;
            parts.push(self.node("Reshape", &[&c32, &shape], &format!("{scope}/{name}_1d"), vec![])?);
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.node(
            "Concat",
            &refs,
            &format!("{scope}/coefficients"),
            vec![("axis", 0)],
        )
    }

    /// The float32 change a term makes, from the float32 hook value `x32`.
    fn term(
        &mut self,
        plan: &SteeringPlan,
        term: &Term,
        j: usize,
        x32: &str,
        input_of: &dyn Fn(usize) -> Option<String>,
    ) -> Result<String> {
        let scope = format!("{}_{j}", term.action);
        let m = term.rows.len();
        let d = self.width;
        let c = self.coefficients(term, &scope, input_of)?;
        let k = if term.action == SteerAction::Add {
            c
        } else {
            let mut centered = x32.to_owned();
            if let Some(offset) = &term.offset {
                let offset = self.fit(offset);
                let b_dec = self.constant_f32(&format!("{scope}/b_dec"), &[d], &offset);
                centered = self.node("Sub", &[x32, &b_dec], &format!("{scope}/centered"), vec![])?;
            }
            // [d, m]: column j is the j-th row's read vector
            let columns: Vec<Vec<f32>> = term.read.iter().map(|r| self.fit(r)).collect();
            let read: Vec<f32> = (0..d)
                .flat_map(|i| columns.iter().map(move |col| col[i]))
                .collect();
            let read = self.constant_f32(&format!("{scope}/read"), &[d, m], &read);
            let mut p = self.node("MatMul", &[&centered, &read], &format!("{scope}/proj"), vec![])?;
            if let Some(bias) = &term.bias {
                let b_enc = self.constant_f32(&format!("{scope}/b_enc"), &[m], bias);
                p = self.node("Add", &[&p, &b_enc], &format!("{scope}/pre"), vec![])?;
            }
            let active = |b: &mut Self| -> Result<String> {
                let gate = term.gate.as_ref().with_context(|| {
                    format!(
                        "{}: a {} row without a gate",
                        plan.source_path.display(),
                        term.action
                    )
                })?;
                let gate = b.constant_f32(&format!("{scope}/gate"), &[m], gate);
                let on = b.node("Greater", &[&p, &gate], &format!("{scope}/is_active"), vec![])?;
                b.cast(&on, DataType::Float, &format!("{scope}/active"))
            };
            match term.action {
                SteerAction::Clamp => {
                    let mask = active(self)?;
                    let f = self.node("Mul", &[&p, &mask], &format!("{scope}/feature"), vec![])?;
                    self.node("Sub", &[&c, &f], &format!("{scope}/scale"), vec![])?
                }
                SteerAction::AddIfActive => {
                    let mask = active(self)?;
                    self.node("Mul", &[&c, &mask], &format!("{scope}/scale"), vec![])?
                }
                SteerAction::ClampProjection => {
                    self.node("Sub", &[&c, &p], &format!("{scope}/scale"), vec![])?
                }
                SteerAction::Add => unreachable!("handled above"),
            }
        };
        // [m, d]: row j is the j-th row's written direction
        let write: Vec<f32> = term.write.iter().flat_map(|w| self.fit(w)).collect();
        let write = self.constant_f32(&format!("{scope}/write"), &[m, d], &write);
        self.node("MatMul", &[&k, &write], &format!("{scope}/delta"), vec![])
    }
}

/// Removes earlier steering (every node we spliced, the constants and coefficient inputs only
/// they read), rewiring the hooks' readers back. Returns how many patches-at-a-hook were removed.
fn remove_steering(model: &mut Model) -> usize {
    let graph = model.graph_mut();
    let mut removed = 0;
    // Stacked Adds read each other, so each is looked up afresh after the previous removal.
    while let Some(i) = graph.node.iter().position(is_final_add) {
        let node = graph.node.remove(i);
        graph.replace_all_uses_with(&node.output[0], &node.input[0]);
        removed += 1;
    }
    let ours: Vec<NodeProto> = graph
        .node
        .iter()
        .filter(|n| n.name().starts_with(NODE_PREFIX))
        .cloned()
        .collect();
    graph.node.retain(|n| !n.name().starts_with(NODE_PREFIX));
    let mut read_by_ours: HashSet<String> = ours.iter().flat_map(|n| n.input.iter().cloned()).collect();
    // The final Adds' constants were read by the removed Adds themselves.
    read_by_ours.extend(
        graph
            .initializer
            .iter()
            .filter(|t| t.name().starts_with("sae_onnx.steer."))
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
fn steering_patches(model: &Model) -> Vec<Value> {
    model
        .metadata(STEERING)
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default()
}

fn record(
    model: &mut Model,
    plan: &SteeringPlan,
    hooks: &[HookSteering],
    provenance: &[SaeProvenance],
    replace: bool,
    input_of: &dyn Fn(usize) -> Option<String>,
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
                    json!({
                        "action": t.action.name(),
                        "lines": t.rows.iter().map(|&i| plan.rows[i].line).collect::<Vec<_>>(),
                    })
                })
                .collect();
            json!({"hook": h.hook.to_string(), "norm": norm, "computed": computed})
        })
        .collect();
    let patch = json!({
        "tool": format!("sae-onnx {}", env!("CARGO_PKG_VERSION")),
        "csv": plan.source_path.display().to_string(),
        "csv_sha256": crate::digest::sha256_hex(&csv_bytes),
        "format": format!("{:?}", plan.format),
        "semantics": "rows on a hook read its value before this patch; their changes are summed",
        "rows": rows,
        "saes": provenance,
        "hooks": hooks_json,
    });
    let mut patches = if replace {
        Vec::new()
    } else {
        steering_patches(model)
    };
    patches.push(patch);
    model.set_metadata(STEERING, &serde_json::to_string(&patches)?);
    Ok(())
}
