//! The exporter against transformers: golden logits and hook tensors from tiny random Gemma 1/2/3
//! checkpoints (tests/fixtures/gemma/make_gemma.py, transformers 4.57 eager, float32), run through
//! ONNX Runtime. Also shows the comparison catches a wrong model (no softcapping).

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::value::Tensor;
use sae_onnx::export::{self, ExportOptions, meta};
use sae_onnx::onnx::make::make_tensor_value_info_unshaped;
use sae_onnx::onnx::{DataType, Model, SaveOptions};
use sae_onnx::runtime::{self, SessionOptions};
use safetensors::SafeTensors;

const TOLERANCE: f32 = 1e-4;

struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    fn load(path: &Path) -> Self {
        Self {
            bytes: std::fs::read(path).unwrap(),
        }
    }
    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    fn has(&self, name: &str) -> bool {
        self.tensors().names().iter().any(|n| *n == name)
    }
    fn i64s(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
        let st = self.tensors();
        let t = st.tensor(name).unwrap();
        (
            t.shape().to_vec(),
            t.data()
                .chunks(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        )
    }
    fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.tensors();
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

fn export_fixture(dir: &Path, out_dir: &Path) -> PathBuf {
    let out = out_dir.join("model.onnx");
    export::export(dir.to_str().unwrap(), &out, &ExportOptions::default()).unwrap();
    out
}

/// A copy of the model that also outputs the given hook tensors.
fn with_outputs(model: &Path, names: &[String], out_dir: &Path) -> PathBuf {
    let mut m = Model::load(model).unwrap();
    for name in names {
        m.graph_mut()
            .output
            .push(make_tensor_value_info_unshaped(name, DataType::Float));
    }
    let out = out_dir.join("with_hooks.onnx");
    m.save(&out, &SaveOptions::default()).unwrap();
    out
}

/// Runs every golden case; returns, per output, the largest |difference| over valid (unpadded)
/// positions. Hook tensors are compared relative to their scale (Gemma 1's residual stream reaches
/// hundreds, where float32 itself rounds at ~3e-5): |Δ| / max(1, max |golden|).
fn compare(model: &Path, golden: &Golden, outputs: &[String]) -> HashMap<String, f32> {
    let mut session = runtime::session(model, &SessionOptions::default()).unwrap();
    let mut worst: HashMap<String, f32> = HashMap::new();
    for case in 0.. {
        let prefix = format!("case{case}");
        if !golden.has(&format!("{prefix}.input_ids")) {
            assert!(case > 0, "the golden file has no cases");
            break;
        }
        let (shape, ids) = golden.i64s(&format!("{prefix}.input_ids"));
        let (_, mask) = golden.i64s(&format!("{prefix}.attention_mask"));
        let inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape.clone(), ids)).unwrap(),
            "attention_mask" => Tensor::from_array((shape.clone(), mask.clone())).unwrap(),
        ];
        let result = session.run(inputs).unwrap();
        for name in outputs {
            let (out_shape, actual) = result[name.as_str()].try_extract_tensor::<f32>().unwrap();
            let golden_name = if name == "logits" {
                format!("{prefix}.logits")
            } else {
                format!("{prefix}.{name}")
            };
            let expected = golden.f32s(&golden_name);
            assert_eq!(actual.len(), expected.len(), "{golden_name}: shape {out_shape:?}");
            let per_position = actual.len() / mask.len();
            let valid = |i: &usize| mask[i / per_position] == 1;
            let scale = if name == "logits" {
                1.0
            } else {
                expected
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| valid(i))
                    .map(|(_, e)| e.abs())
                    .fold(1.0f32, f32::max)
            };
            let diff = actual
                .iter()
                .zip(&expected)
                .enumerate()
                .filter(|(i, _)| valid(i))
                .map(|(_, (a, e))| (a - e).abs() / scale)
                .fold(0.0f32, f32::max);
            let entry = worst.entry(name.clone()).or_default();
            *entry = entry.max(diff);
        }
    }
    worst
}

fn fixture_dir(arch: &str) -> PathBuf {
    common::fixture(&format!("gemma/{arch}"))
}

