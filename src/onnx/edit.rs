//! Graph editing with the verbs graph-surgery users know (onnx-graphsurgeon, onnx_ir): who produces
//! and who consumes a tensor, rewiring uses, inserting nodes after a tensor, topological sorting and
//! removing what no output needs.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use anyhow::{Result, bail};

use super::DataType;
use super::pb::{GraphProto, NodeProto, type_proto};

impl GraphProto {
    /// The element type of `tensor`: declared, an initializer's, a Cast's target, or (for ops that
    /// keep their input's type) the type of their first input.
    pub fn element_type(&self, tensor: &str) -> Option<DataType> {
        element_type_at(self, tensor, 0)
    }

    /// Index of the node that outputs `tensor`.
    pub fn producer(&self, tensor: &str) -> Option<usize> {
        self.node
            .iter()
            .position(|n| n.output.iter().any(|o| o == tensor))
    }

    /// Indices of the nodes reading `tensor`, directly or from inside one of their subgraphs.
    pub fn consumers(&self, tensor: &str) -> Vec<usize> {
        (0..self.node.len())
            .filter(|&i| node_reads(&self.node[i], tensor))
            .collect()
    }

    /// Makes every node that reads `old` read `new` instead (subgraphs included). Graph outputs
    /// keep their names, so the model's interface does not change.
    pub fn replace_all_uses_with(&mut self, old: &str, new: &str) {
        for node in &mut self.node {
            rename_reads(node, old, new);
        }
    }

    /// Intercepts `tensor`: `nodes` (which read `tensor` and produce `output`) are inserted right
    /// after its producer, and every other node that read `tensor` now reads `output`. Graph
    /// outputs keep their names and values, as with [`GraphProto::replace_all_uses_with`].
    pub fn insert_after(&mut self, tensor: &str, nodes: Vec<NodeProto>, output: &str) -> Result<()> {
        if self.names().contains(output) {
            bail!("cannot insert after '{tensor}': the name '{output}' is already used in the graph");
        }
        // Where the nodes go is settled before any reader is rewired, so an error edits nothing.
        let at = match self.producer(tensor) {
            Some(i) => i + 1,
            None if self.is_source(tensor) => 0,
            None => {
                bail!("cannot insert after '{tensor}': no node, input or initializer produces it")
            }
        };
        let readers: Vec<usize> = self.consumers(tensor);
        for i in readers {
            rename_reads(&mut self.node[i], tensor, output);
        }
        self.node.splice(at..at, nodes);
        Ok(())
    }

    /// True when `tensor` is a graph input or an initializer.
    pub fn is_source(&self, tensor: &str) -> bool {
        self.input.iter().any(|v| v.name() == tensor) || self.initializer.iter().any(|t| t.name() == tensor)
    }

    /// Every tensor and node name in use (top level and subgraphs), to pick fresh names against.
    pub fn names(&self) -> HashSet<String> {
        let mut names = HashSet::new();
        collect_names(self, &mut names);
        names
    }

    /// `base` if unused, else `base_1`, `base_2`, ...
    pub fn unique_name(&self, base: &str) -> String {
        let names = self.names();
        if !names.contains(base) {
            return base.to_owned();
        }
        (1..)
            .map(|i| format!("{base}_{i}"))
            .find(|n| !names.contains(n))
            .expect("some suffix is free")
    }

    /// Orders nodes so each comes after the producers of everything it reads, keeping the current
    /// order where it is already valid. Fails on a cycle. Reads of names no node here produces
    /// (inputs, initializers, an enclosing graph's values, or dangling names) impose no order.
    pub fn toposort(&mut self) -> Result<()> {
        let mut available: HashSet<String> = self.input.iter().map(|v| v.name().to_owned()).collect();
        available.extend(self.initializer.iter().map(|t| t.name().to_owned()));
        available.insert(String::new()); // an empty name is an omitted optional input
        let produced: HashMap<&str, usize> = self
            .node
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i)))
            .collect();
        // Reads of names produced by no node here come from an enclosing graph (for subgraphs) or
        // are errors; the caller that holds the outer scope decides, so we only order what we own.
        let deps: Vec<BTreeSet<usize>> = self
            .node
            .iter()
            .map(|n| {
                node_reads_all(n)
                    .iter()
                    .filter(|name| !available.contains(*name))
                    .filter_map(|name| produced.get(name.as_str()).copied())
                    .collect()
            })
            .collect();
        let mut waiting: Vec<usize> = deps.iter().map(BTreeSet::len).collect();
        let mut dependents = vec![Vec::new(); self.node.len()];
        for (i, d) in deps.iter().enumerate() {
            for &p in d {
                if p == i {
                    bail!("node '{}' reads its own output", self.node[i].name());
                }
                dependents[p].push(i);
            }
        }
        // A min-heap on the original index keeps the order stable.
        let mut ready: std::collections::BinaryHeap<std::cmp::Reverse<usize>> = (0..self.node.len())
            .filter(|&i| waiting[i] == 0)
            .map(std::cmp::Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.node.len());
        while let Some(std::cmp::Reverse(i)) = ready.pop() {
            order.push(i);
            for &d in &dependents[i] {
                waiting[d] -= 1;
                if waiting[d] == 0 {
                    ready.push(std::cmp::Reverse(d));
                }
            }
        }
        if order.len() != self.node.len() {
            let stuck: Vec<&str> = (0..self.node.len())
                .filter(|i| !order.contains(i))
                .map(|i| self.node[i].name())
                .take(5)
                .collect();
            bail!("the graph has a cycle through nodes {stuck:?}");
        }
        let mut nodes: Vec<Option<NodeProto>> =
            std::mem::take(&mut self.node).into_iter().map(Some).collect();
        self.node = order
            .into_iter()
            .map(|i| nodes[i].take().expect("each index once"))
            .collect();
        Ok(())
    }

    /// Removes nodes whose outputs no graph output needs, then initializers and value infos
    /// nothing reads. Returns how many nodes were removed.
    pub fn cleanup(&mut self) -> usize {
        let mut needed: HashSet<String> = self.output.iter().map(|v| v.name().to_owned()).collect();
        // Producers looked up by name: one pass over the graph, not one per needed tensor.
        let mut producers: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, node) in self.node.iter().enumerate() {
            for output in &node.output {
                producers.entry(output.as_str()).or_default().push(i);
            }
        }
        let mut keep = vec![false; self.node.len()];
        let mut queue: VecDeque<String> = needed.iter().cloned().collect();
        while let Some(name) = queue.pop_front() {
            for &i in producers
                .get(name.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                if !keep[i] {
                    keep[i] = true;
                    for input in node_reads_all(&self.node[i]) {
                        if needed.insert(input.clone()) {
                            queue.push_back(input);
                        }
                    }
                }
            }
        }
        let before = self.node.len();
        let mut keep_iter = keep.into_iter();
        self.node.retain(|_| keep_iter.next().unwrap_or(false));
        self.initializer.retain(|t| needed.contains(t.name()));
        self.value_info.retain(|v| needed.contains(v.name()));
        before - self.node.len()
    }
}

