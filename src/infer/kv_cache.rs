//! The key/value cache of a decoding graph (`export --kv-cache`: `past_key_values.{L}.key/value`
//! in, `present.{L}.key/value` out, `[batch, kv_heads, tokens, head_dim]`): its layout read from
//! the graph's inputs, empty caches to start from, and the rewrite that lets one sequence's cache
//! serve a batch.

use anyhow::{Context, Result, bail};
use ort::value::{DynValue, Tensor};

use crate::contract::{INPUT_IDS, past_name};
use crate::onnx::builder::GraphBuilder;
use crate::onnx::make::AttrValue;
use crate::onnx::pb::{tensor_shape_proto::dimension, type_proto};
use crate::onnx::{DataType, Model};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheLayout {
    pub layers: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    /// The cache's element type (the model's dtype).
    pub dtype: DataType,
}

impl CacheLayout {
    /// The layout of `model`'s cache inputs; `None` for a full-sequence graph.
    pub fn of(model: &Model) -> Result<Option<Self>> {
        let input = |name: &str| model.graph().input.iter().find(|i| i.name() == name);
        let Some(first) = input(&past_name(0, "key")) else {
            return Ok(None);
        };
        let Some(type_proto::Value::TensorType(t)) = first.r#type.as_ref().and_then(|t| t.value.as_ref())
        else {
            bail!("the cache input {} is not a tensor", first.name());
        };
        let dims: Vec<Option<usize>> = t
            .shape
            .as_ref()
            .map(|s| {
                s.dim
                    .iter()
                    .map(|d| match d.value {
                        Some(dimension::Value::DimValue(v)) => usize::try_from(v).ok(),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let fixed = |axis: usize, what: &str| {
            dims.get(axis)
                .copied()
                .flatten()
                .with_context(|| format!("the cache's {what} is not fixed in the graph"))
        };
        Ok(Some(Self {
            layers: (0..)
                .take_while(|&l| input(&past_name(l, "key")).is_some())
                .count(),
            kv_heads: fixed(1, "head count")?,
            head_dim: fixed(3, "head size")?,
            dtype: DataType::try_from(t.elem_type()).unwrap_or(DataType::Float),
        }))
    }

    /// An empty cache (no tokens yet) for `batch` sequences, keys and values of every layer in
    /// the graph's input order.
    pub fn empty(&self, batch: usize) -> Result<Vec<DynValue>> {
        let shape = [batch, self.kv_heads, 0, self.head_dim];
        (0..2 * self.layers)
            .map(|_| -> Result<DynValue> {
                Ok(match self.dtype {
                    DataType::Float16 => Tensor::from_array((shape, Vec::<half::f16>::new()))?.into_dyn(),
                    DataType::Bfloat16 => Tensor::from_array((shape, Vec::<half::bf16>::new()))?.into_dyn(),
                    _ => Tensor::from_array((shape, Vec::<f32>::new()))?.into_dyn(),
                })
            })
            .collect()
    }
}

/// Lets a decoding graph take one sequence's cache for a whole batch: inside the graph each cache
/// input is broadcast (Expand) to the batch of `input_ids`, so a shared prefix's cache is fed as
/// computed, once, and stays where it is (on the GPU with CUDA) whatever the batch. A cache
/// already the batch's size passes through unchanged.
pub fn broadcast_cache_inputs(model: &mut Model, layout: &CacheLayout) -> Result<()> {
    let graph = model.graph_mut();
    let mut b = GraphBuilder::extending(graph);
    // [batch of input_ids, 1, 1, 1]: what each cache input is expanded to.
    let shape = b.scoped("cache_broadcast", |b| {
        let ids_shape = b.op("Shape", &[INPUT_IDS], vec![]);
        let (zero, one, ones) = (b.const_i64(&[0]), b.const_i64(&[1]), b.const_i64(&[1, 1, 1]));
        let batch = b.op("Slice", &[&ids_shape, &zero, &one], vec![]);
        Ok(b.op("Concat", &[&batch, &ones], vec![("axis", AttrValue::Int(0))]))
    })?;
    let prologue = b.finish();
    graph.initializer.extend(prologue.initializers);
    graph.node.splice(0..0, prologue.nodes);
    for layer in 0..layout.layers {
        for kind in ["key", "value"] {
            let past = past_name(layer, kind);
            let mut b = GraphBuilder::extending(graph);
            let expanded = b.fresh(&format!("/cache_broadcast/{past}"));
            let node = b.fresh(&format!("/cache_broadcast/Expand_{past}"));
            b.node(node, "Expand", &[&past, &shape], &expanded, vec![]);
            graph.insert_after(&past, b.finish().nodes, &expanded)?;
            // Its batch is no longer the batch of input_ids: give the dimension its own name.
            if let Some(input) = graph.input.iter_mut().find(|i| i.name() == past)
                && let Some(type_proto::Value::TensorType(t)) =
                    input.r#type.as_mut().and_then(|t| t.value.as_mut())
                && let Some(first) = t.shape.as_mut().and_then(|s| s.dim.first_mut())
            {
                first.value = Some(dimension::Value::DimParam("cache_batch".to_owned()));
            }
        }
    }
    graph.toposort()
}

/// The rows `rows` of each of `parts` (cache tensors, or any tensors batched on their first
/// axis), stacked in that order into one tensor: `rows` holds (part, row) pairs. Repeats one
/// sequence's cache for several rows, joins one-row caches, drops finished rows.
pub fn stack_rows(parts: &[&DynValue], rows: &[(usize, usize)]) -> Result<DynValue> {
    fn stack<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
        parts: &[&DynValue],
        rows: &[(usize, usize)],
    ) -> Result<DynValue> {
        let mut tail: Option<Vec<i64>> = None;
        let mut data = Vec::new();
        for &(part, row) in rows {
            let value = parts.get(part).context("a row of a part that is not there")?;
            let (shape, values) = value.try_extract_tensor::<T>()?;
            let (&batch, rest) = shape.split_first().context("a scalar has no rows")?;
            match &tail {
                Some(t) if t.as_slice() != rest => bail!("rows of shapes {t:?} and {rest:?} do not stack"),
                Some(_) => {}
                None => tail = Some(rest.to_vec()),
            }
            if row as i64 >= batch {
                bail!("row {row} of a tensor of {batch} rows");
            }
            let size = values.len() / batch.max(1) as usize;
            data.extend_from_slice(&values[row * size..(row + 1) * size]);
        }
        let mut shape = vec![rows.len() as i64];
        shape.extend(tail.unwrap_or_default());
        Ok(Tensor::from_array((shape, data))?.into_dyn())
    }
    let first = parts.first().context("no tensors to stack")?;
    match first.dtype() {
        ort::value::ValueType::Tensor {
            ty: ort::value::TensorElementType::Float16,
            ..
        } => stack::<half::f16>(parts, rows),
        ort::value::ValueType::Tensor {
            ty: ort::value::TensorElementType::Bfloat16,
            ..
        } => stack::<half::bf16>(parts, rows),
        _ => stack::<f32>(parts, rows),
    }
}

/// Each row's logits at its last position, from a decoding graph's `[batch, width, vocabulary]`.
pub fn last_logits(logits: &DynValue, batch: usize, width: usize) -> Result<Vec<Vec<f32>>> {
    let (shape, logits) = logits.try_extract_tensor::<f32>()?;
    let vocab = usize::try_from(*shape.last().context("logits have no vocabulary axis")?).unwrap_or(0);
    if vocab == 0 || logits.len() != batch * width * vocab {
        bail!(
            "the decoding graph's logits have shape {shape:?}, not [{batch}, {width}, vocabulary]: \
             is it an sae-onnx export with --kv-cache?"
        );
    }
    Ok((0..batch)
        .map(|b| {
            let end = (b * width + width) * vocab;
            logits[end - vocab..end].to_vec()
        })
        .collect())
}
