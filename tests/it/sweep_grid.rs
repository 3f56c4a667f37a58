//! `sweep GRID.yaml`: a grid run by several workers, each unit sharded, reports exactly what one
//! process running the unsharded grid reports (every value, stderr and paired test); finished
//! units are skipped, units another worker holds are left to it, stale locks are taken over;
//! bad grids are refused before any work, naming the file and line. The unsharded runs
//! themselves are held to lm-eval by eval_lm_eval and eval_sweep.

use std::path::{Path, PathBuf};

use sae_onnx::compare::CompareOptions;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::sweep::grid::Grid;
use sae_onnx::sweep::report;
use sae_onnx::sweep::run::{self, LOCK_STALE};
use sae_onnx::sweep::units::{self, Worker};

fn repo(rel: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(rel)
        .display()
        .to_string()
}

/// A folder with the demo model exported, and a grid over it with `extra` lines.
fn grid_dir(dir: &Path, extra: &str) -> PathBuf {
    export::export(
        "models/tiny-gemma2",
        &dir.join("tiny.onnx"),
        &ExportOptions::default(),
    )
    .unwrap();
    write_grid(dir, "grid.yaml", extra)
}

fn write_grid(dir: &Path, name: &str, extra: &str) -> PathBuf {
    let grid = dir.join(name);
    std::fs::write(
        &grid,
        format!(
            "model: tiny.onnx\nplans:\n  - name: dog\n    csv: {}\n    coefficients: [0, 24, 48]\n\
             tasks: [{}]\neval: {{limit: 12, batch_size: 4}}\n{extra}",
            repo("models/tiny-gemma2/steer.csv"),
            repo("models/tiny-gemma2/demo_mc.yaml"),
        ),
    )
    .unwrap();
    grid
}

fn options() -> CompareOptions {
    CompareOptions {
        resamples: 500,
        ..Default::default()
    }
}

#[test]
fn sharded_units_over_three_workers_report_what_one_unsharded_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let sharded = Grid::load(&grid_dir(tmp.path(), "shards: 2\noutput: sharded\n")).unwrap();
    let single = Grid::load(&write_grid(tmp.path(), "single.yaml", "output: single\n")).unwrap();
    assert_eq!(units::expand(&sharded).len(), 6);
    assert_eq!(units::expand(&sharded)[1].id, "tiny/dog/c0/demo_mc/shard1of2");
    for index in 0..3 {
        let done = run::run_worker(&sharded, Worker { index, count: 3 }, None, false).unwrap();
        assert_eq!(done.ran.len(), 2, "worker {index}: {done:?}");
    }
    run::run_worker(&single, Worker { index: 0, count: 1 }, None, false).unwrap();
    let a = report::report(&sharded, &options()).unwrap();
    let b = report::report(&single, &options()).unwrap();
    // Rows for 3 coefficients × (acc, acc_norm), each steered one tested against coefficient 0.
    assert_eq!(a.rows.len(), 6);
    assert!(a.rows[2].test.as_deref() == Some("mcnemar") && a.rows[2].p_value.is_some());
    let (x, y) = (
        std::fs::read_to_string(&a.csv).unwrap(),
        std::fs::read_to_string(&b.csv).unwrap(),
    );
    assert!(x == y, "sharded:\n{x}\nunsharded:\n{y}");
    // The JSON too, but for where each run's files are.
    let json = |p: &Path| {
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        drop_paths(&mut v);
        serde_json::to_string_pretty(&v).unwrap()
    };
    assert_eq!(json(&a.json), json(&b.json));
    assert_eq!(a.plots.len(), 1);
    assert!(std::fs::read(&a.plots[0]).unwrap().starts_with(b"\x89PNG"));
}

fn drop_paths(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("path");
            map.values_mut().for_each(drop_paths);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_paths),
        _ => {}
    }
}

