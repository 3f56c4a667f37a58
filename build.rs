//! Embeds the bundled lm-eval task files (`tasks/`) in the binary, so that an installed
//! `sae-onnx` whose checkout is gone still has them (see `src/eval/bundled.rs`). A build
//! script with `include_bytes!` costs no extra crate to compile, and cargo reruns it when
//! anything under `tasks/` changes. The generator scripts and the README are not tasks and
//! stay out.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let tasks = root.join("tasks");
    println!("cargo:rerun-if-changed=tasks");
    let mut files = Vec::new();
    collect(&tasks, &mut files);
    files.sort();
    let mut code = String::from("pub static FILES: &[(&str, &[u8])] = &[\n");
    for path in &files {
        let relative = path.strip_prefix(&tasks).expect("below tasks/");
        let relative = relative
            .to_str()
            .unwrap_or_else(|| panic!("task file name {relative:?} is not UTF-8"));
        let absolute = path
            .to_str()
            .unwrap_or_else(|| panic!("task file path {path:?} is not UTF-8"));
        writeln!(code, "    ({relative:?}, include_bytes!({absolute:?})),").unwrap();
    }
    code.push_str("];\n");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out.join("bundled_tasks.rs"), code).expect("OUT_DIR is writable");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("tasks/ lists").path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect(&path, out);
        } else if !(name.ends_with(".py") || name == "README.md") {
            out.push(path);
        }
    }
}
