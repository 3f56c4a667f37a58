//! Opening an SAE (registry release, Hub repository or local folder), checking what it is, and
//! reading the decoder rows / encoder parts of a few latents the way SAELens would load them.

use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use super::npz::{Npz, Safetensors, StoredArray};
use super::registry::{SaeEntry, registry};
use super::{DecoderRows, EncoderParts, HASH_LIMIT, LatentOutOfRange, SaeFormat, SaeProvenance, SaeSource};
use crate::hook::{HookPoint, Site};
use crate::hub::{Hub, RepoKind};

/// The revision SAEs are fetched at.
const REVISION: &str = "main";

/// Reads `W_dec[latent]` for each of `latents` of the SAE `sae_id` of `source`.
pub fn load_decoder_rows(
    hub: &Hub,
    source: &SaeSource,
    sae_id: &str,
    latents: &[usize],
) -> Result<DecoderRows> {
    Sae::open(hub, source, sae_id)?.decoder_rows(latents)
}

/// Reads the encoder column, `b_enc` and `threshold` entries of each of `latents`, and `b_dec`.
pub fn load_encoder_parts(
    hub: &Hub,
    source: &SaeSource,
    sae_id: &str,
    latents: &[usize],
) -> Result<EncoderParts> {
    Sae::open(hub, source, sae_id)?.encoder_parts(latents)
}

/// An opened SAE: its description and its weights file, mapped but not read.
#[derive(Debug)]
pub struct Sae {
    pub hook: HookPoint,
    /// Single-head `attn.hook_z` SAEs (SAELens `hook_head_index`): the head; `d_in` is then d_head.
    pub head_index: Option<usize>,
    pub d_in: usize,
    pub d_sae: usize,
    /// SAELens architecture name (`jumprelu` for Gemma Scope and Gemma Scope 2).
    pub architecture: String,
    pub apply_b_dec_to_input: bool,
    pub provenance: SaeProvenance,
    /// `release/id`, `repo/id` or the folder, for messages.
    pub label: String,
    /// The files opened (weights, config), so a command can refuse to write over them.
    pub files: Vec<PathBuf>,
    weights: Weights,
    names: Names,
    scales: Scales,
}

#[derive(Debug)]
enum Weights {
    Npz(Npz),
    Safetensors(Safetensors),
}

