//! `eval --cache FILE`: every answered loglikelihood request, appended as batches finish, so an
//! interrupted run resumes where it stopped and gives identical results.
//!
//! An answer depends on more than the request's tokens: on the model (its graph, with the
//! steering and its coefficients; its external weights), the tokenizer, the fed inputs (a sweep's
//! coefficient), the device and TF32, the context length. So the file's first line is a header,
//! `{"sae_onnx_cache": 1, "key": {...}}`, holding a fingerprint of all of them; a run whose
//! fingerprint differs is refused (its answers would be another model's), and so is a file
//! without our header (a task YAML passed by mistake is never appended to). Entries are keyed by
//! the request's token ids. A line cut short by a kill is skipped and recomputed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value, json};

use crate::files::{self, Inputs};
use crate::infer::lm::{Loglikelihood, TokenRequest};

/// The header's format version.
pub const FORMAT: u64 = 1;
/// A line holds a request's token ids, about 7 bytes each: this is two million tokens, beyond
/// any context. A longer line means the file is not a cache (`/dev/zero`, a binary), and reading
/// on would eat memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Everything an answer depends on besides its tokens, as the header records it. Compared field
/// by field, so an error can say what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheKey(pub Map<String, Value>);

/// What each key field is, for the error that names what differs.
const FIELDS: [(&str, &str); 8] = [
    (
        "model",
        "the model graph (its sha256: steering and coefficients included)",
    ),
    ("data", "the model's external data files"),
    ("tokenizer", "the tokenizer (its sha256)"),
    ("inputs", "the inputs fed to the graph (a sweep's coefficient)"),
    ("device", "the device"),
    ("tf32", "--tf32"),
    ("max_length", "the context length"),
    ("sae_onnx", "the sae-onnx version that scored the answers"),
];

impl CacheKey {
    /// The fields that differ from `other`, described for a person.
    fn differences(&self, cached: &CacheKey) -> Vec<String> {
        let mut out = Vec::new();
        let null = Value::Null;
        for (field, what) in FIELDS {
            let (now, then) = (
                self.0.get(field).unwrap_or(&null),
                cached.0.get(field).unwrap_or(&null),
            );
            if now != then {
                out.push(format!("{what}: cached {}, now {}", short(then), short(now)));
            }
        }
        for field in cached.0.keys() {
            if !FIELDS.iter().any(|(f, _)| f == field) {
                out.push(format!(
                    "'{}' (unknown to this version)",
                    files::printable(field, 40)
                ));
            }
        }
        out
    }
}

/// A key value short enough for an error line: hashes cut to 12 hex digits.
fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) if s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()) => {
            format!("sha256 {}…", &s[..12])
        }
        other => other.to_string(),
    };
    files::printable(&text, 200)
}

/// The header line that starts every cache file.
pub fn header_line(key: &CacheKey) -> String {
    json!({"sae_onnx_cache": FORMAT, "key": Value::Object(key.0.clone())}).to_string()
}

/// Parses a header line: our marker, a format we read, and the key.
pub fn parse_header(line: &str) -> Result<CacheKey> {
    let value: Value = serde_json::from_str(line)
        .ok()
        .filter(Value::is_object)
        .context("its first line is not a sae-onnx cache header")?;
    let Some(format) = value.get("sae_onnx_cache") else {
        bail!("its first line is not a sae-onnx cache header");
    };
    if format.as_u64() != Some(FORMAT) {
        bail!(
            "it is a sae-onnx cache of format {}, this version reads format {FORMAT}",
            files::printable(&format.to_string(), 40)
        );
    }
    match value.get("key") {
        Some(Value::Object(key)) => Ok(CacheKey(key.clone())),
        _ => bail!("its header has no key"),
    }
}

