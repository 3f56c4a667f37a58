//! `sae-onnx generate`: text from a model, steered or not — greedy by default, or sampled with
//! temperature / top-k / top-p from a seed; stops at EOS, `--stop` strings or the token budget.
//! Each step scores only the next token's distribution (the scoring head at the last position).

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::contract::meta;
use crate::contract::{ATTENTION_MASK, INPUT_IDS, LOGITS, past_name, present_name};
use crate::hub::Hub;
use crate::infer::chat_template::{ChatTemplate, Message};
use crate::infer::lm::ScoringModel;
use crate::infer::runtime::{Device, ScalarFeed, SessionOptions};
use crate::onnx::Model;
use crate::pycompat::random::PyRandom;
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
    /// Wrap each prompt in the model's chat template (a user turn, then the model's turn).
    pub chat: bool,
    /// Start every prompt with the tokenizer's BOS token when its encoding does not (GPT-2's
    /// tokenizer adds none), as TransformerLens's `prepend_bos` does and SAEs trained with it saw.
    pub prepend_bos: bool,
    pub session: SessionOptions,
    pub tokenizer: Option<String>,
    /// Where a hub tokenizer comes from (the command's one [`Hub`]).
    pub hub: Hub,
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
            prepend_bos: false,
            session: SessionOptions::default(),
            tokenizer: None,
            hub: Hub::from_env(),
        }
    }
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub prompt_tokens: Vec<u32>,
    pub tokens: Vec<u32>,
    pub text: String,
    /// Why it stopped: `eos`, `stop`, `length` (`max_new_tokens`), or `context` (the model's
    /// context length was reached first).
    pub finish: &'static str,
    /// Wall time of the generation (prompt included).
    pub seconds: f64,
}

/// How next-token distributions are computed.
enum Backend {
    /// A decoding graph (`sae-onnx export --kv-cache`): the prompt once, then one token per step.
    Cache(KvCache),
    /// A full-sequence graph: the whole sequence again at each step, scoring only its last position.
    Recompute(ScoringModel),
}

struct KvCache {
    session: ort::session::Session,
    /// Where the cache lives between steps: on the GPU with `--device cuda`, so each step moves
    /// only the new token and its logits across the bus, not the whole cache twice.
    cache_memory: ort::memory::MemoryInfo<'static>,
    /// Fed on every step besides tokens, mask and cache (a sweep's coefficient).
    feeds: Vec<ScalarFeed>,
    /// The graph takes each row's prompt boundary (`contract::PROMPT_LENGTH`: a steered graph
    /// with `prompt` / `generated` rows).
    reads_prompt_length: bool,
    layout: crate::infer::kv_cache::CacheLayout,
    session_origin: crate::infer::runtime::SessionOrigin,
}

/// A model opened for generation, with its tokenizer.
pub struct Generator {
    backend: Backend,
    pub tokenizer: Tokenizer,
    vocab: usize,
    eos: Vec<u32>,
    /// The most tokens (prompt and generated) the model is made for: `max_position_embeddings`.
    /// Past it positions are ones the model never saw, and memory grows with the square of the
    /// length, so a prompt longer than this is refused and generation stops at it.
    pub context: usize,
    /// How `--chat` wraps a prompt (set when the options ask for chat).
    chat: Option<ChatFormat>,
    /// The BOS token `--prepend-bos` puts first.
    prepend_bos: Option<u32>,
}

/// How a prompt becomes a chat conversation.
enum ChatFormat {
    /// The model's own template from `tokenizer_config.json`.
    Template(ChatTemplate),
    /// Gemma's turn markers, for Gemma tokenizers whose config has no template (as Gemma's
    /// base-model configs before the template was added to them).
    Gemma,
}

