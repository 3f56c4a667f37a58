//! A generate_until sweep's generations, all its values at once, on a decoding graph. The graph is
//! rewritten so the swept coefficient takes one value per row ([`super::row_coefficients`]) and
//! split there ([`FanOut`]). Each prompt is prefilled below the coefficient once (one row) and
//! above it once per value (one row each); then every decoding step runs the K values as K rows
//! of one batch, below and above the cut, each row with its own coefficient. A row stops on its
//! own (EOS, a stop string, the token budget or the context) and leaves the batch.
//!
//! Every row computes what one pass at its value computes (its own tokens, cache and
//! coefficient, the same nodes); the split sessions are the only ones held (the weights once).
//! Sampling draws from one generator per row, seeded as a pass of its own would be.

use std::path::Path;

use anyhow::{Context, Result};
use ort::value::{DynValue, Tensor};

use super::fan_out::{FanOut, Feed};
use super::generate::{GenerateOptions, Generation, check_prompt, context_of, log_softmax, pick};
use super::kv_cache::{CacheLayout, last_logits, stack_rows};
use super::row_coefficients::{per_row_coefficients, row_values};
use crate::contract::{ATTENTION_MASK, INPUT_IDS, LOGITS, PROMPT_LENGTH, past_name, present_name};
use crate::onnx::{DataType, Model};
use crate::pycompat::random::PyRandom;
use crate::tokenizer::Tokenizer;

/// A decoding graph opened for a sweep over one coefficient, with what ends its generations.
pub struct SweepDecoder {
    fan_out: FanOut,
    layout: CacheLayout,
    reads_prompt_length: bool,
    swept: String,
    dtype: DataType,
    /// The graph's `present` outputs in order, and whether each is made below the cut.
    presents: Vec<(String, bool)>,
    /// The graph's `past` inputs, in the same order.
    pasts: Vec<String>,
    tokenizer: Tokenizer,
    eos: Vec<u32>,
    context: usize,
}

/// One batch's cache entries in the graph's order, and each row's logits at its last position.
struct Stepped {
    logits: Vec<Vec<f32>>,
    cache: Vec<DynValue>,
}

impl SweepDecoder {
    /// The decoding graph at `path`, rewritten and split at the coefficient input `swept`.
    /// `Ok(Err(reason))` when it is not a decoding graph, its coefficient is not the one
    /// `patch --sweepable` builds, or it does not split there.
    pub fn open(path: &Path, swept: &str, options: &GenerateOptions) -> Result<Result<Self, String>> {
        let mut model = Model::load(path)?;
        let Some(layout) = CacheLayout::of(&model)? else {
            return Ok(Err(
                "it is not a decoding graph (sae-onnx export --kv-cache)".into()
            ));
        };
        let tokenizer = Tokenizer::for_model(&options.hub, &model, options.tokenizer.as_deref())?;
        let eos = super::stop_tokens::eos_token_ids(&options.hub, &model, &tokenizer)?;
        let context = context_of(&model, path)?;
        let reads_prompt_length = model.graph().input.iter().any(|i| i.name() == PROMPT_LENGTH);
        let Some(dtype) = model.graph().element_type(swept) else {
            return Ok(Err(format!("the graph has no float input '{swept}'")));
        };
        if let Err(reason) = per_row_coefficients(&mut model, &[swept]) {
            return Ok(Err(format!("{reason:#}")));
        }
        // The caches are fed back: those that depend on the value vary with it.
        let carried = (0..layout.layers)
            .flat_map(|layer| {
                ["key", "value"].map(|kind| (present_name(layer, kind), past_name(layer, kind)))
            })
            .collect();
        let fan_out = match FanOut::open(&model, swept, &carried, &options.session)? {
            Ok(fan_out) => fan_out,
            Err(reason) => return Ok(Err(reason)),
        };
        if fan_out.makes_below(LOGITS) {
            return Ok(Err("the logits do not depend on the swept coefficient".into()));
        }
        let presents = (0..layout.layers)
            .flat_map(|layer| ["key", "value"].map(|kind| present_name(layer, kind)))
            .map(|name| {
                let below = fan_out.makes_below(&name);
                (name, below)
            })
            .collect();
        let pasts = (0..layout.layers)
            .flat_map(|layer| ["key", "value"].map(|kind| past_name(layer, kind)))
            .collect();
        Ok(Ok(Self {
            fan_out,
            layout,
            reads_prompt_length,
            swept: swept.to_owned(),
            dtype,
            presents,
            pasts,
            tokenizer,
            eos,
            context,
        }))
    }

