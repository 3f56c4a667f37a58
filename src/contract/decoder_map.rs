//! The decoder of any exporter's graph, recovered from its data flow alone: the embedding lookup
//! (and Gemma's √d scale, or GPT-2's learned positions added to it), the chain of residual sums
//! from it to the LM head (two per layer: after attention, after the MLP), and per layer the
//! block outputs and the attention's output projection input. Names play no part, so graphs
//! from torch.onnx (any module nesting), onnxruntime-genai, ONNX Runtime's offline optimizer, or
//! a renaming tool all map the same way.
//!
//! A residual sum is a node that adds the running stream to a block output computed from that
//! same stream: a plain `Add`, or the `input`/`skip` pair of a fused `Skip…LayerNormalization`
//! (whose output 3, when present, carries the sum on). Layer numbers are positions in the chain.
//! Every structural fact is checked, and two candidates for one role are an error, never a guess.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};

use crate::onnx::Model;
use crate::onnx::pb::{GraphProto, NodeProto};

use super::{is_steering_add, meta};

/// One residual sum: `stream + block`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResidualSum {
    /// The node that adds (an `Add`, or a fused norm).
    pub node: usize,
    /// The sum's tensor; `None` where a fused norm computes it without exposing it.
    pub sum: Option<String>,
    /// The block output added to the stream (hook_attn_out / hook_mlp_out).
    pub block: String,
    /// Which input of `node` the block output is.
    pub block_input: usize,
    /// True for fused norms: the sum is steered through `block_input` of `node` only.
    pub fused: bool,
}

/// One decoder layer: its two residual sums and the attention's `hook_z`.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderLayer {
    pub attn: ResidualSum,
    pub mlp: ResidualSum,
    /// Input 0 of the attention block's last weight product (the output projection).
    /// `Err` says why it was not found.
    pub attn_z: Result<String, String>,
}

/// The decoder recovered from a graph.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderMap {
    /// The token embedding lookup's output (hook_embed).
    pub embed: String,
    /// The residual stream entering layer 0 (after the √d scale, or the position embedding's
    /// sum, where there is one).
    pub stream_start: String,
    pub layers: Vec<DecoderLayer>,
    /// The LM head's input (the final norm's output) and the head node.
    pub final_norm: String,
    pub head: usize,
}

/// Operators that multiply an activation (input 0) by a weight (input 1).
const WEIGHT_PRODUCTS: [&str; 4] = ["MatMul", "Gemm", "FusedMatMul", "MatMulNBits"];

/// Producer, readers and constness of every tensor, built once per graph.
struct Index<'g> {
    graph: &'g GraphProto,
    producer: HashMap<&'g str, usize>,
    readers: HashMap<&'g str, Vec<(usize, usize)>>,
    /// Tensors that depend on no graph input (initializers, constants, and what they compute).
    constant: HashSet<&'g str>,
}

impl<'g> Index<'g> {
    fn new(graph: &'g GraphProto) -> Self {
        let mut producer = HashMap::new();
        let mut readers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
        let mut constant: HashSet<&str> = graph.initializer.iter().map(|t| t.name()).collect();
        for (i, node) in graph.node.iter().enumerate() {
            for (k, input) in node.input.iter().enumerate().filter(|(_, x)| !x.is_empty()) {
                readers.entry(input.as_str()).or_default().push((i, k));
            }
            let all_constant = node
                .input
                .iter()
                .all(|x| x.is_empty() || constant.contains(x.as_str()));
            for output in node.output.iter().filter(|o| !o.is_empty()) {
                producer.insert(output.as_str(), i);
                if all_constant && node.attribute.iter().all(|a| a.g.is_none()) {
                    constant.insert(output.as_str());
                }
            }
        }
        Self {
            graph,
            producer,
            readers,
            constant,
        }
    }