impl ChatFormat {
    fn open(options: &GenerateOptions, model: &Model, tokenizer: &Tokenizer) -> Result<Self> {
        let config =
            crate::tokenizer::config_path(&options.hub, model, tokenizer, options.tokenizer.as_deref());
        if config.is_file()
            && let Some(template) = ChatTemplate::from_tokenizer_config(&config)?
        {
            return Ok(Self::Template(template));
        }
        if tokenizer.token_id("<start_of_turn>").is_some() {
            return Ok(Self::Gemma);
        }
        bail!(
            "--chat needs the model's chat template, and '{}' {}. Pass --tokenizer with the instruct model's \
             tokenizer folder or id, or leave out --chat",
            config.display(),
            if config.is_file() {
                "has no chat_template"
            } else {
                "does not exist"
            }
        )
    }
}

/// The context assumed for a graph that does not record one (other exporters): Gemma 1 and 2's.
const DEFAULT_CONTEXT: usize = 8192;

/// The model's context length from its metadata; 0 or junk is an error naming the model.
pub(crate) fn context_of(model: &Model, path: &Path) -> Result<usize> {
    let Some(text) = model.metadata(meta::MAX_POSITIONS) else {
        tracing::warn!(
            "'{}' does not record its context length (max_position_embeddings); generating at most {DEFAULT_CONTEXT} tokens",
            path.display()
        );
        return Ok(DEFAULT_CONTEXT);
    };
    match text.trim().parse::<usize>() {
        Ok(n) if (1..=crate::contract::MAX_CONTEXT).contains(&n) => Ok(n),
        _ => bail!(
            "'{}' gives max_position_embeddings {:?} in its metadata, not a context length; re-export the model",
            path.display(),
            crate::files::printable(text, 40)
        ),
    }
}