    /// The generation from `prompt` at each of `values` (the swept coefficient's), each the one
    /// a pass of its own at that value makes.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        values: &[f64],
        options: &GenerateOptions,
    ) -> Result<Vec<Generation>> {
        check_prompt(prompt, self.context)?;
        let start = std::time::Instant::now();
        let n = prompt.len();
        let Stepped {
            mut logits,
            mut cache,
        } = self.prefill(prompt, values)?;
        let mut rngs: Vec<PyRandom> = values.iter().map(|_| PyRandom::new(options.seed)).collect();
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); values.len()];
        let mut finish: Vec<Option<&'static str>> = vec![None; values.len()];
        let mut texts: Vec<Option<String>> = vec![None; values.len()];
        // The rows still decoding, by value, in the batch's order.
        // A budget of no tokens: Generator::generate makes none.
        let mut active: Vec<usize> = if options.max_new_tokens == 0 {
            Vec::new()
        } else {
            (0..values.len()).collect()
        };
        loop {
            let mut kept = Vec::with_capacity(active.len());
            let mut next = Vec::with_capacity(active.len());
            for (slot, &row) in active.iter().enumerate() {
                let token = pick(&log_softmax(&logits[slot]), options, &mut rngs[row])
                    .context("no token can be sampled")?;
                if self.eos.contains(&token) {
                    finish[row] = Some("eos");
                    continue;
                }
                tokens[row].push(token);
                let text = self.tokenizer.decode(&tokens[row])?;
                if let Some(cut) = options.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
                    texts[row] = Some(text[..cut].to_owned());
                    finish[row] = Some("stop");
                    continue;
                }
                // What Generator::generate checks before its next step.
                if tokens[row].len() >= options.max_new_tokens {
                    continue;
                }
                if n + tokens[row].len() >= self.context {
                    finish[row] = Some("context");
                    continue;
                }
                kept.push(slot);
                next.push(token);
            }
            if kept.is_empty() {
                break;
            }
            if kept.len() < active.len() {
                let rows: Vec<(usize, usize)> = kept.iter().map(|&slot| (0, slot)).collect();
                cache = cache
                    .iter()
                    .map(|entry| stack_rows(&[entry], &rows))
                    .collect::<Result<_>>()?;
                active = kept.iter().map(|&slot| active[slot]).collect();
            }
            let row_values: Vec<f64> = active.iter().map(|&row| values[row]).collect();
            let total = n + tokens[active[0]].len();
            Stepped { logits, cache } = self.step(&next, total, n, &row_values, &cache)?;
        }
        let seconds = start.elapsed().as_secs_f64();
        tokens
            .into_iter()
            .zip(finish)
            .zip(texts)
            .map(|((tokens, finish), text)| {
                let text = match text {
                    Some(text) => text,
                    None => self.tokenizer.decode(&tokens)?,
                };
                Ok(Generation {
                    prompt_tokens: prompt.to_vec(),
                    tokens,
                    text,
                    finish: finish.unwrap_or("length"),
                    seconds,
                })
            })
            .collect()
    }

    /// The prompt below the cut once, above it once per value (one row each); the caches joined
    /// into one batch of a row per value, the lower part's repeated.
    fn prefill(&mut self, prompt: &[u32], values: &[f64]) -> Result<Stepped> {
        let n = prompt.len();
        let ids: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        let mut common = vec![
            (
                INPUT_IDS.to_owned(),
                Tensor::from_array(([1, n], ids))?.into_dyn(),
            ),
            (
                ATTENTION_MASK.to_owned(),
                Tensor::from_array(([1, n], vec![1i64; n]))?.into_dyn(),
            ),
        ];
        common.extend(self.pasts.iter().cloned().zip(self.layout.empty(1)?));
        if self.reads_prompt_length {
            common.push((
                PROMPT_LENGTH.to_owned(),
                Tensor::from_array(([1], vec![n as i64]))?.into_dyn(),
            ));
        }
        let fed: Vec<DynValue> = values
            .iter()
            .map(|&v| row_values(self.dtype, &[v]))
            .collect::<Result<_>>()?;
        let per_value: Vec<Vec<Feed<'_>>> = fed.iter().map(|v| vec![(self.swept.as_str(), v)]).collect();
        let (below, above) = output_names(&self.presents);
        let (shared, per_value) = self
            .fan_out
            .run(&borrowed(&common), &per_value, &below, &above)
            .context("prefilling the prompt fanned out")?;
        let logits = per_value
            .iter()
            .map(|outputs| Ok(last_logits(&outputs[0], 1, n)?.remove(0)))
            .collect::<Result<_>>()?;
        let k = values.len();
        let (mut from_below, mut upper_entry) = (shared.iter(), 1);
        let repeated: Vec<(usize, usize)> = vec![(0, 0); k];
        let joined: Vec<(usize, usize)> = (0..k).map(|row| (row, 0)).collect();
        let cache = self
            .presents
            .iter()
            .map(|(_, below)| {
                if *below {
                    stack_rows(
                        &[from_below.next().context("a lower cache entry is missing")?],
                        &repeated,
                    )
                } else {
                    let parts: Vec<&DynValue> = per_value.iter().map(|o| &o[upper_entry]).collect();
                    upper_entry += 1;
                    stack_rows(&parts, &joined)
                }
            })
            .collect::<Result<_>>()?;
        Ok(Stepped { logits, cache })
    }

    /// One decoding step of the rows still running: each its `next` token, the last of `total`
    /// tokens (`prompt` of them the prompt's), at its coefficient in `values`.
    fn step(
        &mut self,
        next: &[u32],
        total: usize,
        prompt: usize,
        values: &[f64],
        cache: &[DynValue],
    ) -> Result<Stepped> {
        let batch = next.len();
        let ids: Vec<i64> = next.iter().map(|&t| i64::from(t)).collect();
        let mut common = vec![
            (
                INPUT_IDS.to_owned(),
                Tensor::from_array(([batch, 1], ids))?.into_dyn(),
            ),
            (
                ATTENTION_MASK.to_owned(),
                Tensor::from_array(([batch, total], vec![1i64; batch * total]))?.into_dyn(),
            ),
        ];
        if self.reads_prompt_length {
            common.push((
                PROMPT_LENGTH.to_owned(),
                Tensor::from_array(([batch], vec![prompt as i64; batch]))?.into_dyn(),
            ));
        }
        let mut feeds = borrowed(&common);
        feeds.extend(self.pasts.iter().map(String::as_str).zip(cache));
        let coefficients = row_values(self.dtype, values)?;
        let (below, above) = output_names(&self.presents);
        let (shared, mut upper) = self
            .fan_out
            .run(
                &feeds,
                &[vec![(self.swept.as_str(), &coefficients)]],
                &below,
                &above,
            )
            .context("a decoding step fanned out")?;
        let mut upper = upper.pop().context("the upper part made nothing")?.into_iter();
        let logits = last_logits(&upper.next().context("no logits")?, batch, 1)?;
        let mut shared = shared.into_iter();
        let cache = self
            .presents
            .iter()
            .map(|(_, below)| {
                if *below { shared.next() } else { upper.next() }.context("a cache entry is missing")
            })
            .collect::<Result<_>>()?;
        Ok(Stepped { logits, cache })
    }
}

/// The cache entries made below the cut, and what the part above makes: the logits, then its
/// cache entries.
fn output_names(presents: &[(String, bool)]) -> (Vec<&str>, Vec<&str>) {
    let below = presents
        .iter()
        .filter(|(_, b)| *b)
        .map(|(n, _)| n.as_str())
        .collect();
    let above = std::iter::once(LOGITS)
        .chain(presents.iter().filter(|(_, b)| !*b).map(|(n, _)| n.as_str()))
        .collect();
    (below, above)
}

fn borrowed(named: &[(String, DynValue)]) -> Vec<Feed<'_>> {
    named.iter().map(|(n, v)| (n.as_str(), v)).collect()
}
