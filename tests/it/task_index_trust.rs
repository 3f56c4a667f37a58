//! The task index on bad and hostile task folders: one broken file fails only what needs it,
//! `--include-path` is checked before any model is opened, every task-file error names the
//! file (and line, and task), and no include chain, file or folder makes the scan hang, panic
//! or run out of memory.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use sae_onnx::eval::task_index::{TaskIndex, load_yaml_config};

fn bundled() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tasks")
}

fn sae_onnx(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(args)
        .env("SAE_ONNX_TASKS", bundled())
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The demo model, exported once for this test binary.
fn demo_model() -> &'static Path {
    static MODEL: OnceLock<PathBuf> = OnceLock::new();
    MODEL.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("sae-onnx-index-trust")
            .tempdir()
            .unwrap()
            .keep();
        let model = dir.join("demo.onnx");
        let checkpoint = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/tiny-gemma2");
        sae_onnx::export::export(
            checkpoint.to_str().unwrap(),
            &model,
            &sae_onnx::export::ExportOptions::default(),
        )
        .unwrap();
        model
    })
}

const GOOD: &str = r#"task: my_good
tag: my_tag
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_target: "{{answer}}"
doc_to_choice: ["yes", "no"]
"#;

/// A folder with a good task, a broken one (YAML syntax error on line 3), a group of both,
/// and a task whose template does not parse.
fn include_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::write(p.join("good.yaml"), GOOD).unwrap();
    std::fs::write(
        p.join("docs.jsonl"),
        "{\"question\": \"Is it?\", \"answer\": 0}\n",
    )
    .unwrap();
    std::fs::write(
        p.join("bad.yaml"),
        "task: my_bad\ntag:\n  - my_tag\ndataset_path: [json\n",
    )
    .unwrap();
    std::fs::write(
        p.join("group.yaml"),
        "group: my_group\ntask:\n  - my_good\n  - my_bad\n",
    )
    .unwrap();
    std::fs::write(
        p.join("template.yaml"),
        GOOD.replace("my_good", "bad_template")
            .replace("tag: my_tag\n", "")
            .replace("\"{{question}}\"", "\"{{ question \\u001b[31m\""),
    )
    .unwrap();
    dir
}

#[test]
fn a_broken_yaml_fails_only_the_tasks_that_need_it() {
    let dir = include_dir();
    let include = dir.path().to_str().unwrap();
    let bad = dir.path().join("bad.yaml").display().to_string();

    let listing = sae_onnx(&["eval", "--list-tasks", "--include-path", include]);
    assert!(listing.status.success(), "{}", stderr(&listing));
    let stdout = String::from_utf8_lossy(&listing.stdout);
    for line in [
        "task   my_good",
        "task   mmlu_abstract_algebra",
        "group  my_group",
    ] {
        assert!(stdout.lines().any(|l| l == line), "{line} missing:\n{stdout}");
    }
    let warning = stderr(&listing);
    assert!(
        warning.contains("warning: skipped") && warning.contains(&bad) && warning.contains("line 4"),
        "{warning}"
    );

    let model = demo_model().to_str().unwrap();
    let run = sae_onnx(&[
        "eval",
        model,
        "--task",
        "my_good",
        "--include-path",
        include,
        "-q",
    ]);
    assert!(run.status.success(), "{}", stderr(&run));

    // The broken task, a group listing it and a tag it claims fail, naming the file and line.
    for name in ["my_bad", "my_group", "my_tag"] {
        let run = sae_onnx(&["eval", model, "--task", name, "--include-path", include, "-q"]);
        let err = stderr(&run);
        assert!(!run.status.success(), "{name} ran");
        assert!(err.contains(&bad) && err.contains("line 4"), "{name}: {err}");
    }
}

#[test]
fn a_broken_redefinition_is_not_replaced_by_the_earlier_one() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("local_text.yaml");
    std::fs::write(&broken, "task: local_text\ndataset_path: [json\n").unwrap();
    let index = TaskIndex::scan(&[bundled(), dir.path().to_path_buf()]).unwrap();
    let err = format!("{:#}", index.usable("local_text").unwrap_err());
    assert!(err.contains(&broken.display().to_string()), "{err}");
    index.usable("wikitext").unwrap();

    // A later good definition replaces an earlier broken one.
    let later = tempfile::tempdir().unwrap();
    std::fs::write(later.path().join("fixed.yaml"), "task: local_text\n").unwrap();
    let index = TaskIndex::scan(&[bundled(), dir.path().to_path_buf(), later.path().to_path_buf()]).unwrap();
    index.usable("local_text").unwrap();

    // A broken file whose names cannot be made out is named when a name is found nowhere.
    std::fs::write(dir.path().join("garbage.yaml"), "::: [\n").unwrap();
    let index = TaskIndex::scan(&[dir.path().to_path_buf()]).unwrap();
    let err = format!("{:#}", index.usable("nowhere").unwrap_err());
    assert!(err.contains("garbage.yaml"), "{err}");
}