    /// The graph's own copy of a tensor name read elsewhere.
    fn interned(&self, tensor: &str) -> &'g str {
        self.producer
            .get_key_value(tensor)
            .map(|(k, _)| *k)
            .or_else(|| self.readers.get_key_value(tensor).map(|(k, _)| *k))
            .unwrap_or("")
    }

    fn node(&self, i: usize) -> &'g NodeProto {
        &self.graph.node[i]
    }

    fn readers(&self, tensor: &str) -> &[(usize, usize)] {
        self.readers.get(tensor).map_or(&[], Vec::as_slice)
    }

    /// `tensor` and what carries the same value on: Identity and same-type Cast outputs
    /// (torch's RMSNorm casts the stream to float32 even when it already is), and the steered
    /// value of an earlier patch.
    fn aliases(&self, tensor: &'g str) -> Vec<&'g str> {
        let mut out = vec![tensor];
        let mut i = 0;
        while i < out.len() {
            for &(r, k) in self.readers(out[i]) {
                let node = self.node(r);
                let same = match node.op_type() {
                    _ if is_steering_add(node) => k == 0,
                    "Identity" => true,
                    "Cast" => self.is_same_type_cast(node),
                    _ => false,
                };
                if same
                    && let Some(o) = node.output.first()
                    && !out.contains(&o.as_str())
                {
                    out.push(o);
                }
            }
            i += 1;
        }
        out
    }

    /// The tensor `tensor` copies, back through Identity and same-type Cast nodes (torch's
    /// `.to(device)` on GPT-2's position embedding is such a Cast).
    fn origin(&self, tensor: &'g str) -> &'g str {
        match self.producer.get(tensor).map(|&p| self.node(p)) {
            Some(node)
                if node.op_type() == "Identity"
                    || (node.op_type() == "Cast" && self.is_same_type_cast(node)) =>
            {
                self.origin(&node.input[0])
            }
            _ => tensor,
        }
    }

    /// The value an earlier patch steered, where `tensor` is its steered copy.
    fn unsteered(&self, tensor: &'g str) -> &'g str {
        match self.producer.get(tensor).map(|&p| self.node(p)) {
            Some(node) if is_steering_add(node) => self.unsteered(&node.input[0]),
            _ => self.interned(tensor),
        }
    }

    fn is_same_type_cast(&self, cast: &NodeProto) -> bool {
        let to = cast.attr("to").map(|a| a.i() as i32);
        let from = self.graph.element_type(&cast.input[0]).map(|d| d as i32);
        to.is_some() && to == from
    }

    /// True when `tensor` is computed from one of `sources`.
    fn depends_on(&self, tensor: &'g str, sources: &HashSet<&'g str>) -> bool {
        let mut seen = HashSet::new();
        let mut stack = vec![tensor];
        while let Some(t) = stack.pop() {
            if sources.contains(t) {
                return true;
            }
            if self.constant.contains(t) || !seen.insert(t) {
                continue;
            }
            if let Some(&p) = self.producer.get(t) {
                stack.extend(
                    self.node(p)
                        .input
                        .iter()
                        .filter(|x| !x.is_empty())
                        .map(String::as_str),
                );
            }
        }
        false
    }

    /// True when `node` multiplies an activation by a weight.
    fn is_weight_product(&self, node: &NodeProto) -> bool {
        WEIGHT_PRODUCTS.contains(&node.op_type())
            && node.input.len() >= 2
            && !self.constant.contains(node.input[0].as_str())
            && self.constant.contains(node.input[1].as_str())
    }

    /// The weight products nearest to `tensor` going upstream (one breadth-first level), not
    /// crossing `stop`.
    fn nearest_weight_products(&self, tensor: &'g str, stop: &HashSet<&'g str>) -> Vec<usize> {
        let mut seen = HashSet::new();
        let mut level = vec![tensor];
        while !level.is_empty() {
            let mut found = Vec::new();
            let mut next = Vec::new();
            for t in level {
                if stop.contains(t) || self.constant.contains(t) || !seen.insert(t) {
                    continue;
                }
                let Some(&p) = self.producer.get(t) else { continue };
                if self.is_weight_product(self.node(p)) {
                    found.push(p);
                } else {
                    next.extend(
                        self.node(p)
                            .input
                            .iter()
                            .filter(|x| !x.is_empty())
                            .map(String::as_str),
                    );
                }
            }
            if !found.is_empty() {
                found.dedup();
                return found;
            }
            level = next;
        }
        Vec::new()
    }

    fn describe(&self, node: usize) -> String {
        let n = self.node(node);
        let name = if n.name().is_empty() {
            "(unnamed)"
        } else {
            n.name()
        };
        format!(
            "{} node '{name}' -> {}",
            n.op_type(),
            n.output.first().map_or("", String::as_str)
        )
    }
}

fn is_fused_norm(node: &NodeProto) -> bool {
    node.op_type().starts_with("Skip") && node.op_type().ends_with("LayerNormalization")
}

impl DecoderMap {
    /// Recovers the decoder of `model`'s graph, or says which structural fact is missing.
    pub fn recover(model: &Model) -> Result<Self> {
        let index = Index::new(model.graph());
        let mut chains: Vec<(usize, Chain)> = Vec::new();
        let mut failures = Vec::new();
        for gather in embedding_lookups(&index) {
            match Chain::walk(&index, gather) {
                Ok(chain) => chains.push((gather, chain)),
                Err(e) => failures.push(format!("{}: {e}", index.describe(gather))),
            }
        }
        let (gather, chain) = match chains.len() {
            1 => chains.remove(0),
            0 if failures.is_empty() => bail!(
                "no embedding lookup found: no Gather reads a constant 2-D table at indices computed \
                 from a graph input"
            ),
            0 => bail!(
                "no residual stream found from the embedding lookup:\n  {}",
                failures.join("\n  ")
            ),
            _ => bail!(
                "two or more residual streams qualify, refusing to guess:\n  {}",
                chains
                    .iter()
                    .map(|(g, c)| format!("{} ({} residual sums)", index.describe(*g), c.sums.len()))
                    .collect::<Vec<_>>()
                    .join("\n  ")
            ),
        };
        let map = chain.into_map(&index, gather)?;
        check_layer_count(model, map.layers.len())?;
        Ok(map)
    }
}

/// The decoder's layer count, as our metadata (or a foreign exporter's `num_hidden_layers`) says.
fn check_layer_count(model: &Model, found: usize) -> Result<()> {
    for key in [meta::NUM_LAYERS, "num_hidden_layers"] {
        let Some(value) = model.metadata(key) else {
            continue;
        };
        if value.trim().parse::<usize>().ok() != Some(found) {
            bail!(
                "the metadata says {key} = {value}, but the graph's residual chain has {found} layers \
                 ({} residual sums); refusing to guess which is right",
                2 * found
            );
        }
    }
    Ok(())
}

/// Gathers whose table is a constant 2-D tensor (or a block-quantized one: onnxruntime-genai's
/// int4 `GatherBlockQuantized`) and whose indices come from a graph input.
fn embedding_lookups(index: &Index) -> Vec<usize> {
    (0..index.graph.node.len())
        .filter(|&i| is_lookup(index, i))
        .collect()
}

/// True when node `i` looks up rows of a constant table at computed indices.
fn is_lookup(index: &Index, i: usize) -> bool {
    let n = index.node(i);
    let table = match n.op_type() {
        "Gather" => constant_rank(index, &n.input[0]) == Some(2),
        "GatherBlockQuantized" => index.constant.contains(n.input[0].as_str()),
        _ => false,
    };
    table && n.input.len() >= 2 && !index.constant.contains(n.input[1].as_str())
}

/// True when `tensor` depends on the values of a graph input, not only on its shape (position
/// indices computed from `Shape(input_ids)` do not; token indices, reshaped or not, do).
fn reads_input_values(index: &Index, tensor: &str) -> bool {
    let mut seen = HashSet::new();
    let mut stack = vec![index.interned(tensor)];
    while let Some(t) = stack.pop() {
        if index.constant.contains(t) || !seen.insert(t) {
            continue;
        }
        let Some(&p) = index.producer.get(t) else {
            return true; // a graph input
        };
        let node = index.node(p);
        if !matches!(node.op_type(), "Shape" | "Size") {
            stack.extend(node.input.iter().filter(|x| !x.is_empty()).map(String::as_str));
        }
    }
    false
}

/// The rank of a constant tensor: an initializer's, or through a Transpose / Cast / Identity.
fn constant_rank(index: &Index, tensor: &str) -> Option<usize> {
    if let Some(t) = index.graph.initializer.iter().find(|t| t.name() == tensor) {
        return Some(t.dims.len());
    }
    let node = index.node(*index.producer.get(tensor)?);
    match node.op_type() {
        "Transpose" | "Cast" | "Identity" => constant_rank(index, node.input.first()?),
        _ => None,
    }
}

/// The stream from one embedding lookup through its residual sums.
struct Chain {
    embed: String,
    start: String,
    sums: Vec<ResidualSum>,
}

/// The stream at one point of the walk: the tensors a residual sum may read it from, and those
/// a block computed from it may start at (for fused norms, their normalized output too).
struct Stream<'g> {
    carriers: Vec<&'g str>,
    sources: HashSet<&'g str>,
}

impl<'g> Stream<'g> {
    fn at(index: &Index<'g>, tensor: &'g str) -> Self {
        let carriers = index.aliases(tensor);
        let sources = carriers.iter().copied().collect();
        Self { carriers, sources }
    }

    /// The stream after `sum`: `None` where a fused norm does not expose the sum.
    fn after(index: &Index<'g>, sum: &ResidualSum) -> Option<Self> {
        let node = index.node(sum.node);
        let tensor = node.output.iter().find(|o| Some(*o) == sum.sum.as_ref())?;
        let mut stream = Self::at(index, tensor);
        if sum.fused {
            for o in node.output.iter().filter(|o| !o.is_empty()) {
                stream.sources.extend(index.aliases(o));
            }
        }
        Some(stream)
    }

    /// What a block computed after `sum` may start from (the sum's tensor or a fused norm's outputs).
    fn sources_after(index: &Index<'g>, sum: &ResidualSum) -> HashSet<&'g str> {
        let node = index.node(sum.node);
        node.output
            .iter()
            .filter(|o| !o.is_empty() && (sum.fused || Some(*o) == sum.sum.as_ref()))
            .flat_map(|o| index.aliases(o))
            .collect()
    }
}

impl Chain {
    fn walk(index: &Index, gather: usize) -> Result<Self> {
        let embed = index.node(gather).output[0].as_str();
        let start = with_positions(index, gather, scaled(index, embed).unwrap_or(embed))?;
        let mut sums: Vec<ResidualSum> = Vec::new();
        let mut stream = Some(Stream::at(index, start));
        while let Some(s) = stream {
            let found = next_sums(index, &s);
            match found.as_slice() {
                [] => break,
                [one] => {
                    stream = Stream::after(index, one);
                    sums.push(one.clone());
                }
                many => bail!(
                    "after residual sum {} the stream '{}' is added to two or more blocks, refusing to \
                     guess:\n    {}",
                    sums.len(),
                    s.carriers[0],
                    many.iter()
                        .map(|x| index.describe(x.node))
                        .collect::<Vec<_>>()
                        .join("\n    ")
                ),
            }
        }
        if sums.is_empty() {
            bail!("its output '{start}' is never added to a block computed from it");
        }
        Ok(Self {
            embed: embed.to_owned(),
            start: start.to_owned(),
            sums,
        })
    }

    fn into_map(self, index: &Index, gather: usize) -> Result<DecoderMap> {
        if !self.sums.len().is_multiple_of(2) {
            bail!(
                "the residual chain from {} has {} sums, not two per layer (after attention, after \
                 the MLP)",
                index.describe(gather),
                self.sums.len()
            );
        }
        let last = self.sums.last().expect("walk found at least one sum");
        let (head, final_norm) = lm_head(index, &Stream::sources_after(index, last))?;
        let mut layers = Vec::new();
        let mut before = Stream::at(index, index.interned(&self.start)).sources;
        for pair in self.sums.chunks(2) {
            layers.push(DecoderLayer {
                attn_z: attn_z(index, &pair[0].block, &before),
                attn: pair[0].clone(),
                mlp: pair[1].clone(),
            });
            before = Stream::sources_after(index, &pair[1]);
        }
        Ok(DecoderMap {
            embed: self.embed,
            stream_start: self.start,
            layers,
            final_norm,
            head,
        })
    }
}

/// The one node reading `tensor`'s values (Shape/Size read only the shape, as torch's mask code
/// does), with the input it reads it at.
fn one_value_reader(index: &Index, tensor: &str) -> Option<(usize, usize)> {
    let value_readers: Vec<&(usize, usize)> = index
        .readers(tensor)
        .iter()
        .filter(|(r, _)| !matches!(index.node(*r).op_type(), "Shape" | "Size"))
        .collect();
    match value_readers.as_slice() {
        [one] => Some(**one),
        _ => None,
    }
}

/// The √d scale right after the lookup: its one reader of values, a Mul by a constant.
fn scaled<'g>(index: &Index<'g>, embed: &str) -> Option<&'g str> {
    let (r, k) = one_value_reader(index, embed)?;
    let node = index.node(r);
    let other = node.input.get(1 - k)?;
    (node.op_type() == "Mul" && index.constant.contains(other.as_str())).then(|| node.output[0].as_str())
}

