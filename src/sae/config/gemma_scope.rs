//! Gemma Scope (`params.npz`) and Gemma Scope 2 (`params.safetensors`): JumpReLU SAEs without a
//! SAELens config. The registry states their hook; outside it the hook comes from a config file
//! next to the weights or from the path, as SAELens's loaders infer it from repo and folder names.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{
    Description, NO_SCALES, SaeArchitecture, Scale, Scales, read_json, saelens_head_index, saelens_hook_name,
    string_at,
};
use crate::hook::{HookPoint, Site};
use crate::sae::weights::{ExpectedDims, SaeFormat, npz_decoder_shape};

/// Gemma Scope / Gemma Scope 2 with a known hook: JumpReLU, `b_dec` not subtracted. The Gemma
/// Scope embedding SAEs were trained on unscaled embeddings; SAELens multiplies their `W_dec` by
/// sqrt(d_in) and divides `W_enc` by it, and so do we.
pub(in crate::sae) fn description(
    format: SaeFormat,
    hook: HookPoint,
    head_index: Option<usize>,
    dims: Option<ExpectedDims>,
) -> Description {
    let scales = match (format, hook.site, &dims) {
        (SaeFormat::GemmaScopeNpz, Site::Embed, Some(dims)) => {
            let s = (dims.d_in as f64).sqrt() as f32;
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
        architecture: SaeArchitecture::JumpRelu,
        apply_b_dec_to_input: false,
        scales,
        centered_input: false,
        config: None,
    }
}

/// Gemma Scope / Gemma Scope 2 outside the registry: the hook comes from a config file next to the
/// weights (Gemma Scope 2 `config.json` with `hf_hook_point_in`, or a cfg.json with `hook_name`),
/// else from the path, as SAELens's loaders infer it from repo and folder names.
pub(in crate::sae) fn description_inferred(
    format: SaeFormat,
    weights: &Path,
    config: Option<&Path>,
    path_text: &str,
) -> Result<Description> {
    let (hook, head_index) = match config {
        Some(config) => hook_from_config(config)?,
        None => (None, None),
    };
    let hook = match hook {
        Some(h) => h,
        None => match format {
            SaeFormat::GemmaScope2Safetensors => infer_gemma_scope_2_hook(path_text)?,
            _ => infer_gemma_scope_hook(path_text)?,
        },
    };
    let mut dims = None;
    if format == SaeFormat::GemmaScopeNpz && hook.site == Site::Embed {
        // The sqrt(d_in) scale needs d_in: read it from W_dec's shape.
        dims = npz_decoder_shape(weights)?.map(|(d_sae, d_in)| ExpectedDims {
            d_in,
            d_sae,
            stated_by: "W_dec".into(),
        });
    }
    Ok(Description {
        config: config.map(Path::to_path_buf),
        ..description(format, hook, head_index, dims)
    })
}

/// The hook (and head) a config file next to Gemma Scope weights names, after checking it
/// describes a JumpReLU SAE.
fn hook_from_config(config: &Path) -> Result<(Option<HookPoint>, Option<usize>)> {
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
    // Gemma Scope 2 spells it `jump_relu`, SAELens `jumprelu`.
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
        let hook = parse_hf_hook(hf).with_context(|| format!("'{}': hf_hook_point_in", config.display()))?;
        Ok((Some(hook), None))
    } else if let Some(name) = saelens_hook_name(&v) {
        let hook = HookPoint::parse(name).with_context(|| format!("'{}': hook_name", config.display()))?;
        Ok((Some(hook), saelens_head_index(&v)))
    } else {
        Ok((None, None))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
