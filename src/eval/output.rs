//! lm-eval's output files: `results_<date>.json` and, with `--log-samples`,
//! `samples_<task>_<date>.jsonl`, under `<output-path>/<model name sanitized>/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::template;
use crate::contract::results::ResultsFile;
use crate::files::{self, Inputs};

/// Python's `str()` of a document value (lists show their items' `repr`), for `target` in samples.
pub fn py_str(value: &Value) -> String {
    template::py_str(&template::to_value(value))
}

/// `json.dumps(doc, indent=2, ensure_ascii=False)`, whose hash is a sample's `doc_hash`.
pub fn doc_json_indented(doc: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"  ");
    let mut ser = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(doc, &mut ser).expect("JSON values serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// lm-eval's `model_name_sanitized`: path separators become `__`.
pub fn sanitize_model_name(name: &str) -> String {
    name.replace(['/', '\\'], "__").replace(':', "__")
}

/// The folder results and samples go to, and the results file when `output_path` names one
/// (`x.json`, as lm-eval's `--output_path`); otherwise `results_<date>.json` in the folder.
fn layout(output_path: &Path, model_name: &str) -> (PathBuf, Option<PathBuf>) {
    if output_path.extension().is_some_and(|e| e == "json") {
        (
            files::parent_dir(output_path).to_path_buf(),
            Some(output_path.to_path_buf()),
        )
    } else {
        (output_path.join(sanitize_model_name(model_name)), None)
    }
}

/// Checks, before any scoring, that [`write`] will be able to write under `output_path`: a
/// results file that may be replaced (not an input, `--force` if it exists, a regular file), and
/// a folder that exists or can be created, and takes a new file.
pub fn check(output_path: &Path, model_name: &str, inputs: &Inputs, force: bool) -> Result<()> {
    let (dir, file) = layout(output_path, model_name);
    if let Some(file) = &file {
        files::check_output(file, inputs, force).context("--output-path")?;
    }
    // The folder, or the nearest of its ancestors that exists: what `write` creates starts there.
    let mut existing = dir.as_path();
    loop {
        match std::fs::metadata(existing) {
            Ok(meta) if meta.is_dir() => break,
            Ok(_) => bail!(
                "--output-path '{}': '{}' is a file, not a folder, so '{}' cannot be created there",
                output_path.display(),
                existing.display(),
                dir.display()
            ),
            Err(_) => {
                let parent = files::parent_dir(existing);
                if parent == existing {
                    bail!(
                        "--output-path '{}': no folder of it exists",
                        output_path.display()
                    );
                }
                existing = parent;
            }
        }
    }
    // Removed when dropped: the probe leaves nothing behind.
    files::temp_file(existing, "sae-onnx-write-check")
        .with_context(|| format!("--output-path '{}' is not writable", output_path.display()))?;
    Ok(())
}

/// The files one [`write`] made, and its stamp.
pub struct Written {
    pub results: PathBuf,
    /// Per task with sample lines, its samples file.
    pub samples: Vec<(String, PathBuf)>,
    pub stamp: String,
}

/// Writes `results_<date>.json` (and the samples files) atomically, never over one of `inputs`
/// nor, without `force`, over an existing file.
pub fn write(
    output_path: &Path,
    model_name: &str,
    results: &ResultsFile,
    samples: &[(String, Vec<Value>)],
    inputs: &Inputs,
    force: bool,
) -> Result<Written> {
    let date = file_stamp();
    let (dir, file) = layout(output_path, model_name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create '{}'", dir.display()))?;
    let mut samples_files = Vec::with_capacity(samples.len());
    for (task, lines) in samples {
        let path = dir.join(format!("samples_{task}_{date}.jsonl"));
        let mut text = String::new();
        for line in lines {
            text.push_str(&serde_json::to_string(line)?);
            text.push('\n');
        }
        files::check_output(&path, inputs, force)?;
        files::write_atomic(&path, text.as_bytes())?;
        samples_files.push((task.clone(), path));
    }
    let path = file.unwrap_or_else(|| dir.join(format!("results_{date}.json")));
    let mut text = serde_json::to_string_pretty(results)?;
    text.push('\n');
    files::check_output(&path, inputs, force)?;
    files::write_atomic(&path, text.as_bytes())?;
    Ok(Written {
        results: path,
        samples: samples_files,
        stamp: date,
    })
}

/// lm-eval's file stamp, `datetime.now().isoformat().replace(":", "-")`: local time, e.g.
/// `2026-11-26T15-10-30.123456` (Python leaves the fraction out at a whole second).
fn file_stamp() -> String {
    stamp(&jiff::ZonedDateTime::now().datetime())
}

fn stamp(now: &jiff::civil::DateTime) -> String {
    let whole = now.strftime("%Y-%m-%dT%H-%M-%S").to_string();
    match now.subsec_nanosecond() / 1000 {
        0 => whole,
        micros => format!("{whole}.{micros:06}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_stamps_read_as_pythons_isoformat() {
        // datetime(2026, 11, 26, 15, 10, 30, 1234).isoformat().replace(":", "-")
        let at = jiff::civil::date(2026, 11, 26).at(15, 10, 30, 1_234_567);
        assert_eq!(stamp(&at), "2026-11-26T15-10-30.001234");
        let whole = jiff::civil::date(2026, 1, 2).at(3, 4, 5, 0);
        assert_eq!(stamp(&whole), "2026-01-02T03-04-05");
    }

    #[test]
    fn python_str_of_targets() {
        assert_eq!(py_str(&serde_json::json!(0)), "0");
        assert_eq!(py_str(&serde_json::json!(["a", "it's"])), "['a', \"it's\"]");
        assert_eq!(py_str(&serde_json::json!("B")), "B");
    }
}
