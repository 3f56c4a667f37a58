//! Loglikelihood scoring on ONNX Runtime with lm-eval's semantics: for a request
//! `(context tokens, continuation tokens)` the model reads `(context + continuation)[:-1]`
//! (left-truncated to the model's length) and the answer is the summed log-probability of the
//! continuation tokens, with `is_greedy` when each is the argmax.
//!
//! Requests are grouped by the exact token sequence the model reads, so all requests sharing a
//! context with one-token continuations (MMLU's A/B/C/D) cost one forward; groups are batched by
//! length, right-padded. On a decoding graph (`export --kv-cache`), sequences that share a long
//! prefix (MMLU's k-shot block: the same for every question of a subject) compute it once: the
//! prefix's key/value cache is computed once and repeated for each batch of their suffixes.
//!
//! A steered graph with `prompt` / `generated` rows reads each row's prompt boundary
//! ([`PROMPT_LENGTH`]): the context is the prompt, so a request's boundary is the number of its
//! context tokens the model reads. Requests then share a forward only when their boundaries agree
//! too; a shared prefix always ends before the first scored position, inside every prompt.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use std::borrow::Cow;

use anyhow::{Context, Result, bail};
use ort::session::Session;
use ort::value::{DynValue, Tensor};

use super::scoring::{self, GREEDY_TOKENS, POSITIONS, TARGET_LOGPROBS, TARGETS};
use crate::contract::{ATTENTION_MASK, INPUT_IDS, LOGITS, PROMPT_LENGTH, past_name, present_name};
use crate::infer::fan_out::{FanOut, value_feeds, value_inputs};
use crate::infer::kv_cache::CacheLayout;
use crate::infer::runtime::{self, ScalarFeed, SessionOptions};
use crate::onnx::Model;

/// One loglikelihood request, already tokenized.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenRequest {
    pub context: Vec<u32>,
    pub continuation: Vec<u32>,
}

/// lm-eval's answer to a loglikelihood request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Loglikelihood {
    pub logprob: f64,
    pub is_greedy: bool,
}

/// A unit's answers by (position, token).
type UnitScores = HashMap<(usize, u32), TokenScore>;

/// One candidate token's answer at one position.
#[derive(Debug, Clone, Copy)]
struct TokenScore {
    logprob: f32,
    /// The token is the argmax at its position.
    is_greedy: bool,
}

/// A prefix every unit of a batch starts with, and its cache: one sequence's, which the graph
/// repeats for the batch.
#[derive(Clone, Copy)]
struct SharedPrefix<'a> {
    cache: &'a [DynValue],
    len: usize,
}

/// One forward: an input sequence and, for each scored position, its candidate tokens.
#[derive(Debug, Default)]
struct Unit {
    input: Vec<u32>,
    /// How many of the input's tokens are the prompt (the request's context).
    prompt_length: usize,
    /// position -> candidate tokens (deduplicated, in first-seen order).
    candidates: BTreeMap<usize, Vec<u32>>,
}

/// Counts for progress reporting and throughput figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScoringStats {
    pub requests: usize,
    pub forwards: usize,
    /// Tokens the model reads (each sequence's length, as if computed whole).
    pub tokens: usize,
    /// Of those, tokens not recomputed: shared prefixes answered from their cache.
    pub shared_prefix_tokens: usize,
    /// On a full-sequence graph: the tokens a decoding graph would not have recomputed.
    pub shareable_prefix_tokens: usize,
}

/// Where each request is scored: the forwards, and which of their answers each request sums.
struct ScoringPlan {
    units: Vec<Unit>,
    /// Per request, in request order.
    targets: Vec<RequestTargets>,
    /// Per unit: the requests it answers.
    requests_of_unit: Vec<Vec<usize>>,
}

/// The unit that scores a request, and the (position, token) pairs its answer sums.
struct RequestTargets {
    unit: usize,
    scored: Vec<(usize, u32)>,
}

