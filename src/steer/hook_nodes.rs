//! The nodes that steer one hook, built on [`GraphBuilder`] under fresh names: per [`Term`] a
//! small float32 subgraph from the hook's value (`P = (x − offset) @ read + bias`, the action's
//! `K`, `Δ = K @ write`, scaled by `‖x_t‖` for `normalize residual` and by the position mask of its
//! rule, see [`super::position_mask`]), the constant of the fixed `add` rows, and the final `Add` into the hook.
//! Nodes are named `{STEER_NODE_PREFIX}{hook}/...` ([`crate::contract::STEER_NODE_PREFIX`]),
//! tensors `{STEER_TENSOR_PREFIX}{hook}/...`.

use anyhow::{Context, Result, bail};

use super::hook_builder::{HookBuilder, raw};
use super::plan::{SteerAction, SteeringPlan};
use super::position_mask::{MaskInputs, Masks};
use super::rules::{Normalize, PositionRule};
use super::steering::{HookSteering, Term};
use crate::contract::STEER_TENSOR_PREFIX;
use crate::onnx::DataType;
use crate::onnx::builder::{GraphBuilder, GraphFragment};
use crate::onnx::make::{make_tensor, make_tensor_value_info};
use crate::onnx::pb::GraphProto;

/// The sweepable coefficient input of plan row `i`, or `None` for a fixed coefficient.
pub(super) type CoefficientInputOf<'a> = &'a dyn Fn(usize) -> Option<String>;

/// One hook's steering nodes, and what the splice needs to wire them in.
pub(super) struct HookNodes {
    pub fragment: GraphFragment,
    /// The steered value, which the hook's readers read from now on.
    pub steered: String,
    /// Norm of the constant part of the change.
    pub norm: f32,
}

/// Where a hook's nodes go and what its value is.
pub(super) struct HookValue<'a> {
    /// The tensor the nodes read: the hook's, or the end of the steering already spliced there.
    pub source: &'a str,
    pub dtype: DataType,
    /// The hook's width; every vector is zero-padded to it.
    pub width: usize,
    /// The name of the final `Add`, unique in the graph.
    pub node_name: String,
}

/// Builds the nodes steering `hs` at `value`, named against `graph`.
pub(super) fn hook_nodes(
    graph: &GraphProto,
    plan: &SteeringPlan,
    hs: &HookSteering,
    value: HookValue,
    input_of: CoefficientInputOf,
    mask_inputs: MaskInputs,
) -> Result<HookNodes> {
    let name = hs.hook.to_string();
    let mut b = HookBuilder {
        b: GraphBuilder::extending(graph),
        node_scope: value.node_name.clone(),
        tensor_scope: format!("{STEER_TENSOR_PREFIX}{name}"),
        dtype: value.dtype,
        width: value.width,
    };
    let mut total: Option<String> = None;
    if !hs.terms.is_empty() {
        let x32 = b.cast_to_f32(value.source, "x");
        let mut masks = Masks::new(graph, mask_inputs);
        let mut x_norm: Option<String> = None;
        let mut delta32: Option<String> = None;
        for (j, term) in hs.terms.iter().enumerate() {
            let mut d = b.term(plan, term, j, &x32, input_of)?;
            if term.normalize == Normalize::Residual {
                let norm = match &x_norm {
                    Some(n) => n.clone(),
                    None => x_norm.insert(b.norm_per_position(&x32)).clone(),
                };
                d = b.node(
                    "Mul",
                    &[&d, &norm],
                    &format!("{}_{j}/relative", term.action),
                    vec![],
                );
            }
            if term.steer_at != PositionRule::All {
                let mask = masks.mask(&mut b, graph, term.steer_at)?;
                d = b.node(
                    "Mul",
                    &[&d, &mask],
                    &format!("{}_{j}/at_positions", term.action),
                    vec![],
                );
            }
            delta32 = Some(match delta32 {
                Some(acc) => b.node("Add", &[&acc, &d], "delta_sum", vec![]),
                None => d,
            });
        }
        let delta32 = delta32.context("terms is not empty")?;
        total = Some(b.cast_from_f32(&delta32, "delta"));
    }
    let norm = match &hs.constant {
        Some(v) => {
            let v = b.fit(v);
            // The name the constant-only splice has always used.
            let c = b.b.fresh(&format!("{STEER_TENSOR_PREFIX}{name}"));
            let c = b.b.initializer(make_tensor(
                &c,
                value.dtype,
                &[v.len() as i64],
                raw(value.dtype, &v)?,
            ));
            total = Some(match total {
                Some(t) => b.node("Add", &[&t, &c], "total", vec![]),
                None => c,
            });
            v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32
        }
        None => 0.0,
    };
    let total = total.context("a hook with neither a constant nor computed rows")?;
    let steered = b.b.fresh(&format!("{name}.steered"));
    b.b.node(value.node_name, "Add", &[value.source, &total], &steered, vec![]);
    Ok(HookNodes {
        fragment: b.b.finish(),
        steered,
        norm,
    })
}

impl HookBuilder {
    /// `‖x_t‖` of the float32 hook value, `[batch, seq, 1]` (a MatMul with ones sums the squares
    /// in every opset, where ReduceSumSquare moved its axes to an input in opset 18).
    fn norm_per_position(&mut self, x32: &str) -> String {
        let squares = self.node("Mul", &[x32, x32], "residual/squares", vec![]);
        let ones = vec![1.0; self.width];
        let ones = self.constant_f32("residual/ones", &[self.width, 1], &ones);
        let sum = self.node("MatMul", &[&squares, &ones], "residual/sum_squares", vec![]);
        self.node("Sqrt", &[&sum], "residual/norm", vec![])
    }

