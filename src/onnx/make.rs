//! The `onnx.helper` vocabulary: small constructors for nodes, tensors, value infos, graphs and
//! models, named as ONNX users know them from Python.

use prost::bytes::Bytes;

use super::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, attribute_proto::AttributeType,
    tensor_shape_proto, type_proto,
};
use super::{DataType, IR_VERSION, OPSET};

/// A node with no attributes; add them with [`NodeProto::with_attr`].
pub fn make_node(op_type: &str, inputs: &[&str], outputs: &[&str], name: impl Into<String>) -> NodeProto {
    NodeProto {
        op_type: Some(op_type.to_owned()),
        input: inputs.iter().map(|s| (*s).to_owned()).collect(),
        output: outputs.iter().map(|s| (*s).to_owned()).collect(),
        name: Some(name.into()),
        ..Default::default()
    }
}

impl NodeProto {
    /// Adds (or replaces) an attribute, builder style.
    #[must_use]
    pub fn with_attr(mut self, name: &str, value: impl Into<AttrValue>) -> Self {
        self.attribute.retain(|a| a.name() != name);
        self.attribute.push(make_attribute(name, value));
        self
    }

    /// Sets the operator domain (e.g. [`super::MS_DOMAIN`]), builder style.
    #[must_use]
    pub fn with_domain(mut self, domain: &str) -> Self {
        self.domain = Some(domain.to_owned());
        self
    }

    /// The attribute called `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name() == name)
    }
}

/// The value of an attribute, as `onnx.helper.make_attribute` infers it from a Python value.
#[derive(Debug, Clone)]
pub enum AttrValue {
    Int(i64),
    Float(f32),
    String(String),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Tensor(TensorProto),
    Graph(GraphProto),
}

impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        Self::Int(v)
    }
}
impl From<f32> for AttrValue {
    fn from(v: f32) -> Self {
        Self::Float(v)
    }
}
impl From<&str> for AttrValue {
    fn from(v: &str) -> Self {
        Self::String(v.to_owned())
    }
}
impl From<Vec<i64>> for AttrValue {
    fn from(v: Vec<i64>) -> Self {
        Self::Ints(v)
    }
}
impl From<Vec<f32>> for AttrValue {
    fn from(v: Vec<f32>) -> Self {
        Self::Floats(v)
    }
}
impl From<TensorProto> for AttrValue {
    fn from(v: TensorProto) -> Self {
        Self::Tensor(v)
    }
}
impl From<GraphProto> for AttrValue {
    fn from(v: GraphProto) -> Self {
        Self::Graph(v)
    }
}

pub fn make_attribute(name: &str, value: impl Into<AttrValue>) -> AttributeProto {
    let mut attr = AttributeProto {
        name: Some(name.to_owned()),
        ..Default::default()
    };
    let kind = match value.into() {
        AttrValue::Int(v) => {
            attr.i = Some(v);
            AttributeType::Int
        }
        AttrValue::Float(v) => {
            attr.f = Some(v);
            AttributeType::Float
        }
        AttrValue::String(v) => {
            attr.s = Some(v.into_bytes());
            AttributeType::String
        }
        AttrValue::Ints(v) => {
            attr.ints = v;
            AttributeType::Ints
        }
        AttrValue::Floats(v) => {
            attr.floats = v;
            AttributeType::Floats
        }
        AttrValue::Tensor(v) => {
            attr.t = Some(v);
            AttributeType::Tensor
        }
        AttrValue::Graph(v) => {
            attr.g = Some(v);
            AttributeType::Graph
        }
    };
    attr.set_type(kind);
    attr
}

/// A tensor whose little-endian bytes are given as they are (ONNX's `raw_data`).
pub fn make_tensor(name: &str, data_type: DataType, dims: &[i64], raw: impl Into<Bytes>) -> TensorProto {
    let mut tensor = TensorProto {
        name: Some(name.to_owned()),
        dims: dims.to_vec(),
        raw_data: Some(raw.into()),
        ..Default::default()
    };
    tensor.set_dtype(data_type);
    tensor
}

/// A float32 tensor from values.
pub fn make_tensor_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    make_tensor(name, DataType::Float, dims, raw)
}