impl ScoringPlan {
    /// Reads each request as lm-eval does (`(context + continuation)[:-1]`, left-truncated to
    /// `max_length`) and gives requests that read the same tokens one unit.
    /// With `by_prompt_length`, requests that read the same tokens but split them differently
    /// into context and continuation get units of their own.
    fn new(requests: &[TokenRequest], max_length: usize, by_prompt_length: bool) -> Result<Self> {
        let mut units: Vec<Unit> = Vec::new();
        let mut unit_of_input: HashMap<(Vec<u32>, usize), usize> = HashMap::new();
        let mut targets = Vec::with_capacity(requests.len());
        for (i, request) in requests.iter().enumerate() {
            if request.continuation.is_empty() {
                bail!("request {i} has an empty continuation");
            }
            if request.context.is_empty() {
                bail!("request {i} has an empty context; lm-eval puts the prefix token (BOS) there");
            }
            let whole: Vec<u32> = request
                .context
                .iter()
                .chain(&request.continuation)
                .copied()
                .collect();
            let keep = whole.len().min(max_length + 1);
            let cut = whole.len() - keep;
            let input = whole[cut..whole.len() - 1].to_vec();
            let prompt_length = request.context.len().saturating_sub(cut);
            let n = request.continuation.len().min(input.len());
            let first = input.len() - n;
            let scored: Vec<(usize, u32)> = (0..n)
                .map(|j| {
                    (
                        first + j,
                        request.continuation[request.continuation.len() - n + j],
                    )
                })
                .collect();
            let key = (input.clone(), if by_prompt_length { prompt_length } else { 0 });
            let unit = *unit_of_input.entry(key).or_insert_with(|| {
                units.push(Unit {
                    input,
                    prompt_length,
                    ..Default::default()
                });
                units.len() - 1
            });
            for &(position, token) in &scored {
                let candidates = units[unit].candidates.entry(position).or_default();
                if !candidates.contains(&token) {
                    candidates.push(token);
                }
            }
            targets.push(RequestTargets { unit, scored });
        }
        let mut requests_of_unit: Vec<Vec<usize>> = vec![Vec::new(); units.len()];
        for (i, target) in targets.iter().enumerate() {
            requests_of_unit[target.unit].push(i);
        }
        Ok(Self {
            units,
            targets,
            requests_of_unit,
        })
    }

    /// Request `request`'s answer from its unit's scores.
    fn answer(&self, request: usize, scores: &UnitScores) -> Loglikelihood {
        let mut logprob = 0.0f32;
        let mut is_greedy = true;
        for key in &self.targets[request].scored {
            let score = scores[key];
            logprob += score.logprob;
            is_greedy &= score.is_greedy;
        }
        Loglikelihood {
            logprob: f64::from(logprob),
            is_greedy,
        }
    }
}

/// A shared prefix shorter than this is recomputed with each sequence: repeating its cache for a
/// batch would cost about what it saves.
const MIN_SHARED_PREFIX: usize = 32;

/// Sequences whose first `len` tokens are the same (`len` 0: computed whole), longest first.
struct PrefixGroup {
    len: usize,
    units: Vec<usize>,
}

/// How a forward runs: the whole scoring graph in one session, or split at a swept coefficient
/// (the part below it once per batch, the part above once per value).
enum Engine {
    Whole(Session),
    FannedOut(Box<FanOut>),
}

/// What [`ScoringModel::open_fanned_out`] found.
pub enum FanOutOpening {
    Opened(ScoringModel),
    /// The graph does not split at the coefficient: why.
    NotSplit(String),
}

pub struct ScoringModel {
    engine: Engine,
    /// Whether the session was optimised now or loaded from the session cache.
    pub session_origin: runtime::SessionOrigin,
    /// The cache layout of a decoding graph, which lets shared prefixes be computed once.
    cache: Option<CacheLayout>,
    /// Where a shared prefix's cache is kept between the batches that read it: the device.
    cache_memory: ort::memory::MemoryInfo<'static>,
    /// Fed on every run besides the token inputs (a sweep's coefficient).
    pub feeds: Vec<ScalarFeed>,
    /// The graph takes the prompt boundary ([`PROMPT_LENGTH`]).
    reads_prompt_length: bool,
    pub max_length: usize,
    pub batch_size: usize,
    pub pad_id: u32,
}

