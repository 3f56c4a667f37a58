//! Running a worker's units. Each unit is evaluated into a temporary folder beside its final
//! one and renamed into place whole, so a unit folder that exists is complete: a rerun skips it
//! and redoes only what a preemption or a node failure lost. A lock file (refreshed while the
//! unit runs, stale after [`LOCK_STALE`] without a refresh) keeps two workers from running the
//! same unit at once; should both run it anyway, the rename lets one win and the other's copy is
//! discarded, so a unit is never a mix of two runs.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};

use super::grid::Grid;
use super::units::{self, Unit, Worker};
use crate::contract::sweep::{CoefficientInput, coefficient_inputs};
use crate::eval::evaluator;
use crate::eval::options::{BatchSize, EvalOptions};
use crate::infer::runtime::SessionOptions;
use crate::steer::patch::{PatchOptions, PatchOutput, patch_with_output};

/// A lock not refreshed for this long belongs to a worker that is gone.
pub const LOCK_STALE: Duration = Duration::from_secs(300);
const LOCK_REFRESH: Duration = Duration::from_secs(30);
/// How long a worker waits for another to finish patching a plan.
const PATCH_WAIT: Duration = Duration::from_secs(3600);

/// What a worker did with each of its units.
#[derive(Debug, Default)]
pub struct WorkerReport {
    pub ran: Vec<String>,
    pub already_done: Vec<String>,
    /// Units another worker holds (id, holder).
    pub held: Vec<(String, String)>,
    /// Units another worker finished while this one ran them too.
    pub lost_race: Vec<String>,
}

/// Runs worker `worker`'s units of `grid` that are not done.
pub fn run_worker(
    grid: &Grid,
    worker: Worker,
    ort_lib: Option<PathBuf>,
    progress: bool,
) -> Result<WorkerReport> {
    super::grid::output_dir(grid)?;
    let all = units::expand(grid);
    let mut report = WorkerReport::default();
    for unit in worker.assigned(&all) {
        let dir = units::unit_dir(grid, unit);
        if dir.is_dir() {
            report.already_done.push(unit.id.clone());
            continue;
        }
        let parent = crate::files::parent_dir(&dir).to_path_buf();
        fs::create_dir_all(&parent).with_context(|| format!("cannot create '{}'", parent.display()))?;
        let Some(lock) = Lock::take(&lock_path(&dir))? else {
            let holder = fs::read_to_string(lock_path(&dir)).unwrap_or_default();
            report.held.push((unit.id.clone(), holder.trim().to_owned()));
            continue;
        };
        // Finished by another worker between the check and the lock.
        if dir.is_dir() {
            report.already_done.push(unit.id.clone());
            continue;
        }
        eprintln!("sweep: unit {}", unit.id);
        let (model, input) = steered_model(grid, unit)?;
        let finished = run_unit(grid, unit, &model, &input, &dir, ort_lib.clone(), progress)
            .with_context(|| format!("unit {}", unit.id))?;
        drop(lock);
        if finished {
            report.ran.push(unit.id.clone());
        } else {
            report.lost_race.push(unit.id.clone());
        }
    }
    Ok(report)
}

fn lock_path(unit_dir: &Path) -> PathBuf {
    let mut name = unit_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    unit_dir.with_file_name(name)
}

/// Whether a unit is being run (its lock is fresh): who holds it.
pub fn holder(unit_dir: &Path) -> Option<String> {
    let path = lock_path(unit_dir);
    let fresh = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .is_some_and(|age| age < LOCK_STALE);
    fresh.then(|| fs::read_to_string(&path).unwrap_or_default().trim().to_owned())
}

/// Evaluates one unit into a temporary folder and renames it into `dir`; `false` if another
/// worker's copy got there first (ours is then removed).
fn run_unit(
    grid: &Grid,
    unit: &Unit,
    model: &Path,
    input: &CoefficientInput,
    dir: &Path,
    ort_lib: Option<PathBuf>,
    progress: bool,
) -> Result<bool> {
    let parent = crate::files::parent_dir(dir);
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let temp = crate::files::temp_dir(parent, &name)?;
    let e = &grid.eval;
    let options = EvalOptions {
        tasks: vec![grid.tasks[unit.task].name.clone()],
        num_fewshot: e.num_fewshot,
        limit: e.limit,
        batch_size: BatchSize::Fixed(e.batch_size),
        session: SessionOptions {
            device: e.device.parse()?,
            ort_lib,
            ..SessionOptions::default()
        },
        output_path: Some(temp.path().to_path_buf()),
        log_samples: e.log_samples,
        fewshot_seed: e.seed,
        include_paths: e.include_paths.clone(),
        max_length: e.max_length,
        progress,
        shard: unit.shard,
        ..EvalOptions::default()
    };
    evaluator::evaluate_sweep(model, &options, input, &[unit.coefficient])?;
    let kept = temp.keep();
    match fs::rename(&kept, dir) {
        Ok(()) => Ok(true),
        Err(_) if dir.is_dir() => {
            let _ = fs::remove_dir_all(&kept);
            Ok(false)
        }
        Err(err) => {
            Err(err).with_context(|| format!("cannot rename '{}' to '{}'", kept.display(), dir.display()))
        }
    }
}

