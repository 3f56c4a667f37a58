//! `patch` against transformers: the steered logits of the Gemma 2 fixture equal a transformers
//! run that adds `coef * W_dec[i]` with forward hooks (tests/fixtures/steer/make_steer.py), for a
//! resid_post row, two summed rows, an mlp_out row and an attn.hook_z row, in both CSV formats;
//! on our export and on foreign exports (torch.onnx, onnxruntime-genai) of the same model.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::golden::{Golden, compare};
use ort::value::{DynValue, Tensor};
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::onnx::Model;
use sae_onnx::steer::patch::{PatchOptions, PatchOutput, patch, patch_with_output};

const TOLERANCE: f32 = 1e-4;

fn steer_fixture(rel: &str) -> PathBuf {
    common::fixture(&format!("steer/{rel}"))
}

fn export_base(dir: &Path) -> PathBuf {
    let out = dir.join("base.onnx");
    export::export("tests/fixtures/gemma/gemma2", &out, &ExportOptions::default()).unwrap();
    out
}

/// Patches `base` into `out`, replacing `out` if an earlier case wrote it.
fn patched(base: &Path, csv: &Path, out: &Path) -> PathBuf {
    patch_with_output(
        &PatchOptions {
            csv: csv.to_path_buf(),
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
    .unwrap_or_else(|e| panic!("{}: {e:#}", csv.display()));
    out.to_path_buf()
}

fn logits() -> Vec<String> {
    vec!["logits".to_owned()]
}

#[test]
fn steered_exports_match_transformers_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_base(tmp.path());
    for case in ["a", "b", "c", "d"] {
        let golden = Golden::load(&steer_fixture(&format!("golden_{case}.safetensors")));
        for csv in [format!("case_{case}.csv"), format!("case_{case}_lmeval.csv")] {
            let out = patched(
                &base,
                &steer_fixture(&csv),
                &tmp.path().join(format!("steered_{case}.onnx")),
            );
            let diff = compare(&out, &golden, &logits(), None, None)["logits"];
            assert!(diff <= TOLERANCE, "{csv}: max |Δlogit| = {diff}");
        }
        // The unsteered model is far from the steered golden: the check can fail.
        let base_diff = compare(&base, &golden, &logits(), None, None)["logits"];
        assert!(
            base_diff > 1e-2,
            "case {case}: steering changes nothing ({base_diff})"
        );
    }
}

#[test]
fn torch_onnx_exports_are_steered_at_their_residual_adds() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("torch.onnx");
    std::fs::copy(common::fixture("foreign/torchscript/model.onnx"), &base).unwrap();
    for case in ["a", "b", "c", "d"] {
        let golden = Golden::load(&steer_fixture(&format!("golden_{case}.safetensors")));
        let out = patched(
            &base,
            &steer_fixture(&format!("case_{case}.csv")),
            &tmp.path().join(format!("t_{case}.onnx")),
        );
        let diff = compare(&out, &golden, &logits(), None, None)["logits"];
        assert!(diff <= TOLERANCE, "torch.onnx case {case}: max |Δlogit| = {diff}");
    }
}

/// The genai graph is a KV-cache graph: a prompt step takes an (unread) past of the sliding
/// window's length for sliding layers and an empty past for full-attention layers.
fn genai_past(batch: usize, _seq: usize) -> Vec<(String, DynValue)> {
    let mut inputs = Vec::new();
    for layer in 0..3 {
        let past = if layer % 2 == 0 { 4 } else { 0 };
        for kind in ["key", "value"] {
            let shape = vec![batch, 2, past, 16];
            let data = vec![0.0f32; shape.iter().product()];
            inputs.push((
                format!("past_key_values.{layer}.{kind}"),
                Tensor::from_array((shape, data)).unwrap().into_dyn(),
            ));
        }
    }
    inputs
}

