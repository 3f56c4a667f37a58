//! A SAELens `cfg.json`, read as SAELens's `handle_config_defaulting` does.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Description, NO_SCALES, SaeArchitecture, Scale, Scales, read_json, saelens_head_index, saelens_hook_name,
    string_at, usize_at,
};
use crate::hook::HookPoint;
use crate::sae::weights::{ExpectedDims, SaeFormat};

/// Pre-6.0 configs: `hook_point` -> `hook_name`, `apply_b_dec_to_input` defaults to true, boolean
/// `normalize_activations`. `norm_factor` is the registry's `norm_scaling_factor`, which SAELens
/// folds into the weights when the cfg says `expected_average_only_in`. `overrides` is the
/// registry release's `config_overrides`, laid over the file's top-level keys as SAELens's
/// `get_sae_lens_config_from_disk` does (`cfg_dict.update(cfg_overrides)`).
pub(in crate::sae) fn description(
    cfg_path: &Path,
    norm_factor: Option<f64>,
    overrides: Option<&Value>,
    label: &str,
) -> Result<Description> {
    let mut v = read_json(cfg_path)?;
    let at = || format!("SAE {label} ('{}')", cfg_path.display());
    if let (Value::Object(cfg), Some(Value::Object(over))) = (&mut v, overrides) {
        cfg.extend(over.iter().map(|(k, x)| (k.clone(), x.clone())));
    }
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
    let architecture = architecture(&v, &at)?;
    let apply_b_dec_to_input = v
        .get("apply_b_dec_to_input")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let scales = scales(&v, norm_factor, &at)?;
    let centered_input = centered_input(&v, hook, &at)?;
    Ok(Description {
        format: SaeFormat::SaeLens,
        hook,
        head_index: saelens_head_index(&v),
        dims: Some(ExpectedDims {
            d_in,
            d_sae,
            stated_by: format!("'{}'", cfg_path.display()),
        }),
        architecture,
        apply_b_dec_to_input,
        scales,
        centered_input,
        config: Some(cfg_path.to_path_buf()),
    })
}

/// `architecture`, or for configs before 6.0 without one, `topk` when the activation is, else
/// `standard`.
fn architecture(v: &Value, at: &dyn Fn() -> String) -> Result<SaeArchitecture> {
    let version =
        string_at(v, &["sae_lens_version"]).or_else(|| string_at(v, &["metadata", "sae_lens_version"]));
    let pre_6 = version.is_none_or(|ver| {
        ver.split(['.', '-'])
            .next()
            .and_then(|m| m.parse::<u32>().ok())
            .is_none_or(|m| m < 6)
    });
    let activation = string_at(v, &["activation_fn"]).or_else(|| string_at(v, &["activation_fn_str"]));
    let name = match string_at(v, &["architecture"]) {
        Some(a) => a,
        None if pre_6 && activation == Some("topk") => "topk",
        None => "standard",
    };
    if name.contains("transcoder") {
        bail!(
            "{} is a {}; steering needs an SAE",
            at(),
            crate::files::printable(name, 100)
        );
    }
    SaeArchitecture::from_saelens_name(name).with_context(|| {
        format!(
            "{}: architecture '{}' is not one SAELens loads ({})",
            at(),
            crate::files::printable(name, 100),
            SaeArchitecture::known_names()
        )
    })
}

