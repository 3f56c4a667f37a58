//! The exporter on the other decoder families against transformers: tiny random Llama (`llama3`
//! RoPE scaling), Mistral (sliding window), Qwen 2 (q/k/v biases) and Qwen 3 (q/k norms,
//! `head_dim` 32) checkpoints and their goldens (tests/fixtures/families/make_families.py,
//! transformers 4.57 eager, float32): logits at every position and layer 1's hook tensors in both
//! operator profiles, the decoding graph step by step, `patch`'s steering against a PyTorch
//! forward hook, greedy generation, half precision against float32, and the config fields we
//! refuse.

use crate::common;
use crate::export_gemma::{check_profile, with_outputs};

use common::golden::{Golden, compare};

use std::path::{Path, PathBuf};

use sae_onnx::contract::meta;
use sae_onnx::export::decoder::LAYER_HOOKS;
use sae_onnx::export::{self, ExportOptions, Ops};
use sae_onnx::onnx::{DataType, Model};
use sae_onnx::steer::patch::{PatchOptions, PatchOutput, patch_with_output};

const TOLERANCE: f32 = 1e-4;
/// The layer whose hook tensors the goldens hold (make_families.py's HOOK_LAYER).
const HOOK_LAYER: usize = 1;
const LAYERS: usize = 2;
/// make_families.py's MAX_NEW_TOKENS.
const MAX_NEW_TOKENS: usize = 16;

fn fixture_dir(family: &str) -> PathBuf {
    common::fixture(&format!("families/{family}"))
}

fn export_with(dir: &Path, out: &Path, options: &ExportOptions) -> PathBuf {
    export::export(dir.to_str().unwrap(), out, options)
        .unwrap_or_else(|e| panic!("{}: {e:#}", dir.display()));
    out.to_path_buf()
}

fn export_profile(family: &str, out_dir: &Path, ops: Ops) -> PathBuf {
    let options = ExportOptions {
        ops: Some(ops),
        ..Default::default()
    };
    let out = out_dir.join(format!("{family}_{}.onnx", ops.name()));
    export_with(&fixture_dir(family), &out, &options)
}

fn logits() -> Vec<String> {
    vec!["logits".to_owned()]
}

/// Logits at every real position of every case, and the golden layer's six hook tensors
/// (relative to their scale, see `compare`), within [`TOLERANCE`].
fn check_family(family: &str, ops: Ops) {
    let tmp = tempfile::tempdir().unwrap();
    let model = export_profile(family, tmp.path(), ops);
    let exported = Model::load(&model).unwrap();
    assert_eq!(
        exported.metadata(meta::NUM_LAYERS),
        Some(LAYERS.to_string().as_str())
    );
    check_profile(&exported, ops, LAYERS, false);
    let hooks: Vec<String> = serde_json::from_str(exported.metadata(meta::HOOKS).unwrap()).unwrap();
    assert_eq!(
        hooks.iter().filter(|h| h.starts_with("blocks.")).count(),
        6 * LAYERS,
        "six hooks per layer: {hooks:?}"
    );
    let mut outputs = logits();
    outputs.extend(
        LAYER_HOOKS
            .iter()
            .map(|site| format!("blocks.{HOOK_LAYER}.{site}")),
    );
    assert!(outputs[1..].iter().all(|h| hooks.contains(h)), "{hooks:?}");
    let model = with_outputs(&model, &outputs[1..], tmp.path());
    let golden = Golden::load(&fixture_dir(family).join("golden.safetensors"));
    let worst = compare(&model, &golden, &outputs, None, None);
    for (name, diff) in &worst {
        assert!(
            *diff <= TOLERANCE,
            "{family} --ops {}: {name}: max |Δ| = {diff} > {TOLERANCE}",
            ops.name()
        );
    }
    eprintln!("{family} --ops {}: {worst:?}", ops.name());
}

macro_rules! golden_tests {
    ($($name:ident: $family:literal, $ops:expr;)*) => {$(
        #[test]
        fn $name() {
            check_family($family, $ops);
        }
    )*};
}