impl ScoringModel {
    /// Opens `path`, rewrites its LM head into the scoring form in memory, and starts a session.
    pub fn open(path: &Path, options: &SessionOptions, max_length: usize, batch_size: usize) -> Result<Self> {
        let (model, cache) = Self::scoring_graph(path, max_length)?;
        let opened = runtime::session_from_model_with_origin(&model, options)?;
        Self::with_engine(
            &model,
            cache,
            Engine::Whole(opened.session),
            opened.origin,
            options,
            max_length,
            batch_size,
        )
    }

    /// [`ScoringModel::open`] with the scoring graph split at the coefficient input `swept`, for
    /// [`ScoringModel::loglikelihood_per_value`] to score many values of it at the cost of one
    /// pass below it. Opened without the session cache (the two parts are not the model).
    pub fn open_fanned_out(
        path: &Path,
        options: &SessionOptions,
        max_length: usize,
        batch_size: usize,
        swept: &str,
    ) -> Result<FanOutOpening> {
        let (model, cache) = Self::scoring_graph(path, max_length)?;
        let fan_out = match FanOut::open(&model, swept, options)? {
            Ok(fan_out) => fan_out,
            Err(reason) => return Ok(FanOutOpening::NotSplit(reason)),
        };
        let (lower, upper) = fan_out.node_counts;
        tracing::info!("fan-out at '{swept}': {lower} nodes below, {upper} above");
        Ok(FanOutOpening::Opened(Self::with_engine(
            &model,
            cache,
            Engine::FannedOut(Box::new(fan_out)),
            runtime::SessionOrigin::Built,
            options,
            max_length,
            batch_size,
        )?))
    }

    /// `path` rewritten into the scoring form, and its cache layout if it is a decoding graph.
    fn scoring_graph(path: &Path, max_length: usize) -> Result<(Model, Option<CacheLayout>)> {
        if max_length == 0 {
            bail!("a context length of 0 tokens scores nothing; give at least 1");
        }
        let mut model = Model::load(path)?;
        let cache = CacheLayout::of(&model)?;
        if let Some(layout) = &cache {
            crate::infer::kv_cache::broadcast_cache_inputs(&mut model, layout)
                .with_context(|| format!("preparing '{}' for shared prefixes", path.display()))?;
        }
        scoring::add_scoring_head(&mut model, LOGITS)
            .with_context(|| format!("preparing '{}' for scoring", path.display()))?;
        Ok((model, cache))
    }

    fn with_engine(
        model: &Model,
        cache: Option<CacheLayout>,
        engine: Engine,
        session_origin: runtime::SessionOrigin,
        options: &SessionOptions,
        max_length: usize,
        batch_size: usize,
    ) -> Result<Self> {
        Ok(Self {
            engine,
            session_origin,
            cache,
            cache_memory: runtime::memory_info(options.device)?,
            feeds: ScalarFeed::coefficient_defaults(model)?,
            reads_prompt_length: model.graph().input.iter().any(|i| i.name() == PROMPT_LENGTH),
            max_length,
            batch_size: batch_size.max(1),
            pad_id: 0,
        })
    }

    /// Scores every request. After each batch, `on_batch` gets how many requests it finished and
    /// their answers (for progress and for the resumable cache).
    pub fn loglikelihood(
        &mut self,
        requests: &[TokenRequest],
        mut on_batch: impl FnMut(usize, &[(&TokenRequest, Loglikelihood)]) -> Result<()>,
    ) -> Result<(Vec<Loglikelihood>, ScoringStats)> {
        let (mut answers, stats) =
            self.loglikelihood_per_value(requests, &[Vec::new()], |_, done, answers| {
                on_batch(done, answers)
            })?;
        Ok((answers.remove(0), stats))
    }

