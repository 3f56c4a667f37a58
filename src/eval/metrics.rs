//! Per-document metrics and their aggregation, as lm-eval computes them: `acc` (argmax
//! loglikelihood, first on ties), `acc_norm` (divided by the choice's length in characters),
//! `acc_bytes` (in UTF-8 bytes), `exact_match` (the gold choice is the greedy continuation); means
//! with the sample standard error, and groups weighted by size with a pooled standard error.

use serde_json::{Value, json};

use super::task::Target;
use crate::infer::lm::Loglikelihood;

/// A document's value for one metric: a number averaged over documents, or a (loglikelihood,
/// count) pair that perplexities weight by the count. A shard record keeps them as a number or
/// a `[loglikelihood, count]` pair.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum MetricItem {
    Value(f64),
    Weighted(f64, f64),
}

impl MetricItem {
    pub fn json(self) -> Value {
        match self {
            Self::Value(v) => json!(v),
            // Counts are whole numbers of words or bytes.
            Self::Weighted(ll, n) => json!([ll, n as u64]),
        }
    }
}

/// `np.argmax`: the first index of the maximum (NaN never wins here: scores are finite).
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// The metrics of one multiple-choice document; `gold` as `doc_to_target` returned it.
pub fn multiple_choice(
    answers: &[Loglikelihood],
    choices: &[String],
    gold: &Target,
    wanted: &[String],
) -> Vec<(String, f64)> {
    let lls: Vec<f64> = answers.iter().map(|a| a.logprob).collect();
    let by_chars: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / c.chars().count() as f64)
        .collect();
    let by_bytes: Vec<f64> = lls
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / c.len() as f64)
        .collect();
    let (pred, pred_norm, pred_bytes) = (argmax(&lls), argmax(&by_chars), argmax(&by_bytes));
    // lm-eval maps an out-of-range or unknown gold to -100, which no prediction equals.
    let index_of = |t: &Target| -> Option<usize> {
        match t {
            Target::Index(i) => usize::try_from(*i).ok().filter(|&i| i < choices.len()),
            Target::Text(s) => choices.iter().position(|c| c == s),
            Target::List(_) => None,
        }
    };
    let golds: Vec<Option<usize>> = match gold {
        Target::List(list) => list
            .iter()
            .map(|v| match v {
                serde_json::Value::Number(n) => index_of(&Target::Index(n.as_i64().unwrap_or(-1))),
                other => index_of(&Target::Text(super::task::value_text(other))),
            })
            .collect(),
        single => vec![index_of(single)],
    };
    let hit = |p: usize| f64::from(u8::from(golds.contains(&Some(p))));
    let exact = golds.iter().any(|g| g.is_some_and(|g| answers[g].is_greedy));
    wanted
        .iter()
        .filter_map(|m| {
            let value = match m.as_str() {
                "acc" => hit(pred),
                "acc_norm" => hit(pred_norm),
                "acc_bytes" => hit(pred_bytes),
                "exact_match" => f64::from(u8::from(exact)),
                _ => return None,
            };
            Some((m.clone(), value))
        })
        .collect()
}

/// lm-eval's `count_words`: `len(re.split(r"\s+", text))` (leading and trailing whitespace count
/// as empty words, as Python's split gives them).
pub fn count_words(text: &str) -> usize {
    static WHITESPACE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    WHITESPACE
        .get_or_init(|| regex::Regex::new(r"\s+").expect("valid regex"))
        .split(text)
        .count()
}

/// The mean and, for more than one item, its standard error `sqrt(Σ(x−μ)²/(n−1)) / sqrt(n)`.
pub fn mean_and_stderr(items: &[f64]) -> (f64, Option<f64>) {
    let n = items.len() as f64;
    let mean = items.iter().sum::<f64>() / n;
    if items.len() < 2 {
        return (mean, None);
    }
    let var = items.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, Some(var.sqrt() / n.sqrt()))
}

/// A group's score from its subtasks': the size-weighted (or plain) mean, and the pooled
/// (or unweighted-mean) standard error, as lm-eval's aggregate_subtask_metrics does.
pub fn aggregate_group(means: &[f64], stderrs: &[f64], sizes: &[usize], weight_by_size: bool) -> (f64, f64) {
    let weights: Vec<f64> = sizes
        .iter()
        .map(|&s| if weight_by_size { s as f64 } else { 1.0 })
        .collect();
    let mean = means.iter().zip(&weights).map(|(m, w)| m * w).sum::<f64>() / weights.iter().sum::<f64>();
    let stderr = if weight_by_size {
        let total: f64 = sizes.iter().map(|&s| s as f64).sum();
        let pooled_var = sizes
            .iter()
            .zip(stderrs)
            .map(|(&size, se)| (size as f64 - 1.0) * se * se * size as f64)
            .sum::<f64>()
            / (total - sizes.len() as f64);
        (pooled_var / total).sqrt()
    } else {
        stderrs.iter().map(|se| se * se).sum::<f64>().sqrt() / stderrs.len() as f64
    };
    (mean, stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ll(v: f64) -> Loglikelihood {
        Loglikelihood {
            logprob: v,
            is_greedy: false,
        }
    }

    #[test]
    fn acc_norm_divides_by_characters_and_ties_go_to_the_first() {
        let choices = vec!["ab".to_owned(), "é".to_owned(), "abcd".to_owned()];
        let answers = [ll(-4.0), ll(-2.5), ll(-4.0)];
        let wanted = ["acc".to_owned(), "acc_norm".to_owned(), "acc_bytes".to_owned()];
        let m = multiple_choice(&answers, &choices, &Target::Index(2), &wanted);
        // acc: argmax(-4, -2.5, -4) = 1; chars: (-2, -2.5, -1) -> 2; bytes (é is 2 bytes): (-2, -1.25, -1) -> 2.
        assert_eq!(
            m,
            vec![
                ("acc".into(), 0.0),
                ("acc_norm".into(), 1.0),
                ("acc_bytes".into(), 1.0)
            ]
        );
        let tie = multiple_choice(
            &[ll(-1.0), ll(-1.0)],
            &choices[..2],
            &Target::Index(0),
            &wanted[..1],
        );
        assert_eq!(tie[0].1, 1.0);
    }

    #[test]
    fn stderr_is_the_sample_standard_error() {
        let (mean, se) = mean_and_stderr(&[1.0, 0.0, 0.0, 1.0]);
        assert_eq!(mean, 0.5);
        assert!((se.unwrap() - (1.0f64 / 3.0).sqrt() / 2.0).abs() < 1e-15);
        assert_eq!(mean_and_stderr(&[1.0]).1, None);
    }
}
