//! The evaluation run, as lm-eval's `simple_evaluate`: prepare the documents and requests once
//! ([`super::prepare`]), then per pass (one, or one per sweep value) answer the requests
//! ([`super::answers`]), score each task ([`super::task_output`]), pool the groups
//! ([`super::groups`]) and write the results file ([`super::results`]) and samples.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use indexmap::IndexMap;
use serde_json::{Value, json};

use super::answers::{self, ScoringReport, Sessions};
use super::assemble::{self, TaskPart};
use super::cache::{CacheKey, ResultCache};
use super::options::{BatchSize, EvalOptions, LM_EVAL_VERSION};
use super::output::{self, sanitize_model_name};
use super::prepare::PreparedEval;
use super::shard::{Shard, ShardRecord, TaskShard};
use super::task_output::{Generations, TaskLabel, TaskOutput};
use crate::contract::meta;
use crate::contract::results::{ModelArgs, ResultsFile, RunConfig, RunInfo, SweepRecord, SweepValue};
use crate::infer::runtime::ScalarFeed;
use crate::tokenizer::Tokenizer;

pub struct EvalOutcome {
    pub results: ResultsFile,
    pub results_path: Option<PathBuf>,
    pub table: String,
    pub stats: crate::infer::lm::ScoringStats,
    pub seconds: f64,
    /// Opening the inference session (weights to the device included), and answering the
    /// loglikelihood requests: the two costs a benchmark wants apart.
    pub session_seconds: f64,
    pub scoring_seconds: f64,
}

/// One evaluation of the prepared requests: the graph inputs to feed (a sweep's coefficient),
/// its answers cache, where results are written, and the sweep point it records.
struct Evaluation {
    feeds: Vec<ScalarFeed>,
    cache: ResultCache,
    output_path: Option<PathBuf>,
    sweep: Option<SweepValue>,
}

impl Evaluation {
    /// Checks the output path and opens the cache before anything is scored: a bad path must
    /// not cost the hours of scoring before it.
    fn open(
        model_path: &Path,
        options: &EvalOptions,
        prepared: &PreparedEval,
        feeds: Vec<ScalarFeed>,
        cache: Option<&Path>,
        output_path: Option<PathBuf>,
    ) -> Result<Self> {
        if let Some(out) = &output_path {
            output::check(
                out,
                &model_path.display().to_string(),
                &prepared.inputs,
                options.force,
            )?;
            // The cache may not exist yet, so identity cannot tell; the names can.
            if let Some(cache) = cache
                && std::path::absolute(cache).ok() == std::path::absolute(out).ok()
            {
                bail!(
                    "--cache and --output-path are the same file '{}'; give each its own",
                    out.display()
                );
            }
        }
        let cache = match (cache, &prepared.identity) {
            (Some(path), Some(identity)) => {
                let mut key = identity.clone();
                key.insert(
                    "inputs".into(),
                    feeds
                        .iter()
                        .map(|f| json!({"name": f.name, "value": f.value, "dtype": format!("{:?}", f.dtype)}))
                        .collect(),
                );
                ResultCache::open(path, &CacheKey(key), &prepared.inputs)?
            }
            _ => ResultCache::none(),
        };
        Ok(Self {
            feeds,
            cache,
            output_path,
            sweep: None,
        })
    }
}

/// Evaluates `model_path` on `options.tasks` as lm-eval would.
pub fn evaluate(model_path: &Path, options: &EvalOptions) -> Result<EvalOutcome> {
    let start = Instant::now();
    crate::infer::runtime::init_in_background(options.session.ort_lib.as_deref());
    let prepared = PreparedEval::new(model_path, options)?;
    let mut evaluation = Evaluation::open(
        model_path,
        options,
        &prepared,
        Vec::new(),
        options.cache.as_deref(),
        options.output_path.clone(),
    )?;
    let mut run = Run {
        model_path,
        options,
        prepared: &prepared,
        sessions: &mut Sessions::default(),
    };
    run.evaluate(&mut evaluation, start)
}

