//! ONNX Runtime: finding the shared library, one environment per process, and sessions on the CPU
//! or CUDA execution provider. CUDA never falls back to the CPU silently.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use anyhow::{Context, Result, anyhow, bail};
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};

use crate::infer::session_cache;
pub use crate::infer::session_cache::SessionOrigin;
use crate::onnx::{DataType, Model};

/// The ONNX Runtime release we build and test against (ort 2.0.0-rc.15 targets 1.31).
pub const ORT_VERSION: &str = "1.31.1";

const LIB_NAME: &str = "libonnxruntime.so";

/// Where a computation runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    #[default]
    Cpu,
    Cuda(i32),
}

impl FromStr for Device {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            _ => match s.strip_prefix("cuda:").map(str::parse::<i32>) {
                Some(Ok(n)) if n >= 0 => Ok(Self::Cuda(n)),
                _ => bail!("unknown device '{s}': use cpu, cuda or cuda:N (N = GPU index)"),
            },
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

/// How the ONNX Runtime library was found, for `--verbose` output and error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LibrarySource {
    Flag,
    EnvVar,
    BesideExecutable,
    PythonPackage,
    FetchedCopy,
}

/// Finds `libonnxruntime`: `--ort-lib`, then `ORT_DYLIB_PATH`, then beside the executable, then
/// an installed Python `onnxruntime` / `onnxruntime-gpu`, then the copy `scripts/fetch-ort.sh`
/// fetched. An explicit path that does not exist is an error, not a reason to look elsewhere.
pub fn find_library(flag: Option<&Path>) -> Result<(PathBuf, LibrarySource)> {
    if let Some(path) = flag {
        return library_at(path, "--ort-lib").map(|p| (p, LibrarySource::Flag));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        return library_at(Path::new(&path), "ORT_DYLIB_PATH").map(|p| (p, LibrarySource::EnvVar));
    }
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
        && let Some(lib) = library_in(&dir)
    {
        return Ok((lib, LibrarySource::BesideExecutable));
    }
    if let Some(lib) = python_package_dir().and_then(|dir| library_in(&dir.join("capi"))) {
        return Ok((lib, LibrarySource::PythonPackage));
    }
    let fetched = fetched_dir();
    let gpu = fetched.with_file_name(format!("{ORT_VERSION}-gpu"));
    if let Some(lib) = library_in(&gpu).or_else(|| library_in(&fetched)) {
        return Ok((lib, LibrarySource::FetchedCopy));
    }
    bail!(
        "ONNX Runtime {ORT_VERSION} was not found. Get it with one of:\n  \
         pip install onnxruntime=={ORT_VERSION}        (CPU)\n  \
         pip install onnxruntime-gpu=={ORT_VERSION}    (CUDA 13)\n  \
         scripts/fetch-ort.sh                    (CPU, into {})\n\
         or point --ort-lib / ORT_DYLIB_PATH at libonnxruntime.so.{ORT_VERSION}",
        fetched_dir().display()
    )
}

/// Where `scripts/fetch-ort.sh` puts the CPU library: `$SAE_ONNX_HOME/ort/<version>`, default
/// `~/.cache/sae-onnx/ort/<version>`; the CUDA build goes beside it in `<version>-gpu`.
pub fn fetched_dir() -> PathBuf {
    crate::paths::cache_root().join("ort").join(ORT_VERSION)
}

/// The library an explicit `--ort-lib` / `ORT_DYLIB_PATH` names: the file itself or the newest
/// one in the folder.
fn library_at(path: &Path, from: &str) -> Result<PathBuf> {
    if path.is_file() {
        Ok(path.to_path_buf())
    } else if path.is_dir()
        && let Some(lib) = library_in(path)
    {
        Ok(lib)
    } else {
        bail!("{from} points at '{}', which holds no {LIB_NAME}", path.display())
    }
}

/// The newest-named `libonnxruntime.so*` in `dir` (the wheels ship `libonnxruntime.so.1.31.1`).
fn library_in(dir: &Path) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n == LIB_NAME || n.starts_with("libonnxruntime.so."))
        })
        .collect();
    found.sort();
    found.pop()
}

