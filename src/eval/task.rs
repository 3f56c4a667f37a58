//! lm-eval task YAMLs: finding tasks, groups and tags in task folders, resolving `include`, and
//! turning documents into prompts and requests exactly as lm-eval 0.4.13's ConfigurableTask does
//! (description, few-shot examples from the sampler, `doc_to_text` / `doc_to_target` /
//! `doc_to_choice` as column names or Jinja templates, target and few-shot delimiters).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::builtins;
use super::data::{self, Dataset};
use super::task_config::TaskConfig;
use super::template;
use crate::files;
use crate::hub::Hub;
use crate::pycompat::literal;
use crate::pycompat::random::PyRandom;

/// lm-eval's default few-shot seed (`simple_evaluate(fewshot_random_seed=1234)`).
pub const FEWSHOT_SEED: u64 = 1234;

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
            .map(|k| (edit_distance(k, name), k))
            .filter(|(d, k)| *d <= name.len() / 3 + 2 || k.contains(name))
            .collect();
        scored.sort();
        scored.into_iter().take(5).map(|(_, k)| k.clone()).collect()
    }
}

/// A path safe to print in a message.
fn shown(path: &Path) -> String {
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

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The kinds of request a task makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputType {
    MultipleChoice,
    Loglikelihood,
    /// Perplexity of whole documents, scored in rolling windows of the model's length.
    LoglikelihoodRolling,
    /// Greedy generation until a stop string, then filters and exact_match.
    GenerateUntil,
}

impl OutputType {
    /// The task's `output_type` (lm-eval's default: generate_until).
    fn of(config: &TaskConfig) -> Result<Self> {
        Ok(match config.output_type.as_deref().unwrap_or("generate_until") {
            "multiple_choice" => Self::MultipleChoice,
            "loglikelihood" => Self::Loglikelihood,
            "loglikelihood_rolling" => Self::LoglikelihoodRolling,
            "generate_until" => Self::GenerateUntil,
            other => bail!(
                "output_type '{other}' is not supported yet (multiple_choice, loglikelihood, loglikelihood_rolling are)"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::MultipleChoice => "multiple_choice",
            Self::Loglikelihood => "loglikelihood",
            Self::LoglikelihoodRolling => "loglikelihood_rolling",
            Self::GenerateUntil => "generate_until",
        }
    }
}

/// A document's target as lm-eval returns it from `doc_to_target`.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Index(i64),
    Text(String),
    List(Vec<Value>),
}

/// What `doc_to_text` returns: the prompt text, or an index. An index makes a task with choices
/// *multiple-input* (lm-eval's winogrande): each choice is a context of its own, and the index is
/// the gold choice.
#[derive(Debug, Clone, PartialEq)]
pub enum DocText {
    Text(String),
    Index(i64),
}

/// One metric of `metric_list`.
#[derive(Debug, Clone)]
pub struct MetricSpec {
    pub name: String,
    pub higher_is_better: bool,
}

/// A loaded task: its merged config, documents, and the few-shot machinery.
pub struct Task {
    pub name: String,
    pub alias: Option<String>,
    pub path: PathBuf,
    pub config: TaskConfig,
    pub output_type: OutputType,
    pub eval_docs: Vec<Value>,
    pub fewshot_docs: Vec<Value>,
    /// Column names of the evaluated split (lm-eval's `features`).
    pub columns: Vec<String>,
    pub metrics: Vec<MetricSpec>,
    pub num_fewshot: usize,
    /// lm-eval's `multiple_input`: the task has choices and `doc_to_text` of its first evaluated
    /// document returns an int. Each choice is then a context (few-shot prefix + choice) with the
    /// same continuation (target delimiter + `doc_to_target`), and `doc_to_text` is the gold index.
    pub multiple_input: bool,
    fewshot_is_eval_split: bool,
    sampler: Sampler,
    rng: PyRandom,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sampler {
    Random,
    FirstN,
}

impl Sampler {
    /// `fewshot_config.sampler` (lm-eval's `default` draws at random).
    fn of(config: &TaskConfig) -> Result<Self> {
        let name = config.fewshot_config.as_ref().and_then(|f| f.sampler.as_deref());
        Ok(match name.unwrap_or("default") {
            "default" => Self::Random,
            "first_n" => Self::FirstN,
            other => bail!("few-shot sampler '{other}' is not supported (default, first_n are)"),
        })
    }
}

impl Task {
    /// [`Task::load_from`] with the Hub the environment configures.
    pub fn load(
        name: &str,
        path: &Path,
        config: Map<String, Value>,
        num_fewshot: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        Self::load_from(&Hub::from_env(), name, path, config, num_fewshot, seed)
    }

    /// Loads the task's data (a hub dataset through `hub`). `num_fewshot` overrides the YAML's;
    /// `seed` is the few-shot seed.
    pub fn load_from(
        hub: &Hub,
        name: &str,
        path: &Path,
        config: Map<String, Value>,
        num_fewshot: Option<usize>,
        seed: u64,
    ) -> Result<Self> {
        let ctx = || format!("task '{}' ({})", files::printable(name, 200), shown(path));
        refuse_python(&config).with_context(ctx)?;
        let config = TaskConfig::from_yaml(config).with_context(ctx)?;
        let output_type = OutputType::of(&config).with_context(ctx)?;
        let dataset = load_dataset(hub, &config, path).with_context(ctx)?;
        let eval_split = config
            .eval_split()
            .with_context(|| format!("{}: sets neither test_split nor validation_split", ctx()))?
            .to_owned();
        let eval = dataset.get(&eval_split).with_context(|| {
            format!(
                "{}: the dataset has no split '{eval_split}' (it has {:?})",
                ctx(),
                dataset.keys()
            )
        })?;
        let fewshot_split = config.fewshot_source().unwrap_or(&eval_split).to_owned();
        let fewshot_docs = dataset
            .get(&fewshot_split)
            .map(|s| s.docs.clone())
            .unwrap_or_default();
        let sampler = Sampler::of(&config).with_context(ctx)?;
        // lm-eval's simple_evaluate ignores --num_fewshot for tasks whose YAML says 0 (wmdp).
        let num_fewshot = match config.num_fewshot() {
            Some(0) => 0,
            configured => num_fewshot.or(configured).unwrap_or(0),
        };
        if num_fewshot > 0 && fewshot_docs.is_empty() {
            bail!(
                "{}: {num_fewshot}-shot needs few-shot documents but split '{fewshot_split}' is empty or missing",
                ctx()
            );
        }
        let metrics = metric_specs(&config, output_type).with_context(ctx)?;
        let mut task = Self {
            name: name.to_owned(),
            alias: config.task_alias.clone(),
            path: path.to_path_buf(),
            output_type,
            eval_docs: eval.docs.clone(),
            columns: eval.columns.clone(),
            fewshot_docs,
            metrics,
            num_fewshot,
            multiple_input: false,
            // lm-eval compares the *configured* few-shot split with test_split.
            fewshot_is_eval_split: config.configured_fewshot_split() == config.test_split.as_deref(),
            sampler,
            rng: PyRandom::new(seed),
            config,
        };
        // lm-eval decides from the first document of the evaluated split (`task_docs[0]`).
        if task.has_choices()
            && let Some(first) = task.eval_docs.first()
        {
            let first = first.clone();
            task.multiple_input = matches!(
                task.doc_to_text_value(&first)
                    .with_context(|| format!("{}: doc_to_text of document 0", ctx()))?,
                DocText::Index(_)
            );
        }
        Ok(task)
    }

    /// A Jinja field of the task rendered over `doc`; errors name the task, its file and the field.
    fn render(&self, field: &str, template: &str, doc: &Value) -> Result<String> {
        template::render(template, doc).with_context(|| {
            format!(
                "task '{}' ({}), {field}",
                files::printable(&self.name, 200),
                shown(&self.path)
            )
        })
    }

    pub fn has_choices(&self) -> bool {
        self.config.has_choices()
    }

    /// The `process_results` builtin the task names, if any.
    pub fn process_results_builtin(&self) -> Option<&str> {
        self.config.process_results_builtin()
    }

    pub fn version(&self) -> Value {
        self.config.version()
    }

    pub fn target_delimiter(&self) -> String {
        TaskConfig::text_or(&self.config.target_delimiter, " ").to_owned()
    }

    pub fn fewshot_delimiter(&self) -> String {
        TaskConfig::text_or(&self.config.fewshot_delimiter, "\n\n").to_owned()
    }

    /// `doc_to_text` as text: a column's value, the rendered template, or a builtin's string (an
    /// index is written as its digits).
    pub fn doc_to_text(&self, doc: &Value) -> Result<String> {
        Ok(match self.doc_to_text_value(doc)? {
            DocText::Text(text) => text,
            DocText::Index(i) => i.to_string(),
        })
    }

    /// `doc_to_text` as lm-eval returns it: an int for an integer `doc_to_text`, an integer
    /// column, a builtin returning an int, or (when the task has choices) a template rendering
    /// only digits; text otherwise.
    pub fn doc_to_text_value(&self, doc: &Value) -> Result<DocText> {
        let from_value = |v: &Value| match v {
            Value::Number(n) if n.is_i64() => DocText::Index(n.as_i64().unwrap_or_default()),
            other => DocText::Text(value_text(other)),
        };
        match &self.config.doc_to_text {
            Some(Value::String(spec)) => {
                if let Some(v) = self.column(doc, spec) {
                    return Ok(from_value(v));
                }
                let rendered = self.render("doc_to_text", spec, doc)?;
                if self.has_choices()
                    && crate::pycompat::unicode::isdigit(&rendered)
                    && let Ok(index) = rendered.parse::<i64>()
                {
                    return Ok(DocText::Index(index));
                }
                Ok(DocText::Text(rendered))
            }
            Some(number @ Value::Number(_)) => Ok(from_value(number)),
            Some(Value::Object(map)) if map.contains_key("!function") => {
                let name = map["!function"].as_str().unwrap_or_default();
                Ok(from_value(&builtins::apply(name, doc)?))
            }
            None => bail!("task '{}' has no doc_to_text", self.name),
            Some(other) => bail!("task '{}': doc_to_text {other} is not supported", self.name),
        }
    }

    /// `doc_to_target`, with lm-eval's conversions: digit strings become indices when the task has
    /// choices; a rendered `[...]` becomes a list.
    pub fn doc_to_target(&self, doc: &Value) -> Result<Target> {
        let has_choices = self.has_choices();
        match &self.config.doc_to_target {
            Some(Value::Object(map)) if map.contains_key("!function") => {
                let name = map["!function"].as_str().unwrap_or_default();
                Ok(match builtins::apply(name, doc)? {
                    Value::Number(n) if n.is_i64() => Target::Index(n.as_i64().unwrap_or_default()),
                    Value::Array(list) => Target::List(list),
                    other => Target::Text(value_text(&other)),
                })
            }
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Target::Index)
                .context("doc_to_target must be an integer"),
            Some(Value::Array(list)) => Ok(Target::List(list.clone())),
            Some(Value::String(spec)) => {
                if let Some(v) = self.column(doc, spec) {
                    return Ok(match v {
                        Value::Number(n) if n.is_i64() => Target::Index(n.as_i64().unwrap_or_default()),
                        Value::Array(list) => Target::List(list.clone()),
                        other => Target::Text(value_text(other)),
                    });
                }
                let rendered = self.render("doc_to_target", spec, doc)?;
                if has_choices && crate::pycompat::unicode::isdigit(&rendered) {
                    let index = rendered
                        .parse::<i64>()
                        .with_context(|| format!("target '{rendered}' is too large"))?;
                    return Ok(Target::Index(index));
                }
                if rendered.len() >= 2
                    && rendered.starts_with('[')
                    && rendered.ends_with(']')
                    && let Ok(Value::Array(list)) = literal::literal_eval(&rendered).and_then(|l| l.to_json())
                {
                    return Ok(Target::List(list));
                }
                Ok(Target::Text(rendered))
            }
            None => bail!("task '{}' has no doc_to_target", self.name),
            Some(other) => bail!("task '{}': doc_to_target {other} is not supported", self.name),
        }
    }

    /// `doc_to_choice`: a list column, a template rendering a Python list, a list, or a map's values.
    pub fn doc_to_choice(&self, doc: &Value) -> Result<Vec<String>> {
        let list: Vec<Value> = match &self.config.doc_to_choice {
            Some(Value::String(spec)) => match self.column(doc, spec) {
                Some(Value::Array(list)) => list.clone(),
                Some(other) => bail!("column '{spec}' holds {other}, not a list of choices"),
                None => {
                    let rendered = self.render("doc_to_choice", spec, doc)?;
                    match literal::literal_eval(&rendered).and_then(|l| l.to_json()) {
                        Ok(Value::Array(list)) => list,
                        _ => bail!("doc_to_choice rendered {rendered:?}, which is not a Python list"),
                    }
                }
            },
            Some(Value::Array(list)) => list.clone(),
            Some(Value::Object(map)) if map.contains_key("!function") => {
                let name = map["!function"].as_str().unwrap_or_default();
                match builtins::apply(name, doc)? {
                    Value::Array(list) => list,
                    other => bail!("`!function {name}` returned {other}, not a list of choices"),
                }
            }
            Some(Value::Object(map)) => map.values().cloned().collect(),
            None => bail!("task '{}' has no doc_to_choice", self.name),
            Some(other) => bail!("task '{}': doc_to_choice {other} is not supported", self.name),
        };
        Ok(list.iter().map(value_text).collect())
    }

    fn column<'d>(&self, doc: &'d Value, name: &str) -> Option<&'d Value> {
        if self.columns.iter().any(|c| c == name) {
            doc.get(name)
        } else {
            None
        }
    }

    /// The prompt for `doc`: description, few-shot examples (each is text, target delimiter,
    /// answer, few-shot delimiter), then the document's text. Draws few-shot examples from the
    /// task's sampler, so calling it in document order reproduces lm-eval's random draws.
    pub fn fewshot_context(&mut self, doc: &Value) -> Result<String> {
        let mut context = self.fewshot_prefix(doc)?;
        context.push_str(&self.doc_to_text(doc)?);
        Ok(context)
    }

    /// A multiple-input task's contexts for `doc` (lm-eval's `multiple_input_context`): the
    /// description and few-shot examples, then one choice, for each choice. Draws few-shot
    /// examples as [`Task::fewshot_context`] does.
    pub fn multiple_input_contexts(&mut self, doc: &Value) -> Result<Vec<String>> {
        let prefix = self.fewshot_prefix(doc)?;
        Ok(self
            .doc_to_choice(doc)?
            .iter()
            .map(|choice| format!("{prefix}{choice}"))
            .collect())
    }

    /// The description and the few-shot examples. A multiple-input task's example is its gold
    /// choice (`doc_to_choice[doc_to_text]`), then the target delimiter and `doc_to_target`.
    fn fewshot_prefix(&mut self, doc: &Value) -> Result<String> {
        let mut context = match &self.config.description {
            Some(Value::String(d)) if !d.is_empty() => match self.column(doc, d) {
                Some(v) => value_text(v),
                None => self.render("description", d, doc)?,
            },
            _ => String::new(),
        };
        if self.num_fewshot > 0 {
            let examples = self.sample_fewshot(doc)?;
            let target_delimiter = self.target_delimiter();
            let fewshot_delimiter = self.fewshot_delimiter();
            for example in &examples {
                let text = match self.doc_to_text_value(example)? {
                    DocText::Index(i) if self.multiple_input => self
                        .doc_to_choice(example)?
                        .get(i as usize)
                        .cloned()
                        .with_context(|| format!("few-shot doc_to_text {i} is out of range"))?,
                    DocText::Index(i) => i.to_string(),
                    DocText::Text(text) => text,
                };
                let target = self.doc_to_target(example)?;
                // lm-eval: an example "has an answer" unless its raw target is the empty string.
                let has_answer = target != Target::Text(String::new());
                let answer = match target {
                    // A multiple-input example's choices went into its text: an int target is
                    // no index into them.
                    Target::Index(i) if self.has_choices() && !self.multiple_input => {
                        let choices = self.doc_to_choice(example)?;
                        choices
                            .get(i as usize)
                            .cloned()
                            .with_context(|| format!("few-shot target {i} is out of range"))?
                    }
                    Target::Index(i) => i.to_string(),
                    Target::Text(t) => t,
                    Target::List(list) => list.first().map(value_text).unwrap_or_default(),
                };
                context.push_str(&text);
                if has_answer {
                    context.push_str(&target_delimiter);
                    context.push_str(&answer);
                    context.push_str(&fewshot_delimiter);
                }
            }
        }
        Ok(context)
    }

    fn sample_fewshot(&mut self, doc: &Value) -> Result<Vec<Value>> {
        let n = self.num_fewshot;
        let exclude = self.fewshot_is_eval_split.then_some(doc);
        match self.sampler {
            Sampler::FirstN => {
                let pool: Vec<&Value> = self.fewshot_docs.iter().filter(|d| Some(*d) != exclude).collect();
                if n > pool.len() {
                    bail!(
                        "task '{}': {n}-shot asks for more few-shot examples than the {} available",
                        self.name,
                        pool.len()
                    );
                }
                Ok(pool[..n].iter().map(|d| (*d).clone()).collect())
            }
            Sampler::Random => {
                let draw = if exclude.is_some() { n + 1 } else { n };
                if draw > self.fewshot_docs.len() {
                    bail!(
                        "task '{}': {n}-shot asks for more few-shot examples than the {} available",
                        self.name,
                        self.fewshot_docs.len()
                    );
                }
                let drawn = self.rng.sample(&self.fewshot_docs, draw);
                let mut kept: Vec<Value> = drawn.into_iter().filter(|d| Some(d) != exclude).take(n).collect();
                if kept.len() < n {
                    let pool: Vec<Value> = self
                        .fewshot_docs
                        .iter()
                        .filter(|d| Some(*d) != exclude)
                        .cloned()
                        .collect();
                    kept = self.rng.sample(&pool, n);
                }
                Ok(kept)
            }
        }
    }
}