/// One point of a coefficient sweep.
pub struct SweepPoint {
    pub value: f64,
    pub outcome: EvalOutcome,
}

/// Evaluates a `--sweepable` steered model once per value of the coefficient input `input`,
/// in one session: the requests are built once, the model is opened once, and each value is
/// fed as the input's value. Results go to `<output>/sweep_<input>_<value>/`, answers to a
/// cache file per value (`<cache stem>.<input>=<value>.<ext>`).
pub fn evaluate_sweep(
    model_path: &Path,
    options: &EvalOptions,
    input: &crate::contract::sweep::CoefficientInput,
    values: &[f64],
) -> Result<Vec<SweepPoint>> {
    crate::infer::runtime::init_in_background(options.session.ort_lib.as_deref());
    let prepared = PreparedEval::new(model_path, options)?;
    // Every point's output path and cache are checked before the first is scored.
    let mut evaluations = Vec::with_capacity(values.len());
    for &value in values {
        let label = format!("{}={value}", input.input);
        let feeds = vec![ScalarFeed {
            name: input.input.clone(),
            value,
            dtype: input.dtype,
        }];
        let cache = options.cache.as_deref().map(|c| suffixed(c, &label));
        let output_path = options
            .output_path
            .as_ref()
            .map(|o| o.join(format!("sweep_{}_{value}", input.input)));
        let mut evaluation = Evaluation::open(
            model_path,
            options,
            &prepared,
            feeds,
            cache.as_deref(),
            output_path,
        )
        .with_context(|| format!("sweep point {label}"))?;
        evaluation.sweep = Some(SweepValue {
            input: input.input.clone(),
            value,
        });
        evaluations.push((value, label, evaluation));
    }
    let fanning = Instant::now();
    let mut scored: Vec<Option<ScoringReport>> = vec![None; evaluations.len()];
    if options.fan_out && evaluations.len() > 1 {
        let mut points: Vec<(&[ScalarFeed], &mut ResultCache)> = evaluations
            .iter_mut()
            .map(|(_, _, e)| (e.feeds.as_slice(), &mut e.cache))
            .collect();
        if let Some(reports) =
            answers::score_missing_fanned_out(model_path, options, &prepared, &input.input, &mut points)?
        {
            scored = reports.into_iter().map(Some).collect();
        }
    }
    let mut generated: Vec<Option<Generations>> = vec![None; evaluations.len()];
    if options.fan_out
        && evaluations.len() > 1
        && let Some(made) =
            answers::generate_all_fanned_out(model_path, options, &prepared, &input.input, values)?
    {
        generated = made.into_iter().map(Some).collect();
    }
    let share = fanning.elapsed() / u32::try_from(evaluations.len()).unwrap_or(u32::MAX).max(1);
    let mut run = Run {
        model_path,
        options,
        prepared: &prepared,
        sessions: &mut Sessions::default(),
    };
    let mut points = Vec::with_capacity(values.len());
    for (((value, label, mut evaluation), scored), generated) in
        evaluations.into_iter().zip(scored).zip(generated)
    {
        // A fanned-out point was scored or generated with the others: its share of that time is its own.
        let now = Instant::now();
        let start = if scored.is_some() || generated.is_some() {
            now.checked_sub(share).unwrap_or(now)
        } else {
            now
        };
        eprintln!("sweep: {label}");
        let outcome = run
            .evaluate_scored(&mut evaluation, start, scored, generated)
            .with_context(|| format!("sweep point {label}"))?;
        points.push(SweepPoint { value, outcome });
    }
    Ok(points)
}

/// `answers.jsonl` -> `answers.<label>.jsonl`.
fn suffixed(path: &Path, label: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{label}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{label}"),
    };
    path.with_file_name(name)
}

/// One pass's results file (without its run information yet), its sample lines per task, and
/// the tasks' `task_hashes`.
struct TaskResults {
    file: ResultsFile,
    samples: Vec<(String, Vec<Value>)>,
    task_hashes: IndexMap<String, String>,
    parts: Vec<TaskPart>,
}

