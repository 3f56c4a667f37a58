//! Steering actions (`add`, `clamp`, `add_if_active`, `clamp_projection`) against transformers: the
//! patched demo model (models/tiny-gemma2) gives the logits of a transformers run whose forward hooks
//! apply the SAELens / lm-eval formulas (tests/fixtures/steer_actions/make_golden.py); sweepable
//! patches take their coefficients as overridable inputs; bad actions and thresholds are reported
//! with file:line:column.

use crate::common;

use std::path::{Path, PathBuf};

use common::golden::Golden;
use ort::session::SessionInputValue;
use ort::value::Tensor;
use sae_onnx::contract::sweep::coefficient_inputs;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::runtime::{self, SessionOptions};
use sae_onnx::onnx::{DataType, Model};
use sae_onnx::steer::patch::{PatchOptions, PatchOutput, patch_with_output};
use sae_onnx::steer::{SteerAction, SteeringPlan};

const TOLERANCE: f32 = 1e-4;
/// The goldens keep every STRIDE-th vocabulary entry of the logits.
const STRIDE: usize = 16;
const PROMPTS: usize = 2;

const CASES: &[&str] = &[
    "add",
    "clamp",
    "clamp_relu",
    "clamp_jumprelu",
    "add_if_active",
    "add_if_active_threshold",
    "clamp_projection",
    "mixed",
    "mixed_alt",
    "lmeval_clamp",
];

fn fixture(rel: &str) -> PathBuf {
    common::fixture(&format!("steer_actions/{rel}"))
}

fn golden() -> Golden {
    Golden::load(&fixture("golden.safetensors"))
}

fn export_demo(dir: &Path) -> PathBuf {
    let out = dir.join("demo.onnx");
    export::export("models/tiny-gemma2", &out, &ExportOptions::default()).unwrap();
    out
}

fn patched(base: &Path, csv: &Path, out: &Path, sweepable: bool, replace: bool) -> PathBuf {
    patch_with_output(
        &PatchOptions {
            csv: csv.to_path_buf(),
            output: out.to_path_buf(),
            model: Some(base.display().to_string()),
            replace,
            progress: false,
        },
        &PatchOutput {
            sweepable,
            force: true,
        },
    )
    .unwrap_or_else(|e| panic!("{}: {e:#}", csv.display()));
    out.to_path_buf()
}

/// `csv` patched onto `base` twice, with fixed coefficients and `--sweepable`.
fn fixed_and_sweepable(base: &Path, csv: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let patch = |name: &str, sweepable| patched(base, &fixture(csv), &dir.join(name), sweepable, false);
    (patch("fixed.onnx", false), patch("sweep.onnx", true))
}

