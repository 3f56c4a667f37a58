//! The position masks of [`PositionRule`]s: float32 `[batch, seq, 1]`, 1 where a row steers and 0
//! elsewhere, computed in the graph from `input_ids`, `attention_mask` and (for `prompt` and
//! `generated`) the prompt boundary input [`PROMPT_LENGTH`], so every runtime applies the rules.
//!
//! A token's position is the running sum of `attention_mask` minus one, over the past and the new
//! tokens, at the new tokens (see [`super::rules`]): the past length comes from the mask's width
//! minus the new tokens', so full-sequence and decoding graphs share the nodes. Only operators whose
//! signature is the same from opset 11 on are used (Reshape, not Unsqueeze; MatMul with ones, not
//! ReduceSum), so the masks fit any graph a runtime still loads.

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::hook_builder::HookBuilder;
use super::rules::PositionRule;
use crate::contract::{ATTENTION_MASK, INPUT_IDS, MAX_CONTEXT, PROMPT_LENGTH};
use crate::onnx::DataType;
use crate::onnx::make::{Dim, make_tensor, make_tensor_value_info};
use crate::onnx::pb::GraphProto;

/// The lowest opset whose CumSum, Slice (inputs form), Equal and Less the masks use.
pub(super) const MIN_OPSET: i64 = 11;

/// What the masks read besides the graph.
pub(super) struct MaskInputs<'a> {
    /// The tokenizer's special token ids (transformers' `all_special_ids`), for `no_special`.
    pub special_ids: Option<&'a [i64]>,
}

/// A hook's masks, each built once.
pub(super) struct Masks<'a> {
    inputs: MaskInputs<'a>,
    /// The graph already has the prompt boundary input (an earlier hook or patch added it).
    has_prompt_length: bool,
    positions: Option<String>,
    built: BTreeMap<PositionRule, String>,
}

impl<'a> Masks<'a> {
    pub(super) fn new(graph: &GraphProto, inputs: MaskInputs<'a>) -> Self {
        Self {
            inputs,
            has_prompt_length: graph.input.iter().any(|i| i.name() == PROMPT_LENGTH),
            positions: None,
            built: BTreeMap::new(),
        }
    }

    /// The mask of `rule` (not `All`, which needs none).
    pub(super) fn mask(
        &mut self,
        b: &mut HookBuilder,
        graph: &GraphProto,
        rule: PositionRule,
    ) -> Result<String> {
        if let Some(m) = self.built.get(&rule) {
            return Ok(m.clone());
        }
        let scope = format!("mask_{}", rule_scope(rule));
        let keep = match rule {
            PositionRule::All => bail!("steering at every position needs no mask"),
            PositionRule::NoSpecial => {
                let specials = self.special(b, graph, &scope)?;
                // [batch, seq, 1]: 1 - (number of special ids equal to the token, 0 or 1)
                let one = b.constant_f32(&format!("{scope}/one"), &[], &[1.0]);
                let keep = b.node("Sub", &[&one, &specials], &format!("{scope}/keep"), vec![]);
                self.built.insert(rule, keep.clone());
                return Ok(keep);
            }
            PositionRule::Prompt | PositionRule::Generated => {
                let pos = self.positions(b, graph)?;
                let length = self.prompt_length(b)?;
                let in_prompt = b.node("Less", &[&pos, &length], &format!("{scope}/in_prompt"), vec![]);
                if rule == PositionRule::Prompt {
                    in_prompt
                } else {
                    b.node("Not", &[&in_prompt], &format!("{scope}/generated"), vec![])
                }
            }
            PositionRule::Range { start, end } => {
                let pos = self.positions(b, graph)?;
                let start = b.b.const_scalar_i64(start as i64);
                let before = b.node("Less", &[&pos, &start], &format!("{scope}/before"), vec![]);
                let from = b.node("Not", &[&before], &format!("{scope}/from"), vec![]);
                match end {
                    Some(end) => {
                        let end = b.b.const_scalar_i64(end as i64);
                        let to = b.node("Less", &[&pos, &end], &format!("{scope}/to"), vec![]);
                        b.node("And", &[&from, &to], &format!("{scope}/inside"), vec![])
                    }
                    None => from,
                }
            }
        };
        let keep = b.cast(&keep, DataType::Float, &format!("{scope}/keep_f32"));
        let keep = self.per_position(b, &keep, &scope);
        self.built.insert(rule, keep.clone());
        Ok(keep)
    }

    /// `[batch, seq]` → `[batch, seq, 1]`, to scale the `[batch, seq, width]` change.
    fn per_position(&self, b: &mut HookBuilder, x: &str, scope: &str) -> String {
        let shape = b.b.const_i64(&[0, 0, 1]);
        b.node("Reshape", &[x, &shape], &format!("{scope}/per_position"), vec![])
    }