    /// Scores every request once per feed set of `values` (each fed over [`ScoringModel::feeds`]),
    /// batch by batch: on a model opened fanned out, what does not depend on the swept coefficient
    /// runs once per batch. After each batch, `on_batch` gets each value's index, how many
    /// requests the batch finished and their answers for that value.
    pub fn loglikelihood_per_value(
        &mut self,
        requests: &[TokenRequest],
        values: &[Vec<ScalarFeed>],
        mut on_batch: impl FnMut(usize, usize, &[(&TokenRequest, Loglikelihood)]) -> Result<()>,
    ) -> Result<(Vec<Vec<Loglikelihood>>, ScoringStats)> {
        if values.is_empty() {
            bail!("no values to score the requests at");
        }
        if values.len() > 1 && self.cache.is_some() {
            // A shared prefix's cache above the hook depends on the value.
            bail!("a decoding graph scores one value at a time");
        }
        let plan = ScoringPlan::new(requests, self.max_length, self.reads_prompt_length)?;
        let units = &plan.units;
        let mut stats = ScoringStats {
            requests: requests.len(),
            forwards: units.len(),
            ..Default::default()
        };
        let groups = self.prefix_groups_to_run(units, &mut stats);
        let mut answers: Vec<Vec<Option<Loglikelihood>>> = vec![vec![None; requests.len()]; values.len()];
        for group in &groups {
            let cache = match group.len {
                0 => None,
                len => Some(self.prefix_cache(&units[group.units[0]].input[..len])?),
            };
            for batch in group.units.chunks(self.batch_size) {
                let scored = self.forward(
                    batch.iter().map(|&u| &units[u]).collect(),
                    cache.as_ref().map(|cache| SharedPrefix {
                        cache,
                        len: group.len,
                    }),
                    values,
                )?;
                stats.shared_prefix_tokens += group.len
                    * batch
                        .len()
                        .saturating_sub(usize::from(batch[0] == group.units[0]));
                for &u in batch {
                    stats.tokens += units[u].input.len();
                }
                for (v, scored) in scored.into_iter().enumerate() {
                    let mut finished = Vec::new();
                    for (&u, unit_scores) in batch.iter().zip(scored) {
                        for &i in &plan.requests_of_unit[u] {
                            let answer = plan.answer(i, &unit_scores);
                            answers[v][i] = Some(answer);
                            finished.push((&requests[i], answer));
                        }
                    }
                    on_batch(v, finished.len(), &finished)?;
                }
            }
        }
        let answers = answers
            .into_iter()
            .map(|value| {
                value
                    .into_iter()
                    .map(|a| a.expect("every unit was scored"))
                    .collect()
            })
            .collect();
        Ok((answers, stats))
    }

    /// The groups the units run in: on a decoding graph those sharing a prefix, whose cache is
    /// computed once; on a full-sequence graph all in one, with the prefix tokens a decoding
    /// graph would have saved counted in `stats`.
    fn prefix_groups_to_run(&self, units: &[Unit], stats: &mut ScoringStats) -> Vec<PrefixGroup> {
        if self.cache.is_some() {
            return prefix_groups(units);
        }
        stats.shareable_prefix_tokens = prefix_groups(units)
            .iter()
            .map(|g| g.len * g.units.len().saturating_sub(1))
            .sum();
        vec![PrefixGroup {
            len: 0,
            units: longest_first(units, (0..units.len()).collect()),
        }]
    }

