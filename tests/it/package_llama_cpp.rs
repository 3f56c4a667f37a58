//! llama.cpp control vectors: the writer against gguf-py, the GGUF library of llama.cpp's
//! repository (`tests/fixtures/llama_cpp/make_gguf_golden.py` wrote the same vectors with
//! `GGUFWriter(path, "controlvector")`, and every byte must match), then `package --format
//! llama.cpp` on the demo model, run in llama.cpp itself against transformers.

use std::collections::BTreeMap;

use sae_onnx::package::llama_cpp::ControlVector;

use crate::common::{self, fixture};

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

// ---- `package --format llama.cpp`, checked in llama.cpp itself ----
//
// tests/fixtures/llama_cpp/make_llama_cpp_golden.py converted models/tiny-gemma2 with llama.cpp's
// converter (tiny-gemma2.f32.gguf), wrote the demo's steering (150 * W_dec[7] of the demo SAE at
// blocks.2.hook_resid_post) with gguf-py (demo_steer.gguf), and ran transformers (eager,
// float32) plain and with a forward hook adding the vector to decoder layer 2's output.

fn sae_onnx(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

/// models/tiny-gemma2 exported, and patched with its steer.csv.
fn demo_models(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (base, steered) = (dir.join("base.onnx"), dir.join("steered.onnx"));
    common::succeeded(&sae_onnx(&["export", "models/tiny-gemma2", "-o", path(&base)]));
    common::succeeded(&sae_onnx(&[
        "patch",
        "--csv",
        "models/tiny-gemma2/steer.csv",
        "--model",
        path(&base),
        "-o",
        path(&steered),
    ]));
    (base, steered)
}

/// `package MODEL --format llama.cpp [EXTRA] -o OUT`, which must succeed.
fn package_control_vector(model: &std::path::Path, out: &std::path::Path, extra: &[&str]) {
    let mut args = vec!["package", path(model), "--format", "llama.cpp"];
    args.extend_from_slice(extra);
    args.extend(["-o", path(out)]);
    common::succeeded(&sae_onnx(&args));
}

#[test]
fn package_writes_the_demo_vector_gguf_py_wrote_from_the_model_or_the_csv() {
    let tmp = tempfile::tempdir().unwrap();
    let (base, steered) = demo_models(tmp.path());
    let golden = std::fs::read(fixture("llama_cpp/demo_steer.gguf")).unwrap();
    let out = tmp.path().join("steer.gguf");
    package_control_vector(&steered, &out, &[]);
    assert!(
        std::fs::read(&out).unwrap() == golden,
        "from the model's steering"
    );
    let from_csv = tmp.path().join("csv.gguf");
    package_control_vector(&base, &from_csv, &["--csv", "models/tiny-gemma2/steer.csv"]);
    assert!(std::fs::read(&from_csv).unwrap() == golden, "from --csv");
}

struct LlamaGolden {
    tokens: String,
    plain: Vec<Vec<f64>>,
    steered: Vec<Vec<f64>>,
}

fn llama_golden() -> LlamaGolden {
    let text = std::fs::read_to_string(fixture("llama_cpp/llama_cpp_golden.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tokens: Vec<String> = g["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.to_string())
        .collect();
    let rows = |v: &serde_json::Value| -> Vec<Vec<f64>> { serde_json::from_value(v.clone()).unwrap() };
    LlamaGolden {
        tokens: tokens.join(","),
        plain: rows(&g["transformers"]["plain"]),
        steered: rows(&g["transformers"]["steered"]),
    }
}

/// Every position's logits from llama.cpp, with the control vector if given.
fn llama_cpp_logits(driver: &std::path::Path, tokens: &str, cvec: Option<&std::path::Path>) -> Vec<Vec<f64>> {
    let model = fixture("llama_cpp/tiny-gemma2.f32.gguf");
    let mut cmd = std::process::Command::new(driver);
    cmd.arg(&model).args(["--tokens", tokens]);
    if let Some(c) = cvec {
        cmd.arg("--control-vector").arg(c);
    }
    let run = cmd.output().unwrap();
    common::succeeded(&run);
    let out: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    serde_json::from_value(out["logits"].clone()).unwrap()
}

fn max_abs_diff(a: &[Vec<f64>], b: &[Vec<f64>]) -> f64 {
    assert_eq!(a.len(), b.len(), "positions");
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "vocabulary");
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f64::max)
}

fn minus(a: &[Vec<f64>], b: &[Vec<f64>]) -> Vec<Vec<f64>> {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p - q).collect())
        .collect()
}

/// llama.cpp's CPU kernels differ from torch's in float32 rounding and in GELU, which ggml reads
/// from a float16 table (GGML_GELU_FP16, ggml/src/ggml-cpu/vec.h); make_llama_cpp_golden.py
/// measured 0.034 on logits up to 26 in magnitude (plain) and 0.032 on the steered shift (up to
/// 19.6), while the same vector one layer off shifts the logits by 2.0 and 2.5 more.
const LOGIT_TOLERANCE: f64 = 0.1;

#[test]
fn llama_cpp_adds_our_control_vector_where_transformers_adds_the_steering() {
    let Some(driver) = common::runtime_from_env(
        "SAE_ONNX_LLAMA_CPP",
        "llama.cpp's logits driver",
        "tests/it/package_llama_cpp.rs",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let (_, steered) = demo_models(tmp.path());
    let cvec = tmp.path().join("steer.gguf");
    package_control_vector(&steered, &cvec, &[]);
    let golden = llama_golden();
    let plain = llama_cpp_logits(&driver, &golden.tokens, None);
    let diff = max_abs_diff(&plain, &golden.plain);
    assert!(
        diff < LOGIT_TOLERANCE,
        "plain logits differ from transformers by {diff}"
    );
    let ours = minus(&llama_cpp_logits(&driver, &golden.tokens, Some(&cvec)), &plain);
    let theirs = minus(&golden.steered, &golden.plain);
    let diff = max_abs_diff(&ours, &theirs);
    assert!(
        diff < LOGIT_TOLERANCE,
        "the steered shift differs from transformers' by {diff}"
    );

    // The same vector one layer off must not pass: the check can fail.
    let bytes = std::fs::read(&cvec).unwrap();
    let vector = read_direction(&bytes, 2);
    for layer in [1, 3] {
        let moved = tmp.path().join(format!("layer{layer}.gguf"));
        ControlVector {
            model_hint: "gemma2".into(),
            layer_count: 4,
            directions: BTreeMap::from([(layer, vector.clone())]),
        }
        .write(&moved)
        .unwrap();
        let shift = minus(&llama_cpp_logits(&driver, &golden.tokens, Some(&moved)), &plain);
        let diff = max_abs_diff(&shift, &theirs);
        assert!(
            diff > 10.0 * LOGIT_TOLERANCE,
            "the vector at layer {layer} shifts the logits like layer 2's (by {diff})"
        );
    }
}

/// `direction.{layer}`'s values from a control vector with that one tensor (as ours are).
fn read_direction(bytes: &[u8], layer: u32) -> Vec<f32> {
    let name = format!("direction.{layer}");
    let at = bytes
        .windows(name.len())
        .position(|w| w == name.as_bytes())
        .expect("the tensor info");
    let width = u64::from_le_bytes(
        bytes[at + name.len() + 4..at + name.len() + 12]
            .try_into()
            .unwrap(),
    ) as usize;
    let data = bytes.len() - width.div_ceil(8) * 32;
    bytes[data..data + 4 * width]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}
