//! Building requests: each document's prompts by its task's output type (lm-eval's
//! `construct_requests`), tokenized as lm-eval's HFLM does (`_encode_pair`, `tok_encode`, rolling
//! token windows).

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::task::{DocText, OutputType, Target, Task};
use crate::infer::lm::{Loglikelihood, TokenRequest};
use crate::tokenizer::Tokenizer;

/// One request of one document: lm-eval's arguments (context and continuation, the text of a
/// rolling request, or a generation's context and kwargs) and the token windows scored for it
/// (one, a rolling request's windows, or none for a generation).
pub struct DocRequest {
    pub args: Vec<Value>,
    pub windows: Vec<TokenRequest>,
}

impl DocRequest {
    /// The request's answer: log-probabilities summed over its windows (in order, as lm-eval's
    /// Python `sum`), greedy when every window is.
    pub fn answer(&self, answers: &HashMap<TokenRequest, Loglikelihood>) -> Loglikelihood {
        self.windows.iter().map(|w| answers[w]).fold(
            Loglikelihood {
                logprob: 0.0,
                is_greedy: true,
            },
            |acc, a| Loglikelihood {
                logprob: acc.logprob + a.logprob,
                is_greedy: acc.is_greedy && a.is_greedy,
            },
        )
    }

    /// The first argument: the context, or a rolling request's text.
    pub fn context(&self) -> &str {
        self.args[0].as_str().unwrap_or_default()
    }
}

/// One evaluated document with its requests.
pub struct Document {
    pub doc_id: usize,
    pub doc: Value,
    /// `doc_to_target`, as the samples log it.
    pub target: Target,
    /// What the metrics compare with: the target, or a multiple-input task's `doc_to_text`.
    pub gold: Target,
    pub choices: Vec<String>,
    pub requests: Vec<DocRequest>,
}

/// How prompts become tokens: the tokenizer, whether it adds its special tokens, the token a
/// context that is empty or a rolling window starts from, and the context length.
#[derive(Clone, Copy)]
pub struct RequestEncoder<'a> {
    pub tokenizer: &'a Tokenizer,
    pub add_bos: bool,
    pub prefix_token: u32,
    pub max_length: usize,
}

impl RequestEncoder<'_> {
    /// HFLM's `tok_encode`: the tokenizer's special tokens, unless the text already starts with BOS.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let starts_with_bos = self
            .tokenizer
            .decode_token(self.prefix_token)
            .is_some_and(|bos| text.starts_with(&bos));
        self.tokenizer.encode(text, self.add_bos && !starts_with_bos)
    }

    /// A loglikelihood request of `continuation` after `context`.
    fn pair(&self, context: String, continuation: String) -> Result<DocRequest> {
        let tokens = encode_pair(
            self.tokenizer,
            self.add_bos,
            self.prefix_token,
            &context,
            &continuation,
        )?;
        if tokens.continuation.is_empty() {
            bail!("continuation {continuation:?} encodes to no tokens");
        }
        Ok(DocRequest {
            args: vec![json!(context), json!(continuation)],
            windows: vec![tokens],
        })
    }

    /// Builds document `doc_id`'s requests (drawing its few-shot examples from `task`).
    pub fn document(&self, task: &mut Task, doc_id: usize, doc: Value) -> Result<Document> {
        let target = task.doc_to_target(&doc)?;
        let mut gold = target.clone();
        let (choices, requests) = match task.output_type {
            OutputType::MultipleChoice if task.multiple_input => {
                let (choices, requests, text_gold) = self.multiple_input(task, &doc, &target)?;
                gold = text_gold;
                (choices, requests)
            }
            OutputType::MultipleChoice => {
                let context = task.fewshot_context(&doc)?;
                let delimiter = task.target_delimiter();
                let choices = task.doc_to_choice(&doc)?;
                let requests = choices
                    .iter()
                    .map(|c| self.pair(context.clone(), format!("{delimiter}{c}")))
                    .collect::<Result<_>>()?;
                (choices, requests)
            }
            OutputType::Loglikelihood => {
                let context = task.fewshot_context(&doc)?;
                let continuation = target_text(task, &target)?;
                (Vec::new(), vec![self.pair(context, continuation)?])
            }
            OutputType::LoglikelihoodRolling => {
                let text = target_text(task, &target)?;
                let tokens = self.encode(&text)?;
                let windows = rolling_windows(&tokens, self.prefix_token, self.max_length);
                let request = DocRequest {
                    args: vec![json!(text)],
                    windows,
                };
                (Vec::new(), vec![request])
            }
            OutputType::GenerateUntil => (Vec::new(), vec![generation_request(task, &doc, &target)?]),
        };
        if task.output_type == OutputType::MultipleChoice {
            check_choices(&choices, requests.len(), &gold)?;
        }
        Ok(Document {
            doc_id,
            doc,
            target,
            gold,
            choices,
            requests,
        })
    }

    /// lm-eval's multiple-input mode (winogrande): one context per choice, all with the same
    /// continuation; the gold choice is `doc_to_text`.
    fn multiple_input(
        &self,
        task: &mut Task,
        doc: &Value,
        target: &Target,
    ) -> Result<(Vec<String>, Vec<DocRequest>, Target)> {
        let contexts = task.multiple_input_contexts(doc)?;
        let continuation = format!("{}{}", task.target_delimiter(), target_text(task, target)?);
        let requests = contexts
            .into_iter()
            .map(|context| self.pair(context, continuation.clone()))
            .collect::<Result<_>>()?;
        let gold = match task.doc_to_text_value(doc)? {
            DocText::Index(i) => Target::Index(i),
            DocText::Text(t) => Target::Text(t),
        };
        Ok((task.doc_to_choice(doc)?, requests, gold))
    }
}

