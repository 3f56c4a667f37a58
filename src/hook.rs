//! Hook points: where in a transformer a steering vector goes, named as TransformerLens / SAELens
//! name them (`blocks.20.hook_resid_post`). lm-eval's `steered` model names module paths instead
//! (`layers.20` for Gemma 2, `model.layers.20` for Gemma 3: the output of decoder layer 20); both
//! parse to the same [`HookPoint`]. [`HookPoint`]'s `Display` is the TransformerLens name, which is
//! also the tensor name our exported graphs give that activation.

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};

use crate::files::printable;

/// Where in a decoder layer (DESIGN.md §2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// `blocks.L.hook_resid_pre`: the input of decoder layer L.
    ResidPre,
    /// `blocks.L.hook_resid_mid`: after the attention residual add.
    ResidMid,
    /// `blocks.L.hook_resid_post`: the output of decoder layer L.
    ResidPost,
    /// `blocks.L.hook_attn_out`: the attention output (after post_attention_layernorm in Gemma 2/3).
    AttnOut,
    /// `blocks.L.hook_mlp_out`: the MLP output (after post_feedforward_layernorm in Gemma 2/3).
    MlpOut,
    /// `blocks.L.attn.hook_z`: the per-head attention output, o_proj's input `[.., n_heads*head_dim]`.
    AttnZ,
    /// `hook_embed`: the token embedding (no layer).
    Embed,
}

impl Site {
    /// Every site, in layer order.
    pub const ALL: [Site; 7] = [
        Site::Embed,
        Site::ResidPre,
        Site::AttnZ,
        Site::AttnOut,
        Site::ResidMid,
        Site::MlpOut,
        Site::ResidPost,
    ];

    /// The TransformerLens suffix after `blocks.L.` (`hook_embed` for [`Site::Embed`]).
    pub fn suffix(self) -> &'static str {
        match self {
            Site::ResidPre => "hook_resid_pre",
            Site::ResidMid => "hook_resid_mid",
            Site::ResidPost => "hook_resid_post",
            Site::AttnOut => "hook_attn_out",
            Site::MlpOut => "hook_mlp_out",
            Site::AttnZ => "attn.hook_z",
            Site::Embed => "hook_embed",
        }
    }

    fn from_suffix(suffix: &str) -> Option<Site> {
        Site::ALL
            .into_iter()
            .find(|s| *s != Site::Embed && s.suffix() == suffix)
    }
}

/// A hook point: a site, in a layer (every site but [`Site::Embed`] has one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HookPoint {
    pub layer: Option<usize>,
    pub site: Site,
}

const ACCEPTED: &str = "accepted forms: TransformerLens names `blocks.L.hook_resid_pre`, `blocks.L.hook_resid_mid`, \
     `blocks.L.hook_resid_post`, `blocks.L.hook_attn_out`, `blocks.L.hook_mlp_out`, `blocks.L.attn.hook_z`, \
     `hook_embed`; lm-eval module paths `layers.L` / `model.layers.L` (the output of layer L = \
     `blocks.L.hook_resid_post`), `layers.L.post_attention_layernorm` (= hook_attn_out) and \
     `layers.L.post_feedforward_layernorm` (= hook_mlp_out) for Gemma 2/3";

impl HookPoint {
    pub fn new(layer: usize, site: Site) -> Self {
        assert!(site != Site::Embed, "hook_embed has no layer");
        Self {
            layer: Some(layer),
            site,
        }
    }

    /// `hook_embed`.
    pub fn embed() -> Self {
        Self {
            layer: None,
            site: Site::Embed,
        }
    }

    /// `blocks.{layer}.hook_resid_post`, the output of decoder layer `layer`.
    pub fn resid_post(layer: usize) -> Self {
        Self::new(layer, Site::ResidPost)
    }

