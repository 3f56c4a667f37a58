//! The key/value cache of a decoding graph (`export --kv-cache`: `past_key_values.{L}.key/value`
//! in, `present.{L}.key/value` out, `[batch, kv_heads, tokens, head_dim]`): its layout read from
//! the graph's inputs, and cache tensors built to match (empty, or one sequence's cache repeated
//! for a batch).

use anyhow::{Context, Result, bail};
use ort::value::{DynValue, Tensor};

use crate::export::gemma::past_name;
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

    /// One sequence's cache (`[1, heads, tokens, head_dim]` each) repeated for `batch` sequences.
    pub fn repeat(&self, single: &[DynValue], batch: usize) -> Result<Vec<DynValue>> {
        fn tile<T: ort::value::PrimitiveTensorElementType + Clone + std::fmt::Debug + 'static>(
            value: &DynValue,
            batch: usize,
        ) -> Result<DynValue> {
            let (shape, data) = value.try_extract_tensor::<T>()?;
            if shape.first() != Some(&1) {
                bail!("a cache to repeat holds one sequence, not {shape:?}");
            }
            let mut dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            dims[0] = batch;
            let mut repeated = Vec::with_capacity(data.len() * batch);
            for _ in 0..batch {
                repeated.extend_from_slice(data);
            }
            Ok(Tensor::from_array((dims, repeated))?.into_dyn())
        }
        single
            .iter()
            .map(|value| match self.dtype {
                DataType::Float16 => tile::<half::f16>(value, batch),
                DataType::Bfloat16 => tile::<half::bf16>(value, batch),
                _ => tile::<f32>(value, batch),
            })
            .collect()
    }
}
