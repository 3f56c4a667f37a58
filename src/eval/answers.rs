//! Answering the requests of one pass: loglikelihoods of the token windows the cache does not
//! hold yet, in batches, appended to the cache as they come; and greedy generations of the
//! generate_until documents (lm-eval's `HFLM.loglikelihood` and `HFLM.generate_until`).

use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::cache::ResultCache;
use super::options::{AUTO_BATCH_CAP, BatchSize, EvalOptions};
use super::prepare::PreparedEval;
use super::requests::{Document, RequestEncoder};
use super::task::{OutputType, Task};
use super::task_output::Generations;
use crate::infer::generate::{GenerateOptions, Generator};
use crate::infer::lm::{FanOutOpening, ScoringModel, ScoringStats, TokenRequest};
use crate::infer::runtime::ScalarFeed;
use crate::infer::sweep_decode::SweepDecoder;
use crate::progress;

/// Sessions opened on a pass's first use and kept for the passes after it.
#[derive(Default)]
pub struct Sessions {
    scorer: Option<ScoringModel>,
    generator: Option<Generator>,
}

/// What answering the loglikelihood requests cost.
#[derive(Default, Clone)]
pub struct ScoringReport {
    pub stats: ScoringStats,
    /// Opening the session (weights to the device included), when this pass opened it.
    pub session_seconds: f64,
    pub scoring_seconds: f64,
    /// With `--batch-size auto`: the batch size chosen.
    pub batch_sizes: Vec<usize>,
}

/// Scores every token window of `prepared` that `cache` has no answer for, and adds the answers
/// to it.
pub fn score_missing(
    model_path: &Path,
    options: &EvalOptions,
    prepared: &PreparedEval,
    sessions: &mut Sessions,
    feeds: &[ScalarFeed],
    cache: &mut ResultCache,
) -> Result<ScoringReport> {
    let missing = missing_windows(prepared, cache);
    let mut report = ScoringReport::default();
    if missing.is_empty() {
        return Ok(report);
    }
    let max_length = prepared.max_length;
    let fresh = sessions.scorer.is_none();
    if fresh {
        let opening = Instant::now();
        let fixed = match options.batch_size {
            BatchSize::Fixed(n) => n,
            BatchSize::Auto => AUTO_BATCH_CAP,
        };
        sessions.scorer = Some(ScoringModel::open(
            model_path,
            &options.session,
            max_length,
            fixed,
        )?);
        report.session_seconds = opening.elapsed().as_secs_f64();
    }
    let scorer = sessions.scorer.as_mut().expect("opened above");
    scorer.feeds = feeds.to_vec();
    if fresh && options.batch_size == BatchSize::Auto {
        let longest = longest_input(&missing, max_length);
        scorer.batch_size = scorer.largest_batch_that_runs(longest, AUTO_BATCH_CAP)?;
        eprintln!(
            "batch size auto: {} (sequences of up to {longest} tokens)",
            scorer.batch_size
        );
    }
    if options.batch_size == BatchSize::Auto {
        report.batch_sizes.push(scorer.batch_size);
    }
    let bar = progress::items_bar(missing.len() as u64, "loglikelihood", options.progress);
    let tokens_total: usize = missing
        .iter()
        .map(|r| r.context.len() + r.continuation.len())
        .sum();
    let bar_start = Instant::now();
    let (answers, stats) = scorer.loglikelihood(&missing, |done, batch_answers| {
        bar.inc(done as u64);
        let elapsed = bar_start.elapsed().as_secs_f64().max(1e-9);
        let fraction = bar.position() as f64 / missing.len().max(1) as f64;
        bar.set_message(format!("{:.0} tok/s", tokens_total as f64 * fraction / elapsed));
        cache.append(batch_answers)
    })?;
    bar.finish_and_clear();
    report.scoring_seconds = bar_start.elapsed().as_secs_f64();
    report.stats = stats;
    for (request, answer) in missing.into_iter().zip(answers) {
        cache.answers.insert(request, answer);
    }
    Ok(report)
}

