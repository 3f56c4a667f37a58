//! GraphBuilder: how our code makes graph nodes, for new graphs (the export) and for additions
//! to existing ones (steering, the scoring head). Nodes of a new graph are named as torch.onnx
//! names them, under scopes (`/model/layers.3/self_attn/MatMul_1`, outputs `{node}_output_0`);
//! additions take chosen names, or fresh ones that avoid every name of the graph they extend.
//! What is built comes back as a [`GraphFragment`] for the caller to place.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use anyhow::Result;

use super::make::{AttrValue, make_node, make_tensor};
use super::pb::{GraphProto, NodeProto, TensorProto, ValueInfoProto};
use super::{DataType, MS_DOMAIN};

/// Nodes, initializers and graph inputs, in the order they were added.
#[derive(Debug, Default)]
pub struct GraphFragment {
    pub nodes: Vec<NodeProto>,
    pub initializers: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
}

/// Builds nodes, constants and inputs. `Store` is where large tensors go (the export streams its
/// weights into the data file through it); `()` for builders that make small constants only.
pub struct GraphBuilder<Store = ()> {
    nodes: Vec<NodeProto>,
    /// Interior mutability lets a constant be made inside the argument list of [`Self::op`].
    initializers: RefCell<Vec<TensorProto>>,
    inputs: Vec<ValueInfoProto>,
    scope: Vec<String>,
    counters: HashMap<String, usize>,
    constants: RefCell<HashMap<String, String>>,
    /// The names [`Self::fresh`] and [`Self::claim`] avoid: the extended graph's and their own.
    taken: HashSet<String>,
    store: Store,
}

impl GraphBuilder {
    /// Additions to `graph`: fresh names avoid every name it uses.
    pub fn extending(graph: &GraphProto) -> Self {
        let mut builder = Self::with_store(());
        builder.taken = graph.names();
        builder
    }
}

impl<Store> GraphBuilder<Store> {
    /// A new graph whose large tensors go to `store`.
    pub fn with_store(store: Store) -> Self {
        Self {
            nodes: Vec::new(),
            initializers: RefCell::default(),
            inputs: Vec::new(),
            scope: Vec::new(),
            counters: HashMap::new(),
            constants: RefCell::default(),
            taken: HashSet::new(),
            store,
        }
    }

    /// Where large tensors go.
    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn finish(self) -> GraphFragment {
        GraphFragment {
            nodes: self.nodes,
            initializers: self.initializers.into_inner(),
            inputs: self.inputs,
        }
    }

