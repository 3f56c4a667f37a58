//! Helpers shared by the integration tests: a small hand-built model and running models in ONNX Runtime.
#![allow(dead_code)] // each test binary uses a different subset

pub mod golden;

use std::path::Path;

use ort::value::Tensor;
use sae_onnx::onnx::DataType;
use sae_onnx::onnx::make::*;
use sae_onnx::onnx::pb::ModelProto;
use sae_onnx::runtime::{self, SessionOptions};

pub const W: [f32; 12] = [0.5, -1.0, 2.0, 1.5, 0.25, -0.5, -2.0, 1.0, 0.75, 0.1, -0.3, 1.2];
pub const B: [f32; 3] = [0.1, -0.2, 0.3];

/// `y = relu(x @ W + b)` with x: [batch, 4], W: [4, 3]; weights big enough to externalize if asked.
pub fn mlp() -> ModelProto {
    let nodes = vec![
        make_node("MatMul", &["x", "W"], &["xw"], "/mlp/MatMul"),
        make_node("Add", &["xw", "b"], &["pre"], "/mlp/Add"),
        make_node("Relu", &["pre"], &["y"], "/mlp/Relu"),
    ];
    let graph = make_graph(
        nodes,
        "mlp",
        vec![make_tensor_value_info(
            "x",
            DataType::Float,
            &["batch".into(), 4.into()],
        )],
        vec![make_tensor_value_info(
            "y",
            DataType::Float,
            &["batch".into(), 3.into()],
        )],
        vec![make_tensor_f32("W", &[4, 3], &W), make_tensor_f32("b", &[3], &B)],
    );
    make_model(graph, vec![])
}

/// The reference the MLP must compute, in plain Rust.
pub fn mlp_expected(x: &[f32]) -> Vec<f32> {
    x.chunks(4)
        .flat_map(|row| {
            (0..3).map(move |j| {
                let v: f32 = (0..4).map(|k| row[k] * W[k * 3 + j]).sum::<f32>() + B[j];
                v.max(0.0)
            })
        })
        .collect()
}

/// Runs a model with one float input and returns its first output.
pub fn run_f32(model: &Path, input: &str, shape: &[i64], data: Vec<f32>) -> (Vec<i64>, Vec<f32>) {
    let mut session =
        runtime::session(model, &SessionOptions::default()).expect("ONNX Runtime opens the model");
    let tensor = Tensor::from_array((shape.to_vec(), data)).unwrap();
    let outputs = session
        .run(ort::inputs![input => tensor])
        .expect("the model runs");
    let (shape, values) = outputs[0].try_extract_tensor::<f32>().unwrap();
    (shape.to_vec(), values.to_vec())
}

pub fn assert_close(actual: &[f32], expected: &[f32], tol: f32) {
    assert_eq!(actual.len(), expected.len(), "lengths differ");
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        assert!((a - e).abs() <= tol, "element {i}: {a} vs {e} (tolerance {tol})");
    }
}

pub fn fixture(rel: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// A JSON-lines file (lm-eval's samples and request dumps), one value per line.
pub fn read_jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Asserts that two JSON objects (a sample of ours and lm-eval's) agree on each of `keys`.
pub fn assert_fields_equal(ours: &serde_json::Value, theirs: &serde_json::Value, keys: &[&str], what: &str) {
    for key in keys {
        assert_eq!(ours[*key], theirs[*key], "{what}: {key}");
    }
}