/// Logits (every STRIDE-th vocabulary entry) of each golden prompt, with `feeds` as extra scalar
/// inputs (of the type the model's coefficient inputs declare).
fn logits(model: &Path, feeds: &[(&str, f32)]) -> Vec<Vec<f32>> {
    let golden = golden();
    let declared = coefficient_inputs(&Model::load(model).unwrap().proto).unwrap();
    let mut session = runtime::session(model, &SessionOptions::default()).unwrap();
    (0..PROMPTS)
        .map(|k| {
            let (shape, ids) = golden.i64s(&format!("p{k}.input_ids"));
            let mask = vec![1i64; ids.len()];
            let mut inputs: Vec<(std::borrow::Cow<str>, SessionInputValue)> = vec![
                (
                    "input_ids".into(),
                    Tensor::from_array((shape.clone(), ids)).unwrap().into(),
                ),
                (
                    "attention_mask".into(),
                    Tensor::from_array((shape.clone(), mask)).unwrap().into(),
                ),
            ];
            for &(name, value) in feeds {
                let dtype = declared.iter().find(|i| i.input == name).unwrap().dtype;
                let scalar: SessionInputValue = match dtype {
                    DataType::Float => Tensor::from_array((Vec::<i64>::new(), vec![value]))
                        .unwrap()
                        .into(),
                    DataType::Float16 => {
                        Tensor::from_array((Vec::<i64>::new(), vec![half::f16::from_f32(value)]))
                            .unwrap()
                            .into()
                    }
                    other => panic!("{name}: {other:?}"),
                };
                inputs.push((name.to_owned().into(), scalar));
            }
            let out = session.run(inputs).unwrap();
            let (out_shape, values) = out["logits"].try_extract_tensor::<f32>().unwrap();
            let vocab = *out_shape.last().unwrap() as usize;
            values
                .chunks(vocab)
                .flat_map(|row| row.iter().step_by(STRIDE).copied())
                .collect()
        })
        .collect()
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn golden_logits(case: &str) -> Vec<Vec<f32>> {
    let golden = golden();
    (0..PROMPTS)
        .map(|k| golden.f32s(&format!("{case}.p{k}.logits")))
        .collect()
}

#[test]
fn every_action_matches_transformers_hooks() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_demo(tmp.path());
    let base_logits = logits(&base, &[]);
    assert!(
        max_diff(&base_logits, &golden_logits("base")) <= TOLERANCE,
        "the unsteered export matches transformers"
    );
    for case in CASES {
        let out = patched(
            &base,
            &fixture(&format!("{case}.csv")),
            &tmp.path().join(format!("{case}.onnx")),
            false,
            false,
        );
        let want = golden_logits(case);
        let diff = max_diff(&logits(&out, &[]), &want);
        assert!(diff <= TOLERANCE, "{case}: max |Δlogit| = {diff}");
        // The check can fail: every case moves the logits far more than the tolerance.
        assert!(
            max_diff(&base_logits, &want) > 1e-2,
            "{case}: steering changes nothing"
        );
    }
}

#[test]
fn add_only_plans_keep_the_single_constant_add() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_demo(tmp.path());
    let out = patched(
        &base,
        &fixture("add.csv"),
        &tmp.path().join("add.onnx"),
        false,
        false,
    );
    let (before, after) = (Model::load(&base).unwrap(), Model::load(&out).unwrap());
    assert_eq!(after.graph().node.len(), before.graph().node.len() + 1);
    let add = after
        .graph()
        .node
        .iter()
        .find(|n| n.name().starts_with("/sae_onnx/steer/"))
        .unwrap();
    assert_eq!(add.op_type(), "Add");
    assert_eq!(
        add.input,
        [
            "blocks.2.hook_resid_post",
            "sae_onnx.steer.blocks.2.hook_resid_post"
        ]
    );
    assert_eq!(after.graph().input.len(), before.graph().input.len());
}

#[test]
fn provenance_records_each_rows_action_and_threshold() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_demo(tmp.path());
    let out = patched(
        &base,
        &fixture("mixed.csv"),
        &tmp.path().join("m.onnx"),
        false,
        false,
    );
    let model = Model::load(&out).unwrap();
    let steering: serde_json::Value =
        serde_json::from_str(model.metadata("sae_onnx.steering").unwrap()).unwrap();
    let rows = steering[0]["rows"].as_array().unwrap();
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        [
            "add",
            "clamp",
            "add_if_active",
            "clamp_projection",
            "clamp",
            "clamp_projection"
        ]
    );
    assert_eq!(rows[2]["threshold"], 7.3);
    assert!(rows[1].get("threshold").is_none());
    assert_eq!(rows[4]["hook"], "blocks.1.hook_mlp_out");
    assert!(
        coefficient_inputs(&model.proto).unwrap().is_empty(),
        "not sweepable"
    );

    // lm-eval's `clamp` is recorded as what it does here: clamp_projection.
    let out = patched(
        &base,
        &fixture("lmeval_clamp.csv"),
        &tmp.path().join("l.onnx"),
        false,
        false,
    );
    let steering: serde_json::Value =
        serde_json::from_str(Model::load(&out).unwrap().metadata("sae_onnx.steering").unwrap()).unwrap();
    assert_eq!(steering[0]["rows"][0]["action"], "clamp_projection");
    assert_eq!(steering[0]["format"], "LmEval");
}

