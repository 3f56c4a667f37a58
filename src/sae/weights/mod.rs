//! An SAE's weights file: which format it is stored in, its tensors found under the names that
//! format uses, their shapes checked against each other and the description, and a few elements
//! of them read without loading the file ([`StoredArray`]).

mod array;
mod npz;
mod safetensors;

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};

pub use array::{DType, StoredArray};
pub use npz::Npz;
pub use safetensors::Safetensors;

/// How an SAE's weights are stored (the registry's `format` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SaeFormat {
    /// Gemma Scope: `params.npz`.
    GemmaScopeNpz,
    /// Gemma Scope 2: `params.safetensors` with lowercase names.
    #[serde(rename = "gemma_scope_2_safetensors")]
    GemmaScope2Safetensors,
    /// SAELens: `cfg.json` + `sae_weights.safetensors`.
    #[serde(rename = "saelens")]
    SaeLens,
    /// dictionary_learning: `ae.pt`, a PyTorch pickle (not readable here).
    DictionaryLearning,
    /// Llama Scope: `hyperparams.json` + `checkpoints/final.safetensors` (not read yet).
    LlamaScope,
    /// Llama Scope R1 distill: `config.json` + `final.safetensors` (not read yet).
    #[serde(rename = "llama_scope_r1")]
    LlamaScopeR1,
    /// One PyTorch pickle per SAE (Goodfire, Qwen Scope, DeepSeek R1, GPT-2 hook_z): not readable here.
    TorchPickle,
}

impl fmt::Display for SaeFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SaeFormat::GemmaScopeNpz => "gemma_scope_npz",
            SaeFormat::GemmaScope2Safetensors => "gemma_scope_2_safetensors",
            SaeFormat::SaeLens => "saelens",
            SaeFormat::DictionaryLearning => "dictionary_learning",
            SaeFormat::LlamaScope => "llama_scope",
            SaeFormat::LlamaScopeR1 => "llama_scope_r1",
            SaeFormat::TorchPickle => "torch_pickle",
        })
    }
}

/// The SAE's (d_in, d_sae) as its description states them, and who states them.
#[derive(Debug, Clone)]
pub(super) struct ExpectedDims {
    pub d_in: usize,
    pub d_sae: usize,
    /// `the registry entry ...`, the cfg.json, `W_dec`: for messages.
    pub stated_by: String,
}

/// An npz archive or a safetensors file, mapped.
#[derive(Debug)]
enum WeightsFile {
    Npz(Npz),
    Safetensors(Safetensors),
}

impl WeightsFile {
    fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "npz") {
            Ok(WeightsFile::Npz(Npz::open(path)?))
        } else {
            Ok(WeightsFile::Safetensors(Safetensors::open(path)?))
        }
    }

    fn contains(&self, key: &str) -> bool {
        match self {
            WeightsFile::Npz(n) => n.contains(key),
            WeightsFile::Safetensors(s) => s.contains(key),
        }
    }

    fn array(&self, key: &str) -> Result<StoredArray> {
        match self {
            WeightsFile::Npz(n) => n.array(key),
            WeightsFile::Safetensors(s) => s.array(key),
        }
    }

    fn keys(&self) -> Vec<String> {
        match self {
            WeightsFile::Npz(n) => n.keys(),
            WeightsFile::Safetensors(s) => s.keys(),
        }
    }

    /// The first of `candidates` the file has.
    fn pick(&self, file: &Path, candidates: &[&str]) -> Result<String> {
        candidates
            .iter()
            .find(|k| self.contains(k))
            .map(|k| (*k).to_owned())
            .with_context(|| {
                format!(
                    "'{}' has no {} (it has: {})",
                    file.display(),
                    candidates.join(" / "),
                    self.keys().join(", ")
                )
            })
    }
}

/// The names the SAE's tensors have in its file (Gemma Scope 2 writes them lowercase).
#[derive(Debug)]
pub(super) struct TensorNames {
    pub w_enc: String,
    pub w_dec: String,
    pub b_enc: String,
    pub b_dec: String,
    pub threshold: Option<String>,
    /// The file stores `log_threshold` (older SAELens JumpReLU checkpoints): threshold = exp of it.
    pub log_threshold: bool,
}

/// An SAE's weights file with `W_dec [d_sae, d_in]` and `W_enc [d_in, d_sae]` found and checked.
#[derive(Debug)]
pub(super) struct SaeWeights {
    file: WeightsFile,
    pub names: TensorNames,
    pub d_in: usize,
    pub d_sae: usize,
}

impl SaeWeights {
    /// Maps `path` and checks the encoder and decoder shapes against each other and `expected`.
    pub fn open(path: &Path, expected: Option<&ExpectedDims>) -> Result<Self> {
        let file = WeightsFile::open(path)?;
        let names = TensorNames {
            w_enc: file.pick(path, &["W_enc", "w_enc"])?,
            w_dec: file.pick(path, &["W_dec", "w_dec"])?,
            b_enc: file.pick(path, &["b_enc"])?,
            b_dec: file.pick(path, &["b_dec"])?,
            threshold: file.pick(path, &["threshold", "log_threshold"]).ok(),
            log_threshold: !file.contains("threshold") && file.contains("log_threshold"),
        };
        let w_dec = file.array(&names.w_dec)?;
        ensure!(
            w_dec.shape.len() == 2,
            "'{}': {} has shape {:?}; expected [d_sae, d_in]",
            path.display(),
            names.w_dec,
            w_dec.shape
        );
        let (d_sae, d_in) = (w_dec.shape[0], w_dec.shape[1]);
        if let Some(want) = expected {
            ensure!(
                (d_sae, d_in) == (want.d_sae, want.d_in),
                "'{}': {} has shape [{d_sae}, {d_in}] but {} says [d_sae {}, d_in {}]",
                path.display(),
                names.w_dec,
                want.stated_by,
                want.d_sae,
                want.d_in
            );
        }
        let w_enc = file.array(&names.w_enc)?;
        ensure!(
            w_enc.shape == [d_in, d_sae],
            "'{}': {} has shape {:?}; expected [d_in {d_in}, d_sae {d_sae}] to match {}",
            path.display(),
            names.w_enc,
            w_enc.shape,
            names.w_dec
        );
        if file.contains("scaling_factor") {
            // SAELens drops an all-ones `scaling_factor`; any other value scales the latents.
            let f = file.array("scaling_factor")?.to_vec()?;
            ensure!(
                f.iter().all(|&x| x == 1.0),
                "'{}' has a finetuning `scaling_factor` that is not all ones; SAELens multiplies the latents by it \
                 and sae-onnx does not support that",
                path.display()
            );
        }
        Ok(Self {
            file,
            names,
            d_in,
            d_sae,
        })
    }

    /// The array `name` (one of [`Self::names`]), without reading its data.
    pub fn array(&self, name: &str) -> Result<StoredArray> {
        self.file.array(name)
    }
}

/// `(d_sae, d_in)` from the decoder's shape in a Gemma Scope npz, without any other check.
pub(super) fn npz_decoder_shape(path: &Path) -> Result<Option<(usize, usize)>> {
    let npz = Npz::open(path)?;
    let key = if npz.contains("W_dec") { "W_dec" } else { "w_dec" };
    Ok(match npz.array(key)?.shape[..] {
        [d_sae, d_in] => Some((d_sae, d_in)),
        _ => None,
    })
}
