//! The decoder recovered from a foreign graph's data flow (`contract::decoder_map`) against the
//! hook tensors make_foreign.py found by VALUE (each graph run, every intermediate tensor matched
//! to transformers' hook outputs), and its refusals: a layer count the metadata contradicts, a
//! hook past the layers found, each named with the plan's file and line.

use crate::common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use sae_onnx::contract::hook_site::locate;
use sae_onnx::hook::HookPoint;
use sae_onnx::onnx::{Model, SaveOptions};

fn hooks_by_value(kind: &str) -> BTreeMap<String, Option<String>> {
    let text = std::fs::read_to_string(common::fixture(&format!("foreign/{kind}/hooks.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn torch_onnx_hooks_are_the_tensors_found_by_value() {
    let model = Model::load(&common::fixture("foreign/torchscript/model.onnx")).unwrap();
    let expected = hooks_by_value("torchscript");
    assert_eq!(expected.len(), 18, "six hooks of three layers");
    for (hook, tensor) in expected {
        let site = locate(&model, HookPoint::parse(&hook).unwrap()).unwrap();
        assert_eq!(Some(&site.tensor), tensor.as_ref(), "{hook}");
        assert_eq!(site.only_reader, None, "{hook}: plain Adds steer every reader");
    }
}

/// genai's residual sums live inside SkipSimplifiedLayerNormalization: the sum is steered
/// through the node's `skip` input (residual.json, measured in make_foreign.py), the other hooks
/// are the tensors found by value.
#[test]
fn genai_hooks_are_the_tensors_found_by_value_and_sums_their_skip_inputs() {
    let model = Model::load(&common::fixture("foreign/genai/model.onnx")).unwrap();
    let by_value = hooks_by_value("genai");
    for (hook, tensor) in &by_value {
        // resid_pre of L > 0 is resid_post of L - 1, a residual sum (below).
        if hook.contains("hook_resid_") && hook != "blocks.0.hook_resid_pre" {
            continue;
        }
        let site = locate(&model, HookPoint::parse(hook).unwrap()).unwrap();
        assert_eq!(Some(&site.tensor), tensor.as_ref(), "{hook}");
    }
    let text = std::fs::read_to_string(common::fixture("foreign/genai/residual.json")).unwrap();
    let residual: serde_json::Value = serde_json::from_str(&text).unwrap();
    for part in ["resid_mid", "resid_post"] {
        let entries = residual[part].as_object().unwrap();
        assert_eq!(entries.len(), 3);
        for (hook, entry) in entries {
            let site = locate(&model, HookPoint::parse(hook).unwrap()).unwrap();
            assert_eq!(site.tensor, entry["skip_input"].as_str().unwrap(), "{hook}");
            assert_eq!(
                site.only_reader,
                Some((entry["node"].as_str().unwrap().to_owned(), 1)),
                "{hook}"
            );
        }
    }
}

/// A copy of the renamed torchscript graph whose metadata claims `layers` decoder layers.
fn with_layer_metadata(dir: &Path, layers: &str) -> std::path::PathBuf {
    let mut model = Model::load(&common::fixture("foreign/variants/torchscript_renamed.onnx")).unwrap();
    model.set_metadata("num_hidden_layers", layers);
    let path = dir.join("claims.onnx");
    model.save(&path, &SaveOptions::default()).unwrap();
    path
}

fn patch_cli(model: &Path, csv: &Path, out: &Path) -> String {
    let run = Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args([
            "patch",
            "--csv",
            csv.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ])
        .args(["-o", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!run.status.success(), "patch succeeded");
    assert!(!out.exists(), "nothing is written on error");
    String::from_utf8_lossy(&run.stderr).into_owned()
}

#[test]
fn a_layer_count_the_metadata_contradicts_is_refused_showing_both() {
    let tmp = tempfile::tempdir().unwrap();
    let claims4 = with_layer_metadata(tmp.path(), "4");
    let csv = tmp.path().join("plan.csv");
    let sae = common::fixture("steer/sae_res");
    std::fs::write(
        &csv,
        format!(
            "latent_idx,steering_coefficient,sae_release,sae_id,description\n17,8.0,{},,x\n",
            sae.display()
        ),
    )
    .unwrap();
    let stderr = patch_cli(&claims4, &csv, &tmp.path().join("out.onnx"));
    assert!(
        stderr.contains("plan.csv:2")
            && stderr.contains("num_hidden_layers = 4")
            && stderr.contains("3 layers"),
        "{stderr}"
    );
    // The same graph claiming the count it has is steered.
    let ok = tmp.path().join("ok");
    std::fs::create_dir(&ok).unwrap();
    let claims3 = with_layer_metadata(&ok, "3");
    assert!(locate(&Model::load(&claims3).unwrap(), HookPoint::resid_post(1)).is_ok());
}

#[test]
fn a_hook_past_the_layers_found_names_the_plan_line_and_the_count() {
    let tmp = tempfile::tempdir().unwrap();
    let csv = tmp.path().join("plan.csv");
    let sae = common::fixture("steer/sae_res");
    std::fs::write(
        &csv,
        format!(
            "loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description\n\
             sae_lens,add,{},layers.1,17,8.0,,,fine\n\
             sae_lens,add,{},layers.5,17,8.0,,,past the end\n",
            sae.display(),
            sae.display()
        ),
    )
    .unwrap();
    let model = common::fixture("foreign/variants/torchscript_renamed.onnx");
    let stderr = patch_cli(&model, &csv, &tmp.path().join("out.onnx"));
    assert!(
        stderr.contains("plan.csv:3") && stderr.contains("has 3 layers") && stderr.contains("blocks.5"),
        "{stderr}"
    );
}