    /// The cache of one sequence's first tokens, kept on the session's device and fed as is under
    /// each batch of suffixes (the graph broadcasts it to the batch).
    fn prefix_cache(&mut self, prefix: &[u32]) -> Result<Vec<DynValue>> {
        let layout = self.cache.expect("prefixes are shared on decoding graphs only");
        let n = prefix.len();
        let ids: Vec<i64> = prefix.iter().map(|&t| i64::from(t)).collect();
        let Engine::Whole(session) = &mut self.engine else {
            bail!("a fanned-out model has no decoding graph");
        };
        let mut binding = session.create_binding()?;
        binding.bind_input(INPUT_IDS, &Tensor::from_array(([1, n], ids))?)?;
        binding.bind_input(ATTENTION_MASK, &Tensor::from_array(([1, n], vec![1i64; n]))?)?;
        binding.bind_input(POSITIONS, &Tensor::from_array(([1, 1], vec![0i64]))?)?;
        binding.bind_input(TARGETS, &Tensor::from_array(([1, 1, 1], vec![0i64]))?)?;
        for (k, value) in layout.empty(1)?.iter().enumerate() {
            binding.bind_input(past_name(k / 2, KINDS[k % 2]), value)?;
        }
        for feed in &self.feeds {
            binding.bind_input(feed.name.as_str(), &feed.tensor()?)?;
        }
        let cpu = runtime::memory_info(runtime::Device::Cpu)?;
        binding.bind_output_to_device(TARGET_LOGPROBS, &cpu)?;
        binding.bind_output_to_device(GREEDY_TOKENS, &cpu)?;
        for k in 0..2 * layout.layers {
            binding.bind_output_to_device(present_name(k / 2, KINDS[k % 2]), &self.cache_memory)?;
        }
        let mut outputs = session
            .run_binding(&binding)
            .context("computing a shared prefix")?;
        (0..2 * layout.layers)
            .map(|k| {
                outputs
                    .remove(present_name(k / 2, KINDS[k % 2]))
                    .context("the decoding graph has no present output")
            })
            .collect()
    }

    /// The next-token log-probabilities after each sequence (all `vocab` of them), in one
    /// right-padded batch: the scoring head asked for every token at each sequence's last position.
    /// `prompt_lengths[i]`: how many of sequence `i`'s tokens are its prompt (the rest generated).
    pub fn next_token_logprobs(
        &mut self,
        sequences: &[&[u32]],
        prompt_lengths: &[usize],
        vocab: usize,
    ) -> Result<Vec<Vec<f32>>> {
        if sequences.iter().any(|s| s.is_empty()) {
            bail!("an empty sequence has no next token to score");
        }
        let all: Vec<u32> = (0..vocab as u32).collect();
        let units: Vec<Unit> = sequences
            .iter()
            .zip(prompt_lengths)
            .map(|(s, &prompt_length)| Unit {
                input: s.to_vec(),
                prompt_length,
                candidates: BTreeMap::from([(s.len() - 1, all.clone())]),
            })
            .collect();
        let scored = self.run_batch(units.iter().collect(), None)?;
        Ok(scored
            .into_iter()
            .zip(sequences)
            .map(|(unit, s)| all.iter().map(|&t| unit[&(s.len() - 1, t)].logprob).collect())
            .collect())
    }

    /// The largest batch, from `cap` halving down to 1, whose forward over `seq`-token sequences
    /// succeeds (a failure is typically an allocation on the device).
    pub fn largest_batch_that_runs(&mut self, seq: usize, cap: usize) -> Result<usize> {
        let probe = Unit {
            input: vec![self.pad_id; seq.max(1)],
            prompt_length: seq.max(1),
            candidates: BTreeMap::from([(seq.max(1) - 1, vec![0])]),
        };
        let mut size = cap.max(1);
        loop {
            match self.run_batch(vec![&probe; size], None) {
                Ok(_) => return Ok(size),
                Err(err) if size > 1 => {
                    tracing::debug!("batch {size} failed ({err:#}); halving");
                    size /= 2;
                }
                Err(err) => return Err(err.context("even a batch of one sequence does not run")),
            }
        }
    }

    /// One forward over `units` at the feeds of [`ScoringModel::feeds`]; returns each unit's scores.
    fn run_batch(&mut self, units: Vec<&Unit>, prefix: Option<SharedPrefix>) -> Result<Vec<UnitScores>> {
        Ok(self.forward(units, prefix, &[Vec::new()])?.remove(0))
    }

