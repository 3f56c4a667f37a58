//! Helpers shared by the integration tests: a small hand-built model and running models in ONNX Runtime.

pub mod golden;
pub mod lm_eval;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::value::Tensor;
use sae_onnx::infer::runtime::{self, SessionOptions};
use sae_onnx::onnx::DataType;
use sae_onnx::onnx::make::*;
use sae_onnx::onnx::pb::ModelProto;

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

/// The vector and coefficient of lm-eval's `steered` goldens (tests/fixtures/lm_eval/out/steer).
pub fn lm_eval_steer_vector() -> (Vec<f32>, f64) {
    let steer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("lm_eval/out/steer/steer.json")).unwrap())
            .unwrap();
    let vector = steer["vector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    (vector, steer["coefficient"].as_f64().unwrap())
}

/// A one-latent SAELens folder (`dir/sae`) whose decoder row 0 is `vector`, at
/// `blocks.1.hook_resid_post` (lm-eval's `layers.1`): steering latent 0 with coefficient c adds
/// c·vector there, as lm-eval's `steered` model does with a `.pt` holding the vector.
pub fn write_vector_sae(dir: &Path, vector: &[f32]) -> std::path::PathBuf {
    let d = vector.len();
    let sae = dir.join("sae");
    std::fs::create_dir(&sae).unwrap();
    std::fs::write(
        sae.join("cfg.json"),
        serde_json::json!({"d_in": d, "d_sae": 1, "architecture": "standard", "apply_b_dec_to_input": false,
            "normalize_activations": "none", "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.hook_resid_post"}})
        .to_string(),
    )
    .unwrap();
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let (w_dec, w_enc, b_enc, b_dec) = (bytes(vector), bytes(vector), bytes(&[0.0]), bytes(&vec![0.0; d]));
    fn view(shape: Vec<usize>, data: &[u8]) -> safetensors::tensor::TensorView<'_> {
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data).unwrap()
    }
    let tensors = vec![
        ("W_dec", view(vec![1, d], &w_dec)),
        ("W_enc", view(vec![d, 1], &w_enc)),
        ("b_enc", view(vec![1], &b_enc)),
        ("b_dec", view(vec![d], &b_dec)),
    ];
    safetensors::serialize_to_file(tensors, None, &sae.join("sae_weights.safetensors")).unwrap();
    sae
}

/// The Hugging Face cache this process reads, offline: an empty folder made once, that
/// `HF_HUB_CACHE` and `HF_HUB_OFFLINE=1` point at. The tests that read datasets from the hub lay
/// their repositories out in it (each under its own `datasets--org--name`, so they do not meet);
/// environment variables are process-wide, so there is one such folder for the whole binary.
pub fn fake_hub_cache() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = tempfile::Builder::new()
            .prefix("sae-onnx-fake-hub")
            .tempdir()
            .unwrap()
            .keep();
        // SAFETY: set once per process, before any test that reads the environment through Hub.
        unsafe {
            std::env::set_var("HF_HUB_CACHE", &root);
            std::env::set_var("HF_HUB_OFFLINE", "1");
        }
        root
    })
}

/// The run failed cleanly: non-zero exit, no panic, and `wanted` in the message; its stderr.
pub fn failed(run: &std::process::Output, wanted: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    assert!(!run.status.success(), "expected a failure, got success: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    for w in wanted {
        assert!(stderr.contains(w), "'{w}' missing from: {stderr}");
    }
    stderr
}

pub fn succeeded(run: &std::process::Output) {
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
}

/// The file in `dir` whose name starts with `prefix` (results_..., samples_...).
pub fn file_starting(dir: &Path, prefix: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_str().unwrap().starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix}* in {}", dir.display()))
}

/// The binary run with `args` offline, with its own Hugging Face cache (`home/hub`) and
/// `SAE_ONNX_HOME` (`home/home`), so what it caches stays in the test's folder.
pub fn run_isolated<S: AsRef<std::ffi::OsStr>>(args: &[S], home: &Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", home.join("hub"))
        .env("SAE_ONNX_HOME", home.join("home"))
        .env_remove("HF_HOME")
        .output()
        .unwrap()
}

/// A runtime the package tests run in, from the variable `scripts/test.sh` sets (`var`): `None`
/// (the test says so and passes) only outside CI; under CI a missing runtime fails the test.
pub fn runtime_from_env(var: &str, what: &str, test_file: &str) -> Option<PathBuf> {
    match std::env::var_os(var) {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("CI").is_some() => {
            panic!("CI is set but {var} is not: scripts/test.sh installs {what} and sets it")
        }
        None => {
            eprintln!("skipped: set {var} to {what} (see {test_file}), or run scripts/test.sh");
            None
        }
    }
}
