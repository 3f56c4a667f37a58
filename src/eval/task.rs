//! A loaded lm-eval task: its documents turned into prompts exactly as lm-eval 0.4.13's
//! ConfigurableTask does (description, few-shot examples from the sampler, `doc_to_text` /
//! `doc_to_target` / `doc_to_choice` as column names or Jinja templates, target and few-shot
//! delimiters). The task folders' index is [`super::task_index`].

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::{Map, Value};

use super::builtins;
use super::data::{self, Dataset};
use super::task_config::TaskConfig;
use super::task_index::shown;
use super::template;
use crate::files;
use crate::hub::Hub;
use crate::pycompat::literal;
use crate::pycompat::random::PyRandom;

/// lm-eval's default few-shot seed (`simple_evaluate(fewshot_random_seed=1234)`).
pub const FEWSHOT_SEED: u64 = 1234;

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
