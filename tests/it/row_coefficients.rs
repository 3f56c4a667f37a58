//! `infer::row_coefficients`: a `--sweepable` model's coefficient input rewritten to take one value
//! per batch row. K identical rows at K values give, row by row, the logits of the scalar graph
//! fed each value on its own (the patch's own graph, not our rewrite compared with itself); at
//! two hooks with `add`, `clamp` and `add_if_active` rows. Anything but the chain the patch builds
//! is refused, and the model is left as it was.

use ort::value::Tensor;
use sae_onnx::contract::sweep::coefficient_inputs;
use sae_onnx::export::ExportOptions;
use sae_onnx::infer::row_coefficients::{per_row_coefficients, row_values};
use sae_onnx::infer::runtime::{ScalarFeed, SessionOptions, session_from_model};
use sae_onnx::onnx::Model;
use sae_onnx::onnx::make::make_node;

const PROMPT: [i64; 7] = [2, 65, 59, 177, 73, 12, 90];

/// The logits of `rows` copies of the prompt, with `feed` as the coefficient input.
fn logits(model: &Model, rows: usize, feed: (&str, ort::value::DynValue)) -> Vec<f32> {
    let mut session = session_from_model(model, &SessionOptions::default()).unwrap();
    let n = PROMPT.len();
    let ids = Tensor::from_array(([rows, n], PROMPT.repeat(rows))).unwrap();
    let mask = Tensor::from_array(([rows, n], vec![1i64; rows * n])).unwrap();
    let out = session
        .run(ort::inputs!["input_ids" => ids, "attention_mask" => mask, feed.0 => feed.1])
        .unwrap();
    out["logits"].try_extract_tensor::<f32>().unwrap().1.to_vec()
}

#[test]
fn per_row_coefficients_give_each_row_the_logits_of_its_value_alone() {
    // The runtime is loaded before the first tensor is made.
    sae_onnx::infer::runtime::init(None).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    // tests/fixtures/steer_actions/mixed.csv: a clamp row at blocks.1.hook_mlp_out, the others at
    // blocks.2.hook_resid_post.
    let steered =
        crate::eval_fan_out::sweepable_demo(tmp.path(), "steer_actions/mixed.csv", &ExportOptions::default());
    let original = Model::load(&steered).unwrap();
    let inputs = coefficient_inputs(&original.proto).unwrap();
    for (action, hook, values) in [
        ("add", "blocks.2.hook_resid_post", [0.0, 24.0, -60.0]),
        ("clamp", "blocks.1.hook_mlp_out", [0.0, 43.0, 200.0]),
        ("add_if_active", "blocks.2.hook_resid_post", [0.0, 16.0, 80.0]),
    ] {
        let input = inputs
            .iter()
            .find(|c| c.action == action && c.hook == hook)
            .unwrap_or_else(|| panic!("no {action} row at {hook}"));
        let name = input.input.as_str();
        let alone: Vec<Vec<f32>> = values
            .iter()
            .map(|&value| {
                let feed = ScalarFeed {
                    name: name.to_owned(),
                    value,
                    dtype: input.dtype,
                };
                logits(&original, 1, (name, feed.tensor().unwrap()))
            })
            .collect();
        let mut rewritten = Model::load(&steered).unwrap();
        per_row_coefficients(&mut rewritten, &[name]).unwrap();
        assert!(
            !rewritten.graph().initializer.iter().any(|t| t.name() == name),
            "{name}: its default is still there"
        );
        let rows = logits(
            &rewritten,
            values.len(),
            (name, row_values(input.dtype, &values).unwrap()),
        );
        let per_row = rows.len() / values.len();
        for (k, expected) in alone.iter().enumerate() {
            let got = &rows[k * per_row..(k + 1) * per_row];
            let worst = got
                .iter()
                .zip(expected)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-5,
                "{action} {name} = {}: row {k} differs by {worst}",
                values[k]
            );
        }
        let moved = alone[0]
            .iter()
            .zip(&alone[values.len() - 1])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > 1e-2,
            "{action} {name}: the values give alike logits; the test could not fail"
        );
    }
}

#[test]
fn a_foreign_edit_of_a_coefficient_chain_is_refused_and_the_model_left_as_it_was() {
    let tmp = tempfile::tempdir().unwrap();
    let steered =
        crate::eval_fan_out::sweepable_demo(tmp.path(), "steer_actions/mixed.csv", &ExportOptions::default());
    let name = coefficient_inputs(&Model::load(&steered).unwrap().proto).unwrap()[0]
        .input
        .clone();
    let mut model = Model::load(&steered).unwrap();
    let error = per_row_coefficients(&mut model, &["no.such.input"]).unwrap_err();
    assert!(format!("{error:#}").contains("no such input"), "{error:#}");
    // A node of someone else's reading the coefficient besides the patch's chain.
    model
        .graph_mut()
        .node
        .push(make_node("Identity", &[&name], &["foreign"], "foreign_reader"));
    let before = model.proto.clone();
    let error = per_row_coefficients(&mut model, &[&name]).unwrap_err();
    assert!(
        format!("{error:#}").contains("read by several nodes"),
        "{error:#}"
    );
    assert_eq!(model.proto, before, "a refused rewrite edited the model");
}
