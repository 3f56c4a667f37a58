//! The task folders' index (lm-eval's `TaskManager`): every task, group and tag their YAML files
//! declare, each file read with its `include` chain resolved, bounded in size, depth and parse
//! time; files that cannot be read fail only the names they would define.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use crate::files;

/// What a task file or group file declares.
#[derive(Debug, Clone)]
pub enum Entry {
    Task {
        path: PathBuf,
        config: Map<String, Value>,
    },
    Group {
        path: PathBuf,
        config: Map<String, Value>,
    },
}

/// Every task, group and tag found in the task folders.
#[derive(Debug, Default)]
pub struct TaskIndex {
    pub entries: BTreeMap<String, Entry>,
    /// tag -> task names.
    pub tags: BTreeMap<String, Vec<String>>,
    /// Files the scan could not read. They fail only the names they are needed for, so one bad
    /// file in an `--include-path` does not take every task down.
    pub broken: Vec<Broken>,
    /// Task or group name -> its broken latest definition (an index into `broken`).
    claimed: BTreeMap<String, usize>,
    /// Tag -> a broken file that declares a member of it: the tag would be incomplete.
    claimed_tags: BTreeMap<String, usize>,
}

/// A task file that could not be read.
#[derive(Debug, Clone)]
pub struct Broken {
    pub path: PathBuf,
    /// The error and its causes, on one line, safe to print.
    pub error: String,
    /// The task or group names the file appears to define, and its tags: read line by line,
    /// since the file does not parse.
    pub names: Vec<String>,
    pub tags: Vec<String>,
}

/// The largest task YAML read: lm-eval's are a few kilobytes; this bounds what a wrong file
/// (a dataset, `/dev/zero`) costs.
const MAX_YAML_BYTES: u64 = 16 << 20;
/// Files in one include chain. lm-eval sets no limit; its own chains are at most two deep.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Folder levels below a task folder that the scan descends.
const MAX_FOLDER_DEPTH: usize = 32;

impl TaskIndex {
    /// Scans `dirs` recursively for `*.yaml` / `*.yml` task and group files. A folder that does
    /// not exist is an error; files that cannot be read are recorded in `broken`.
    pub fn scan(dirs: &[PathBuf]) -> Result<Self> {
        let mut index = Self::default();
        for dir in dirs {
            let meta = std::fs::metadata(dir).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    anyhow::anyhow!("task folder '{}' does not exist", shown(dir))
                } else {
                    anyhow::Error::new(e).context(format!("cannot read task folder '{}'", shown(dir)))
                }
            })?;
            if !meta.is_dir() {
                bail!(
                    "'{}' is a file, not a folder of task YAMLs (pass the file itself with --task)",
                    shown(dir)
                );
            }
            let mut files = Vec::new();
            let mut seen = HashSet::new();
            let entries = std::fs::read_dir(dir)
                .with_context(|| format!("cannot list task folder '{}'", shown(dir)))?;
            index.collect_yaml(entries, dir, 0, &mut seen, &mut files);
            files.sort();
            for file in files {
                index.add_scanned(&file);
            }
        }
        Ok(index)
    }

    /// Adds one YAML file (a task or a group); files without `task` (templates) are skipped.
    pub fn add_file(&mut self, path: &Path) -> Result<Option<String>> {
        let config = load_yaml_config(path)?;
        let entry = match (config.get("task"), config.get("group")) {
            (Some(Value::String(name)), _) => {
                let name = name.clone();
                for tag in string_list(config.get("tag")) {
                    self.tags.entry(tag).or_default().push(name.clone());
                }
                (
                    name,
                    Entry::Task {
                        path: path.to_path_buf(),
                        config,
                    },
                )
            }
            (Some(Value::Array(_)), Some(Value::String(group))) => (
                group.clone(),
                Entry::Group {
                    path: path.to_path_buf(),
                    config,
                },
            ),
            _ => return Ok(None),
        };
        let name = entry.0.clone();
        // A later definition replaces an earlier one, a broken one included.
        self.claimed.remove(&name);
        self.entries.insert(entry.0, entry.1);
        Ok(Some(name))
    }

    /// Adds a scanned file, or records why it cannot be used.
    fn add_scanned(&mut self, path: &Path) {
        let Err(err) = self.add_file(path) else {
            return;
        };
        let (names, tags) = declared_names(path);
        let i = self.broken.len();
        for name in &names {
            // The broken file was meant to (re)define this name: the earlier definition must
            // not be used in its place.
            self.entries.remove(name);
            self.claimed.insert(name.clone(), i);
        }
        for tag in &tags {
            self.claimed_tags.insert(tag.clone(), i);
        }
        self.record_broken(path, &err, names, tags);
    }

    fn record_broken(&mut self, path: &Path, err: &anyhow::Error, names: Vec<String>, tags: Vec<String>) {
        self.broken.push(Broken {
            path: path.to_path_buf(),
            error: files::printable(&format!("{err:#}"), 2000),
            names,
            tags,
        });
    }

    fn collect_yaml(
        &mut self,
        entries: std::fs::ReadDir,
        dir: &Path,
        depth: usize,
        seen: &mut HashSet<(u64, u64)>,
        out: &mut Vec<PathBuf>,
    ) {
        use std::os::unix::fs::MetadataExt;
        // Folders by identity: a symlink to a parent folder would otherwise recurse forever.
        if let Ok(meta) = std::fs::metadata(dir)
            && !seen.insert((meta.dev(), meta.ino()))
        {
            return;
        }
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let err = anyhow::Error::new(e).context(format!("cannot list '{}'", shown(dir)));
                    self.record_broken(dir, &err, Vec::new(), Vec::new());
                    return;
                }
            };
            let path = entry.path();
            let is_yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => {
                    let listed = if depth + 1 >= MAX_FOLDER_DEPTH {
                        Err(anyhow::anyhow!(
                            "'{}' is nested more than {MAX_FOLDER_DEPTH} folders deep",
                            shown(&path)
                        ))
                    } else {
                        std::fs::read_dir(&path)
                            .with_context(|| format!("cannot list task folder '{}'", shown(&path)))
                    };
                    match listed {
                        Ok(entries) => self.collect_yaml(entries, &path, depth + 1, seen, out),
                        Err(err) => self.record_broken(&path, &err, Vec::new(), Vec::new()),
                    }
                }
                // Not regular files (pipes, devices, dangling links) are refused when read.
                _ if is_yaml => out.push(path),
                _ => {}
            }
        }
    }

    /// Fails when using `name` needs a file the scan could not read: the file that defines it
    /// last, or one that declares a task of the tag `name`; or, for a name found nowhere, a
    /// broken file whose names could not be made out.
    pub fn usable(&self, name: &str) -> Result<()> {
        if self.entries.contains_key(name) {
            return Ok(());
        }
        if let Some(&i) = self.claimed.get(name).or_else(|| self.claimed_tags.get(name)) {
            let broken = &self.broken[i];
            bail!(
                "'{}' needs '{}', which cannot be used: {}",
                files::printable(name, 200),
                shown(&broken.path),
                broken.error
            );
        }
        if self.tags.contains_key(name) {
            return Ok(());
        }
        let unnamed: Vec<String> = self
            .broken
            .iter()
            .filter(|b| b.names.is_empty() && b.tags.is_empty())
            .map(|b| format!("\n  {}: {}", shown(&b.path), b.error))
            .collect();
        if !unnamed.is_empty() {
            bail!(
                "unknown task, group or tag '{}'; it may be in one of these files, which cannot be read:{}",
                files::printable(name, 200),
                unnamed.concat()
            );
        }
        Ok(())
    }

    /// Names close to `name`, for "did you mean".
    pub fn suggestions(&self, name: &str) -> Vec<String> {
        let mut scored: Vec<(usize, &String)> = self
            .entries
            .keys()
            .chain(self.tags.keys())
            .map(|k| (strsim::levenshtein(k, name), k))
            .filter(|(d, k)| *d <= name.len() / 3 + 2 || k.contains(name))
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, k)| k.clone()).collect()
    }
}

