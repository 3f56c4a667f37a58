//! Per-row coefficients: a `--sweepable` model rewritten (in memory) so that each named
//! coefficient input `steer.coeff.<k>` takes one value per batch row, shape `[batch]`, instead of
//! one scalar for the whole batch. A sweep can then run its K values as K rows of one batch.
//!
//! `patch --sweepable` builds each coefficient as: the scalar input (also an initializer, its
//! default) → `Cast` to float32 when the hook is not float32 → `Reshape` to `[1]` → (several rows
//! of one term) `Concat` on axis 0 → `C`, `[m]`, read by the term's `MatMul` (`add`: `K = C`),
//! `Sub` (`clamp`, `clamp_projection`) or `Mul` (`add_if_active`). Reshaping to `[-1, 1, 1]` and
//! concatenating on the last axis makes `C` `[batch, 1, m]`, which broadcasts with the projection
//! `[batch, seq, m]` and gives each row its own `[batch, 1, d]` change: the same arithmetic per
//! row as the scalar graph. Anything else (a foreign edit) is refused with the reason, and the
//! model is left as it was.

use std::collections::HashSet;

use anyhow::{Context, Result, bail};

use crate::onnx::make::{AttrValue, make_attribute, make_tensor_i64};
use crate::onnx::pb::{GraphProto, tensor_shape_proto, type_proto};
use crate::onnx::{DataType, Model};

/// The name of the rewritten inputs' one axis.
const ROWS: &str = "coefficient_rows";

/// Rewrites the coefficient inputs `inputs` of `model` to take one value per batch row (their
/// defaults are dropped: they must be fed). Checks the whole pattern before editing anything.
pub fn per_row_coefficients(model: &mut Model, inputs: &[&str]) -> Result<()> {
    let graph = model.graph_mut();
    let mut reshapes = Vec::new();
    let mut concats = HashSet::new();
    for &name in inputs {
        let (reshape, concat) =
            coefficient_chain(graph, name).with_context(|| format!("coefficient input '{name}'"))?;
        reshapes.push(reshape);
        concats.extend(concat);
    }
    let reshaped: HashSet<&str> = reshapes
        .iter()
        .map(|&i| graph.node[i].output[0].as_str())
        .collect();
    for &concat in &concats {
        if let Some(other) = graph.node[concat]
            .input
            .iter()
            .find(|i| !reshaped.contains(i.as_str()))
        {
            bail!(
                "the coefficients concatenated by '{}' include '{other}', which is not one of the rewritten \
                 inputs",
                graph.node[concat].name()
            );
        }
    }
    let rows_shape = graph.unique_name("steer.coefficient_rows_shape");
    graph
        .initializer
        .push(make_tensor_i64(&rows_shape, &[3], &[-1, 1, 1]));
    for &reshape in &reshapes {
        graph.node[reshape].input[1] = rows_shape.clone();
    }
    for &concat in &concats {
        let node = &mut graph.node[concat];
        node.attribute.retain(|a| a.name() != "axis");
        node.attribute.push(make_attribute("axis", AttrValue::Int(-1)));
    }
    for &name in inputs {
        graph.initializer.retain(|t| t.name() != name);
        let input = graph
            .input
            .iter_mut()
            .find(|i| i.name() == name)
            .expect("checked by coefficient_chain");
        if let Some(type_proto::Value::TensorType(t)) = input.r#type.as_mut().and_then(|t| t.value.as_mut()) {
            t.shape = Some(crate::onnx::pb::TensorShapeProto {
                dim: vec![tensor_shape_proto::Dimension {
                    value: Some(tensor_shape_proto::dimension::Value::DimParam(ROWS.to_owned())),
                    ..Default::default()
                }],
            });
        }
    }
    // Shapes recorded for what the inputs feed are stale now: the runtime infers them again.
    let changed = dependents(graph, inputs);
    graph.value_info.retain(|v| !changed.contains(v.name()));
    Ok(())
}