#[test]
fn sweepable_coefficients_default_to_the_plan_and_can_be_fed() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_demo(tmp.path());
    let (fixed, sweep) = fixed_and_sweepable(&base, "mixed.csv", tmp.path());
    let model = Model::load(&sweep).unwrap();
    let inputs = coefficient_inputs(&model.proto).unwrap();
    let plan = SteeringPlan::from_csv_file(&fixture("mixed.csv")).unwrap();
    assert_eq!(inputs.len(), plan.rows.len());
    for (k, (input, row)) in inputs.iter().zip(&plan.rows).enumerate() {
        assert_eq!(input.input, format!("steer.coeff.{k}"));
        assert_eq!((input.row, input.line, input.latent), (k, row.line, row.latent));
        assert_eq!(input.default, row.coefficient);
        assert_eq!(input.action, row.action.name());
        assert_eq!(input.dtype, DataType::Float);
        assert_eq!(input.patch, 0);
    }
    assert_eq!(inputs[4].hook, "blocks.1.hook_mlp_out");

    // Unfed: the plan's values, the same logits as the fixed patch (and as transformers).
    let unfed = logits(&sweep, &[]);
    let d = max_diff(&unfed, &logits(&fixed, &[]));
    assert!(d <= 1e-5, "unfed sweepable vs fixed patch: {d}");
    assert!(max_diff(&unfed, &golden_logits("mixed")) <= TOLERANCE);

    // Fed: mixed_alt.csv is mixed.csv with row 1 (a clamp) at another coefficient.
    let alt = SteeringPlan::from_csv_file(&fixture("mixed_alt.csv")).unwrap();
    let value = alt.rows[1].coefficient as f32;
    assert_ne!(value as f64, plan.rows[1].coefficient);
    let fed = logits(&sweep, &[("steer.coeff.1", value)]);
    let alt_fixed = patched(
        &base,
        &fixture("mixed_alt.csv"),
        &tmp.path().join("alt.onnx"),
        false,
        false,
    );
    let d = max_diff(&fed, &logits(&alt_fixed, &[]));
    assert!(d <= 1e-5, "fed sweepable vs patch with that value: {d}");
    let d = max_diff(&fed, &golden_logits("mixed_alt"));
    assert!(d <= TOLERANCE, "fed sweepable vs transformers: {d}");
    assert!(max_diff(&fed, &unfed) > 1e-2, "feeding changes the logits");

    // An add row's coefficient is an input too: feeding 0 to every row gives the base model.
    let zeros: Vec<(String, f32)> = inputs.iter().map(|i| (i.input.clone(), 0.0)).collect();
    let zeros: Vec<(&str, f32)> = zeros.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    let add_only = patched(
        &base,
        &fixture("add.csv"),
        &tmp.path().join("add_sweep.onnx"),
        true,
        false,
    );
    let d = max_diff(&logits(&add_only, &[("steer.coeff.0", 0.0)]), &logits(&base, &[]));
    assert!(d <= 1e-5, "add with coefficient 0 is the base model: {d}");
    assert!(
        max_diff(&logits(&sweep, &zeros), &logits(&base, &[])) > 1e-2,
        "clamps to 0 still change the model"
    );
}