    /// Runs `f` with `name` appended to the node-name scope of [`Self::op`].
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_owned());
        let result = f(self);
        self.scope.pop();
        result
    }

    fn node_name(&mut self, op_type: &str) -> String {
        let prefix = format!("/{}/{op_type}", self.scope.join("/"));
        let n = self.counters.entry(prefix.clone()).or_default();
        let name = if *n == 0 { prefix } else { format!("{prefix}_{n}") };
        *n += 1;
        name
    }

    /// Adds a node named after its scope and type, and returns its (first) output, named after
    /// the node as torch.onnx does.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, AttrValue)>) -> String {
        let name = self.node_name(op_type);
        let output = format!("{name}_output_0");
        self.push("", op_type, name, inputs, &[&output], attrs);
        output
    }

    /// [`Self::op`] with an output of a chosen name (the hook tensors).
    pub fn op_named(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
        output: &str,
    ) -> String {
        let name = self.node_name(op_type);
        self.push("", op_type, name, inputs, &[output], attrs);
        output.to_owned()
    }

    /// Adds a node of ONNX Runtime's contrib domain (`com.microsoft`). `outputs` lists its
    /// outputs in order: `None` takes a name derived from the node's, `Some(name)` a chosen one
    /// (a hook), `Some("")` leaves an optional output out. Returns the output names.
    pub fn op_ms(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
        outputs: &[Option<&str>],
    ) -> Vec<String> {
        let name = self.node_name(op_type);
        let outputs: Vec<String> = outputs
            .iter()
            .enumerate()
            .map(|(i, out)| match out {
                Some(chosen) => (*chosen).to_owned(),
                None => format!("{name}_output_{i}"),
            })
            .collect();
        let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        self.push(MS_DOMAIN, op_type, name, inputs, &refs, attrs);
        outputs
    }

    /// Adds a default-domain node whose name and single output are chosen by the caller, and
    /// returns the output.
    pub fn node(
        &mut self,
        name: String,
        op_type: &str,
        inputs: &[&str],
        output: &str,
        attrs: Vec<(&str, AttrValue)>,
    ) -> String {
        self.push("", op_type, name, inputs, &[output], attrs);
        output.to_owned()
    }

    /// Adds a node made elsewhere (a copy of a graph's own node, rewired).
    pub fn add_node(&mut self, node: NodeProto) {
        self.nodes.push(node);
    }

    fn push(
        &mut self,
        domain: &str,
        op_type: &str,
        name: String,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
    ) {
        let mut node = make_node(op_type, inputs, outputs, name);
        if !domain.is_empty() {
            node = node.with_domain(domain);
        }
        for (key, value) in attrs {
            node = node.with_attr(key, value);
        }
        self.nodes.push(node);
    }

    /// Renames the output `from` of the node that makes it, which must have no consumer yet.
    pub fn rename_output(&mut self, from: &str, to: &str) {
        assert!(
            !self.nodes.iter().any(|n| n.input.iter().any(|i| i == from)),
            "'{from}' is already consumed"
        );
        let output = self
            .nodes
            .iter_mut()
            .rev()
            .flat_map(|n| n.output.iter_mut())
            .find(|o| *o == from)
            .expect("a node makes the tensor being renamed");
        *output = to.to_owned();
    }

    /// `base` if no name in use has it, else `base_1`, `base_2`, ...; taken from then on.
    pub fn fresh(&mut self, base: &str) -> String {
        let name = if self.taken.contains(base) {
            (1..)
                .map(|i| format!("{base}_{i}"))
                .find(|n| !self.taken.contains(n))
                .expect("some suffix is free")
        } else {
            base.to_owned()
        };
        self.taken.insert(name.clone());
        name
    }

    /// Takes `name` as it is; false when it is already in use.
    pub fn claim(&mut self, name: &str) -> bool {
        self.taken.insert(name.to_owned())
    }

    /// Adds an initializer and returns its name.
    pub fn initializer(&mut self, tensor: TensorProto) -> String {
        let name = tensor.name().to_owned();
        self.initializers.get_mut().push(tensor);
        name
    }

    /// Adds a graph input.
    pub fn input(&mut self, value: ValueInfoProto) {
        self.inputs.push(value);
    }

    /// An int64 constant, created once per distinct value.
    pub fn const_i64(&self, values: &[i64]) -> String {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(
            format!("i64{values:?}"),
            "i64_",
            DataType::Int64,
            &[values.len() as i64],
            raw,
        )
    }

    /// An int64 scalar constant (Range bounds), created once per value.
    pub fn const_scalar_i64(&self, value: i64) -> String {
        let raw = value.to_le_bytes().to_vec();
        self.constant(
            format!("i64scalar{value}"),
            "i64_scalar_",
            DataType::Int64,
            &[],
            raw,
        )
    }

    /// A scalar constant of `dtype` (rounded to it), created once per distinct value.
    pub fn const_scalar(&self, value: f32, dtype: DataType) -> String {
        let raw = match dtype {
            DataType::Float16 => half::f16::from_f32(value).to_le_bytes().to_vec(),
            DataType::Bfloat16 => half::bf16::from_f32(value).to_le_bytes().to_vec(),
            _ => value.to_le_bytes().to_vec(),
        };
        self.constant(
            format!("{dtype:?}{}", value.to_bits()),
            "scalar_",
            dtype,
            &[],
            raw,
        )
    }

    /// The constant `/const/{kind}{n}` known by `key`, made from `raw` the first time.
    fn constant(&self, key: String, kind: &str, dtype: DataType, dims: &[i64], raw: Vec<u8>) -> String {
        if let Some(name) = self.constants.borrow().get(&key) {
            return name.clone();
        }
        // Extending a graph that has its own `/const/*` (one of our exports), the names step
        // around them.
        let n = self.constants.borrow().len();
        let mut name = format!("/const/{kind}{n}");
        let mut k = 1;
        while self.taken.contains(&name) {
            name = format!("/const/{kind}{n}_{k}");
            k += 1;
        }
        self.initializers
            .borrow_mut()
            .push(make_tensor(&name, dtype, dims, raw));
        self.constants.borrow_mut().insert(key, name.clone());
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::make::make_graph;

    #[test]
    fn scoped_ops_are_named_as_torch_onnx_names_them() {
        let mut b = GraphBuilder::with_store(());
        let y = b
            .scoped("model/layers.0", |b| {
                let a = b.op("Mul", &["x", "x"], vec![]);
                Ok(b.op("Mul", &[&a, &b.const_i64(&[2])], vec![]))
            })
            .unwrap();
        assert_eq!(y, "/model/layers.0/Mul_1_output_0");
        assert_eq!(
            b.const_i64(&[2]),
            "/const/i64_0",
            "a constant is made once per value"
        );
        let fragment = b.finish();
        assert_eq!(fragment.nodes[0].name(), "/model/layers.0/Mul");
        assert_eq!(fragment.initializers.len(), 1);
    }

    #[test]
    fn fresh_names_avoid_the_extended_graph() {
        let graph = make_graph(
            vec![make_node("Relu", &["x"], &["y"], "y")],
            "g",
            vec![],
            vec![],
            vec![],
        );
        let mut b = GraphBuilder::extending(&graph);
        assert_eq!(b.fresh("y"), "y_1");
        assert_eq!(b.fresh("y"), "y_2");
        assert_eq!(b.fresh("z"), "z");
        assert!(!b.claim("x"));
        assert!(b.claim("w"));
    }

    #[test]
    fn constants_added_to_an_export_avoid_its_own() {
        let mut graph = make_graph(
            vec![make_node("Add", &["x", "/const/i64_0"], &["y"], "add")],
            "g",
            vec![],
            vec![],
            vec![],
        );
        graph
            .initializer
            .push(crate::onnx::make::make_tensor_i64("/const/i64_0", &[1], &[7]));
        let b = GraphBuilder::extending(&graph);
        let added = b.const_i64(&[0]);
        assert_eq!(added, "/const/i64_0_1");
        assert_eq!(b.const_i64(&[0]), added, "still made once per value");
    }
}