#[test]
fn genai_graphs_are_steered_through_their_fused_norms() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("genai");
    std::fs::create_dir(&dir).unwrap();
    for file in ["model.onnx", "model.onnx.data"] {
        std::fs::copy(common::fixture(&format!("foreign/genai/{file}")), dir.join(file)).unwrap();
    }
    let base = dir.join("model.onnx");
    for case in ["a", "b", "c", "d"] {
        let golden = Golden::load(&steer_fixture(&format!("golden_{case}.safetensors")));
        let out = patched(
            &base,
            &steer_fixture(&format!("case_{case}.csv")),
            &dir.join(format!("g_{case}.onnx")),
        );
        // genai refuses right-padded prompt batches, so the single-prompt cases only.
        let diff = compare(&out, &golden, &logits(), Some(4), Some(&genai_past))["logits"];
        assert!(diff <= TOLERANCE, "genai case {case}: max |Δlogit| = {diff}");
    }
}

/// Steers `base` with cases a to d and compares each with its transformers golden; `cases` and
/// `past` as in `compare` (genai graphs run single prompts with an empty cache).
fn steer_cases_match_goldens(base: &Path, cases: Option<usize>, past: Option<common::golden::ExtraInputs>) {
    steer_cases_match(base, cases, past, &|case| {
        steer_fixture(&format!("golden_{case}.safetensors"))
    });
}

/// As [`steer_cases_match_goldens`], against the goldens `golden(case)` names.
fn steer_cases_match(
    base: &Path,
    cases: Option<usize>,
    past: Option<common::golden::ExtraInputs>,
    golden: &dyn Fn(&str) -> PathBuf,
) {
    let dir = base.parent().unwrap();
    let stem = base.file_stem().unwrap().to_str().unwrap();
    for case in ["a", "b", "c", "d"] {
        let golden = Golden::load(&golden(case));
        let out = patched(
            base,
            &steer_fixture(&format!("case_{case}.csv")),
            &dir.join(format!("{stem}_steered_{case}.onnx")),
        );
        let diff = compare(&out, &golden, &logits(), cases, past)["logits"];
        assert!(diff <= TOLERANCE, "{stem} case {case}: max |Δlogit| = {diff}");
    }
}

/// Graphs whose names say nothing of the decoder (a wrapper module's `/m/model/...`, every name
/// replaced, ONNX Runtime's fused and renamed nodes) are steered by their data flow alone.
#[test]
fn torch_onnx_variants_are_steered_by_structure() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "wrapped",
        "dynamo",
        "torchscript_renamed",
        "torchscript_ort_basic",
        "torchscript_ort_extended",
    ] {
        let base = tmp.path().join(format!("{name}.onnx"));
        std::fs::copy(common::fixture(&format!("foreign/variants/{name}.onnx")), &base).unwrap();
        steer_cases_match_goldens(&base, None, None);
    }
}

#[test]
fn genai_variants_are_steered_by_structure() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture("foreign/genai/model.onnx.data"),
        tmp.path().join("model.onnx.data"),
    )
    .unwrap();
    for name in ["renamed", "ort_basic", "ort_extended"] {
        let base = tmp.path().join(format!("{name}.onnx"));
        std::fs::copy(common::fixture(&format!("foreign/genai/{name}.onnx")), &base).unwrap();
        steer_cases_match_goldens(&base, Some(4), Some(&genai_past));
    }
}

/// optimum's graphs compute transformers' sdpa forward (attention softcapping dropped, DESIGN §6),
/// so their goldens are that forward steered by the same hooks (foreign/make_optimum.py).
#[test]
fn optimum_exports_with_and_without_past_are_steered_by_structure() {
    let tmp = tempfile::tempdir().unwrap();
    let empty_past = |batch: usize, _seq: usize| -> Vec<(String, DynValue)> {
        (0..3)
            .flat_map(|layer| ["key", "value"].map(|kind| (layer, kind)))
            .map(|(layer, kind)| {
                let shape = vec![batch, 2, 0, 16];
                (
                    format!("past_key_values.{layer}.{kind}"),
                    Tensor::from_array((shape, Vec::<f32>::new())).unwrap().into_dyn(),
                )
            })
            .collect()
    };
    let golden = |case: &str| common::fixture(&format!("foreign/optimum/golden_sdpa_{case}.safetensors"));
    for (name, past) in [
        ("model", None),
        ("with_past", Some(&empty_past as common::golden::ExtraInputs)),
    ] {
        let base = tmp.path().join(format!("optimum_{name}.onnx"));
        std::fs::copy(common::fixture(&format!("foreign/optimum/{name}.onnx")), &base).unwrap();
        steer_cases_match(&base, Some(4), past, &golden);
    }
}