    /// Parses a TransformerLens name (`blocks.20.hook_resid_post`, `blocks.3.attn.hook_z`,
    /// `hook_embed`) or an lm-eval module path (`layers.20`, `model.layers.20`: the output of
    /// layer 20). Surrounding whitespace is ignored.
    pub fn parse(name: &str) -> Result<Self> {
        let s = name.trim();
        if s == "hook_embed" {
            return Ok(Self::embed());
        }
        if let Some(rest) = s.strip_prefix("blocks.") {
            if let Some((layer, suffix)) = rest.split_once('.')
                && let Some(layer) = parse_layer(layer)
            {
                if let Some(site) = Site::from_suffix(suffix) {
                    return Ok(Self::new(layer, site));
                }
                bail!(
                    "unknown hook point '{}': '{}' is not a known site of block {layer}; {ACCEPTED}",
                    printable(s, 100),
                    printable(suffix, 100)
                );
            }
        } else if let Some(path) = s
            .strip_prefix("model.layers.")
            .or_else(|| s.strip_prefix("layers."))
        {
            let (layer, module) = path.split_once('.').unwrap_or((path, ""));
            if let Some(layer) = parse_layer(layer) {
                // lm-eval hookpoints are module outputs; these modules' outputs are hook sites.
                let site = match module {
                    "" => Some(Site::ResidPost),
                    "post_feedforward_layernorm" => Some(Site::MlpOut),
                    "post_attention_layernorm" => Some(Site::AttnOut),
                    _ => None,
                };
                if let Some(site) = site {
                    return Ok(Self::new(layer, site));
                }
                bail!(
                    "unknown hook point '{}': the output of module '{}' is not a hook site sae-onnx steers \
                     (layers.L, layers.L.post_attention_layernorm, layers.L.post_feedforward_layernorm are); {ACCEPTED}",
                    printable(s, 100),
                    printable(module, 100)
                );
            }
        }
        bail!("unknown hook point '{}'; {ACCEPTED}", printable(s, 100))
    }

    /// The TransformerLens name (same as `to_string()`).
    pub fn name(&self) -> String {
        self.to_string()
    }
}

/// A decimal layer number without sign or leading zeros (so `layers.020` is refused, not guessed).
fn parse_layer(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0')) {
        return None;
    }
    s.parse().ok()
}

impl FromStr for HookPoint {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.site, self.layer) {
            (Site::Embed, _) => f.write_str("hook_embed"),
            (site, Some(layer)) => write!(f, "blocks.{layer}.{}", site.suffix()),
            // Only reachable by building the struct by hand.
            (site, None) => write!(f, "blocks.?.{}", site.suffix()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transformer_lens_names_round_trip() {
        for name in [
            "blocks.0.hook_resid_pre",
            "blocks.20.hook_resid_post",
            "blocks.3.hook_resid_mid",
            "blocks.11.hook_attn_out",
            "blocks.7.hook_mlp_out",
            "blocks.3.attn.hook_z",
            "hook_embed",
        ] {
            let hook = HookPoint::parse(name).unwrap();
            assert_eq!(hook.to_string(), name);
            assert_eq!(name.parse::<HookPoint>().unwrap(), hook);
        }
        assert_eq!(
            HookPoint::parse("blocks.3.attn.hook_z").unwrap(),
            HookPoint::new(3, Site::AttnZ)
        );
        assert_eq!(HookPoint::parse("hook_embed").unwrap().layer, None);
    }

    #[test]
    fn lm_eval_module_paths_are_resid_post() {
        assert_eq!(HookPoint::parse("layers.20").unwrap(), HookPoint::resid_post(20));
        assert_eq!(
            HookPoint::parse("model.layers.20").unwrap(),
            HookPoint::resid_post(20)
        );
        assert_eq!(
            HookPoint::parse(" layers.0 ").unwrap().to_string(),
            "blocks.0.hook_resid_post"
        );
    }

    #[test]
    fn unknown_names_list_the_accepted_forms() {
        for bad in [
            "",
            "blocks.20",
            "blocks.x.hook_resid_post",
            "blocks.20.hook_resid",
            "blocks.-1.hook_resid_post",
            "blocks.020.hook_resid_post",
            "layers.20.mlp",
            "model.layers.",
            "resid_post",
            "blocks.20.hook_embed",
        ] {
            let err = HookPoint::parse(bad).unwrap_err().to_string();
            assert!(err.contains("unknown hook point"), "{bad}: {err}");
            assert!(
                err.contains("blocks.L.hook_resid_post") && err.contains("layers.L"),
                "{err}"
            );
        }
    }
}
