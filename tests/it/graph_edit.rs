//! Graph editing on hand-built graphs: producers and consumers (subgraphs and shadowing included),
//! rewiring uses, splicing nodes after a tensor and running the result in ONNX Runtime, topological
//! sorting, removing dead nodes, and fresh names.

use crate::common;

use std::collections::HashSet;
use std::path::Path;

use common::*;
use ort::value::Tensor;
use sae_onnx::infer::runtime::{self, SessionOptions};
use sae_onnx::onnx::make::*;
use sae_onnx::onnx::pb::{GraphProto, NodeProto};
use sae_onnx::onnx::{DataType, Model, SaveOptions};

fn graph(proto: &sae_onnx::onnx::pb::ModelProto) -> GraphProto {
    proto.graph.clone().unwrap()
}

fn node_names(g: &GraphProto) -> Vec<&str> {
    g.node.iter().map(|n| n.name()).collect()
}

fn node<'a>(g: &'a GraphProto, name: &str) -> &'a NodeProto {
    g.node
        .iter()
        .find(|n| n.name() == name)
        .unwrap_or_else(|| panic!("no node {name}"))
}

fn branch<'a>(n: &'a NodeProto, attr: &str) -> &'a GraphProto {
    n.attr(attr)
        .and_then(|a| a.g.as_ref())
        .unwrap_or_else(|| panic!("{} has no {attr}", n.name()))
}

fn f32_info(name: &str, len: i64) -> sae_onnx::onnx::pb::ValueInfoProto {
    make_tensor_value_info(name, DataType::Float, &[len.into()])
}

/// A branch graph: `nodes`, outputs `outputs` (all float [3]).
fn body(name: &str, nodes: Vec<NodeProto>, outputs: &[&str]) -> GraphProto {
    make_graph(
        nodes,
        name,
        vec![],
        outputs.iter().map(|o| f32_info(o, 3)).collect(),
        vec![],
    )
}

/// cond: bool [1], x: float [3].
///   0 /neg        nx = Neg(x)
///   1 /sig        sx = Sigmoid(x)
///   2 /if_reads   r  = If(cond) { then: Identity(nx)  (outer nx) | else: Abs(x) }
///   3 /if_shadows r2 = If(cond) { then: nx = Abs(x); Identity(nx)  (its own nx) | else: Identity(x) }
fn if_graph() -> GraphProto {
    let reads = make_node("If", &["cond"], &["r"], "/if_reads")
        .with_attr(
            "then_branch",
            body(
                "reads_then",
                vec![make_node(
                    "Identity",
                    &["nx"],
                    &["t_out"],
                    "/if_reads/then/Identity",
                )],
                &["t_out"],
            ),
        )
        .with_attr(
            "else_branch",
            body(
                "reads_else",
                vec![make_node("Abs", &["x"], &["e_out"], "/if_reads/else/Abs")],
                &["e_out"],
            ),
        );
    let shadows = make_node("If", &["cond"], &["r2"], "/if_shadows")
        .with_attr(
            "then_branch",
            body(
                "shadows_then",
                vec![
                    make_node("Abs", &["x"], &["nx"], "/if_shadows/then/Abs"),
                    make_node("Identity", &["nx"], &["s_out"], "/if_shadows/then/Identity"),
                ],
                &["s_out"],
            ),
        )
        .with_attr(
            "else_branch",
            body(
                "shadows_else",
                vec![make_node(
                    "Identity",
                    &["x"],
                    &["s2_out"],
                    "/if_shadows/else/Identity",
                )],
                &["s2_out"],
            ),
        );
    make_graph(
        vec![
            make_node("Neg", &["x"], &["nx"], "/neg"),
            make_node("Sigmoid", &["x"], &["sx"], "/sig"),
            reads,
            shadows,
        ],
        "if_graph",
        vec![
            make_tensor_value_info("cond", DataType::Bool, &[1.into()]),
            f32_info("x", 3),
        ],
        vec![f32_info("r", 3), f32_info("r2", 3)],
        vec![],
    )
}

/// [`if_graph`] without `/if_shadows`: ONNX Runtime (like the ONNX checker) refuses a subgraph
/// that redefines an outer name, so only this part can run.
fn runnable(mut g: GraphProto) -> GraphProto {
    g.node.retain(|n| n.name() != "/if_shadows");
    g.output.retain(|v| v.name() != "r2");
    g
}

