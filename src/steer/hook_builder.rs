//! [`HookBuilder`]: a [`GraphBuilder`] that names what it makes after one hook
//! (`{STEER_NODE_PREFIX}{hook}/...` nodes, `sae_onnx.steer.{hook}/...` tensors) and keeps its
//! float type and width; the steering terms ([`super::hook_nodes`]) and the position masks
//! ([`super::position_mask`]) are both built on it.

use anyhow::{Result, bail};

use crate::onnx::DataType;
use crate::onnx::builder::GraphBuilder;
use crate::onnx::make::{AttrValue, make_tensor};

/// A [`GraphBuilder`] naming what it makes after the hook.
pub(super) struct HookBuilder {
    pub(super) b: GraphBuilder,
    /// `{STEER_NODE_PREFIX}{hook}`: node names are `{node_scope}/...`.
    pub(super) node_scope: String,
    /// `sae_onnx.steer.{hook}`: tensor names are `{tensor_scope}/...`.
    pub(super) tensor_scope: String,
    /// The hook's element type.
    pub(super) dtype: DataType,
    pub(super) width: usize,
}

impl HookBuilder {
    pub(super) fn fit(&self, v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        v.resize(self.width, 0.0);
        v
    }

    /// Adds a node named after `what` and returns its (fresh) output.
    pub(super) fn node(&mut self, op: &str, inputs: &[&str], what: &str, attrs: Vec<(&str, i64)>) -> String {
        let output = self.b.fresh(&format!("{}/{what}", self.tensor_scope));
        let name = self.b.fresh(&format!("{}/{what}", self.node_scope));
        let attrs = attrs.into_iter().map(|(k, v)| (k, AttrValue::Int(v))).collect();
        self.b.node(name, op, inputs, &output, attrs)
    }

    pub(super) fn constant_f32(&mut self, what: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.b.fresh(&format!("{}/{what}", self.tensor_scope));
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.b
            .initializer(make_tensor(&name, DataType::Float, &dims, raw))
    }

    pub(super) fn cast(&mut self, x: &str, to: DataType, what: &str) -> String {
        self.node("Cast", &[x], what, vec![("to", to as i64)])
    }

    pub(super) fn cast_to_f32(&mut self, x: &str, what: &str) -> String {
        if self.dtype == DataType::Float {
            return x.to_owned();
        }
        self.cast(x, DataType::Float, &format!("{what}_f32"))
    }

    pub(super) fn cast_from_f32(&mut self, x: &str, what: &str) -> String {
        if self.dtype == DataType::Float {
            return x.to_owned();
        }
        self.cast(x, self.dtype, what)
    }
}

/// The bytes of `values` as `dtype` (the hook's float type).
pub(super) fn raw(dtype: DataType, values: &[f32]) -> Result<Vec<u8>> {
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
