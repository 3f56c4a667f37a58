//! The llama.cpp control-vector writer against gguf-py, the GGUF library of llama.cpp's
//! repository: `tests/fixtures/llama_cpp/make_gguf_golden.py` wrote the same vectors with
//! `GGUFWriter(path, "controlvector")`, and every byte must match.

use std::collections::BTreeMap;

use sae_onnx::package::llama_cpp::ControlVector;

use crate::common::fixture;

/// The vectors of make_gguf_golden.py: `(arange(8) - 3.5) * 0.25 * scale`, scale 1 on layer 1
/// and -0.5 on layer 2.
fn golden_vectors() -> ControlVector {
    let direction = |scale: f32| (0..8).map(|i| (i as f32 - 3.5) * (0.25 * scale)).collect();
    ControlVector {
        model_hint: "gemma2".into(),
        layer_count: 3,
        directions: BTreeMap::from([(1, direction(1.0)), (2, direction(-0.5))]),
    }
}

#[test]
fn control_vector_bytes_match_gguf_py() {
    let golden = std::fs::read(fixture("llama_cpp/control_vector.gguf")).unwrap();
    let ours = golden_vectors().encode().unwrap();
    assert_eq!(ours.len(), golden.len(), "file size");
    if let Some(at) = ours.iter().zip(&golden).position(|(a, b)| a != b) {
        panic!(
            "first differing byte at offset {at}: ours {:#04x}, gguf-py {:#04x}",
            ours[at], golden[at]
        );
    }
}

#[test]
fn a_changed_value_changes_the_bytes() {
    let golden = std::fs::read(fixture("llama_cpp/control_vector.gguf")).unwrap();
    let mut vectors = golden_vectors();
    vectors.directions.get_mut(&2).unwrap()[7] = 0.0;
    assert_ne!(vectors.encode().unwrap(), golden);
}
