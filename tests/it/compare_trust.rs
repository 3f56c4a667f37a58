//! `compare` never destroys what it reads, never hangs, and refuses what it cannot honour:
//! `--plot` over a results or samples file it compares, over an existing file without `--force`;
//! non-finite `--x-values`; x values whose range overflows f64; a `--metric` or `--task` that no
//! run has.

use crate::common::file_starting;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn run_dir(name: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/compare/lm_eval")
        .join(name);
    fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap()
}

/// A copy of a run's folder in `to`, so the test may try to overwrite its files.
fn copy_run(name: &str, to: &Path) -> PathBuf {
    let dst = to.join(name);
    fs::create_dir_all(&dst).unwrap();
    for e in fs::read_dir(run_dir(name)).unwrap() {
        let p = e.unwrap().path();
        fs::copy(&p, dst.join(p.file_name().unwrap())).unwrap();
    }
    dst
}

/// Runs `compare` with a time limit (a hang fails the test instead of stalling it); returns
/// success and stderr.
fn compare(args: &[&str]) -> (bool, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .arg("compare")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
            assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
            return (status.success(), stderr);
        }
        if start.elapsed() > Duration::from_secs(60) {
            child.kill().unwrap();
            panic!("compare {args:?} did not finish in 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn fails(args: &[&str]) -> String {
    let (ok, stderr) = compare(args);
    assert!(!ok, "compare {args:?} must fail");
    stderr
}

#[test]
fn plot_never_replaces_an_input_or_an_existing_file_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let a = copy_run("base", tmp.path());
    let b = copy_run("coef8", tmp.path());
    let results = file_starting(&a, "results_");
    let samples = file_starting(&b, "samples_tiny_mc_");
    let link = tmp.path().join("link.png");
    std::os::unix::fs::symlink(&results, &link).unwrap();
    for target in [&results, &samples, &link] {
        let before = fs::read(target).unwrap();
        for force in [false, true] {
            let mut args = vec![
                a.to_str().unwrap(),
                b.to_str().unwrap(),
                "--x-values",
                "0,8",
                "--plot",
                target.to_str().unwrap(),
            ];
            if force {
                args.push("--force");
            }
            let err = fails(&args);
            assert!(err.contains("input of this command"), "{err}");
            assert_eq!(
                fs::read(target).unwrap(),
                before,
                "{} is untouched",
                target.display()
            );
        }
    }

    let err = fails(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--x-values",
        "0,8",
        "--plot",
        "/dev/null",
        "--force",
    ]);
    assert!(err.contains("not a regular file"), "{err}");

    let png = tmp.path().join("sweep.png");
    fs::write(&png, b"an older plot").unwrap();
    let args = [
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--x-values",
        "0,8",
        "--plot",
        png.to_str().unwrap(),
    ];
    let err = fails(&args);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(fs::read(&png).unwrap(), b"an older plot");
    let (ok, stderr) = compare(&[&args[..], &["--force"]].concat());
    assert!(ok, "{stderr}");
    assert!(fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn x_values_must_be_finite_and_any_finite_range_plots() {
    let tmp = tempfile::tempdir().unwrap();
    let a = run_dir("base");
    let b = run_dir("coef8");
    let png = tmp.path().join("p.png");
    for bad in ["inf,1", "1,NaN", "-inf,0", "1,x"] {
        let err = fails(&[
            a.to_str().unwrap(),
            b.to_str().unwrap(),
            &format!("--x-values={bad}"),
            "--plot",
            png.to_str().unwrap(),
        ]);
        assert!(
            err.contains("--x-values") && err.contains("finite number"),
            "{bad}: {err}"
        );
    }
    // The widest finite range: its span overflows f64, and the axis still terminates.
    let (ok, stderr) = compare(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--x-values=-1.7e308,1.7e308",
        "--plot",
        png.to_str().unwrap(),
    ]);
    assert!(ok, "{stderr}");
    assert!(fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn a_metric_or_task_no_run_has_is_refused_with_the_ones_they_have() {
    let a = run_dir("base");
    let b = run_dir("coef8");
    let err = fails(&[a.to_str().unwrap(), b.to_str().unwrap(), "--metric", "acc,bogus"]);
    assert!(
        err.contains("--metric bogus") && err.contains("acc_norm") && err.contains("bits_per_byte"),
        "{err}"
    );
    let err = fails(&[a.to_str().unwrap(), b.to_str().unwrap(), "--task", "tiny_mc,nope"]);
    assert!(err.contains("--task nope") && err.contains("tiny_mc"), "{err}");
    // A metric the chosen task does not have (tiny_mc has no perplexity).
    let err = fails(&[
        a.to_str().unwrap(),
        b.to_str().unwrap(),
        "--task",
        "tiny_mc",
        "--metric",
        "bits_per_byte",
    ]);
    assert!(err.contains("--metric bits_per_byte"), "{err}");
    let (ok, stderr) = compare(&[a.to_str().unwrap(), b.to_str().unwrap(), "--metric", "acc"]);
    assert!(ok, "{stderr}");
}
