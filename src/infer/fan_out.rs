//! Sweep fan-out: a scoring graph split at a swept coefficient input ([`crate::onnx::split`]) and
//! run as two sessions. Each batch runs the lower session (everything that does not depend on the
//! coefficient: the embedding, the layers below the steered hook, the masks and rotary tables)
//! once, and the upper session once per value on the lower session's outputs. The upper session
//! runs the same nodes on the same values as the whole graph would, so every value's scores are
//! those of a separate pass; only the lower part is not recomputed.
//!
//! Each upper run has the batch's own rows (not K times as many): memory does not grow with the
//! number of values, and the coefficient stays the scalar the graph was built for. (Generation
//! differs: [`super::sweep_decode`] splits a graph whose coefficient takes one value per row, and
//! runs the K values as K rows of one batch, below and above the cut.)
//!
//! A decoding graph splits too: the caches of the layers below the hook do not depend on the
//! coefficient and are outputs of the lower session, shared by every value; those above it are
//! fed back per value (their inputs vary with the coefficient, so the nodes reading them are
//! upper nodes).

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, anyhow, bail};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, ValueType};

use super::runtime::{self, ScalarFeed, SessionOptions};
use crate::onnx::pb::GraphProto;
use crate::onnx::split::split_at_inputs;
use crate::onnx::{DataType, Model};

/// A named input of one run, borrowed.
pub type Feed<'a> = (&'a str, &'a DynValue);

/// The two sessions of a split scoring graph.
pub struct FanOut {
    lower: Session,
    upper: Session,
    lower_inputs: HashSet<String>,
    upper_inputs: HashSet<String>,
    /// The tensors the upper session reads from the lower one.
    cut: Vec<String>,
    /// The whole graph's outputs the lower session makes.
    lower_outputs: HashSet<String>,
    /// (lower, upper) node counts of the split graph, for the log.
    pub node_counts: (usize, usize),
}

impl FanOut {
    /// Splits `model` at the coefficient input `swept`. `carried` maps the graph outputs that are
    /// fed back as inputs on a later run (a decoding graph's `present` caches) to those inputs:
    /// an output that depends on the coefficient makes its input vary with it. `Ok(Err(reason))`
    /// when the graph does not split there, `Err` when a session does not open.
    pub fn open(
        model: &Model,
        swept: &str,
        carried: &HashMap<String, String>,
        options: &SessionOptions,
    ) -> Result<Result<Self, String>> {
        let mut varying = vec![swept];
        varying.extend(
            dependents(model.graph(), swept)
                .iter()
                .filter_map(|output| carried.get(output).map(String::as_str)),
        );
        let split = match split_at_inputs(model, &varying) {
            Ok(split) => split,
            Err(reason) => return Ok(Err(format!("{reason:#}"))),
        };
        // The two sessions run in turns: neither's threads may spin through the other's run.
        let options = &SessionOptions {
            threads_sleep: true,
            ..options.clone()
        };
        let lower = runtime::session_from_model(&split.lower, options)
            .context("opening the layers below the swept coefficient")?;
        let cut_types = split
            .cut
            .iter()
            .map(|name| {
                let outlet = lower
                    .outputs()
                    .iter()
                    .find(|o| o.name() == name)
                    .with_context(|| format!("the lower session has no output '{name}'"))?;
                element_type(outlet.dtype()).with_context(|| format!("the cut tensor '{name}'"))
            })
            .collect::<Result<Vec<_>>>()?;
        let upper_model = split.upper(&cut_types)?;
        let upper = runtime::session_from_model(&upper_model, options)
            .context("opening the layers above the swept coefficient")?;
        // From the graphs, not the sessions: a session does not list the inputs that have a
        // default (the coefficients of a sweepable model).
        let names = |m: &Model| m.graph().input.iter().map(|i| i.name().to_owned()).collect();
        let graph_outputs: HashSet<&str> = model.graph().output.iter().map(|o| o.name()).collect();
        Ok(Ok(Self {
            lower_inputs: names(&split.lower),
            upper_inputs: names(&upper_model),
            lower,
            upper,
            node_counts: split.node_counts(),
            lower_outputs: split
                .cut
                .iter()
                .chain(&split.lower_outputs)
                .filter(|name| graph_outputs.contains(name.as_str()))
                .cloned()
                .collect(),
            cut: split.cut,
        }))
    }