/// genai's int4 build (MatMulNBits, GatherBlockQuantized) is 4 bits off the float goldens, so its
/// goldens are the same graph steered in Python at the tensors found by value in the float build
/// (foreign/make_genai_int4.py).
#[test]
fn genai_int4_graphs_are_steered_by_structure() {
    let tmp = tempfile::tempdir().unwrap();
    for file in ["model.onnx", "model.onnx.data"] {
        std::fs::copy(
            common::fixture(&format!("foreign/genai_int4/{file}")),
            tmp.path().join(file),
        )
        .unwrap();
    }
    let golden = |case: &str| common::fixture(&format!("foreign/genai_int4/golden_int4_{case}.safetensors"));
    steer_cases_match(
        &tmp.path().join("model.onnx"),
        Some(4),
        Some(&genai_past),
        &golden,
    );
}

/// A foreign graph already steered is mapped through its steering nodes: a second patch stacks,
/// and `--replace` leaves exactly one (genai: through the fused norms' skip inputs).
#[test]
fn steered_foreign_graphs_stack_and_replace() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        common::fixture("foreign/genai/model.onnx.data"),
        tmp.path().join("model.onnx.data"),
    )
    .unwrap();
    let base = tmp.path().join("renamed.onnx");
    std::fs::copy(common::fixture("foreign/genai/renamed.onnx"), &base).unwrap();
    let golden_a = Golden::load(&steer_fixture("golden_a.safetensors"));
    let once = patched(&base, &steer_fixture("case_a.csv"), &tmp.path().join("once.onnx"));
    let twice = patched(
        &once,
        &steer_fixture("case_a.csv"),
        &tmp.path().join("twice.onnx"),
    );
    let diff = |m: &Path| compare(m, &golden_a, &logits(), Some(4), Some(&genai_past))["logits"];
    assert!(diff(&once) <= TOLERANCE);
    assert!(diff(&twice) > 1e-2, "stacking adds the vector twice");
    let replaced = tmp.path().join("replaced.onnx");
    patch(&PatchOptions {
        csv: steer_fixture("case_a.csv"),
        output: replaced.clone(),
        model: Some(twice.display().to_string()),
        replace: true,
        progress: false,
    })
    .unwrap();
    assert!(diff(&replaced) <= TOLERANCE, "--replace leaves one copy");
}

#[test]
fn patching_shares_weights_records_provenance_stacks_and_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_base(tmp.path());
    let base_bytes = std::fs::read(&base).unwrap();
    let once = patched(&base, &steer_fixture("case_a.csv"), &tmp.path().join("once.onnx"));
    assert!(
        !tmp.path().join("once.onnx.data").exists(),
        "the steered model shares base.onnx.data"
    );
    assert_eq!(
        std::fs::read(&base).unwrap(),
        base_bytes,
        "the base model is untouched"
    );

    let model = Model::load(&once).unwrap();
    let steering: serde_json::Value =
        serde_json::from_str(model.metadata("sae_onnx.steering").unwrap()).unwrap();
    assert_eq!(steering.as_array().unwrap().len(), 1);
    assert_eq!(steering[0]["rows"][0]["latent"], 17);
    assert_eq!(steering[0]["rows"][0]["hook"], "blocks.1.hook_resid_post");
    assert!(
        steering[0]["saes"][0]["sha256"]
            .as_str()
            .is_some_and(|h| h.len() == 64)
    );

    // a then (b minus a's row) stacks to b's second row plus twice a's: check via replace instead.
    let twice = patched(
        &once,
        &steer_fixture("case_a.csv"),
        &tmp.path().join("twice.onnx"),
    );
    let stacked: serde_json::Value = serde_json::from_str(
        Model::load(&twice)
            .unwrap()
            .metadata("sae_onnx.steering")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        stacked.as_array().unwrap().len(),
        2,
        "provenance lists both patches"
    );
    let golden_a = Golden::load(&steer_fixture("golden_a.safetensors"));
    assert!(
        compare(&twice, &golden_a, &logits(), None, None)["logits"] > 1e-2,
        "stacking adds the vector twice"
    );

    let replaced = tmp.path().join("replaced.onnx");
    patch(&PatchOptions {
        csv: steer_fixture("case_a.csv"),
        output: replaced.clone(),
        model: Some(twice.display().to_string()),
        replace: true,
        progress: false,
    })
    .unwrap();
    assert!(
        compare(&replaced, &golden_a, &logits(), None, None)["logits"] <= TOLERANCE,
        "--replace leaves one copy"
    );
}