/// A sweep's loglikelihoods for all its points at once, fanned out: the scoring graph split at
/// the coefficient input `swept`, each batch runs below it once and above it once per point's
/// feeds. Each point's cache gets the windows it lacks. `None` (with the reason on stderr) when
/// the graph does not split there: the points are then scored one pass each.
pub fn score_missing_fanned_out(
    model_path: &Path,
    options: &EvalOptions,
    prepared: &PreparedEval,
    swept: &str,
    points: &mut [(&[ScalarFeed], &mut ResultCache)],
) -> Result<Option<Vec<ScoringReport>>> {
    let mut seen = HashSet::new();
    let missing: Vec<TokenRequest> = points
        .iter()
        .flat_map(|(_, cache)| missing_windows(prepared, cache))
        .filter(|r| seen.insert(r.clone()))
        .collect();
    if missing.is_empty() {
        return Ok(Some(vec![ScoringReport::default(); points.len()]));
    }
    let opening = Instant::now();
    let fixed = match options.batch_size {
        BatchSize::Fixed(n) => n,
        BatchSize::Auto => AUTO_BATCH_CAP,
    };
    let max_length = prepared.max_length;
    let mut scorer =
        match ScoringModel::open_fanned_out(model_path, &options.session, max_length, fixed, swept)? {
            FanOutOpening::Opened(scorer) => scorer,
            FanOutOpening::NotSplit(reason) => {
                eprintln!("sweep: one pass per value (the graph does not fan out at '{swept}': {reason})");
                return Ok(None);
            }
        };
    let session_seconds = opening.elapsed().as_secs_f64();
    if options.batch_size == BatchSize::Auto {
        // The probe runs both parts, holding what crosses the cut: what a batch needs here.
        let longest = longest_input(&missing, max_length);
        scorer.batch_size = scorer.largest_batch_that_runs(longest, AUTO_BATCH_CAP)?;
        eprintln!(
            "batch size auto: {} (sequences of up to {longest} tokens, fanned out)",
            scorer.batch_size
        );
    }
    let values: Vec<Vec<ScalarFeed>> = points.iter().map(|(feeds, _)| feeds.to_vec()).collect();
    let bar = progress::items_bar(
        missing.len() as u64,
        "loglikelihood (fanned out)",
        options.progress,
    );
    let start = Instant::now();
    let (answers, stats) = scorer.loglikelihood_per_value(&missing, &values, |v, done, batch_answers| {
        if v == 0 {
            bar.inc(done as u64);
        }
        let cache = &mut points[v].1;
        let lacking: Vec<_> = batch_answers
            .iter()
            .filter(|(request, _)| !cache.answers.contains_key(*request))
            .copied()
            .collect();
        cache.append(&lacking)
    })?;
    bar.finish_and_clear();
    let scoring_seconds = start.elapsed().as_secs_f64();
    let mut reports = Vec::with_capacity(points.len());
    for (v, ((_, cache), answers)) in points.iter_mut().zip(answers).enumerate() {
        for (request, answer) in missing.iter().zip(answers) {
            cache.answers.entry(request.clone()).or_insert(answer);
        }
        reports.push(ScoringReport {
            stats,
            // The shared costs are the first point's; the scoring time is shared out evenly.
            session_seconds: if v == 0 { session_seconds } else { 0.0 },
            scoring_seconds: scoring_seconds / values.len() as f64,
            batch_sizes: match options.batch_size {
                BatchSize::Auto => vec![scorer.batch_size],
                BatchSize::Fixed(_) => Vec::new(),
            },
        });
    }
    Ok(Some(reports))
}

/// The longest sequence the model reads for any of `requests`.
fn longest_input(requests: &[TokenRequest], max_length: usize) -> usize {
    requests
        .iter()
        .map(|r| (r.context.len() + r.continuation.len()).min(max_length + 1) - 1)
        .max()
        .unwrap_or(1)
}

/// The token windows of every document's requests without an answer in `cache`, each once.
fn missing_windows(prepared: &PreparedEval, cache: &ResultCache) -> Vec<TokenRequest> {
    let mut seen = HashSet::new();
    prepared
        .tasks
        .iter()
        .flat_map(|(_, documents)| documents)
        .flat_map(|d| d.requests.iter().flat_map(|r| &r.windows))
        .filter(|r| !cache.answers.contains_key(*r) && seen.insert(*r))
        .cloned()
        .collect()
}

/// Generates greedily for every document of the generate_until tasks, as HFLM.generate_until:
/// the prompt left-truncated to `max_length - max_gen_toks` tokens, stopped at EOS or an `until`
/// string, the decoded text cut before the first `until` string.
pub fn generate_all(
    model_path: &Path,
    options: &EvalOptions,
    prepared: &PreparedEval,
    sessions: &mut Sessions,
    feeds: &[ScalarFeed],
) -> Result<Generations> {
    let generating = generating_tasks(prepared);
    if generating.is_empty() {
        return Ok(Generations::new());
    }
    let base = GenerateOptions {
        session: options.session.clone(),
        tokenizer: options.tokenizer.clone(),
        hub: options.hub.clone(),
        ..Default::default()
    };
    if sessions.generator.is_none() {
        sessions.generator = Some(Generator::open(model_path, &base)?);
    }
    let generator = sessions.generator.as_mut().expect("opened above");
    generator.set_feeds(feeds.to_vec());
    let mut generations =
        generate_documents(options, prepared, &generating, &base, 1, |ids, gen_options| {
            Ok(vec![generator.generate(ids, gen_options, |_| {})?])
        })?;
    Ok(generations.pop().expect("one value"))
}

