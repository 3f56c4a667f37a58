//! A graph and its external data file stay a matched pair: a graph whose data file was rewritten
//! after it was saved (a re-export of the base model a steered model shares, another export to
//! the same path, a swapped file) refuses to load with an error naming both files and the fix,
//! instead of evaluating to wrong numbers. Temporary files of killed runs are cleaned up.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::onnx::Model;
use sae_onnx::onnx::datafile::TRAILER_LEN;

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/tiny-gemma2");

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .arg("-q")
        .output()
        .expect("the binary runs")
}

fn ok(args: &[&str]) {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn export(checkpoint: &Path, out: &Path, force: bool) {
    let mut args = vec![
        "export",
        checkpoint.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    if force {
        args.push("--force");
    }
    ok(&args);
}

/// The demo checkpoint with one byte of its largest tensor changed: the same shapes, other weights.
fn altered_checkpoint(dir: &Path) -> PathBuf {
    let copy = dir.join("altered");
    fs::create_dir(&copy).unwrap();
    for entry in fs::read_dir(DEMO).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            fs::copy(entry.path(), copy.join(entry.file_name())).unwrap();
        }
    }
    let path = copy.join("model.safetensors");
    let mut bytes = fs::read(&path).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let (_, begin) = header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .map(|(_, t)| {
            let offsets = &t["data_offsets"];
            let (b, e) = (offsets[0].as_u64().unwrap(), offsets[1].as_u64().unwrap());
            (e - b, b)
        })
        .max()
        .unwrap();
    // The high byte of the first element of the largest tensor (an externalized weight).
    let at = 8 + header_len + begin as usize + 3;
    bytes[at] ^= 0x01;
    fs::write(&path, bytes).unwrap();
    copy
}

fn load_error(model: &Path) -> String {
    format!("{:#}", Model::load(model).expect_err("the model must not load"))
}