    /// One forward over `units` per feed set of `values`; returns, per value, each unit's scores.
    /// With `prefix`, every unit starts with those tokens: only the rest is fed, after the cache
    /// repeated for the batch.
    fn forward(
        &mut self,
        units: Vec<&Unit>,
        prefix: Option<SharedPrefix>,
        values: &[Vec<ScalarFeed>],
    ) -> Result<Vec<Vec<UnitScores>>> {
        let batch = units.len();
        let skip = prefix.map_or(0, |p| p.len);
        let seq = units.iter().map(|u| u.input.len() - skip).max().unwrap_or(1);
        let k = units.iter().map(|u| u.candidates.len()).max().unwrap_or(1);
        let c = units
            .iter()
            .flat_map(|u| u.candidates.values().map(Vec::len))
            .max()
            .unwrap_or(1);
        let mut ids = vec![i64::from(self.pad_id); batch * seq];
        let mut mask = vec![0i64; batch * seq];
        let mut positions = vec![0i64; batch * k];
        let mut targets = vec![0i64; batch * k * c];
        for (b, unit) in units.iter().enumerate() {
            for (t, &token) in unit.input[skip..].iter().enumerate() {
                ids[b * seq + t] = i64::from(token);
                mask[b * seq + t] = 1;
            }
            for (j, (&position, candidates)) in unit.candidates.iter().enumerate() {
                positions[b * k + j] = (position - skip) as i64;
                for (m, &token) in candidates.iter().enumerate() {
                    targets[(b * k + j) * c + m] = i64::from(token);
                }
            }
        }
        // The mask covers the cached prefix too: the graph takes positions from its running sum.
        let mask: Vec<i64> = mask
            .chunks(seq)
            .flat_map(|row| std::iter::repeat_n(1, skip).chain(row.iter().copied()))
            .collect();
        let mut common: Vec<(String, DynValue)> = vec![
            (
                INPUT_IDS.into(),
                Tensor::from_array(([batch, seq], ids))?.into_dyn(),
            ),
            (
                ATTENTION_MASK.into(),
                Tensor::from_array(([batch, skip + seq], mask))?.into_dyn(),
            ),
            (
                POSITIONS.into(),
                Tensor::from_array(([batch, k], positions))?.into_dyn(),
            ),
            (
                TARGETS.into(),
                Tensor::from_array(([batch, k, c], targets))?.into_dyn(),
            ),
        ];
        let mut past: Vec<(String, &DynValue)> = Vec::new();
        let empty_cache;
        if let Some(layout) = self.cache {
            let cache = match prefix {
                Some(prefix) => prefix.cache,
                None => {
                    empty_cache = layout.empty(1)?;
                    &empty_cache
                }
            };
            for (n, value) in cache.iter().enumerate() {
                past.push((past_name(n / 2, KINDS[n % 2]), value));
            }
        }
        for feed in &self.feeds {
            common.push((feed.name.clone(), feed.tensor()?));
        }
        if self.reads_prompt_length {
            let lengths: Vec<i64> = units.iter().map(|u| u.prompt_length as i64).collect();
            common.push((
                PROMPT_LENGTH.into(),
                Tensor::from_array(([batch], lengths))?.into_dyn(),
            ));
        }
        let outputs = match &mut self.engine {
            Engine::Whole(session) => {
                let mut per_value = Vec::with_capacity(values.len());
                for feeds in values {
                    let fed = value_feeds(feeds)?;
                    let mut inputs = value_inputs(&common, &fed, |_| true);
                    inputs.extend(
                        past.iter()
                            .map(|(name, value)| (Cow::from(name.as_str()), (*value).into())),
                    );
                    let mut ran = session.run(inputs).context("running the model")?;
                    per_value.push(vec![
                        ran.remove(TARGET_LOGPROBS)
                            .context("the model returned no log-probabilities")?,
                        ran.remove(GREEDY_TOKENS)
                            .context("the model returned no greedy tokens")?,
                    ]);
                }
                per_value
            }
            Engine::FannedOut(fan_out) => fan_out.run(&common, values, &[TARGET_LOGPROBS, GREEDY_TOKENS])?,
        };
        outputs
            .iter()
            .map(|out| unit_scores(&units, &out[0], &out[1], k, c))
            .collect()
    }
}

