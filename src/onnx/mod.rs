//! ONNX protobuf types and what ONNX users expect on top of them: the `onnx.helper` vocabulary,
//! one graph builder, graph editing, and models whose weights stay on disk as external data.

pub mod builder;
pub mod datafile;
pub mod edit;
pub mod external;
pub mod make;
pub mod model;
#[allow(clippy::all, clippy::pedantic, missing_docs)]
#[rustfmt::skip]
pub mod pb;
pub mod split;
pub mod tensor;

pub use model::{ExternalDataPolicy, Model, SaveOptions, SaveReport};
pub use pb::tensor_proto::DataType;

/// The IR version we write. ONNX Runtime 1.31 reads IR versions up to 13; 10 is what opset 21
/// shipped with and is understood by every runtime released since 2024.
pub const IR_VERSION: i64 = 10;
/// The default-domain opset our graphs are built against.
pub const OPSET: i64 = 21;
/// Microsoft's contrib-op domain (GroupQueryAttention, SkipSimplifiedLayerNormalization, ...).
pub const MS_DOMAIN: &str = "com.microsoft";
