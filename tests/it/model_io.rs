//! Saving and loading models: inline and external data round trips, ONNX Runtime executing what we
//! wrote, sharing/linking data files, atomic writes, and bad files giving errors instead of panics.

use crate::common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use sae_onnx::onnx::external::ExternalData;
use sae_onnx::onnx::{ExternalDataPolicy, Model, SaveOptions};

fn external(min_bytes: u64) -> SaveOptions {
    SaveOptions {
        external: ExternalDataPolicy::Always { min_bytes },
        progress: false,
    }
}

#[test]
fn inline_round_trip_runs_in_onnx_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.onnx");
    let report = Model::new(mlp()).save(&path, &SaveOptions::default()).unwrap();
    assert!(
        report.data_file.is_none(),
        "a small model stays inline under the Auto policy"
    );
    let loaded = Model::load(&path).unwrap();
    assert_eq!(loaded.proto, mlp(), "what we load is what we saved");
    let x = vec![1.0, 2.0, -1.0, 0.5, -0.5, 0.0, 3.0, 1.0];
    let (shape, y) = run_f32(&path, "x", &[2, 4], x.clone());
    assert_eq!(shape, vec![2, 3]);
    assert_close(&y, &mlp_expected(&x), 1e-6);
}

#[test]
fn external_round_trip_is_aligned_relative_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.onnx");
    let report = Model::new(mlp()).save(&path, &external(0)).unwrap();
    let (data_path, size) = report.data_file.expect("tensors were externalized");
    assert_eq!(data_path, dir.path().join("mlp.onnx.data"));
    assert_eq!(fs::metadata(&data_path).unwrap().len(), size);

    let loaded = Model::load(&path).unwrap();
    for t in &loaded.graph().initializer {
        let record = ExternalData::of(t).unwrap().expect("external");
        assert_eq!(
            record.location, "mlp.onnx.data",
            "locations are relative file names"
        );
        assert_eq!(record.offset % 4096, 0, "offsets are 4096-aligned");
        assert!(t.raw_data.is_none());
    }
    let w = loaded
        .graph()
        .initializer
        .iter()
        .find(|t| t.name() == "W")
        .unwrap();
    let bytes = loaded.tensor_bytes(w).unwrap();
    let values: Vec<f32> = bytes
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(values, W);

    let x = vec![0.3, -0.7, 1.1, 2.0];
    let (_, y) = run_f32(&path, "x", &[1, 4], x.clone());
    assert_close(&y, &mlp_expected(&x), 1e-6);
}

#[test]
fn copies_share_or_link_the_data_file_and_never_touch_the_input() {
    let base_dir = tempfile::tempdir().unwrap();
    let base = base_dir.path().join("base.onnx");
    Model::new(mlp()).save(&base, &external(0)).unwrap();
    let base_data = base_dir.path().join("base.onnx.data");
    let before = (fs::read(&base).unwrap(), fs::read(&base_data).unwrap());

    let mut model = Model::load(&base).unwrap();
    model.set_metadata("note", "edited");
    let beside = base_dir.path().join("edited.onnx");
    let report = model.save(&beside, &SaveOptions::default()).unwrap();
    assert_eq!(
        report.shared,
        vec![base_data.clone()],
        "same folder: the data file is shared"
    );
    assert!(report.data_file.is_none() && report.linked.is_empty() && report.copied.is_empty());
    assert!(!base_dir.path().join("edited.onnx.data").exists());

    let other_dir = tempfile::tempdir().unwrap();
    let elsewhere = other_dir.path().join("edited.onnx");
    let report = model.save(&elsewhere, &SaveOptions::default()).unwrap();
    let placed = other_dir.path().join("base.onnx.data");
    assert_eq!(report.linked.len() + report.copied.len(), 1);
    assert_eq!(fs::read(&placed).unwrap(), before.1);
    if !report.linked.is_empty() {
        assert_eq!(
            fs::metadata(&placed).unwrap().ino(),
            fs::metadata(&base_data).unwrap().ino()
        );
    }

    let x = vec![1.0, 1.0, 1.0, 1.0];
    for path in [&beside, &elsewhere] {
        let (_, y) = run_f32(path, "x", &[1, 4], x.clone());
        assert_close(&y, &mlp_expected(&x), 1e-6);
        assert_eq!(Model::load(path).unwrap().metadata("note"), Some("edited"));
    }
    assert_eq!(
        (fs::read(&base).unwrap(), fs::read(&base_data).unwrap()),
        before,
        "the input is untouched"
    );
}

