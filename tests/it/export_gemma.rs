//! The exporter against transformers: golden logits and hook tensors from tiny random Gemma 1/2/3
//! checkpoints (tests/fixtures/gemma/make_gemma.py, transformers 4.57 eager, float32), run through
//! ONNX Runtime, in both operator profiles (`--ops portable` and `--ops ort`) at the same
//! tolerances. Also shows the comparison catches a wrong model (no softcapping).

use crate::common;

use common::golden::{Golden, compare};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use ort::value::Tensor;
use sae_onnx::contract::meta;
use sae_onnx::export::{self, ExportOptions, Ops};
use sae_onnx::infer::runtime::{self, SessionOptions};
use sae_onnx::onnx::make::make_tensor_value_info_unshaped;
use sae_onnx::onnx::{DataType, MS_DOMAIN, Model, SaveOptions};

const TOLERANCE: f32 = 1e-4;

fn fixture_dir(arch: &str) -> PathBuf {
    common::fixture(&format!("gemma/{arch}"))
}

fn export_fixture(dir: &Path, out_dir: &Path, ops: Ops) -> PathBuf {
    let out = out_dir.join(format!("model_{}.onnx", ops.name()));
    let options = ExportOptions {
        ops: Some(ops),
        ..Default::default()
    };
    export::export(dir.to_str().unwrap(), &out, &options).unwrap();
    out
}

/// A copy of the model that also outputs the given hook tensors.
pub(crate) fn with_outputs(model: &Path, names: &[String], out_dir: &Path) -> PathBuf {
    let mut m = Model::load(model).unwrap();
    for name in names {
        m.graph_mut()
            .output
            .push(make_tensor_value_info_unshaped(name, DataType::Float));
    }
    let out = out_dir.join(format!(
        "with_hooks_{}",
        model.file_name().unwrap().to_string_lossy()
    ));
    m.save(&out, &SaveOptions::default()).unwrap();
    out
}

/// The operator types of `model`'s nodes, as `domain:op`, with how often each occurs.
fn op_counts(model: &Model) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for node in &model.graph().node {
        *counts
            .entry(format!("{}:{}", node.domain(), node.op_type()))
            .or_default() += 1;
    }
    counts
}

/// The profile is recorded, and the graph is made of the operators it promises: in `ort`, fused
/// RMSNorms, and GroupQueryAttention in every layer unless attention is softcapped (Gemma 2).
pub(crate) fn check_profile(model: &Model, ops: Ops, layers: usize, softcapped_attention: bool) {
    assert_eq!(model.metadata(meta::OPS), Some(ops.name()));
    let counts = op_counts(model);
    let contrib: usize = counts
        .iter()
        .filter(|(op, _)| op.starts_with(&format!("{MS_DOMAIN}:")))
        .map(|(_, n)| n)
        .sum();
    let gqa = counts
        .get(&format!("{MS_DOMAIN}:GroupQueryAttention"))
        .copied()
        .unwrap_or(0);
    let imports_ms = model.proto.opset_import.iter().any(|o| o.domain() == MS_DOMAIN);
    match ops {
        Ops::Portable => {
            assert_eq!(
                contrib, 0,
                "portable graphs use standard operators only: {counts:?}"
            );
            assert!(
                !counts.contains_key(":SimplifiedLayerNormalization"),
                "{counts:?}"
            );
            assert!(!imports_ms, "a portable graph imports no contrib opset");
        }
        Ops::Ort if softcapped_attention => {
            assert_eq!(
                gqa, 0,
                "softcapped attention stays in standard operators: {counts:?}"
            );
            assert!(imports_ms, "the ort profile imports the com.microsoft opset");
        }
        Ops::Ort => {
            assert_eq!(gqa, layers, "one GroupQueryAttention per layer: {counts:?}");
            assert!(
                !counts.contains_key(":Softmax"),
                "no attention is left unfused: {counts:?}"
            );
            assert!(imports_ms, "the ort profile imports the com.microsoft opset");
        }
    }
    if ops == Ops::Ort {
        assert!(counts.contains_key(":SimplifiedLayerNormalization"), "{counts:?}");
        assert!(
            !counts.contains_key(":ReduceMean"),
            "no RMSNorm is left unfused: {counts:?}"
        );
    }
}