impl Generator {
    pub fn open(path: &Path, options: &GenerateOptions) -> Result<Self> {
        let model = Model::load(path)?;
        let tokenizer = Tokenizer::for_model(&options.hub, &model, options.tokenizer.as_deref())?;
        let vocab = model
            .metadata(meta::VOCAB_SIZE)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| tokenizer.vocab_size());
        let context = context_of(&model, path)?;
        let backend = if let Some(layout) = crate::infer::kv_cache::CacheLayout::of(&model)? {
            let opened = crate::infer::runtime::session_with_origin(path, &options.session)?;
            Backend::Cache(KvCache {
                session: opened.session,
                session_origin: opened.origin,
                cache_memory: crate::infer::runtime::memory_info(options.session.device)?,
                feeds: crate::infer::runtime::ScalarFeed::coefficient_defaults(&model)?,
                reads_prompt_length: model
                    .graph()
                    .input
                    .iter()
                    .any(|i| i.name() == crate::contract::PROMPT_LENGTH),
                layout,
            })
        } else {
            Backend::Recompute(ScoringModel::open(path, &options.session, context, 1)?)
        };
        let chat = if options.chat {
            Some(ChatFormat::open(options, &model, &tokenizer)?)
        } else {
            None
        };
        // As transformers' generate: the checkpoint's generation config (Gemma 2 IT adds
        // <end_of_turn>, Llama 3 Instruct <|eot_id|>, Qwen <|im_end|>), with or without --chat.
        let eos = crate::infer::stop_tokens::eos_token_ids(&options.hub, &model, &tokenizer)?;
        let prepend_bos = if options.prepend_bos {
            Some(tokenizer.bos_token_id()?.with_context(|| {
                format!(
                    "--prepend-bos: the tokenizer '{}' has no BOS token (no bos_token in its configuration, \
                     no <bos> or <s>)",
                    tokenizer.path.display()
                )
            })?)
        } else {
            None
        };
        Ok(Self {
            backend,
            tokenizer,
            vocab,
            eos,
            context,
            chat,
            prepend_bos,
        })
    }

    /// Refuses a prompt that leaves no room for a new token in the model's context.
    fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        check_prompt(prompt, self.context)
    }

    /// Whether the session was optimised now or loaded from the session cache.
    pub fn session_origin(&self) -> crate::infer::runtime::SessionOrigin {
        match &self.backend {
            Backend::Cache(kv) => kv.session_origin,
            Backend::Recompute(scorer) => scorer.session_origin,
        }
    }

    /// Graph inputs fed on every step from now on, besides the tokens (a sweepable steered
    /// model's coefficients).
    pub fn set_feeds(&mut self, feeds: Vec<ScalarFeed>) {
        match &mut self.backend {
            Backend::Cache(kv) => kv.feeds = feeds,
            Backend::Recompute(scorer) => scorer.feeds = feeds,
        }
    }

    /// The prompt's tokens: BOS by the tokenizer's post-processor; with `chat`, the model's chat
    /// template around it as a user turn, then tokenized without adding special tokens again
    /// (transformers' `apply_chat_template(..., tokenize=True)`: the template writes its own BOS).
    /// With `prepend_bos`, BOS first where it is not already.
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let (text, add_special_tokens) = self.prompt_text(prompt, chat)?;
        let mut ids = self.tokenizer.encode(&text, add_special_tokens)?;
        if let Some(bos) = self.prepend_bos
            && ids.first() != Some(&bos)
        {
            ids.insert(0, bos);
        }
        Ok(ids)
    }

    /// The text a prompt is tokenized as (with `chat`, the conversation the template writes), and
    /// whether the tokenizer adds its special tokens to it.
    pub fn prompt_text(&self, prompt: &str, chat: bool) -> Result<(String, bool)> {
        if !chat {
            return Ok((prompt.to_owned(), true));
        }
        match &self.chat {
            Some(ChatFormat::Template(template)) => {
                Ok((template.render(&[Message::user(prompt)], true, &[])?, false))
            }
            Some(ChatFormat::Gemma) => Ok((
                format!("<start_of_turn>user\n{prompt}<end_of_turn>\n<start_of_turn>model\n"),
                true,
            )),
            None => bail!("the generator was opened without chat; open it with GenerateOptions::chat"),
        }
    }

    /// Generates from several prompts at once: one left-padded batch on a decoding graph (as
    /// transformers' generate pads), one prompt after another on a full-sequence graph.
    pub fn generate_batch(
        &mut self,
        prompts: &[Vec<u32>],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        for (i, prompt) in prompts.iter().enumerate() {
            self.check_prompt(prompt)
                .with_context(|| format!("prompt {}", i + 1))?;
        }
        if prompts.len() >= 2
            && let Self {
                backend: Backend::Cache(kv),
                tokenizer,
                eos,
                context,
                ..
            } = self
        {
            let mut decoder = BatchDecoder {
                kv,
                tokenizer,
                eos,
                context: *context,
            };
            return decoder.decode(prompts, options);
        }
        prompts
            .iter()
            .map(|p| self.generate(p, options, |_| {}))
            .collect()
    }

    /// Generates from `prompt`; `on_text` receives each new piece of text as it is produced.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.check_prompt(prompt)?;
        let start = std::time::Instant::now();
        let mut rng = PyRandom::new(options.seed);
        let mut sequence = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut shown = String::new();
        let mut finish = "length";
        let mut cache: Option<Vec<ort::value::DynValue>> = None;
        while tokens.len() < options.max_new_tokens {
            if sequence.len() >= self.context {
                finish = "context";
                break;
            }
            let logprobs = match &mut self.backend {
                Backend::Recompute(scorer) => scorer
                    .next_token_logprobs(&[&sequence], &[prompt.len()], self.vocab)?
                    .remove(0),
                Backend::Cache(kv) => {
                    let fed = if cache.is_some() {
                        &sequence[sequence.len() - 1..]
                    } else {
                        &sequence[..]
                    };
                    let (mut logits, presents) =
                        kv.step(&[fed], &[vec![1; sequence.len()]], &[prompt.len()], cache.take())?;
                    cache = Some(presents);
                    log_softmax(&logits.remove(0))
                }
            };
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
            seconds: start.elapsed().as_secs_f64(),
        })
    }
}

/// A decoding graph and what ends a sequence on it, borrowed from a [`Generator`] to run one batch.
struct BatchDecoder<'g> {
    kv: &'g mut KvCache,
    tokenizer: &'g Tokenizer,
    eos: &'g [u32],
    context: usize,
}