golden_tests! {
    llama_matches_transformers_portable: "llama", Ops::Portable;
    llama_matches_transformers_ort: "llama", Ops::Ort;
    mistral_matches_transformers_portable: "mistral", Ops::Portable;
    mistral_matches_transformers_ort: "mistral", Ops::Ort;
    qwen2_matches_transformers_portable: "qwen2", Ops::Portable;
    qwen2_matches_transformers_ort: "qwen2", Ops::Ort;
    qwen3_matches_transformers_portable: "qwen3", Ops::Portable;
    qwen3_matches_transformers_ort: "qwen3", Ops::Ort;
}

const FAMILIES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

/// The decoding graph (`--kv-cache`), a prefill then one token per call past Mistral's window,
/// gives transformers' full-sequence logits.
#[test]
fn families_cached_steps_equal_transformers_full_sequence_logits() {
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let options = ExportOptions {
            kv_cache: true,
            ..Default::default()
        };
        let model = export_with(
            &fixture_dir(family),
            &tmp.path().join(format!("{family}_kv.onnx")),
            &options,
        );
        let worst = crate::kv_cache::cached_steps_worst(&model, &fixture_dir(family));
        assert!(
            worst <= TOLERANCE,
            "{family}: cached logits differ from transformers by {worst}"
        );
    }
}

/// `generate` on the decoding graph, token for token with transformers' greedy `generate`.
#[test]
fn families_greedy_tokens_equal_transformers_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let options = ExportOptions {
        kv_cache: true,
        ..Default::default()
    };
    for family in FAMILIES {
        let model = export_with(
            &fixture_dir(family),
            &tmp.path().join(format!("{family}_kv.onnx")),
            &options,
        );
        let golden = fixture_dir(family).join("golden_generate.safetensors");
        let compared = crate::generate_greedy::check_golden(&model, &golden, MAX_NEW_TOKENS);
        assert_eq!(compared, 3 * MAX_NEW_TOKENS, "{family}: no prompt stopped early");
    }
}

/// `base` patched with tests/fixtures/steer/case_a.csv (8·W_dec[17] at blocks.1.hook_resid_post)
/// into `out`.
fn steer(base: &Path, out: &Path) -> PathBuf {
    patch_with_output(
        &PatchOptions {
            csv: common::fixture("steer/case_a.csv"),
            output: out.to_path_buf(),
            model: Some(base.display().to_string()),
            replace: false,
            progress: false,
        },
        &PatchOutput {
            sweepable: false,
            force: true,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", base.display()));
    out.to_path_buf()
}

/// The steered decoding graph generates transformers' greedy tokens with the same vector added
/// by a forward hook (make_families.py checks that steering changes some generation).
#[test]
fn families_steered_greedy_tokens_equal_transformers_with_a_hook() {
    let tmp = tempfile::tempdir().unwrap();
    let options = ExportOptions {
        kv_cache: true,
        ..Default::default()
    };
    for family in FAMILIES {
        let base = export_with(
            &fixture_dir(family),
            &tmp.path().join(format!("{family}_kv.onnx")),
            &options,
        );
        let steered = steer(&base, &tmp.path().join(format!("{family}_kv_steered.onnx")));
        let golden = fixture_dir(family).join("golden_generate_steered.safetensors");
        let compared = crate::generate_greedy::check_golden(&steered, &golden, MAX_NEW_TOKENS);
        assert!(compared > 0, "{family}: no token compared");
    }
}

/// `patch` with tests/fixtures/steer/case_a.csv (8·W_dec[17] at blocks.1.hook_resid_post) gives
/// the logits of a PyTorch forward hook adding that vector to layer 1's output, in both profiles;
/// the unsteered export is far from them, so the check can fail.
#[test]
fn families_steered_exports_match_transformers_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let golden = Golden::load(&fixture_dir(family).join("golden_steered.safetensors"));
        for ops in [Ops::Portable, Ops::Ort] {
            let base = export_profile(family, tmp.path(), ops);
            let steered = steer(
                &base,
                &tmp.path().join(format!("{family}_{}_steered.onnx", ops.name())),
            );
            let diff = compare(&steered, &golden, &logits(), None, None)["logits"];
            assert!(
                diff <= TOLERANCE,
                "{family} --ops {}: steered max |Δlogit| = {diff}",
                ops.name()
            );
            let unsteered = compare(&base, &golden, &logits(), None, None)["logits"];
            assert!(
                unsteered > 1e-2,
                "{family}: steering changes nothing ({unsteered})"
            );
        }
    }
}