fn check_architecture(arch: &str, layers: usize, ops: Ops) {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_fixture(&fixture_dir(arch), tmp.path(), ops);
    let exported = Model::load(&model).unwrap();
    assert_eq!(
        exported.metadata(meta::NUM_LAYERS),
        Some(layers.to_string().as_str())
    );
    check_profile(&exported, ops, layers, arch == "gemma2");
    let hooks: Vec<String> = serde_json::from_str(exported.metadata(meta::HOOKS).unwrap()).unwrap();
    let mut outputs = vec!["logits".to_owned()];
    outputs.extend(hooks.into_iter().filter(|h| h.starts_with("blocks.")));
    assert_eq!(outputs.len(), 1 + 6 * layers, "six hooks per layer");
    let model = with_outputs(&model, &outputs[1..], tmp.path());
    let golden = Golden::load(&fixture_dir(arch).join("golden.safetensors"));
    let worst = compare(&model, &golden, &outputs, None, None);
    for (name, diff) in &worst {
        assert!(
            *diff <= TOLERANCE,
            "{arch} --ops {}: {name}: max |Δ| = {diff} > {TOLERANCE}",
            ops.name()
        );
    }
    let hooks = worst
        .iter()
        .filter(|(name, _)| *name != "logits")
        .map(|(_, d)| *d)
        .fold(0.0f32, f32::max);
    eprintln!(
        "{arch} --ops {}: max |Δlogit| = {:e}, max relative |Δhook| = {hooks:e}",
        ops.name(),
        worst["logits"]
    );
}

/// One golden test per architecture and operator profile.
macro_rules! golden_tests {
    ($($name:ident: $arch:literal, $layers:literal, $ops:expr;)*) => {$(
        #[test]
        fn $name() {
            check_architecture($arch, $layers, $ops);
        }
    )*};
}

golden_tests! {
    gemma_matches_transformers_portable: "gemma", 3, Ops::Portable;
    gemma_matches_transformers_ort: "gemma", 3, Ops::Ort;
    gemma2_matches_transformers_portable: "gemma2", 3, Ops::Portable;
    gemma2_matches_transformers_ort: "gemma2", 3, Ops::Ort;
    gemma3_matches_transformers_portable: "gemma3", 4, Ops::Portable;
    gemma3_matches_transformers_ort: "gemma3", 4, Ops::Ort;
}

/// Padded positions, which the goldens leave out, come out finite in both profiles, and equal
/// where every padded query still sees a real token (Gemma 1: no sliding window). In sliding
/// layers (Gemma 3) a query far enough past the end sees only padding; transformers and the
/// portable graph then spread its attention evenly over all keys and GroupQueryAttention over its
/// causal window, both meaningless values at positions no one reads.
#[test]
fn padded_positions_are_finite_and_agree() {
    for (arch, agree) in [("gemma", true), ("gemma3", false)] {
        let tmp = tempfile::tempdir().unwrap();
        let golden = Golden::load(&fixture_dir(arch).join("golden.safetensors"));
        let batch = (0..)
            .take_while(|k| golden.has(&format!("case{k}.input_ids")))
            .last()
            .unwrap();
        let (shape, ids) = golden.i64s(&format!("case{batch}.input_ids"));
        let (_, mask) = golden.i64s(&format!("case{batch}.attention_mask"));
        assert!(mask.contains(&0), "the last case is a padded batch");
        let logits = |ops: Ops| {
            let model = export_fixture(&fixture_dir(arch), tmp.path(), ops);
            let mut session = runtime::session(&model, &SessionOptions::default()).unwrap();
            let inputs = ort::inputs![
                "input_ids" => Tensor::from_array((shape.clone(), ids.clone())).unwrap(),
                "attention_mask" => Tensor::from_array((shape.clone(), mask.clone())).unwrap(),
            ];
            let result = session.run(inputs).unwrap();
            result["logits"].try_extract_tensor::<f32>().unwrap().1.to_vec()
        };
        let (portable, fused) = (logits(Ops::Portable), logits(Ops::Ort));
        assert!(portable.iter().chain(&fused).all(|x| x.is_finite()), "{arch}");
        if agree {
            let diff = portable
                .iter()
                .zip(&fused)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= TOLERANCE,
                "{arch}: max |Δlogit| between profiles = {diff}"
            );
        }
    }
}

