//! One task's output (lm-eval's `TaskOutput`): every document's metric values and sample line,
//! from its answers or generations, and their aggregation into the task's scores.

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::generative::{ExactMatch, Filter};
use super::groups::{MetricMean, Summary};
use super::metrics::{self, MetricItem};
use super::requests::{Document, gold_index};
use super::samples;
use super::task::{OutputType, Target, Task};
use crate::contract::results::{Scores, Stderr};
use crate::infer::lm::{Loglikelihood, TokenRequest};

/// Generations of the generate_until documents, by task name and document id.
pub type Generations = HashMap<(String, usize), String>;

/// One task's per-document metric values (by `metric` or `metric,filter`, each in document
/// order) and sample lines.
#[derive(Default)]
pub struct TaskOutput {
    pub items: BTreeMap<String, Vec<MetricItem>>,
    pub samples: Vec<Value>,
}

/// What a task's `results` entry is named and which metrics it reports: all that scoring its
/// items needs of the task (a merge has the label, not the task).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLabel {
    pub name: String,
    pub alias: String,
    pub metrics: Vec<String>,
}

impl TaskLabel {
    pub fn of(task: &Task) -> Self {
        Self {
            name: task.name.clone(),
            alias: task.alias.clone().unwrap_or_else(|| task.name.clone()),
            metrics: task.metrics.iter().map(|m| m.name.clone()).collect(),
        }
    }
}

/// The filters of a task, in the order its sample lines list them.
pub fn filter_names(task: &Task) -> Result<Vec<String>> {
    Ok(match task.output_type {
        OutputType::GenerateUntil => Filter::from_config(&task.config)?
            .into_iter()
            .map(|f| f.name)
            .collect(),
        _ => vec!["none".to_owned()],
    })
}

impl TaskOutput {
    /// Scores a task's documents: from the loglikelihood answers, or from the generations.
    pub fn of(
        task: &Task,
        documents: &[Document],
        answers: &HashMap<TokenRequest, Loglikelihood>,
        generations: &Generations,
    ) -> Result<Self> {
        if task.output_type == OutputType::GenerateUntil {
            return Self::generated(task, documents, generations);
        }
        let metric_names: Vec<String> = task.metrics.iter().map(|m| m.name.clone()).collect();
        let mut output = Self::default();
        for doc in documents {
            let answers: Vec<Loglikelihood> = doc.requests.iter().map(|r| r.answer(answers)).collect();
            let doc_metrics: Vec<(String, MetricItem)> =
                document_metrics(task, doc, &answers, &metric_names)?
                    .into_iter()
                    .filter(|(m, _)| metric_names.contains(m))
                    .collect();
            for (m, v) in &doc_metrics {
                output.items.entry(m.clone()).or_default().push(*v);
            }
            let rolling = task.output_type == OutputType::LoglikelihoodRolling;
            output
                .samples
                .push(samples::scored(doc, &answers, &doc_metrics, rolling));
        }
        Ok(output)
    }

    /// Per-filter exact_match values and the sample lines (one per document and filter, as
    /// lm-eval).
    fn generated(task: &Task, documents: &[Document], generations: &Generations) -> Result<Self> {
        let filters = Filter::from_config(&task.config)?;
        let exact_match = ExactMatch::from_metric(&exact_match_entry(task))?;
        let mut output = Self::default();
        for filter in &filters {
            for doc in documents {
                let response = &generations[&(task.name.clone(), doc.doc_id)];
                let filtered = filter.apply(response);
                // Several targets (triviaqa's aliases): a match with any of them counts.
                let score = references(task, doc)?
                    .iter()
                    .map(|g| exact_match.score(&filtered, g))
                    .fold(0.0, f64::max);
                output
                    .items
                    .entry(format!("exact_match,{}", filter.name))
                    .or_default()
                    .push(MetricItem::Value(score));
                output
                    .samples
                    .push(samples::generated(doc, response, &filter.name, &filtered, score));
            }
        }
        Ok(output)
    }

