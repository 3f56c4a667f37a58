//! The scoring rewrite (LM head at scored positions, in-graph log-softmax and gather) against
//! log-probabilities computed from transformers' golden logits.

use crate::common;

use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::lm::{ScoringModel, TokenRequest};
use sae_onnx::infer::runtime::SessionOptions;
use safetensors::SafeTensors;

struct Case {
    ids: Vec<u32>,
    /// [seq, vocab] logits from transformers.
    logits: Vec<f32>,
    vocab: usize,
}

fn golden_cases(arch: &str) -> Vec<Case> {
    let bytes = std::fs::read(common::fixture(&format!("gemma/{arch}/golden.safetensors"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    (0..4)
        .map(|k| {
            let ids = st.tensor(&format!("case{k}.input_ids")).unwrap();
            let logits = st.tensor(&format!("case{k}.logits")).unwrap();
            Case {
                ids: ids
                    .data()
                    .chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                    .collect(),
                logits: logits
                    .data()
                    .chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                vocab: logits.shape()[2],
            }
        })
        .collect()
}

/// log p(token | prefix up to `position`) from the golden logits, in float64.
fn golden_logprob(case: &Case, position: usize, token: u32) -> (f64, bool) {
    let row = &case.logits[position * case.vocab..(position + 1) * case.vocab];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let log_sum = row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln() + max;
    let argmax = row
        .iter()
        .enumerate()
        .fold(0, |best, (i, &x)| if x > row[best] { i } else { best });
    (row[token as usize] as f64 - log_sum, argmax == token as usize)
}

fn scoring_model(arch: &str, dir: &std::path::Path, batch: usize) -> ScoringModel {
    let out = dir.join(format!("{arch}.onnx"));
    if !out.exists() {
        let source = common::fixture(&format!("gemma/{arch}"));
        export::export(source.to_str().unwrap(), &out, &ExportOptions::default()).unwrap();
    }
    ScoringModel::open(&out, &SessionOptions::default(), 1024, batch).unwrap()
}

#[test]
fn loglikelihoods_match_transformers() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ["gemma", "gemma2", "gemma3"] {
        let cases = golden_cases(arch);
        let mut requests = Vec::new();
        let mut expected = Vec::new();
        for case in &cases {
            let n = case.ids.len();
            for m in 1..=2.min(n - 1) {
                requests.push(TokenRequest {
                    context: case.ids[..n - m].to_vec(),
                    continuation: case.ids[n - m..].to_vec(),
                });
                let (mut lp, mut greedy) = (0.0, true);
                for j in 0..m {
                    let (l, g) = golden_logprob(case, n - m - 1 + j, case.ids[n - m + j]);
                    lp += l;
                    greedy &= g;
                }
                expected.push((lp, greedy));
            }
        }
        for batch in [1, 3, 16] {
            let mut model = scoring_model(arch, tmp.path(), batch);
            let (answers, stats) = model.loglikelihood(&requests, |_, _| Ok(())).unwrap();
            assert_eq!(stats.requests, requests.len());
            for (i, (answer, (lp, greedy))) in answers.iter().zip(&expected).enumerate() {
                assert!(
                    (answer.logprob - lp).abs() <= 1e-4,
                    "{arch} batch {batch} request {i}: {} vs {lp}",
                    answer.logprob
                );
                assert_eq!(answer.is_greedy, *greedy, "{arch} request {i}: is_greedy");
            }
        }
    }
}

#[test]
fn shared_contexts_with_one_token_answers_take_one_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let cases = golden_cases("gemma2");
    let case = &cases[2];
    let context = case.ids[..case.ids.len() - 1].to_vec();
    let candidates = [case.ids[case.ids.len() - 1], 5, 77, 300];
    let requests: Vec<TokenRequest> = candidates
        .iter()
        .map(|&t| TokenRequest {
            context: context.clone(),
            continuation: vec![t],
        })
        .collect();
    let mut model = scoring_model("gemma2", tmp.path(), 8);
    let (answers, stats) = model.loglikelihood(&requests, |_, _| Ok(())).unwrap();
    assert_eq!(stats.forwards, 1, "four answers at one position are one forward");
    for (answer, &token) in answers.iter().zip(&candidates) {
        let (lp, greedy) = golden_logprob(case, context.len() - 1, token);
        assert!((answer.logprob - lp).abs() <= 1e-4, "{} vs {lp}", answer.logprob);
        assert_eq!(answer.is_greedy, greedy);
    }
}
