//! `sae-onnx compare`: is a steered model's score really different from the baseline's?
//!
//! Reads two or more runs (lm-eval's results JSON and `--log-samples` files, as `sae-onnx eval`
//! and lm-eval write them), and for every task, group and metric gives both scores, their
//! difference and a paired test on the documents both runs scored: the exact McNemar test for
//! 0/1 metrics (acc, acc_norm, exact_match), a seeded paired bootstrap for the rest
//! (perplexities). The first run is the baseline; each other run is compared with it. For a
//! coefficient sweep, [`sweep_figure`] draws the metric against the coefficient.

pub mod load;
mod pairing;
pub mod plot;
mod report;
pub mod stats;
mod sweep;
mod table;

pub use load::Run;
pub use report::{Comparison, Report, Row, RunInfo, Test, compare};
pub use sweep::{SweepValues, sweep_figure, sweep_values};

/// What to compare and how.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Bootstrap resamples.
    pub resamples: usize,
    /// Seed of the bootstrap's `random.Random`.
    pub seed: u64,
    /// Significance level; the bootstrap interval is the `1 - alpha` one.
    pub alpha: f64,
    /// Only these tasks or groups (and a group's subtasks); empty: all.
    pub tasks: Vec<String>,
    /// Only these metrics; empty: all.
    pub metrics: Vec<String>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            resamples: 10_000,
            seed: 1234,
            alpha: 0.05,
            tasks: Vec::new(),
            metrics: Vec::new(),
        }
    }
}