/// GPT-2's learned positions: where the lookup's one value reader is an `Add` of a second
/// lookup, the stream starts at the sum. The token lookup is the one whose indices are the
/// input's values; the position lookup's come from its shape alone (torch.onnx's `arange`), or,
/// where both read input values (positions counted from the attention mask in a decoding graph),
/// the token lookup's indices are a graph input as fed and the position lookup's are computed.
/// Where both are fed inputs as they are (optimum's export takes `position_ids`), the token
/// lookup is the one whose table the tied LM head also multiplies by (GPT-2 ties its head to the
/// token table; no head reads the position table). Walking from the position lookup is refused
/// (so one stream qualifies), and so is a sum where no rule tells them apart (untied tables).
fn with_positions<'g>(index: &Index<'g>, gather: usize, start: &'g str) -> Result<&'g str> {
    let Some((r, k)) = one_value_reader(index, start) else {
        return Ok(start);
    };
    let node = index.node(r);
    let other = index.origin(node.input.get(1 - k).map_or("", String::as_str));
    let partner = index.producer.get(other).copied();
    let Some(partner) = partner.filter(|&p| node.op_type() == "Add" && k <= 1 && is_lookup(index, p)) else {
        return Ok(start);
    };
    let indices = |g: usize| index.node(g).input[1].as_str();
    let reads = |g: usize| reads_input_values(index, indices(g));
    let fed = |g: usize| is_fed_input(index, indices(g));
    let token = match (reads(gather), reads(partner)) {
        (true, false) => Some(true),
        (false, true) => Some(false),
        (true, true) if fed(gather) != fed(partner) => Some(fed(gather)),
        (true, true) if tied(index, gather) != tied(index, partner) => Some(tied(index, gather)),
        _ => None,
    };
    match token {
        Some(true) => Ok(node.output[0].as_str()),
        Some(false) => bail!(
            "it is a position embedding, added to the token embedding {}",
            index.describe(partner)
        ),
        None => bail!(
            "it is added to a second embedding lookup ({}) and which of the two is the token \
             embedding cannot be told from the graph (both or neither read the input's values, \
             both or neither are fed a graph input as it is, and both or neither tables are \
             the tied LM head's weight); refusing to guess",
            index.describe(partner)
        ),
    }
}

