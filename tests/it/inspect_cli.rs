//! `sae-onnx inspect` through the real binary: a hand-built model with external data, models written
//! by the Python `onnx` package (also run in ONNX Runtime against onnxruntime's own output), and bad
//! input giving an `error:` line instead of a panic.

use crate::common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use common::*;
use sae_onnx::onnx::make::make_opsetid;
use sae_onnx::onnx::{ExternalDataPolicy, MS_DOMAIN, Model, OPSET, SaveOptions};
use serde_json::{Value, json};

fn sae_onnx(args: &[&str], cwd: Option<&Path>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_sae-onnx"));
    cmd.args(args).env("RUST_BACKTRACE", "0");
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    cmd.output().expect("the binary starts")
}

/// Runs `inspect` and returns stdout, failing with stderr if it did not succeed.
fn inspect(args: &[&str], cwd: Option<&Path>) -> String {
    let out = sae_onnx(&[&["inspect"], args].concat(), cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "inspect {args:?} failed: {stderr}");
    assert!(stderr.is_empty(), "nothing on stderr when all is well: {stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn inspect_json(path: &Path) -> Value {
    let text = inspect(&[path.to_str().unwrap(), "--json"], None);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("--json prints JSON ({e}): {text}"))
}

/// The MLP with two opsets, metadata (one value long enough to be shortened) and all its weights in
/// `mlp.onnx.data`.
fn hand_built(dir: &Path) -> std::path::PathBuf {
    let mut proto = mlp();
    proto.opset_import = vec![make_opsetid("", OPSET), make_opsetid(MS_DOMAIN, 1)];
    let mut model = Model::new(proto);
    model.set_metadata("sae_onnx.note", "hand-built for inspect");
    model.set_metadata("long", &"é".repeat(150));
    let path = dir.join("mlp.onnx");
    let options = SaveOptions {
        external: ExternalDataPolicy::Always { min_bytes: 0 },
        progress: false,
    };
    let report = model.save(&path, &options).unwrap();
    assert!(report.data_file.is_some());
    path
}

#[test]
fn text_report_of_a_hand_built_model_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = hand_built(dir.path());
    let data_bytes = fs::metadata(dir.path().join("mlp.onnx.data")).unwrap().len();
    assert_eq!(
        data_bytes,
        4096 + 12 + sae_onnx::onnx::datafile::TRAILER_LEN,
        "W at offset 0, b at the next 4096-byte boundary, then the trailer"
    );
    let text = inspect(&[path.to_str().unwrap()], None);
    let lines: Vec<&str> = text.lines().collect();
    let has = |needle: &str| assert!(text.contains(needle), "the report mentions {needle:?}:\n{text}");
    assert!(lines[0].starts_with(&path.display().to_string()), "{text}");
    has(&format!(
        "IR version 10, opsets ai.onnx={OPSET} com.microsoft=1, producer 'sae-onnx {}'",
        env!("CARGO_PKG_VERSION")
    ));
    let line_of = |prefix: &str| {
        lines
            .iter()
            .find(|l| l.trim_start().starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?}:\n{text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line_of("x "), "x float32 [batch, 4]");
    assert_eq!(line_of("y "), "y float32 [batch, 3]");
    has("graph: 3 nodes (Add 1, MatMul 1, Relu 1)");
    has("weights: 15 parameters in 2 initializers, 60 B");
    has("external data:");
    assert_eq!(
        line_of("mlp.onnx.data"),
        "mlp.onnx.data 4.1 KiB (2 tensors, 60 B referenced)"
    );
    let record = lines
        .iter()
        .skip_while(|l| !l.trim_start().starts_with("mlp.onnx.data"))
        .nth(1)
        .unwrap();
    assert!(
        record.contains(&format!(
            "matches the graph's record: {data_bytes} bytes, content hash "
        )),
        "{text}"
    );
    has("metadata:");
    has("  sae_onnx.note: hand-built for inspect");
    // 150 two-byte characters: shown up to a character boundary at 200 bytes, with the full size.
    has(&format!("  long: {}… (300 bytes)", "é".repeat(100)));
}

#[test]
fn json_report_of_a_hand_built_model_with_external_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = hand_built(dir.path());
    let report = inspect_json(&path);
    assert_eq!(report["path"], path.to_str().unwrap());
    assert_eq!(report["file_bytes"], fs::metadata(&path).unwrap().len());
    assert_eq!(report["ir_version"], 10);
    assert_eq!(
        report["opsets"],
        json!([{"domain": "", "version": OPSET}, {"domain": "com.microsoft", "version": 1}])
    );
    assert_eq!(
        report["inputs"],
        json!([{"name": "x", "dtype": "float32", "shape": ["batch", 4]}])
    );
    assert_eq!(
        report["outputs"],
        json!([{"name": "y", "dtype": "float32", "shape": ["batch", 3]}])
    );
    assert_eq!(report["nodes"], 3);
    assert_eq!(report["op_types"], json!({"Add": 1, "MatMul": 1, "Relu": 1}));
    assert_eq!(report["initializers"], 2);
    assert_eq!(report["parameters"], (W.len() + B.len()) as u64);
    assert_eq!(report["weight_bytes"], 4 * (W.len() + B.len()) as u64);
    assert_eq!(
        report["external_data"],
        json!([{
            "location": "mlp.onnx.data",
            "file_bytes": fs::metadata(dir.path().join("mlp.onnx.data")).unwrap().len(),
            "tensors": 2,
            "referenced_bytes": 60,
            "record": sae_onnx::onnx::Model::load(&path).unwrap().data_records().unwrap()["mlp.onnx.data"],
        }])
    );
    assert!(
        report["external_data"][0]["record"]["xxh3_128"]
            .as_str()
            .unwrap()
            .len()
            == 32,
        "{report}"
    );
    assert_eq!(report["metadata"]["sae_onnx.note"], "hand-built for inspect");
    assert_eq!(
        report["metadata"]["long"],
        "é".repeat(150),
        "JSON carries metadata whole"
    );
}

