//! Golden files from transformers (safetensors with `caseK.input_ids`, `caseK.attention_mask`,
//! `caseK.logits`, hook tensors) and the comparison of a model's outputs against them.

use std::collections::HashMap;
use std::path::Path;

use ort::value::{DynValue, Tensor};
use sae_onnx::infer::runtime::{self, SessionOptions};
use safetensors::SafeTensors;

pub struct Golden {
    bytes: Vec<u8>,
}

impl Golden {
    pub fn load(path: &Path) -> Self {
        Self {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }
    fn tensors(&self) -> SafeTensors<'_> {
        SafeTensors::deserialize(&self.bytes).unwrap()
    }
    pub fn has(&self, name: &str) -> bool {
        self.tensors().names().contains(&name)
    }
    pub fn i64s(&self, name: &str) -> (Vec<usize>, Vec<i64>) {
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
    pub fn f64s(&self, name: &str) -> Vec<f64> {
        let st = self.tensors();
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
    pub fn f32s(&self, name: &str) -> Vec<f32> {
        let st = self.tensors();
        let t = st.tensor(name).unwrap();
        t.data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    }
}

/// Extra inputs a graph needs besides input_ids/attention_mask (an empty KV cache, optimum's
/// int64 position_ids), given the case's batch and sequence sizes.
pub type ExtraInputs<'a> = &'a dyn Fn(usize, usize) -> Vec<(String, DynValue)>;

/// Runs the golden cases (all, or the first `max_cases`); returns, per output, the largest
/// |difference| over valid (unpadded) positions. Hook tensors are compared relative to their scale
/// (Gemma 1's residual stream reaches hundreds, where float32 itself rounds at ~3e-5):
/// |Δ| / max(1, max |golden|).
pub fn compare(
    model: &Path,
    golden: &Golden,
    outputs: &[String],
    max_cases: Option<usize>,
    extra: Option<ExtraInputs>,
) -> HashMap<String, f32> {
    let cases: Vec<usize> = (0..max_cases.unwrap_or(usize::MAX))
        .take_while(|case| golden.has(&format!("case{case}.input_ids")))
        .collect();
    assert!(!cases.is_empty(), "the golden file has no cases");
    compare_cases(model, golden, outputs, &cases, extra)
}

/// As [`compare`], over the golden's cases numbered `cases` (a golden may hold only some, as
/// families/<f>/golden_steered.safetensors holds cases 2 and 3).
pub fn compare_cases(
    model: &Path,
    golden: &Golden,
    outputs: &[String],
    cases: &[usize],
    extra: Option<ExtraInputs>,
) -> HashMap<String, f32> {
    let mut session = runtime::session(model, &SessionOptions::default()).unwrap();
    let mut worst: HashMap<String, f32> = HashMap::new();
    for &case in cases {
        let prefix = format!("case{case}");
        assert!(
            golden.has(&format!("{prefix}.input_ids")),
            "the golden file has no {prefix}"
        );
        let (shape, ids) = golden.i64s(&format!("{prefix}.input_ids"));
        let (_, mask) = golden.i64s(&format!("{prefix}.attention_mask"));
        let mut inputs: Vec<(String, ort::session::SessionInputValue)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array((shape.clone(), ids)).unwrap().into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array((shape.clone(), mask.clone())).unwrap().into(),
            ),
        ];
        if let Some(extra) = extra {
            for (name, value) in extra(shape[0], shape[1]) {
                inputs.push((name, value.into()));
            }
        }
        let inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> = inputs
            .into_iter()
            .map(|(n, v)| (std::borrow::Cow::Owned(n), v))
            .collect();
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
