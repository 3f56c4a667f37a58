//! A graph cut in two by what depends on one input: the lower graph holds every node whose value
//! does not depend on it, the upper graph every node that does. The tensors the upper nodes read
//! from lower nodes (the cut) are the lower graph's outputs and the upper graph's inputs, so
//! running the lower graph once and the upper graph on its outputs computes exactly what the
//! whole graph computes: the same nodes on the same values. The lower result can be reused by any
//! number of upper runs that differ only in that input (a coefficient sweep's shared layers).

use std::collections::HashSet;

use anyhow::{Result, bail};

use super::make::make_tensor_value_info_unshaped;
use super::pb::{GraphProto, ValueInfoProto};
use super::{DataType, Model};

/// A graph split at an input: the lower model, and what the upper model needs to be built once
/// the element types of the cut tensors are known (a runtime that opened the lower model tells).
#[derive(Debug, Clone)]
pub struct Split {
    /// Every node that does not depend on the input and that the upper nodes need; its outputs
    /// are the cut tensors (declared without type: a runtime infers them).
    pub lower: Model,
    /// The tensors upper nodes read from lower nodes, in the lower model's output order.
    pub cut: Vec<String>,
    /// Nodes of the upper model, in the whole graph's order.
    upper: Model,
}

impl Split {
    /// The upper model, the cut tensors declared as inputs of the given element types (in the
    /// order of [`Split::cut`]).
    pub fn upper(&self, cut_types: &[DataType]) -> Result<Model> {
        if cut_types.len() != self.cut.len() {
            bail!(
                "{} element types for {} cut tensors",
                cut_types.len(),
                self.cut.len()
            );
        }
        let mut upper = self.upper.clone();
        let inputs = self
            .cut
            .iter()
            .zip(cut_types)
            .map(|(name, &dtype)| make_tensor_value_info_unshaped(name, dtype));
        upper.graph_mut().input.extend(inputs);
        Ok(upper)
    }

    /// How many nodes each part has: (lower, upper).
    pub fn node_counts(&self) -> (usize, usize) {
        (self.lower.graph().node.len(), self.upper.graph().node.len())
    }
}

/// Splits `model` at the graph input `input`. Refused when no node reads it, when a graph output
/// does not depend on it (the upper part would not make it), when nothing below it is shared, or
/// when nodes carry subgraphs (their implicit reads would cross the cut unseen).
pub fn split_at_input(model: &Model, input: &str) -> Result<Split> {
    let graph = model.graph();
    if !graph.input.iter().any(|i| i.name() == input) {
        bail!("the graph has no input '{input}' to split at");
    }
    if let Some(node) = graph
        .node
        .iter()
        .find(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()))
    {
        bail!(
            "node '{}' ({}) has a subgraph: a graph with control flow is not split",
            node.name(),
            node.op_type()
        );
    }
    let mut whole = model.clone();
    whole
        .graph_mut()
        .toposort()
        .map_err(|e| e.context("ordering the graph before splitting it"))?;
    let graph = whole.graph();
    // Forward from the input: a node depends on it when any of its inputs does.
    let mut depends: HashSet<&str> = HashSet::from([input]);
    let mut upper_nodes = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate() {
        if node.input.iter().any(|t| depends.contains(t.as_str())) {
            upper_nodes[i] = true;
            depends.extend(node.output.iter().map(String::as_str));
        }
    }
    if !upper_nodes.contains(&true) {
        bail!("no node reads the input '{input}'");
    }
    if let Some(output) = graph.output.iter().find(|o| !depends.contains(o.name())) {
        bail!(
            "the output '{}' does not depend on '{input}': the graph is not split at it",
            output.name()
        );
    }
    let sources: HashSet<&str> = graph
        .input
        .iter()
        .map(|i| i.name())
        .chain(graph.initializer.iter().map(|t| t.name()))
        .collect();
    // The cut: what upper nodes read that a lower node makes, once each, in first-read order.
    let mut cut: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    for (node, _) in graph.node.iter().zip(&upper_nodes).filter(|(_, up)| **up) {
        for t in &node.input {
            if !t.is_empty()
                && !depends.contains(t.as_str())
                && !sources.contains(t.as_str())
                && seen.insert(t)
            {
                cut.push(t.clone());
            }
        }
    }
    if cut.is_empty() {
        bail!("nothing below '{input}' is computed: there is nothing to share");
    }
    let lower = part(
        &whole,
        &upper_nodes,
        false,
        cut.iter().map(|t| make_output(t)).collect(),
    );
    let upper = part(&whole, &upper_nodes, true, graph.output.clone());
    Ok(Split { lower, cut, upper })
}