/// Whether `node` reads `tensor` as a direct input or from inside a subgraph attribute.
fn node_reads(node: &NodeProto, tensor: &str) -> bool {
    node.input.iter().any(|i| i == tensor) || node_subgraphs(node).any(|g| graph_reads_outer(g, tensor))
}

/// Everything `node` reads, including names its subgraphs take from the enclosing scope.
fn node_reads_all(node: &NodeProto) -> Vec<String> {
    let mut reads: Vec<String> = node.input.iter().filter(|s| !s.is_empty()).cloned().collect();
    for g in node_subgraphs(node) {
        reads.extend(outer_reads(g));
    }
    reads
}

fn node_subgraphs(node: &NodeProto) -> impl Iterator<Item = &GraphProto> {
    node.attribute
        .iter()
        .flat_map(|a| a.g.iter().chain(a.graphs.iter()))
}

/// Names a subgraph reads that it does not define itself (its implicit inputs), including an
/// outer value it returns directly as one of its outputs.
fn outer_reads(graph: &GraphProto) -> Vec<String> {
    let mut defined: HashSet<&str> = graph.input.iter().map(|v| v.name()).collect();
    defined.extend(graph.initializer.iter().map(|t| t.name()));
    defined.extend(
        graph
            .node
            .iter()
            .flat_map(|n| n.output.iter().map(String::as_str)),
    );
    let mut reads = Vec::new();
    let outputs = graph.output.iter().map(|v| v.name().to_owned());
    for name in graph.node.iter().flat_map(node_reads_all).chain(outputs) {
        if !defined.contains(name.as_str()) && !reads.contains(&name) {
            reads.push(name);
        }
    }
    reads
}

fn graph_reads_outer(graph: &GraphProto, tensor: &str) -> bool {
    outer_reads(graph).iter().any(|n| n == tensor)
}

fn rename_reads(node: &mut NodeProto, old: &str, new: &str) {
    for input in &mut node.input {
        if input == old {
            new.clone_into(input);
        }
    }
    for attr in &mut node.attribute {
        for g in attr.g.iter_mut().chain(attr.graphs.iter_mut()) {
            rename_outer_reads(g, old, new);
        }
    }
}

/// Renames reads of an outer-scope name inside a subgraph, unless the subgraph shadows it.
fn rename_outer_reads(graph: &mut GraphProto, old: &str, new: &str) {
    let shadowed = graph.input.iter().any(|v| v.name() == old)
        || graph.initializer.iter().any(|t| t.name() == old)
        || graph.node.iter().any(|n| n.output.iter().any(|o| o == old));
    if shadowed {
        return;
    }
    for node in &mut graph.node {
        rename_reads(node, old, new);
    }
    for output in &mut graph.output {
        if output.name() == old {
            output.name = Some(new.to_owned());
        }
    }
}

fn collect_names(graph: &GraphProto, names: &mut HashSet<String>) {
    names.extend(graph.input.iter().map(|v| v.name().to_owned()));
    names.extend(graph.output.iter().map(|v| v.name().to_owned()));
    names.extend(graph.initializer.iter().map(|t| t.name().to_owned()));
    for node in &graph.node {
        names.insert(node.name().to_owned());
        names.extend(node.input.iter().cloned());
        names.extend(node.output.iter().cloned());
        for g in node_subgraphs(node) {
            collect_names(g, names);
        }
    }
}

fn element_type_at(graph: &GraphProto, tensor: &str, depth: usize) -> Option<DataType> {
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
            .and_then(|i| element_type_at(graph, i, depth + 1)),
    }
}