/// Runs a model with inputs cond: bool [1] and x: float [3]; returns every output.
fn run_cond(path: &Path, cond: bool, x: &[f32]) -> Vec<Vec<f32>> {
    let mut session =
        runtime::session(path, &SessionOptions::default()).expect("ONNX Runtime opens the model");
    let cond = Tensor::from_array((vec![1_i64], vec![cond])).unwrap();
    let x = Tensor::from_array((vec![x.len() as i64], x.to_vec())).unwrap();
    let outputs = session
        .run(ort::inputs!["cond" => cond, "x" => x])
        .expect("the model runs");
    (0..outputs.len())
        .map(|i| outputs[i].try_extract_tensor::<f32>().unwrap().1.to_vec())
        .collect()
}

fn save(g: GraphProto, dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    Model::new(make_model(g, vec![]))
        .save(&path, &SaveOptions::default())
        .unwrap();
    path
}

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

/// Each node reads only graph inputs, initializers and outputs of nodes before it.
fn assert_topological(g: &GraphProto) {
    let mut seen: HashSet<&str> = g.input.iter().map(|v| v.name()).collect();
    seen.extend(g.initializer.iter().map(|t| t.name()));
    for n in &g.node {
        for i in &n.input {
            assert!(
                i.is_empty() || seen.contains(i.as_str()),
                "node {} reads '{i}' before it is produced; order {:?}",
                n.name(),
                node_names(g)
            );
        }
        seen.extend(n.output.iter().map(String::as_str));
    }
}

#[test]
fn producer_and_consumers_on_the_mlp() {
    let g = graph(&mlp());
    assert_eq!(g.producer("xw"), Some(0));
    assert_eq!(g.producer("pre"), Some(1));
    assert_eq!(g.producer("y"), Some(2));
    assert_eq!(g.producer("x"), None, "graph inputs have no producing node");
    assert_eq!(g.producer("W"), None, "initializers have no producing node");
    assert_eq!(g.producer("nope"), None);
    assert_eq!(g.consumers("x"), vec![0]);
    assert_eq!(g.consumers("W"), vec![0]);
    assert_eq!(g.consumers("b"), vec![1]);
    assert_eq!(g.consumers("xw"), vec![1]);
    assert_eq!(g.consumers("pre"), vec![2]);
    assert!(
        g.consumers("y").is_empty(),
        "a graph output is not a node's input"
    );
    assert!(g.is_source("x") && g.is_source("W") && !g.is_source("xw"));

    // A node reading a tensor twice is one consumer.
    let mut g = g;
    g.node.push(make_node("Mul", &["pre", "pre"], &["sq"], "/sq"));
    assert_eq!(g.consumers("pre"), vec![2, 3]);
}

#[test]
fn consumers_see_reads_from_inside_subgraphs_but_not_shadowed_names() {
    let g = if_graph();
    assert_eq!(g.consumers("nx"), vec![2], "only /if_reads reads the outer nx");
    assert_eq!(
        g.consumers("x"),
        vec![0, 1, 2, 3],
        "both If nodes read x inside a branch"
    );
    assert_eq!(g.consumers("cond"), vec![2, 3]);
    assert!(g.consumers("sx").is_empty());
    assert!(
        g.consumers("t_out").is_empty(),
        "a branch's own values are not read from outside"
    );
    assert_eq!(
        g.producer("nx"),
        Some(0),
        "branch outputs are not top-level producers"
    );
    assert_eq!(g.producer("r2"), Some(3));

    // Two levels down: an If inside the then-branch of an If reads the top-level nx.
    let inner = make_node("If", &["cond"], &["mid"], "/outer/then/inner")
        .with_attr(
            "then_branch",
            body(
                "in_then",
                vec![make_node("Neg", &["nx"], &["q"], "/in/Neg")],
                &["q"],
            ),
        )
        .with_attr(
            "else_branch",
            body(
                "in_else",
                vec![make_node("Neg", &["x"], &["q2"], "/in/Neg2")],
                &["q2"],
            ),
        );
    let outer = make_node("If", &["cond"], &["r3"], "/outer")
        .with_attr("then_branch", body("out_then", vec![inner], &["mid"]))
        .with_attr(
            "else_branch",
            body(
                "out_else",
                vec![make_node("Identity", &["x"], &["o"], "/out/Id")],
                &["o"],
            ),
        );
    let mut g = if_graph();
    g.node.push(outer);
    assert_eq!(g.consumers("nx"), vec![2, 4], "a read two subgraphs deep counts");
    assert!(g.consumers("mid").is_empty());

    g.replace_all_uses_with("nx", "sx");
    let outer = node(&g, "/outer");
    let inner = &branch(outer, "then_branch").node[0];
    assert_eq!(
        branch(inner, "then_branch").node[0].input,
        vec!["sx"],
        "renamed two levels down"
    );
    assert_eq!(branch(inner, "else_branch").node[0].input, vec!["x"]);
    assert!(g.consumers("nx").is_empty());
    assert_eq!(g.consumers("sx"), vec![2, 4]);
}