/// A copy of `family`'s fixture whose config.json is changed by `edit`.
fn variant(family: &str, dir: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let out = dir.join(format!("{family}_variant"));
    std::fs::create_dir_all(&out).unwrap();
    for file in ["model.safetensors", "tokenizer.json"] {
        std::fs::copy(fixture_dir(family).join(file), out.join(file)).unwrap();
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture_dir(family).join("config.json")).unwrap())
            .unwrap();
    edit(&mut config);
    std::fs::write(out.join("config.json"), config.to_string()).unwrap();
    out
}

/// Exporting `family` with its config edited fails with a message containing every `wanted`.
fn refused(family: &str, edit: impl FnOnce(&mut serde_json::Value), wanted: &[&str]) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = variant(family, tmp.path(), edit);
    let out = tmp.path().join("refused.onnx");
    let err = export::export(dir.to_str().unwrap(), &out, &ExportOptions::default())
        .expect_err("the export must be refused");
    let msg = format!("{err:#}");
    for w in wanted {
        assert!(msg.contains(w), "{family}: '{w}' not in: {msg}");
    }
    assert!(!out.exists(), "nothing is written");
}

#[test]
fn an_unsupported_architecture_names_the_supported_ones() {
    refused(
        "llama",
        |c| c["architectures"] = serde_json::json!(["FalconForCausalLM"]),
        &[
            "FalconForCausalLM",
            "LlamaForCausalLM",
            "MistralForCausalLM",
            "Qwen2ForCausalLM",
            "Qwen3ForCausalLM",
            "Gemma2ForCausalLM",
        ],
    );
}

/// Config fields whose values the graph does not build are errors naming the field, not ignored.
#[test]
fn config_fields_we_do_not_build_are_refused() {
    refused(
        "llama",
        |c| c["rope_scaling"] = serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
        &["rope_scaling type 'yarn' is not supported", "llama3"],
    );
    refused(
        "llama",
        |c| {
            c["rope_scaling"]
                .as_object_mut()
                .unwrap()
                .remove("low_freq_factor");
        },
        &["rope_scaling.low_freq_factor"],
    );
    refused(
        "llama",
        |c| c["attention_bias"] = true.into(),
        &["attention_bias"],
    );
    refused("mistral", |c| c["mlp_bias"] = true.into(), &["mlp_bias"]);
    refused(
        "qwen3",
        |c| c["attention_bias"] = true.into(),
        &["attention_bias"],
    );
    refused(
        "qwen2",
        |c| c["hidden_act"] = "gelu".into(),
        &["hidden_act 'gelu'"],
    );
    refused(
        "llama",
        |c| c["partial_rotary_factor"] = 0.5.into(),
        &["partial_rotary_factor"],
    );
    // transformers' Llama does not read layer_types; its Qwen has no window without use_sliding_window.
    refused(
        "llama",
        |c| c["layer_types"] = serde_json::json!(["sliding_attention", "full_attention"]),
        &["layer_types", "LlamaForCausalLM"],
    );
    refused(
        "qwen2",
        |c| {
            c["layer_types"] = serde_json::json!(["full_attention", "sliding_attention"]);
            c["sliding_window"] = 4.into();
        },
        &["use_sliding_window"],
    );
}

/// Dropping what sets a family apart (Llama 3's RoPE scaling, Mistral's window) gives logits
/// the goldens reject: the comparison sees those features.
#[test]
fn a_family_without_its_feature_is_caught() {
    let tmp = tempfile::tempdir().unwrap();
    for (family, field) in [("llama", "rope_scaling"), ("mistral", "sliding_window")] {
        let dir = variant(family, tmp.path(), |c| {
            c.as_object_mut().unwrap().remove(field);
        });
        let out = export_with(
            &dir,
            &tmp.path().join(format!("{family}_without.onnx")),
            &Default::default(),
        );
        let golden = Golden::load(&fixture_dir(family).join("golden.safetensors"));
        let diff = compare(&out, &golden, &logits(), None, None)["logits"];
        eprintln!("{family} without {field}: max |Δlogit| = {diff:e}");
        assert!(
            diff > 100.0 * TOLERANCE,
            "{family} without {field}: max |Δlogit| = {diff}"
        );
    }
}

