//! `sae-onnx generate`: text from a model, steered or not — greedy by default, or sampled with
//! temperature / top-k / top-p from a seed; stops at EOS, `--stop` strings or the token budget.
//! Each step scores only the next token's distribution (the scoring head at the last position).

use std::path::Path;

use anyhow::{Context, Result, bail};
use ort::value::DynValue;

use crate::contract::meta;
use crate::contract::{ATTENTION_MASK, INPUT_IDS, LOGITS, past_name, present_name};
use crate::hub::Hub;
use crate::infer::chat_template::{ChatTemplate, Message};
use crate::infer::fan_out::{FanOut, Feed, value_feeds};
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
fn context_of(model: &Model, path: &Path) -> Result<usize> {
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

    /// The decoding graph at `path` split at the coefficient input `swept`, for
    /// [`Generator::generate_per_value`]'s prefills. `Ok(Err(reason))` when it is not a decoding
    /// graph or does not split there.
    pub fn prefill_fan_out(
        path: &Path,
        swept: &str,
        options: &SessionOptions,
    ) -> Result<Result<FanOut, String>> {
        let model = Model::load(path)?;
        let Some(layout) = crate::infer::kv_cache::CacheLayout::of(&model)? else {
            return Ok(Err(
                "it is not a decoding graph (sae-onnx export --kv-cache)".into()
            ));
        };
        // The caches are fed back: those that depend on the value vary with it.
        let carried: std::collections::HashMap<String, String> = (0..layout.layers)
            .flat_map(|layer| {
                ["key", "value"].map(|kind| (present_name(layer, kind), past_name(layer, kind)))
            })
            .collect();
        FanOut::open(&model, swept, &carried, options)
    }

    /// Refuses a prompt that leaves no room for a new token in the model's context.
    fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            bail!("the prompt encodes to no tokens");
        }
        if prompt.len() >= self.context {
            bail!(
                "the prompt is {} tokens, and the model's context is {} (max_position_embeddings): \
                 nothing can follow it. Shorten the prompt to under {} tokens",
                prompt.len(),
                self.context,
                self.context
            );
        }
        Ok(())
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
        on_text: impl FnMut(&str),
    ) -> Result<Generation> {
        self.check_prompt(prompt)?;
        self.generate_after(prompt, options, on_text, None)
    }

    /// Greedy or sampled generations from `prompt`, one per entry of `values` (each value's
    /// coefficient feeds), on a decoding graph: the prompt's prefill runs through `fan_out` (the
    /// same graph split at the swept coefficient), below the cut once and above it once per value;
    /// each value then decodes on the whole graph from its cache: the caches of the layers below
    /// the cut shared, its own above. Each generation is the one [`Generator::generate`] makes
    /// with the value's feeds set.
    pub fn generate_per_value(
        &mut self,
        fan_out: &mut FanOut,
        prompt: &[u32],
        values: &[Vec<ScalarFeed>],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        self.check_prompt(prompt)?;
        let Backend::Cache(kv) = &self.backend else {
            bail!("a prefill fans out on a decoding graph (sae-onnx export --kv-cache) only");
        };
        let prefill = kv.prefill_inputs(prompt)?;
        let common: Vec<Feed<'_>> = prefill.iter().map(|(n, v)| (n.as_str(), v)).collect();
        let fed: Vec<Vec<(String, DynValue)>> =
            values.iter().map(|f| value_feeds(f)).collect::<Result<_>>()?;
        let per_value: Vec<Vec<Feed<'_>>> = fed
            .iter()
            .map(|f| f.iter().map(|(n, v)| (n.as_str(), v)).collect())
            .collect();
        let presents: Vec<String> = (0..kv.layout.layers)
            .flat_map(|layer| ["key", "value"].map(|kind| present_name(layer, kind)))
            .collect();
        if fan_out.makes_below(LOGITS) {
            bail!("the logits do not depend on the swept coefficient: there is nothing to fan out");
        }
        let (below, above): (Vec<&str>, Vec<&str>) = presents
            .iter()
            .map(String::as_str)
            .partition(|name| fan_out.makes_below(name));
        let upper_outputs: Vec<&str> = std::iter::once(LOGITS).chain(above.iter().copied()).collect();
        let (shared, per_value) = fan_out
            .run(&common, &per_value, &below, &upper_outputs)
            .context("prefilling the prompt fanned out")?;
        let mut generations = Vec::with_capacity(values.len());
        for (feeds, outputs) in values.iter().zip(&per_value) {
            // The whole cache in the graph's order: each layer's from whichever part made it.
            let (mut from_below, mut from_above) = (shared.iter(), outputs[1..].iter());
            let cache: Vec<&DynValue> = presents
                .iter()
                .map(|name| {
                    if fan_out.makes_below(name) {
                        from_below.next()
                    } else {
                        from_above.next()
                    }
                    .context("a prefilled cache entry is missing")
                })
                .collect::<Result<_>>()?;
            let logits = last_logits(&outputs[0], 1, prompt.len())?.remove(0);
            self.set_feeds(feeds.clone());
            generations.push(self.generate_after(prompt, options, |_| {}, Some((logits, cache)))?);
        }
        Ok(generations)
    }

    /// [`Generator::generate`] of a checked prompt; on a decoding graph, `prefilled` is the
    /// prompt's last logits and cache when they were computed elsewhere.
    fn generate_after(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_text: impl FnMut(&str),
        prefilled: Option<(Vec<f32>, Vec<&DynValue>)>,
    ) -> Result<Generation> {
        let start = std::time::Instant::now();
        let (mut prefill_logits, prefill_cache) = prefilled.unzip();
        let mut rng = PyRandom::new(options.seed);
        let mut sequence = prompt.to_vec();
        let mut tokens = Vec::new();
        let mut shown = String::new();
        let mut finish = "length";
        let mut cache: Option<Vec<DynValue>> = None;
        while tokens.len() < options.max_new_tokens {
            if sequence.len() >= self.context {
                finish = "context";
                break;
            }
            let logprobs = match &mut self.backend {
                Backend::Recompute(scorer) => scorer
                    .next_token_logprobs(&[&sequence], &[prompt.len()], self.vocab)?
                    .remove(0),
                Backend::Cache(_) if prefill_logits.is_some() => {
                    log_softmax(&prefill_logits.take().expect("checked by the guard"))
                }
                Backend::Cache(kv) => {
                    let past: Option<Vec<&DynValue>> = cache
                        .as_ref()
                        .map(|c| c.iter().collect())
                        .or_else(|| prefill_cache.clone());
                    let fed = if past.is_some() {
                        &sequence[sequence.len() - 1..]
                    } else {
                        &sequence[..]
                    };
                    let (mut logits, presents) = kv.step(
                        &[fed],
                        &[vec![1; sequence.len()]],
                        &[prompt.len()],
                        past.as_deref(),
                    )?;
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
            let past: Vec<&DynValue> = cache.iter().collect();
            (logits, cache) = self.kv.step(&fed, &rows.masks, &prompt_lengths, Some(&past))?;
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
    /// The inputs of one prompt's prefill: its tokens, its mask, the empty cache and (for a graph
    /// that steers by it) its prompt length; not the coefficients.
    fn prefill_inputs(&self, prompt: &[u32]) -> Result<Vec<(String, DynValue)>> {
        use ort::value::Tensor;
        let n = prompt.len();
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let mut inputs = vec![
            (
                INPUT_IDS.to_owned(),
                Tensor::from_array(([1, n], ids))?.into_dyn(),
            ),
            (
                ATTENTION_MASK.to_owned(),
                Tensor::from_array(([1, n], vec![1i64; n]))?.into_dyn(),
            ),
        ];
        let names =
            (0..self.layout.layers).flat_map(|layer| ["key", "value"].map(|kind| past_name(layer, kind)));
        inputs.extend(names.zip(self.layout.empty(1)?));
        if self.reads_prompt_length {
            let length = Tensor::from_array(([1], vec![n as i64]))?.into_dyn();
            inputs.push((crate::contract::PROMPT_LENGTH.to_owned(), length));
        }
        Ok(inputs)
    }

    /// Runs `new` tokens after a cache of `total - new.len()` tokens (empty on the first call);
    /// returns the last position's logits and the updated cache. `prompt_lengths`: each row's
    /// prompt tokens (padding not counted), for a graph that steers by them.
    fn step(
        &mut self,
        rows: &[&[u32]],
        mask: &[Vec<i64>],
        prompt_lengths: &[usize],
        past: Option<&[&DynValue]>,
    ) -> Result<(Vec<Vec<f32>>, Vec<DynValue>)> {
        use ort::value::Tensor;
        let batch = rows.len();
        let empty;
        let past: Vec<&DynValue> = match past {
            Some(values) => values.to_vec(),
            None => {
                empty = self.layout.empty(batch)?;
                empty.iter().collect()
            }
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
                binding.bind_input(past_name(layer, kind), value)?;
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
        let last = last_logits(&outputs[LOGITS], batch, width)?;
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

/// Each row's logits at its last position, from a decoding graph's `[batch, width, vocabulary]`.
fn last_logits(logits: &DynValue, batch: usize, width: usize) -> Result<Vec<Vec<f32>>> {
    let (shape, logits) = logits.try_extract_tensor::<f32>()?;
    let vocab = usize::try_from(*shape.last().context("logits have no vocabulary axis")?).unwrap_or(0);
    if vocab == 0 || logits.len() != batch * width * vocab {
        bail!(
            "the decoding graph's logits have shape {shape:?}, not [{batch}, {width}, vocabulary]: \
             is it an sae-onnx export with --kv-cache?"
        );
    }
    Ok((0..batch)
        .map(|b| {
            let end = (b * width + width) * vocab;
            logits[end - vocab..end].to_vec()
        })
        .collect())
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|&x| f64::from(x - max).exp()).sum::<f64>().ln() as f32 + max;
    logits.iter().map(|&x| x - log_sum).collect()
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