/// The `Reshape` of coefficient input `name`, and the `Concat` joining it with the term's other
/// rows (if any), after checking that the chain is the one `patch --sweepable` builds.
fn coefficient_chain(graph: &GraphProto, name: &str) -> Result<(usize, Option<usize>)> {
    let input = graph
        .input
        .iter()
        .find(|i| i.name() == name)
        .context("the graph has no such input")?;
    match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) if t.shape.as_ref().is_some_and(|s| s.dim.is_empty()) => {}
        _ => bail!("it is not a scalar tensor input"),
    }
    let only_reader = |tensor: &str| -> Result<usize> {
        match graph.consumers(tensor)[..] {
            [one] => Ok(one),
            [] => bail!("nothing reads '{tensor}'"),
            _ => bail!("'{tensor}' is read by several nodes, not by one coefficient chain"),
        }
    };
    if graph.output.iter().any(|o| o.name() == name) {
        bail!("it is also a graph output");
    }
    let mut tensor = name.to_owned();
    let mut node = only_reader(&tensor)?;
    if graph.node[node].op_type() == "Cast" {
        let to = graph.node[node].attr("to").and_then(|a| a.i);
        if to != Some(DataType::Float as i64) {
            bail!("it is cast to {to:?}, not to float32");
        }
        tensor = graph.node[node].output[0].clone();
        node = only_reader(&tensor)?;
    }
    let reshape = &graph.node[node];
    if reshape.op_type() != "Reshape" || reshape.input.first() != Some(&tensor) {
        bail!(
            "'{tensor}' is read by {} '{}', not reshaped to [1]",
            reshape.op_type(),
            reshape.name()
        );
    }
    let shape = reshape.input.get(1).map(String::as_str).unwrap_or_default();
    let is_one = graph
        .initializer
        .iter()
        .find(|t| t.name() == shape)
        .filter(|t| t.dtype() == DataType::Int64 && t.dims == [1])
        .and_then(|t| t.inline_bytes().ok())
        .is_some_and(|bytes| bytes == 1i64.to_le_bytes());
    if !is_one {
        bail!(
            "'{}' reshapes it to '{shape}', not to the constant [1]",
            reshape.name()
        );
    }
    let mut c = reshape.output[0].clone();
    let mut concat = None;
    if let [one] = graph.consumers(&c)[..]
        && graph.node[one].op_type() == "Concat"
    {
        let axis = graph.node[one].attr("axis").and_then(|a| a.i);
        if axis != Some(0) {
            bail!(
                "'{}' concatenates on axis {axis:?}, not 0",
                graph.node[one].name()
            );
        }
        concat = Some(one);
        c = graph.node[one].output[0].clone();
    }
    let readers = graph.consumers(&c);
    if readers.is_empty() {
        bail!("nothing reads its coefficients '{c}'");
    }
    for reader in readers {
        let n = &graph.node[reader];
        let first = n.input.first() == Some(&c);
        match n.op_type() {
            "MatMul" | "Sub" if first => {}
            "Mul" => {}
            op => bail!(
                "its coefficients '{c}' are read by {op} '{}', which is not a steering term's",
                n.name()
            ),
        }
    }
    Ok((node, concat))
}

/// Every tensor computed from `inputs`.
fn dependents(graph: &GraphProto, inputs: &[&str]) -> HashSet<String> {
    let mut depends: HashSet<String> = inputs.iter().map(|&i| i.to_owned()).collect();
    loop {
        let before = depends.len();
        for node in &graph.node {
            if node.input.iter().any(|t| depends.contains(t)) {
                depends.extend(node.output.iter().cloned());
            }
        }
        if depends.len() == before {
            return depends;
        }
    }
}

/// A rewritten coefficient input's feed: one value per row, in the input's element type.
pub fn row_values(dtype: DataType, values: &[f64]) -> Result<ort::value::DynValue> {
    use ort::value::Tensor;
    let shape = [values.len()];
    Ok(match dtype {
        DataType::Float => {
            Tensor::from_array((shape, values.iter().map(|&v| v as f32).collect::<Vec<_>>()))?.into_dyn()
        }
        DataType::Float16 => Tensor::from_array((
            shape,
            values.iter().map(|&v| half::f16::from_f64(v)).collect::<Vec<_>>(),
        ))?
        .into_dyn(),
        DataType::Bfloat16 => Tensor::from_array((
            shape,
            values
                .iter()
                .map(|&v| half::bf16::from_f64(v))
                .collect::<Vec<_>>(),
        ))?
        .into_dyn(),
        other => bail!("a coefficient input of type {other:?}: only float inputs take coefficients"),
    })
}