    /// Whether the graph output `name` is made below the cut (once for every value).
    pub fn makes_below(&self, name: &str) -> bool {
        self.lower_outputs.contains(name)
    }

    /// One batch: `common` (the batch's inputs, each fed to the sessions that read it) through the
    /// lower session once, then the upper session once per entry of `values` (each value's
    /// inputs, overriding same-named ones of `common`). Returns the `lower_outputs` (graph outputs
    /// made below the cut, see [`FanOut::makes_below`]) and, per value, its `upper_outputs`.
    pub fn run(
        &mut self,
        common: &[Feed<'_>],
        values: &[Vec<Feed<'_>>],
        lower_outputs: &[&str],
        upper_outputs: &[&str],
    ) -> Result<(Vec<DynValue>, Vec<Vec<DynValue>>)> {
        let lower_feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = common
            .iter()
            .filter(|(name, _)| self.lower_inputs.contains(*name))
            .map(|&(name, value)| (Cow::from(name), value.into()))
            .collect();
        let mut lowered = self
            .lower
            .run(lower_feed)
            .context("running the layers below the swept coefficient")?;
        let mut take = |name: &str| {
            lowered
                .remove(name)
                .with_context(|| format!("the lower session did not return '{name}'"))
        };
        let cut: Vec<DynValue> = self.cut.iter().map(|name| take(name)).collect::<Result<_>>()?;
        let below: Vec<DynValue> = lower_outputs
            .iter()
            .map(|name| take(name))
            .collect::<Result<_>>()?;
        drop(lowered);
        let mut per_value = Vec::with_capacity(values.len());
        for value in values {
            let mut inputs = value_inputs(common, value, |name| self.upper_inputs.contains(name));
            inputs.extend(
                self.cut
                    .iter()
                    .zip(&cut)
                    .map(|(name, value)| (Cow::from(name.as_str()), value.into())),
            );
            let mut ran = self
                .upper
                .run(inputs)
                .context("running the layers above the swept coefficient")?;
            per_value.push(
                upper_outputs
                    .iter()
                    .map(|&name| {
                        ran.remove(name)
                            .with_context(|| format!("the upper session did not return '{name}'"))
                    })
                    .collect::<Result<_>>()?,
            );
        }
        Ok((below, per_value))
    }
}

/// One value's coefficient feeds as runtime values.
pub(super) fn value_feeds(feeds: &[ScalarFeed]) -> Result<Vec<(String, DynValue)>> {
    feeds.iter().map(|f| Ok((f.name.clone(), f.tensor()?))).collect()
}

/// The inputs of one value's run that a session `reads`: the batch's `common` inputs except those
/// the value's own inputs override, then the value's.
pub(super) fn value_inputs<'a>(
    common: &[Feed<'a>],
    value: &[Feed<'a>],
    reads: impl Fn(&str) -> bool,
) -> Vec<(Cow<'a, str>, SessionInputValue<'a>)> {
    let overridden = |name: &str| value.iter().any(|(n, _)| *n == name);
    common
        .iter()
        .filter(|(name, _)| !overridden(name))
        .chain(value)
        .filter(|(name, _)| reads(name))
        .map(|&(name, value)| (Cow::from(name), value.into()))
        .collect()
}

/// The graph outputs whose value depends on the input `input`. The graph's nodes need not be in
/// order: the propagation repeats until nothing changes (in order, one pass and a check).
fn dependents(graph: &GraphProto, input: &str) -> Vec<String> {
    let mut depends: HashSet<&str> = HashSet::from([input]);
    loop {
        let before = depends.len();
        for node in &graph.node {
            if node.input.iter().any(|t| depends.contains(t.as_str())) {
                depends.extend(node.output.iter().map(String::as_str));
            }
        }
        if depends.len() == before {
            break;
        }
    }
    graph
        .output
        .iter()
        .filter(|o| depends.contains(o.name()))
        .map(|o| o.name().to_owned())
        .collect()
}

/// The ONNX element type of a tensor the runtime describes (its enumeration is ONNX's).
fn element_type(value: &ValueType) -> Result<DataType> {
    match value {
        ValueType::Tensor { ty, .. } => {
            let code = ort::sys::ONNXTensorElementDataType::from(*ty) as i32;
            DataType::try_from(code).map_err(|_| anyhow!("element type {ty:?} has no ONNX code"))
        }
        other => bail!("is a {other:?}, not a tensor"),
    }
}