/// A generate_until request: the few-shot context and the task's `generation_kwargs`.
fn generation_request(task: &mut Task, doc: &Value, target: &Target) -> Result<DocRequest> {
    if let Target::Index(i) = target
        && task.has_choices()
    {
        let choices = task.doc_to_choice(doc)?;
        gold_index(&Target::Index(*i), &choices)?;
    }
    let context = task.fewshot_context(doc)?;
    let kwargs = Value::Object(task.config.generation_kwargs.clone().unwrap_or_default());
    Ok(DocRequest {
        args: vec![json!(context), kwargs],
        windows: Vec::new(),
    })
}

/// The target of a task whose target is a continuation: text (or an index, as its digits).
fn target_text(task: &Task, target: &Target) -> Result<String> {
    match target {
        Target::Text(t) => Ok(t.clone()),
        Target::Index(i) => Ok(i.to_string()),
        Target::List(_) => bail!("a {} task's target must be text", task.output_type.name()),
    }
}

/// A multiple-choice document has choices, one request per choice and gold labels among them.
fn check_choices(choices: &[String], requests: usize, gold: &Target) -> Result<()> {
    if choices.is_empty() {
        bail!(
            "doc_to_choice gives no choices: a multiple-choice document needs at least one \
             (fix the document's choices or the task's doc_to_choice)"
        );
    }
    if requests != choices.len() {
        bail!(
            "{requests} contexts for {} choices: a multiple-input task needs one context per choice",
            choices.len()
        );
    }
    // lm-eval 0.4.13 logs a warning for such a label and scores the document as wrong: a
    // score computed against no gold at all. We refuse it, naming the document.
    match gold {
        Target::List(list) => {
            for label in list {
                let label = match label {
                    Value::Number(n) => Target::Index(n.as_i64().unwrap_or(-1)),
                    other => Target::Text(super::task::value_text(other)),
                };
                gold_index(&label, choices)?;
            }
        }
        single => {
            gold_index(single, choices)?;
        }
    }
    Ok(())
}