impl BatchDecoder<'_> {
    /// Decodes all `prompts` together, one token per step for every row, until each row has
    /// finished or the token budget is spent.
    fn decode(&mut self, prompts: &[Vec<u32>], options: &GenerateOptions) -> Result<Vec<Generation>> {
        let start = std::time::Instant::now();
        let mut rng = PyRandom::new(options.seed);
        let mut rows = BatchRows::new(prompts);
        let padded = rows.padded_prompts();
        let fed: Vec<&[u32]> = padded.iter().map(Vec::as_slice).collect();
        let prompt_lengths: Vec<usize> = prompts.iter().map(Vec::len).collect();
        let (mut logits, mut cache) = self.kv.step(&fed, &rows.masks, &prompt_lengths, None)?;
        for _ in 0..options.max_new_tokens {
            let next = self.next_tokens(&logits, &mut rows, options, &mut rng)?;
            if rows.finish.iter().all(Option::is_some) {
                break;
            }
            for mask in &mut rows.masks {
                mask.push(1);
            }
            let fed: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
            let fed: Vec<&[u32]> = fed.iter().map(|r| r.as_slice()).collect();
            (logits, cache) = self.kv.step(&fed, &rows.masks, &prompt_lengths, Some(cache))?;
        }
        rows.into_generations(self.tokenizer, options, start.elapsed().as_secs_f64())
    }

    /// Each row's next token from its last logits, marking the rows that reach the context, EOS
    /// or a stop string as finished; a finished row is fed 0 (masked padding).
    fn next_tokens(
        &self,
        logits: &[Vec<f32>],
        rows: &mut BatchRows,
        options: &GenerateOptions,
        rng: &mut PyRandom,
    ) -> Result<Vec<u32>> {
        let mut next = Vec::with_capacity(rows.prompts.len());
        for (b, row_logits) in logits.iter().enumerate() {
            if rows.finish[b].is_none() && rows.prompts[b].len() + rows.generated[b].len() >= self.context {
                rows.finish[b] = Some("context");
            }
            if rows.finish[b].is_some() {
                next.push(0);
                continue;
            }
            let token = pick(&log_softmax(row_logits), options, rng).context("no token can be sampled")?;
            if self.eos.contains(&token) {
                rows.finish[b] = Some("eos");
                next.push(0);
                continue;
            }
            rows.generated[b].push(token);
            let text = self.tokenizer.decode(&rows.generated[b])?;
            if options.stop.iter().any(|s| text.contains(s.as_str())) {
                rows.finish[b] = Some("stop");
            }
            next.push(token);
        }
        Ok(next)
    }
}

/// The rows of a batch decoded together: each prompt, its attention mask (the left padding
/// masked out, then the tokens so far), what it has generated, and why it stopped.
struct BatchRows<'p> {
    prompts: &'p [Vec<u32>],
    masks: Vec<Vec<i64>>,
    generated: Vec<Vec<u32>>,
    finish: Vec<Option<&'static str>>,
}

impl<'p> BatchRows<'p> {
    fn new(prompts: &'p [Vec<u32>]) -> Self {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let masks = prompts
            .iter()
            .map(|p| {
                std::iter::repeat_n(0, width - p.len())
                    .chain(std::iter::repeat_n(1, p.len()))
                    .collect()
            })
            .collect();
        Self {
            prompts,
            masks,
            generated: vec![Vec::new(); prompts.len()],
            finish: vec![None; prompts.len()],
        }
    }

    /// The prompts left-padded with token 0 to the longest one.
    fn padded_prompts(&self) -> Vec<Vec<u32>> {
        let width = self.prompts.iter().map(Vec::len).max().unwrap_or(0);
        self.prompts
            .iter()
            .map(|p| {
                std::iter::repeat_n(0, width - p.len())
                    .chain(p.iter().copied())
                    .collect()
            })
            .collect()
    }