#[test]
fn stacking_and_replace_handle_computed_steering_and_coefficient_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_demo(tmp.path());
    let base_nodes = Model::load(&base).unwrap().graph().node.len();
    let first = patched(
        &base,
        &fixture("mixed.csv"),
        &tmp.path().join("a.onnx"),
        true,
        false,
    );
    let second = patched(
        &first,
        &fixture("clamp.csv"),
        &tmp.path().join("b.onnx"),
        true,
        false,
    );
    let model = Model::load(&second).unwrap();
    let inputs = coefficient_inputs(&model.proto).unwrap();
    let names: Vec<&str> = inputs.iter().map(|i| i.input.as_str()).collect();
    assert_eq!(
        names,
        [
            "steer.coeff.0",
            "steer.coeff.1",
            "steer.coeff.2",
            "steer.coeff.3",
            "steer.coeff.4",
            "steer.coeff.5",
            "steer.coeff.6"
        ],
        "a stacked patch numbers its inputs after the earlier ones"
    );
    assert_eq!((inputs[6].patch, inputs[6].row), (1, 0));
    // Sweepable or not, stacked patches compute the same thing (the second reads the first's output).
    let stacked = logits(&second, &[]);
    let fixed_first = patched(
        &base,
        &fixture("mixed.csv"),
        &tmp.path().join("c.onnx"),
        false,
        false,
    );
    let fixed_both = patched(
        &fixed_first,
        &fixture("clamp.csv"),
        &tmp.path().join("d.onnx"),
        false,
        false,
    );
    assert!(max_diff(&stacked, &logits(&fixed_both, &[])) <= 1e-5);

    let replaced = patched(
        &second,
        &fixture("add.csv"),
        &tmp.path().join("r.onnx"),
        false,
        true,
    );
    let model = Model::load(&replaced).unwrap();
    assert_eq!(
        model.graph().node.len(),
        base_nodes + 1,
        "only the new Add remains"
    );
    assert!(
        model
            .graph()
            .input
            .iter()
            .all(|i| !i.name().starts_with("steer.coeff.")),
        "the coefficient inputs are gone"
    );
    assert!(
        model
            .graph()
            .initializer
            .iter()
            .filter(|t| t.name().starts_with("sae_onnx.steer.") || t.name().starts_with("steer.coeff."))
            .count()
            == 1,
        "only the new constant remains"
    );
    assert!(coefficient_inputs(&model.proto).unwrap().is_empty());
    assert!(max_diff(&logits(&replaced, &[]), &golden_logits("add")) <= TOLERANCE);
}

// ------------------------------------------------------------------------------------------------
// errors

const SEED_HEADER: &str = "latent_idx,steering_coefficient,sae_release,sae_id,description,action,threshold";

fn plan_error(text: &str) -> String {
    format!(
        "{:#}",
        SteeringPlan::parse_csv(text, Path::new("plan.csv")).unwrap_err()
    )
}

#[test]
fn bad_actions_and_thresholds_name_file_line_and_column() {
    let sae = fixture("sae_relu");
    let sae = sae.display();
    let err = plan_error(&format!("{SEED_HEADER}\n3,1.0,{sae},,x,ablate,\n"));
    let col = format!("3,1.0,{sae},,x,").chars().count() + 1;
    assert!(
        err.starts_with(&format!("plan.csv:2:{col}: unknown action 'ablate'")),
        "{err}"
    );
    assert!(err.contains("clamp_projection"), "{err}");

    let col = format!("3,1.0,{sae},,x,add_if_active,").chars().count() + 1;
    let err = plan_error(&format!("{SEED_HEADER}\n3,1.0,{sae},,x,add_if_active,lots\n"));
    assert_eq!(
        err,
        format!("plan.csv:2:{col}: threshold 'lots' is not a finite number")
    );
    let err = plan_error(&format!("{SEED_HEADER}\n3,1.0,{sae},,x,add_if_active,inf\n"));
    assert!(err.contains("is not a finite number"), "{err}");
    let err = plan_error(&format!("{SEED_HEADER}\n3,1.0,{sae},,x,add_if_active,-1\n"));
    assert!(
        err.starts_with(&format!("plan.csv:2:{col}: threshold '-1' is negative")),
        "{err}"
    );
    let col = format!("3,1.0,{sae},,x,clamp,").chars().count() + 1;
    let err = plan_error(&format!("{SEED_HEADER}\n3,1.0,{sae},,x,clamp,0.5\n"));
    assert!(
        err.starts_with(&format!(
            "plan.csv:2:{col}: threshold applies to add_if_active rows only"
        )),
        "{err}"
    );
    // the lm-eval format takes the same columns
    let err = plan_error(&format!(
        "sparse_model,feature_index,steering_coefficient,action,threshold\n{sae},3,1.0,clamp,2\n"
    ));
    assert!(
        err.contains("threshold applies to add_if_active rows only (this row's action is clamp_projection)"),
        "{err}"
    );

    // good rows parse, with lm-eval's clamp meaning its projection clamp
    let plan = SteeringPlan::parse_csv(
        &format!(
            "{SEED_HEADER}\n3,1.0,{sae},,x,add_if_active,0.25\n4,2,{sae},,y,clamp_feature,\n5,2,{sae},,z,,\n"
        ),
        Path::new("plan.csv"),
    )
    .unwrap();
    let got: Vec<(SteerAction, Option<f64>)> = plan.rows.iter().map(|r| (r.action, r.threshold)).collect();
    assert_eq!(
        got,
        [
            (SteerAction::AddIfActive, Some(0.25)),
            (SteerAction::Clamp, None),
            (SteerAction::Add, None)
        ]
    );
}