fn check_architecture(arch: &str, layers: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_fixture(&fixture_dir(arch), tmp.path());
    let exported = Model::load(&model).unwrap();
    assert_eq!(
        exported.metadata(meta::NUM_LAYERS),
        Some(layers.to_string().as_str())
    );
    let hooks: Vec<String> = serde_json::from_str(exported.metadata(meta::HOOKS).unwrap()).unwrap();
    let mut outputs = vec!["logits".to_owned()];
    outputs.extend(hooks.into_iter().filter(|h| h.starts_with("blocks.")));
    assert_eq!(outputs.len(), 1 + 6 * layers, "six hooks per layer");
    let model = with_outputs(&model, &outputs[1..], tmp.path());
    let golden = Golden::load(&fixture_dir(arch).join("golden.safetensors"));
    let worst = compare(&model, &golden, &outputs);
    for (name, diff) in &worst {
        assert!(
            *diff <= TOLERANCE,
            "{arch} {name}: max |Δ| = {diff} > {TOLERANCE}"
        );
    }
    eprintln!("{arch}: max |Δlogit| = {:e}", worst["logits"]);
}

#[test]
fn gemma_matches_transformers() {
    check_architecture("gemma", 3);
}

#[test]
fn gemma2_matches_transformers() {
    check_architecture("gemma2", 3);
}

#[test]
fn gemma3_matches_transformers() {
    check_architecture("gemma3", 4);
}

/// float16 runs on ONNX Runtime's CPU provider; its logits stay within 0.05 of transformers' float32
/// ones (measured 0.011; transformers' own bfloat16 run of this model is 0.114 away).
#[test]
fn gemma2_float16_is_within_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f16.onnx");
    let options = ExportOptions {
        dtype: DataType::Float16,
        ..Default::default()
    };
    export::export(fixture_dir("gemma2").to_str().unwrap(), &out, &options).unwrap();
    assert_eq!(Model::load(&out).unwrap().metadata(meta::DTYPE), Some("float16"));
    let golden = Golden::load(&fixture_dir("gemma2").join("golden.safetensors"));
    let worst = compare(&out, &golden, &["logits".to_owned()])["logits"];
    assert!(worst <= 0.05, "float16 max |Δlogit| = {worst}");
    assert!(
        worst > 1e-4,
        "float16 cannot be as exact as float32 ({worst}): is the dtype applied?"
    );
}

/// A model without softcapping fails the check against the real golden, and matches the golden
/// that transformers computed with softcapping switched off: the comparison can tell them apart.
#[test]
fn a_model_without_softcap_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    let variant = tmp.path().join("no_softcap");
    std::fs::create_dir(&variant).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir("gemma2").join(file), variant.join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("gemma2").join("config.json")).unwrap())
            .unwrap();
    config["attn_logit_softcapping"] = serde_json::Value::Null;
    config["final_logit_softcapping"] = serde_json::Value::Null;
    std::fs::write(variant.join("config.json"), config.to_string()).unwrap();
    let model = export_fixture(&variant, tmp.path());
    let logits = vec!["logits".to_owned()];

    let real = compare(
        &model,
        &Golden::load(&fixture_dir("gemma2").join("golden.safetensors")),
        &logits,
    )["logits"];
    assert!(
        real > 1e-1,
        "dropping softcapping must be detected, but max |Δ| = {real}"
    );
    let no_cap = compare(
        &model,
        &Golden::load(&fixture_dir("gemma2").join("golden_no_softcap.safetensors")),
        &logits,
    )["logits"];
    assert!(
        no_cap <= TOLERANCE,
        "the no-softcap variant matches transformers without softcap: {no_cap}"
    );
}

#[test]
fn unsupported_architectures_and_existing_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llama");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"]}"#,
    )
    .unwrap();
    let err = export::export(
        dir.to_str().unwrap(),
        &tmp.path().join("x.onnx"),
        &ExportOptions::default(),
    )
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("LlamaForCausalLM") && msg.contains("Gemma2ForCausalLM"),
        "{msg}"
    );

    let out = export_fixture(&fixture_dir("gemma2"), tmp.path());
    let err = export::export(
        fixture_dir("gemma2").to_str().unwrap(),
        &out,
        &ExportOptions::default(),
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("--force"), "{err:#}");
    let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temporary files remain: {leftovers:?}");
}
