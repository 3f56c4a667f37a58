//! A grid's work units (model × plan × coefficient × task, × document shard when the grid
//! shards), their stable ids and folders, and which worker of N runs which.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, bail};

use super::grid::Grid;
use crate::eval::shard::Shard;

/// One evaluation: a model steered by a plan at a coefficient, on a task (or one shard of it).
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    pub model: usize,
    pub plan: usize,
    pub coefficient: f64,
    pub task: usize,
    pub shard: Option<Shard>,
    /// `<model>/<plan>/c<coefficient>/<task>[/shard<K>of<N>]`: the same for the same grid on
    /// every machine and run, and the unit's folder under `<output>/units/`.
    pub id: String,
}

/// Every unit of `grid`, in a fixed order: task, model, plan, coefficient, shard. Task first,
/// because tasks differ most in cost (MMLU 5-shot against WMDP 0-shot: ~10x): dealt round-robin
/// in this order, each task's units spread over all workers (at most one apart), for any N.
pub fn expand(grid: &Grid) -> Vec<Unit> {
    let shards: Vec<Option<Shard>> = match grid.shards {
        1 => vec![None],
        count => (0..count).map(|index| Some(Shard { index, count })).collect(),
    };
    let mut units = Vec::new();
    for (t, task) in grid.tasks.iter().enumerate() {
        for (m, model) in grid.models.iter().enumerate() {
            for (p, plan) in grid.plans.iter().enumerate() {
                for &coefficient in &plan.coefficients {
                    let run = format!("{}/{}/c{coefficient}/{}", model.label, plan.name, task.label);
                    for &shard in &shards {
                        let id = match shard {
                            Some(s) => format!("{run}/shard{}of{}", s.index, s.count),
                            None => run.clone(),
                        };
                        units.push(Unit {
                            model: m,
                            plan: p,
                            coefficient,
                            task: t,
                            shard,
                            id,
                        });
                    }
                }
            }
        }
    }
    units
}

/// Where a unit's outputs live once complete (renamed there whole).
pub fn unit_dir(grid: &Grid, unit: &Unit) -> PathBuf {
    grid.output.join("units").join(&unit.id)
}

/// Worker `index` of `count`: runs the units whose position in [`expand`]'s order is
/// `index` modulo `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worker {
    pub index: usize,
    pub count: usize,
}

impl Worker {
    pub fn assigned<'a, T>(&self, units: &'a [T]) -> Vec<&'a T> {
        units
            .iter()
            .enumerate()
            .filter(|(i, _)| i % self.count == self.index)
            .map(|(_, u)| u)
            .collect()
    }
}

impl fmt::Display for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// `--worker`: `K/N`, or `auto` (from the engine's environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerSpec {
    Fixed(Worker),
    Auto,
}

impl std::str::FromStr for WorkerSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        let shard: Shard = s.parse().map_err(|e: String| {
            format!("{e} (or `auto`: the index and count from Slurm or a Kubernetes Indexed Job)")
        })?;
        Ok(Self::Fixed(Worker {
            index: shard.index,
            count: shard.count,
        }))
    }
}