/// An int64 tensor from values.
pub fn make_tensor_i64(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    make_tensor(name, DataType::Int64, dims, raw)
}

/// One dimension of a value's shape: a fixed size or a symbolic name such as `batch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(i64),
    Param(String),
}

impl From<i64> for Dim {
    fn from(v: i64) -> Self {
        Self::Fixed(v)
    }
}
impl From<&str> for Dim {
    fn from(v: &str) -> Self {
        Self::Param(v.to_owned())
    }
}

/// A typed, shaped graph input/output declaration.
pub fn make_tensor_value_info(name: &str, elem_type: DataType, shape: &[Dim]) -> ValueInfoProto {
    let dim = shape
        .iter()
        .map(|d| tensor_shape_proto::Dimension {
            value: Some(match d {
                Dim::Fixed(v) => tensor_shape_proto::dimension::Value::DimValue(*v),
                Dim::Param(p) => tensor_shape_proto::dimension::Value::DimParam(p.clone()),
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_owned()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem_type as i32),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A typed value declaration of unknown shape (`make_tensor_value_info(name, type, None)`).
pub fn make_tensor_value_info_unshaped(name: &str, elem_type: DataType) -> ValueInfoProto {
    let mut info = make_tensor_value_info(name, elem_type, &[]);
    if let Some(type_proto::Value::TensorType(t)) = info.r#type.as_mut().and_then(|t| t.value.as_mut()) {
        t.shape = None;
    }
    info
}

pub fn make_opsetid(domain: &str, version: i64) -> OperatorSetIdProto {
    OperatorSetIdProto {
        domain: Some(domain.to_owned()),
        version: Some(version),
    }
}

pub fn make_graph(
    nodes: Vec<NodeProto>,
    name: &str,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    initializers: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        node: nodes,
        name: Some(name.to_owned()),
        input: inputs,
        output: outputs,
        initializer: initializers,
        ..Default::default()
    }
}

/// A model at our IR version, importing the default-domain opset [`OPSET`] unless `opsets` says otherwise.
pub fn make_model(graph: GraphProto, opsets: Vec<OperatorSetIdProto>) -> ModelProto {
    let opset_import = if opsets.is_empty() {
        vec![make_opsetid("", OPSET)]
    } else {
        opsets
    };
    ModelProto {
        ir_version: Some(IR_VERSION),
        opset_import,
        producer_name: Some("sae-onnx".to_owned()),
        producer_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
        graph: Some(graph),
        ..Default::default()
    }
}

pub fn make_metadata(key: &str, value: &str) -> StringStringEntryProto {
    StringStringEntryProto {
        key: Some(key.to_owned()),
        value: Some(value.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_carry_their_type() {
        let node = make_node("Gemm", &["a", "b"], &["c"], "gemm")
            .with_attr("alpha", 0.5_f32)
            .with_attr("transB", 1_i64)
            .with_attr("transB", 0_i64);
        assert_eq!(
            node.attribute.len(),
            2,
            "with_attr replaces an attribute of the same name"
        );
        let alpha = node.attr("alpha").unwrap();
        assert_eq!(alpha.r#type(), AttributeType::Float);
        assert_eq!(alpha.f(), 0.5);
        assert_eq!(node.attr("transB").unwrap().i(), 0);
    }

    #[test]
    fn tensors_are_little_endian_raw_data() {
        let t = make_tensor_f32("w", &[2], &[1.0, -2.0]);
        assert_eq!(t.dtype(), DataType::Float);
        assert_eq!(t.raw_data.as_deref(), Some(&[0, 0, 128, 63, 0, 0, 0, 192][..]));
    }

    #[test]
    fn value_info_keeps_symbolic_dims() {
        let vi = make_tensor_value_info("x", DataType::Int64, &["batch".into(), 4.into()]);
        let Some(type_proto::Value::TensorType(t)) = vi.r#type.unwrap().value else {
            panic!("not a tensor type")
        };
        let dims: Vec<_> = t
            .shape
            .unwrap()
            .dim
            .into_iter()
            .map(|d| d.value.unwrap())
            .collect();
        assert_eq!(
            dims,
            vec![
                tensor_shape_proto::dimension::Value::DimParam("batch".into()),
                tensor_shape_proto::dimension::Value::DimValue(4)
            ]
        );
    }
}