/// A sweep's generations for all its points at once, on a decoding graph: each prompt is
/// prefilled below the coefficient input `swept` once and above it once per value, then the
/// values decode together, one row each ([`SweepDecoder`]). `None` (with the reason on stderr)
/// when the model is not a decoding graph or does not fan out there: the points then generate
/// one pass each.
pub fn generate_all_fanned_out(
    model_path: &Path,
    options: &EvalOptions,
    prepared: &PreparedEval,
    swept: &str,
    values: &[f64],
) -> Result<Option<Vec<Generations>>> {
    let generating = generating_tasks(prepared);
    if generating.is_empty() {
        return Ok(Some(vec![Generations::new(); values.len()]));
    }
    let base = GenerateOptions {
        session: options.session.clone(),
        tokenizer: options.tokenizer.clone(),
        hub: options.hub.clone(),
        ..Default::default()
    };
    let mut decoder = match SweepDecoder::open(model_path, swept, &base)? {
        Ok(decoder) => decoder,
        Err(reason) => {
            eprintln!(
                "sweep: generate_until one pass per value (it does not fan out at '{swept}': {reason})"
            );
            return Ok(None);
        }
    };
    // Each row holds a cache of its own: at most a batch of rows decodes at once, so memory
    // stays that of one batch however many values the sweep has.
    let rows = match options.batch_size {
        BatchSize::Fixed(n) => n.max(1),
        BatchSize::Auto => AUTO_BATCH_CAP,
    };
    let generations = generate_documents(
        options,
        prepared,
        &generating,
        &base,
        values.len(),
        |ids, gen_options| {
            let mut generations = Vec::with_capacity(values.len());
            for group in values.chunks(rows) {
                generations.extend(decoder.generate(ids, group, gen_options)?);
            }
            Ok(generations)
        },
    )?;
    Ok(Some(generations))
}

/// The generate_until tasks of `prepared`, with their documents.
fn generating_tasks(prepared: &PreparedEval) -> Vec<&(Task, Vec<Document>)> {
    prepared
        .tasks
        .iter()
        .filter(|(t, _)| t.output_type == OutputType::GenerateUntil)
        .collect()
}

/// Every generate_until document's response, once per value: `generate` gives a prompt's
/// generation for each of the `values` values.
fn generate_documents(
    options: &EvalOptions,
    prepared: &PreparedEval,
    generating: &[&(Task, Vec<Document>)],
    base: &GenerateOptions,
    values: usize,
    mut generate: impl FnMut(&[u32], &GenerateOptions) -> Result<Vec<crate::infer::generate::Generation>>,
) -> Result<Vec<Generations>> {
    let mut generations = vec![Generations::new(); values];
    let total: usize = generating.iter().map(|(_, w)| w.len()).sum();
    let bar = progress::items_bar(total as u64, "generate_until", options.progress);
    let encoder = RequestEncoder {
        tokenizer: &prepared.tokenizer,
        add_bos: true,
        prefix_token: prepared.prefix_token,
        max_length: prepared.max_length,
    };
    for &(task, documents) in generating {
        let spec = super::generative::GenSpec::from_config(&task.config, &task.fewshot_delimiter())?;
        let mut until = spec.until.clone();
        let tokenizer = &prepared.tokenizer;
        // lm-eval appends the decoded `tokenizer.eos_token_id`: the configured eos_token
        // (Llama 3: <|end_of_text|>, Qwen: <|endoftext|>), not only <eos> or </s>.
        if let Some(eos) = tokenizer.eos_token_id()?.and_then(|e| tokenizer.decode_token(e))
            && !until.contains(&eos)
        {
            until.push(eos);
        }
        let gen_options = GenerateOptions {
            max_new_tokens: spec.max_gen_toks,
            stop: until.clone(),
            ..base.clone()
        };
        let keep = prepared.max_length.saturating_sub(spec.max_gen_toks).max(1);
        for doc in documents {
            let mut ids = encoder.encode(doc.requests[0].context())?;
            if ids.len() > keep {
                ids.drain(..ids.len() - keep);
            }
            let made = generate(&ids, &gen_options)
                .with_context(|| format!("task '{}', document {}", task.name, doc.doc_id))?;
            for (generations, generation) in generations.iter_mut().zip(made) {
                generations.insert(
                    (task.name.clone(), doc.doc_id),
                    super::generative::cut_at_until(&generation.text, &until),
                );
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok(generations)
}
