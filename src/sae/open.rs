//! [`Sae`]: an SAE opened from its source (described, its weights file mapped and checked, its
//! provenance recorded), and what it reads for the latents a steering plan names: decoder rows
//! and encoder parts, scaled as SAELens loads them, in range and finite.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Result, anyhow, ensure};

use super::config::{SaeArchitecture, Scales};
use super::provenance::SaeProvenance;
use super::source::{self, Located, SaeSource};
use super::weights::{SaeWeights, StoredArray};
use crate::hook::HookPoint;
use crate::hub::Hub;

/// An opened SAE: its description and its weights file, mapped but not read.
#[derive(Debug)]
pub struct Sae {
    pub hook: HookPoint,
    /// Single-head `attn.hook_z` SAEs (SAELens `hook_head_index`): the head; `d_in` is then d_head.
    pub head_index: Option<usize>,
    pub d_in: usize,
    pub d_sae: usize,
    pub architecture: SaeArchitecture,
    pub apply_b_dec_to_input: bool,
    pub provenance: SaeProvenance,
    /// `release/id`, `repo/id` or the folder, for messages.
    pub label: String,
    /// The files opened (weights, config), so a command can refuse to write over them.
    pub files: Vec<PathBuf>,
    weights: SaeWeights,
    scales: Scales,
    /// Trained on TransformerLens's centered residual stream (`center_writing_weights`).
    centered_input: bool,
}

impl Sae {
    /// Finds and opens the SAE: checks its format, hook and dimensions, but reads no weights.
    pub fn open(hub: &Hub, source: &SaeSource, sae_id: &str) -> Result<Self> {
        Self::from_located(source::locate(hub, source, sae_id)?)
    }

