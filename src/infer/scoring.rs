//! The scoring rewrite: a causal LM whose output is `logits [batch, seq, vocab]` becomes one that
//! returns only what loglikelihood scoring needs. The LM head runs at the scored positions alone
//! (not at every position), and log-softmax plus the target gather happen in the graph:
//!
//! inputs  `score_positions [batch, k]` (int64): positions whose next-token distribution is scored,
//!         `score_targets [batch, k, c]` (int64): the candidate tokens at each position;
//! outputs `target_logprobs [batch, k, c]` (float32), `greedy_tokens [batch, k]` (int64, argmax).
//!
//! MMLU's four answers are four candidates at one position: one forward per question.
//! It works on foreign graphs too: the LM head is found structurally, walking back from `logits`
//! through elementwise ops (softcap, casts, reshapes) to the MatMul/Gemm that makes the vocabulary.

use anyhow::{Context, Result, bail};

use crate::onnx::make::{AttrValue, make_node, make_tensor_value_info};
use crate::onnx::pb::{GraphProto, NodeProto};
use crate::onnx::{DataType, Model};

pub const POSITIONS: &str = "score_positions";
pub const TARGETS: &str = "score_targets";
pub const TARGET_LOGPROBS: &str = "target_logprobs";
pub const GREEDY_TOKENS: &str = "greedy_tokens";

/// Ops that may sit between the LM head's matrix product and the `logits` output, replayed on the
/// gathered positions. Reshapes are dropped (the gathered tensor has its own shape).
const PASS_THROUGH: [&str; 8] = ["Cast", "Mul", "Div", "Tanh", "Add", "Sub", "Identity", "Reshape"];

/// What was found: the hidden state feeding the LM head and the ops from the product to the logits.
#[derive(Debug)]
struct LmHead {
    hidden: String,
    product: NodeProto,
    /// Ops after the product in execution order (Reshapes excluded), each with the index of its
    /// input that carries the logits.
    tail: Vec<(NodeProto, usize)>,
}