/// Parses one entry line. `Ok(None)`: a line that is not complete JSON (cut short by a kill), to
/// be recomputed; an error: complete JSON that is not an entry of ours.
pub fn parse_line(line: &str) -> Result<Option<(TokenRequest, Loglikelihood)>> {
    let Ok(entry) = serde_json::from_str::<Value>(line) else {
        return Ok(None);
    };
    let ids = |k: &str| -> Result<Vec<u32>> {
        entry
            .get(k)
            .and_then(Value::as_array)
            .with_context(|| format!("not a sae-onnx cache entry (no `{k}` list)"))?
            .iter()
            .map(|v| {
                v.as_u64()
                    .and_then(|x| u32::try_from(x).ok())
                    .with_context(|| format!("`{k}` holds {}, not a token id", short(v)))
            })
            .collect()
    };
    let (context, continuation) = (ids("context")?, ids("continuation")?);
    if context.is_empty() || continuation.is_empty() {
        bail!("an entry with an empty context or continuation");
    }
    let logprob = entry
        .get("logprob")
        .and_then(Value::as_f64)
        .filter(|x| x.is_finite())
        .context("not a sae-onnx cache entry (`logprob` is not a finite number)")?;
    let is_greedy = entry
        .get("is_greedy")
        .and_then(Value::as_bool)
        .context("not a sae-onnx cache entry (`is_greedy` is not true or false)")?;
    Ok(Some((
        TokenRequest {
            context,
            continuation,
        },
        Loglikelihood { logprob, is_greedy },
    )))
}