/// float16 runs on ONNX Runtime's CPU provider; its logits stay within 0.05 of transformers' float32
/// ones (measured 0.011; transformers' own bfloat16 run of this model is 0.114 away).
fn gemma2_float16_is_within_its_bound(ops: Ops) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("f16.onnx");
    let options = ExportOptions {
        dtype: DataType::Float16,
        ops: Some(ops),
        ..Default::default()
    };
    export::export(fixture_dir("gemma2").to_str().unwrap(), &out, &options).unwrap();
    assert_eq!(Model::load(&out).unwrap().metadata(meta::DTYPE), Some("float16"));
    let golden = Golden::load(&fixture_dir("gemma2").join("golden.safetensors"));
    let worst = compare(&out, &golden, &["logits".to_owned()], None, None)["logits"];
    assert!(worst <= 0.05, "float16 max |Δlogit| = {worst}");
    assert!(
        worst > 1e-4,
        "float16 cannot be as exact as float32 ({worst}): is the dtype applied?"
    );
    eprintln!("float16 --ops {}: max |Δlogit| = {worst:e}", ops.name());
}

#[test]
fn gemma2_float16_is_within_its_bound_portable() {
    gemma2_float16_is_within_its_bound(Ops::Portable);
}

#[test]
fn gemma2_float16_is_within_its_bound_ort() {
    gemma2_float16_is_within_its_bound(Ops::Ort);
}

/// A model without softcapping fails the check against the real golden, and matches the golden
/// that transformers computed with softcapping switched off: the comparison can tell them apart.
fn a_model_without_softcap_is_caught(ops: Ops) {
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
    let model = export_fixture(&variant, tmp.path(), ops);
    let logits = vec!["logits".to_owned()];

    let real = compare(
        &model,
        &Golden::load(&fixture_dir("gemma2").join("golden.safetensors")),
        &logits,
        None,
        None,
    )["logits"];
    assert!(
        real > 1e-1,
        "dropping softcapping must be detected, but max |Δ| = {real}"
    );
    let no_cap = compare(
        &model,
        &Golden::load(&fixture_dir("gemma2").join("golden_no_softcap.safetensors")),
        &logits,
        None,
        None,
    )["logits"];
    assert!(
        no_cap <= TOLERANCE,
        "the no-softcap variant matches transformers without softcap: {no_cap}"
    );
}

#[test]
fn a_model_without_softcap_is_caught_portable() {
    a_model_without_softcap_is_caught(Ops::Portable);
}

#[test]
fn a_model_without_softcap_is_caught_ort() {
    a_model_without_softcap_is_caught(Ops::Ort);
}

#[test]
fn unsupported_architectures_and_existing_outputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("falcon");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["FalconForCausalLM"]}"#,
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
        msg.contains("FalconForCausalLM") && msg.contains("Gemma2ForCausalLM"),
        "{msg}"
    );

    let out = export_fixture(&fixture_dir("gemma2"), tmp.path(), Ops::Portable);
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

/// A seeded random Gemma 3 checkpoint like the fixture's but with `head_dim` 8, which
/// GroupQueryAttention's CPU kernel cannot rotate (it needs a multiple of 16): the `ort` graph
/// applies RoPE before the operator instead.
fn random_gemma3_head_dim_8(dir: &Path) {
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir("gemma3").join("config.json")).unwrap())
            .unwrap();
    let (heads, kv_heads, head_dim) = (4usize, 2usize, 8usize);
    config["head_dim"] = head_dim.into();
    config["num_attention_heads"] = heads.into();
    config["num_key_value_heads"] = kv_heads.into();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let dim = |k: &str| config[k].as_u64().unwrap() as usize;
    let (hidden, inner, vocab) = (dim("hidden_size"), dim("intermediate_size"), dim("vocab_size"));
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![vocab, hidden]),
        ("model.norm.weight".into(), vec![hidden]),
    ];
    for l in 0..dim("num_hidden_layers") {
        let p = |name: &str| format!("model.layers.{l}.{name}.weight");
        for norm in [
            "input_layernorm",
            "post_attention_layernorm",
            "pre_feedforward_layernorm",
            "post_feedforward_layernorm",
        ] {
            shapes.push((p(norm), vec![hidden]));
        }
        shapes.extend([
            (p("self_attn.q_proj"), vec![heads * head_dim, hidden]),
            (p("self_attn.k_proj"), vec![kv_heads * head_dim, hidden]),
            (p("self_attn.v_proj"), vec![kv_heads * head_dim, hidden]),
            (p("self_attn.o_proj"), vec![hidden, heads * head_dim]),
            (p("self_attn.q_norm"), vec![head_dim]),
            (p("self_attn.k_norm"), vec![head_dim]),
            (p("mlp.gate_proj"), vec![inner, hidden]),
            (p("mlp.up_proj"), vec![inner, hidden]),
            (p("mlp.down_proj"), vec![hidden, inner]),
        ]);
    }
    // xorshift64*, uniform in [-0.5, 0.5): big enough that attention is far from uniform.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut uniform = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n).flat_map(|_| uniform().to_le_bytes()).collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = data
        .iter()
        .map(|(name, shape, bytes)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).unwrap();
            (name.clone(), view)
        })
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
}

