//! Sweep fan-out: a scoring graph split at a swept coefficient input ([`crate::onnx::split`]) and
//! run as two sessions. Each batch runs the lower session (everything that does not depend on the
//! coefficient: the embedding, the layers below the steered hook, the masks and rotary tables)
//! once, and the upper session once per value on the lower session's outputs. The upper session
//! runs the same nodes on the same values as the whole graph would, so every value's scores are
//! those of a separate pass; only the lower part is not recomputed.
//!
//! Each upper run has the batch's own rows (not K times as many): memory does not grow with the
//! number of values, and the coefficient stays the scalar the graph was built for.

use std::borrow::Cow;
use std::collections::HashSet;

use anyhow::{Context, Result, anyhow, bail};
use ort::session::{Session, SessionInputValue};
use ort::value::{DynValue, ValueType};

use super::runtime::{self, ScalarFeed, SessionOptions};
use crate::onnx::split::split_at_input;
use crate::onnx::{DataType, Model};

/// The two sessions of a split scoring graph.
pub struct FanOut {
    lower: Session,
    upper: Session,
    lower_inputs: HashSet<String>,
    upper_inputs: HashSet<String>,
    /// The tensors the upper session reads from the lower one.
    cut: Vec<String>,
    /// (lower, upper) node counts of the split graph, for the log.
    pub node_counts: (usize, usize),
}

impl FanOut {
    /// Splits `model` at the coefficient input `swept`. `Ok(Err(reason))` when the graph does not
    /// split there (a decoding graph: its lower layers' caches are outputs that do not depend on
    /// the coefficient), `Err` when a session does not open.
    pub fn open(model: &Model, swept: &str, options: &SessionOptions) -> Result<Result<Self, String>> {
        let split = match split_at_input(model, swept) {
            Ok(split) => split,
            Err(reason) => return Ok(Err(format!("{reason:#}"))),
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
        Ok(Ok(Self {
            lower_inputs: names(&split.lower),
            upper_inputs: names(&upper_model),
            lower,
            upper,
            node_counts: split.node_counts(),
            cut: split.cut,
        }))
    }

    /// One batch: `common` (the batch's inputs, each fed to the sessions that read it) through the
    /// lower session once, then the upper session once per feed set of `values` (each overriding
    /// a same-named input of `common`). Returns, per value, the named `outputs` of its upper run.
    pub fn run(
        &mut self,
        common: &[(String, DynValue)],
        values: &[Vec<ScalarFeed>],
        outputs: &[&str],
    ) -> Result<Vec<Vec<DynValue>>> {
        let lower_feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = common
            .iter()
            .filter(|(name, _)| self.lower_inputs.contains(name))
            .map(|(name, value)| (Cow::from(name.as_str()), value.into()))
            .collect();
        let mut lowered = self
            .lower
            .run(lower_feed)
            .context("running the layers below the swept coefficient")?;
        let cut: Vec<DynValue> = self
            .cut
            .iter()
            .map(|name| {
                lowered
                    .remove(name.as_str())
                    .with_context(|| format!("the lower session did not return '{name}'"))
            })
            .collect::<Result<_>>()?;
        drop(lowered);
        let mut per_value = Vec::with_capacity(values.len());
        for feeds in values {
            let fed = value_feeds(feeds)?;
            let mut inputs = value_inputs(common, &fed, |name| self.upper_inputs.contains(name));
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
                outputs
                    .iter()
                    .map(|&name| {
                        ran.remove(name)
                            .with_context(|| format!("the upper session did not return '{name}'"))
                    })
                    .collect::<Result<_>>()?,
            );
        }
        Ok(per_value)
    }
}

/// One value's coefficient feeds as runtime values.
pub(super) fn value_feeds(feeds: &[ScalarFeed]) -> Result<Vec<(String, DynValue)>> {
    feeds.iter().map(|f| Ok((f.name.clone(), f.tensor()?))).collect()
}

/// The inputs of one value's run that a session `reads`: the batch's `common` inputs except those
/// the value's `fed` coefficients override, then the coefficients.
pub(super) fn value_inputs<'a>(
    common: &'a [(String, DynValue)],
    fed: &'a [(String, DynValue)],
    reads: impl Fn(&str) -> bool,
) -> Vec<(Cow<'a, str>, SessionInputValue<'a>)> {
    let overridden = |name: &str| fed.iter().any(|(n, _)| n == name);
    common
        .iter()
        .filter(|(name, _)| !overridden(name))
        .chain(fed)
        .filter(|(name, _)| reads(name))
        .map(|(name, value)| (Cow::from(name.as_str()), value.into()))
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