    /// Each row's text, cut at the first stop string; a row that never stopped ran out of tokens.
    fn into_generations(
        self,
        tokenizer: &Tokenizer,
        options: &GenerateOptions,
        seconds: f64,
    ) -> Result<Vec<Generation>> {
        self.prompts
            .iter()
            .zip(self.generated)
            .zip(self.finish)
            .map(|((prompt, tokens), finish)| {
                let text = tokenizer.decode(&tokens)?;
                let cut = options
                    .stop
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                    .unwrap_or(text.len());
                Ok(Generation {
                    prompt_tokens: prompt.clone(),
                    tokens,
                    text: text[..cut].to_owned(),
                    finish: finish.unwrap_or("length"),
                    seconds,
                })
            })
            .collect()
    }
}

impl KvCache {
    /// Runs `new` tokens after a cache of `total - new.len()` tokens (empty on the first call);
    /// returns the last position's logits and the updated cache. `prompt_lengths`: each row's
    /// prompt tokens (padding not counted), for a graph that steers by them.
    fn step(
        &mut self,
        rows: &[&[u32]],
        mask: &[Vec<i64>],
        prompt_lengths: &[usize],
        past: Option<Vec<ort::value::DynValue>>,
    ) -> Result<(Vec<Vec<f32>>, Vec<ort::value::DynValue>)> {
        use ort::value::Tensor;
        let batch = rows.len();
        let past = match past {
            Some(values) => values,
            None => self.layout.empty(batch)?,
        };
        let width = rows[0].len();
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| r.iter().map(|&t| i64::from(t)))
            .collect();
        let total = mask[0].len();
        let mask: Vec<i64> = mask.iter().flatten().copied().collect();
        let mut binding = self.session.create_binding()?;
        binding.bind_input(INPUT_IDS, &Tensor::from_array(([batch, width], ids))?)?;
        binding.bind_input(ATTENTION_MASK, &Tensor::from_array(([batch, total], mask))?)?;
        let mut past = past.into_iter();
        for layer in 0..self.layout.layers {
            for kind in ["key", "value"] {
                let value = past.next().context("cache entries are missing")?;
                binding.bind_input(past_name(layer, kind), &value)?;
                binding.bind_output_to_device(present_name(layer, kind), &self.cache_memory)?;
            }
        }
        for feed in &self.feeds {
            binding.bind_input(feed.name.as_str(), &feed.tensor()?)?;
        }
        if self.reads_prompt_length {
            let lengths: Vec<i64> = prompt_lengths.iter().map(|&n| n as i64).collect();
            binding.bind_input(
                crate::contract::PROMPT_LENGTH,
                &Tensor::from_array(([batch], lengths))?,
            )?;
        }
        binding.bind_output_to_device(LOGITS, &crate::infer::runtime::memory_info(Device::Cpu)?)?;
        let mut outputs = self
            .session
            .run_binding(&binding)
            .context("running a decoding step")?;
        let last = crate::infer::kv_cache::last_logits(&outputs[LOGITS], batch, width)?;
        let mut presents = Vec::with_capacity(2 * self.layout.layers);
        for layer in 0..self.layout.layers {
            for kind in ["key", "value"] {
                presents.push(
                    outputs
                        .remove(present_name(layer, kind))
                        .context("the graph has no present output")?,
                );
            }
        }
        Ok((last, presents))
    }
}

/// Refuses a prompt that leaves no room for a new token in a `context` of that many tokens.
pub(crate) fn check_prompt(prompt: &[u32], context: usize) -> Result<()> {
    if prompt.is_empty() {
        bail!("the prompt encodes to no tokens");
    }
    if prompt.len() >= context {
        bail!(
            "the prompt is {} tokens, and the model's context is {context} (max_position_embeddings): \
             nothing can follow it. Shorten the prompt to under {context} tokens",
            prompt.len(),
        );
    }
    Ok(())
}

pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln() as f32 + max;
    logits.iter().map(|&x| x - log_sum).collect()
}

/// The next token: argmax when greedy; else a draw from the temperature-scaled distribution
/// restricted to the top-k tokens and the top-p nucleus (as transformers' warpers do).
pub(crate) fn pick(logprobs: &[f32], options: &GenerateOptions, rng: &mut PyRandom) -> Option<u32> {
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