impl Weights {
    fn open(path: &Path) -> Result<Self> {
        if path.extension().is_some_and(|e| e == "npz") {
            Ok(Weights::Npz(Npz::open(path)?))
        } else {
            Ok(Weights::Safetensors(Safetensors::open(path)?))
        }
    }
    fn contains(&self, key: &str) -> bool {
        match self {
            Weights::Npz(n) => n.contains(key),
            Weights::Safetensors(s) => s.contains(key),
        }
    }
    fn array(&self, key: &str) -> Result<StoredArray> {
        match self {
            Weights::Npz(n) => n.array(key),
            Weights::Safetensors(s) => s.array(key),
        }
    }
    fn keys(&self) -> Vec<String> {
        match self {
            Weights::Npz(n) => n.keys(),
            Weights::Safetensors(s) => s.keys(),
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

/// Tensor names in the file.
#[derive(Debug)]
struct Names {
    w_enc: String,
    w_dec: String,
    b_enc: String,
    b_dec: String,
    threshold: Option<String>,
    /// The file stores `log_threshold` (older SAELens JumpReLU checkpoints): threshold = exp of it.
    log_threshold: bool,
}

/// Factors SAELens applies to the weights when loading; every value is computed in f32 as torch does.
#[derive(Debug, Clone, Copy)]
enum Scale {
    One,
    Mul(f32),
    Div(f32),
}

impl Scale {
    fn apply(self, v: &mut [f32]) {
        match self {
            Scale::One => {}
            Scale::Mul(f) => v.iter_mut().for_each(|x| *x *= f),
            Scale::Div(f) => v.iter_mut().for_each(|x| *x /= f),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Scales {
    w_enc: Scale,
    w_dec: Scale,
    b_dec: Scale,
}

const NO_SCALES: Scales = Scales {
    w_enc: Scale::One,
    w_dec: Scale::One,
    b_dec: Scale::One,
};

/// Everything but the weights, as the config sources describe it.
struct Description {
    format: SaeFormat,
    hook: HookPoint,
    head_index: Option<usize>,
    /// Expected (d_in, d_sae), with who says so; `None`: taken from W_dec's shape.
    dims: Option<(usize, usize, String)>,
    architecture: String,
    apply_b_dec_to_input: bool,
    scales: Scales,
    /// The config file the description was read from, if any.
    config: Option<PathBuf>,
}

/// Provenance fields known before the file is opened.
struct Origin {
    source: SaeSource,
    release: Option<String>,
    repo_id: Option<String>,
    sae_id: String,
    path: Option<String>,
    label: String,
}

impl Sae {
    /// Finds and opens the SAE: checks its format, hook and dimensions, but reads no weights.
    pub fn open(hub: &Hub, source: &SaeSource, sae_id: &str) -> Result<Self> {
        let sae_id = sae_id.trim();
        match source {
            SaeSource::Release(name) => {
                let entry = registry().sae(name, sae_id)?;
                Self::open_registry(hub, source, entry, sae_id)
            }
            SaeSource::HfRepo(repo) => match registry().by_repo_path(repo, sae_id) {
                Some(entry) => Self::open_registry(hub, source, entry, sae_id),
                None => Self::open_hub_folder(hub, source, repo, sae_id),
            },
            SaeSource::Folder(dir) => {
                let dir = if sae_id.is_empty() {
                    dir.clone()
                } else {
                    check_sae_id(sae_id)?;
                    let sub = dir.join(sae_id);
                    // A subfolder that is a link out of the SAE folder is refused like `..`.
                    if let (Ok(real), Ok(root)) = (sub.canonicalize(), dir.canonicalize())
                        && !real.starts_with(&root)
                    {
                        bail!(
                            "sae_id '{}' leads to '{}', outside the SAE folder '{}'",
                            crate::files::printable(sae_id, 200),
                            real.display(),
                            root.display()
                        );
                    }
                    sub
                };
                let origin = Origin {
                    source: source.clone(),
                    release: None,
                    repo_id: None,
                    sae_id: sae_id.to_owned(),
                    path: None,
                    label: format!("'{}'", dir.display()),
                };
                Self::open_folder(&dir, origin)
            }
        }
    }

    fn open_registry(hub: &Hub, source: &SaeSource, entry: SaeEntry<'_>, sae_id: &str) -> Result<Self> {
        let SaeEntry { release, sae } = entry;
        let label = format!("{}/{}", release.release, sae.id);
        let origin = Origin {
            source: source.clone(),
            release: Some(release.release.clone()),
            repo_id: Some(release.repo_id.clone()),
            sae_id: sae_id.to_owned(),
            path: Some(sae.path.clone()),
            label: label.clone(),
        };
        if release.format == SaeFormat::DictionaryLearning {
            bail!(
                "SAE {label} is stored in the dictionary_learning format (`ae.pt`, a PyTorch pickle), which sae-onnx \
                 cannot read. Convert it to a SAELens folder (cfg.json + sae_weights.safetensors) and give that folder"
            );
        }
        let weights_file = hub.file(
            &release.repo_id,
            RepoKind::Model,
            REVISION,
            &release.weights_path(sae),
        )?;
        let registry_dims = Some((sae.d_in, sae.d_sae, format!("the registry entry {label}")));
        let desc = match release.format {
            SaeFormat::DictionaryLearning => unreachable!("refused above"),
            SaeFormat::GemmaScopeNpz | SaeFormat::GemmaScope2Safetensors => {
                let hook = sae.hook_point()?;
                params_description(release.format, hook, None, registry_dims)
            }
            SaeFormat::SaeLens => {
                let cfg = hub.file(
                    &release.repo_id,
                    RepoKind::Model,
                    REVISION,
                    &format!("{}/cfg.json", sae.path),
                )?;
                saelens_description(&cfg, sae.norm_scaling_factor, &label)?
            }
        };
        Self::build(&weights_file, desc, origin)
    }

    /// A repository the registry does not list (or a folder of it that it does not list).
    fn open_hub_folder(hub: &Hub, source: &SaeSource, repo: &str, sae_id: &str) -> Result<Self> {
        if !sae_id.trim_matches('/').is_empty() {
            check_sae_id(sae_id.trim_matches('/'))?;
        }
        let prefix = if sae_id.trim_matches('/').is_empty() {
            String::new()
        } else {
            format!("{}/", sae_id.trim_matches('/'))
        };
        let origin = || Origin {
            source: source.clone(),
            release: None,
            repo_id: Some(repo.to_owned()),
            sae_id: sae_id.to_owned(),
            path: Some(prefix.trim_end_matches('/').to_owned()),
            label: format!("{repo}/{sae_id}"),
        };
        let get = |name: &str| hub.file(repo, RepoKind::Model, REVISION, &format!("{prefix}{name}"));
        let mut tried = Vec::new();
        match get("cfg.json") {
            Ok(cfg) => {
                let weights = get("sae_weights.safetensors")?;
                let desc = saelens_description(&cfg, None, &format!("{repo}/{sae_id}"))?;
                return Self::build(&weights, desc, origin());
            }
            Err(e) => tried.push(format!("SAELens cfg.json: {e:#}")),
        }
        for (format, file) in [
            (SaeFormat::GemmaScope2Safetensors, "params.safetensors"),
            (SaeFormat::GemmaScopeNpz, "params.npz"),
        ] {
            match get(file) {
                Ok(weights) => {
                    let in_repo = format!("{repo}/{prefix}");
                    let config = get("config.json").ok();
                    let desc = params_description_inferred(format, &weights, config.as_deref(), &in_repo)?;
                    return Self::build(&weights, desc, origin());
                }
                Err(e) => tried.push(format!("{file}: {e:#}")),
            }
        }
        bail!(
            "found no SAE in Hugging Face repo '{repo}' folder '{}': tried a SAELens folder (cfg.json + \
             sae_weights.safetensors), Gemma Scope 2 (params.safetensors) and Gemma Scope (params.npz):\n  {}",
            prefix.trim_end_matches('/'),
            tried.join("\n  ")
        )
    }

    fn open_folder(dir: &Path, origin: Origin) -> Result<Self> {
        ensure!(dir.is_dir(), "SAE folder '{}' does not exist", dir.display());
        let has = |f: &str| dir.join(f).is_file();
        if has("cfg.json") && has("sae_weights.safetensors") {
            let desc = saelens_description(&dir.join("cfg.json"), None, &origin.label)?;
            return Self::build(&dir.join("sae_weights.safetensors"), desc, origin);
        }
        for (format, file) in [
            (SaeFormat::GemmaScope2Safetensors, "params.safetensors"),
            (SaeFormat::GemmaScopeNpz, "params.npz"),
        ] {
            if has(file) {
                let weights = dir.join(file);
                let config = ["config.json", "cfg.json"]
                    .into_iter()
                    .map(|c| dir.join(c))
                    .find(|c| c.is_file());
                let text = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
                let desc = params_description_inferred(
                    format,
                    &weights,
                    config.as_deref(),
                    &text.to_string_lossy(),
                )?;
                return Self::build(&weights, desc, origin);
            }
        }
        if has("ae.pt") {
            bail!(
                "'{}' holds a dictionary_learning `ae.pt` (a PyTorch pickle), which sae-onnx cannot read",
                dir.display()
            );
        }
        let subfolders = std::fs::read_dir(dir)
            .map(|d| d.flatten().filter(|e| e.path().is_dir()).count())
            .unwrap_or(0);
        let hint = if subfolders > 0 && origin.sae_id.is_empty() {
            " It has subfolders: give the SAE's subfolder as the sae_id."
        } else {
            ""
        };
        bail!(
            "'{}' holds no SAE: expected cfg.json + sae_weights.safetensors (SAELens), params.safetensors \
             (Gemma Scope 2) or params.npz (Gemma Scope).{hint}",
            dir.display()
        )
    }

    fn build(weights_file: &Path, desc: Description, origin: Origin) -> Result<Self> {
        let files = std::iter::once(weights_file.to_path_buf())
            .chain(desc.config.clone())
            .collect();
        let weights = Weights::open(weights_file)?;
        let names = Names {
            w_enc: weights.pick(weights_file, &["W_enc", "w_enc"])?,
            w_dec: weights.pick(weights_file, &["W_dec", "w_dec"])?,
            b_enc: weights.pick(weights_file, &["b_enc"])?,
            b_dec: weights.pick(weights_file, &["b_dec"])?,
            threshold: weights.pick(weights_file, &["threshold", "log_threshold"]).ok(),
            log_threshold: !weights.contains("threshold") && weights.contains("log_threshold"),
        };
        let w_dec = weights.array(&names.w_dec)?;
        ensure!(
            w_dec.shape.len() == 2,
            "'{}': {} has shape {:?}; expected [d_sae, d_in]",
            weights_file.display(),
            names.w_dec,
            w_dec.shape
        );
        let (d_sae, d_in) = (w_dec.shape[0], w_dec.shape[1]);
        if let Some((want_in, want_sae, who)) = &desc.dims {
            ensure!(
                (d_sae, d_in) == (*want_sae, *want_in),
                "'{}': {} has shape [{d_sae}, {d_in}] but {who} says [d_sae {want_sae}, d_in {want_in}]",
                weights_file.display(),
                names.w_dec
            );
        }
        let w_enc = weights.array(&names.w_enc)?;
        ensure!(
            w_enc.shape == [d_in, d_sae],
            "'{}': {} has shape {:?}; expected [d_in {d_in}, d_sae {d_sae}] to match {}",
            weights_file.display(),
            names.w_enc,
            w_enc.shape,
            names.w_dec
        );
        if weights.contains("scaling_factor") {
            // SAELens drops an all-ones `scaling_factor`; any other value scales the latents.
            let f = weights.array("scaling_factor")?.to_vec()?;
            ensure!(
                f.iter().all(|&x| x == 1.0),
                "'{}' has a finetuning `scaling_factor` that is not all ones; SAELens multiplies the latents by it \
                 and sae-onnx does not support that",
                weights_file.display()
            );
        }
        let provenance = provenance(weights_file, desc.format, origin.source, |p| SaeProvenance {
            release: origin.release,
            repo_id: origin.repo_id,
            sae_id: origin.sae_id,
            path: origin.path,
            ..p
        })?;
        Ok(Self {
            hook: desc.hook,
            head_index: desc.head_index,
            d_in,
            d_sae,
            architecture: desc.architecture,
            apply_b_dec_to_input: desc.apply_b_dec_to_input,
            provenance,
            label: origin.label,
            files,
            weights,
            names,
            scales: desc.scales,
        })
    }

    fn check_latents(&self, latents: &[usize]) -> Result<()> {
        if let Some(&latent) = latents.iter().find(|&&l| l >= self.d_sae) {
            return Err(anyhow!(LatentOutOfRange {
                latent,
                d_sae: self.d_sae,
                sae: self.label.clone()
            }));
        }
        Ok(())
    }

    /// `W_dec[latent]` for each latent (repeats allowed), scaled as SAELens loads it.
    pub fn decoder_rows(&self, latents: &[usize]) -> Result<DecoderRows> {
        self.check_latents(latents)?;
        let mut rows = self.weights.array(&self.names.w_dec)?.rows(latents)?;
        rows.iter_mut().for_each(|r| self.scales.w_dec.apply(r));
        for (row, &latent) in rows.iter().zip(latents) {
            self.check_finite(&self.names.w_dec, Some(latent), row)?;
        }
        Ok(DecoderRows {
            hook: self.hook,
            head_index: self.head_index,
            d_in: self.d_in,
            d_sae: self.d_sae,
            latents: latents.to_vec(),
            rows,
            provenance: self.provenance.clone(),
        })
    }

    /// The encoder column, `b_enc` and `threshold` entries of each latent, and all of `b_dec`.
    pub fn encoder_parts(&self, latents: &[usize]) -> Result<EncoderParts> {
        self.check_latents(latents)?;
        let mut w_enc_cols = self.weights.array(&self.names.w_enc)?.cols(latents)?;
        w_enc_cols.iter_mut().for_each(|c| self.scales.w_enc.apply(c));
        for (col, &latent) in w_enc_cols.iter().zip(latents) {
            self.check_finite(&self.names.w_enc, Some(latent), col)?;
        }
        let b_enc = self.vector(&self.names.b_enc, self.d_sae)?.elements(latents)?;
        for (b, &latent) in b_enc.iter().zip(latents) {
            self.check_finite(&self.names.b_enc, Some(latent), std::slice::from_ref(b))?;
        }
        let threshold = match &self.names.threshold {
            Some(name) => {
                let t = self.vector(name, self.d_sae)?.elements(latents)?;
                let t: Vec<f32> = if self.names.log_threshold {
                    t.into_iter().map(f32::exp).collect()
                } else {
                    t
                };
                for (v, &latent) in t.iter().zip(latents) {
                    self.check_finite(name, Some(latent), std::slice::from_ref(v))?;
                }
                Some(t)
            }
            None => None,
        };
        let mut b_dec = self.vector(&self.names.b_dec, self.d_in)?.to_vec()?;
        self.scales.b_dec.apply(&mut b_dec);
        self.check_finite(&self.names.b_dec, None, &b_dec)?;
        Ok(EncoderParts {
            hook: self.hook,
            head_index: self.head_index,
            d_in: self.d_in,
            d_sae: self.d_sae,
            latents: latents.to_vec(),
            w_enc_cols,
            b_enc,
            threshold,
            b_dec,
            apply_b_dec_to_input: self.apply_b_dec_to_input,
            architecture: self.architecture.clone(),
            provenance: self.provenance.clone(),
        })
    }

    /// NaN or infinity in what a steering row reads would make every logit NaN (or the graph's
    /// comparisons always false) without an error; the file is damaged or was saved so.
    fn check_finite(&self, tensor: &str, latent: Option<usize>, values: &[f32]) -> Result<()> {
        let Some((index, value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) else {
            return Ok(());
        };
        let at = match latent {
            // The latent's column of W_enc, its row of W_dec, its entry of a [d_sae] vector.
            Some(latent) if values.len() > 1 => format!("latent {latent} (element {index})"),
            Some(latent) => format!("latent {latent}"),
            None => format!("element {index}"),
        };
        let message = format!(
            "'{}': {tensor} has {value} at {at} (values loaded as SAELens scales them); the SAE file is damaged \
             or was saved with non-finite values, and steering with it would give NaN or infinite activations",
            self.provenance.file.display()
        );
        Err(match latent {
            Some(latent) => anyhow!(NonFiniteLatent { latent, message }),
            None => anyhow!(message),
        })
    }

    fn vector(&self, name: &str, len: usize) -> Result<StoredArray> {
        let a = self.weights.array(name)?;
        ensure!(
            a.shape == [len],
            "'{}': {name} has shape {:?}; expected [{len}]",
            self.provenance.file.display(),
            a.shape
        );
        Ok(a)
    }
}

/// An sae_id names a folder inside its SAE source; `..` or an absolute path would read SAEs (or
/// any file) elsewhere.
fn check_sae_id(sae_id: &str) -> Result<()> {
    let plain = Path::new(sae_id)
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    ensure!(
        plain,
        "sae_id '{}' is not a folder inside the SAE source ('..' and absolute paths are refused)",
        crate::files::printable(sae_id, 200)
    );
    Ok(())
}

/// Non-finite values in one latent's weights: the fault of the plan rows naming that latent,
/// so the plan reader can point at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteLatent {
    pub latent: usize,
    pub message: String,
}

impl std::fmt::Display for NonFiniteLatent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NonFiniteLatent {}

// ------------------------------------------------------------------------------------------------
// descriptions

/// Gemma Scope / Gemma Scope 2 with a known hook: JumpReLU, `b_dec` not subtracted. The Gemma
/// Scope embedding SAEs were trained on unscaled embeddings; SAELens multiplies their `W_dec` by
/// sqrt(d_in) and divides `W_enc` by it, and so do we.
fn params_description(
    format: SaeFormat,
    hook: HookPoint,
    head_index: Option<usize>,
    dims: Option<(usize, usize, String)>,
) -> Description {
    let scales = match (format, hook.site, &dims) {
        (SaeFormat::GemmaScopeNpz, Site::Embed, Some((d_in, _, _))) => {
            let s = (*d_in as f64).sqrt() as f32;
            Scales {
                w_enc: Scale::Div(s),
                w_dec: Scale::Mul(s),
                b_dec: Scale::One,
            }
        }
        _ => NO_SCALES,
    };
    Description {
        format,
        hook,
        head_index,
        dims,
        architecture: "jumprelu".into(),
        apply_b_dec_to_input: false,
        scales,
        config: None,
    }
}

/// Gemma Scope / Gemma Scope 2 outside the registry: the hook comes from a config file next to the
/// weights (Gemma Scope 2 `config.json` with `hf_hook_point_in`, or a cfg.json with `hook_name`),
/// else from the path, as SAELens's loaders infer it from repo and folder names.
fn params_description_inferred(
    format: SaeFormat,
    weights: &Path,
    config: Option<&Path>,
    path_text: &str,
) -> Result<Description> {
    let mut hook = None;
    let mut head_index = None;
    if let Some(config) = config {
        let v = read_json(config)?;
        if v.get("hf_hook_point_out").is_some_and(|x| !x.is_null())
            || v.get("affine_connection").is_some()
            || string_at(&v, &["metadata", "hook_name_out"]).is_some()
            || v.get("hook_name_out").is_some_and(|x| !x.is_null())
        {
            bail!(
                "'{}' describes a transcoder (input and output hooks differ); steering needs an SAE",
                config.display()
            );
        }
        if let Some(arch) = v.get("architecture").and_then(Value::as_str)
            && !matches!(arch, "jump_relu" | "jumprelu")
        {
            bail!(
                "'{}': architecture '{}' is not the JumpReLU SAE this format holds",
                config.display(),
                crate::files::printable(arch, 100)
            );
        }
        if let Some(hf) = v.get("hf_hook_point_in").and_then(Value::as_str) {
            hook =
                Some(parse_hf_hook(hf).with_context(|| format!("'{}': hf_hook_point_in", config.display()))?);
        } else if let Some(name) = saelens_hook_name(&v) {
            hook =
                Some(HookPoint::parse(name).with_context(|| format!("'{}': hook_name", config.display()))?);
            head_index = saelens_head_index(&v);
        }
    }
    let hook = match hook {
        Some(h) => h,
        None => match format {
            SaeFormat::GemmaScope2Safetensors => infer_gemma_scope_2_hook(path_text)?,
            _ => infer_gemma_scope_hook(path_text)?,
        },
    };
    let mut desc = params_description(format, hook, head_index, None);
    desc.config = config.map(Path::to_path_buf);
    if format == SaeFormat::GemmaScopeNpz && hook.site == Site::Embed {
        // The sqrt(d_in) scale needs d_in: read it from W_dec's shape.
        let npz = Npz::open(weights)?;
        let key = if npz.contains("W_dec") { "W_dec" } else { "w_dec" };
        let shape = npz.array(key)?.shape;
        if let [d_sae, d_in] = shape[..] {
            desc = Description {
                config: desc.config,
                ..params_description(format, hook, head_index, Some((d_in, d_sae, "W_dec".into())))
            };
        }
    }
    Ok(desc)
}

/// `model.layers.L.output` / `model.layers.L` (resid_post), `model.layers.L.self_attn.o_proj.input`
/// (attn.hook_z), `model.layers.L.post_feedforward_layernorm.output` (mlp_out); any prefix before
/// `layers.` (`model.language_model.`) is accepted.
fn parse_hf_hook(s: &str) -> Result<HookPoint> {
    let rest = s.find("layers.").map(|i| &s[i + "layers.".len()..]);
    if let Some(rest) = rest {
        let (layer, tail) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(layer) = layer.parse::<usize>() {
            let site = match tail {
                "" | "output" => Some(Site::ResidPost),
                "self_attn.o_proj.input" => Some(Site::AttnZ),
                "post_feedforward_layernorm.output" | "mlp.output" => Some(Site::MlpOut),
                _ => None,
            };
            if let Some(site) = site {
                return Ok(HookPoint::new(layer, site));
            }
        }
    }
    bail!(
        "unknown Hugging Face hook point '{s}' (known: model.layers.L.output, model.layers.L.self_attn.o_proj.input, \
         model.layers.L.post_feedforward_layernorm.output)"
    )
}

/// The last `layer_N` in `text`.
fn layer_in(text: &str) -> Option<usize> {
    text.match_indices("layer_")
        .filter_map(|(i, m)| {
            let digits: String = text[i + m.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        })
        .last()
}

fn path_parts(text: &str) -> Vec<&str> {
    text.split(['/', '\\']).filter(|c| !c.is_empty()).collect()
}

const HOOK_HINT: &str =
    "put a cfg.json next to the weights with the hook, e.g. {\"hook_name\": \"blocks.20.hook_resid_post\"}";

/// Gemma Scope: the site from the repository name (`gemma-scope-2b-pt-res|mlp|att`, also as an HF
/// cache folder `models--google--gemma-scope-2b-pt-res`), the layer from `layer_N`, `embedding/`
/// folders of res repositories at `hook_embed`.
fn infer_gemma_scope_hook(text: &str) -> Result<HookPoint> {
    let parts = path_parts(text);
    let repo = parts.iter().rev().find(|p| p.contains("gemma-scope"));
    let site = repo.and_then(|r| {
        let tokens: Vec<&str> = r.split('-').collect();
        [
            ("res", Site::ResidPost),
            ("mlp", Site::MlpOut),
            ("att", Site::AttnZ),
        ]
        .into_iter()
        .find(|(t, _)| tokens.contains(t))
        .map(|(_, s)| s)
    });
    match (site, layer_in(text)) {
        (Some(Site::ResidPost), _) if parts.contains(&"embedding") => Ok(HookPoint::embed()),
        (Some(site), Some(layer)) => Ok(HookPoint::new(layer, site)),
        _ => bail!(
            "cannot tell the hook of the Gemma Scope SAE at '{text}': its path names no gemma-scope-*-res|mlp|att \
             repository and layer_N folder; {HOOK_HINT}"
        ),
    }
}

/// Gemma Scope 2: the site from the folder (`resid_post`, `attn_out` = o_proj's input, i.e.
/// `attn.hook_z`, `mlp_out`; `_all` variants too), the layer from `layer_N`.
fn infer_gemma_scope_2_hook(text: &str) -> Result<HookPoint> {
    let parts = path_parts(text);
    if parts
        .iter()
        .any(|p| p.contains("transcoder") || p.starts_with("clt"))
    {
        bail!("'{text}' is a Gemma Scope 2 transcoder; steering needs an SAE");
    }
    let site = parts.iter().rev().find_map(|p| match p.trim_end_matches("_all") {
        "resid_post" => Some(Site::ResidPost),
        "attn_out" => Some(Site::AttnZ),
        "mlp_out" => Some(Site::MlpOut),
        _ => None,
    });
    match (site, layer_in(parts.last().copied().unwrap_or(""))) {
        (Some(site), Some(layer)) => Ok(HookPoint::new(layer, site)),
        _ => bail!(
            "cannot tell the hook of the Gemma Scope 2 SAE at '{text}': no config.json with hf_hook_point_in, and \
             the path has no resid_post|attn_out|mlp_out/layer_N_... folder; {HOOK_HINT}"
        ),
    }
}

/// SAE configs are a few kilobytes; the bound makes a wrong file (`/dev/zero`) an error.
const CONFIG_MAX_BYTES: u64 = 16 << 20;

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::files::read_text(path, "SAE config", CONFIG_MAX_BYTES)?;
    serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))
}

fn string_at<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

fn usize_at(v: &Value, keys: &[&str]) -> Option<usize> {
    keys.iter()
        .try_fold(v, |v, k| v.get(k))?
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
}

/// `metadata.hook_name` (SAELens 6), `hook_name`, or `hook_point` (before 6.0).
fn saelens_hook_name(v: &Value) -> Option<&str> {
    string_at(v, &["metadata", "hook_name"])
        .or_else(|| string_at(v, &["hook_name"]))
        .or_else(|| string_at(v, &["hook_point"]))
}

fn saelens_head_index(v: &Value) -> Option<usize> {
    usize_at(v, &["metadata", "hook_head_index"])
        .or_else(|| usize_at(v, &["hook_head_index"]))
        .or_else(|| usize_at(v, &["hook_point_head_index"]))
}

/// A SAELens `cfg.json`, read as SAELens's `handle_config_defaulting` does (pre-6.0 configs:
/// `hook_point` -> `hook_name`, `apply_b_dec_to_input` defaults to true, boolean
/// `normalize_activations`). `norm_factor` is the registry's `norm_scaling_factor`, which SAELens
/// folds into the weights when the cfg says `expected_average_only_in`.
fn saelens_description(cfg_path: &Path, norm_factor: Option<f64>, label: &str) -> Result<Description> {
    let v = read_json(cfg_path)?;
    let at = || format!("SAE {label} ('{}')", cfg_path.display());
    let version =
        string_at(&v, &["sae_lens_version"]).or_else(|| string_at(&v, &["metadata", "sae_lens_version"]));
    let pre_6 = version.is_none_or(|ver| {
        ver.split(['.', '-'])
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_none_or(|m| m < 6)
    });
    if v.get("hook_name_out").is_some_and(|x| !x.is_null())
        || string_at(&v, &["metadata", "hook_name_out"]).is_some()
    {
        bail!(
            "{} is a transcoder (it writes to a different hook than it reads); steering needs an SAE",
            at()
        );
    }
    let hook_name = saelens_hook_name(&v).with_context(|| {
        format!(
            "{} names no hook (metadata.hook_name / hook_name / hook_point)",
            at()
        )
    })?;
    let hook = HookPoint::parse(hook_name).with_context(at)?;
    let d_in = usize_at(&v, &["d_in"]).with_context(|| format!("{} has no integer d_in", at()))?;
    let d_sae = usize_at(&v, &["d_sae"]).with_context(|| format!("{} has no integer d_sae", at()))?;
    let activation = string_at(&v, &["activation_fn"]).or_else(|| string_at(&v, &["activation_fn_str"]));
    let architecture = match string_at(&v, &["architecture"]) {
        Some(a) => a.to_owned(),
        None if pre_6 && activation == Some("topk") => "topk".into(),
        None => "standard".into(),
    };
    if architecture.contains("transcoder") {
        bail!(
            "{} is a {}; steering needs an SAE",
            at(),
            crate::files::printable(&architecture, 100)
        );
    }
    let apply_b_dec_to_input = v
        .get("apply_b_dec_to_input")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let normalize = match v.get("normalize_activations") {
        None | Some(Value::Null) => "none".to_owned(),
        Some(Value::Bool(false)) => "none".to_owned(),
        Some(Value::Bool(true)) => "expected_average_only_in".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => bail!("{}: normalize_activations {other} is not understood", at()),
    };
    let scales = match (normalize.as_str(), norm_factor) {
        ("none", _) => NO_SCALES,
        ("expected_average_only_in", Some(f)) => {
            // SAE.fold_activation_norm_scaling_factor: W_enc *= f, W_dec /= f, b_dec /= f.
            let f = f as f32;
            Scales {
                w_enc: Scale::Mul(f),
                w_dec: Scale::Div(f),
                b_dec: Scale::Div(f),
            }
        }
        ("expected_average_only_in", None) => bail!(
            "{} was trained on activations scaled by a norm_scaling_factor (normalize_activations: \
             expected_average_only_in), and no factor is known for it: SAELens folds one into the weights only for \
             registry releases that list it. Refusing rather than steering with unscaled decoder rows",
            at()
        ),
        (other, _) => bail!(
            "{} normalizes activations at run time (normalize_activations: {other}), so its decoder rows are not \
             fixed steering vectors in the residual stream; sae-onnx refuses it",
            at()
        ),
    };
    Ok(Description {
        format: SaeFormat::SaeLens,
        hook,
        head_index: saelens_head_index(&v),
        dims: Some((d_in, d_sae, format!("'{}'", cfg_path.display()))),
        architecture,
        apply_b_dec_to_input,
        scales,
        config: Some(cfg_path.to_path_buf()),
    })
}

// ------------------------------------------------------------------------------------------------
// provenance

/// The snapshot commit in an HF cache path (`.../snapshots/<40 hex>/...`).
fn snapshot_commit(path: &Path) -> Option<String> {
    let parts: Vec<_> = path.components().collect();
    parts.windows(2).find_map(|w| match (w[0], w[1]) {
        (Component::Normal(a), Component::Normal(b))
            if a == "snapshots"
                && b.len() == 40
                && b.to_string_lossy().bytes().all(|c| c.is_ascii_hexdigit()) =>
        {
            Some(b.to_string_lossy().into_owned())
        }
        _ => None,
    })
}

fn provenance(
    file: &Path,
    format: SaeFormat,
    source: SaeSource,
    fill: impl FnOnce(SaeProvenance) -> SaeProvenance,
) -> Result<SaeProvenance> {
    let meta = std::fs::metadata(file).with_context(|| format!("cannot stat '{}'", file.display()))?;
    let size = meta.len();
    let (sha256, mtime_unix) = if size < HASH_LIMIT {
        (Some(crate::digest::sha256_file(file, "SAE file")?), None)
    } else {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs());
        (None, mtime)
    };
    Ok(fill(SaeProvenance {
        source,
        release: None,
        repo_id: None,
        revision: snapshot_commit(file),
        sae_id: String::new(),
        path: None,
        file: file.canonicalize().unwrap_or_else(|_| PathBuf::from(file)),
        format,
        size,
        sha256,
        mtime_unix,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/sae")
            .join(rel)
    }

    fn expected(key: &str) -> Value {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap();
        v[key].clone()
    }

    fn f32s(v: &Value) -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    }

    /// The registry path of gemma-2b-res-jb / blocks.12 folds norm_scaling_factor; a folder cannot
    /// be given one, so the fold is checked here on the `saelens_norm` fixture against SAELens.
    #[test]
    fn norm_scaling_factor_folds_as_saelens_does() {
        let want = expected("saelens_norm_folded");
        let factor =
            serde_json::from_str::<Value>(&std::fs::read_to_string(fixture("expected.json")).unwrap())
                .unwrap()["norm_factor"]
                .as_f64()
                .unwrap();
        let dir = fixture("local/saelens_norm");
        let desc = saelens_description(&dir.join("cfg.json"), Some(factor), "test").unwrap();
        let origin = Origin {
            source: SaeSource::Folder(dir.clone()),
            release: None,
            repo_id: None,
            sae_id: String::new(),
            path: None,
            label: "test".into(),
        };
        let sae = Sae::build(&dir.join("sae_weights.safetensors"), desc, origin).unwrap();
        let latents: Vec<usize> = want["latents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as usize)
            .collect();
        let rows = sae.decoder_rows(&latents).unwrap();
        for (got, want) in rows.rows.iter().zip(want["W_dec_rows"].as_array().unwrap()) {
            assert_eq!(got, &f32s(want));
        }
        let enc = sae.encoder_parts(&latents).unwrap();
        for (got, want) in enc.w_enc_cols.iter().zip(want["W_enc_cols"].as_array().unwrap()) {
            assert_eq!(got, &f32s(want));
        }
        assert_eq!(enc.b_dec, f32s(&want["b_dec"]));
        assert!(enc.apply_b_dec_to_input);
        // Without a factor the same folder is refused, never loaded unscaled.
        let err = saelens_description(&dir.join("cfg.json"), None, "test")
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("expected_average_only_in"), "{err:#}");
    }

    #[test]
    fn hooks_are_inferred_from_paths_as_saelens_does() {
        let gs = |t: &str| infer_gemma_scope_hook(t).map(|h| h.to_string());
        assert_eq!(
            gs("google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71").unwrap(),
            "blocks.20.hook_resid_post"
        );
        assert_eq!(
            gs("/c/models--google--gemma-scope-9b-pt-att/snapshots/x/layer_3/width_16k/average_l0_5")
                .unwrap(),
            "blocks.3.attn.hook_z"
        );
        assert_eq!(
            gs("google/gemma-scope-2b-pt-mlp/layer_0/width_65k/average_l0_5").unwrap(),
            "blocks.0.hook_mlp_out"
        );
        assert_eq!(
            gs("google/gemma-scope-2b-pt-res/embedding/width_4k/average_l0_6").unwrap(),
            "hook_embed"
        );
        assert!(
            gs("/tmp/my_sae/layer_3")
                .unwrap_err()
                .to_string()
                .contains("hook_name")
        );
        let gs2 = |t: &str| infer_gemma_scope_2_hook(t).map(|h| h.to_string());
        assert_eq!(
            gs2("google/gemma-scope-2-1b-pt/resid_post/layer_7_width_16k_l0_small").unwrap(),
            "blocks.7.hook_resid_post"
        );
        assert_eq!(
            gs2("x/attn_out_all/layer_12_width_262k_l0_big").unwrap(),
            "blocks.12.attn.hook_z"
        );
        assert_eq!(
            gs2("x/mlp_out/layer_1_width_16k_l0_big").unwrap(),
            "blocks.1.hook_mlp_out"
        );
        assert!(gs2("x/transcoder/layer_1_width_16k_l0_big").is_err());
        assert_eq!(
            parse_hf_hook("model.layers.9.output").unwrap().to_string(),
            "blocks.9.hook_resid_post"
        );
        assert_eq!(
            parse_hf_hook("model.language_model.layers.4.self_attn.o_proj.input")
                .unwrap()
                .to_string(),
            "blocks.4.attn.hook_z"
        );
        assert!(parse_hf_hook("model.layers.4.pre_feedforward_layernorm.output").is_err());
        assert_eq!(
            snapshot_commit(Path::new(
                "/c/models--a--b/snapshots/5ae0000000000000000000000000000000c0ffee/x/params.npz"
            ))
            .as_deref(),
            Some("5ae0000000000000000000000000000000c0ffee")
        );
    }
}