/// One line of at most [`MAX_LINE_BYTES`] (without its newline), or `None` at the end.
fn next_line(reader: &mut impl BufRead, path: &Path, number: usize) -> Result<Option<String>> {
    let mut bytes = Vec::new();
    reader
        .by_ref()
        .take(MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .with_context(|| format!("cannot read cache '{}'", path.display()))?;
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    } else if bytes.len() > MAX_LINE_BYTES {
        bail!(
            "{}:{number}: a line longer than {} MiB: this is not a sae-onnx cache; pass another --cache path",
            path.display(),
            MAX_LINE_BYTES >> 20
        );
    }
    // Our lines are ASCII: one that is not UTF-8 is cut or foreign, and fails to parse as such.
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Reads a cache file written for `key`: its answers. Refuses a file that is not a sae-onnx cache
/// or was written for another model, tokenizer, coefficient or device, naming what differs.
pub fn read(path: &Path, key: &CacheKey) -> Result<HashMap<TokenRequest, Loglikelihood>> {
    let file = File::open(path).with_context(|| format!("cannot read cache '{}'", path.display()))?;
    let mut reader = BufReader::new(file);
    let mut answers = HashMap::new();
    let Some(header) = next_line(&mut reader, path, 1)? else {
        return Ok(answers);
    };
    let cached = parse_header(&header).map_err(|why| {
        anyhow::anyhow!(
            "'{}' is not a sae-onnx cache ({why:#}): refusing to append to it. Pass --cache a new \
             file path (it is created with a header); a cache of an older sae-onnx has no header, \
             so its answers cannot be tied to a model: delete it",
            path.display()
        )
    })?;
    let differences = key.differences(&cached);
    if !differences.is_empty() {
        bail!(
            "cache '{}' holds answers of another evaluation, which would be wrong for this one:\n  {}\n\
             Pass another --cache path, or delete '{}' to start afresh",
            path.display(),
            differences.join("\n  "),
            path.display()
        );
    }
    let mut number = 1;
    while let Some(line) = next_line(&mut reader, path, number + 1)? {
        number += 1;
        match parse_line(&line).with_context(|| format!("{}:{number}", path.display()))? {
            Some((request, answer)) => {
                answers.insert(request, answer);
            }
            None if line.trim().is_empty() => {}
            None => tracing::warn!(
                "{}:{number}: incomplete cache entry ignored (recomputed)",
                path.display()
            ),
        }
    }
    Ok(answers)
}

/// The answers of a cache file, and the file, open for appending.
pub struct ResultCache {
    pub answers: HashMap<TokenRequest, Loglikelihood>,
    file: Option<(File, PathBuf)>,
}

impl ResultCache {
    /// No cache: answers are kept in memory only.
    pub fn none() -> Self {
        Self {
            answers: HashMap::new(),
            file: None,
        }
    }

    /// Opens (or creates, with its header) the cache at `path` for `key`. Refused: a folder, a
    /// device or pipe, an input of this evaluation, a file that is not a sae-onnx cache, a cache
    /// of another evaluation.
    pub fn open(path: &Path, key: &CacheKey, inputs: &Inputs) -> Result<Self> {
        if let Some(input) = inputs.find(path) {
            bail!(
                "--cache '{}' is '{}', an input of this evaluation: give the cache its own file",
                path.display(),
                input.display()
            );
        }
        let exists = match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => bail!(
                "--cache '{}' is a folder; give a file name, e.g. '{}'",
                path.display(),
                path.join("run.cache.jsonl").display()
            ),
            Ok(meta) if !meta.is_file() => bail!(
                "--cache '{}' is not a regular file (a device, pipe or socket); give a file name",
                path.display()
            ),
            Ok(meta) => meta.len() > 0,
            Err(_) => false,
        };
        let answers = if exists { read(path, key)? } else { HashMap::new() };
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open cache '{}'", path.display()))?;
        let write_err = || format!("cannot write cache '{}'", path.display());
        if exists {
            // A run killed mid-line left no newline: start ours on a fresh line.
            let mut reader =
                File::open(path).with_context(|| format!("cannot read cache '{}'", path.display()))?;
            let len = reader.seek(SeekFrom::End(0)).with_context(write_err)?;
            let mut last = [0u8];
            reader.seek(SeekFrom::Start(len - 1)).with_context(write_err)?;
            reader.read_exact(&mut last).with_context(write_err)?;
            if last[0] != b'\n' {
                file.write_all(b"\n").with_context(write_err)?;
            }
        } else {
            let mut header = header_line(key);
            header.push('\n');
            file.write_all(header.as_bytes()).with_context(write_err)?;
        }
        Ok(Self {
            answers,
            file: Some((file, path.to_path_buf())),
        })
    }

    /// Appends a batch of answers (flushed, so a kill loses at most the line being written).
    pub fn append(&mut self, batch: &[(&TokenRequest, Loglikelihood)]) -> Result<()> {
        let Some((file, path)) = &mut self.file else {
            return Ok(());
        };
        let mut text = String::new();
        for (request, answer) in batch {
            let line = serde_json::to_string(&json!({
                "context": request.context,
                "continuation": request.continuation,
                "logprob": answer.logprob,
                "is_greedy": answer.is_greedy,
            }))?;
            // Reading refuses such a line; left out, the request is only recomputed on resume.
            if line.len() <= MAX_LINE_BYTES {
                text.push_str(&line);
                text.push('\n');
            }
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.flush())
            .with_context(|| format!("cannot write cache '{}'", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &str) -> CacheKey {
        CacheKey(
            json!({"model": model, "device": "cpu"})
                .as_object()
                .unwrap()
                .clone(),
        )
    }

    #[test]
    fn lines_parse_or_are_skipped_or_refused() {
        let (request, answer) =
            parse_line(r#"{"context":[2,5],"continuation":[7],"logprob":-1.5,"is_greedy":true}"#)
                .unwrap()
                .unwrap();
        assert_eq!((request.context, request.continuation), (vec![2, 5], vec![7]));
        assert_eq!(answer.logprob, -1.5);
        assert!(parse_line(r#"{"context":[2,5],"contin"#).unwrap().is_none());
        for bad in [
            r#"{"context":[4294967296],"continuation":[7],"logprob":-1,"is_greedy":true}"#,
            r#"{"context":[2],"continuation":[],"logprob":-1,"is_greedy":true}"#,
            r#"{"context":[2],"continuation":[7],"logprob":"x","is_greedy":true}"#,
            r#"[1, 2]"#,
        ] {
            assert!(parse_line(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_are_ours_and_keys_name_what_differs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.jsonl");
        let mut cache = ResultCache::open(&path, &key("aa"), &Inputs::new()).unwrap();
        let request = TokenRequest {
            context: vec![2],
            continuation: vec![3],
        };
        let answer = Loglikelihood {
            logprob: -0.5,
            is_greedy: false,
        };
        cache.append(&[(&request, answer)]).unwrap();
        drop(cache);
        assert_eq!(read(&path, &key("aa")).unwrap()[&request], answer);
        let err = read(&path, &key("bb")).unwrap_err().to_string();
        assert!(
            err.contains("the model graph") && err.contains("c.jsonl"),
            "{err}"
        );
        let yaml = dir.path().join("t.yaml");
        std::fs::write(&yaml, "task: t\n").unwrap();
        let err = ResultCache::open(&yaml, &key("aa"), &Inputs::new())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("not a sae-onnx cache"), "{err}");
        assert_eq!(std::fs::read_to_string(&yaml).unwrap(), "task: t\n");
        let err = read(Path::new("/dev/zero"), &key("aa")).unwrap_err().to_string();
        assert!(err.contains("longer than 16 MiB"), "{err}");
    }
}