/// Rewrites `model` in place into the scoring form; the original `logits` output is removed.
pub fn add_scoring_head(model: &mut Model, logits: &str) -> Result<()> {
    let graph = model.graph_mut();
    if !graph.output.iter().any(|o| o.name() == logits) {
        bail!("the model has no output named '{logits}'");
    }
    let head = find_lm_head(graph, logits)?;
    let mut nodes = Vec::new();
    let name = |s: &str| format!("/scoring/{s}");
    let node =
        |op: &str, inputs: &[&str], output: &str| make_node(op, inputs, &[output], name(op) + "_" + output);

    // hidden [B, S, H] -> [B, K, H] at the scored positions.
    nodes.push(node(
        "Unsqueeze",
        &[POSITIONS, &name("axis_last")],
        &name("positions3"),
    ));
    graph.initializer.push(crate::onnx::make::make_tensor_i64(
        &name("axis_last"),
        &[1],
        &[-1],
    ));
    nodes.push(
        make_node(
            "GatherND",
            &[&head.hidden, &name("positions3")],
            &[&name("hidden_at")],
            name("GatherND"),
        )
        .with_attr("batch_dims", AttrValue::Int(1)),
    );
    let mut current = match head.product.op_type() {
        "Gemm" => {
            // Gemm wants 2-D: [B*K, H] -> Gemm -> [B, K, V].
            graph.initializer.push(crate::onnx::make::make_tensor_i64(
                &name("flat_shape"),
                &[2],
                &[-1, 0],
            ));
            nodes.push(node("Shape", &[&name("hidden_at")], &name("hidden_shape")));
            graph
                .initializer
                .push(crate::onnx::make::make_tensor_i64(&name("last_dim"), &[1], &[-1]));
            nodes.push(
                make_node(
                    "Gather",
                    &[&name("hidden_shape"), &name("last_dim")],
                    &[&name("h_dim")],
                    name("Gather_h"),
                )
                .with_attr("axis", AttrValue::Int(0)),
            );
            graph.initializer.push(crate::onnx::make::make_tensor_i64(
                &name("minus_one"),
                &[1],
                &[-1],
            ));
            nodes.push(
                make_node(
                    "Concat",
                    &[&name("minus_one"), &name("h_dim")],
                    &[&name("flat2d")],
                    name("Concat_flat"),
                )
                .with_attr("axis", AttrValue::Int(0)),
            );
            nodes.push(node(
                "Reshape",
                &[&name("hidden_at"), &name("flat2d")],
                &name("hidden_2d"),
            ));
            let mut gemm = head.product.clone();
            gemm.name = Some(name("lm_head_Gemm"));
            gemm.input[0] = name("hidden_2d");
            gemm.output = vec![name("logits_2d")];
            nodes.push(gemm);
            // [B, K] from positions, then append V.
            nodes.push(node("Shape", &[POSITIONS], &name("bk")));
            graph.initializer.push(crate::onnx::make::make_tensor_i64(
                &name("vocab_dim"),
                &[1],
                &[-1],
            ));
            nodes.push(
                make_node(
                    "Concat",
                    &[&name("bk"), &name("vocab_dim")],
                    &[&name("bkv")],
                    name("Concat_bkv"),
                )
                .with_attr("axis", AttrValue::Int(0)),
            );
            nodes.push(node(
                "Reshape",
                &[&name("logits_2d"), &name("bkv")],
                &name("logits_at"),
            ));
            name("logits_at")
        }
        _ => {
            let mut matmul = head.product.clone();
            matmul.name = Some(name("lm_head_MatMul"));
            matmul.input[0] = name("hidden_at");
            matmul.output = vec![name("logits_at")];
            nodes.push(matmul);
            name("logits_at")
        }
    };
    for (i, (op, running)) in head.tail.iter().enumerate() {
        let mut op = op.clone();
        op.input[*running].clone_from(&current);
        let out = name(&format!("tail_{i}"));
        op.output = vec![out.clone()];
        op.name = Some(name(&format!("tail_{i}_{}", op.op_type())));
        nodes.push(op);
        current = out;
    }
    nodes.push(
        make_node("Cast", &[&current], &[&name("logits_f32")], name("Cast_f32"))
            .with_attr("to", AttrValue::Int(DataType::Float as i64)),
    );
    nodes.push(
        make_node(
            "LogSoftmax",
            &[&name("logits_f32")],
            &[&name("logprobs")],
            name("LogSoftmax"),
        )
        .with_attr("axis", AttrValue::Int(-1)),
    );
    nodes.push(
        make_node(
            "GatherElements",
            &[&name("logprobs"), TARGETS],
            &[TARGET_LOGPROBS],
            name("GatherElements"),
        )
        .with_attr("axis", AttrValue::Int(2)),
    );
    nodes.push(
        make_node("ArgMax", &[&name("logits_f32")], &[GREEDY_TOKENS], name("ArgMax"))
            .with_attr("axis", AttrValue::Int(-1))
            .with_attr("keepdims", AttrValue::Int(0)),
    );

    graph.node.extend(nodes);
    graph.input.push(make_tensor_value_info(
        POSITIONS,
        DataType::Int64,
        &["batch".into(), "positions".into()],
    ));
    graph.input.push(make_tensor_value_info(
        TARGETS,
        DataType::Int64,
        &["batch".into(), "positions".into(), "candidates".into()],
    ));
    graph.output.retain(|o| o.name() != logits);
    graph.output.push(make_tensor_value_info(
        TARGET_LOGPROBS,
        DataType::Float,
        &["batch".into(), "positions".into(), "candidates".into()],
    ));
    graph.output.push(make_tensor_value_info(
        GREEDY_TOKENS,
        DataType::Int64,
        &["batch".into(), "positions".into()],
    ));
    graph.cleanup();
    graph.toposort().context("ordering the rewritten graph")?;
    Ok(())
}