#[test]
fn feature_actions_refuse_saes_they_cannot_encode() {
    let tmp = tempfile::tempdir().unwrap();
    let sae = tmp.path().join("topk");
    std::fs::create_dir(&sae).unwrap();
    std::fs::copy(
        fixture("sae_relu/sae_weights.safetensors"),
        sae.join("sae_weights.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(fixture("sae_relu/cfg.json"))
        .unwrap()
        .replace("\"standard\"", "\"topk\"");
    std::fs::write(sae.join("cfg.json"), cfg).unwrap();
    let csv = tmp.path().join("plan.csv");
    std::fs::write(
        &csv,
        format!(
            "{SEED_HEADER}\n1,1.0,{},,x,add,\n3,1.0,topk,,y,clamp,\n",
            sae.display()
        ),
    )
    .unwrap();
    let base = export_demo(tmp.path());
    let err = patch_with_output(
        &PatchOptions {
            csv: csv.clone(),
            output: tmp.path().join("x.onnx"),
            model: Some(base.display().to_string()),
            replace: false,
            progress: false,
        },
        &PatchOutput::default(),
    )
    .err()
    .unwrap();
    let err = format!("{err:#}");
    let col = "3,1.0,topk,,y,".len() + 1;
    assert!(
        err.starts_with(&format!(
            "{}:3:{col}: clamp needs the activation of feature 3",
            csv.display()
        )),
        "{err}"
    );
    assert!(err.contains("'topk'"), "{err}");
}

/// A float16 model: the hook's change is computed in float32 (Casts around it), the coefficient
/// inputs are float16 scalars, and the steered logits stay near transformers' float32 ones.
#[test]
fn float16_hooks_are_steered_in_float32() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path().join("f16.onnx");
    let options = ExportOptions {
        dtype: DataType::Float16,
        ..Default::default()
    };
    export::export("models/tiny-gemma2", &base, &options).unwrap();
    let (fixed, sweep) = fixed_and_sweepable(&base, "mixed.csv", tmp.path());
    let model = Model::load(&sweep).unwrap();
    let inputs = coefficient_inputs(&model.proto).unwrap();
    assert!(inputs.iter().all(|i| i.dtype == DataType::Float16));
    let casts = model
        .graph()
        .node
        .iter()
        .filter(|n| n.name().starts_with("/sae_onnx/steer/") && n.op_type() == "Cast")
        .count();
    assert!(casts > 0, "the float16 hook value is cast to float32 and back");
    // float16 rounding alone (measured: 0.009 from transformers' float32, 0.003 between the two patches)
    let f16 = logits(&fixed, &[]);
    let d = max_diff(&f16, &golden_logits("mixed"));
    assert!(d <= 0.05, "float16 mixed vs transformers float32: {d}");
    let d = max_diff(&f16, &logits(&sweep, &[]));
    assert!(d <= 0.02, "float16 sweepable (unfed) vs fixed: {d}");
    let alt = SteeringPlan::from_csv_file(&fixture("mixed_alt.csv")).unwrap();
    let fed = logits(&sweep, &[("steer.coeff.1", alt.rows[1].coefficient as f32)]);
    let d = max_diff(&fed, &golden_logits("mixed_alt"));
    assert!(d <= 0.05, "float16 fed vs transformers float32: {d}");
    assert!(
        max_diff(&fed, &f16) > 1.0,
        "feeding a float16 coefficient changes the logits"
    );
}
