//! What an evaluation is asked to do: `sae-onnx eval`'s options, as the library takes them.

use std::path::PathBuf;

use super::shard::Shard;
use super::task::FEWSHOT_SEED;
use crate::hub::Hub;
use crate::infer::runtime::SessionOptions;

/// The lm-eval version whose semantics (prompts, metrics, files) this reproduces.
pub const LM_EVAL_VERSION: &str = "0.4.13";

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub tasks: Vec<String>,
    pub num_fewshot: Option<usize>,
    /// An integer count per task, or a fraction of each task below 1.0.
    pub limit: Option<f64>,
    pub batch_size: BatchSize,
    pub session: SessionOptions,
    pub output_path: Option<PathBuf>,
    pub log_samples: bool,
    pub tokenizer: Option<String>,
    pub fewshot_seed: u64,
    pub cache: Option<PathBuf>,
    /// Task folders searched besides the bundled one.
    pub include_paths: Vec<PathBuf>,
    /// Overrides the model's context length.
    pub max_length: Option<usize>,
    pub progress: bool,
    /// Replace an existing `--output-path x.json`.
    pub force: bool,
    /// Score only this slice of every task's documents, and write the record a merge reads.
    pub shard: Option<Shard>,
    /// A sweep's loglikelihoods scored fanned out (`infer::fan_out`) where the graph splits.
    pub fan_out: bool,
    /// Where hub tokenizers and datasets come from (the command's one [`Hub`]).
    pub hub: Hub,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            tasks: Vec::new(),
            num_fewshot: None,
            limit: None,
            batch_size: BatchSize::Fixed(16),
            session: SessionOptions::default(),
            output_path: None,
            log_samples: false,
            tokenizer: None,
            fewshot_seed: FEWSHOT_SEED,
            cache: None,
            include_paths: Vec::new(),
            max_length: None,
            progress: false,
            force: false,
            shard: None,
            fan_out: true,
            hub: Hub::from_env(),
        }
    }
}

/// How many sequences go into one forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Fixed(usize),
    /// The largest that runs at the longest request's length, up to [`AUTO_BATCH_CAP`].
    Auto,
}

/// `--batch-size auto` tries this first, then halves.
pub const AUTO_BATCH_CAP: usize = 64;
