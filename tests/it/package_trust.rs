//! `package` on bad input: a clear error naming the problem and the fix, non-zero exit, and
//! nothing written (no OUT, no temporary folder left beside it, an existing OUT untouched).

use crate::common;

use std::path::Path;
use std::process::Command;

fn sae_onnx(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .output()
        .unwrap()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The folder holds exactly `names`: no package and no temporary folder appeared.
fn assert_only(dir: &Path, names: &[&str]) {
    let mut found: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    assert_eq!(found, names);
}

#[test]
fn package_refuses_bad_input_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let (kv, full) = (dir.join("kv.onnx"), dir.join("full.onnx"));
    let source = "tests/fixtures/gemma/gemma2";
    common::succeeded(&sae_onnx(&["export", source, "-o", path(&kv), "--kv-cache"]));
    common::succeeded(&sae_onnx(&["export", source, "-o", path(&full)]));
    let files = ["kv.onnx", "kv.onnx.data", "full.onnx", "full.onnx.data"];
    let out = dir.join("out");

    let run = sae_onnx(&["package", path(&kv), "--format", "tflite", "-o", path(&out)]);
    common::failed(&run, &["invalid value 'tflite'", "genai", "transformers.js"]);

    let run = sae_onnx(&["package", path(&full), "--format", "genai", "-o", path(&out)]);
    common::failed(
        &run,
        &["full.onnx", "full-sequence graph", "export", "--kv-cache"],
    );
    assert_only(dir, &files);

    // A checkpoint folder with a config but no tokenizer.
    let bare = tempfile::tempdir().unwrap();
    std::fs::copy(format!("{source}/config.json"), bare.path().join("config.json")).unwrap();
    let run = sae_onnx(&[
        "package",
        path(&kv),
        "--format",
        "genai",
        "-o",
        path(&out),
        "--checkpoint",
        path(bare.path()),
    ]);
    common::failed(
        &run,
        &["no tokenizer to package", "tokenizer.json", "--checkpoint"],
    );
    assert_only(dir, &files);

    // A sweepable model for transformers.js, whose generate() cannot feed its coefficients.
    let sweepable = dir.join("sweep.onnx");
    let csv = "tests/fixtures/steer/case_a.csv";
    common::succeeded(&sae_onnx(&[
        "patch",
        "--csv",
        csv,
        "--model",
        path(&kv),
        "-o",
        path(&sweepable),
        "--sweepable",
    ]));
    let run = sae_onnx(&[
        "package",
        path(&sweepable),
        "--format",
        "transformers.js",
        "-o",
        path(&out),
    ]);
    common::failed(&run, &["steer.coeff", "--coefficients fixed"]);
    std::fs::remove_file(&sweepable).unwrap();
    assert_only(dir, &files);

    // OUT is a file; OUT exists without --force; --force on a folder holding the model.
    std::fs::write(&out, "keep").unwrap();
    let run = sae_onnx(&[
        "package",
        path(&kv),
        "--format",
        "genai",
        "-o",
        path(&out),
        "--force",
    ]);
    common::failed(&run, &["is not a folder"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep");
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("mine.txt"), "keep").unwrap();
    let run = sae_onnx(&["package", path(&kv), "--format", "genai", "-o", path(&out)]);
    common::failed(&run, &["already exists", "--force"]);
    assert_only(&out, &["mine.txt"]);
    let run = sae_onnx(&[
        "package",
        path(&kv),
        "--format",
        "genai",
        "-o",
        path(dir),
        "--force",
    ]);
    common::failed(&run, &["refusing to replace", "an input of this command"]);
    let mut with_out = files.to_vec();
    with_out.push("out");
    assert_only(dir, &with_out);

    // And the same command with --force replaces OUT as a whole.
    common::succeeded(&sae_onnx(&[
        "package",
        path(&kv),
        "--format",
        "genai",
        "-o",
        path(&out),
        "--force",
    ]));
    assert_only(
        &out,
        &[
            "model.onnx",
            "model.onnx.data",
            "genai_config.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ],
    );
    assert_only(dir, &with_out);
}
