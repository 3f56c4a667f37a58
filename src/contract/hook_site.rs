//! Finding a hook point's tensor in a graph (below the commands: `patch` steers it, `inspect`
//! lists it). Our exports name the tensors after their hooks; any other graph is mapped from its
//! data flow ([`DecoderMap`]). Where a fused `Skip…LayerNormalization` adds a residual sum
//! (onnxruntime-genai, ONNX Runtime's optimizer), steering the sum means steering the node's
//! block input (the block's output before the add).

use anyhow::{Context, Result, bail};

use super::decoder_map::{DecoderMap, ResidualSum};

use crate::hook::{HookPoint, Site};
use crate::onnx::pb::GraphProto;
use crate::onnx::{DataType, Model};

/// Where to add a hook's vector.
#[derive(Debug, Clone, PartialEq)]
pub struct HookSite {
    pub tensor: String,
    /// The tensor's element type: the steering constant must match it.
    pub dtype: DataType,
    /// `Some((node, input))`: steer only this input of this node (fused residual sums), instead
    /// of every reader of the tensor.
    pub only_reader: Option<(String, usize)>,
}

/// The hook's site in `model`: by name in our exports, else from the recovered decoder.
pub fn locate(model: &Model, hook: HookPoint) -> Result<HookSite> {
    if let Some(site) = by_name(model, hook) {
        return Ok(site);
    }
    if model.metadata(super::meta::FORMAT).is_some() {
        // Our exports name every hook they have; a missing one is not a foreign graph to search.
        let layers = model.metadata(super::meta::NUM_LAYERS).unwrap_or("?");
        bail!(
            "this sae-onnx export ({layers} layers) has no tensor {hook}; `sae-onnx inspect` lists the hooks it has"
        );
    }
    let map = DecoderMap::recover(model)
        .with_context(|| format!("cannot find {hook}: the graph's decoder could not be recovered"))?;
    locate_in(model, &map, hook)
}

/// Our exports: the tensor carries the hook's name.
fn by_name(model: &Model, hook: HookPoint) -> Option<HookSite> {
    let name = hook.to_string();
    model.graph().producer(&name)?;
    Some(site(model.graph(), name, None))
}

/// The hook's site in a recovered decoder.
pub fn locate_in(model: &Model, map: &DecoderMap, hook: HookPoint) -> Result<HookSite> {
    let graph = model.graph();
    let Some(layer) = hook.layer else {
        return Ok(site(graph, map.embed.clone(), None));
    };
    let n = map.layers.len();
    let Some(sites) = map.layers.get(layer) else {
        bail!(
            "the graph's residual chain has {n} layers (blocks 0 to {}), so it has no {hook}",
            n.saturating_sub(1)
        );
    };
    Ok(match hook.site {
        Site::ResidPre if layer == 0 => site(graph, map.stream_start.clone(), None),
        Site::ResidPre => return locate_in(model, map, HookPoint::resid_post(layer - 1)),
        Site::ResidMid => sum_site(model, &sites.attn)?,
        Site::ResidPost => sum_site(model, &sites.mlp)?,
        Site::AttnOut => site(graph, sites.attn.block.clone(), None),
        Site::MlpOut => site(graph, sites.mlp.block.clone(), None),
        Site::AttnZ => match &sites.attn_z {
            Ok(z) => site(graph, z.clone(), None),
            Err(why) => bail!("cannot find {hook}: {why}"),
        },
        Site::Embed => unreachable!("hook_embed has no layer"),
    })
}

/// A residual sum's site: after a plain Add; through the block input of a fused norm, which
/// steers both the sum and its normalized copy (adding after the sum output would miss the
/// latter, which the next block reads).
fn sum_site(model: &Model, sum: &ResidualSum) -> Result<HookSite> {
    let graph = model.graph();
    if !sum.fused {
        let tensor = sum.sum.clone().context("a plain Add has an output")?;
        return Ok(site(graph, tensor, None));
    }
    let node = graph.node[sum.node].name();
    if node.is_empty() || graph.node.iter().filter(|n| n.name() == node).count() != 1 {
        bail!(
            "the fused norm that adds this residual sum has no unique node name ('{node}'), so it \
             cannot be steered; name the graph's nodes uniquely (e.g. with onnx's name tools)"
        );
    }
    Ok(site(
        graph,
        sum.block.clone(),
        Some((node.to_owned(), sum.block_input)),
    ))
}

fn site(graph: &GraphProto, tensor: String, only_reader: Option<(String, usize)>) -> HookSite {
    let dtype = graph.element_type(&tensor).unwrap_or(DataType::Float);
    HookSite {
        tensor,
        dtype,
        only_reader,
    }
}
