//! Resolving a plan's rows to what each hook gets: the SAE vectors each row reads (every SAE
//! opened once), summed into one constant for fixed-coefficient `add` rows, and grouped into
//! [`Term`]s (one per action and SAE at a hook) for the rows computed from the hook's value.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

use super::plan::{PlanField, SteerAction, SteerRow, SteeringPlan};
use super::rules::{Normalize, PositionRule};
use crate::files::Inputs;
use crate::hook::{HookPoint, Site};
use crate::hub::Hub;
use crate::sae::{
    DecoderRows, EncoderParts, LatentOutOfRange, NonFiniteLatent, Sae, SaeArchitecture, SaeProvenance,
};

/// The widest hook vector we build (16M values, 4000 times Gemma 2 27B's attention width): a
/// head index or a metadata width past it is a mistake, and honouring it would allocate without
/// bound.
pub(super) const MAX_WIDTH: usize = 1 << 24;

/// What one hook gets.
#[derive(Debug, Clone)]
pub struct HookSteering {
    pub hook: HookPoint,
    /// `Σ coefficient · W_dec[latent]` of the `add` rows with fixed coefficients that steer every
    /// position (`normalize unit` rows with the unit direction).
    pub constant: Option<Vec<f32>>,
    /// The rows computed from the hook's value in the graph (and all rows of a sweepable patch).
    pub terms: Vec<Term>,
    /// The plan rows (indices) that contributed, in plan order.
    pub rows: Vec<usize>,
}

/// Rows of one action, one SAE, one positions rule and one normalization at a hook, one column
/// each, computed in float32: `P = (x − offset) @ read + bias`, then the action's `K` from `P`,
/// `gate` and the coefficients, then `Δ = K @ write`, times `‖x_t‖` (`normalize residual`), times the
/// rule's position mask.
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
    /// The directions written: `W_dec[latent]`, or the unit decoder direction (`clamp_projection`,
    /// and rows normalized `unit` or `residual`).
    pub write: Vec<Vec<f32>>,
    pub steer_at: PositionRule,
    pub normalize: Normalize,
}

/// A hook's steering while the plan's SAEs are read.
#[derive(Default)]
struct HookAccumulator {
    /// `Σ coefficient · W_dec[latent]` in float64, so the sum is checked before rounding.
    constant: Option<Vec<f64>>,
    terms: Vec<Term>,
    rows: Vec<usize>,
}

impl HookAccumulator {
    fn add_constant(&mut self, w_dec: &[f32], coefficient: f64) {
        let sum = self.constant.get_or_insert_with(Vec::new);
        if sum.len() < w_dec.len() {
            sum.resize(w_dec.len(), 0.0);
        }
        for (s, &w) in sum.iter_mut().zip(w_dec) {
            *s += f64::from(w) * coefficient;
        }
    }

    /// Appends row `i`'s column to term `t`, a new term when `t` is `None`; returns the term's index.
    fn add_column(&mut self, t: Option<usize>, i: usize, row: &SteerRow, col: Column) -> usize {
        let t = t.unwrap_or_else(|| {
            self.terms.push(Term {
                action: row.action,
                rows: Vec::new(),
                coefficients: Vec::new(),
                read: Vec::new(),
                offset: col.offset.clone(),
                bias: col.bias.map(|_| Vec::new()),
                gate: col.gate.map(|_| Vec::new()),
                write: Vec::new(),
                steer_at: row.steer_at,
                normalize: row.normalize,
            });
            self.terms.len() - 1
        });
        let term = &mut self.terms[t];
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
        t
    }

    fn into_steering(self, hook: HookPoint) -> HookSteering {
        let mut rows = self.rows;
        rows.sort_unstable();
        HookSteering {
            hook,
            constant: self.constant.map(|s| s.into_iter().map(|x| x as f32).collect()),
            terms: self.terms,
            rows,
        }
    }
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
    let mut hooks: BTreeMap<HookPoint, HookAccumulator> = BTreeMap::new();
    let mut provenance = Vec::new();
    for rows in by_sae.values() {
        let sae = SaeRows::read(plan, hub, rows, inputs)?;
        provenance.push(sae.decoder.provenance.clone());
        sae.steer(plan, sweepable, &mut hooks)?;
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
        .map(|(hook, acc)| acc.into_steering(hook))
        .collect();
    Ok((hooks, provenance))
}

/// The plan rows of one SAE and what they read from it.
struct SaeRows<'a> {
    /// Plan row indices.
    rows: &'a [usize],
    sae: Sae,
    decoder: DecoderRows,
    /// Read when a row is not `add`.
    encoder: Option<EncoderParts>,
}

impl<'a> SaeRows<'a> {
    fn read(plan: &SteeringPlan, hub: &Hub, rows: &'a [usize], inputs: &mut Inputs) -> Result<Self> {
        let first = &plan.rows[rows[0]];
        let latents: Vec<usize> = rows.iter().map(|&i| plan.rows[i].latent).collect();
        let culprit = |err: anyhow::Error| blame(plan, rows, err);
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
        Ok(Self {
            rows,
            sae,
            decoder,
            encoder,
        })
    }