/// Without a transformers golden for it, the `ort` graph of a `head_dim` 8 model (RoPE outside
/// GroupQueryAttention) must equal the `portable` one, which the goldens vouch for: logits and
/// every hook, at the real tokens of a right-padded batch.
#[test]
fn ort_profile_rotates_small_heads_outside_the_fused_attention() {
    let tmp = tempfile::tempdir().unwrap();
    let checkpoint = tmp.path().join("gemma3_head_dim_8");
    random_gemma3_head_dim_8(&checkpoint);
    let golden = Golden::load(&fixture_dir("gemma3").join("golden.safetensors"));
    let batch = (0..)
        .take_while(|k| golden.has(&format!("case{k}.input_ids")))
        .last()
        .unwrap();
    let (shape, ids) = golden.i64s(&format!("case{batch}.input_ids"));
    let (_, mask) = golden.i64s(&format!("case{batch}.attention_mask"));
    let run = |ops: Ops| {
        let model = export_fixture(&checkpoint, tmp.path(), ops);
        let exported = Model::load(&model).unwrap();
        check_profile(&exported, ops, 4, false);
        let hooks: Vec<String> = serde_json::from_str(exported.metadata(meta::HOOKS).unwrap()).unwrap();
        let mut names = vec!["logits".to_owned()];
        names.extend(hooks);
        let model = with_outputs(&model, &names[1..], tmp.path());
        let mut session = runtime::session(&model, &SessionOptions::default()).unwrap();
        let inputs = ort::inputs![
            "input_ids" => Tensor::from_array((shape.clone(), ids.clone())).unwrap(),
            "attention_mask" => Tensor::from_array((shape.clone(), mask.clone())).unwrap(),
        ];
        let result = session.run(inputs).unwrap();
        names
            .iter()
            .map(|n| {
                let values = result[n.as_str()].try_extract_tensor::<f32>().unwrap().1.to_vec();
                (n.clone(), values)
            })
            .collect::<Vec<_>>()
    };
    let (portable, fused) = (run(Ops::Portable), run(Ops::Ort));
    for ((name, expected), (_, actual)) in portable.iter().zip(&fused) {
        let per_position = expected.len() / mask.len();
        let valid = |i: usize| mask[i / per_position] == 1;
        let scale = expected
            .iter()
            .enumerate()
            .filter(|(i, _)| valid(*i))
            .fold(1.0f32, |m, (_, e)| m.max(e.abs()));
        let diff = actual
            .iter()
            .zip(expected)
            .enumerate()
            .filter(|(i, _)| valid(*i))
            .fold(0.0f32, |m, (_, (a, e))| m.max((a - e).abs()));
        let limit = if name == "logits" {
            TOLERANCE
        } else {
            TOLERANCE * scale
        };
        assert!(diff <= limit, "{name}: max |Δ| = {diff} > {limit}");
    }
}

/// Without `ops`, float32 exports use the fused operators (faster on ONNX Runtime's CPU
/// provider), bfloat16 ones the fused norms with standard attention (faster on its CUDA provider,
/// whose fused attention rejects the padding mask), float16 ones the portable graph.
#[test]
fn the_default_profile_follows_the_dtype() {
    let tmp = tempfile::tempdir().unwrap();
    for (dtype, expected) in [
        (DataType::Float, Ops::Ort),
        (DataType::Bfloat16, Ops::Ort),
        (DataType::Float16, Ops::Portable),
    ] {
        let out = tmp.path().join(format!("{dtype:?}.onnx"));
        let options = ExportOptions {
            dtype,
            ..Default::default()
        };
        export::export(fixture_dir("gemma3").to_str().unwrap(), &out, &options).unwrap();
        let model = Model::load(&out).unwrap();
        // Gemma 3 has no attention softcap: only a float32 graph fuses its attention.
        check_profile(&model, expected, 4, dtype != DataType::Float);
    }
}