/// How far transformers' own float16 run of `family` is from its float32 logits (max |Δlogit|
/// over the golden cases; make_families.py records it in cases.json).
fn transformers_float16_drift(family: &str) -> f32 {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixture("families/cases.json")).unwrap())
            .unwrap();
    cases["families"][family]["transformers_half_precision_max_abs_logit_diff"]["float16"]
        .as_f64()
        .unwrap() as f32
}

/// How many times transformers' own float16 drift an export's may be: both round the same
/// float32 model at different points (ours keeps norms, softmax and RoPE tables in float32 as
/// transformers does, but orders and fuses operations differently), so the errors are of one
/// size, not equal. Measured: 0.011-0.022 against transformers' 0.014-0.038 (ratio <= 0.9).
const DRIFT_FACTOR: f32 = 2.0;

/// float16 exports (the default profile, `portable`) run on ONNX Runtime's CPU provider and stay
/// within [`DRIFT_FACTOR`] × transformers' own float16 drift from its float32 logits, but not
/// within the float32 tolerance (the dtype is applied). `--ops ort` builds the same
/// half-precision graph for these families (their norm weight multiplies after the cast, which no
/// fused kernel does, and fused attention is float32-only). bfloat16 graphs cannot run here: ONNX
/// Runtime's CPU provider has no bfloat16 kernels (`Where` is the first it misses).
#[test]
fn families_float16_is_within_its_bound() {
    let tmp = tempfile::tempdir().unwrap();
    for family in FAMILIES {
        let options = ExportOptions {
            dtype: DataType::Float16,
            ..Default::default()
        };
        let out = export_with(
            &fixture_dir(family),
            &tmp.path().join(format!("{family}.onnx")),
            &options,
        );
        assert_eq!(Model::load(&out).unwrap().metadata(meta::DTYPE), Some("float16"));
        let golden = Golden::load(&fixture_dir(family).join("golden.safetensors"));
        let worst = compare(&out, &golden, &logits(), None, None)["logits"];
        let theirs = transformers_float16_drift(family);
        eprintln!("{family} float16: max |Δlogit| = {worst:e} (transformers' own float16: {theirs:e})");
        assert!(
            worst <= DRIFT_FACTOR * theirs,
            "{family} float16: max |Δlogit| = {worst} > {DRIFT_FACTOR} × {theirs}"
        );
        assert!(
            worst > TOLERANCE,
            "{family} float16 cannot be as exact as float32 ({worst}): is the dtype applied?"
        );
    }
}

/// Qwen 2 with its sliding window on (qwen2/config_sliding.json, as transformers writes it:
/// layer 1 sees its last 4 keys) matches transformers in both profiles and in the decoding graph.
#[test]
fn qwen2_sliding_window_matches_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("qwen2_sliding");
    std::fs::create_dir(&dir).unwrap();
    let source = fixture_dir("qwen2");
    for (from, to) in [
        ("model.safetensors", "model.safetensors"),
        ("tokenizer.json", "tokenizer.json"),
        ("config_sliding.json", "config.json"),
        ("golden_sliding.safetensors", "golden.safetensors"),
    ] {
        std::fs::copy(source.join(from), dir.join(to)).unwrap();
    }
    let golden = Golden::load(&dir.join("golden.safetensors"));
    for ops in [Ops::Portable, Ops::Ort] {
        let options = ExportOptions {
            ops: Some(ops),
            ..Default::default()
        };
        let out = export_with(&dir, &tmp.path().join(format!("{}.onnx", ops.name())), &options);
        let diff = compare(&out, &golden, &logits(), None, None)["logits"];
        assert!(diff <= TOLERANCE, "--ops {}: max |Δlogit| = {diff}", ops.name());
    }
    let options = ExportOptions {
        kv_cache: true,
        ..Default::default()
    };
    let model = export_with(&dir, &tmp.path().join("kv.onnx"), &options);
    let worst = crate::kv_cache::cached_steps_worst(&model, &dir);
    assert!(
        worst <= TOLERANCE,
        "cached logits differ from transformers by {worst}"
    );
}
