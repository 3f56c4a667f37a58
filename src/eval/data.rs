//! Task documents: local json/jsonl/csv/parquet files (lm-eval's `dataset_path: json|csv` with
//! `data_files`), loaded as the `datasets` library would present them to lm-eval: one JSON object
//! per document, columns in file order.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use parquet::file::reader::{FileReader, SerializedFileReader};
use serde_json::{Map, Value};

/// A split's documents and its column names (lm-eval's `features`).
#[derive(Debug, Clone, Default)]
pub struct Split {
    pub docs: Vec<Value>,
    pub columns: Vec<String>,
}

/// All splits of a dataset by name.
pub type Dataset = BTreeMap<String, Split>;

/// Dataset files are read whole: past this, a file is more likely a mistake (`/dev/zero`, a
/// disk image) than a task, and reading it would exhaust memory before any error.
const MAX_DATA_FILE_BYTES: u64 = 4 << 30;

/// Loads `data_files` (a path, a list, or a map split -> path|list) with the builder `kind`
/// (`json`, `csv` or `parquet`). Relative paths resolve against the working directory, as `datasets` does,
/// then against `yaml_dir` (where the task file is).
pub fn load_local(kind: &str, data_files: &Value, yaml_dir: &Path) -> Result<Dataset> {
    let mut dataset = Dataset::new();
    for (split, files) in split_files(data_files)? {
        let mut loaded = Split::default();
        for file in files {
            let path = resolve(&file, yaml_dir)?;
            check_data_file(&path)?;
            let part = match kind {
                "json" => read_json(&path)?,
                "csv" => read_csv(&path)?,
                "parquet" => read_parquet(&path)?,
                other => {
                    bail!("local datasets of type '{other}' are not supported (json, csv and parquet are)")
                }
            };
            for column in part.columns {
                if !loaded.columns.contains(&column) {
                    loaded.columns.push(column);
                }
            }
            loaded.docs.extend(part.docs);
        }
        dataset.insert(split, loaded);
    }
    Ok(dataset)
}

/// The files `data_files` names, resolved as [`load_local`] resolves them.
pub fn local_files(data_files: &Value, yaml_dir: &Path) -> Result<Vec<PathBuf>> {
    split_files(data_files)?
        .into_iter()
        .flat_map(|(_, files)| files)
        .map(|file| resolve(&file, yaml_dir))
        .collect()
}

/// A data file must be a regular file of a readable size.
pub fn check_data_file(path: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot read data file '{}'", path.display()))?;
    if meta.is_dir() {
        bail!("data file '{}' is a folder, not a file", path.display());
    }
    if !meta.is_file() {
        bail!(
            "data file '{}' is not a regular file (a device, pipe or socket)",
            path.display()
        );
    }
    if meta.len() > MAX_DATA_FILE_BYTES {
        bail!(
            "data file '{}' is larger than {} GiB; is it the right file?",
            path.display(),
            MAX_DATA_FILE_BYTES >> 30
        );
    }
    Ok(())
}

/// `data_files` by split: a path or list is the `train` split, a map gives each split's.
fn split_files(data_files: &Value) -> Result<Vec<(String, Vec<String>)>> {
    Ok(match data_files {
        Value::String(s) => vec![("train".into(), vec![s.clone()])],
        Value::Array(list) => vec![("train".into(), strings(list)?)],
        Value::Object(map) => map
            .iter()
            .map(|(split, files)| {
                let files = match files {
                    Value::String(s) => vec![s.clone()],
                    Value::Array(list) => strings(list)?,
                    other => bail!("data_files.{split} must be a path or a list of paths, not {other}"),
                };
                Ok((split.clone(), files))
            })
            .collect::<Result<_>>()?,
        other => bail!("data_files must be a path, a list or a map of split to paths, not {other}"),
    })
}

fn strings(list: &[Value]) -> Result<Vec<String>> {
    list.iter()
        .map(|v| {
            v.as_str()
                .map(str::to_owned)
                .context("data_files entries must be paths")
        })
        .collect()
}

fn resolve(file: &str, yaml_dir: &Path) -> Result<PathBuf> {
    let direct = PathBuf::from(file);
    if direct.exists() {
        return Ok(direct);
    }
    let beside = yaml_dir.join(file);
    if beside.exists() {
        return Ok(beside);
    }
    bail!(
        "data file '{}' not found (looked relative to the working directory and to '{}')",
        crate::files::printable(file, 200),
        yaml_dir.display()
    )
}

/// JSON Lines, or one JSON array of objects.
fn read_json(path: &Path) -> Result<Split> {
    let text = crate::files::read_text(path, "data file", MAX_DATA_FILE_BYTES)?;
    let docs: Vec<Value> = if text.trim_start().starts_with('[') {
        serde_json::from_str(&text)
            .with_context(|| format!("'{}' is not a JSON array of objects", path.display()))?
    } else {
        text.lines()
            .enumerate()
            .filter(|(_, line)| !line.trim().is_empty())
            .map(|(i, line)| {
                serde_json::from_str(line)
                    .with_context(|| format!("{}:{}: not a JSON object", path.display(), i + 1))
            })
            .collect::<Result<_>>()?
    };
    let mut columns: Vec<String> = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let Value::Object(map) = doc else {
            bail!("{}: document {} is not a JSON object", path.display(), i + 1);
        };
        for key in map.keys() {
            if !columns.contains(key) {
                columns.push(key.clone());
            }
        }
    }
    // `datasets` gives every document every column, missing ones as null.
    let docs = docs
        .into_iter()
        .map(|doc| {
            let Value::Object(mut map) = doc else {
                unreachable!("checked above")
            };
            let mut ordered = Map::new();
            for column in &columns {
                ordered.insert(column.clone(), map.remove(column).unwrap_or(Value::Null));
            }
            Value::Object(ordered)
        })
        .collect();
    Ok(Split { docs, columns })
}