/// Walks back from `logits` to the vocabulary projection.
fn find_lm_head(graph: &GraphProto, logits: &str) -> Result<LmHead> {
    let mut tail = Vec::new();
    let mut tensor = logits.to_owned();
    // A foreign graph can be malformed: a node without inputs, or a cycle, which a walk of more
    // steps than there are nodes would be going round.
    let first_input = |node: &NodeProto| -> Result<String> {
        node.input.first().cloned().with_context(|| {
            format!(
                "cannot find the LM head: '{}' ({}) has no inputs",
                node.name(),
                node.op_type()
            )
        })
    };
    for _ in 0..=graph.node.len() {
        let Some(i) = graph.producer(&tensor) else {
            bail!("cannot find the LM head: '{tensor}' has no producer");
        };
        let node = &graph.node[i];
        match node.op_type() {
            "MatMul" | "Gemm" => {
                let mut hidden = first_input(node)?;
                // Gemm works on [B*S, H]: score from the 3-D tensor that was flattened into it.
                if node.op_type() == "Gemm" {
                    let flatten = graph.producer(&hidden).map(|p| &graph.node[p]);
                    match flatten {
                        Some(f) if matches!(f.op_type(), "Reshape" | "Flatten") => hidden = first_input(f)?,
                        _ => bail!(
                            "cannot find the LM head: Gemm '{}' does not read a flattened hidden state",
                            node.name()
                        ),
                    }
                    if node.attr("transA").is_some_and(|a| a.i() != 0) {
                        bail!(
                            "cannot find the LM head: Gemm '{}' transposes its input",
                            node.name()
                        );
                    }
                }
                tail.reverse();
                return Ok(LmHead {
                    hidden,
                    product: node.clone(),
                    tail,
                });
            }
            "Reshape" => tensor = first_input(node)?,
            "Cast" | "Tanh" | "Identity" => {
                tail.push((node.clone(), 0));
                tensor = first_input(node)?;
            }
            op if PASS_THROUGH.contains(&op) => {
                // Binary ops: one computed input (the running value), the other a constant.
                let computed: Vec<usize> = (0..node.input.len())
                    .filter(|&j| !is_constant(graph, &node.input[j]))
                    .collect();
                if computed.len() != 1 {
                    bail!(
                        "cannot find the LM head: '{}' ({op}) combines several computed inputs",
                        node.name()
                    );
                }
                tail.push((node.clone(), computed[0]));
                tensor = node.input[computed[0]].clone();
            }
            op => bail!(
                "cannot find the LM head: '{}' ({op}) sits between the logits and the vocabulary projection",
                node.name()
            ),
        }
    }
    bail!("cannot find the LM head: the nodes before '{logits}' form a cycle")
}

/// Initializers and outputs of `Constant` nodes.
fn is_constant(graph: &GraphProto, name: &str) -> bool {
    graph.initializer.iter().any(|t| t.name() == name)
        || graph
            .producer(name)
            .is_some_and(|i| graph.node[i].op_type() == "Constant")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::make::{make_graph, make_model};

    fn model_with(nodes: Vec<NodeProto>) -> Model {
        let logits = make_tensor_value_info("logits", DataType::Float, &[]);
        Model::new(make_model(
            make_graph(nodes, "g", vec![], vec![logits], vec![]),
            vec![],
        ))
    }

    #[test]
    fn malformed_foreign_heads_are_errors_not_hangs_or_panics() {
        let mut cycle = model_with(vec![
            make_node("Identity", &["a"], &["logits"], "i1"),
            make_node("Identity", &["logits"], &["a"], "i2"),
        ]);
        let err = add_scoring_head(&mut cycle, "logits").unwrap_err().to_string();
        assert!(err.contains("cycle"), "{err}");
        let mut no_input = model_with(vec![make_node("Cast", &[], &["logits"], "c")]);
        let err = add_scoring_head(&mut no_input, "logits").unwrap_err().to_string();
        assert!(err.contains("'c' (Cast) has no inputs"), "{err}");
    }
}