/// A lower-model output, typed by the runtime when it opens the model.
fn make_output(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.to_owned()),
        ..Default::default()
    }
}

/// The nodes on one side of the cut, with the outputs given, and only the inputs, initializers
/// and value infos they read.
fn part(whole: &Model, upper_nodes: &[bool], upper: bool, outputs: Vec<ValueInfoProto>) -> Model {
    let mut model = whole.clone();
    let graph: &mut GraphProto = model.graph_mut();
    let mut side = upper_nodes.iter().map(|&u| u == upper);
    graph.node.retain(|_| side.next().unwrap_or(false));
    graph.output = outputs;
    graph.cleanup();
    let read: HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.input.retain(|i| read.contains(i.name()));
    model
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::make::{make_graph, make_model, make_node, make_tensor_f32, make_tensor_value_info};

    /// `x → Relu → r`; `r · c → y`; `Shape(r) → s`, read by the upper `Reshape`.
    fn model() -> Model {
        let x = make_tensor_value_info("x", DataType::Float, &[]);
        let c = make_tensor_value_info("c", DataType::Float, &[]);
        let y = make_tensor_value_info("y", DataType::Float, &[]);
        let nodes = vec![
            make_node("Relu", &["x"], &["r"], "relu"),
            make_node("Shape", &["r"], &["s"], "shape"),
            make_node("Mul", &["r", "c"], &["m"], "mul"),
            make_node("Add", &["m", "w"], &["a"], "add"),
            make_node("Reshape", &["a", "s"], &["y"], "reshape"),
        ];
        let w = make_tensor_f32("w", &[1], &[1.0]);
        Model::new(make_model(
            make_graph(nodes, "g", vec![x, c], vec![y], vec![w]),
            vec![],
        ))
    }

    #[test]
    fn the_cut_is_what_upper_nodes_read_from_lower_ones() {
        let split = split_at_input(&model(), "c").unwrap();
        assert_eq!(split.cut, ["r", "s"]);
        let lower = split.lower.graph();
        let names = |g: &GraphProto| g.node.iter().map(|n| n.name().to_owned()).collect::<Vec<_>>();
        assert_eq!(names(lower), ["relu", "shape"]);
        assert!(
            lower.initializer.is_empty(),
            "the weight is read above the cut only"
        );
        assert_eq!(lower.input.iter().map(|i| i.name()).collect::<Vec<_>>(), ["x"]);
        let upper = split.upper(&[DataType::Float, DataType::Int64]).unwrap();
        let upper = upper.graph();
        assert_eq!(names(upper), ["mul", "add", "reshape"]);
        assert_eq!(
            upper.input.iter().map(|i| i.name()).collect::<Vec<_>>(),
            ["c", "r", "s"]
        );
        assert_eq!(upper.initializer.len(), 1);
        assert_eq!(split.node_counts(), (2, 3));
    }

    #[test]
    fn unsplittable_graphs_are_refused_with_the_reason() {
        let err = split_at_input(&model(), "nope").unwrap_err().to_string();
        assert!(err.contains("no input 'nope'"), "{err}");
        // Split at the first input, nothing is computed below it.
        let err = split_at_input(&model(), "x").unwrap_err().to_string();
        assert!(err.contains("nothing below 'x'"), "{err}");
        let mut unread = model();
        unread
            .graph_mut()
            .input
            .push(make_tensor_value_info("unused", DataType::Float, &[]));
        let err = split_at_input(&unread, "unused").unwrap_err().to_string();
        assert!(err.contains("no node reads"), "{err}");
        let mut side_output = model();
        side_output
            .graph_mut()
            .output
            .push(make_tensor_value_info("s", DataType::Int64, &[]));
        let err = split_at_input(&side_output, "c").unwrap_err().to_string();
        assert!(err.contains("'s' does not depend on 'c'"), "{err}");
    }
}
