//! `sae-onnx generate`: text from a model, steered or not — greedy by default, or sampled with
//! temperature / top-k / top-p from a seed; stops at EOS, `--stop` strings or the token budget.
//! Each step scores only the next token's distribution (the scoring head at the last position).

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::eval::lm::ScoringModel;
use crate::eval::pyrandom::PyRandom;
use crate::export::meta;
use crate::onnx::Model;
use crate::runtime::SessionOptions;
use crate::tokenizer::Tokenizer;

#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    /// 0 (or unset sampling knobs) means greedy.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub seed: u64,
    pub stop: Vec<String>,
    /// Wrap each prompt in Gemma's chat template.
    pub chat: bool,
    pub session: SessionOptions,
    pub tokenizer: Option<String>,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
            stop: Vec::new(),
            chat: false,
            session: SessionOptions::default(),
            tokenizer: None,
        }
    }
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    /// Why it stopped: `eos`, `stop`, or `length`.
    pub finish: &'static str,
}

/// A model opened for generation, with its tokenizer.
pub struct Generator {
    scorer: ScoringModel,
    pub tokenizer: Tokenizer,
    vocab: usize,
    eos: Vec<u32>,
}

impl Generator {
    pub fn open(path: &Path, options: &GenerateOptions) -> Result<Self> {
        let model = Model::load(path)?;
        let tokenizer = Tokenizer::for_model(&model, options.tokenizer.as_deref())?;
        let vocab = model
            .metadata(meta::VOCAB_SIZE)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| tokenizer.vocab_size());
        let max_length = model
            .metadata(meta::MAX_POSITIONS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(8192);
        let scorer = ScoringModel::open(path, &options.session, max_length, 1)?;
        // Gemma stops at <eos>, and chat turns end with <end_of_turn>.
        let eos = [tokenizer.eos_id, tokenizer.token_id("<end_of_turn>")]
            .into_iter()
            .flatten()
            .collect();
        Ok(Self {
            scorer,
            tokenizer,
            vocab,
            eos,
        })
    }

    /// The prompt's tokens: BOS by the tokenizer's template, Gemma's chat turn around it with `chat`.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let text = if chat {
            format!("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n")
        } else {
            prompt.to_owned()
        };
        self.tokenizer.encode(&text, true)
    }

    /// Generates from `prompt`; `on_text` receives each new piece of text as it is produced.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        if prompt.is_empty() {
            bail!("the prompt encodes to no tokens");
        }
        let mut rng = PyRandom::new(options.seed);
        let mut sequence = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut shown = String::new();
        let mut finish = "length";
        while tokens.len() < options.max_new_tokens {
            let logprobs = self
                .scorer
                .next_token_logprobs(&[&sequence], self.vocab)?
                .remove(0);
            let token = pick(&logprobs, options, &mut rng).context("no token can be sampled")?;
            if self.eos.contains(&token) {
                finish = "eos";
                break;
            }
            sequence.push(token);
            tokens.push(token);
            let text = self.tokenizer.decode(&tokens)?;
            if let Some(cut) = options.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                if cut > shown.len() {
                    on_text(&text[shown.len()..cut]);
                }
                shown = text[..cut].to_owned();
                finish = "stop";
                break;
            }
            // Text can grow in pieces smaller than a token (byte fallback): show what is settled.
            if text.len() > shown.len() && text.starts_with(&shown) && !text.ends_with('\u{fffd}') {
                on_text(&text[shown.len()..]);
                shown = text;
            }
        }
        if finish != "stop" {
            let text = self.tokenizer.decode(&tokens)?;
            if text.len() > shown.len() && text.starts_with(&shown) {
                on_text(&text[shown.len()..]);
            }
            shown = text;
        }
        Ok(Generation {
            prompt_tokens: prompt.to_vec(),
            tokens,
            text: shown,
            finish,
        })
    }
}

/// The next token: argmax when greedy; else a draw from the temperature-scaled distribution
/// restricted to the top-k tokens and the top-p nucleus (as transformers' warpers do).
fn pick(logprobs: &[f32], options: &GenerateOptions, rng: &mut PyRandom) -> Option<u32> {
    let greedy = options.temperature <= 0.0;
    if greedy {
        // First maximum, as torch.argmax.
        let mut best = 0;
        for (i, &lp) in logprobs.iter().enumerate() {
            if lp > logprobs[best] {
                best = i;
            }
        }
        return Some(best as u32);
    }
    let mut order: Vec<usize> = (0..logprobs.len()).collect();
    order.sort_by(|&a, &b| logprobs[b].total_cmp(&logprobs[a]).then(a.cmp(&b)));
    if let Some(k) = options.top_k {
        order.truncate(k.max(1));
    }
    let scaled: Vec<f64> = order
        .iter()
        .map(|&i| f64::from(logprobs[i]) / f64::from(options.temperature))
        .collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let mut probs: Vec<f64> = scaled.iter().map(|s| (s - max).exp()).collect();
    let total: f64 = probs.iter().sum();
    probs.iter_mut().for_each(|p| *p /= total);
    if let Some(top_p) = options.top_p {
        let mut cumulative = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                cumulative += p;
                cumulative >= f64::from(top_p)
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep.max(1));
        order.truncate(keep.max(1));
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let mut draw = rng.random();
    for (i, p) in probs.iter().enumerate() {
        if draw < *p {
            return Some(order[i] as u32);
        }
        draw -= p;
    }
    order.last().map(|&i| i as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_maximum_and_sampling_respects_top_k() {
        let lp = [-3.0, -0.5, -0.5, -9.0];
        let greedy = GenerateOptions::default();
        let mut rng = PyRandom::new(0);
        assert_eq!(pick(&lp, &greedy, &mut rng), Some(1));
        let top1 = GenerateOptions {
            temperature: 1.0,
            top_k: Some(1),
            ..Default::default()
        };
        for _ in 0..20 {
            assert_eq!(pick(&lp, &top1, &mut rng), Some(1));
        }
        let nucleus = GenerateOptions {
            temperature: 1.0,
            top_p: Some(0.5),
            ..Default::default()
        };
        for _ in 0..20 {
            assert!(matches!(pick(&lp, &nucleus, &mut rng), Some(1 | 2)));
        }
    }
}