/// True where lookup `gather`'s table is also the weight of a product (MatMul/Gemm input 1), as
/// read or through one Transpose: an LM head tied to the table.
fn tied(index: &Index, gather: usize) -> bool {
    let is_weight = |&(r, k): &(usize, usize)| k == 1 && WEIGHT_PRODUCTS.contains(&index.node(r).op_type());
    index.readers(&index.node(gather).input[0]).iter().any(|&(r, k)| {
        is_weight(&(r, k))
            || (index.node(r).op_type() == "Transpose"
                && index.readers(&index.node(r).output[0]).iter().any(is_weight))
    })
}

/// True where `tensor` is a graph input passed on unchanged in value (through casts, identities
/// and reshapes), as token ids reach their lookup; computed indices (a cumulative sum of the
/// mask, an `arange`) are not.
fn is_fed_input(index: &Index, tensor: &str) -> bool {
    match index.producer.get(tensor).map(|&p| index.node(p)) {
        None => !index.constant.contains(tensor),
        Some(node) => {
            matches!(
                node.op_type(),
                "Cast" | "Identity" | "Reshape" | "Unsqueeze" | "Squeeze" | "Flatten"
            ) && is_fed_input(index, &node.input[0])
        }
    }
}

/// The residual sums that read the stream, each with a block output computed from it.
fn next_sums(index: &Index, stream: &Stream) -> Vec<ResidualSum> {
    let mut found: Vec<ResidualSum> = Vec::new();
    for &carrier in &stream.carriers {
        for &(r, k) in index.readers(carrier) {
            if found.iter().all(|f| f.node != r)
                && let Some(sum) = residual_sum(index, r, k, &stream.sources)
            {
                found.push(sum);
            }
        }
    }
    found
}

