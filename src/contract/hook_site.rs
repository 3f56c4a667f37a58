//! Finding a hook point's tensor in a graph (below the commands: `patch` steers it, `inspect`
//! lists it). Our exports name the tensors after their hooks. Graphs
//! from torch.onnx / optimum keep plain residual Adds (`/model/layers.L/Add_1` is resid_post);
//! onnxruntime-genai graphs fuse the residual sums into `SkipSimplifiedLayerNormalization`, where
//! steering the sum means steering the node's `skip` input (the block's output before the add).

use anyhow::{Result, bail};

use crate::hook::{HookPoint, Site};
use crate::onnx::pb::GraphProto;
use crate::onnx::pb::type_proto;
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

pub fn locate(model: &Model, hook: HookPoint) -> Result<HookSite> {
    let graph = model.graph();
    let site = |tensor: String| -> HookSite {
        let dtype = infer_dtype(graph, &tensor, 0).unwrap_or(DataType::Float);
        HookSite {
            tensor,
            dtype,
            only_reader: None,
        }
    };
    // 1. Our exports: the tensor carries the hook's name.
    let name = hook.to_string();
    if graph.producer(&name).is_some() {
        return Ok(site(name));
    }
    let Some(layer) = hook.layer else {
        return candidates_error(model, hook);
    };
    let scope = format!("/model/layers.{layer}/");
    // 2. torch.onnx / optimum: plain Adds and norms.
    let torch_name = match hook.site {
        Site::ResidPost => Some(format!("{scope}Add_1_output_0")),
        Site::ResidMid => Some(format!("{scope}Add_output_0")),
        Site::MlpOut => Some(format!("{scope}post_feedforward_layernorm/Mul_1_output_0")),
        Site::AttnOut => Some(format!("{scope}post_attention_layernorm/Mul_1_output_0")),
        Site::ResidPre if layer == 0 => Some("/model/Mul_output_0".to_owned()),
        Site::ResidPre => return locate(model, HookPoint::resid_post(layer - 1)),
        Site::AttnZ | Site::Embed => None,
    };
    if let Some(t) = torch_name
        && graph.producer(&t).is_some()
    {
        return Ok(site(t));
    }
    if hook.site == Site::AttnZ {
        // o_proj's input, whatever produced it (torch Reshape, GroupQueryAttention, ...).
        for o_proj in [
            format!("{scope}self_attn/o_proj/MatMul"),
            format!("{scope}attn/o_proj/MatMul"),
        ] {
            if let Some(node) = graph.node.iter().find(|n| n.name() == o_proj) {
                return Ok(site(node.input[0].clone()));
            }
        }
    }
    // 3. onnxruntime-genai: residual sums inside SkipSimplifiedLayerNormalization.
    let block_words: &[&str] = match hook.site {
        Site::ResidPost | Site::MlpOut => &["mlp", "feedforward"],
        Site::ResidMid | Site::AttnOut => &["attn", "attention"],
        _ => &[],
    };
    if !block_words.is_empty() {
        for node in graph
            .node
            .iter()
            .filter(|n| n.op_type().starts_with("Skip") && n.op_type().ends_with("LayerNormalization"))
        {
            let Some(skip) = node.input.get(1) else { continue };
            let producer = graph.producer(skip).map(|p| graph.node[p].name()).unwrap_or("");
            if producer.starts_with(&scope) && block_words.iter().any(|w| producer.contains(w)) {
                let mut found = site(skip.clone());
                if matches!(hook.site, Site::ResidPost | Site::ResidMid) {
                    found.only_reader = Some((node.name().to_owned(), 1));
                }
                return Ok(found);
            }
        }
    }
    candidates_error(model, hook)
}

fn candidates_error(model: &Model, hook: HookPoint) -> Result<HookSite> {
    let graph = model.graph();
    if model.metadata(super::meta::FORMAT).is_some() {
        // Our exports list their hooks; a missing one is not a foreign graph to search.
        let layers = model.metadata(super::meta::NUM_LAYERS).unwrap_or("?");
        bail!(
            "this sae-onnx export ({layers} layers) has no tensor {hook}; `sae-onnx inspect` lists the hooks it has"
        );
    }
    let scope = hook.layer.map(|l| format!("layers.{l}/")).unwrap_or_default();
    let mut candidates: Vec<String> = graph
        .node
        .iter()
        .filter(|n| n.name().contains(&scope) && (n.op_type() == "Add" || n.op_type().contains("LayerNorm")))
        .map(|n| {
            format!(
                "{} ({}) -> {}",
                n.name(),
                n.op_type(),
                n.output.first().map(String::as_str).unwrap_or("")
            )
        })
        .take(12)
        .collect();
    if candidates.is_empty() {
        candidates.push("(no Add or LayerNorm nodes under that layer's scope)".into());
    }
    bail!(
        "cannot find hook {hook} in this graph: it is not an sae-onnx export and no known pattern \
         (torch.onnx Adds, onnxruntime-genai fused norms) matched. Candidates:\n  {}",
        candidates.join("\n  ")
    )
}

/// The element type of `tensor`: declared, an initializer's, a Cast's target, or (for ops that
/// keep their input's type) the type of their first input.
fn infer_dtype(graph: &GraphProto, tensor: &str, depth: usize) -> Option<DataType> {
    if depth > 64 {
        return None;
    }
    let declared = graph
        .value_info
        .iter()
        .chain(&graph.input)
        .chain(&graph.output)
        .find(|v| v.name() == tensor);
    if let Some(type_proto::Value::TensorType(t)) = declared
        .and_then(|v| v.r#type.as_ref())
        .and_then(|t| t.value.as_ref())
        && let Ok(dt) = DataType::try_from(t.elem_type())
        && dt != DataType::Undefined
    {
        return Some(dt);
    }
    if let Some(t) = graph.initializer.iter().find(|t| t.name() == tensor) {
        return Some(t.dtype());
    }
    let node = &graph.node[graph.producer(tensor)?];
    match node.op_type() {
        "Cast" => DataType::try_from(node.attr("to")?.i() as i32).ok(),
        // Gather's type is its data's (input 0 is the table).
        _ => node
            .input
            .iter()
            .find(|i| !i.is_empty())
            .and_then(|i| infer_dtype(graph, i, depth + 1)),
    }
}