/// Each unit's scores from one forward's `[batch, k, c]` log-probabilities and `[batch, k]`
/// greedy tokens.
fn unit_scores(
    units: &[&Unit],
    logprobs: &DynValue,
    greedy: &DynValue,
    k: usize,
    c: usize,
) -> Result<Vec<UnitScores>> {
    let batch = units.len();
    let (_, logprobs) = logprobs.try_extract_tensor::<f32>()?;
    let (_, greedy) = greedy.try_extract_tensor::<i64>()?;
    if logprobs.len() != batch * k * c || greedy.len() != batch * k {
        bail!(
            "the scoring graph returned {} log-probabilities and {} greedy tokens for a [{batch}, {k}, {c}] request",
            logprobs.len(),
            greedy.len()
        );
    }
    let mut results = Vec::with_capacity(batch);
    for (b, unit) in units.iter().enumerate() {
        let mut scored = HashMap::new();
        for (j, (&position, candidates)) in unit.candidates.iter().enumerate() {
            for (m, &token) in candidates.iter().enumerate() {
                let lp = logprobs[(b * k + j) * c + m];
                if !lp.is_finite() {
                    bail!(
                        "the model produced a non-finite log-probability ({lp}) at position {position}: NaN or infinite logits"
                    );
                }
                let score = TokenScore {
                    logprob: lp,
                    is_greedy: greedy[b * k + j] == i64::from(token),
                };
                scored.insert((position, token), score);
            }
        }
        results.push(scored);
    }
    Ok(results)
}

/// A cache input's two kinds, in the graph's order per layer.
const KINDS: [&str; 2] = ["key", "value"];

/// `units` by decreasing length, as lm-eval orders requests (an out-of-memory shows at the start).
fn longest_first(units: &[Unit], mut order: Vec<usize>) -> Vec<usize> {
    order.sort_by_key(|&u| std::cmp::Reverse(units[u].input.len()));
    order
}

/// Groups the units that share a prefix of at least [`MIN_SHARED_PREFIX`] tokens, ending before
/// their first scored position (whose logits must come from the suffix). Units in sorted order
/// that share a prefix are neighbours: a group grows while the prefix it shares stays that long.
/// The units that share none come last, in a group of length 0.
fn prefix_groups(units: &[Unit]) -> Vec<PrefixGroup> {
    let first_scored = |u: &Unit| u.candidates.keys().next().copied().unwrap_or(0);
    let mut sorted: Vec<usize> = (0..units.len()).collect();
    sorted.sort_by(|&a, &b| units[a].input.cmp(&units[b].input));
    let mut groups = Vec::new();
    let mut alone = Vec::new();
    let mut start = 0;
    while start < sorted.len() {
        let head = &units[sorted[start]];
        let mut len = first_scored(head);
        let mut end = start + 1;
        while end < sorted.len() {
            let next = &units[sorted[end]];
            let common = head
                .input
                .iter()
                .zip(&next.input)
                .take_while(|(a, b)| a == b)
                .count();
            let shared = len.min(common).min(first_scored(next));
            if shared < MIN_SHARED_PREFIX {
                break;
            }
            len = shared;
            end += 1;
        }
        if end - start >= 2 {
            groups.push(PrefixGroup {
                len,
                units: longest_first(units, sorted[start..end].to_vec()),
            });
        } else {
            alone.push(sorted[start]);
        }
        start = end;
    }
    if !alone.is_empty() {
        groups.push(PrefixGroup {
            len: 0,
            units: longest_first(units, alone),
        });
    }
    groups
}