#[test]
fn inline_model_and_relative_paths() {
    // An inline model has no external data section; a bare file name run from the model's folder
    // resolves external data against that folder.
    let dir = tempfile::tempdir().unwrap();
    let inline = dir.path().join("inline.onnx");
    Model::new(mlp()).save(&inline, &SaveOptions::default()).unwrap();
    let text = inspect(&[inline.to_str().unwrap()], None);
    assert!(
        !text.contains("external data") && !text.contains("metadata:"),
        "{text}"
    );
    assert_eq!(inspect_json(&inline)["external_data"], json!([]));

    hand_built(dir.path());
    let text = inspect(&["mlp.onnx"], Some(dir.path()));
    assert!(text.starts_with("mlp.onnx ("), "{text}");
    assert!(text.contains("mlp.onnx.data"), "{text}");
}

fn python_fixture(name: &str) -> std::path::PathBuf {
    let path = fixture("python_onnx").join(name);
    assert!(
        path.exists(),
        "{} is missing: regenerate it with tests/fixtures/regen.sh",
        path.display()
    );
    path
}

#[test]
fn json_report_of_models_written_by_python_onnx() {
    for (name, external) in [
        ("mlp.onnx", None),
        ("mlp_external.onnx", Some("mlp_external.onnx.data")),
    ] {
        let path = python_fixture(name);
        let report = inspect_json(&path);
        assert_eq!(report["ir_version"], 10, "{name}");
        assert_eq!(report["opsets"], json!([{"domain": "", "version": 17}]), "{name}");
        assert_eq!(report["producer"], "sae-onnx-fixtures 1", "{name}");
        assert_eq!(
            report["inputs"],
            json!([{"name": "x", "dtype": "float32", "shape": ["batch", 4]}])
        );
        assert_eq!(
            report["outputs"],
            json!([{"name": "y", "dtype": "float32", "shape": ["batch", 3]}])
        );
        assert_eq!(report["nodes"], 3);
        assert_eq!(report["parameters"], 15);
        assert_eq!(report["weight_bytes"], 60);
        assert_eq!(report["metadata"]["fixture_kind"], "mlp");
        assert_eq!(
            report["metadata"]["producer_note"],
            "made by tests/fixtures/python_onnx/make_models.py"
        );
        match external {
            None => assert_eq!(report["external_data"], json!([])),
            Some(location) => {
                let size = fs::metadata(path.with_file_name(location)).unwrap().len();
                assert_eq!(
                    report["external_data"],
                    json!([{"location": location, "file_bytes": size, "tensors": 2, "referenced_bytes": 60, "record": null}])
                );
            }
        }
    }
}

#[test]
fn text_report_of_a_model_written_by_python_onnx() {
    let path = python_fixture("mlp_external.onnx");
    let text = inspect(&[path.to_str().unwrap()], None);
    for needle in [
        "IR version 10, opsets ai.onnx=17, producer 'sae-onnx-fixtures 1'",
        "[batch, 4]",
        "15 parameters in 2 initializers",
        "mlp_external.onnx.data",
        "(2 tensors, 60 B referenced)",
        "fixture_kind: mlp",
    ] {
        assert!(text.contains(needle), "{needle:?} in:\n{text}");
    }
}