/// The plan's `--sweepable` patch of the unit's model, made once (beside the model, so the
/// weights are shared; named by the plan's content, so grids never clash), and its
/// coefficient input.
pub fn steered_model(grid: &Grid, unit: &Unit) -> Result<(PathBuf, CoefficientInput)> {
    let (base, plan) = (&grid.models[unit.model], &grid.plans[unit.plan]);
    let csv = crate::digest::sha256_file(&plan.csv, "steering plan")?;
    let path = base.path.with_file_name(format!(
        "{}.{}.{}.sweepable.onnx",
        base.label,
        plan.name,
        &csv[..12]
    ));
    let deadline = Instant::now() + PATCH_WAIT;
    while !path.is_file() {
        match Lock::take(&lock_path(&path))? {
            Some(_lock) if !path.is_file() => {
                eprintln!(
                    "sweep: patching '{}' with plan '{}'",
                    base.path.display(),
                    plan.name
                );
                patch_with_output(
                    &PatchOptions {
                        csv: plan.csv.clone(),
                        output: path.clone(),
                        model: Some(base.path.display().to_string()),
                        replace: false,
                        progress: false,
                    },
                    &PatchOutput {
                        sweepable: true,
                        force: false,
                    },
                )
                .with_context(|| format!("plan '{}'", plan.name))?;
            }
            Some(_) => {}
            None if Instant::now() > deadline => bail!(
                "plan '{}': another worker has been patching '{}' for over an hour; remove '{}' if it is gone",
                plan.name,
                path.display(),
                lock_path(&path).display()
            ),
            None => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    let model = crate::onnx::Model::load(&path)?;
    let inputs = coefficient_inputs(&model.proto)?;
    let input = match &plan.input {
        Some(name) => inputs
            .iter()
            .find(|i| &i.input == name)
            .cloned()
            .with_context(|| {
                format!(
                    "{}: plan '{}': its patch has no coefficient input '{name}'; it has: {}",
                    grid.path.display(),
                    plan.name,
                    names(&inputs)
                )
            })?,
        None if inputs.len() == 1 => inputs[0].clone(),
        None => bail!(
            "{}: plan '{}' has {} coefficient inputs ({}): name the one its coefficients set with `input:`",
            grid.path.display(),
            plan.name,
            inputs.len(),
            names(&inputs)
        ),
    };
    Ok((path, input))
}

fn names(inputs: &[CoefficientInput]) -> String {
    inputs
        .iter()
        .map(|i| i.input.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// An exclusive lock file (`pid@host`), refreshed in the background while held and removed
/// when dropped. A stale one (not refreshed for [`LOCK_STALE`]) is taken over.
struct Lock {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    refresher: Option<std::thread::JoinHandle<()>>,
}

impl Lock {
    fn take(path: &Path) -> Result<Option<Self>> {
        let owner = format!("{}@{}\n", std::process::id(), crate::files::host_name());
        for _ in 0..2 {
            match fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(mut file) => {
                    use std::io::Write;
                    file.write_all(owner.as_bytes())
                        .with_context(|| format!("cannot write lock '{}'", path.display()))?;
                    return Ok(Some(Self::hold(path)));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let stale = fs::metadata(path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| SystemTime::now().duration_since(t).ok())
                        .is_some_and(|age| age >= LOCK_STALE);
                    if !stale {
                        return Ok(None);
                    }
                    // One taker wins the rename; the others find the lock gone or fresh again.
                    let aside = path.with_extension(format!("stale.{}", std::process::id()));
                    if fs::rename(path, &aside).is_ok() {
                        let _ = fs::remove_file(&aside);
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("cannot create lock '{}'", path.display())),
            }
        }
        Ok(None)
    }

    fn hold(path: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, file) = (stop.clone(), path.to_path_buf());
        let refresher = std::thread::spawn(move || {
            let mut last = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= LOCK_REFRESH {
                    if let Ok(f) = fs::OpenOptions::new().append(true).open(&file) {
                        let _ = f.set_modified(SystemTime::now());
                    }
                    last = Instant::now();
                }
            }
        });
        Self {
            path: path.to_path_buf(),
            stop,
            refresher: Some(refresher),
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.refresher.take() {
            let _ = t.join();
        }
        let _ = fs::remove_file(&self.path);
    }
}
