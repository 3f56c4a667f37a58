//! The fuzz loop: mutate a seed, write it where the parser will read it, run the parser, and hold
//! it to four promises: no panic, no hang, no allocation beyond a bound, and an error that names
//! the input. Also checks that reading never modified the input.
//!
//! The allocator counts live bytes for the whole process; targets run one at a time (a lock), so
//! the peak of a case is the parser's. An allocation that would cross the hard limit writes the
//! case to `target/fuzz-failures/` and aborts: the process would be killed for it anyway.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::mutate::{Rng, mutate};

/// Live bytes past which a case counts as unbounded allocation.
pub const ALLOC_LIMIT: usize = 512 << 20;
/// Wall time past which a case counts as a hang; the watchdog aborts at twice that.
pub const HANG_SECONDS: f64 = 10.0;

pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static ARMED: AtomicBool = AtomicBool::new(false);
/// The current case, saved (without allocating) if the allocator or the watchdog must abort.
static CASE_FILE: Mutex<Option<(CString, Vec<u8>)>> = Mutex::new(None);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !self.admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && !self.admit(new_size - layout.size()) {
            return std::ptr::null_mut();
        }
        let out = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size < layout.size() {
            LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
        } else if out.is_null() {
            LIVE.fetch_sub(new_size - layout.size(), Ordering::Relaxed);
        }
        out
    }
}

impl Counting {
    fn admit(&self, size: usize) -> bool {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        PEAK.fetch_max(live, Ordering::Relaxed);
        if ARMED.load(Ordering::Relaxed) && live > 2 * ALLOC_LIMIT {
            LIVE.fetch_sub(size, Ordering::Relaxed);
            save_case_and_abort(b"fuzz: allocation past twice the bound; case saved, aborting\n");
        }
        true
    }
}

/// Writes the current case with raw system calls (the allocator cannot allocate here).
fn save_case_and_abort(message: &[u8]) -> ! {
    ARMED.store(false, Ordering::Relaxed);
    // SAFETY: plain writes of owned buffers to a freshly opened descriptor.
    unsafe {
        libc::write(2, message.as_ptr().cast(), message.len());
        if let Ok(guard) = CASE_FILE.try_lock()
            && let Some((path, bytes)) = guard.as_ref()
        {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            );
            if fd >= 0 {
                libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                libc::close(fd);
            }
        }
    }
    std::process::abort()
}

/// Where failing cases are kept: `target/fuzz-failures/`.
pub fn failures_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("fuzz-failures");
    std::fs::create_dir_all(&dir).expect("create target/fuzz-failures");
    dir
}

/// How much fuzzing: `SAE_ONNX_FUZZ_CASES` cases per target (default 300) within
/// `SAE_ONNX_FUZZ_SECONDS` per target (default 20), from `SAE_ONNX_FUZZ_SEED` (default 1).
/// `SAE_ONNX_FUZZ_VERBOSE=1` prints every refusal.
pub struct Budget {
    pub cases: usize,
    pub seconds: f64,
    pub seed: u64,
}

impl Budget {
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<f64>().ok());
        Self {
            cases: var("SAE_ONNX_FUZZ_CASES").map_or(300, |v| v as usize),
            seconds: var("SAE_ONNX_FUZZ_SECONDS").unwrap_or(20.0),
            seed: var("SAE_ONNX_FUZZ_SEED").map_or(1, |v| v as u64),
        }
    }
}

/// A structured mutation of a seed.
pub type Mutator = fn(&[u8], &mut Rng) -> Vec<u8>;
/// Runs the parser on a case: `Ok` when accepted, `Err(message)` when refused.
pub type Parse<'a> = Box<dyn Fn(&Path) -> Result<(), String> + 'a>;

/// What one target fuzzes: seed files, how to mutate them, and how to run the parser on a case.
pub struct Target<'a> {
    pub name: &'static str,
    pub seeds: Vec<Vec<u8>>,
    /// Token-level text mutations as well as byte-level ones.
    pub text: bool,
    /// For binary formats: the length of the header region to bias mutations towards (0: none).
    pub hot: fn(&[u8]) -> usize,
    /// A structured mutation instead of the generic ones.
    pub mutator: Option<Mutator>,
    /// Where each case is written; the error of a refused case must contain its file name.
    pub case_path: PathBuf,
    /// Runs the parser on the case at `case_path`.
    pub run: Parse<'a>,
}

impl<'a> Target<'a> {
    /// A target of byte-level mutations, without a header bias.
    pub fn new(
        name: &'static str,
        seeds: Vec<Vec<u8>>,
        case_path: PathBuf,
        run: impl Fn(&Path) -> Result<(), String> + 'a,
    ) -> Self {
        Self {
            name,
            seeds,
            text: false,
            hot: |_| 0,
            mutator: None,
            case_path,
            run: Box::new(run),
        }
    }

    /// Adds token-level text mutations.
    pub fn text(self) -> Self {
        self.text_if(true)
    }

    pub fn text_if(mut self, text: bool) -> Self {
        self.text = text;
        self
    }

    /// Biases mutations towards the header region `hot` measures.
    pub fn hot(mut self, hot: fn(&[u8]) -> usize) -> Self {
        self.hot = hot;
        self
    }

    /// Mutates with `mutator` only.
    pub fn mutator(mut self, mutator: Mutator) -> Self {
        self.mutator = Some(mutator);
        self
    }

    /// Runs the target within the environment's budget and fails the test on any broken promise.
    pub fn fuzz(self) {
        run(&self, &Budget::from_env()).assert_clean();
    }
}