/// Node `r`, reading the stream at input `k`: a residual sum when its other addend is computed
/// from the stream.
fn residual_sum(index: &Index, r: usize, k: usize, sources: &HashSet<&str>) -> Option<ResidualSum> {
    let node = index.node(r);
    let fused = is_fused_norm(node);
    if !(node.op_type() == "Add" || fused) || k > 1 || is_steering_add(node) {
        return None;
    }
    let block = node.input.get(1 - k)?.as_str();
    if block.is_empty() || !index.depends_on(block, sources) {
        return None;
    }
    let sum_output = if fused { 3 } else { 0 };
    Some(ResidualSum {
        node: r,
        sum: node.output.get(sum_output).filter(|o| !o.is_empty()).cloned(),
        block: index.unsteered(block).to_owned(),
        block_input: 1 - k,
        fused,
    })
}

/// The LM head: the weight product nearest to the logits output, which must read the stream
/// after the last residual sum (through the final norm).
fn lm_head(index: &Index, last: &HashSet<&str>) -> Result<(usize, String)> {
    let graph = index.graph;
    let logits = graph
        .output
        .iter()
        .find(|o| o.name() == super::LOGITS)
        .or(graph.output.first())
        .map(|o| o.name())
        .ok_or_else(|| anyhow::anyhow!("the graph has no outputs"))?;
    let heads = index.nearest_weight_products(logits, &HashSet::new());
    let [head] = heads.as_slice() else {
        bail!(
            "cannot find the LM head: {} weight products are nearest to the output '{logits}'",
            heads.len()
        );
    };
    let input = index.node(*head).input[0].as_str();
    if !index.depends_on(input, last) {
        bail!(
            "the LM head ({}) does not read the stream after the last residual sum",
            index.describe(*head)
        );
    }
    Ok((*head, input.to_owned()))
}