/// The installed `onnxruntime` package folder, found without importing it (importing is slow
/// and would load a second copy of the library into Python, not into us).
fn python_package_dir() -> Option<PathBuf> {
    let probe = "import importlib.util as u; s = u.find_spec('onnxruntime'); \
                 print(s.submodule_search_locations[0] if s and s.submodule_search_locations else '')";
    for python in ["python3", "python"] {
        let Ok(out) = Command::new(python).args(["-c", probe]).output() else {
            continue;
        };
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() && !dir.is_empty() {
            return Some(PathBuf::from(dir));
        }
    }
    None
}

static ENVIRONMENT: OnceLock<(Environment, PathBuf)> = OnceLock::new();

/// Loads ONNX Runtime once per process; later calls return the library already loaded.
pub fn init(flag: Option<&Path>) -> Result<&'static Path> {
    // ONNX Runtime allows one environment per process: threads racing here must not both build one.
    static INIT: Mutex<()> = Mutex::new(());
    let _guard = INIT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, path)) = ENVIRONMENT.get() {
        return Ok(path);
    }
    let (path, source) = find_library(flag)?;
    tracing::debug!("ONNX Runtime from {} ({source:?})", path.display());
    let builder = ort::init_from(&path).map_err(|e| {
        anyhow!(
            "cannot load ONNX Runtime from '{}': {e}. sae-onnx needs ONNX Runtime {ORT_VERSION} (1.31.x)",
            path.display()
        )
    })?;
    let env = builder
        .with_name("sae-onnx")
        .build()
        .map_err(|e| anyhow!("cannot start ONNX Runtime: {e}"))?;
    let (_, path) = ENVIRONMENT.get_or_init(|| (env, path));
    Ok(path)
}

/// Starts [`init`] on another thread, so that finding and loading the library (which runs
/// Python to look for a pip-installed `onnxruntime`, a tenth of a second or more behind a pyenv
/// shim) overlaps the caller's own preparation instead of adding to the model's opening. Nothing
/// is reported from that thread: the caller's next [`init`] waits for it and returns the
/// library it loaded, or searches again and says why none loads.
pub fn init_in_background(flag: Option<&Path>) {
    if ENVIRONMENT.get().is_some() {
        return;
    }
    let flag = flag.map(Path::to_path_buf);
    let spawned = std::thread::Builder::new()
        .name("ort-init".into())
        .spawn(move || {
            let _ = init(flag.as_deref());
        });
    if let Err(e) = spawned {
        tracing::debug!("ONNX Runtime is loaded when first needed: {e}");
    }
}

/// What a session needs besides the model.
#[derive(Debug, Clone, Default)]
pub struct SessionOptions {
    pub device: Device,
    pub ort_lib: Option<PathBuf>,
    /// Threads for one operator; `None` lets ONNX Runtime choose (one per physical core).
    pub intra_threads: Option<usize>,
    /// Let float32 matrix products on CUDA round their inputs to TF32 (tensor cores): several
    /// times faster, ~1e-3 relative error. Off unless asked for, like PyTorch's matmul default,
    /// so float32 scores match lm-eval's float32 runs.
    pub tf32: bool,
    /// The session cache's folder, when it is on: the optimised graph is saved there on a first
    /// open and loaded on later ones ([`session_cache`]).
    pub cache_dir: Option<PathBuf>,
    /// The operator threads sleep as soon as a run ends instead of spinning for the next one
    /// (ONNX Runtime's `session.intra_op.allow_spinning = 0`): for sessions that run in turns
    /// ([`super::fan_out::FanOut`]'s two), where one's spinning threads would hold the cores the
    /// other needs (8-row decoding steps of a split 100m graph on 2 cores: 52 ms spinning, 37 ms not).
    pub threads_sleep: bool,
}

/// Opens `model` in ONNX Runtime on the requested device.
pub fn session(model: &Path, options: &SessionOptions) -> Result<Session> {
    session_with_origin(model, options).map(|opened| opened.session)
}