#[test]
fn replace_all_uses_with_renames_inside_subgraphs_unless_shadowed_and_runs() {
    let original = if_graph();
    let mut g = original.clone();
    g.replace_all_uses_with("nx", "sx");
    let reads = node(&g, "/if_reads");
    assert_eq!(
        branch(reads, "then_branch").node[0].input,
        vec!["sx"],
        "outer read renamed"
    );
    assert_eq!(branch(reads, "else_branch").node[0].input, vec!["x"]);
    assert_eq!(
        node(&g, "/if_shadows"),
        node(&original, "/if_shadows"),
        "a branch defining its own nx is left alone"
    );
    assert_eq!(
        node(&g, "/neg").output,
        vec!["nx"],
        "producers keep their outputs"
    );
    assert_eq!(g.consumers("sx"), vec![2]);
    assert!(g.consumers("nx").is_empty());
    // /neg now feeds nothing: cleanup drops it.
    assert_eq!(g.cleanup(), 1);
    assert_eq!(node_names(&g), ["/sig", "/if_reads", "/if_shadows"]);

    // The same edit on the part ONNX Runtime accepts: the then-branch computes sigmoid where it
    // negated.
    let dir = tempfile::tempdir().unwrap();
    let x = [-1.5_f32, 0.25, 2.0];
    let before = save(runnable(original), dir.path(), "before.onnx");
    let mut g = runnable(if_graph());
    g.replace_all_uses_with("nx", "sx");
    assert_eq!(g.cleanup(), 1);
    let after = save(g, dir.path(), "after.onnx");
    let sig: Vec<f32> = x.iter().map(|&v| sigmoid(v)).collect();
    assert_close(&run_cond(&before, true, &x)[0], &x.map(|v| -v), 0.0);
    assert_close(&run_cond(&after, true, &x)[0], &sig, 1e-6);
    for path in [&before, &after] {
        assert_close(&run_cond(path, false, &x)[0], &x.map(f32::abs), 0.0);
    }
}

#[test]
fn replace_all_uses_with_leaves_graph_outputs_alone() {
    // y is both a graph output and read by another node.
    let mut g = graph(&mlp());
    g.node.push(make_node("Neg", &["y"], &["ny"], "/neg_y"));
    g.output.push(f32_info("ny", 3));
    g.replace_all_uses_with("y", "pre");
    assert_eq!(node(&g, "/neg_y").input, vec!["pre"]);
    assert_eq!(node(&g, "/mlp/Relu").output, vec!["y"]);
    let outputs: Vec<&str> = g.output.iter().map(|v| v.name()).collect();
    assert_eq!(outputs, ["y", "ny"], "the model's interface keeps its names");

    let mut g = graph(&mlp());
    g.replace_all_uses_with("pre", "xw");
    assert_eq!(node(&g, "/mlp/Relu").input, vec!["xw"]);
    assert_eq!(node(&g, "/mlp/Add").output, vec!["pre"]);
    assert_eq!(g.output[0].name(), "y");
}