    /// Each new token's position in its row: `cumsum(attention_mask) - 1` at the new tokens,
    /// int64 `[batch, seq]`.
    fn positions(&mut self, b: &mut HookBuilder, graph: &GraphProto) -> Result<String> {
        if let Some(p) = &self.positions {
            return Ok(p.clone());
        }
        require_input(graph, ATTENTION_MASK)?;
        require_input(graph, INPUT_IDS)?;
        let mask = b.cast(ATTENTION_MASK, DataType::Int64, "positions/mask_i64");
        let axis = b.b.const_scalar_i64(1);
        let counted = b.node("CumSum", &[&mask, &axis], "positions/counted", vec![]);
        let one = b.b.const_scalar_i64(1);
        let all = b.node("Sub", &[&counted, &one], "positions/all", vec![]);
        let second = b.b.const_i64(&[1]);
        let total = b.node("Shape", &[ATTENTION_MASK], "positions/mask_shape", vec![]);
        let total = b.node("Gather", &[&total, &second], "positions/total", vec![("axis", 0)]);
        let new = b.node("Shape", &[INPUT_IDS], "positions/ids_shape", vec![]);
        let new = b.node("Gather", &[&new, &second], "positions/new", vec![("axis", 0)]);
        let past = b.node("Sub", &[&total, &new], "positions/past", vec![]);
        let pos = b.node("Slice", &[&all, &past, &total, &second], "positions", vec![]);
        self.positions = Some(pos.clone());
        Ok(pos)
    }

    /// The prompt boundary as `[batch, 1]` (or `[1, 1]`, its default): the graph input, backed by
    /// an initializer holding [`MAX_CONTEXT`] so that a caller who feeds nothing has every position
    /// in the prompt.
    fn prompt_length(&mut self, b: &mut HookBuilder) -> Result<String> {
        if !self.has_prompt_length {
            if !b.b.claim(PROMPT_LENGTH) {
                bail!("cannot add the input '{PROMPT_LENGTH}': the graph already has a tensor of that name");
            }
            b.b.input(make_tensor_value_info(
                PROMPT_LENGTH,
                DataType::Int64,
                &[Dim::Param("batch".into())],
            ));
            b.b.initializer(make_tensor(
                PROMPT_LENGTH,
                DataType::Int64,
                &[1],
                (MAX_CONTEXT as i64).to_le_bytes().to_vec(),
            ));
            self.has_prompt_length = true;
        }
        let column = b.b.const_i64(&[-1, 1]);
        Ok(b.node(
            "Reshape",
            &[PROMPT_LENGTH, &column],
            "prompt_length/column",
            vec![],
        ))
    }

    /// float32 `[batch, seq, 1]`: 1 where the input token is a special token.
    fn special(&mut self, b: &mut HookBuilder, graph: &GraphProto, scope: &str) -> Result<String> {
        let Some(ids) = self.inputs.special_ids.filter(|ids| !ids.is_empty()) else {
            bail!(
                "positions no_special needs the tokenizer's special tokens, and the model's tokenizer lists none \
                 (no tokenizer_config.json or special_tokens_map.json beside its tokenizer.json?)"
            );
        };
        require_input(graph, INPUT_IDS)?;
        let raw: Vec<u8> = ids.iter().flat_map(|v| v.to_le_bytes()).collect();
        let name = b.b.fresh(&format!("{}/{scope}/special_ids", b.tensor_scope));
        let specials =
            b.b.initializer(make_tensor(&name, DataType::Int64, &[ids.len() as i64], raw));
        let tokens = b.cast(INPUT_IDS, DataType::Int64, &format!("{scope}/ids_i64"));
        let tokens = self.per_position(b, &tokens, scope);
        let equal = b.node("Equal", &[&tokens, &specials], &format!("{scope}/is_id"), vec![]);
        let equal = b.cast(&equal, DataType::Float, &format!("{scope}/is_id_f32"));
        let ones = vec![1.0; ids.len()];
        let ones = b.constant_f32(&format!("{scope}/ones"), &[ids.len(), 1], &ones);
        Ok(b.node("MatMul", &[&equal, &ones], &format!("{scope}/is_special"), vec![]))
    }
}

/// A name for the rule's nodes (`mask_no_special`, `mask_3_10`).
fn rule_scope(rule: PositionRule) -> String {
    rule.to_string()
        .replace(':', "_")
        .trim_end_matches('_')
        .to_owned()
}

fn require_input(graph: &GraphProto, name: &str) -> Result<()> {
    if !graph.input.iter().any(|i| i.name() == name) {
        bail!(
            "steering at chosen positions reads the graph input '{name}', which this graph does not have; \
             only positions all works on it"
        );
    }
    Ok(())
}