/// How lm-eval turns a document value into prompt text (`str(value)` for non-strings).
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Null => "None".into(),
        other => other.to_string(),
    }
}

fn load_dataset(hub: &Hub, config: &TaskConfig, yaml_path: &Path) -> Result<Dataset> {
    let path = config
        .dataset_path
        .as_deref()
        .context("the task sets no dataset_path")?;
    let kwargs = config.dataset_kwargs.as_ref();
    let yaml_dir = yaml_path.parent().unwrap_or(Path::new("."));
    match (path, kwargs.and_then(|k| k.get("data_files"))) {
        ("json" | "csv" | "parquet", Some(files)) => data::load_local(path, files, yaml_dir),
        ("json" | "csv" | "parquet", None) => bail!("dataset_path '{path}' needs dataset_kwargs.data_files"),
        (repo, _) => super::hub_data::load_hub_dataset(hub, repo, config.dataset_name.as_deref(), kwargs),
    }
}

/// Task fields that name Python code: only the builtins sae-onnx reimplements may.
fn refuse_python(config: &Map<String, Value>) -> Result<()> {
    for key in [
        "process_docs",
        "process_results",
        "doc_to_text",
        "doc_to_target",
        "doc_to_choice",
        "custom_dataset",
    ] {
        if let Some(Value::Object(map)) = config.get(key)
            && let Some(function) = map.get("!function")
            && !function.as_str().is_some_and(builtins::is_known)
        {
            bail!(
                "`{key}: !function ...` calls Python code, which sae-onnx cannot run; \
                 express it as a Jinja template or preprocess the data into a local json/csv file"
            );
        }
    }
    Ok(())
}