/// The scales of `normalize_activations`: none, or the registry's factor folded in; SAEs that
/// normalize at run time are refused.
fn scales(v: &Value, norm_factor: Option<f64>, at: &dyn Fn() -> String) -> Result<Scales> {
    let normalize = match v.get("normalize_activations") {
        None | Some(Value::Null) => "none".to_owned(),
        Some(Value::Bool(false)) => "none".to_owned(),
        Some(Value::Bool(true)) => "expected_average_only_in".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => bail!("{}: normalize_activations {other} is not understood", at()),
    };
    match (normalize.as_str(), norm_factor) {
        ("none", _) => Ok(NO_SCALES),
        ("expected_average_only_in", Some(f)) => {
            // SAE.fold_activation_norm_scaling_factor: W_enc *= f, W_dec /= f, b_dec /= f.
            let f = f as f32;
            Ok(Scales {
                w_enc: Scale::Mul(f),
                w_dec: Scale::Div(f),
                b_dec: Scale::Div(f),
            })
        }
        ("expected_average_only_in", None) => bail!(
            "{} was trained on activations scaled by a norm_scaling_factor (normalize_activations: \
             expected_average_only_in), and no factor is known for it: SAELens folds one into the weights only for \
             registry releases that list it. Refusing rather than steering with unscaled decoder rows",
            at()
        ),
        // SAELens folds the whitening into the weights when training ends; a cfg that still says so
        // describes weights that expect whitened inputs, with statistics SAELens does not save.
        ("covariance_whitening", _) => bail!(
            "{} expects covariance-whitened activations (normalize_activations: covariance_whitening), and the \
             whitening statistics are not part of a saved SAE; sae-onnx refuses it",
            at()
        ),
        // constant_norm_rescale: x * sqrt(d_in) / |x| in, the inverse out; layer_norm: (x - mean) / std
        // in, x * std + mean out. The factor depends on each token's activation, so a decoder row is
        // not one steering vector in the residual stream.
        (other @ ("constant_norm_rescale" | "layer_norm"), _) => bail!(
            "{} normalizes activations per token at run time (normalize_activations: {other}), so its decoder \
             rows are not fixed steering vectors in the residual stream; sae-onnx refuses it",
            at()
        ),
        (other, _) => bail!(
            "{}: normalize_activations '{}' is not one SAELens knows (none, expected_average_only_in, \
             constant_norm_rescale, layer_norm, covariance_whitening)",
            at(),
            crate::files::printable(other, 100)
        ),
    }
}

/// `model_from_pretrained_kwargs.center_writing_weights` (top level, or under `metadata` in SAELens
/// 6): TransformerLens then centers every weight that writes to the residual stream (embeddings,
/// W_O, W_out and their biases), so the residual stream, and the attention and MLP outputs written
/// to it, are the Hugging Face model's minus their mean over d_model. `attn.hook_z` is read before
/// W_O and is not changed. Any other key of `model_from_pretrained_kwargs` that changes the
/// activations is refused.
fn centered_input(v: &Value, hook: HookPoint, at: &dyn Fn() -> String) -> Result<bool> {
    let kwargs = v
        .get("model_from_pretrained_kwargs")
        .filter(|k| !k.is_null())
        .or_else(|| {
            v.get("metadata")
                .and_then(|m| m.get("model_from_pretrained_kwargs"))
        })
        .filter(|k| !k.is_null());
    let Some(kwargs) = kwargs else {
        return Ok(false);
    };
    let Value::Object(kwargs) = kwargs else {
        bail!("{}: model_from_pretrained_kwargs {kwargs} is not an object", at());
    };
    let mut centered = false;
    for (key, value) in kwargs {
        match (key.as_str(), value) {
            ("center_writing_weights", Value::Bool(b)) => centered = *b,
            // fold_ln folds LayerNorm weights into the next layer's weights and does not change
            // the residual stream; center_unembed only changes the unembedding.
            ("fold_ln" | "center_unembed", Value::Bool(_)) => {}
            ("dtype" | "torch_dtype" | "trust_remote_code" | "device" | "n_devices", _) => {}
            _ => bail!(
                "{}: model_from_pretrained_kwargs sets {key} = {value}, which changes the activations the SAE \
                 was trained on in a way sae-onnx does not reproduce; refusing it",
                at()
            ),
        }
    }
    if centered && hook.site == crate::hook::Site::AttnZ {
        // The z vectors are not residual writes: centering leaves them as they are.
        return Ok(false);
    }
    Ok(centered)
}