    /// The term's coefficients as a float32 vector `[m]`: constants, or (sweepable) the scalar
    /// graph inputs, each backed by an initializer holding the plan's value.
    fn coefficients(&mut self, term: &Term, scope: &str, input_of: CoefficientInputOf) -> Result<String> {
        let names: Option<Vec<String>> = term.rows.iter().map(|&i| input_of(i)).collect();
        let Some(names) = names else {
            let values: Vec<f32> = term.coefficients.iter().map(|&c| c as f32).collect();
            return Ok(self.constant_f32(&format!("{scope}/coefficients"), &[values.len()], &values));
        };
        let shape = self.b.fresh(&format!("{}/{scope}/one", self.tensor_scope));
        let shape = self.b.initializer(make_tensor(
            &shape,
            DataType::Int64,
            &[1],
            1i64.to_le_bytes().to_vec(),
        ));
        let mut parts = Vec::new();
        for (name, &c) in names.iter().zip(&term.coefficients) {
            if !self.b.claim(name) {
                bail!("cannot add the coefficient input '{name}': the graph already has that name");
            }
            self.b.input(make_tensor_value_info(name, self.dtype, &[]));
            self.b
                .initializer(make_tensor(name, self.dtype, &[], raw(self.dtype, &[c as f32])?));
            let c32 = self.cast_to_f32(name, &format!("{scope}/{name}"));
            parts.push(self.node("Reshape", &[&c32, &shape], &format!("{scope}/{name}_1d"), vec![]));
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        Ok(self.node(
            "Concat",
            &refs,
            &format!("{scope}/coefficients"),
            vec![("axis", 0)],
        ))
    }

    /// The float32 change a term makes, from the float32 hook value `x32`.
    fn term(
        &mut self,
        plan: &SteeringPlan,
        term: &Term,
        j: usize,
        x32: &str,
        input_of: CoefficientInputOf,
    ) -> Result<String> {
        let scope = format!("{}_{j}", term.action);
        let m = term.rows.len();
        let d = self.width;
        let c = self.coefficients(term, &scope, input_of)?;
        let k = if term.action == SteerAction::Add {
            c
        } else {
            let p = self.projection(term, &scope, x32);
            self.scale(plan, term, &scope, &c, &p)?
        };
        // [m, d]: row j is the j-th row's written direction
        let write: Vec<f32> = term.write.iter().flat_map(|w| self.fit(w)).collect();
        let write = self.constant_f32(&format!("{scope}/write"), &[m, d], &write);
        Ok(self.node("MatMul", &[&k, &write], &format!("{scope}/delta"), vec![]))
    }

    /// `P = (x − offset) @ read + bias`, one column per row of the term.
    fn projection(&mut self, term: &Term, scope: &str, x32: &str) -> String {
        let (m, d) = (term.rows.len(), self.width);
        let mut centered = x32.to_owned();
        if let Some(offset) = &term.offset {
            let offset = self.fit(offset);
            let b_dec = self.constant_f32(&format!("{scope}/b_dec"), &[d], &offset);
            centered = self.node("Sub", &[x32, &b_dec], &format!("{scope}/centered"), vec![]);
        }
        // [d, m]: column j is the j-th row's read vector
        let columns: Vec<Vec<f32>> = term.read.iter().map(|r| self.fit(r)).collect();
        let read: Vec<f32> = (0..d)
            .flat_map(|i| columns.iter().map(move |col| col[i]))
            .collect();
        let read = self.constant_f32(&format!("{scope}/read"), &[d, m], &read);
        let mut p = self.node("MatMul", &[&centered, &read], &format!("{scope}/proj"), vec![]);
        if let Some(bias) = &term.bias {
            let b_enc = self.constant_f32(&format!("{scope}/b_enc"), &[m], bias);
            p = self.node("Add", &[&p, &b_enc], &format!("{scope}/pre"), vec![]);
        }
        p
    }

    /// The action's `K` from the projection `p` and the coefficients `c`.
    fn scale(&mut self, plan: &SteeringPlan, term: &Term, scope: &str, c: &str, p: &str) -> Result<String> {
        let active = |b: &mut Self| -> Result<String> {
            let gate = term.gate.as_ref().with_context(|| {
                format!(
                    "{}: a {} row without a gate",
                    plan.source_path.display(),
                    term.action
                )
            })?;
            let gate = b.constant_f32(&format!("{scope}/gate"), &[term.rows.len()], gate);
            let on = b.node("Greater", &[p, &gate], &format!("{scope}/is_active"), vec![]);
            Ok(b.cast(&on, DataType::Float, &format!("{scope}/active")))
        };
        Ok(match term.action {
            SteerAction::Clamp => {
                let mask = active(self)?;
                let f = self.node("Mul", &[p, &mask], &format!("{scope}/feature"), vec![]);
                self.node("Sub", &[c, &f], &format!("{scope}/scale"), vec![])
            }
            SteerAction::AddIfActive => {
                let mask = active(self)?;
                self.node("Mul", &[c, &mask], &format!("{scope}/scale"), vec![])
            }
            SteerAction::ClampProjection => self.node("Sub", &[c, p], &format!("{scope}/scale"), vec![]),
            SteerAction::Add => unreachable!("`add` is K = C, no projection"),
        })
    }
}