    /// The task's `results` entry, and the summary its groups pool (filter `none`).
    pub fn scores(&self, label: &TaskLabel, documents: usize) -> (Scores, Summary) {
        let mut scores = Scores {
            name: Some(label.name.clone()),
            alias: Some(label.alias.clone()),
            sample_len: Some(documents),
            ..Scores::default()
        };
        let mut summary = Summary {
            documents,
            ..Summary::default()
        };
        // Keys are `metric` (filter "none") or `metric,filter` (generate_until filter pipelines).
        for (key, items) in &self.items {
            let (metric, filter) = key.split_once(',').unwrap_or((key, "none"));
            if !label.metrics.iter().any(|m| m == metric) || items.is_empty() {
                continue;
            }
            let (mean, stderr) = aggregate(metric, items);
            scores.insert(metric, filter, mean, Stderr::from_option(stderr));
            if filter == "none" {
                summary
                    .metrics
                    .insert(metric.to_owned(), MetricMean { mean, stderr });
            }
        }
        (scores, summary)
    }
}

/// A loglikelihood document's metric values, by its task's output type.
fn document_metrics(
    task: &Task,
    doc: &Document,
    answers: &[Loglikelihood],
    metric_names: &[String],
) -> Result<Vec<(String, MetricItem)>> {
    Ok(match task.output_type {
        OutputType::MultipleChoice => {
            metrics::multiple_choice(answers, &doc.choices, &doc.gold, metric_names)
                .into_iter()
                .map(|(m, v)| (m, MetricItem::Value(v)))
                .collect()
        }
        OutputType::Loglikelihood => vec![(
            "acc".to_owned(),
            MetricItem::Value(f64::from(u8::from(answers[0].is_greedy))),
        )],
        OutputType::LoglikelihoodRolling => {
            let text = super::builtins::counted_text(
                task.process_results_builtin(),
                &doc.doc,
                doc.requests[0].context(),
            )?;
            let (words, bytes) = (metrics::count_words(text) as f64, text.len() as f64);
            let ll = answers[0].logprob;
            vec![
                ("word_perplexity".to_owned(), MetricItem::Weighted(ll, words)),
                ("byte_perplexity".to_owned(), MetricItem::Weighted(ll, bytes)),
                ("bits_per_byte".to_owned(), MetricItem::Weighted(ll, bytes)),
            ]
        }
        OutputType::GenerateUntil => unreachable!("generations are scored by TaskOutput::generated"),
    })
}

/// The task's exact_match entry of `metric_list` (its options), or the plain metric.
fn exact_match_entry(task: &Task) -> Value {
    task.config
        .metric_list
        .as_ref()
        .and_then(|l| {
            l.iter()
                .find(|m| m.get("metric").and_then(Value::as_str) == Some("exact_match"))
                .cloned()
        })
        .unwrap_or_else(|| json!({"metric": "exact_match"}))
}

/// What a generation is compared with: the gold choice's text, or the target's text(s).
fn references(task: &Task, doc: &Document) -> Result<Vec<String>> {
    Ok(match &doc.target {
        Target::Index(_) if task.has_choices() => {
            let choices = task.doc_to_choice(&doc.doc)?;
            let gold = gold_index(&doc.target, &choices)
                .with_context(|| format!("task '{}', document {}", task.name, doc.doc_id))?;
            vec![choices[gold].clone()]
        }
        Target::Index(i) => vec![i.to_string()],
        Target::Text(t) => vec![t.clone()],
        Target::List(l) => l.iter().map(super::task::value_text).collect(),
    })
}

/// lm-eval's aggregations: `mean` with the sample stderr; `weighted_perplexity`
/// (`exp(-Σll/Σcount)`) and `bits_per_byte` (`-Σll/Σbytes/ln 2`), whose stderr lm-eval leaves "N/A".
fn aggregate(metric: &str, items: &[MetricItem]) -> (f64, Option<f64>) {
    let (mut ll, mut count, mut values) = (0.0, 0.0, Vec::new());
    for item in items {
        match *item {
            MetricItem::Value(v) => values.push(v),
            MetricItem::Weighted(l, n) => {
                ll += l;
                count += n;
            }
        }
    }
    match metric {
        "bits_per_byte" => (-(ll / count) / std::f64::consts::LN_2, None),
        "word_perplexity" | "byte_perplexity" => ((-(ll / count)).exp(), None),
        _ => metrics::mean_and_stderr(&values),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn words_are_counted_as_python_splits_them() {
        // len(re.split(r"\s+", " a  b\nc ")) == 5
        assert_eq!(super::metrics::count_words(" a  b\nc "), 5);
    }
}
