//! `--session-cache`: the first eval saves ONNX Runtime's optimised graph, later evals load it
//! instead of optimising again, a corrupted entry is rebuilt, and the scores never change.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::lm::ScoringModel;
use sae_onnx::infer::runtime::{SessionOptions, SessionOrigin};
use serde_json::Value;

use crate::common;

const TASK: &str = "models/tiny-gemma2/demo_mc.yaml";

struct Setup {
    root: tempfile::TempDir,
    model: PathBuf,
    ort: PathBuf,
}

impl Setup {
    fn new() -> Self {
        let root = tempfile::tempdir().unwrap();
        let model = root.path().join("base.onnx");
        export::export("models/tiny-gemma2", &model, &ExportOptions::default()).unwrap();
        // Found here, before SAE_ONNX_HOME moves the cache the child would look in.
        let (ort, _) =
            sae_onnx::infer::runtime::find_library(None).expect("ONNX Runtime (scripts/fetch-ort.sh)");
        Self { root, model, ort }
    }

    fn cache_dir(&self) -> PathBuf {
        self.root.path().join("home").join("ort-optimized")
    }

    /// `eval --session-cache --log-samples` writing into `<root>/<run>/`.
    fn eval(&self, run: &str) -> Output {
        let out = self.root.path().join(run).join("results.json");
        let output = Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
            .args(["eval", "-v", "--session-cache", "--log-samples", "--task", TASK])
            .arg(&self.model)
            .arg("--output-path")
            .arg(&out)
            .env("SAE_ONNX_HOME", self.root.path().join("home"))
            .env("ORT_DYLIB_PATH", &self.ort)
            .env("HF_HUB_OFFLINE", "1")
            .env_remove("SAE_ONNX_SESSION_CACHE")
            .output()
            .unwrap();
        common::succeeded(&output);
        output
    }

    /// The results JSON without its timing, and the samples file's bytes.
    fn outputs(&self, run: &str) -> (Value, Vec<u8>) {
        let dir = self.root.path().join(run);
        let mut results: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap();
        results
            .as_object_mut()
            .unwrap()
            .remove("total_evaluation_time_seconds");
        let samples = std::fs::read(common::file_starting(&dir, "samples_")).unwrap();
        (results, samples)
    }

    /// The cache's one entry.
    fn entry(&self) -> PathBuf {
        let entries: Vec<PathBuf> = std::fs::read_dir(self.cache_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(entries.len(), 1, "{entries:?}");
        entries.into_iter().next().unwrap()
    }

    /// How a scoring open of the model with the cache in `cache_dir` made its session.
    fn origin_of_open(&self, cache_dir: Option<&Path>) -> SessionOrigin {
        let options = SessionOptions {
            ort_lib: Some(self.ort.clone()),
            cache_dir: cache_dir.map(Path::to_path_buf),
            ..Default::default()
        };
        ScoringModel::open(&self.model, &options, 64, 1)
            .unwrap()
            .session_origin
    }
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn warm_and_corrupted_caches_give_the_cold_scores() {
    let setup = Setup::new();
    let cold = setup.eval("cold");
    assert!(!stderr(&cold).contains("loaded from cache"), "{}", stderr(&cold));
    let entry = setup.entry();
    assert!(entry.join("model.onnx").is_file());
    assert_eq!(
        setup.origin_of_open(Some(&setup.cache_dir())),
        SessionOrigin::LoadedFromCache,
        "a scoring open finds the entry eval saved"
    );
    assert_eq!(setup.origin_of_open(None), SessionOrigin::Built);

    let warm = setup.eval("warm");
    assert!(
        stderr(&warm).contains("session loaded from cache"),
        "{}",
        stderr(&warm)
    );
    assert_eq!(setup.outputs("warm"), setup.outputs("cold"));

    // Garbage of the saved graph's size passes the size check and fails to load.
    let saved = entry.join("model.onnx");
    let len = std::fs::metadata(&saved).unwrap().len() as usize;
    std::fs::write(&saved, vec![0xa5u8; len]).unwrap();
    let rebuilt = setup.eval("corrupted");
    assert!(stderr(&rebuilt).contains("does not load"), "{}", stderr(&rebuilt));
    assert!(!stderr(&rebuilt).contains("session loaded from cache"));
    assert_eq!(setup.outputs("corrupted"), setup.outputs("cold"));
    assert_eq!(setup.entry(), entry, "the same key, saved again");
    assert_eq!(
        setup.origin_of_open(Some(&setup.cache_dir())),
        SessionOrigin::LoadedFromCache
    );
}

#[test]
fn a_fresh_cache_is_saved_on_first_open() {
    let setup = Setup::new();
    let cache = setup.root.path().join("fresh");
    assert_eq!(setup.origin_of_open(Some(&cache)), SessionOrigin::BuiltAndSaved);
    assert_eq!(setup.origin_of_open(Some(&cache)), SessionOrigin::LoadedFromCache);
}

#[test]
fn an_entry_holds_the_prepacked_weights_beside_the_plain_ones() {
    let setup = Setup::new();
    let cache = setup.root.path().join("fresh");
    assert_eq!(setup.origin_of_open(Some(&cache)), SessionOrigin::BuiltAndSaved);
    let entries: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let [entry] = entries.as_slice() else {
        panic!("one entry expected: {entries:?}")
    };
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    let weights = size(&setup.model.with_extension("onnx.data"));
    let saved = size(&entry.join("model.onnx.data"));
    // Every matrix the CPU kernels pack is saved a second time, packed: a reopen maps it from
    // the file instead of packing it again (without them the entry is the weights' size).
    assert!(
        saved * 2 >= weights * 3,
        "the entry's data ({saved} bytes) holds no prepacked copy of the {weights} bytes of weights"
    );
}

#[test]
fn a_runtime_that_does_not_load_is_reported_by_eval() {
    // eval looks for ONNX Runtime on another thread while it reads the tasks: a library that
    // is not there must still fail the command, named, not be lost with that thread.
    let setup = Setup::new();
    let missing = setup.root.path().join("no-such-libonnxruntime.so");
    let output = Command::new(env!("CARGO_BIN_EXE_sae-onnx"))
        .args(["eval", "--task", TASK])
        .arg(&setup.model)
        .env("SAE_ONNX_HOME", setup.root.path().join("home"))
        .env("ORT_DYLIB_PATH", &missing)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("no-such-libonnxruntime.so"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
}
