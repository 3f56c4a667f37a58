//! An installed `sae-onnx` has its bundled tasks without the checkout it was built from: the
//! binary is copied to a folder of its own and run from another, with a fresh `SAE_ONNX_HOME`
//! and no `SAE_ONNX_TASKS`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::export::{self, ExportOptions};

struct Installed {
    _root: tempfile::TempDir,
    binary: PathBuf,
    home: PathBuf,
    work: PathBuf,
    ort: PathBuf,
}

impl Installed {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let bin = root.path().join("bin");
        let home = root.path().join("home");
        let work = root.path().join("work");
        for dir in [&bin, &home, &work] {
            std::fs::create_dir(dir).unwrap();
        }
        let binary = bin.join("sae-onnx");
        std::fs::copy(env!("CARGO_BIN_EXE_sae-onnx"), &binary).unwrap();
        // Found here, before SAE_ONNX_HOME moves the cache the child would look in.
        let (ort, _) =
            sae_onnx::infer::runtime::find_library(None).expect("ONNX Runtime (scripts/fetch-ort.sh)");
        Self {
            _root: root,
            binary,
            home,
            work,
            ort,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(&self.binary)
            .args(args)
            .current_dir(&self.work)
            .env("SAE_ONNX_HOME", &self.home)
            .env("ORT_DYLIB_PATH", &self.ort)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("SAE_ONNX_TASKS")
            .output()
            .unwrap()
    }
}

fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The task folders written under `home`.
fn extracted(home: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(home.join("tasks"))
        .map(|entries| entries.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// The results JSON written below `dir`.
fn results_text(dir: &Path) -> String {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let text = results_text(&path);
            if !text.is_empty() {
                return text;
            }
        } else if entry.file_name().to_string_lossy().starts_with("results_") {
            return std::fs::read_to_string(&path).unwrap();
        }
    }
    String::new()
}

#[test]
fn an_installed_binary_lists_and_runs_its_bundled_tasks() {
    let installed = Installed::new();
    let listing = ok(&installed.run(&["eval", "--list-tasks"]));
    let lines: Vec<&str> = listing.lines().collect();
    for line in ["group  mmlu", "task   mmlu_abstract_algebra", "task   local_text"] {
        assert!(lines.contains(&line), "{line} missing from:\n{listing}");
    }
    // Nothing in the binary points back at the checkout's task folder.
    let checkout_tasks = concat!(env!("CARGO_MANIFEST_DIR"), "/tasks");
    let bytes = std::fs::read(&installed.binary).unwrap();
    assert!(
        !bytes
            .windows(checkout_tasks.len())
            .any(|w| w == checkout_tasks.as_bytes()),
        "the binary names {checkout_tasks}"
    );
    let folders = extracted(&installed.home);
    assert_eq!(folders.len(), 1, "{folders:?}");
    let folder = &folders[0];
    assert!(folder.join("mmlu/default/_mmlu.yaml").is_file());

    // The tasks resolve and run from there: local_text reads its documents beside its YAML.
    let model = installed.work.join("demo.onnx");
    let checkpoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma2");
    export::export(checkpoint.to_str().unwrap(), &model, &ExportOptions::default()).unwrap();
    let out = installed.work.join("out");
    let table = ok(&installed.run(&[
        "eval",
        "demo.onnx",
        "--task",
        "local_text",
        "--limit",
        "2",
        "--output-path",
        out.to_str().unwrap(),
        "-q",
    ]));
    assert!(
        table.contains("local_text") && table.contains("word_perplexity"),
        "{table}"
    );
    let text = results_text(&out);
    assert!(
        text.contains(&folder.join("local_text/local_text.yaml").display().to_string()),
        "config_source is the extracted file: {text}"
    );

    // A second run uses the same folder, and a damaged copy is replaced, not used.
    let yaml = folder.join("local_text/local_text.yaml");
    std::fs::write(&yaml, "task: local_text\ndataset_path: nowhere\n").unwrap();
    ok(&installed.run(&["eval", "--list-tasks"]));
    assert_eq!(extracted(&installed.home), folders);
    assert!(
        std::fs::read_to_string(&yaml)
            .unwrap()
            .contains("loglikelihood_rolling")
    );
}

#[test]
fn an_unwritable_home_is_an_error_naming_it_and_the_way_out() {
    let installed = Installed::new();
    let blocker = installed.home.join("tasks");
    std::fs::write(&blocker, "a file where the task folder goes").unwrap();
    let output = installed.run(&["eval", "--list-tasks"]);
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains(&blocker.display().to_string()) && err.contains("SAE_ONNX_TASKS"),
        "{err}"
    );
}

#[test]
fn sae_onnx_tasks_still_overrides_and_must_be_a_folder() {
    let installed = Installed::new();
    let mine = installed.work.join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("t.yaml"), "task: only_mine\n").unwrap();
    let run = |tasks: &Path| {
        Command::new(&installed.binary)
            .args(["eval", "--list-tasks"])
            .current_dir(&installed.work)
            .env("SAE_ONNX_HOME", &installed.home)
            .env("SAE_ONNX_TASKS", tasks)
            .output()
            .unwrap()
    };
    let listing = ok(&run(&mine));
    assert_eq!(listing.trim(), "task   only_mine");
    assert!(extracted(&installed.home).is_empty(), "nothing extracted");
    let output = run(&installed.work.join("nope"));
    assert!(!output.status.success());
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(err.contains("SAE_ONNX_TASKS") && err.contains("nope"), "{err}");
}