/// A path safe to print in a message.
pub(super) fn shown(path: &Path) -> String {
    files::printable(&path.display().to_string(), 500)
}

/// The names a task file that does not parse appears to declare, from its top-level lines:
/// `task: NAME` (a task), else `group: NAME` (a group), and `tag: NAME` / `tag: [A, B]` / a
/// `tag:` list (its tags). A group's `task:` list names its children, not itself.
fn declared_names(path: &Path) -> (Vec<String>, Vec<String>) {
    // Only regular files are opened: opening a pipe blocks until something writes to it.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Default::default();
    }
    let Ok(file) = std::fs::File::open(path) else {
        return Default::default();
    };
    let mut bytes = Vec::new();
    if std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_YAML_BYTES), &mut bytes).is_err() {
        return Default::default();
    }
    let text = String::from_utf8_lossy(&bytes);
    let scalar = |value: &str| -> Option<String> {
        let value = value.split(" #").next().unwrap_or_default().trim();
        let value = value.trim_matches(|c| c == '"' || c == '\'').trim();
        (!value.is_empty() && !value.starts_with(['[', '{', '|', '>', '&', '*', '!']))
            .then(|| value.to_owned())
    };
    let (mut task, mut group, mut tags) = (None, None, Vec::new());
    let mut in_tag_list = false;
    for line in text.lines() {
        if in_tag_list {
            match line.trim_start().strip_prefix("- ") {
                Some(item) if line.starts_with([' ', '-']) => tags.extend(scalar(item)),
                _ if line.trim().is_empty() || line.trim_start().starts_with('#') => {}
                _ => in_tag_list = false,
            }
            if in_tag_list {
                continue;
            }
        }
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        match key {
            "task" => task = task.or(scalar(value)),
            "group" => group = group.or(scalar(value)),
            "tag" => {
                let value = value.split(" #").next().unwrap_or_default().trim();
                if value.is_empty() {
                    in_tag_list = true;
                } else if let Some(list) = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
                    tags.extend(list.split(',').filter_map(scalar));
                } else {
                    tags.extend(scalar(value));
                }
            }
            _ => {}
        }
    }
    (task.or(group).into_iter().collect(), tags)
}