/// `metric_list`, or lm-eval's defaults for the output type.
fn metric_specs(config: &TaskConfig, output_type: OutputType) -> Result<Vec<MetricSpec>> {
    // lm-eval's `perplexity` metric reports a bootstrapped stderr we do not reproduce: refused.
    let supported: &[&str] = match output_type {
        OutputType::MultipleChoice => &["acc", "acc_norm", "acc_bytes", "exact_match"],
        OutputType::Loglikelihood => &["acc"],
        OutputType::LoglikelihoodRolling => &["word_perplexity", "byte_perplexity", "bits_per_byte"],
        OutputType::GenerateUntil => &["exact_match"],
    };
    let defaults: &[(&str, bool)] = match output_type {
        OutputType::MultipleChoice => &[("acc", true), ("acc_norm", true)],
        OutputType::Loglikelihood => &[("acc", true)],
        OutputType::LoglikelihoodRolling => &[
            ("word_perplexity", false),
            ("byte_perplexity", false),
            ("bits_per_byte", false),
        ],
        OutputType::GenerateUntil => &[("exact_match", true)],
    };
    let Some(entries) = config.metric_entries() else {
        return Ok(defaults
            .iter()
            .map(|(n, h)| MetricSpec {
                name: (*n).into(),
                higher_is_better: *h,
            })
            .collect());
    };
    entries?
        .iter()
        .map(|m| {
            let name = m
                .metric
                .as_ref()
                .and_then(Value::as_str)
                .context("a metric_list entry has no `metric`")?;
            // lm-eval 0.4.13's get_metric logs "not found in the evaluate library" and returns
            // None, and process_results leaves the metric out: the run succeeds without the
            // score asked for. We refuse it instead, so a misspelt metric is seen at once.
            if !supported.contains(&name) {
                bail!(
                    "metric '{name}' is not supported for {} tasks (supported: {})",
                    output_type.name(),
                    supported.join(", ")
                );
            }
            let expected_aggregation = match name {
                "word_perplexity" | "byte_perplexity" => "weighted_perplexity",
                "bits_per_byte" => "bits_per_byte",
                _ => "mean",
            };
            if let Some(agg) = m.aggregation.as_ref().and_then(Value::as_str)
                && agg != expected_aggregation
            {
                bail!("aggregation '{agg}' for metric '{name}' is not supported ({expected_aggregation} is)");
            }
            let default_higher = !name.contains("perplexity") && name != "bits_per_byte";
            Ok(MetricSpec {
                name: name.to_owned(),
                higher_is_better: m
                    .higher_is_better
                    .as_ref()
                    .and_then(Value::as_bool)
                    .unwrap_or(default_higher),
            })
        })
        .collect()
}