/// The choice a gold label names: an index in range, or the text of one of the choices.
pub fn gold_index(gold: &Target, choices: &[String]) -> Result<usize> {
    let shown = || {
        let list: Vec<String> = choices
            .iter()
            .take(10)
            .map(|c| format!("{:?}", crate::files::printable(c, 60)))
            .collect();
        let more = if choices.len() > 10 { ", …" } else { "" };
        format!("[{}{more}]", list.join(", "))
    };
    match gold {
        Target::Index(i) => usize::try_from(*i)
            .ok()
            .filter(|&i| i < choices.len())
            .with_context(|| {
                format!(
                    "the gold label {i} is out of range: the document has {} choices (0 to {}) {}; \
                     fix the label or the task's doc_to_target",
                    choices.len(),
                    choices.len().saturating_sub(1),
                    shown()
                )
            }),
        Target::Text(text) => choices.iter().position(|c| c == text).with_context(|| {
            format!(
                "the gold answer {:?} is not one of the choices {}; fix the label or the task's doc_to_target",
                crate::files::printable(text, 60),
                shown()
            )
        }),
        Target::List(_) => bail!("a list of gold labels inside a list is not a label"),
    }
}

/// lm-eval's `_encode_pair`: trailing whitespace of the context moves to the continuation, the
/// pair is tokenized whole, and the continuation is the tail beyond the context's tokens.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    add_bos: bool,
    prefix_token: u32,
    context: &str,
    continuation: &str,
) -> Result<TokenRequest> {
    if context.is_empty() {
        return Ok(TokenRequest {
            context: vec![prefix_token],
            continuation: tokenizer.encode(continuation, add_bos)?,
        });
    }
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed.to_owned(),
            format!("{}{continuation}", &context[trimmed.len()..]),
        )
    } else {
        (context.to_owned(), continuation.to_owned())
    };
    let encoder = RequestEncoder {
        tokenizer,
        add_bos,
        prefix_token,
        max_length: 0,
    };
    let whole = encoder.encode(&format!("{context}{continuation}"))?;
    let context_ids = encoder.encode(&context)?;
    let continuation_ids = whole.get(context_ids.len()..).unwrap_or_default().to_vec();
    Ok(TokenRequest {
        context: context_ids,
        continuation: continuation_ids,
    })
}

/// lm-eval's `get_rolling_token_windows(context_len=1)` made disjoint: the first window predicts
/// the first `max_length` tokens after the prefix token; each next window predicts the following
/// `max_length` tokens with as much preceding context as fits.
pub fn rolling_windows(tokens: &[u32], prefix: u32, max_length: usize) -> Vec<TokenRequest> {
    let mut windows = Vec::new();
    if tokens.is_empty() {
        return windows;
    }
    // Evaluation refuses a context of 0; 1 keeps this total for any caller.
    let max_length = max_length.max(1);
    let first = max_length.min(tokens.len());
    let mut input: Vec<u32> = std::iter::once(prefix)
        .chain(tokens[..first - 1].iter().copied())
        .collect();
    let mut predicted = tokens[..first].to_vec();
    windows.push(disjoint(&input, &predicted));
    let mut done = first;
    while done < tokens.len() {
        let n = (tokens.len() - done).min(max_length);
        let end = done + n;
        let start = end.saturating_sub(max_length + 1);
        input = tokens[start..end - 1].to_vec();
        predicted = tokens[end - n..end].to_vec();
        windows.push(disjoint(&input, &predicted));
        done += n;
    }
    windows
}

/// `make_disjoint_window`: the context stops where the predicted tokens start.
fn disjoint(input: &[u32], predicted: &[u32]) -> TokenRequest {
    let keep = input.len() + 1 - predicted.len();
    TokenRequest {
        context: input[..keep].to_vec(),
        continuation: predicted.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rolling_windows_match_lm_eval() {
        // lm_eval.utils: [make_disjoint_window(w) for w in get_rolling_token_windows(list(range(1, 8)), 0, 3, 1)]
        let pairs = |ws: Vec<TokenRequest>| {
            ws.into_iter()
                .map(|w| (w.context, w.continuation))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(rolling_windows(&[1, 2, 3, 4, 5, 6, 7], 0, 3)),
            vec![
                (vec![0], vec![1, 2, 3]),
                (vec![3], vec![4, 5, 6]),
                (vec![4, 5, 6], vec![7])
            ]
        );
        assert_eq!(pairs(rolling_windows(&[5, 6], 0, 3)), vec![(vec![0], vec![5, 6])]);
        assert!(rolling_windows(&[], 0, 3).is_empty());
    }
}
