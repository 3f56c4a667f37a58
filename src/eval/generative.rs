//! `generate_until` tasks as lm-eval 0.4.13 runs them: greedy generation from the prompt (left-
//! truncated to leave room for `max_gen_toks`), cut at the first `until` string (the EOS text is
//! added to them), then each `filter_list` pipeline (regex, take_first, ...) and `exact_match`
//! with its options (regexes_to_ignore, ignore_case, ignore_punctuation, ignore_numbers).

use anyhow::{Context, Result, bail};
use regex::Regex;
use serde_json::Value;

use super::task_config::TaskConfig;
use crate::pycompat::re as pyre;

/// The generation settings of a task (`generation_kwargs`), normalized as lm-eval does.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSpec {
    pub until: Vec<String>,
    pub max_gen_toks: usize,
}

impl GenSpec {
    pub fn from_config(config: &TaskConfig, fewshot_delimiter: &str) -> Result<Self> {
        let kwargs = config.generation_kwargs.as_ref();
        let until = match kwargs.and_then(|k| k.get("until")) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Some(other) => bail!("generation_kwargs.until must be a string or a list, not {other}"),
            None => vec![fewshot_delimiter.to_owned()],
        };
        let max_gen_toks = [
            "max_gen_toks",
            "max_new_tokens",
            "max_tokens",
            "max_completion_tokens",
        ]
        .iter()
        .find_map(|k| kwargs.and_then(|kw| kw.get(*k)).and_then(Value::as_u64))
        .unwrap_or(256) as usize;
        let temperature = kwargs
            .and_then(|k| k.get("temperature"))
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let do_sample = kwargs
            .and_then(|k| k.get("do_sample"))
            .and_then(Value::as_bool)
            .unwrap_or(temperature > 0.0);
        if do_sample {
            bail!(
                "generation_kwargs asks for sampling (do_sample / temperature > 0); sae-onnx eval generates greedily only"
            );
        }
        Ok(Self { until, max_gen_toks })
    }
}

/// One step of a filter pipeline.
#[derive(Debug, Clone)]
enum Step {
    Regex {
        regex: Regex,
        group_select: i64,
        fallback: String,
    },
    TakeFirst,
    Lowercase,
    Uppercase,
    RemoveWhitespace,
}

/// A named filter pipeline of `filter_list` (`none` = take_first when the task has none).
#[derive(Debug, Clone)]
pub struct Filter {
    pub name: String,
    steps: Vec<Step>,
}

impl Filter {
    pub fn from_config(config: &TaskConfig) -> Result<Vec<Self>> {
        let Some(list) = &config.filter_list else {
            return Ok(vec![Self {
                name: "none".into(),
                steps: vec![Step::TakeFirst],
            }]);
        };
        list.iter()
            .map(|f| {
                let name = f.get("name").and_then(Value::as_str).context("a filter_list entry has no name")?.to_owned();
                let steps = f
                    .get("filter")
                    .and_then(Value::as_array)
                    .context("a filter_list entry has no `filter` steps")?
                    .iter()
                    .map(|step| {
                        let function = step.get("function").and_then(Value::as_str).unwrap_or("");
                        Ok(match function {
                            "regex" => Step::Regex {
                                regex: pyre::compile(
                                    step.get("regex_pattern").and_then(Value::as_str).unwrap_or(r"#### (\-?[0-9\.\,]+)"),
                                )
                                .with_context(|| format!("filter '{name}': regex_pattern is not a supported regex"))?,
                                group_select: step.get("group_select").and_then(Value::as_i64).unwrap_or(0),
                                fallback: step.get("fallback").and_then(Value::as_str).unwrap_or("[invalid]").to_owned(),
                            },
                            "take_first" => Step::TakeFirst,
                            "lowercase" => Step::Lowercase,
                            "uppercase" => Step::Uppercase,
                            "remove_whitespace" => Step::RemoveWhitespace,
                            other => bail!("filter '{name}': function '{other}' is not supported (regex, take_first, lowercase, uppercase, remove_whitespace are)"),
                        })
                    })
                    .collect::<Result<_>>()?;
                Ok(Self { name, steps })
            })
            .collect()
    }

    /// The filtered response (one generation per document: `repeats` is 1).
    pub fn apply(&self, response: &str) -> String {
        let mut value = response.to_owned();
        for step in &self.steps {
            value = match step {
                Step::Regex {
                    regex,
                    group_select,
                    fallback,
                } => regex_extract(regex, *group_select, fallback, &value),
                Step::TakeFirst => value,
                Step::Lowercase => value.to_lowercase(),
                Step::Uppercase => value.to_uppercase(),
                // lm-eval's WhitespaceFilter strips leading spaces only.
                Step::RemoveWhitespace => value.trim_start_matches(' ').to_owned(),
            };
        }
        value
    }
}

