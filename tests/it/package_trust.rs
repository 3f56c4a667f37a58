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

    // Rows steered by the prompt boundary, an input neither runtime's generator feeds.
    let boundary = dir.join("boundary.onnx");
    common::succeeded(&sae_onnx(&[
        "patch",
        "--csv",
        "tests/fixtures/steer_positions/generated.csv",
        "--model",
        path(&kv),
        "-o",
        path(&boundary),
    ]));
    for format in ["genai", "transformers.js"] {
        let run = sae_onnx(&["package", path(&boundary), "--format", format, "-o", path(&out)]);
        common::failed(
            &run,
            &[
                "boundary.onnx",
                "positions",
                "generated",
                "steer.prompt_length",
                format,
            ],
        );
    }
    std::fs::remove_file(&boundary).unwrap();
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

/// A package's plain coefficient inputs still run in sae-onnx: `generate` feeds them their
/// steer.csv values (transformers' steered tokens), or what the caller sets (0: the plain ones).
#[test]
fn generate_feeds_a_packaged_models_coefficients_their_steer_csv_values() {
    use common::golden::Golden;
    use sae_onnx::infer::generate::{GenerateOptions, Generator};
    use sae_onnx::infer::runtime::ScalarFeed;
    use sae_onnx::onnx::DataType;

    let tmp = tempfile::tempdir().unwrap();
    let (base, sweepable, out) = (
        tmp.path().join("g.onnx"),
        tmp.path().join("sw.onnx"),
        tmp.path().join("pkg"),
    );
    common::succeeded(&sae_onnx(&[
        "export",
        "tests/fixtures/gemma/gemma",
        "-o",
        path(&base),
        "--kv-cache",
    ]));
    let csv = "tests/fixtures/steer/case_a.csv";
    common::succeeded(&sae_onnx(&[
        "patch",
        "--csv",
        csv,
        "--model",
        path(&base),
        "-o",
        path(&sweepable),
        "--sweepable",
    ]));
    common::succeeded(&sae_onnx(&[
        "package",
        path(&sweepable),
        "--format",
        "genai",
        "-o",
        path(&out),
    ]));
    let options = GenerateOptions {
        max_new_tokens: 24,
        ..Default::default()
    };
    let mut generator = Generator::open(&out.join("model.onnx"), &options).unwrap();
    for (name, feed) in [("golden_gemma_steered", None), ("golden_gemma", Some(0.0))] {
        if let Some(value) = feed {
            generator.set_feeds(vec![ScalarFeed {
                name: "steer.coeff.0".into(),
                value,
                dtype: DataType::Float,
            }]);
        }
        let golden = Golden::load(&common::fixture(&format!("generate/{name}.safetensors")));
        for p in 0..3 {
            let prompt: Vec<u32> = golden
                .i64s(&format!("p{p}.prompt_ids"))
                .1
                .iter()
                .map(|&t| t as u32)
                .collect();
            let expected: Vec<u32> = golden
                .i64s(&format!("p{p}.generated_ids"))
                .1
                .iter()
                .map(|&t| t as u32)
                .collect();
            let generation = generator.generate(&prompt, &options, |_| {}).unwrap();
            assert_eq!(generation.tokens, expected, "{name} prompt {p}");
        }
    }
}

/// `--format llama.cpp` refuses steering a control vector cannot express (a fixed vector added
/// to decoder layer L's output, L >= 1, at every position), from the model's record and from
/// --csv alike, and writes nothing.
#[test]
fn llama_cpp_refuses_steering_it_cannot_express_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let base = dir.join("base.onnx");
    common::succeeded(&sae_onnx(&["export", "models/tiny-gemma2", "-o", path(&base)]));
    let out = dir.join("out.gguf");
    let sae = "models/tiny-gemma2/sae";
    let seed = "latent_idx,steering_coefficient,sae_release,sae_id,description";
    let lm_eval = "loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description";
    let cases = [
        (
            format!("{seed},action\n7,5.0,{sae},,x,clamp\n"),
            vec!["action clamp", "only `add` rows"],
        ),
        (
            format!("{lm_eval}\nsae_lens,add,{sae},blocks.2.hook_resid_pre,7,5.0,,,x\n"),
            vec!["blocks.2.hook_resid_pre", "blocks.L.hook_resid_post"],
        ),
        (
            format!("{lm_eval}\nsae_lens,add,{sae},layers.0,7,5.0,,,x\n"),
            vec![
                "blocks.0.hook_resid_post",
                "cannot steer decoder layer 0",
                "layers 1..n_layer-1",
            ],
        ),
        (
            format!("{seed},positions\n7,5.0,{sae},,x,2:5\n"),
            vec!["positions 2:5", "every position"],
        ),
        (
            format!("{seed},normalize\n7,5.0,{sae},,x,residual\n"),
            vec!["normalize residual", "normalize none or unit"],
        ),
    ];
    for (i, (csv_text, wanted)) in cases.iter().enumerate() {
        let csv = dir.join(format!("case{i}.csv"));
        std::fs::write(&csv, csv_text).unwrap();
        let steered = dir.join(format!("case{i}.onnx"));
        common::succeeded(&sae_onnx(&[
            "patch",
            "--csv",
            path(&csv),
            "--model",
            path(&base),
            "-o",
            path(&steered),
        ]));
        let run = sae_onnx(&[
            "package",
            path(&steered),
            "--format",
            "llama.cpp",
            "-o",
            path(&out),
        ]);
        common::failed(&run, wanted);
        let run = sae_onnx(&[
            "package",
            path(&base),
            "--format",
            "llama.cpp",
            "--csv",
            path(&csv),
            "-o",
            path(&out),
        ]);
        common::failed(&run, wanted);
        assert!(!out.exists(), "case {i} wrote {}", out.display());
    }

    let run = sae_onnx(&["package", path(&base), "--format", "llama.cpp", "-o", path(&out)]);
    common::failed(&run, &["no steering to package", "patch", "--csv"]);

    let sweepable = dir.join("sweepable.onnx");
    common::succeeded(&sae_onnx(&[
        "patch",
        "--csv",
        "models/tiny-gemma2/steer.csv",
        "--model",
        path(&base),
        "-o",
        path(&sweepable),
        "--sweepable",
    ]));
    let run = sae_onnx(&[
        "package",
        path(&sweepable),
        "--format",
        "llama.cpp",
        "-o",
        path(&out),
    ]);
    common::failed(&run, &["sweepable", "steer.coeff.0", "--csv"]);
    assert!(!out.exists());

    let run = sae_onnx(&[
        "package",
        path(&base),
        "--format",
        "genai",
        "--csv",
        "models/tiny-gemma2/steer.csv",
        "-o",
        path(&out),
    ]);
    common::failed(&run, &["--csv is for --format llama.cpp"]);

    // An existing OUT is kept without --force, replaced with it; the model itself never.
    std::fs::write(&out, "keep").unwrap();
    let package = |force: bool, to: &std::path::Path| {
        let mut args = vec![
            "package",
            path(&base),
            "--format",
            "llama.cpp",
            "--csv",
            "models/tiny-gemma2/steer.csv",
            "-o",
            path(to),
        ];
        if force {
            args.push("--force");
        }
        sae_onnx(&args)
    };
    common::failed(&package(false, &out), &["already exists", "--force"]);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep");
    common::failed(&package(true, &base), &["an input of this command"]);
    common::succeeded(&package(true, &out));
    assert_eq!(&std::fs::read(&out).unwrap()[..4], b"GGUF");
}