#[test]
fn a_steered_model_detects_a_re_export_of_the_base_it_shares() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("a.onnx");
    let steered = dir.path().join("s.onnx");
    export(Path::new(DEMO), &base, false);
    ok(&[
        "patch",
        "--csv",
        &format!("{DEMO}/steer.csv"),
        "--model",
        base.to_str().unwrap(),
        "-o",
        steered.to_str().unwrap(),
    ]);
    assert!(
        !dir.path().join("s.onnx.data").exists(),
        "s.onnx shares a.onnx.data"
    );
    let records = Model::load(&steered).unwrap().data_records().unwrap();
    assert!(
        records["a.onnx.data"].xxh3_128.is_some(),
        "patch carries the base's record forward: {records:?}"
    );

    // Re-exporting the same checkpoint writes the same bytes: s.onnx stays valid.
    export(Path::new(DEMO), &base, true);
    Model::load(&steered).unwrap();
    ok(&["inspect", steered.to_str().unwrap()]);

    // Another checkpoint of the same shapes: same data size, other weights.
    let altered = altered_checkpoint(dir.path());
    let size_before = fs::metadata(dir.path().join("a.onnx.data")).unwrap().len();
    export(&altered, &base, true);
    assert_eq!(
        fs::metadata(dir.path().join("a.onnx.data")).unwrap().len(),
        size_before,
        "only the content differs"
    );
    Model::load(&base).expect("the new base model matches its new data");
    let err = load_error(&steered);
    for needle in ["s.onnx", "a.onnx.data", "content hash", "Re-export", "patch"] {
        assert!(err.contains(needle), "the error mentions {needle:?}: {err}");
    }
    // Every command that opens the model says so, with a non-zero exit.
    for args in [
        vec!["inspect", steered.to_str().unwrap()],
        vec![
            "generate",
            steered.to_str().unwrap(),
            "--prompt",
            "a",
            "--max-new-tokens",
            "1",
        ],
        vec![
            "eval",
            steered.to_str().unwrap(),
            "--task",
            &format!("{DEMO}/demo_mc.yaml"),
            "--limit",
            "1",
        ],
    ] {
        let out = run(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            stderr.contains("a.onnx.data") && stderr.contains("Re-export"),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn a_data_file_swapped_for_another_of_the_same_size_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.onnx");
    let b = dir.path().join("b.onnx");
    export(Path::new(DEMO), &a, false);
    export(&altered_checkpoint(dir.path()), &b, false);
    let data = dir.path().join("a.onnx.data");
    let size = fs::metadata(&data).unwrap().len();

    // Another export's data file: a valid trailer, but another hash.
    fs::copy(dir.path().join("b.onnx.data"), &data).unwrap();
    assert_eq!(fs::metadata(&data).unwrap().len(), size);
    let err = load_error(&a);
    assert!(
        err.contains("a.onnx.data") && err.contains("content hash"),
        "{err}"
    );

    // A file of the same size without our trailer.
    fs::write(&data, vec![0u8; size as usize]).unwrap();
    let err = load_error(&a);
    assert!(err.contains("a.onnx.data") && err.contains("rewritten"), "{err}");

    // Cut short by the trailer only: every tensor is still in bounds, but not the recorded file.
    fs::copy(dir.path().join("b.onnx.data"), &data).unwrap();
    let file = fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.set_len(size - TRAILER_LEN).unwrap();
    let err = load_error(&a);
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn a_data_file_without_our_trailer_is_recorded_by_size() {
    // A graph from another tool (the reference `onnx` package) with external data: patching-
    // style edits copy it forward with a size-only record, so a later change of size is caught.
    let dir = tempfile::tempdir().unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/python_onnx");
    for name in ["mlp_external.onnx", "mlp_external.onnx.data"] {
        fs::copy(fixture.join(name), dir.path().join(name)).unwrap();
    }
    let foreign = Model::load(&dir.path().join("mlp_external.onnx")).unwrap();
    assert!(foreign.data_records().unwrap().is_empty());
    let edited = dir.path().join("edited.onnx");
    foreign
        .save(&edited, &sae_onnx::onnx::SaveOptions::default())
        .unwrap();
    let records = Model::load(&edited).unwrap().data_records().unwrap();
    let record = &records["mlp_external.onnx.data"];
    assert_eq!(
        (record.bytes, record.xxh3_128.as_deref()),
        (
            fs::metadata(dir.path().join("mlp_external.onnx.data"))
                .unwrap()
                .len(),
            None
        )
    );
    let mut grown = fs::read(dir.path().join("mlp_external.onnx.data")).unwrap();
    grown.extend([0u8; 8]);
    fs::write(dir.path().join("mlp_external.onnx.data"), grown).unwrap();
    let err = load_error(&edited);
    assert!(
        err.contains("edited.onnx") && err.contains("mlp_external.onnx.data"),
        "{err}"
    );
}

#[test]
fn temporary_files_of_a_killed_export_are_gone_after_the_next_run() {
    let dir = tempfile::tempdir().unwrap();
    // A writer that died: a real process, killed, whose id is free again.
    let mut child = Command::new("sleep").arg("60").spawn().unwrap();
    let pid = child.id();
    child.kill().unwrap();
    child.wait().unwrap();
    let host = sae_onnx::files::host_name();
    let leftovers = [
        dir.path().join(format!(".a.onnx.data.{pid}@{host}.Xy12ab.tmp")),
        dir.path().join(format!(".a.onnx.{pid}@{host}.Qz34cd.tmp")),
    ];
    for path in &leftovers {
        fs::write(path, vec![0u8; 4096]).unwrap();
    }
    export(Path::new(DEMO), &dir.path().join("a.onnx"), false);
    for path in &leftovers {
        assert!(!path.exists(), "{} was removed", path.display());
    }
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["a.onnx", "a.onnx.data"], "nothing else is left");
}

/// ONNX Runtime reads each tensor by offset and length, so the trailer after the last tensor
/// changes nothing: the same graph computes bit-identical logits with the trailer cut off. (Python
/// onnxruntime 1.31.1 and onnx 1.23.2 were checked the same way by hand: identical logits.)
#[test]
fn onnx_runtime_ignores_the_trailer() {
    use ort::value::Tensor;
    use sae_onnx::infer::runtime::{SessionOptions, session};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("a.onnx");
    export(Path::new(DEMO), &model, false);
    let cut_dir = dir.path().join("cut");
    fs::create_dir(&cut_dir).unwrap();
    fs::copy(&model, cut_dir.join("a.onnx")).unwrap();
    let data = fs::read(dir.path().join("a.onnx.data")).unwrap();
    fs::write(
        cut_dir.join("a.onnx.data"),
        &data[..data.len() - TRAILER_LEN as usize],
    )
    .unwrap();
    let logits = |path: &Path| -> Vec<f32> {
        let mut s = session(path, &SessionOptions::default()).unwrap();
        let ids = Tensor::from_array(([1usize, 5], vec![2i64, 65, 59, 177, 73])).unwrap();
        let mask = Tensor::from_array(([1usize, 5], vec![1i64; 5])).unwrap();
        let out = s
            .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask])
            .unwrap();
        out["logits"].try_extract_tensor::<f32>().unwrap().1.to_vec()
    };
    let with = logits(&model);
    assert!(with.iter().all(|v| v.is_finite()));
    assert_eq!(with, logits(&cut_dir.join("a.onnx")));
}

/// Two exports of different weights racing to one path: whatever interleaving wins, the graph
/// left there either loads with the data it was written with or is refused — never a graph that
/// loads with the other export's weights.
#[test]
fn concurrent_exports_to_one_path_never_leave_a_mismatched_pair() {
    let dir = tempfile::tempdir().unwrap();
    let altered = altered_checkpoint(dir.path());
    let hash_of = |checkpoint: &Path, name: &str| {
        let out = dir.path().join(name);
        export(checkpoint, &out, false);
        Model::load(&out).unwrap().data_records().unwrap()[&format!("{name}.data")]
            .xxh3_128
            .clone()
            .unwrap()
    };
    let hashes = [hash_of(Path::new(DEMO), "x.onnx"), hash_of(&altered, "y.onnx")];
    assert_ne!(hashes[0], hashes[1]);
    let out = dir.path().join("a.onnx");
    for _ in 0..6 {
        let children: Vec<_> = [Path::new(DEMO), altered.as_path()]
            .iter()
            .map(|ckpt| {
                Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
                    .args(["export", ckpt.to_str().unwrap(), "-o", out.to_str().unwrap()])
                    .args(["--force", "-q"])
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
        match Model::load(&out) {
            Ok(model) => {
                let record = &model.data_records().unwrap()["a.onnx.data"];
                assert!(hashes.contains(record.xxh3_128.as_ref().unwrap()));
            }
            Err(err) => {
                let err = format!("{err:#}");
                assert!(err.contains("Re-export") || err.contains("missing"), "{err}");
            }
        }
    }
}
