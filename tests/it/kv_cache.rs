//! The decoding graph (`export --kv-cache`): a prompt prefilled in one call and then one token per
//! call reproduces transformers' full-sequence logits at every step, past the sliding window; and
//! `generate` gives the same tokens from the decoding graph and from the full graph.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use common::golden::Golden;
use ort::value::{DynValue, Tensor};
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};
use sae_onnx::infer::runtime::{self, SessionOptions};

fn export(arch: &str, dir: &Path, kv_cache: bool) -> PathBuf {
    let out = dir.join(format!("{arch}{}.onnx", if kv_cache { "_kv" } else { "" }));
    let options = ExportOptions {
        kv_cache,
        ..Default::default()
    };
    export::export(&format!("tests/fixtures/gemma/{arch}"), &out, &options).unwrap();
    out
}

#[test]
fn cached_steps_equal_transformers_full_sequence_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["gemma", "gemma2", "gemma3"] {
        let model = export(arch, tmp.path(), true);
        let worst = cached_steps_worst(&model, &common::fixture(&format!("gemma/{arch}")));
        assert!(
            worst <= 1e-4,
            "{arch}: cached logits differ from transformers by {worst}"
        );
    }
}

/// Runs the decoding graph `model` of the checkpoint folder `checkpoint` on its golden's `case2`
/// (12 tokens, three times a sliding window of 4): a 5-token prefill, then one token per call,
/// each call's `present` fed back as `past`. Returns the largest |Δlogit| from transformers'
/// full-sequence logits.
pub(crate) fn cached_steps_worst(model: &Path, checkpoint: &Path) -> f32 {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(checkpoint.join("config.json")).unwrap()).unwrap();
    let dims = (
        config["num_hidden_layers"].as_u64().unwrap() as usize,
        config["num_key_value_heads"].as_u64().unwrap() as usize,
        config["head_dim"].as_u64().unwrap() as usize,
    );
    let golden = Golden::load(&checkpoint.join("golden.safetensors"));
    cached_steps(model, &golden, "case2", dims, 5).0
}

/// Feeds the golden's `case` to the decoding graph `model` (cache `dims`: layers, kv heads,
/// head size) as a `prefill`-token call and then one token per call, each call's `present` fed
/// back as `past`. Returns the largest |Δlogit| from the golden's full-sequence logits and the
/// number of calls.
pub(crate) fn cached_steps(
    model: &Path,
    golden: &Golden,
    case: &str,
    (layers, kv_heads, head_dim): (usize, usize, usize),
    prefill: usize,
) -> (f32, usize) {
    let mut session = runtime::session(model, &SessionOptions::default()).unwrap();
    let (shape, ids) = golden.i64s(&format!("{case}.input_ids"));
    let expected = golden.f32s(&format!("{case}.logits"));
    let vocab = expected.len() / shape[1];
    let mut past: HashMap<String, DynValue> = HashMap::new();
    for l in 0..layers {
        for kind in ["key", "value"] {
            let empty = Tensor::from_array(([1, kv_heads, 0, head_dim], Vec::<f32>::new())).unwrap();
            past.insert(format!("past_key_values.{l}.{kind}"), empty.into_dyn());
        }
    }
    let (mut position, mut worst, mut steps) = (0, 0.0f32, 0);
    for chunk in std::iter::once(prefill).chain(std::iter::repeat_n(1, shape[1] - prefill)) {
        let new = ids[position..position + chunk].to_vec();
        let mut inputs: Vec<(std::borrow::Cow<str>, ort::session::SessionInputValue)> = vec![
            (
                "input_ids".into(),
                Tensor::from_array(([1, chunk], new)).unwrap().into(),
            ),
            (
                "attention_mask".into(),
                Tensor::from_array(([1, position + chunk], vec![1i64; position + chunk]))
                    .unwrap()
                    .into(),
            ),
        ];
        for (name, value) in past.drain() {
            inputs.push((name.into(), value.into()));
        }
        let mut outputs = session.run(inputs).unwrap();
        let (_, logits) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        let want = &expected[position * vocab..(position + chunk) * vocab];
        worst = logits
            .iter()
            .zip(want)
            .map(|(a, e)| (a - e).abs())
            .fold(worst, f32::max);
        for l in 0..layers {
            for kind in ["key", "value"] {
                let present = outputs.remove(format!("present.{l}.{kind}")).unwrap();
                past.insert(format!("past_key_values.{l}.{kind}"), present);
            }
        }
        position += chunk;
        steps += 1;
    }
    (worst, steps)
}

#[test]
fn generation_is_the_same_with_and_without_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let options = GenerateOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    let mut cached = Generator::open(&export("gemma2", tmp.path(), true), &options).unwrap();
    let mut full = Generator::open(&export("gemma2", tmp.path(), false), &options).unwrap();
    let prompt = cached.encode_prompt("The dog sees the", false).unwrap();
    let a = cached.generate(&prompt, &options, |_| {}).unwrap();
    let b = full.generate(&prompt, &options, |_| {}).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert_eq!(a.text, b.text);
    assert!(!a.tokens.is_empty());
}