#[test]
fn include_path_must_be_a_folder_and_is_checked_before_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-folder");
    let file = dir.path().join("a.yaml");
    std::fs::write(&file, "task: a\n").unwrap();
    for (path, says) in [(&missing, "does not exist"), (&file, "is a file")] {
        let run = sae_onnx(&[
            "eval",
            "missing-model.onnx",
            "--task",
            "mmlu",
            "--include-path",
            path.to_str().unwrap(),
        ]);
        let err = stderr(&run);
        assert!(!run.status.success());
        assert!(
            err.contains(&path.display().to_string()) && err.contains(says) && err.contains("--include-path"),
            "{err}"
        );
        assert!(
            !err.contains("missing-model"),
            "the model was opened first: {err}"
        );
        let list = sae_onnx(&["eval", "--list-tasks", "--include-path", path.to_str().unwrap()]);
        assert!(
            !list.status.success() && stderr(&list).contains(says),
            "{}",
            stderr(&list)
        );
        let err = format!("{:#}", TaskIndex::scan(std::slice::from_ref(path)).unwrap_err());
        assert!(
            err.contains(&path.display().to_string()) && err.contains(says),
            "{err}"
        );
    }
}

#[test]
fn task_file_errors_name_the_file_line_and_task() {
    let dir = include_dir();
    let include = dir.path().to_str().unwrap();
    let model = demo_model().to_str().unwrap();

    // A template that does not parse: the task, its file and the field, the template escaped.
    let run = sae_onnx(&["eval", model, "--task", "bad_template", "--include-path", include]);
    let err = stderr(&run);
    assert!(!run.status.success());
    let yaml = dir.path().join("template.yaml").display().to_string();
    assert!(
        err.contains("bad_template")
            && err.contains(&yaml)
            && err.contains("doc_to_text")
            && err.contains("syntax error"),
        "{err}"
    );
    assert!(!err.contains('\u{1b}') && err.contains("\\u{1b}"), "{err}");

    // Not UTF-8: the file and line, when scanned and when named with --task.
    let latin1 = dir.path().join("latin1.yaml");
    std::fs::write(&latin1, b"task: latin1\ndescription: caf\xe9\n").unwrap();
    let index = TaskIndex::scan(&[dir.path().to_path_buf()]).unwrap();
    let broken = index.broken.iter().find(|b| b.path == latin1).expect("recorded");
    assert!(
        broken.error.contains("not UTF-8") && broken.error.contains("line 2"),
        "{}",
        broken.error
    );
    assert_eq!(broken.names, ["latin1"]);
    let run = sae_onnx(&["eval", model, "--task", latin1.to_str().unwrap()]);
    let err = stderr(&run);
    assert!(
        err.contains(&latin1.display().to_string()) && err.contains("line 2"),
        "{err}"
    );

    // A file name with control characters is printed escaped.
    let odd = tempfile::tempdir().unwrap();
    std::fs::write(odd.path().join("\u{1b}[31mred.yaml"), "task: [x\n").unwrap();
    let list = sae_onnx(&[
        "eval",
        "--list-tasks",
        "--include-path",
        odd.path().to_str().unwrap(),
    ]);
    let err = stderr(&list);
    assert!(
        err.contains("\\u{1b}[31mred.yaml") && !err.contains('\u{1b}'),
        "{err}"
    );
}

/// Runs `f` on its own thread and fails the test if it does not finish in time.
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what}: no answer in 20 s (a hang or a crash)"))
}

fn load_err(what: &str, path: &Path) -> String {
    let path = path.to_path_buf();
    within(what, move || match load_yaml_config(&path) {
        Ok(config) => panic!("loaded: {config:?}"),
        Err(e) => format!("{e:#}"),
    })
}

