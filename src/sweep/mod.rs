//! `sae-onnx sweep GRID.yaml`: a steering study (models × plans × coefficients × tasks, optionally
//! × document shards) as work units that Slurm job arrays or Kubernetes Indexed Jobs run, each
//! worker its share (`--worker K/N|auto`); `--status` and `--report` over the shared output
//! folder. No scheduler of our own: the engine starts the workers, the units' folders say what
//! is done.

pub mod grid;
pub mod report;
pub mod run;
pub mod units;