/// The MLP with `delta` added to the tensor `at` (`xw` or `pre`), spliced in with insert_after.
fn steer(at: &str, delta: &[f32; 3]) -> GraphProto {
    let mut g = graph(&mlp());
    let out = g.unique_name(&format!("{at}_steered"));
    let node_name = g.unique_name(&format!("/steer/{at}/Add"));
    g.initializer.push(make_tensor_f32("steer_delta", &[3], delta));
    g.insert_after(
        at,
        vec![make_node("Add", &[at, "steer_delta"], &[out.as_str()], node_name)],
        &out,
    )
    .unwrap();
    g
}

#[test]
fn insert_after_splices_an_add_that_onnx_runtime_computes() {
    let dir = tempfile::tempdir().unwrap();
    let delta = [0.5_f32, -1.25, 2.0];
    let x = vec![1.0_f32, 2.0, -1.0, 0.5, -0.5, 0.0, 3.0, 1.0, 0.2, -0.4, 0.6, -0.8];
    // relu(x @ W + delta + b), computed here without ONNX.
    let expected: Vec<f32> = x
        .chunks(4)
        .flat_map(|row| {
            (0..3).map(move |j| {
                let xw: f32 = (0..4).map(|k| row[k] * W[k * 3 + j]).sum();
                (xw + delta[j] + B[j]).max(0.0)
            })
        })
        .collect();
    assert_ne!(expected, mlp_expected(&x), "the steering must change the output");

    for at in ["xw", "pre"] {
        let g = steer(at, &delta);
        let steered = format!("{at}_steered");
        let names = node_names(&g);
        let producer = g.producer(at).unwrap();
        assert_eq!(
            names[producer + 1],
            format!("/steer/{at}/Add"),
            "right after the producer"
        );
        assert_eq!(
            g.consumers(at),
            vec![producer + 1],
            "only the new node reads {at}"
        );
        assert_eq!(
            g.consumers(&steered).len(),
            1,
            "the old reader moved to {steered}"
        );
        assert_eq!(g.output[0].name(), "y");
        let mut sorted = g.clone();
        sorted.toposort().unwrap();
        assert_eq!(sorted, g, "the splice keeps the graph in topological order");

        let path = save(g, dir.path(), &format!("steer_{at}.onnx"));
        let (shape, y) = run_f32(&path, "x", &[3, 4], x.clone());
        assert_eq!(shape, vec![3, 3]);
        assert_close(&y, &expected, 1e-5);
    }
}

#[test]
fn insert_after_a_graph_input_or_initializer_goes_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = graph(&mlp());
    g.initializer.push(make_tensor_f32("scale", &[], &[-2.0]));
    g.insert_after(
        "x",
        vec![make_node("Mul", &["x", "scale"], &["x_scaled"], "/scale")],
        "x_scaled",
    )
    .unwrap();
    assert_eq!(node_names(&g), ["/scale", "/mlp/MatMul", "/mlp/Add", "/mlp/Relu"]);
    assert_eq!(node(&g, "/mlp/MatMul").input, vec!["x_scaled", "W"]);
    assert_eq!(g.input[0].name(), "x", "the graph input keeps its name");
    assert_topological(&g);
    let path = save(g, dir.path(), "scaled.onnx");
    let x = vec![0.5_f32, -1.0, 0.25, 2.0];
    let (_, y) = run_f32(&path, "x", &[1, 4], x.clone());
    let scaled: Vec<f32> = x.iter().map(|v| v * -2.0).collect();
    assert_close(&y, &mlp_expected(&scaled), 1e-6);

    let mut g = graph(&mlp());
    g.insert_after("W", vec![make_node("Neg", &["W"], &["W_neg"], "/negW")], "W_neg")
        .unwrap();
    assert_eq!(g.node[0].name(), "/negW");
    assert_eq!(node(&g, "/mlp/MatMul").input, vec!["x", "W_neg"]);
}