/// [`session`], saying whether the session cache was used.
pub fn session_with_origin(model: &Path, options: &SessionOptions) -> Result<OpenedSession> {
    let opened = if let Some(cache_dir) = &options.cache_dir {
        let graph = Model::load(model)?;
        let graph_sha256 = crate::digest::sha256_file(model, "model")?;
        open_cached(cache_dir, &graph_sha256, &graph, options, |mut builder| {
            builder.commit_from_file(model)
        })
    } else {
        open_uncached(options, |mut builder| builder.commit_from_file(model))
    };
    opened
        .map_err(|e| anyhow!("ONNX Runtime cannot load '{}': {e:#}", model.display()))
        .context("opening an inference session")
}

/// Opens an in-memory model (e.g. a rewritten graph) whose external data stays in `model.dir`:
/// nothing is written to disk, unless the session cache is on.
pub fn session_from_model(model: &Model, options: &SessionOptions) -> Result<Session> {
    session_from_model_with_origin(model, options).map(|opened| opened.session)
}

/// [`session_from_model`], saying whether the session cache was used.
pub fn session_from_model_with_origin(model: &Model, options: &SessionOptions) -> Result<OpenedSession> {
    let bytes = prost::Message::encode_to_vec(&model.proto);
    let dir = model
        .dir
        .canonicalize()
        .with_context(|| format!("cannot resolve '{}'", model.dir.display()))?;
    let commit = |builder: SessionBuilder| {
        builder
            .with_config_entry(
                "session.model_external_initializers_file_folder_path",
                dir.to_string_lossy(),
            )?
            .commit_from_memory(&bytes)
    };
    let opened = if let Some(cache_dir) = &options.cache_dir {
        open_cached(
            cache_dir,
            &crate::digest::sha256_hex(&bytes),
            model,
            options,
            commit,
        )
    } else {
        open_uncached(options, commit)
    };
    opened
        .map_err(|e| anyhow!("ONNX Runtime cannot load the rewritten model: {e:#}"))
        .context("opening an inference session")
}

/// A session and how it was made.
pub struct OpenedSession {
    pub session: Session,
    pub origin: SessionOrigin,
}

fn open_uncached(
    options: &SessionOptions,
    commit: impl FnOnce(SessionBuilder) -> ort::Result<Session>,
) -> Result<OpenedSession> {
    let builder = session_builder(options, GraphOptimizationLevel::All)?;
    Ok(OpenedSession {
        session: commit(builder).map_err(|e| anyhow!("{e}"))?,
        origin: SessionOrigin::Built,
    })
}

/// Loads the saved optimised graph of this model when there is one that loads; otherwise
/// optimises as usual and saves the result. Failing to save costs the next open, not this one.
fn open_cached(
    cache_dir: &Path,
    graph_sha256: &str,
    model: &Model,
    options: &SessionOptions,
    commit: impl FnOnce(SessionBuilder) -> ort::Result<Session>,
) -> Result<OpenedSession> {
    let entry = session_cache::Entry::for_graph(cache_dir, graph_sha256, model, &runtime_identity(options))?;
    if let Some(saved) = entry.complete_model() {
        match session_builder(options, GraphOptimizationLevel::Disable)?.commit_from_file(&saved) {
            Ok(session) => {
                tracing::debug!("session loaded from cache '{}'", entry.dir().display());
                return Ok(OpenedSession {
                    session,
                    origin: SessionOrigin::LoadedFromCache,
                });
            }
            Err(e) => {
                tracing::warn!(
                    "ignoring the session cache entry '{}', which does not load: {e}",
                    entry.dir().display()
                );
                entry.remove();
            }
        }
    }
    let staging = match entry.staging() {
        Ok(staging) => staging,
        Err(e) => {
            tracing::warn!("session cache off for this open: {e:#}");
            return open_uncached(options, commit);
        }
    };
    let builder = session_builder(options, GraphOptimizationLevel::All)?
        .with_optimized_model_path(staging.path().join(session_cache::MODEL_FILE))
        .map_err(|e| anyhow!("{e}"))?
        .with_config_entry(
            "session.optimized_model_external_initializers_file_name",
            session_cache::DATA_FILE,
        )
        .map_err(|e| anyhow!("{e}"))?
        .with_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes",
            EXTERNAL_MIN_BYTES,
        )
        .map_err(|e| anyhow!("{e}"))?;
    // The CPU kernels' prepacked weights saved beside the plain ones: a later open maps them
    // from the file instead of packing every matrix again into freshly zeroed memory (half of
    // an open from the cache, the rest of which is parsing and mapping). The entry's data
    // file holds both copies, twice the weights.
    let builder = match options.device {
        Device::Cpu => builder
            .with_config_entry("session.save_external_prepacked_constant_initializers", "1")
            .map_err(|e| anyhow!("{e}"))?,
        Device::Cuda(_) => builder,
    };
    let session = commit(builder).map_err(|e| anyhow!("{e}"))?;
    let origin = match entry.publish(staging) {
        Ok(()) => SessionOrigin::BuiltAndSaved,
        Err(e) => {
            tracing::warn!("cannot save the session cache entry: {e:#}");
            SessionOrigin::Built
        }
    };
    Ok(OpenedSession { session, origin })
}