    /// Adds each row's vectors to its hook.
    fn steer(
        &self,
        plan: &SteeringPlan,
        sweepable: bool,
        hooks: &mut BTreeMap<HookPoint, HookAccumulator>,
    ) -> Result<()> {
        // This SAE's terms, by (hook, action, head, rule, normalization), as indices into their
        // hook's `terms`.
        type TermKey = (HookPoint, SteerAction, Option<usize>, PositionRule, Normalize);
        let mut own_terms: BTreeMap<TermKey, usize> = BTreeMap::new();
        for (k, &i) in self.rows.iter().enumerate() {
            let row = &plan.rows[i];
            let hook = row.hook.unwrap_or(self.decoder.hook);
            let head = self.head(plan, row, hook)?;
            let w_dec = place(&self.decoder.rows[k], head);
            let w_dec = match row.normalize {
                Normalize::None => w_dec,
                Normalize::Unit | Normalize::Residual => unit_direction(plan, row, &self.sae, &w_dec)?,
            };
            check_change_fits(plan, i, &w_dec)?;
            let acc = hooks.entry(hook).or_default();
            acc.rows.push(i);
            let everywhere = row.steer_at == PositionRule::All && row.normalize != Normalize::Residual;
            if row.action == SteerAction::Add && !sweepable && everywhere {
                acc.add_constant(&w_dec, row.coefficient);
                continue;
            }
            let col = column(plan, i, &self.sae, self.encoder.as_ref(), k, w_dec, head)?;
            let key = (hook, row.action, head, row.steer_at, row.normalize);
            let t = acc.add_column(own_terms.get(&key).copied(), i, row, col);
            own_terms.insert(key, t);
        }
        Ok(())
    }

    /// The head whose slice of the concatenated heads a single-head hook_z SAE writes into (zeros
    /// pad the rest; the width check against the model follows in `splice`).
    fn head(&self, plan: &SteeringPlan, row: &SteerRow, hook: HookPoint) -> Result<Option<usize>> {
        let d_in = self.decoder.d_in;
        let head = self
            .decoder
            .head_index
            .or(row.head_index)
            .filter(|_| hook.site == Site::AttnZ);
        if let Some(h) = head
            && h.checked_add(1)
                .and_then(|n| n.checked_mul(d_in))
                .is_none_or(|end| end > MAX_WIDTH)
        {
            let field = if row.head_index.is_some() {
                PlanField::HeadIndex
            } else {
                PlanField::Sae
            };
            bail!(
                "{}: head {h} of {} is beyond any model's attention heads (its {d_in}-wide vector would end past \
                 {MAX_WIDTH} values); heads count from 0",
                plan.location(row, field),
                hook,
            );
        }
        Ok(head)
    }
}

/// Names the culprit of an error reading an SAE: a latent out of range is the fault of its own
/// row; anything else, of the SAE column.
fn blame(plan: &SteeringPlan, rows: &[usize], err: anyhow::Error) -> anyhow::Error {
    let latent = err
        .downcast_ref::<LatentOutOfRange>()
        .map(|e| e.latent)
        .or_else(|| err.downcast_ref::<NonFiniteLatent>().map(|e| e.latent));
    let row = latent.and_then(|l| rows.iter().map(|&i| &plan.rows[i]).find(|r| r.latent == l));
    match row {
        Some(row) => err.context(plan.location(row, PlanField::Latent)),
        None => {
            let first = &plan.rows[rows[0]];
            let where_ = plan.location(first, PlanField::Sae);
            err.context(format!("{where_}: loading SAE {} '{}'", first.sae, first.sae_id))
        }
    }
}

/// `v` in its head's slice of the concatenated heads, or as it is.
fn place(v: &[f32], head: Option<usize>) -> Vec<f32> {
    match head {
        Some(h) => {
            let mut full = vec![0.0; v.len() * (h + 1)];
            full[h * v.len()..].copy_from_slice(v);
            full
        }
        None => v.to_vec(),
    }
}

/// `w / ‖w‖`, for rows normalized `unit` or `residual`.
fn unit_direction(plan: &SteeringPlan, row: &SteerRow, sae: &Sae, w: &[f32]) -> Result<Vec<f32>> {
    let norm = w.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        bail!(
            "{}: W_dec[{}] of SAE {} has norm {norm}, so normalize {} has no direction",
            plan.location(row, PlanField::Normalize),
            row.latent,
            sae.label,
            row.normalize
        );
    }
    Ok(w.iter().map(|&v| (f64::from(v) / norm) as f32).collect())
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
    encoder: Option<&EncoderParts>,
    k: usize,
    w_dec: Vec<f32>,
    head: Option<usize>,
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
            offset: nonzero(place(&enc.b_dec, head)),
            bias: None,
            gate: None,
            write: d,
        });
    }
    let activation_gate = match enc.architecture {
        SaeArchitecture::Standard => 0.0,
        SaeArchitecture::JumpRelu => {
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
        read: Some(place(&enc.w_enc_cols[k], head)),
        offset: if enc.apply_b_dec_to_input {
            nonzero(place(&enc.b_dec, head))
        } else {
            None
        },
        bias: Some(enc.b_enc[k]),
        gate: Some(gate),
        write: w_dec,
    })
}