#[test]
fn insert_after_refuses_taken_names_and_unproduced_tensors_without_editing() {
    let original = graph(&mlp());
    for taken in ["pre", "W", "x", "y", "/mlp/Add"] {
        let mut g = original.clone();
        let err = g
            .insert_after("xw", vec![make_node("Neg", &["xw"], &[taken], "/n")], taken)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("'{taken}' is already used")), "{err}");
        assert_eq!(g, original, "a refused insert changes nothing");
    }

    let mut g = original.clone();
    let err = g
        .insert_after("nope", vec![make_node("Neg", &["nope"], &["n2"], "/n")], "n2")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("'nope'") && err.contains("no node, input or initializer produces it"),
        "{err}"
    );
    assert_eq!(g, original);

    // A tensor that is read but produced by nothing (a broken graph): the readers must not be
    // rewired before the error.
    let mut broken = original.clone();
    broken.node.remove(0); // MatMul, the producer of xw
    let before = broken.clone();
    let err = broken
        .insert_after("xw", vec![make_node("Neg", &["xw"], &["n3"], "/n")], "n3")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no node, input or initializer produces it"), "{err}");
    assert_eq!(broken, before, "a failed insert leaves the graph as it was");
}

#[test]
fn insert_after_a_tensor_read_inside_a_subgraph_rewires_the_subgraph() {
    let mut g = if_graph();
    g.insert_after(
        "nx",
        vec![make_node("Abs", &["nx"], &["nx_abs"], "/abs")],
        "nx_abs",
    )
    .unwrap();
    assert_eq!(
        node_names(&g),
        ["/neg", "/abs", "/sig", "/if_reads", "/if_shadows"]
    );
    assert_eq!(
        branch(node(&g, "/if_reads"), "then_branch").node[0].input,
        vec!["nx_abs"]
    );
    assert_eq!(
        node(&g, "/if_shadows"),
        node(&if_graph(), "/if_shadows"),
        "the shadowing branch still reads its own nx"
    );
}

/// x -> /a Neg -> a; /b Abs(a) -> b; /c Relu(a) -> c; /d Add(b, c) -> d; /e Mul(d, k) -> y.
fn diamond() -> GraphProto {
    make_graph(
        vec![
            make_node("Neg", &["x"], &["a"], "/a"),
            make_node("Abs", &["a"], &["b"], "/b"),
            make_node("Relu", &["a"], &["c"], "/c"),
            make_node("Add", &["b", "c"], &["d"], "/d"),
            make_node("Mul", &["d", "k"], &["y"], "/e"),
        ],
        "diamond",
        vec![f32_info("x", 3)],
        vec![f32_info("y", 3)],
        vec![make_tensor_f32("k", &[3], &[1.0, 2.0, 3.0])],
    )
}

#[test]
fn toposort_orders_shuffled_nodes_and_keeps_valid_orders() {
    let valid = diamond();
    let mut g = valid.clone();
    g.toposort().unwrap();
    assert_eq!(g, valid, "an already valid order is unchanged");

    // Another valid order (/c before /b) is kept as it is, too.
    let mut other = valid.clone();
    other.node.swap(1, 2);
    let mut g = other.clone();
    g.toposort().unwrap();
    assert_eq!(g, other);

    // Every permutation of the five nodes sorts into a valid order of the same nodes.
    fn permutations(rest: Vec<usize>) -> Vec<Vec<usize>> {
        if rest.is_empty() {
            return vec![vec![]];
        }
        let mut all = Vec::new();
        for (i, &first) in rest.iter().enumerate() {
            let mut others = rest.clone();
            others.remove(i);
            for mut tail in permutations(others) {
                tail.insert(0, first);
                all.push(tail);
            }
        }
        all
    }
    let perms = permutations((0..valid.node.len()).collect());
    assert_eq!(perms.len(), 120);
    let mut expected_names = node_names(&valid);
    expected_names.sort_unstable();
    for perm in perms {
        let mut g = valid.clone();
        g.node = perm.iter().map(|&i| valid.node[i].clone()).collect();
        g.toposort().unwrap();
        assert_topological(&g);
        let mut names = node_names(&g);
        names.sort_unstable();
        assert_eq!(names, expected_names, "{perm:?}: same nodes, each once");
    }

    // The reverse order comes back as the original one: among ready nodes, the earliest goes first.
    let mut g = valid.clone();
    g.node.reverse();
    g.toposort().unwrap();
    assert_eq!(node_names(&g), ["/a", "/c", "/b", "/d", "/e"]);
}

