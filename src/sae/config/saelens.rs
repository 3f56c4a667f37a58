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
/// folds into the weights when the cfg says `expected_average_only_in`.
pub(in crate::sae) fn description(
    cfg_path: &Path,
    norm_factor: Option<f64>,
    label: &str,
) -> Result<Description> {
    let v = read_json(cfg_path)?;
    let at = || format!("SAE {label} ('{}')", cfg_path.display());
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
        (other, _) => bail!(
            "{} normalizes activations at run time (normalize_activations: {other}), so its decoder rows are not \
             fixed steering vectors in the residual stream; sae-onnx refuses it",
            at()
        ),
    }
}