#[test]
fn the_cli_reports_bad_plans_with_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_base(tmp.path());
    let csv = tmp.path().join("bad.csv");
    let sae = steer_fixture("sae_res");
    std::fs::write(&csv, format!("latent_idx,steering_coefficient,sae_release,sae_id,description\n17,8.0,{},,ok\n500,1.0,{},,too big\n", sae.display(), sae.display())).unwrap();
    let out = tmp.path().join("x.onnx");
    let run = Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args([
            "patch",
            "--csv",
            csv.to_str().unwrap(),
            "--model",
            base.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("bad.csv") && stderr.contains(":3") && stderr.contains("500"),
        "{stderr}"
    );
    assert!(!out.exists(), "nothing is written on error");
}

/// An SAE trained with BOS first (`prepend_bos: true`): no warning on a model whose tokenizer adds
/// `<bos>`; on the same model pointed at a tokenizer that adds none, `patch` warns and names
/// `generate --prepend-bos`. The record keeps the flag either way.
#[test]
fn prepend_bos_saes_warn_where_the_tokenizer_adds_no_bos() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_base(tmp.path());
    let sae = tmp.path().join("sae");
    std::fs::create_dir(&sae).unwrap();
    std::fs::copy(
        steer_fixture("sae_res/sae_weights.safetensors"),
        sae.join("sae_weights.safetensors"),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(steer_fixture("sae_res/cfg.json")).unwrap()).unwrap();
    cfg["metadata"]["prepend_bos"] = serde_json::Value::Bool(true);
    std::fs::write(sae.join("cfg.json"), cfg.to_string()).unwrap();
    let csv = tmp.path().join("plan.csv");
    std::fs::write(
        &csv,
        "latent_idx,steering_coefficient,sae_release,sae_id,description\n17,8.0,sae,,x\n",
    )
    .unwrap();
    let run = |model: &Path, out: &str| {
        patch(&PatchOptions {
            csv: csv.clone(),
            output: tmp.path().join(out),
            model: Some(model.display().to_string()),
            replace: false,
            progress: false,
        })
        .unwrap()
    };
    let report = run(&base, "with_bos.onnx");
    assert_eq!(report.warnings, Vec::<String>::new());
    let steering: serde_json::Value = serde_json::from_str(
        Model::load(&tmp.path().join("with_bos.onnx"))
            .unwrap()
            .metadata("sae_onnx.steering")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(steering[0]["saes"][0]["prepend_bos"], true);
    let shown = sae_onnx::inspect::inspect(&tmp.path().join("with_bos.onnx"))
        .unwrap()
        .to_string();
    assert!(
        shown.contains(", trained with BOS first (prepend_bos))"),
        "{shown}"
    );

    // The fixture's tokenizer without its post-processor (the template that adds <bos>).
    let plain = tmp.path().join("plain_tokenizer");
    std::fs::create_dir(&plain).unwrap();
    let mut tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string("tests/fixtures/gemma/gemma2/tokenizer.json").unwrap())
            .unwrap();
    tokenizer["post_processor"] = serde_json::Value::Null;
    std::fs::write(plain.join("tokenizer.json"), tokenizer.to_string()).unwrap();
    std::fs::copy(
        "tests/fixtures/gemma/gemma2/tokenizer_config.json",
        plain.join("tokenizer_config.json"),
    )
    .unwrap();
    let mut model = Model::load(&base).unwrap();
    model.set_metadata("sae_onnx.tokenizer", &plain.display().to_string());
    let plain_base = tmp.path().join("plain_base.onnx");
    model.save(&plain_base, &Default::default()).unwrap();
    let report = run(&plain_base, "without_bos.onnx");
    assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
    let warning = &report.warnings[0];
    assert!(
        warning.contains("prepend_bos: true")
            && warning.contains("adds none")
            && warning.contains("`generate --prepend-bos` puts \"<bos>\" first"),
        "{warning}"
    );
}