#[test]
fn saving_over_the_input_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    Model::new(mlp()).save(&path, &external(0)).unwrap();
    let before = fs::read(&path).unwrap();
    let model = Model::load(&path).unwrap();
    let err = model.save(&path, &SaveOptions::default()).unwrap_err();
    assert!(
        format!("{err:#}").contains("refusing to overwrite the input"),
        "{err:#}"
    );
    let err = model
        .save(&dir.path().join("m.onnx.data"), &SaveOptions::default())
        .unwrap_err();
    assert!(format!("{err:#}").contains("refusing"), "{err:#}");
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn a_failed_save_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    // The output name is taken by a non-empty folder, so the final rename must fail after the
    // data file and the temporary model were written.
    let blocked = dir.path().join("out.onnx");
    fs::create_dir(&blocked).unwrap();
    fs::write(blocked.join("keep"), b"x").unwrap();
    let err = Model::new(mlp()).save(&blocked, &external(0)).unwrap_err();
    assert!(format!("{err:#}").contains("cannot write"), "{err:#}");
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        vec!["out.onnx".to_owned()],
        "no data file and no temporary files remain"
    );
}

#[test]
fn large_models_go_external_automatically() {
    // Not 2 GiB in a test: check the decision boundary through the policy instead, and that a
    // protobuf over the limit is refused rather than written when external data is forbidden.
    let dir = tempfile::tempdir().unwrap();
    let mut proto = mlp();
    let big = vec![0u8; 8 << 20];
    proto
        .graph
        .as_mut()
        .unwrap()
        .initializer
        .push(sae_onnx::onnx::make::make_tensor(
            "unused_big",
            sae_onnx::onnx::DataType::Uint8,
            &[big.len() as i64],
            big,
        ));
    let report = Model::new(proto)
        .save(&dir.path().join("m.onnx"), &external(1 << 20))
        .unwrap();
    let (_, size) = report.data_file.unwrap();
    assert_eq!(
        size,
        (8 << 20) + sae_onnx::onnx::datafile::TRAILER_LEN,
        "only the tensor above the threshold moved"
    );
    assert!(report.model_bytes < 4096);
}

#[test]
fn corrupt_and_truncated_files_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.onnx");
    Model::new(mlp()).save(&good, &SaveOptions::default()).unwrap();
    let bytes = fs::read(&good).unwrap();
    let bad = dir.path().join("bad.onnx");
    for cut in [1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        fs::write(&bad, &bytes[..cut]).unwrap();
        assert!(
            Model::load(&bad).is_err(),
            "a file cut at {cut} bytes must not load"
        );
    }
    for junk in [&b""[..], b"not an onnx file at all", &[0xff; 64]] {
        fs::write(&bad, junk).unwrap();
        let err = Model::load(&bad).unwrap_err();
        assert!(
            format!("{err:#}").contains("bad.onnx"),
            "errors name the file: {err:#}"
        );
    }
    assert!(Model::load(dir.path()).is_err(), "a folder is not a model");
    assert!(Model::load(&dir.path().join("missing.onnx")).is_err());
}

#[test]
fn unsafe_or_broken_external_data_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    Model::new(mlp()).save(&path, &external(0)).unwrap();
    let model = Model::load(&path).unwrap();

    let cases = [
        ("../escape.bin", "contains '..'"),
        ("/etc/hostname", "absolute"),
        ("missing.bin", "missing"),
    ];
    for (location, expected) in cases {
        let mut bad = model.clone();
        let w = &mut bad.graph_mut().initializer[0];
        let mut record = ExternalData::of(w).unwrap().unwrap();
        record.location = location.to_owned();
        record.apply_to(w);
        let bad_path = dir.path().join("bad.onnx");
        fs::write(&bad_path, prost::Message::encode_to_vec(&bad.proto)).unwrap();
        let err = format!("{:#}", Model::load(&bad_path).unwrap_err());
        assert!(err.contains(expected), "{location}: {err}");
    }

    // A data file shorter than the tensors it should hold.
    let data = dir.path().join("m.onnx.data");
    let len = fs::metadata(&data).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    let err = format!("{:#}", Model::load(&path).unwrap_err());
    assert!(err.contains("truncated"), "{err}");
}

#[test]
fn saved_files_get_the_permissions_of_ordinary_new_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let ordinary = dir.path().join("ordinary");
    fs::write(&ordinary, b"x").unwrap();
    let expected = fs::metadata(&ordinary).unwrap().permissions().mode() & 0o777;
    let path = dir.path().join("m.onnx");
    Model::new(mlp()).save(&path, &external(0)).unwrap();
    for file in [path.clone(), dir.path().join("m.onnx.data")] {
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(
            mode,
            expected,
            "{}: {mode:o}, not the umask's {expected:o}",
            file.display()
        );
    }
}