/// What every pass of one command shares: the model, the options, the prepared requests and the
/// sessions opened so far.
struct Run<'a> {
    model_path: &'a Path,
    options: &'a EvalOptions,
    prepared: &'a PreparedEval,
    sessions: &'a mut Sessions,
}

impl Run<'_> {
    /// One pass: answer, score, pool, write.
    fn evaluate(&mut self, evaluation: &mut Evaluation, start: Instant) -> Result<EvalOutcome> {
        self.evaluate_scored(evaluation, start, None, None)
    }

    /// [`Run::evaluate`], the loglikelihoods already in the cache when `scored` says what they
    /// cost, and the generations already made when `generated` has them.
    fn evaluate_scored(
        &mut self,
        evaluation: &mut Evaluation,
        start: Instant,
        scored: Option<ScoringReport>,
        generated: Option<Generations>,
    ) -> Result<EvalOutcome> {
        let (model_path, options, prepared) = (self.model_path, self.options, self.prepared);
        let scoring = match scored {
            Some(report) => report,
            None => answers::score_missing(
                model_path,
                options,
                prepared,
                self.sessions,
                &evaluation.feeds,
                &mut evaluation.cache,
            )?,
        };
        let generations = match generated {
            Some(generations) => generations,
            None => answers::generate_all(model_path, options, prepared, self.sessions, &evaluation.feeds)?,
        };
        let TaskResults {
            mut file,
            samples,
            task_hashes,
            parts,
        } = self.task_results(&evaluation.cache, &generations)?;
        let seconds = start.elapsed().as_secs_f64();
        let sweep = evaluation.sweep.take();
        let run = self.run_info(&scoring, task_hashes, sweep.clone(), seconds);
        file.run = match serde_json::to_value(run)? {
            Value::Object(map) => map,
            _ => unreachable!("RunInfo serializes to an object"),
        };
        let table = super::table::render(&file);
        let model_name = model_path.display().to_string();
        let results_path = match &evaluation.output_path {
            Some(path) => {
                let written = output::write(
                    path,
                    &model_name,
                    &file,
                    &samples,
                    &prepared.inputs,
                    options.force,
                )?;
                // Written last: a shard whose record exists is complete.
                if let Some(shard) = options.shard {
                    let record = self.shard_record(shard, parts, sweep.as_ref(), &written)?;
                    record.write_beside(&written, &prepared.inputs)?;
                }
                Some(written.results)
            }
            None => None,
        };
        Ok(EvalOutcome {
            results: file,
            results_path,
            table,
            stats: scoring.stats,
            seconds,
            session_seconds: scoring.session_seconds,
            scoring_seconds: scoring.scoring_seconds,
        })
    }

    /// Every task's scores, config, version, n-shot and sample counts, then the groups'; and the
    /// sample lines per task (with `--log-samples`).
    fn task_results(&self, cache: &ResultCache, generations: &Generations) -> Result<TaskResults> {
        let mut parts = Vec::new();
        let mut samples = Vec::new();
        for (task, documents) in &self.prepared.tasks {
            let mut output = TaskOutput::of(task, documents, &cache.answers, generations)?;
            if self.options.log_samples {
                samples.push((task.name.clone(), std::mem::take(&mut output.samples)));
            }
            parts.push(TaskPart {
                label: TaskLabel::of(task),
                output,
                documents: documents.len(),
                original: task.eval_docs.len(),
                config: super::dump_config::dump_config(task, self.model_path),
                version: task.version(),
                n_shot: json!(task.num_fewshot),
                higher_is_better: task
                    .metrics
                    .iter()
                    .map(|m| (m.name.clone(), m.higher_is_better))
                    .collect(),
            });
        }
        Ok(TaskResults {
            file: assemble::results_file(&parts, &self.prepared.roots),
            task_hashes: assemble::task_hashes(&samples),
            samples,
            parts,
        })
    }

    /// What a merge needs of this shard's pass: the run's identity, the task tree, every
    /// document's metric values, the files written.
    fn shard_record(
        &self,
        shard: Shard,
        parts: Vec<TaskPart>,
        sweep: Option<&SweepValue>,
        written: &output::Written,
    ) -> Result<ShardRecord> {
        let prepared = self.prepared;
        let mut identity = prepared
            .shard_identity
            .clone()
            .expect("prepared with a shard, so with its identity");
        identity.sweep = sweep.map(serde_json::to_value).transpose()?;
        let file_name = |p: &Path| p.file_name().unwrap_or_default().to_string_lossy().into_owned();
        let mut tasks = Vec::with_capacity(parts.len());
        for (i, (part, (task, documents))) in parts.into_iter().zip(&prepared.tasks).enumerate() {
            let samples_file = written
                .samples
                .iter()
                .find(|(name, _)| *name == task.name)
                .map(|(_, path)| file_name(path));
            tasks.push(TaskShard {
                label: part.label,
                documents: prepared.evaluated_documents[i],
                doc_ids: documents.iter().map(|d| d.doc_id).collect(),
                items: part.output.items,
                filters: super::task_output::filter_names(task)?,
                samples_file,
            });
        }
        Ok(ShardRecord {
            sae_onnx_shard_record: super::shard::RECORD_FORMAT,
            shard,
            identity,
            roots: prepared.roots.clone(),
            tasks,
            results_file: file_name(&written.results),
        })
    }

    /// The run's settings and provenance (lm-eval's `config` and `EvaluationTracker` fields).
    fn run_info(
        &self,
        scoring: &ScoringReport,
        task_hashes: IndexMap<String, String>,
        sweep: Option<SweepValue>,
        seconds: f64,
    ) -> RunInfo {
        let (options, model, tokenizer) = (self.options, &self.prepared.model, &self.prepared.tokenizer);
        let model_name = self.model_path.display().to_string();
        let device = options.session.device.to_string();
        let token = |id: Option<u32>| id.map(|i| [tokenizer_token(tokenizer, i), i.to_string()]);
        RunInfo {
            config: RunConfig {
                model: "sae-onnx",
                model_args: ModelArgs {
                    model: model_name.clone(),
                    device: device.clone(),
                },
                model_num_parameters: None,
                model_dtype: model.metadata(meta::DTYPE).map(str::to_owned),
                model_revision: model.metadata(meta::REVISION).unwrap_or("main").to_owned(),
                model_sha: "",
                batch_size: match options.batch_size {
                    BatchSize::Fixed(n) => n.to_string(),
                    BatchSize::Auto => "auto".to_owned(),
                },
                batch_sizes: scoring.batch_sizes.clone(),
                device,
                use_cache: options.cache.as_ref().map(|p| p.display().to_string()),
                limit: options.limit,
                bootstrap_iters: 100_000,
                gen_kwargs: serde_json::Map::new(),
                random_seed: 0,
                numpy_seed: 1234,
                torch_seed: 1234,
                fewshot_seed: options.fewshot_seed,
            },
            transformers_version: None,
            lm_eval_version: LM_EVAL_VERSION,
            sae_onnx_version: env!("CARGO_PKG_VERSION"),
            tokenizer_pad_token: token(Some(0)),
            tokenizer_eos_token: token(tokenizer.eos_id),
            tokenizer_bos_token: token(tokenizer.bos_id),
            eot_token_id: tokenizer.eos_id,
            max_length: self.prepared.max_length,
            task_hashes,
            model_source: "sae-onnx",
            model_name_sanitized: sanitize_model_name(&model_name),
            model_name,
            system_instruction: None,
            system_instruction_sha: None,
            fewshot_as_multiturn: None,
            chat_template: None,
            chat_template_sha: None,
            sweep: sweep.map(|sweep| SweepRecord { sweep }),
            steering: model
                .metadata("sae_onnx.steering")
                .map(|s| serde_json::from_str(s).unwrap_or(json!(s))),
            total_evaluation_time_seconds: seconds.to_string(),
        }
    }
}

fn tokenizer_token(tokenizer: &Tokenizer, id: u32) -> String {
    tokenizer.decode_token(id).unwrap_or_default()
}