#[test]
fn reruns_redo_only_missing_units_and_leave_held_ones_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = Grid::load(&grid_dir(tmp.path(), "output: out\n")).unwrap();
    let all = Worker { index: 0, count: 1 };
    assert_eq!(run::run_worker(&grid, all, None, false).unwrap().ran.len(), 3);
    // A lost unit (a preempted node's) is the only one redone.
    let units = units::expand(&grid);
    let lost = units::unit_dir(&grid, &units[1]);
    std::fs::remove_dir_all(&lost).unwrap();
    let status = report::status(&grid);
    assert_eq!(status.missing, vec![(units[1].id.clone(), None)]);
    let again = run::run_worker(&grid, all, None, false).unwrap();
    assert_eq!(
        (again.ran.clone(), again.already_done.len()),
        (vec![units[1].id.clone()], 2)
    );

    // A unit another live worker holds is left to it, and --status names the holder.
    std::fs::remove_dir_all(&lost).unwrap();
    let lock = lost.with_file_name("demo_mc.lock");
    std::fs::write(&lock, "4242@node7\n").unwrap();
    let held = run::run_worker(&grid, all, None, false).unwrap();
    assert_eq!(held.held, vec![(units[1].id.clone(), "4242@node7".to_owned())]);
    assert!(!lost.exists());
    assert_eq!(report::status(&grid).missing[0].1.as_deref(), Some("4242@node7"));
    let err = format!("{:#}", report::report(&grid, &options()).err().expect("refused"));
    assert!(err.contains("1 of 3 units are not done"), "{err}");

    // A lock nobody refreshed for LOCK_STALE is a dead worker's: taken over.
    let old = std::time::SystemTime::now() - LOCK_STALE - std::time::Duration::from_secs(1);
    std::fs::File::options()
        .append(true)
        .open(&lock)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let taken = run::run_worker(&grid, all, None, false).unwrap();
    assert_eq!(taken.ran, vec![units[1].id.clone()]);
    assert!(lost.is_dir() && !lock.exists());
}

#[test]
fn bad_grids_are_refused_before_any_work_naming_file_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = grid_dir(tmp.path(), "output: out\n");
    let refused = |text: &str| {
        let path = tmp.path().join("bad.yaml");
        std::fs::write(&path, text).unwrap();
        format!("{:#}", Grid::load(&path).expect_err("refused"))
    };
    let good = std::fs::read_to_string(&grid).unwrap();

    let err = refused(&good.replace("eval: {", "eval: {num_shots: 2, "));
    assert!(
        err.contains("bad.yaml:7") && err.contains("unknown field `num_shots`"),
        "{err}"
    );
    let err = refused(&format!("{good}colour: blue\n"));
    assert!(
        err.contains("bad.yaml:9") && err.contains("unknown field `colour`"),
        "{err}"
    );

    let broken = tmp.path().join("broken.csv");
    std::fs::write(
        &broken,
        "latent_idx,steering_coefficient,sae_release,sae_id,description\nseven,1,sae,,x\n",
    )
    .unwrap();
    let err = refused(&good.replace(
        &repo("models/tiny-gemma2/steer.csv"),
        &broken.display().to_string(),
    ));
    assert!(
        err.contains("bad.yaml:4") && err.contains("broken.csv:2:"),
        "{err}"
    );

    let err = refused(&good.replace(&repo("models/tiny-gemma2/demo_mc.yaml"), "no_such_task"));
    assert!(
        err.contains("bad.yaml:6") && err.contains("unknown task"),
        "{err}"
    );

    let err = refused(&good.replace("tiny.onnx", "absent.onnx"));
    assert!(
        err.contains("bad.yaml:1") && err.contains("is not a file"),
        "{err}"
    );

    let err = refused(&good.replace("[0, 24, 48]", "[0, 24, 24]"));
    assert!(
        err.contains("bad.yaml:3") && err.contains("coefficient 24 twice"),
        "{err}"
    );

    // A worker index out of range: refused before the output folder is even made.
    let out = tmp.path().join("out");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(["sweep", &grid.display().to_string(), "--worker", "3/3"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && stderr.contains("not below the shard count 3"),
        "{stderr}"
    );
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(["sweep", &grid.display().to_string(), "--worker", "auto"])
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env("JOB_COMPLETION_INDEX", "5")
        .env("SAE_ONNX_HOME", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success() && stderr.contains("--workers N"),
        "{stderr}"
    );
    assert!(!out.exists());
}