#[test]
fn toposort_counts_reads_from_inside_subgraphs() {
    let mut g = if_graph();
    // The If that reads nx in a branch comes before /neg, which produces nx.
    g.node.rotate_left(2); // /if_reads, /if_shadows, /neg, /sig
    g.toposort().unwrap();
    let names = node_names(&g);
    let pos = |n: &str| names.iter().position(|m| *m == n).unwrap();
    assert!(pos("/neg") < pos("/if_reads"), "{names:?}");
    // /if_shadows defines its own nx, so it does not wait for /neg.
    assert_eq!(names, ["/if_shadows", "/neg", "/if_reads", "/sig"]);
}

#[test]
fn toposort_reports_cycles_by_node_name() {
    let mut g = diamond();
    // /a now reads d: /a -> /b, /c -> /d -> /a.
    g.node[0].input = vec!["d".into()];
    let before = g.clone();
    let err = g.toposort().unwrap_err().to_string();
    assert!(err.contains("cycle"), "{err}");
    for name in ["/a", "/b", "/c", "/d"] {
        assert!(err.contains(name), "the error names {name}: {err}");
    }
    assert_eq!(g, before, "a failed sort leaves the order alone");

    let mut g = diamond();
    g.node[3].input = vec!["b".into(), "d".into()];
    let err = g.toposort().unwrap_err().to_string();
    assert!(err.contains("'/d'") && err.contains("its own output"), "{err}");
}

#[test]
fn cleanup_removes_dead_branches_and_their_weights() {
    let dir = tempfile::tempdir().unwrap();
    let mut g = graph(&mlp());
    g.initializer
        .push(make_tensor_f32("dead_w", &[3], &[1.0, 2.0, 3.0]));
    g.initializer.push(make_tensor_f32("orphan", &[1], &[7.0]));
    g.node
        .insert(1, make_node("Sigmoid", &["xw"], &["dead1"], "/dead/Sigmoid"));
    g.node
        .push(make_node("Mul", &["dead1", "dead_w"], &["dead2"], "/dead/Mul"));
    g.node.push(make_node("Neg", &["dead2"], &["dead3"], "/dead/Neg"));
    g.value_info.push(f32_info("dead1", 3));
    g.value_info.push(f32_info("pre", 3));
    let live = graph(&mlp());

    assert_eq!(g.cleanup(), 3, "three dead nodes");
    assert_eq!(node_names(&g), node_names(&live), "live nodes keep their order");
    let inits: Vec<&str> = g.initializer.iter().map(|t| t.name()).collect();
    assert_eq!(inits, ["W", "b"], "dead and unread initializers go");
    let infos: Vec<&str> = g.value_info.iter().map(|v| v.name()).collect();
    assert_eq!(infos, ["pre"]);
    assert_eq!(g.input, live.input, "graph inputs stay even if unread");
    assert_eq!(g.cleanup(), 0, "nothing left to remove");

    let path = save(g, dir.path(), "clean.onnx");
    let x = vec![1.0_f32, -2.0, 0.5, 3.0];
    let (_, y) = run_f32(&path, "x", &[1, 4], x.clone());
    assert_close(&y, &mlp_expected(&x), 1e-6);

    // /neg feeds only a branch of /if_reads, so it stays; /sig feeds nothing.
    let mut g = if_graph();
    assert_eq!(g.cleanup(), 1, "only /sig is dead");
    assert_eq!(node_names(&g), ["/neg", "/if_reads", "/if_shadows"]);
}

#[test]
fn a_branch_returning_an_outer_value_directly_reads_it() {
    // ONNX allows a subgraph output to name an outer-scope value with no node in between (ONNX
    // Runtime refuses to run it and asks for an Identity, but editing must not break it further:
    // cleanup must keep /neg and toposort must order it first).
    let pass = make_node("If", &["cond"], &["r"], "/if_pass")
        .with_attr("then_branch", body("pass_then", vec![], &["nx"]))
        .with_attr("else_branch", body("pass_else", vec![], &["x"]));
    let mut g = make_graph(
        vec![make_node("Neg", &["x"], &["nx"], "/neg"), pass],
        "pass",
        vec![
            make_tensor_value_info("cond", DataType::Bool, &[1.into()]),
            f32_info("x", 3),
        ],
        vec![f32_info("r", 3)],
        vec![],
    );
    assert_eq!(g.consumers("nx"), vec![1]);
    assert_eq!(g.consumers("x"), vec![0, 1]);
    assert_eq!(g.cleanup(), 0, "/neg feeds the then-branch's output");
    g.node.reverse();
    g.toposort().unwrap();
    assert_eq!(node_names(&g), ["/neg", "/if_pass"]);

    g.replace_all_uses_with("nx", "x");
    assert_eq!(branch(&g.node[1], "then_branch").output[0].name(), "x");
}

