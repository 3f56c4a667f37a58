//! What a tensor is, independent of where its bytes live: element types, element counts, sizes,
//! and a walk over every tensor a graph holds (initializers, constants, subgraphs).

use anyhow::{Result, bail};

use super::DataType;
use super::pb::{GraphProto, TensorProto, tensor_proto::DataLocation};

/// Bytes per element, or `None` for types without a fixed width (strings) or sub-byte packing.
pub fn element_size(data_type: DataType) -> Option<usize> {
    use DataType::*;
    Some(match data_type {
        Float | Int32 | Uint32 => 4,
        Uint8 | Int8 | Bool | Float8e4m3fn | Float8e4m3fnuz | Float8e5m2 | Float8e5m2fnuz | Float8e8m0 => 1,
        Uint16 | Int16 | Float16 | Bfloat16 => 2,
        Int64 | Uint64 | Double | Complex64 => 8,
        Complex128 => 16,
        _ => return None,
    })
}

/// The short lower-case name ONNX Runtime users see (`float32`, `bfloat16`, `int64`, ...).
pub fn dtype_name(data_type: DataType) -> &'static str {
    use DataType::*;
    match data_type {
        Float => "float32",
        Float16 => "float16",
        Bfloat16 => "bfloat16",
        Double => "float64",
        Int8 => "int8",
        Int16 => "int16",
        Int32 => "int32",
        Int64 => "int64",
        Uint8 => "uint8",
        Uint16 => "uint16",
        Uint32 => "uint32",
        Uint64 => "uint64",
        Bool => "bool",
        String => "string",
        _ => data_type.as_str_name(),
    }
}

impl TensorProto {
    /// The element type (`Undefined` for a number this ONNX version does not know).
    pub fn dtype(&self) -> DataType {
        DataType::try_from(self.data_type()).unwrap_or(DataType::Undefined)
    }

    pub fn set_dtype(&mut self, data_type: DataType) {
        self.data_type = Some(data_type as i32);
    }

    /// Number of elements (1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.dims.iter().map(|&d| d.max(0) as u64).product()
    }

    /// Size in bytes of the tensor's data, when its element type has a fixed width.
    pub fn byte_len(&self) -> Option<u64> {
        element_size(self.dtype()).map(|s| s as u64 * self.numel())
    }

    pub fn is_external(&self) -> bool {
        self.data_location() == DataLocation::External
    }

    /// The tensor's little-endian bytes when it holds them inline, converting the typed fields
    /// (`float_data`, `int64_data`, ...) that Python's `onnx.helper.make_tensor` writes by default.
    pub fn inline_bytes(&self) -> Result<Vec<u8>> {
        if let Some(raw) = &self.raw_data {
            return Ok(raw.to_vec());
        }
        use DataType::*;
        let bytes: Vec<u8> = match self.dtype() {
            Float => self.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Double => self.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Int64 => self.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            Uint64 | Uint32 => self
                .uint64_data
                .iter()
                .flat_map(|&v| match self.dtype() {
                    Uint32 => (v as u32).to_le_bytes().to_vec(),
                    _ => v.to_le_bytes().to_vec(),
                })
                .collect(),
            Int32 => self.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            // int32_data carries the 16- and 8-bit types, one element per entry.
            Int16 | Uint16 | Float16 | Bfloat16 => self
                .int32_data
                .iter()
                .flat_map(|&v| (v as u16).to_le_bytes())
                .collect(),
            Int8 | Uint8 | Bool => self.int32_data.iter().map(|&v| v as u8).collect(),
            other => bail!(
                "tensor '{}' stores {} values in a form sae-onnx does not read",
                self.name(),
                dtype_name(other)
            ),
        };
        Ok(bytes)
    }
}

/// Calls `f` on every tensor in the graph: initializers, sparse initializers' parts, tensor
/// attributes (e.g. `Constant`), and the same inside subgraphs (`If`, `Loop`, `Scan` bodies).
pub fn for_each_tensor_mut(
    graph: &mut GraphProto,
    f: &mut impl FnMut(&mut TensorProto) -> Result<()>,
) -> Result<()> {
    for t in &mut graph.initializer {
        f(t)?;
    }
    for sparse in &mut graph.sparse_initializer {
        for t in sparse.values.iter_mut().chain(sparse.indices.iter_mut()) {
            f(t)?;
        }
    }
    for node in &mut graph.node {
        for attr in &mut node.attribute {
            for t in attr.t.iter_mut().chain(attr.tensors.iter_mut()) {
                f(t)?;
            }
            for g in attr.g.iter_mut().chain(attr.graphs.iter_mut()) {
                for_each_tensor_mut(g, f)?;
            }
        }
    }
    Ok(())
}

/// Read-only twin of [`for_each_tensor_mut`].
pub fn for_each_tensor(graph: &GraphProto, f: &mut impl FnMut(&TensorProto) -> Result<()>) -> Result<()> {
    for t in &graph.initializer {
        f(t)?;
    }
    for sparse in &graph.sparse_initializer {
        for t in sparse.values.iter().chain(sparse.indices.iter()) {
            f(t)?;
        }
    }
    for node in &graph.node {
        for attr in &node.attribute {
            for t in attr.t.iter().chain(attr.tensors.iter()) {
                f(t)?;
            }
            for g in attr.g.iter().chain(attr.graphs.iter()) {
                for_each_tensor(g, f)?;
            }
        }
    }
    Ok(())
}