#[derive(Debug, Default)]
pub struct Summary {
    pub name: &'static str,
    pub cases: usize,
    pub accepted: usize,
    pub refused: usize,
    pub panics: Vec<String>,
    pub hangs: Vec<String>,
    pub over_alloc: Vec<String>,
    pub unnamed_errors: Vec<String>,
    pub modified_inputs: usize,
    pub slowest: Duration,
    pub peak_bytes: usize,
}

static SERIAL: Mutex<()> = Mutex::new(());
static CASE_STARTED_MS: AtomicU64 = AtomicU64::new(0);

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn start_watchdog() {
    static STARTED: AtomicBool = AtomicBool::new(false);
    if STARTED.swap(true, Ordering::SeqCst) {
        return;
    }
    std::thread::spawn(|| {
        loop {
            std::thread::sleep(Duration::from_millis(200));
            let started = CASE_STARTED_MS.load(Ordering::Relaxed);
            if started != 0 && now_ms().saturating_sub(started) as f64 > 2000.0 * HANG_SECONDS {
                save_case_and_abort(b"fuzz: a case ran past twice the hang bound; case saved, aborting\n");
            }
        }
    });
}

/// Runs `target` within `budget` and returns what it found; the caller asserts on it.
pub fn run(target: &Target, budget: &Budget) -> Summary {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    start_watchdog();
    let mut rng = Rng::new(budget.seed ^ fnv(target.name.as_bytes()));
    let mut summary = Summary {
        name: target.name,
        ..Default::default()
    };
    let file_name = target
        .case_path
        .file_name()
        .expect("case path has a file name")
        .to_string_lossy()
        .into_owned();
    let saved = failures_dir().join(format!("{}.case", target.name));
    let begin = Instant::now();
    let max_len = target.seeds.iter().map(Vec::len).max().unwrap_or(0) * 2 + 4096;
    while summary.cases < budget.cases && begin.elapsed().as_secs_f64() < budget.seconds {
        let seed = rng.pick(&target.seeds);
        let hot = (target.hot)(seed);
        let case = match target.mutator {
            Some(mutator) => mutator(seed, &mut rng),
            None => mutate(seed, &target.seeds, &mut rng, target.text, hot, max_len),
        };
        std::fs::write(&target.case_path, &case).expect("write the fuzz case");
        *CASE_FILE.lock().unwrap_or_else(|e| e.into_inner()) = Some((
            CString::new(saved.to_string_lossy().as_bytes()).expect("no NUL in path"),
            case.clone(),
        ));
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        ARMED.store(true, Ordering::Relaxed);
        CASE_STARTED_MS.store(now_ms(), Ordering::Relaxed);
        let started = Instant::now();
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| (target.run)(&target.case_path)));
        let elapsed = started.elapsed();
        CASE_STARTED_MS.store(0, Ordering::Relaxed);
        ARMED.store(false, Ordering::Relaxed);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        summary.cases += 1;
        summary.slowest = summary.slowest.max(elapsed);
        summary.peak_bytes = summary.peak_bytes.max(peak);
        let keep = |kind: &str, list: &mut Vec<String>, detail: String| {
            let path = failures_dir().join(format!("{}-{kind}-{}.case", target.name, list.len()));
            std::fs::write(&path, &case).expect("save a failing case");
            list.push(format!("{}: {detail}", path.display()));
        };
        match outcome {
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                keep("panic", &mut summary.panics, message);
            }
            Ok(Ok(())) => summary.accepted += 1,
            Ok(Err(message)) => {
                summary.refused += 1;
                if std::env::var_os("SAE_ONNX_FUZZ_VERBOSE").is_some() {
                    eprintln!("{}: refused: {message}", target.name);
                }
                if !message.contains(&file_name) {
                    keep("unnamed", &mut summary.unnamed_errors, message);
                }
            }
        }
        if elapsed.as_secs_f64() > HANG_SECONDS {
            keep("hang", &mut summary.hangs, format!("{elapsed:?}"));
        }
        if peak > ALLOC_LIMIT {
            keep("alloc", &mut summary.over_alloc, format!("{} MiB", peak >> 20));
        }
        if std::fs::read(&target.case_path).ok().as_deref() != Some(&case[..]) {
            summary.modified_inputs += 1;
        }
    }
    *CASE_FILE.lock().unwrap_or_else(|e| e.into_inner()) = None;
    summary
}

impl Summary {
    /// One line for the log (RELIABILITY.md records these), then the failures, if any.
    pub fn report(&self) -> String {
        let mut out = format!(
            "fuzz {}: {} cases ({} accepted, {} refused), panics {}, hangs {}, over {} MiB {}, unnamed errors {}, inputs modified {}, slowest {:.1} ms, peak {:.1} MiB",
            self.name,
            self.cases,
            self.accepted,
            self.refused,
            self.panics.len(),
            self.hangs.len(),
            ALLOC_LIMIT >> 20,
            self.over_alloc.len(),
            self.unnamed_errors.len(),
            self.modified_inputs,
            self.slowest.as_secs_f64() * 1e3,
            self.peak_bytes as f64 / (1 << 20) as f64
        );
        for (kind, list) in [
            ("panic", &self.panics),
            ("hang", &self.hangs),
            ("allocation", &self.over_alloc),
            ("error without the input's name", &self.unnamed_errors),
        ] {
            for item in list.iter().take(5) {
                out.push_str(&format!("\n  {kind}: {item}"));
            }
        }
        out
    }

    pub fn assert_clean(&self) {
        let report = self.report();
        println!("{report}");
        assert!(
            self.panics.is_empty()
                && self.hangs.is_empty()
                && self.over_alloc.is_empty()
                && self.unnamed_errors.is_empty()
                && self.modified_inputs == 0,
            "{report}"
        );
        assert!(self.cases > 0, "no case ran for {}", self.name);
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x1000_0000_01b3)
    })
}