#[test]
fn unique_name_avoids_every_name_in_use() {
    let g = if_graph();
    assert_eq!(g.unique_name("fresh"), "fresh");
    assert_eq!(g.unique_name("x"), "x_1", "graph inputs");
    assert_eq!(g.unique_name("r2"), "r2_1", "graph outputs");
    assert_eq!(g.unique_name("/neg"), "/neg_1", "node names");
    assert_eq!(g.unique_name("t_out"), "t_out_1", "values inside subgraphs");
    assert_eq!(
        g.unique_name("/if_shadows/then/Abs"),
        "/if_shadows/then/Abs_1",
        "nodes inside subgraphs"
    );

    let mut g = graph(&mlp());
    assert_eq!(g.unique_name("W"), "W_1", "initializers");
    g.initializer.push(make_tensor_f32("W_1", &[1], &[0.0]));
    g.node.push(make_node("Neg", &["y"], &["W_2"], "W_3"));
    assert_eq!(g.unique_name("W"), "W_4");
    let names = g.names();
    for n in [
        "x",
        "W",
        "b",
        "xw",
        "pre",
        "y",
        "/mlp/MatMul",
        "W_1",
        "W_2",
        "W_3",
    ] {
        assert!(names.contains(n), "{n}");
    }
}

#[test]
fn edits_apply_to_a_model_written_by_python_onnx() {
    // Made by the reference `onnx` package with external data; edited and saved elsewhere, the data
    // file is linked or copied beside the new model and ONNX Runtime runs it.
    let src = fixture("python_onnx/mlp_external.onnx");
    let mut model = Model::load(&src).unwrap();
    let g = model.graph_mut();
    assert_eq!(g.producer("xwb"), Some(1));
    g.initializer
        .push(make_tensor_f32("shift", &[3], &[-10.0, 0.0, 10.0]));
    let out = g.unique_name("xwb_shifted");
    g.insert_after(
        "xwb",
        vec![make_node("Add", &["xwb", "shift"], &[out.as_str()], "/shift")],
        &out,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shifted.onnx");
    model.save(&path, &SaveOptions::default()).unwrap();

    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("python_onnx/mlp_expected.json")).unwrap())
            .unwrap();
    let flat = |key: &str| -> Vec<f32> {
        expected[key]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
            .collect()
    };
    let (x, y) = (flat("x"), flat("y"));
    // Recompute both outputs in Rust from the weights as our loader reads them back.
    let loaded = Model::load(&path).unwrap();
    let weight = |name: &str| -> Vec<f32> {
        let t = loaded
            .graph()
            .initializer
            .iter()
            .find(|t| t.name() == name)
            .unwrap();
        loaded
            .tensor_bytes(t)
            .unwrap()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect()
    };
    let (w, b) = (weight("W"), weight("b"));
    let shift = [-10.0_f32, 0.0, 10.0];
    let plain: Vec<f32> = x
        .chunks(4)
        .flat_map(|row| {
            let (w, b) = (&w, &b);
            (0..3).map(move |j| ((0..4).map(|k| row[k] * w[k * 3 + j]).sum::<f32>() + b[j]).max(0.0))
        })
        .collect();
    assert_eq!(
        plain, y,
        "our reading of the Python weights reproduces onnxruntime's output"
    );
    let shifted: Vec<f32> = x
        .chunks(4)
        .flat_map(|row| {
            let (w, b) = (&w, &b);
            (0..3)
                .map(move |j| ((0..4).map(|k| row[k] * w[k * 3 + j]).sum::<f32>() + b[j] + shift[j]).max(0.0))
        })
        .collect();
    let (_, got) = run_f32(&path, "x", &[3, 4], x);
    assert_close(&got, &shifted, 0.0);
}