/// lm-eval's RegexFilter: `findall`, pick `group_select` (negative counts from the end); a match
/// with several groups gives its first non-empty group; stripped; `fallback` when nothing matches.
fn regex_extract(regex: &Regex, group_select: i64, fallback: &str, text: &str) -> String {
    let groups = regex.captures_len() - 1;
    let matches: Vec<String> = regex
        .captures_iter(text)
        .map(|c| match groups {
            0 => c.get(0).map_or("", |m| m.as_str()).to_owned(),
            1 => c.get(1).map_or("", |m| m.as_str()).to_owned(),
            _ => (1..=groups)
                .filter_map(|g| c.get(g))
                .map(|m| m.as_str())
                .find(|s| !s.is_empty())
                .unwrap_or(fallback)
                .to_owned(),
        })
        .collect();
    if matches.is_empty() {
        return fallback.to_owned();
    }
    let index = if group_select < 0 {
        matches.len() as i64 + group_select
    } else {
        group_select
    };
    match usize::try_from(index).ok().and_then(|i| matches.get(i)) {
        Some(m) => m.trim().to_owned(),
        None => fallback.to_owned(),
    }
}

/// `exact_match` with the HF-evaluate options lm-eval passes from `metric_list`.
#[derive(Debug, Clone, Default)]
pub struct ExactMatch {
    regexes_to_ignore: Vec<Regex>,
    ignore_case: bool,
    ignore_punctuation: bool,
    ignore_numbers: bool,
}

impl ExactMatch {
    pub fn from_metric(entry: &Value) -> Result<Self> {
        let regexes_to_ignore = entry
            .get("regexes_to_ignore")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|r| {
                pyre::compile(r).with_context(|| format!("regexes_to_ignore: '{r}' is not a supported regex"))
            })
            .collect::<Result<_>>()?;
        let flag = |k: &str| entry.get(k).and_then(Value::as_bool).unwrap_or(false);
        Ok(Self {
            regexes_to_ignore,
            ignore_case: flag("ignore_case"),
            ignore_punctuation: flag("ignore_punctuation"),
            ignore_numbers: flag("ignore_numbers"),
        })
    }

    pub fn score(&self, prediction: &str, reference: &str) -> f64 {
        let normalize = |s: &str| {
            let mut s = s.to_owned();
            for r in &self.regexes_to_ignore {
                s = r.replace_all(&s, "").into_owned();
            }
            if self.ignore_case {
                s = s.to_lowercase();
            }
            if self.ignore_punctuation {
                s.retain(|c| !c.is_ascii_punctuation());
            }
            if self.ignore_numbers {
                s.retain(|c| !c.is_ascii_digit());
            }
            s
        };
        f64::from(u8::from(normalize(prediction) == normalize(reference)))
    }
}

/// The response lm-eval keeps: the decoded continuation cut before the first `until` string.
pub fn cut_at_until(text: &str, until: &[String]) -> String {
    let mut s = text;
    for term in until.iter().filter(|t| !t.is_empty()) {
        if let Some(i) = s.find(term.as_str()) {
            s = &s[..i];
        }
    }
    s.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm8k_filters_and_exact_match_follow_lm_eval() {
        let config: TaskConfig = serde_json::from_value(serde_json::json!({"filter_list": [
            {"name": "strict-match", "filter": [{"function": "regex", "regex_pattern": "#### (\\-?[0-9\\.\\,]+)"}, {"function": "take_first"}]},
            {"name": "flexible-extract", "filter": [{"function": "regex", "group_select": -1, "regex_pattern": "(-?[$0-9.,]{2,})|(-?[0-9]+)"}, {"function": "take_first"}]}
        ]}))
        .unwrap();
        let filters = Filter::from_config(&config).unwrap();
        let response = " She has 3 apples and 12 pears. #### 1,200\nnext";
        assert_eq!(filters[0].apply(response), "1,200");
        assert_eq!(filters[1].apply(response), "1,200");
        assert_eq!(filters[0].apply("no answer, 5"), "[invalid]");
        assert_eq!(filters[1].apply("no answer, 5"), "5");
        let em = ExactMatch::from_metric(&serde_json::json!({"metric": "exact_match", "ignore_case": true,
            "regexes_to_ignore": [",", "\\$", "(?s).*#### ", "\\.$"]}))
        .unwrap();
        assert_eq!(em.score("1,200", "The answer is\n#### 1200"), 1.0);
        assert_eq!(em.score("[invalid]", "#### 1200"), 0.0);
        assert_eq!(
            cut_at_until("42 Question: next", &["Question:".into(), "</s>".into()]),
            "42 "
        );
    }
}