/// A YAML file with its `include`s merged (the included file first, this file's keys on top).
pub fn load_yaml_config(path: &Path) -> Result<Map<String, Value>> {
    load_yaml_config_chain(path, &mut Vec::new())
}

/// `chain`: the files that included this one, outermost first, to refuse cycles by name.
fn load_yaml_config_chain(path: &Path, chain: &mut Vec<PathBuf>) -> Result<Map<String, Value>> {
    let identity = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    if let Some(start) = chain.iter().position(|p| *p == identity) {
        let cycle: Vec<String> = chain[start..]
            .iter()
            .chain([&identity])
            .map(|p| shown(p))
            .collect();
        bail!("include cycle: {}", cycle.join(" -> "));
    }
    if chain.len() >= MAX_INCLUDE_DEPTH {
        bail!(
            "'{}': the include chain is more than {MAX_INCLUDE_DEPTH} files long",
            shown(path)
        );
    }
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read task file '{}'", shown(path)))?;
    if !meta.is_file() {
        bail!(
            "task file '{}' is {}, not a regular file",
            shown(path),
            if meta.is_dir() {
                "a folder"
            } else {
                "a device, pipe or socket"
            }
        );
    }
    let text = files::read_text(path, "task file", MAX_YAML_BYTES)?;
    let yaml = parse_yaml(text, path)?;
    let Value::Object(mut config) = yaml_to_json(yaml) else {
        bail!("'{}' is not a YAML mapping", shown(path));
    };
    match config.remove("include") {
        None => {}
        Some(Value::String(include)) => {
            let dir = path.parent().unwrap_or(Path::new("."));
            chain.push(identity);
            let base = load_yaml_config_chain(&dir.join(&include), chain);
            chain.pop();
            let mut base = base.with_context(|| format!("included from '{}'", shown(path)))?;
            base.extend(config);
            config = base;
        }
        Some(other) => bail!(
            "'{}': `include` must name one YAML file, not {}",
            shown(path),
            files::printable(&other.to_string(), 200)
        ),
    }
    Ok(config)
}

/// Brackets open at once in a task file; lm-eval's nest two or three deep.
const MAX_BRACKET_NESTING: usize = 1000;
/// How long one YAML parse may take; a few-kilobyte task file parses in microseconds.
const YAML_PARSE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Parses YAML without hanging: libyaml's scanner takes time quadratic in the bracket nesting
/// (a file of 100,000 `[` takes half a minute, 16 MiB of them hours). Deep nesting is refused
/// from a count of the brackets, and the parse runs on a thread of its own with a deadline, for
/// nesting the count cannot see (brackets inside strings) and whatever else is slow; a parse
/// past its deadline is left to finish in the background.
fn parse_yaml(text: String, path: &Path) -> Result<serde_yaml_ng::Value> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for byte in text.bytes() {
        match byte {
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    if deepest > MAX_BRACKET_NESTING {
        bail!(
            "'{}' nests brackets more than {MAX_BRACKET_NESTING} deep; it is not a task file",
            shown(path)
        );
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("yaml".into())
        .spawn(move || {
            let _ = tx.send(serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text));
        })
        .context("cannot start a thread to read YAML")?;
    match rx.recv_timeout(YAML_PARSE_DEADLINE) {
        Ok(parsed) => parsed.with_context(|| format!("'{}' is not valid YAML", shown(path))),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => bail!(
            "'{}': the YAML parser did not finish in {} s (deeply nested brackets?); it is not a task file",
            shown(path),
            YAML_PARSE_DEADLINE.as_secs()
        ),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            bail!("'{}': the YAML parser failed without an answer", shown(path))
        }
    }
}

/// YAML to JSON; tags such as lm-eval's `!function utils.process_docs` become `{"!function": ...}`.
fn yaml_to_json(value: serde_yaml_ng::Value) -> Value {
    match value {
        serde_yaml_ng::Value::Null => Value::Null,
        serde_yaml_ng::Value::Bool(b) => Value::Bool(b),
        serde_yaml_ng::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else {
                n.as_f64().map_or(Value::Null, Value::from)
            }
        }
        serde_yaml_ng::Value::String(s) => Value::String(s),
        serde_yaml_ng::Value::Sequence(seq) => Value::Array(seq.into_iter().map(yaml_to_json).collect()),
        serde_yaml_ng::Value::Mapping(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        serde_yaml_ng::Value::String(s) => s,
                        other => serde_yaml_ng::to_string(&other)
                            .unwrap_or_default()
                            .trim()
                            .to_owned(),
                    };
                    (key, yaml_to_json(v))
                })
                .collect(),
        ),
        serde_yaml_ng::Value::Tagged(tagged) => {
            let mut map = Map::new();
            map.insert(tagged.tag.to_string(), yaml_to_json(tagged.value));
            Value::Object(map)
        }
    }
}

fn string_list(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) => list
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    }
}