/// `hook_z`: input 0 of the attention block's weight product nearest to its output.
fn attn_z(index: &Index, block: &str, stream: &HashSet<&str>) -> Result<String, String> {
    let products = index.nearest_weight_products(index.interned(block), stream);
    match products.as_slice() {
        [one] => Ok(index.unsteered(&index.node(*one).input[0]).to_owned()),
        [] => Err(format!(
            "no weight product computes the attention output '{block}'"
        )),
        many => Err(format!(
            "the attention output '{block}' is computed by {} weight products at the same depth: {}",
            many.len(),
            many.iter()
                .map(|&m| index.describe(m))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::DataType;
    use crate::onnx::make::{make_graph, make_model, make_node, make_tensor_f32, make_tensor_value_info};

    /// Builds graphs of `d = 2` decoders node by node: `Gather` of a `[4, 2]` table, residual
    /// blocks of one weight product each, an LM head to `logits`.
    struct Toy {
        nodes: Vec<NodeProto>,
        weights: Vec<&'static str>,
    }

    impl Toy {
        fn new() -> Self {
            Self {
                nodes: Vec::new(),
                weights: Vec::new(),
            }
        }

        fn op(&mut self, op: &str, inputs: &[&str], out: &str) -> &mut Self {
            let name = format!("node_{}", self.nodes.len());
            self.nodes.push(make_node(op, inputs, &[out], name));
            self
        }

        /// `out = x + W·norm(x)`, norm a Mul by itself (depends on x, like an RMSNorm).
        fn layer(&mut self, x: &str, w: &'static str, tag: &str) -> String {
            let (n, b, out) = (format!("{tag}_n"), format!("{tag}_b"), format!("{tag}_sum"));
            self.weights.push(w);
            self.op("Mul", &[x, x], &n)
                .op("MatMul", &[&n, w], &b)
                .op("Add", &[x, &b], &out);
            out
        }

        fn embed(&mut self, table: &'static str, tag: &str) -> String {
            let (g, s) = (format!("{tag}_g"), format!("{tag}_s"));
            self.weights.push(table);
            self.op("Gather", &[table, "input_ids"], &g)
                .op("Mul", &[&g, "scale"], &s);
            s
        }

        fn model(&mut self, last: &str, metadata: &[(&str, &str)]) -> Model {
            self.weights.push("head");
            self.op("MatMul", &[last, "head"], "logits");
            let mut inits = vec![make_tensor_f32("scale", &[], &[1.4])];
            for w in &self.weights {
                let dims: &[i64] = if w.starts_with('e') { &[4, 2] } else { &[2, 2] };
                inits.push(make_tensor_f32(w, dims, &vec![0.5; (dims[0] * dims[1]) as usize]));
            }
            inits.dedup_by(|a, b| a.name() == b.name());
            let graph = make_graph(
                std::mem::take(&mut self.nodes),
                "toy",
                vec![make_tensor_value_info(
                    "input_ids",
                    DataType::Int64,
                    &["b".into(), "s".into()],
                )],
                vec![make_tensor_value_info("logits", DataType::Float, &[])],
                inits,
            );
            let mut model = Model::new(make_model(graph, vec![]));
            for (k, v) in metadata {
                model.set_metadata(k, v);
            }
            model
        }
    }

    fn two_layers(toy: &mut Toy, table: &'static str, tag: &str) -> String {
        let s = toy.embed(table, tag);
        let mut x = s;
        for (i, w) in ["wa", "wm", "wa", "wm"].into_iter().enumerate() {
            x = toy.layer(&x, w, &format!("{tag}{i}"));
        }
        x
    }

    #[test]
    fn a_chain_of_sums_maps_to_layers_in_order() {
        let mut toy = Toy::new();
        let last = two_layers(&mut toy, "embed", "x");
        let map = DecoderMap::recover(&toy.model(&last, &[])).unwrap();
        assert_eq!(map.embed, "x_g");
        assert_eq!(map.stream_start, "x_s");
        assert_eq!(map.layers.len(), 2);
        assert_eq!(map.layers[1].attn.sum.as_deref(), Some("x2_sum"));
        assert_eq!(map.layers[1].mlp.block, "x3_b");
        assert_eq!(map.layers[0].attn_z.as_deref(), Ok("x0_n"));
        assert_eq!(map.final_norm, "x3_sum");
    }

    #[test]
    fn two_qualifying_chains_are_refused_showing_both() {
        let mut toy = Toy::new();
        let a = two_layers(&mut toy, "embed_a", "a");
        let b = two_layers(&mut toy, "embed_b", "b");
        toy.op("Add", &[&a, &b], "both");
        let err = DecoderMap::recover(&toy.model("both", &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("two or more residual streams"), "{err}");
        assert!(err.contains("-> a_g") && err.contains("-> b_g"), "{err}");
    }

    #[test]
    fn a_stream_added_to_two_blocks_is_refused_showing_both() {
        let mut toy = Toy::new();
        let s = toy.embed("embed", "x");
        let one = toy.layer(&s, "wa", "p");
        let two = toy.layer(&s, "wm", "q");
        toy.op("Add", &[&one, &two], "both");
        let err = DecoderMap::recover(&toy.model("both", &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("added to two or more blocks"), "{err}");
        assert!(err.contains("-> p_sum") && err.contains("-> q_sum"), "{err}");
    }

    #[test]
    fn metadata_that_disagrees_with_the_chain_is_refused_showing_both() {
        let mut toy = Toy::new();
        let last = two_layers(&mut toy, "embed", "x");
        let err = DecoderMap::recover(&toy.model(&last, &[(meta::NUM_LAYERS, "3")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("sae_onnx.num_layers = 3") && err.contains("2 layers"),
            "{err}"
        );
        let mut toy = Toy::new();
        let last = two_layers(&mut toy, "embed", "x");
        assert!(DecoderMap::recover(&toy.model(&last, &[(meta::NUM_LAYERS, "2")])).is_ok());
    }

    /// GPT-2's embedding: token lookup + position lookup at `position_indices`.
    fn with_position_lookup(toy: &mut Toy, position_indices: &str) -> String {
        toy.weights.extend(["embed", "epos"]);
        toy.op("Shape", &["input_ids"], "shape")
            .op("Gather", &["embed", "input_ids"], "tok")
            .op("Gather", &["epos", position_indices], "pos")
            .op("Add", &["tok", "pos"], "x_s");
        let mut x = "x_s".to_owned();
        for (i, w) in ["wa", "wm"].into_iter().enumerate() {
            x = toy.layer(&x, w, &format!("x{i}"));
        }
        x
    }

    #[test]
    fn learned_positions_added_to_the_token_lookup_start_the_stream() {
        let mut toy = Toy::new();
        let last = with_position_lookup(&mut toy, "shape");
        let map = DecoderMap::recover(&toy.model(&last, &[])).unwrap();
        assert_eq!(map.embed, "tok");
        assert_eq!(map.stream_start, "x_s");
        assert_eq!(map.layers.len(), 1);
        assert_eq!(map.layers[0].attn_z.as_deref(), Ok("x0_n"));
    }

    #[test]
    fn two_summed_lookups_that_both_read_the_input_are_refused() {
        let mut toy = Toy::new();
        let last = with_position_lookup(&mut toy, "input_ids");
        let err = format!("{:#}", DecoderMap::recover(&toy.model(&last, &[])).unwrap_err());
        assert!(err.contains("is the token embedding cannot be told"), "{err}");
        assert!(err.contains("-> tok") && err.contains("-> pos"), "{err}");
    }

    /// optimum's GPT-2 feeds `position_ids` as an input: the tied head tells the tables apart.
    #[test]
    fn of_two_fed_lookups_the_one_whose_table_a_head_multiplies_by_is_the_token_lookup() {
        let mut toy = Toy::new();
        let last = with_position_lookup(&mut toy, "input_ids");
        toy.op("Transpose", &["embed"], "embed_t")
            .op("MatMul", &[&last, "embed_t"], "tied_logits");
        let map = DecoderMap::recover(&toy.model(&last, &[])).unwrap();
        assert_eq!(map.embed, "tok");
        assert_eq!(map.stream_start, "x_s");
    }

    #[test]
    fn an_odd_number_of_sums_or_no_lookup_is_explained() {
        let mut toy = Toy::new();
        let s = toy.embed("embed", "x");
        let last = toy.layer(&s, "wa", "x0");
        let err = DecoderMap::recover(&toy.model(&last, &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 1 sums, not two per layer"), "{err}");

        let mut toy = Toy::new();
        let err = DecoderMap::recover(&toy.model("input_ids", &[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("no embedding lookup"), "{err}");
    }
}