/// CSV with a header; columns whose every value is an integer (or float) become numbers, as
/// pandas infers them for `datasets`.
fn read_csv(path: &Path) -> Result<Split> {
    let mut reader = csv::ReaderBuilder::new()
        .from_path(path)
        .with_context(|| format!("cannot read '{}'", path.display()))?;
    let columns: Vec<String> = reader
        .headers()
        .with_context(|| format!("{}:1: malformed CSV header", path.display()))?
        .iter()
        .map(str::to_owned)
        .collect();
    let rows: Vec<Vec<String>> = reader
        .records()
        .enumerate()
        .map(|(i, r)| {
            r.map(|r| r.iter().map(str::to_owned).collect())
                .with_context(|| format!("{}:{}: malformed CSV row", path.display(), i + 2))
        })
        .collect::<Result<_>>()?;
    let kinds: Vec<fn(&str) -> Option<Value>> = (0..columns.len())
        .map(|c| {
            let all = |f: fn(&str) -> bool| rows.iter().all(|r| r.get(c).is_some_and(|v| f(v)));
            if all(|v| v.parse::<i64>().is_ok()) {
                (|v: &str| v.parse::<i64>().ok().map(Value::from)) as fn(&str) -> Option<Value>
            } else if all(|v| v.parse::<f64>().is_ok()) {
                |v: &str| v.parse::<f64>().ok().map(Value::from)
            } else {
                |v: &str| Some(Value::from(v))
            }
        })
        .collect();
    let docs = rows
        .into_iter()
        .map(|row| {
            let mut map = Map::new();
            for (c, column) in columns.iter().enumerate() {
                let value = row.get(c).and_then(|v| kinds[c](v)).unwrap_or(Value::Null);
                map.insert(column.clone(), value);
            }
            Value::Object(map)
        })
        .collect();
    Ok(Split { docs, columns })
}

pub fn read_parquet(path: &Path) -> Result<Split> {
    let file = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let reader = SerializedFileReader::new(file)
        .with_context(|| format!("'{}' is not a parquet file", path.display()))?;
    let columns: Vec<String> = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema()
        .get_fields()
        .iter()
        .map(|f| f.name().to_owned())
        .collect();
    let mut docs = Vec::new();
    for row in reader
        .get_row_iter(None)
        .with_context(|| format!("reading '{}'", path.display()))?
    {
        let row = row.with_context(|| format!("reading a row of '{}'", path.display()))?;
        docs.push(row.to_json_value());
    }
    Ok(Split { docs, columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_keeps_column_order_and_fills_missing_columns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("t.jsonl"),
            "{\"q\": \"a\", \"label\": 1}\n\n{\"label\": 0, \"q\": \"b\", \"x\": true}\n",
        )
        .unwrap();
        let files = serde_json::json!({"test": "t.jsonl"});
        let data = load_local("json", &files, dir.path()).unwrap();
        let split = &data["test"];
        assert_eq!(split.columns, ["q", "label", "x"]);
        assert_eq!(
            split.docs[0],
            serde_json::json!({"q": "a", "label": 1, "x": null})
        );
        let keys: Vec<&String> = split.docs[1].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["q", "label", "x"]);
    }

    #[test]
    fn csv_infers_numeric_columns() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.csv"), "q,label,score\n\"a, b\",1,0.5\nc,2,1\n").unwrap();
        let data = load_local("csv", &Value::from("t.csv"), dir.path()).unwrap();
        assert_eq!(
            data["train"].docs[0],
            serde_json::json!({"q": "a, b", "label": 1, "score": 0.5})
        );
    }

    #[test]
    fn local_parquet_reads_the_same_documents_as_their_jsonl() {
        // The winogrande fixture holds the same documents both ways (make_golden.py wrote both).
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm_eval_winogrande");
        for split in ["train", "validation"] {
            let parquet = dir.join(format!("hub/winogrande_xl/{split}-00000-of-00001.parquet"));
            let jsonl = dir.join(format!("tasks/tiny_winogrande_{split}.jsonl"));
            let from_parquet =
                load_local("parquet", &Value::from(parquet.display().to_string()), &dir).unwrap();
            let from_json = load_local("json", &Value::from(jsonl.display().to_string()), &dir).unwrap();
            assert_eq!(from_parquet["train"].docs, from_json["train"].docs, "{split}");
            assert_eq!(
                from_parquet["train"].columns, from_json["train"].columns,
                "{split}"
            );
        }
    }

    #[test]
    fn missing_files_name_both_places_looked() {
        let err = load_local("json", &Value::from("nope.jsonl"), Path::new("/tmp")).unwrap_err();
        assert!(err.to_string().contains("nope.jsonl"), "{err}");
    }
}
