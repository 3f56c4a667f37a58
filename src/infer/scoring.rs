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

use crate::onnx::builder::GraphBuilder;
use crate::onnx::make::{AttrValue, make_tensor_i64, make_tensor_value_info};
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
    let mut b = GraphBuilder::extending(graph);
    let hidden_at = gather_scored_positions(&mut b, &head.hidden);
    let logits_at = match head.product.op_type() {
        "Gemm" => gemm_at_positions(&mut b, &head.product, &hidden_at),
        _ => {
            let mut matmul = head.product.clone();
            matmul.name = Some(name("lm_head_MatMul"));
            matmul.input[0] = hidden_at;
            matmul.output = vec![name("logits_at")];
            b.add_node(matmul);
            name("logits_at")
        }
    };
    let logits_at = replay_tail(&mut b, &head.tail, logits_at);
    score_targets(&mut b, &logits_at);
    b.input(make_tensor_value_info(
        POSITIONS,
        DataType::Int64,
        &["batch".into(), "positions".into()],
    ));
    b.input(make_tensor_value_info(
        TARGETS,
        DataType::Int64,
        &["batch".into(), "positions".into(), "candidates".into()],
    ));
    let head = b.finish();
    graph.node.extend(head.nodes);
    graph.initializer.extend(head.initializers);
    graph.input.extend(head.inputs);
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

/// The name of a tensor or node of the scoring head.
fn name(what: &str) -> String {
    format!("/scoring/{what}")
}

/// A node of the scoring head making `/scoring/{what}`, named after its type and output.
fn step(b: &mut GraphBuilder, op: &str, inputs: &[&str], what: &str) -> String {
    let output = name(what);
    b.node(name(op) + "_" + &output, op, inputs, &output, vec![])
}

/// A `[1]` int64 constant of the scoring head.
fn constant_i64(b: &mut GraphBuilder, what: &str, values: &[i64]) -> String {
    b.initializer(make_tensor_i64(&name(what), &[values.len() as i64], values))
}

/// `hidden [B, S, H]` at the scored positions: `[B, K, H]`.
fn gather_scored_positions(b: &mut GraphBuilder, hidden: &str) -> String {
    let positions3 = step(b, "Unsqueeze", &[POSITIONS, &name("axis_last")], "positions3");
    constant_i64(b, "axis_last", &[-1]);
    b.node(
        name("GatherND"),
        "GatherND",
        &[hidden, &positions3],
        &name("hidden_at"),
        vec![("batch_dims", AttrValue::Int(1))],
    )
}

/// The LM head's Gemm at the scored positions. Gemm wants 2-D: `[B*K, H]` -> Gemm -> `[B, K, V]`.
fn gemm_at_positions(b: &mut GraphBuilder, product: &NodeProto, hidden_at: &str) -> String {
    let axis0 = || vec![("axis", AttrValue::Int(0))];
    constant_i64(b, "flat_shape", &[-1, 0]);
    let hidden_shape = step(b, "Shape", &[hidden_at], "hidden_shape");
    let last_dim = constant_i64(b, "last_dim", &[-1]);
    let h_dim = b.node(
        name("Gather_h"),
        "Gather",
        &[&hidden_shape, &last_dim],
        &name("h_dim"),
        axis0(),
    );
    let minus_one = constant_i64(b, "minus_one", &[-1]);
    let flat2d = b.node(
        name("Concat_flat"),
        "Concat",
        &[&minus_one, &h_dim],
        &name("flat2d"),
        axis0(),
    );
    let hidden_2d = step(b, "Reshape", &[hidden_at, &flat2d], "hidden_2d");
    let mut gemm = product.clone();
    gemm.name = Some(name("lm_head_Gemm"));
    gemm.input[0] = hidden_2d;
    gemm.output = vec![name("logits_2d")];
    b.add_node(gemm);
    // [B, K] from positions, then append V.
    let bk = step(b, "Shape", &[POSITIONS], "bk");
    let vocab_dim = constant_i64(b, "vocab_dim", &[-1]);
    let bkv = b.node(
        name("Concat_bkv"),
        "Concat",
        &[&bk, &vocab_dim],
        &name("bkv"),
        axis0(),
    );
    step(b, "Reshape", &[&name("logits_2d"), &bkv], "logits_at")
}

/// The ops between the product and the logits, replayed on the logits at the scored positions.
fn replay_tail(b: &mut GraphBuilder, tail: &[(NodeProto, usize)], mut current: String) -> String {
    for (i, (op, running)) in tail.iter().enumerate() {
        let mut op = op.clone();
        op.input[*running].clone_from(&current);
        let out = name(&format!("tail_{i}"));
        op.output = vec![out.clone()];
        op.name = Some(name(&format!("tail_{i}_{}", op.op_type())));
        b.add_node(op);
        current = out;
    }
    current
}

/// The outputs: the targets' log-probabilities (float32 log-softmax) and the greedy tokens.
fn score_targets(b: &mut GraphBuilder, logits_at: &str) {
    let logits_f32 = b.node(
        name("Cast_f32"),
        "Cast",
        &[logits_at],
        &name("logits_f32"),
        vec![("to", AttrValue::Int(DataType::Float as i64))],
    );
    let logprobs = b.node(
        name("LogSoftmax"),
        "LogSoftmax",
        &[&logits_f32],
        &name("logprobs"),
        vec![("axis", AttrValue::Int(-1))],
    );
    b.node(
        name("GatherElements"),
        "GatherElements",
        &[&logprobs, TARGETS],
        TARGET_LOGPROBS,
        vec![("axis", AttrValue::Int(2))],
    );
    b.node(
        name("ArgMax"),
        "ArgMax",
        &[&logits_f32],
        GREEDY_TOKENS,
        vec![("axis", AttrValue::Int(-1)), ("keepdims", AttrValue::Int(0))],
    );
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
    use crate::onnx::make::{make_graph, make_model, make_node};

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
