//! The key/value cache of a decoding graph (`export --kv-cache`: `past_key_values.{L}.key/value`
//! in, `present.{L}.key/value` out, `[batch, kv_heads, tokens, head_dim]`): its layout read from
//! the graph's inputs, empty caches to start from, and the rewrite that lets one sequence's cache
//! serve a batch.

use anyhow::{Context, Result, bail};
use ort::value::{DynValue, Tensor};

use crate::contract::{INPUT_IDS, past_name};
use crate::onnx::make::{make_node, make_tensor_i64};
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
    let name = |s: &str| format!("/cache_broadcast/{s}");
    let shape = name("shape");
    graph.initializer.push(make_tensor_i64(&name("zero"), &[1], &[0]));
    graph.initializer.push(make_tensor_i64(&name("one"), &[1], &[1]));
    graph
        .initializer
        .push(make_tensor_i64(&name("ones"), &[3], &[1, 1, 1]));
    let ids_shape = name("ids_shape");
    let batch = name("batch");
    let nodes = vec![
        make_node("Shape", &[INPUT_IDS], &[&ids_shape], name("Shape")),
        make_node(
            "Slice",
            &[&ids_shape, &name("zero"), &name("one")],
            &[&batch],
            name("Slice"),
        ),
        make_node("Concat", &[&batch, &name("ones")], &[&shape], name("Concat")).with_attr("axis", 0i64),
    ];
    graph.node.splice(0..0, nodes);
    for layer in 0..layout.layers {
        for kind in ["key", "value"] {
            let past = past_name(layer, kind);
            let expanded = name(&past);
            let expand = make_node(
                "Expand",
                &[&past, &shape],
                &[&expanded],
                name(&format!("Expand_{past}")),
            );
            graph.insert_after(&past, vec![expand], &expanded)?;
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