/// What a saved optimised graph depends on besides the graph: the runtime's version, and the
/// provider with the options that change its optimisation. Threads are left out: they change how
/// the graph runs, not what it is.
fn runtime_identity(options: &SessionOptions) -> String {
    let provider = match options.device {
        Device::Cpu => format!("cpu {}", session_cache::cpu_identity()),
        Device::Cuda(id) => format!("cuda:{id} tf32 {}", options.tf32),
    };
    format!("onnxruntime {ORT_VERSION}\nprovider {provider}")
}

/// Initializers at least this big go into the entry's data file; smaller ones stay in the
/// graph, as the exporter keeps them.
const EXTERNAL_MIN_BYTES: &str = "1024";

fn session_builder(options: &SessionOptions, level: GraphOptimizationLevel) -> Result<SessionBuilder> {
    let lib = init(options.ort_lib.as_deref())?;
    let (env, _) = ENVIRONMENT.get().expect("init succeeded");
    let mut builder = Session::builder(env)
        .map_err(|e| anyhow!("{e}"))?
        .with_optimization_level(level)
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(n) = options.intra_threads {
        builder = builder.with_intra_threads(n).map_err(|e| anyhow!("{e}"))?;
    }
    if options.threads_sleep {
        builder = builder
            .with_intra_op_spinning(false)
            .map_err(|e| anyhow!("{e}"))?;
    }
    // ONNX Runtime's own per-operator profile (JSON for chrome://tracing or Perfetto): which
    // provider ran each node and for how long, the first thing to read when a device is slower
    // than expected.
    if let Some(prefix) = std::env::var_os("SAE_ONNX_ORT_PROFILE") {
        builder = builder.with_profiling(prefix).map_err(|e| anyhow!("{e}"))?;
    }
    if let Device::Cuda(id) = options.device {
        let cuda = ort::ep::CUDA::default()
            .with_device_id(id)
            .with_tf32(options.tf32)
            .build()
            .error_on_failure();
        builder = builder
            .with_execution_providers([cuda])
            .map_err(|e| anyhow!("{}", cuda_failure_help(lib, id, &e.to_string())))?;
    }
    Ok(builder)
}

/// A scalar fed to a graph input on every run besides the model's own inputs: a sweepable
/// steered model's coefficient (`steer.coeff.<k>`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarFeed {
    pub name: String,
    pub value: f64,
    /// The input's element type: float32, float16 or bfloat16.
    pub dtype: DataType,
}

impl ScalarFeed {
    /// The coefficient inputs `model` declares without a default in the graph (a `package
    /// --coefficients inputs` model), each at its steer.csv value: fed unless the caller feeds
    /// another, as the initializer of a `patch --sweepable` model would be.
    pub fn coefficient_defaults(model: &crate::onnx::Model) -> Result<Vec<Self>> {
        let graph = model.graph();
        Ok(crate::contract::sweep::coefficient_inputs(&model.proto)?
            .into_iter()
            .filter(|c| !graph.initializer.iter().any(|t| t.name() == c.input))
            .map(|c| Self {
                name: c.input,
                value: c.default,
                dtype: c.dtype,
            })
            .collect())
    }