/// The worker, and a sentence saying where it came from.
pub fn resolve_worker(
    spec: &WorkerSpec,
    workers: Option<usize>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(Worker, String)> {
    let number = |name: &str| -> Result<Option<usize>> {
        match env(name) {
            None => Ok(None),
            Some(v) => match v.trim().parse::<usize>() {
                Ok(n) => Ok(Some(n)),
                Err(_) => bail!(
                    "${name} is '{}', not a whole number",
                    crate::files::printable(&v, 40)
                ),
            },
        }
    };
    let check = |worker: Worker, from: String| -> Result<(Worker, String)> {
        if worker.count == 0 || worker.index >= worker.count {
            bail!(
                "worker index {} out of range for {} workers ({from})",
                worker.index,
                worker.count
            );
        }
        Ok((worker, from))
    };
    match spec {
        WorkerSpec::Fixed(w) => check(*w, format!("--worker {w}")),
        WorkerSpec::Auto => {
            if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
                // An array may start above 0 (--array=1-4): the index counts from its first task.
                let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                let count = match (number("SLURM_ARRAY_TASK_COUNT")?, number("SLURM_ARRAY_TASK_MAX")?) {
                    (Some(count), _) => count,
                    (None, Some(max)) => max + 1 - min,
                    (None, None) => bail!(
                        "--worker auto: $SLURM_ARRAY_TASK_ID is set but neither $SLURM_ARRAY_TASK_COUNT \
                         nor $SLURM_ARRAY_TASK_MAX is: give --worker K/N"
                    ),
                };
                let Some(index) = id.checked_sub(min) else {
                    bail!("$SLURM_ARRAY_TASK_ID {id} is below $SLURM_ARRAY_TASK_MIN {min}");
                };
                return check(
                    Worker { index, count },
                    format!("Slurm array task {id} of {count} (SLURM_ARRAY_TASK_ID)"),
                );
            }
            if let Some(index) = number("JOB_COMPLETION_INDEX")? {
                let Some(count) = workers else {
                    bail!(
                        "--worker auto: a Kubernetes Indexed Job gives $JOB_COMPLETION_INDEX={index} but not \
                         the worker count: pass --workers N (the Job's completions) or set `workers:` in the grid"
                    );
                };
                return check(
                    Worker { index, count },
                    format!("Kubernetes Indexed Job completion {index} of {count} (JOB_COMPLETION_INDEX)"),
                );
            }
            bail!(
                "--worker auto: neither $SLURM_ARRAY_TASK_ID (a Slurm job array) nor $JOB_COMPLETION_INDEX \
                 (a Kubernetes Indexed Job) is set: give --worker K/N"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::grid::{EvalSettings, GridModel, GridTask, Plan};

    /// A grid of `plans` plans × 8 coefficients × tasks `a` and `b`, as `Grid::load` leaves it.
    fn grid(plans: usize) -> Grid {
        Grid {
            path: "grid.yaml".into(),
            models: vec![GridModel {
                label: "m".into(),
                path: "m.onnx".into(),
            }],
            plans: (0..plans)
                .map(|p| Plan {
                    name: format!("f{p}"),
                    csv: "f.csv".into(),
                    coefficients: (0..8).map(f64::from).collect(),
                    input: None,
                })
                .collect(),
            tasks: ["a", "b"]
                .map(|t| GridTask {
                    label: t.into(),
                    name: t.into(),
                })
                .to_vec(),
            eval: EvalSettings {
                num_fewshot: None,
                limit: None,
                batch_size: 16,
                device: "cpu".into(),
                seed: 1234,
                log_samples: true,
                max_length: None,
                include_paths: Vec::new(),
            },
            shards: 1,
            workers: None,
            output: "out".into(),
        }
    }

    #[test]
    fn every_worker_gets_its_share_of_each_task_whatever_n() {
        let units = expand(&grid(100));
        assert_eq!(units.len(), 1600);
        assert_eq!(units[0].id, "m/f0/c0/a");
        for count in [8, 16, 63, 64] {
            for index in 0..count {
                let mine = Worker { index, count }.assigned(&units);
                for task in 0..2 {
                    let n = mine.iter().filter(|u| u.task == task).count();
                    let even = 800 / count;
                    assert!(
                        n == even || n == even + 1,
                        "worker {index}/{count}: {n} units of task {task}"
                    );
                }
            }
        }
    }

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        move |name| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn workers_come_from_slurm_or_kubernetes_and_are_range_checked() {
        let auto = WorkerSpec::Auto;
        let (w, from) = resolve_worker(
            &auto,
            None,
            &env_of(&[("SLURM_ARRAY_TASK_ID", "2"), ("SLURM_ARRAY_TASK_COUNT", "4")]),
        )
        .unwrap();
        assert_eq!((w.index, w.count), (2, 4));
        assert!(from.contains("Slurm"), "{from}");
        // --array=1-4: task 1 is the first worker.
        let (w, _) = resolve_worker(
            &auto,
            None,
            &env_of(&[
                ("SLURM_ARRAY_TASK_ID", "1"),
                ("SLURM_ARRAY_TASK_MIN", "1"),
                ("SLURM_ARRAY_TASK_MAX", "4"),
            ]),
        )
        .unwrap();
        assert_eq!((w.index, w.count), (0, 4));
        let (w, from) = resolve_worker(&auto, Some(3), &env_of(&[("JOB_COMPLETION_INDEX", "1")])).unwrap();
        assert_eq!((w.index, w.count), (1, 3));
        assert!(from.contains("Kubernetes"), "{from}");
        let err = resolve_worker(&auto, None, &env_of(&[("JOB_COMPLETION_INDEX", "1")])).unwrap_err();
        assert!(err.to_string().contains("--workers N"), "{err}");
        let err = resolve_worker(&auto, Some(2), &env_of(&[("JOB_COMPLETION_INDEX", "5")])).unwrap_err();
        assert!(err.to_string().contains("out of range"), "{err}");
        assert!(resolve_worker(&auto, None, &env_of(&[])).is_err());
        assert!("4/4".parse::<WorkerSpec>().unwrap_err().contains("not below"));
    }

    #[test]
    fn workers_partition_the_units_round_robin() {
        let units: Vec<usize> = (0..10).collect();
        let one = Worker { index: 1, count: 3 };
        assert_eq!(one.assigned(&units), vec![&1, &4, &7]);
        let mut seen: Vec<usize> = (0..3)
            .flat_map(|index| Worker { index, count: 3 }.assigned(&units))
            .copied()
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, units);
    }
}