#[test]
fn python_models_run_in_onnx_runtime_as_in_python() {
    let expected: Value =
        serde_json::from_str(&fs::read_to_string(python_fixture("mlp_expected.json")).unwrap()).unwrap();
    let flat = |key: &str| -> Vec<f32> {
        expected[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect()
    };
    let shape = |key: &str| -> Vec<i64> {
        expected[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect()
    };
    let (x, y) = (flat("x"), flat("y"));
    assert_eq!(y.len(), 9);
    assert!(
        y.iter().any(|&v| v > 0.0) && y.contains(&0.0),
        "the golden exercises the ReLU"
    );
    for name in ["mlp.onnx", "mlp_external.onnx"] {
        let (out_shape, out) = run_f32(&python_fixture(name), "x", &shape("x_shape"), x.clone());
        assert_eq!(out_shape, shape("y_shape"), "{name}");
        // Inputs and weights are multiples of 1/8: float32 sums them exactly, as Python did.
        assert_close(&out, &y, 0.0);
    }
}

/// Bad input must end with exit status 1, one `error:` line naming the file, and no panic.
fn assert_clean_error(args: &[&str], names: &str, cause: &str) {
    for json in [false, true] {
        let mut all = vec!["inspect"];
        all.extend_from_slice(args);
        if json {
            all.push("--json");
        }
        let out = sae_onnx(&all, None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{all:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{all:?} printed a report");
        assert!(!stderr.contains("panicked"), "{all:?} panicked: {stderr}");
        assert!(stderr.starts_with("error: "), "{all:?}: {stderr}");
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{all:?}: one line: {stderr}"
        );
        assert!(
            stderr.contains(names),
            "{all:?}: the error names {names}: {stderr}"
        );
        assert!(
            stderr.contains(cause),
            "{all:?}: the error says {cause:?}: {stderr}"
        );
    }
}

#[test]
fn bad_input_is_an_error_line_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    assert_clean_error(&[&p("missing.onnx")], "missing.onnx", "No such file");
    assert_clean_error(
        &[dir.path().to_str().unwrap()],
        dir.path().to_str().unwrap(),
        "folder",
    );

    fs::write(p("empty.onnx"), b"").unwrap();
    assert_clean_error(&[&p("empty.onnx")], "empty.onnx", "empty");
    fs::write(p("junk.onnx"), b"this is not a protobuf at all").unwrap();
    assert_clean_error(&[&p("junk.onnx")], "junk.onnx", "not a valid ONNX model");

    let bytes = fs::read(python_fixture("mlp.onnx")).unwrap();
    let mut undecodable = 0;
    for cut in [1, 10, 50, bytes.len() / 2, bytes.len() - 20, bytes.len() - 1] {
        let path = p(&format!("cut{cut}.onnx"));
        fs::write(&path, &bytes[..cut]).unwrap();
        let out = sae_onnx(&["inspect", &path], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A cut on a field boundary can still decode; then inspect must either report on what
        // is there or refuse it, and never panic.
        assert!(!stderr.contains("panicked"), "cut at {cut}: {stderr}");
        if !out.status.success() {
            undecodable += 1;
            assert_clean_error(&[&path], &format!("cut{cut}.onnx"), "");
        }
    }
    assert!(
        undecodable >= 4,
        "most truncations are detected ({undecodable} of 6)"
    );

    // A model whose external data file did not come along.
    let lonely = dir.path().join("lonely");
    fs::create_dir(&lonely).unwrap();
    fs::copy(
        python_fixture("mlp_external.onnx"),
        lonely.join("mlp_external.onnx"),
    )
    .unwrap();
    assert_clean_error(
        &[lonely.join("mlp_external.onnx").to_str().unwrap()],
        "mlp_external.onnx.data",
        "missing",
    );
    // ... or came along truncated.
    fs::write(lonely.join("mlp_external.onnx.data"), [0u8; 20]).unwrap();
    assert_clean_error(
        &[lonely.join("mlp_external.onnx").to_str().unwrap()],
        "mlp_external.onnx",
        "truncated",
    );
}

/// A foreign graph: the decoder recovered from its data flow, every hook with its tensor, and for
/// fused residual sums the one reader steered (genai/residual.json, measured by make_foreign.py).
#[test]
fn foreign_graphs_show_the_recovered_decoder() {
    let renamed = common::fixture("foreign/variants/torchscript_renamed.onnx");
    let text = inspect(&[renamed.to_str().unwrap()], None);
    assert!(text.contains("decoder (recovered from the data flow"), "{text}");
    assert!(
        text.contains("decoder layers: 3; hook points found: 19 (3 resid_post)"),
        "{text}"
    );

    let genai = inspect_json(&common::fixture("foreign/genai/model.onnx"));
    assert_eq!(genai["decoder"]["layers"], 3);
    assert_eq!(
        genai["decoder"]["stream_start"],
        "/model/embed_tokens/Mul/output_0"
    );
    assert_eq!(genai["decoder"]["missing"], json!([]));
    let post1 = genai["hooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["hook"] == "blocks.1.hook_resid_post")
        .unwrap();
    assert_eq!(
        post1["tensor"],
        "/model/layers.1/post_feedforward_layernorm/output_0"
    );
    assert_eq!(
        post1["reader"],
        "input 1 of node /model/layers.2/input_layernorm/SkipLayerNorm"
    );
}

/// A graph that is no decoder says which structural fact is missing, and lists no hooks.
#[test]
fn graphs_without_a_decoder_say_why() {
    let tmp = tempfile::tempdir().unwrap();
    let mlp = hand_built(tmp.path());
    let text = inspect(&[mlp.to_str().unwrap()], None);
    assert!(
        text.contains("decoder: not recovered from the data flow"),
        "{text}"
    );
    let report = inspect_json(&mlp);
    assert!(
        report["decoder"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("no embedding lookup")),
        "{report}"
    );
    assert_eq!(report["hooks"], json!([]));
}
