//! `sae-onnx compare` against the golden numbers of `tests/fixtures/compare/make_golden.py`
//! (scipy's binomtest, a bootstrap on Python's `random`) on real lm-eval output; the refusal of
//! runs that scored different documents; the sweep's x values; and the PNG `--plot` writes.

use crate::common::file_starting;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::compare::{self, CompareOptions, Run, Test};
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/compare")
}

/// The three lm-eval runs: unsteered, and steered with coefficients 8 and 32.
fn lm_eval_run(name: &str) -> PathBuf {
    fixtures().join("lm_eval").join(name)
}

fn sae_onnx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .arg("compare")
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary starts")
}

fn ok(args: &[&str]) -> (String, String) {
    let out = sae_onnx(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "compare {args:?} failed: {stderr}");
    (String::from_utf8(out.stdout).unwrap(), stderr)
}

/// The error line of a run that must fail (and not panic).
fn fails(args: &[&str]) -> String {
    let out = sae_onnx(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "compare {args:?} should fail");
    assert!(
        stderr.starts_with("error: "),
        "an error line, not a panic: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// A copy of a run folder (the results JSON and its samples) to alter.
fn copy_run(name: &str, to: &Path) -> PathBuf {
    let src = fs::read_dir(lm_eval_run(name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let dst = to.join(name);
    fs::create_dir_all(&dst).unwrap();
    for e in fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

fn edit_results(dir: &Path, edit: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let path = file_starting(dir, "results_");
    let mut json: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
    edit(json.as_object_mut().unwrap());
    fs::write(&path, serde_json::to_string_pretty(&json).unwrap()).unwrap();
}

#[test]
fn paired_tests_match_scipy_and_python_random() {
    let golden: Value =
        serde_json::from_str(&fs::read_to_string(fixtures().join("golden.json")).unwrap()).unwrap();
    let options = CompareOptions {
        resamples: golden["resamples"].as_u64().unwrap() as usize,
        seed: golden["seed"].as_u64().unwrap(),
        alpha: golden["alpha"].as_f64().unwrap(),
        ..CompareOptions::default()
    };
    assert_eq!(
        (options.resamples, options.seed, options.alpha),
        (10_000, 1234, 0.05),
        "the golden uses the defaults"
    );
    let (mut mcnemar, mut bootstrap) = (0, 0);
    for pair in golden["pairs"].as_array().unwrap() {
        let runs: Vec<Run> = ["a", "b"]
            .iter()
            .map(|k| Run::load(&fixtures().join(pair[k].as_str().unwrap())).unwrap())
            .collect();
        let report = compare::compare(&runs, &[None, None], &options).unwrap();
        let rows = &report.comparisons[0].rows;
        let expected = pair["rows"].as_array().unwrap();
        assert_eq!(
            rows.len(),
            expected.len(),
            "{}: one row per task and metric",
            pair["b"]
        );
        for want in expected {
            let what = format!(
                "{} {} {} ({})",
                want["task"], want["metric"], want["filter"], pair["b"]
            );
            let row = rows
                .iter()
                .find(|r| r.task == want["task"] && r.metric == want["metric"] && r.filter == want["filter"])
                .unwrap_or_else(|| panic!("no row for {what}"));
            assert_eq!(row.n, Some(want["n"].as_u64().unwrap() as usize), "{what}");
            assert_eq!(row.a, want["a"].as_f64().unwrap(), "{what}");
            assert_eq!(row.b, want["b"].as_f64().unwrap(), "{what}");
            assert_eq!(row.delta, want["delta"].as_f64().unwrap(), "{what}");
            let p_want = want["p_value"].as_f64().unwrap();
            match (row.test.as_ref().unwrap(), want["test"].as_str().unwrap()) {
                (
                    Test::Mcnemar {
                        lost,
                        gained,
                        p_value,
                    },
                    "mcnemar",
                ) => {
                    assert_eq!(*lost, want["a_only"].as_u64().unwrap(), "{what}");
                    assert_eq!(*gained, want["b_only"].as_u64().unwrap(), "{what}");
                    assert!(
                        (p_value - p_want).abs() <= 1e-12,
                        "{what}: p {p_value} vs scipy {p_want}"
                    );
                    mcnemar += 1;
                }
                (
                    Test::Bootstrap {
                        ci_low,
                        ci_high,
                        p_value,
                        ..
                    },
                    "bootstrap",
                ) => {
                    // The same resamples as Python's random.Random(1234): identical to the bit.
                    assert_eq!(*ci_low, want["ci_low"].as_f64().unwrap(), "{what}");
                    assert_eq!(*ci_high, want["ci_high"].as_f64().unwrap(), "{what}");
                    assert_eq!(*p_value, p_want, "{what}");
                    bootstrap += 1;
                }
                (ours, theirs) => panic!("{what}: we ran {ours:?}, the golden {theirs}"),
            }
            assert_eq!(
                row.significant,
                Some(want["significant"].as_bool().unwrap()),
                "{what}"
            );
        }
    }
    assert!(
        mcnemar >= 10 && bootstrap >= 6,
        "{mcnemar} McNemar and {bootstrap} bootstrap rows"
    );
}

#[test]
fn table_and_json_from_the_command_line() {
    let (base, c8, c32) = (lm_eval_run("base"), lm_eval_run("coef8"), lm_eval_run("coef32"));
    let args = [
        base.to_str().unwrap(),
        c8.to_str().unwrap(),
        c32.to_str().unwrap(),
    ];
    let (table, stderr) = ok(&args);
    assert!(stderr.is_empty(), "{stderr}");
    // Two tables, each run against the baseline; groups before their indented subtasks.
    assert_eq!(table.matches("A (baseline): ").count(), 2, "{table}");
    assert!(table.contains("not significant at α=0.05"), "{table}");
    assert!(table.contains("significant at α=0.05 (B better)"), "{table}");
    assert!(table.contains("McNemar: 3 gained, 0 lost"), "{table}");
    assert!(table.contains(" - tiny_mmlu_format_animals"), "{table}");
    let group = table.find("\ntiny_mmlu_format ").unwrap();
    assert!(
        group < table.find(" - tiny_mmlu_format_animals").unwrap(),
        "{table}"
    );

    let (json, _) = ok(&[&args[..], &["--json", "--metric", "acc"]].concat());
    let report: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(report["comparisons"].as_array().unwrap().len(), 2);
    let rows = report["comparisons"][0]["rows"].as_array().unwrap();
    assert!(rows.iter().all(|r| r["metric"] == "acc"), "--metric acc");
    let mc = rows.iter().find(|r| r["task"] == "tiny_mc").unwrap();
    assert_eq!(mc["test"]["kind"], "mcnemar");
    assert_eq!(
        (mc["test"]["gained"].as_u64(), mc["test"]["lost"].as_u64()),
        (Some(3), Some(0))
    );
    assert_eq!(mc["test"]["p_value"], 0.25);
    assert_eq!(mc["significant"], false);
    assert_eq!(mc["n"], 24);

    // --task keeps a group and its subtasks.
    let (json, _) = ok(&[&args[..2], &["--json", "--task", "tiny_mmlu_format"]].concat());
    let report: Value = serde_json::from_str(&json).unwrap();
    let tasks: Vec<&str> = report["comparisons"][0]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        [
            "tiny_mmlu_format",
            "tiny_mmlu_format_animals",
            "tiny_mmlu_format_numbers"
        ]
    );
}

#[test]
fn refuses_runs_that_scored_different_documents() {
    let tmp = tempfile::tempdir().unwrap();
    let base = lm_eval_run("base");

    // Another document under the same doc_id (a changed dataset).
    let changed = copy_run("coef8", &tmp.path().join("changed"));
    let samples = file_starting(&changed, "samples_tiny_mc_");
    let text = fs::read_to_string(&samples).unwrap();
    let mut lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    lines[3]["doc_hash"] = json!("0000000000000000000000000000000000000000000000000000000000000000");
    let doc_id = lines[3]["doc_id"].clone();
    let joined: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    fs::write(&samples, joined.join("\n") + "\n").unwrap();
    let err = fails(&[base.to_str().unwrap(), changed.to_str().unwrap()]);
    assert!(
        err.contains(&format!("task tiny_mc: document {doc_id} differs")),
        "{err}"
    );
    assert!(err.contains(samples.to_str().unwrap()), "names the file: {err}");
    assert!(err.contains("same documents"), "says what to do: {err}");

    // Fewer documents (another --limit).
    let limited = copy_run("coef8", &tmp.path().join("limited"));
    let samples = file_starting(&limited, "samples_tiny_mc_");
    let text = fs::read_to_string(&samples).unwrap();
    fs::write(
        &samples,
        text.lines().take(10).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let err = fails(&[base.to_str().unwrap(), limited.to_str().unwrap()]);
    assert!(err.contains("task tiny_mc: document 10 is in"), "{err}");
    assert!(
        err.contains("(24 documents) but not in") && err.contains("(10 documents)"),
        "{err}"
    );
}

#[test]
fn bad_inputs_are_errors_that_say_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let base = lm_eval_run("base");
    let missing = tmp.path().join("nope");
    let err = fails(&[base.to_str().unwrap(), missing.to_str().unwrap()]);
    assert!(
        err.contains(missing.to_str().unwrap()) && err.contains("does not exist"),
        "{err}"
    );

    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let err = fails(&[base.to_str().unwrap(), empty.to_str().unwrap()]);
    assert!(
        err.contains("no results_*.json") && err.contains("--log-samples"),
        "{err}"
    );

    let two = copy_run("coef8", &tmp.path().join("two"));
    fs::write(two.join("results_2099-01-01T00-00-00.0.json"), "{}").unwrap();
    let err = fails(&[base.to_str().unwrap(), two.to_str().unwrap()]);
    assert!(err.contains("holds 2 results files; name the one"), "{err}");

    let not_json = tmp.path().join("results_x.json");
    fs::write(&not_json, "[1, 2").unwrap();
    let err = fails(&[base.to_str().unwrap(), not_json.to_str().unwrap()]);
    assert!(err.contains("is not a results JSON"), "{err}");

    let bad_line = copy_run("coef8", &tmp.path().join("bad_line"));
    let samples = file_starting(&bad_line, "samples_tiny_mc_");
    let text = fs::read_to_string(&samples).unwrap();
    fs::write(&samples, text.replacen("\"acc\": 0.0", "\"acc\": \"zero\"", 1)).unwrap();
    let err = fails(&[base.to_str().unwrap(), bad_line.to_str().unwrap()]);
    assert!(
        err.contains(&format!("{}:", samples.display())) && err.contains("expected a number"),
        "{err}"
    );

    let err = fails(&[
        base.to_str().unwrap(),
        base.to_str().unwrap(),
        "--x-values",
        "1,2,3",
        "--plot",
        "x.png",
    ]);
    assert!(err.contains("--x-values has 3 values for 2 runs"), "{err}");
    let err = fails(&[base.to_str().unwrap()]);
    assert!(err.contains("RESULTS"), "clap asks for two: {err}");

    // Without samples a row still shows both scores and says why there is no test.
    let bare = copy_run("coef8", &tmp.path().join("bare"));
    fs::remove_file(file_starting(&bare, "samples_tiny_mc_")).unwrap();
    let (table, _) = ok(&[
        base.to_str().unwrap(),
        bare.to_str().unwrap(),
        "--task",
        "tiny_mc",
    ]);
    assert!(
        table.contains("no samples of tiny_mc beside") && table.contains("--log-samples"),
        "{table}"
    );
}

#[test]
fn sweep_coefficients_from_results_provenance_or_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = ["base", "coef8", "coef32"]
        .iter()
        .map(|n| copy_run(n, tmp.path()))
        .collect();
    let load = || dirs.iter().map(|d| Run::load(d).unwrap()).collect::<Vec<_>>();

    // lm-eval records no coefficient: only --x-values gives one.
    let sweep = compare::sweep_values(&load(), None).unwrap();
    assert_eq!(sweep.x, [None, None, None]);
    let sweep = compare::sweep_values(&load(), Some(&[0.0, 8.0, 32.0])).unwrap();
    assert_eq!(sweep.x, [Some(0.0), Some(8.0), Some(32.0)]);
    let err = compare::sweep_figure(
        &load(),
        &compare::sweep_values(&load(), None).unwrap(),
        &CompareOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--x-values 0,60,120"), "{err}");

    // Steering provenance (what `sae-onnx patch` records): the one row whose coefficient differs.
    for (dir, c) in dirs.iter().zip([None, Some(8.0), Some(32.0)]) {
        edit_results(dir, |r| {
            let mut rows = vec![
                json!({"latent": 3, "coefficient": 2.0, "hook": "blocks.0.hook_resid_post", "sae": "s", "sae_id": "i"}),
            ];
            if let Some(c) = c {
                rows.push(json!({"latent": 17, "coefficient": c, "hook": "blocks.1.hook_resid_post", "sae": "s", "sae_id": "i"}));
            }
            r.insert("steering".into(), json!([{"tool": "sae-onnx", "rows": rows}]));
        });
    }
    let sweep = compare::sweep_values(&load(), None).unwrap();
    assert_eq!(sweep.x, [Some(0.0), Some(8.0), Some(32.0)]);
    assert_eq!(
        sweep.label,
        "steering coefficient (latent 17 at blocks.1.hook_resid_post)"
    );

    // The eval side's sweep record wins over the provenance.
    for (dir, v) in dirs.iter().zip([0.0, 60.0, 120.0]) {
        edit_results(dir, |r| {
            r.insert(
                "sae_onnx".into(),
                json!({"sweep": {"input": "steer.coeff.0", "value": v}}),
            );
        });
    }
    let sweep = compare::sweep_values(&load(), None).unwrap();
    assert_eq!(sweep.x, [Some(0.0), Some(60.0), Some(120.0)]);
    assert_eq!(sweep.label, "steering coefficient (steer.coeff.0)");
    let (table, _) = ok(&[
        dirs[0].to_str().unwrap(),
        dirs[2].to_str().unwrap(),
        "--task",
        "tiny_mc",
    ]);
    assert!(
        table.contains("(x = 0)") && table.contains("(x = 120)"),
        "{table}"
    );
}

/// Chunks of a PNG file, each checked against its CRC.
fn png_chunks(bytes: &[u8]) -> Vec<([u8; 4], Vec<u8>)> {
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "PNG signature");
    let mut at = 8;
    let mut chunks = Vec::new();
    while at < bytes.len() {
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = bytes[at + 4..at + 8].try_into().unwrap();
        let data = bytes[at + 8..at + 8 + len].to_vec();
        let crc = u32::from_be_bytes(bytes[at + 8 + len..at + 12 + len].try_into().unwrap());
        assert_eq!(
            crc,
            compare::plot::crc32(&bytes[at + 4..at + 8 + len]),
            "CRC of {kind:?}"
        );
        chunks.push((kind, data));
        at += 12 + len;
    }
    chunks
}

#[test]
fn plot_is_a_png_of_the_expected_size() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("sweep.png");
    let runs = [lm_eval_run("base"), lm_eval_run("coef8"), lm_eval_run("coef32")];
    let mut args: Vec<&str> = runs.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend([
        "--plot",
        out.to_str().unwrap(),
        "--x-values",
        "0,8,32",
        "--metric",
        "acc,bits_per_byte",
    ]);
    let (_, stderr) = ok(&args);
    assert!(
        stderr.contains("plot written to") && stderr.contains("(960x880)"),
        "{stderr}"
    );

    let bytes = fs::read(&out).unwrap();
    let chunks = png_chunks(&bytes);
    let kinds: Vec<&[u8]> = chunks.iter().map(|c| &c.0[..]).collect();
    assert_eq!(kinds, [&b"IHDR"[..], b"IDAT", b"IEND"]);
    let ihdr = &chunks[0].1;
    let (w, h) = (
        u32::from_be_bytes(ihdr[0..4].try_into().unwrap()),
        u32::from_be_bytes(ihdr[4..8].try_into().unwrap()),
    );
    // Two metrics (acc: tiny_mc and the tiny_mmlu_format group; bits_per_byte: tiny_text).
    assert_eq!((w, h), (compare::plot::WIDTH, 2 * compare::plot::PANEL_HEIGHT));
    assert_eq!(&ihdr[8..], &[8, 2, 0, 0, 0], "8-bit RGB");
    let mut pixels = Vec::new();
    flate2::read::ZlibDecoder::new(&chunks[1].1[..])
        .read_to_end(&mut pixels)
        .unwrap();
    assert_eq!(pixels.len(), h as usize * (1 + 3 * w as usize));
    // Something was drawn: the series colours (tab10 blue and orange) are in the image.
    let rgb: Vec<&[u8]> = pixels
        .chunks(1 + 3 * w as usize)
        .flat_map(|row| row[1..].chunks(3))
        .collect();
    assert!(rgb.contains(&&[31u8, 119, 180][..]) && rgb.contains(&&[255u8, 127, 14][..]));
    // Written atomically: only the PNG is left in the folder.
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["sweep.png"]);

    // An unwritable place is an error naming it.
    let nowhere = tmp.path().join("no/such/dir/p.png");
    let mut args: Vec<&str> = runs.iter().map(|p| p.to_str().unwrap()).collect();
    args.extend(["--plot", nowhere.to_str().unwrap(), "--x-values", "0,8,32"]);
    let err = fails(&args);
    assert!(err.contains(nowhere.to_str().unwrap()), "{err}");
}

/// `sae-onnx eval --output-path --log-samples` writes what lm-eval writes: its run of the same model
/// pairs with lm-eval's document for document, and no document changes.
#[test]
fn our_eval_output_pairs_with_lm_evals() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gemma2.onnx");
    sae_onnx::export::export(
        "tests/fixtures/gemma/gemma2",
        &model,
        &sae_onnx::export::ExportOptions::default(),
    )
    .unwrap();
    let ours = tmp.path().join("ours");
    let out = Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args([
            "eval",
            model.to_str().unwrap(),
            "--task",
            "tiny_mc,tiny_mmlu_format",
        ])
        .args([
            "--include-path",
            "tests/fixtures/lm_eval/tasks",
            "--log-samples",
            "-q",
        ])
        .arg("--output-path")
        .arg(&ours)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let base = lm_eval_run("base");
    // Our folder is `ours/<model name>/results_<date>.json`: found one level down.
    let (json, _) = ok(&[base.to_str().unwrap(), ours.to_str().unwrap(), "--json"]);
    let report: Value = serde_json::from_str(&json).unwrap();
    let c = &report["comparisons"][0];
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        5,
        "tiny_mc acc, acc_norm; the group and its two subjects: {rows:?}"
    );
    for r in rows {
        assert_eq!(r["test"]["kind"], "mcnemar", "{r}");
        assert_eq!(
            (r["test"]["gained"].as_u64(), r["test"]["lost"].as_u64()),
            (Some(0), Some(0)),
            "{r}"
        );
        assert!(r["delta"].as_f64().unwrap().abs() < 1e-12, "{r}");
    }
    assert_eq!(c["only_in_baseline"], json!(["tiny_text"]));
}
