//! Coefficient sweeps: a model patched with `--sweepable` takes each steering row's coefficient
//! as a scalar graph input `steer.coeff.<k>` (the hook's float type, shape `[]`). Each such input is
//! also an initializer holding the plan's value, and since IR version 4 an initializer that is
//! also a graph input is a default the caller may override: ONNX Runtime uses the plan's value
//! unless the input is fed. One patched model thus serves a whole sweep over coefficients.
//!
//! Which input is which is recorded in `metadata_props` under [`COEFFICIENT_INPUTS`];
//! [`coefficient_inputs`] reads it back for whoever feeds the inputs (e.g. the evaluator).

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::onnx::DataType;
use crate::onnx::pb::{ModelProto, type_proto};

/// Metadata key: a JSON list with one object per coefficient input,
/// `{input, patch, row, line, latent, action, hook, default}`, in input order.
pub const COEFFICIENT_INPUTS: &str = "sae_onnx.steer.coefficient_inputs";

/// The graph input of the `k`-th sweepable row (counted over all patches stacked on the model).
pub fn coefficient_input_name(k: usize) -> String {
    format!("steer.coeff.{k}")
}

/// A coefficient input of a sweepable steered model, as the metadata records it (all but the
/// element type, which the graph input itself states).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CoefficientInput {
    /// The graph input's name, `steer.coeff.<k>`.
    pub input: String,
    /// Element type to feed (the hook's: float32, float16 or bfloat16); a scalar, shape `[]`.
    #[serde(skip, default = "undefined")]
    pub dtype: DataType,
    /// Which patch (index into `sae_onnx.steering`) and which row of its plan (0-based; `line`
    /// is its line in the CSV file).
    pub patch: usize,
    pub row: usize,
    pub line: usize,
    pub latent: usize,
    /// `add`, `clamp`, `add_if_active` or `clamp_projection`.
    pub action: String,
    /// The hook point, TransformerLens-style (`blocks.20.hook_resid_post`).
    pub hook: String,
    /// The plan's coefficient, used when the input is not fed.
    pub default: f64,
}

/// The coefficient inputs of `model`, in input order (empty for a model patched without
/// `--sweepable`). Fails if the metadata is malformed or names an input the graph lacks.
pub fn coefficient_inputs(model: &ModelProto) -> Result<Vec<CoefficientInput>> {
    let Some(entry) = model
        .metadata_props
        .iter()
        .find(|e| e.key() == COEFFICIENT_INPUTS)
    else {
        return Ok(Vec::new());
    };
    let records: Vec<CoefficientInput> = serde_json::from_str(entry.value())
        .with_context(|| format!("the model's {COEFFICIENT_INPUTS} metadata is not valid"))?;
    let graph = model.graph.as_ref().context("the model has no graph")?;
    records
        .into_iter()
        .map(|r| {
            let Some(input) = graph.input.iter().find(|i| i.name() == r.input) else {
                bail!(
                    "{COEFFICIENT_INPUTS} names '{}', which is not an input of the graph",
                    r.input
                );
            };
            let dtype = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(type_proto::Value::TensorType(t)) => DataType::try_from(t.elem_type()).ok(),
                _ => None,
            }
            .with_context(|| format!("coefficient input '{}' has no tensor element type", r.input))?;
            Ok(CoefficientInput { dtype, ..r })
        })
        .collect()
}

fn undefined() -> DataType {
    DataType::Undefined
}