    fn from_located(located: Located) -> Result<Self> {
        let Located {
            weights: weights_file,
            description: desc,
            origin,
        } = located;
        let files = std::iter::once(weights_file.clone())
            .chain(desc.config.clone())
            .collect();
        let weights = SaeWeights::open(&weights_file, desc.dims.as_ref())?;
        let provenance = SaeProvenance::record(&weights_file, desc.format, &origin)?;
        Ok(Self {
            hook: desc.hook,
            head_index: desc.head_index,
            d_in: weights.d_in,
            d_sae: weights.d_sae,
            architecture: desc.architecture,
            apply_b_dec_to_input: desc.apply_b_dec_to_input,
            provenance,
            label: origin.label,
            files,
            weights,
            scales: desc.scales,
            centered_input: desc.centered_input,
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
        let names = &self.weights.names;
        let mut rows = self.weights.array(&names.w_dec)?.rows(latents)?;
        rows.iter_mut().for_each(|r| self.scales.w_dec.apply(r));
        for (row, &latent) in rows.iter().zip(latents) {
            self.check_finite(&names.w_dec, Some(latent), row)?;
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
        let names = &self.weights.names;
        let mut w_enc_cols = self.weights.array(&names.w_enc)?.cols(latents)?;
        w_enc_cols.iter_mut().for_each(|c| self.scales.w_enc.apply(c));
        for (col, &latent) in w_enc_cols.iter().zip(latents) {
            self.check_finite(&names.w_enc, Some(latent), col)?;
        }
        let b_enc = self.vector(&names.b_enc, self.d_sae)?.elements(latents)?;
        for (b, &latent) in b_enc.iter().zip(latents) {
            self.check_finite(&names.b_enc, Some(latent), std::slice::from_ref(b))?;
        }
        let mut b_enc = b_enc;
        let threshold = self.thresholds(latents)?;
        let mut b_dec = self.vector(&names.b_dec, self.d_in)?.to_vec()?;
        self.scales.b_dec.apply(&mut b_dec);
        self.check_finite(&names.b_dec, None, &b_dec)?;
        if self.centered_input {
            fold_centering(&mut w_enc_cols, &mut b_enc, &b_dec, self.apply_b_dec_to_input);
        }
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
            architecture: self.architecture,
            provenance: self.provenance.clone(),
        })
    }

    /// The JumpReLU threshold of each latent, if the file has one (stored as is or as its log).
    fn thresholds(&self, latents: &[usize]) -> Result<Option<Vec<f32>>> {
        let names = &self.weights.names;
        let Some(name) = &names.threshold else {
            return Ok(None);
        };
        let mut t = self.vector(name, self.d_sae)?.elements(latents)?;
        if names.log_threshold {
            t.iter_mut().for_each(|v| *v = v.exp());
        }
        for (v, &latent) in t.iter().zip(latents) {
            self.check_finite(name, Some(latent), std::slice::from_ref(v))?;
        }
        Ok(Some(t))
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

/// Folds TransformerLens's centering into the encoder, exactly: the SAE computes
/// `(P x - b_dec) · w + b_enc` with `P x = x - mean(x)`, and since `P` is symmetric and
/// `P b_dec = b_dec - mean(b_dec)`, that is `(x - b_dec) · (P w) + b_enc - mean(b_dec) · sum(w)`
/// (without `apply_b_dec_to_input`: `x · (P w) + b_enc`). Sums in f64, stored in f32.
fn fold_centering(w_enc_cols: &mut [Vec<f32>], b_enc: &mut [f32], b_dec: &[f32], apply_b_dec_to_input: bool) {
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len().max(1) as f64;
    let b_dec_mean = mean(b_dec);
    for (col, b) in w_enc_cols.iter_mut().zip(b_enc.iter_mut()) {
        let col_mean = mean(col);
        if apply_b_dec_to_input {
            *b = (f64::from(*b) - b_dec_mean * col_mean * col.len() as f64) as f32;
        }
        col.iter_mut()
            .for_each(|x| *x = (f64::from(*x) - col_mean) as f32);
    }
}

/// Non-finite values in one latent's weights: the fault of the plan rows naming that latent,
/// so the plan reader can point at them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteLatent {
    pub latent: usize,
    pub message: String,
}

impl fmt::Display for NonFiniteLatent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NonFiniteLatent {}

/// Decoder rows `W_dec[latent]`, one per requested latent, as f32, in the input space of the hook
/// (any scaling SAELens applies at load time, e.g. the Gemma Scope embedding SAEs' `sqrt(d_in)` or
/// a folded `norm_scaling_factor`, is applied).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderRows {
    pub hook: HookPoint,
    /// For SAEs trained on one attention head (`hook_head_index`): that head. `d_in` is then d_head.
    pub head_index: Option<usize>,
    pub d_in: usize,
    pub d_sae: usize,
    pub latents: Vec<usize>,
    /// `rows[i]` is `W_dec[latents[i]]`, `d_in` values.
    pub rows: Vec<Vec<f32>>,
    pub provenance: SaeProvenance,
}

/// What encoding needs for a few latents (for `clamp`): `pre_i = (x - [b_dec if
/// apply_b_dec_to_input]) · W_enc[:, i] + b_enc[i]`, then the architecture's activation
/// (JumpReLU: `pre_i · [pre_i > threshold_i]`; standard: ReLU).
#[derive(Debug, Clone, PartialEq)]
pub struct EncoderParts {
    pub hook: HookPoint,
    pub head_index: Option<usize>,
    pub d_in: usize,
    pub d_sae: usize,
    pub latents: Vec<usize>,
    /// `w_enc_cols[i]` is `W_enc[:, latents[i]]`, `d_in` values.
    pub w_enc_cols: Vec<Vec<f32>>,
    /// `b_enc[latents[i]]`.
    pub b_enc: Vec<f32>,
    /// `threshold[latents[i]]` for JumpReLU SAEs.
    pub threshold: Option<Vec<f32>>,
    /// All of `b_dec` (`d_in` values).
    pub b_dec: Vec<f32>,
    pub apply_b_dec_to_input: bool,
    pub architecture: SaeArchitecture,
    pub provenance: SaeProvenance,
}

/// A latent index not below the SAE's width. The plan reader adds file and line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatentOutOfRange {
    pub latent: usize,
    pub d_sae: usize,
    /// The SAE, as `release/id`, `repo/id` or a folder.
    pub sae: String,
}

impl fmt::Display for LatentOutOfRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "latent {} is out of range: SAE {} has d_sae = {} latents (0..={})",
            self.latent,
            self.sae,
            self.d_sae,
            self.d_sae.saturating_sub(1)
        )
    }
}

impl std::error::Error for LatentOutOfRange {}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;
    use crate::sae::config::saelens;
    use crate::sae::source::Origin;

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
        let desc = saelens::description(&dir.join("cfg.json"), Some(factor), None, "test").unwrap();
        let origin = Origin {
            source: SaeSource::Folder(dir.clone()),
            release: None,
            repo_id: None,
            sae_id: String::new(),
            path: None,
            label: "test".into(),
        };
        let sae = Sae::from_located(Located {
            weights: dir.join("sae_weights.safetensors"),
            description: desc,
            origin,
        })
        .unwrap();
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
        let err = saelens::description(&dir.join("cfg.json"), None, None, "test")
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("expected_average_only_in"), "{err:#}");
    }
}