#[test]
fn hostile_includes_and_files_end_in_errors() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let write = |name: &str, text: &str| {
        let path = p.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };

    let me = write("self.yaml", "task: me\ninclude: self.yaml\n");
    let err = load_err("self include", &me);
    assert!(
        err.contains("include cycle") && err.contains("self.yaml"),
        "{err}"
    );

    write("b.yaml", "include: a.yaml\n");
    let a = write("a.yaml", "task: a\ninclude: b.yaml\n");
    let err = load_err("cycle", &a);
    assert!(
        err.contains("include cycle") && err.contains("a.yaml -> ") && err.contains("b.yaml"),
        "{err}"
    );

    for i in 0..40 {
        write(
            &format!("chain{i}.yaml"),
            &format!("include: chain{}.yaml\n", i + 1),
        );
    }
    write("chain40.yaml", "task: deep\n");
    let err = load_err("deep chain", &p.join("chain0.yaml"));
    assert!(err.contains("more than 16 files"), "{err}");

    let zero = write("zero.yaml", "include: /dev/zero\n");
    let err = load_err("/dev/zero", &zero);
    assert!(
        err.contains("/dev/zero") && err.contains("not a regular file"),
        "{err}"
    );

    let fifo = p.join("fifo.yaml");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o644) }, 0);
    let via = write("via.yaml", "include: fifo.yaml\n");
    let err = load_err("a pipe", &via);
    assert!(
        err.contains("fifo.yaml") && err.contains("not a regular file"),
        "{err}"
    );

    std::fs::create_dir(p.join("folder.yaml")).unwrap();
    let err = load_err("a folder", &write("to_folder.yaml", "include: folder.yaml\n"));
    assert!(err.contains("a folder"), "{err}");

    let err = load_err("a list", &write("list.yaml", "task: l\ninclude: [a.yaml]\n"));
    assert!(err.contains("`include` must name one YAML file"), "{err}");

    let big = write(
        "big.yaml",
        &format!("task: big\ndescription: \"{}\"\n", "x".repeat(17 << 20)),
    );
    let err = load_err("17 MiB", &big);
    assert!(
        err.contains("big.yaml") && err.contains("larger than 16 MiB"),
        "{err}"
    );

    let mut laughs =
        String::from("a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n");
    let mut prev = 'a';
    for c in 'b'..='k' {
        laughs.push_str(&format!(
            "{c}: &{c} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
        ));
        prev = c;
    }
    let err = load_err("billion laughs", &write("laughs.yaml", &laughs));
    assert!(err.contains("laughs.yaml"), "{err}");

    let nested = format!("task: {}1{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let err = load_err("deep nesting", &write("nested.yaml", &nested));
    assert!(
        err.contains("nested.yaml") && err.contains("more than 1000 deep"),
        "{err}"
    );
    // The same nesting with a string "]" in each level: no bracket count sees it.
    // (Parsing it takes about 20 s: the parse left running behind the error finishes soon.)
    let hidden = format!("task: {}1\n", "[ \"]\", ".repeat(60_000));
    let hidden = write("hidden.yaml", &hidden);
    let err = load_err("hidden nesting", &hidden);
    assert!(
        err.contains("hidden.yaml") && err.contains("did not finish in 10 s"),
        "{err}"
    );
    std::fs::remove_file(hidden).unwrap();

    // The scan of all this, plus a link to its own folder and 40 nested folders, finishes,
    // keeps the good task and records the rest.
    write("fine.yaml", "task: fine\n");
    std::os::unix::fs::symlink(p, p.join("loop")).unwrap();
    let mut deep = p.join("d");
    for _ in 0..40 {
        deep = deep.join("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("lost.yaml"), "task: lost\n").unwrap();
    let root = p.to_path_buf();
    let index = within("scan", move || TaskIndex::scan(&[root]).unwrap());
    assert!(index.entries.contains_key("fine"));
    for name in ["self.yaml", "a.yaml", "fifo.yaml", "big.yaml", "nested.yaml"] {
        assert!(
            index.broken.iter().any(|b| b.path.ends_with(name)),
            "{name} not recorded"
        );
    }
    assert!(
        index.broken.iter().any(|b| b.error.contains("nested more than")),
        "{:?}",
        index.broken
    );
    let err = format!("{:#}", index.usable("me").unwrap_err());
    assert!(
        err.contains("self.yaml") && err.contains("include cycle"),
        "{err}"
    );
}