    /// The value as a tensor of shape `[]` in the input's type.
    pub fn tensor(&self) -> Result<ort::value::DynValue> {
        use ort::value::Tensor;
        let shape: [usize; 0] = [];
        Ok(match self.dtype {
            DataType::Float => Tensor::from_array((shape, vec![self.value as f32]))?.into_dyn(),
            DataType::Float16 => {
                Tensor::from_array((shape, vec![half::f16::from_f64(self.value)]))?.into_dyn()
            }
            DataType::Bfloat16 => {
                Tensor::from_array((shape, vec![half::bf16::from_f64(self.value)]))?.into_dyn()
            }
            other => bail!(
                "input '{}' is {other:?}: only float inputs can be fed a coefficient",
                self.name
            ),
        })
    }
}

/// Memory on `device`, for outputs that should stay where the next run reads them.
pub fn memory_info(device: Device) -> Result<ort::memory::MemoryInfo<'static>> {
    use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
    let (place, id) = match device {
        Device::Cpu => (AllocationDevice::CPU, 0),
        Device::Cuda(id) => (AllocationDevice::CUDA, id),
    };
    MemoryInfo::new(place, id, AllocatorType::Device, MemoryType::Default).map_err(|e| anyhow!("{e}"))
}

/// Explains a failed CUDA registration: which library is missing and how to provide it.
fn cuda_failure_help(lib: &Path, device: i32, error: &str) -> String {
    let dir = lib.parent().unwrap_or(Path::new("."));
    let provider = dir.join("libonnxruntime_providers_cuda.so");
    let mut help = format!("the CUDA execution provider failed on cuda:{device}: {error}\n");
    if !provider.exists() {
        help.push_str(&format!(
            "'{}' has no CUDA provider (libonnxruntime_providers_cuda.so): it is a CPU build. \
             Install onnxruntime-gpu=={ORT_VERSION} and point --ort-lib at its onnxruntime/capi folder.",
            dir.display()
        ));
        return help;
    }
    let missing: Vec<&str> = ort::ep::cuda::CUDA_DYLIBS
        .iter()
        .chain(ort::ep::cuda::CUDNN_DYLIBS)
        .copied()
        .filter(|name| unsafe { cannot_load(name) })
        .collect();
    if missing.is_empty() {
        help.push_str(
            "All CUDA 13 and cuDNN 9 libraries load; check the driver (nvidia-smi) and the device index.",
        );
    } else {
        help.push_str(&format!(
            "Missing from the loader path: {}. Install the CUDA 13 wheels \
             (pip install nvidia-cuda-runtime nvidia-cublas nvidia-cudnn-cu13 nvidia-cufft nvidia-curand nvidia-cuda-nvrtc) and run:\n  \
             export LD_LIBRARY_PATH=$(python3 -c \"import glob, os, site; print(':'.join(sorted({{os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s + '/nvidia/**/lib*.so*', recursive=True)}})))\"):$LD_LIBRARY_PATH",
            missing.join(", ")
        ));
    }
    help
}

/// True when the dynamic loader cannot find `name`.
///
/// # Safety
/// Loading a library runs its initializers; the CUDA and cuDNN libraries probed here have none
/// with side effects beyond their own state.
unsafe fn cannot_load(name: &str) -> bool {
    unsafe { libloading::Library::new(name) }.is_err()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        for bad in ["gpu", "cuda:", "cuda:-1", "cuda:x"] {
            assert!(bad.parse::<Device>().is_err(), "{bad}");
        }
    }

    #[test]
    fn explicit_paths_must_exist() {
        let err = find_library(Some(Path::new("/nonexistent/libonnxruntime.so"))).unwrap_err();
        assert!(err.to_string().contains("--ort-lib"), "{err}");
    }
}
