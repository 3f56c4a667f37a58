//! Steering plan CSVs: the seed format and lm-eval's `steered` format, and their error messages.

use std::path::{Path, PathBuf};

use sae_onnx::hook::{HookPoint, Site};
use sae_onnx::hub::Hub;
use sae_onnx::sae::{LatentOutOfRange, SaeSource, load_decoder_rows};
use sae_onnx::steer::{PlanField, PlanFormat, SteerAction, SteeringPlan};

fn parse(text: &str) -> anyhow::Result<SteeringPlan> {
    SteeringPlan::parse_csv(text, Path::new("plan.csv"))
}

fn err(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sae")
}

const SEED_HEADER: &str = "latent_idx,steering_coefficient,sae_release,sae_id,description";
const LM_EVAL_HEADER: &str =
    "loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description";

#[test]
fn the_canonical_seed_example() {
    let text = format!(
        "{SEED_HEADER}\n12082, 240.0,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,dogs\n"
    );
    let plan = parse(&text).unwrap();
    assert_eq!(plan.format, PlanFormat::Seed);
    assert_eq!(plan.source_path, Path::new("plan.csv"));
    let [row] = &plan.rows[..] else { panic!("one row") };
    assert_eq!(row.line, 2);
    assert_eq!(row.action, SteerAction::Add);
    assert_eq!(row.latent, 12082);
    assert_eq!(row.coefficient, 240.0);
    assert_eq!(
        row.sae,
        SaeSource::Release("gemma-scope-2b-pt-res-canonical".into())
    );
    assert_eq!(row.sae_id, "layer_20/width_16k/canonical");
    assert_eq!(row.hook, None);
    assert_eq!(row.head_index, None);
    assert_eq!(row.description, "dogs");
    assert_eq!(plan.location(row, PlanField::Latent), "plan.csv:2:1");
    assert_eq!(plan.location(row, PlanField::Coefficient), "plan.csv:2:8");
    assert_eq!(plan.location(row, PlanField::Sae), "plan.csv:2:14");
    assert_eq!(plan.location(row, PlanField::Action), "plan.csv:2:1");
}

#[test]
fn seed_format_with_actions_quotes_bom_crlf_and_blank_lines() {
    let text = "\u{feff}action, LATENT_IDX ,steering_coefficient,sae_release,sae_id,description\r\n\
                \r\n\
                clamp,1,-2.5e1,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,\"cats, mostly \"\"big\"\" ones\"\r\n\
                   \r\n\
                ,2,3,google/gemma-scope-2b-pt-res,layer_20/width_16k/average_l0_71,\r\n";
    let plan = parse(text).unwrap();
    assert_eq!(plan.format, PlanFormat::Seed);
    assert_eq!(plan.rows.len(), 2);
    let (a, b) = (&plan.rows[0], &plan.rows[1]);
    assert_eq!(
        (a.line, a.action, a.latent, a.coefficient),
        (3, SteerAction::Clamp, 1, -25.0)
    );
    assert_eq!(a.description, "cats, mostly \"big\" ones");
    assert_eq!(
        (b.line, b.action, b.latent, b.coefficient),
        (5, SteerAction::Add, 2, 3.0)
    );
    assert_eq!(b.sae, SaeSource::HfRepo("google/gemma-scope-2b-pt-res".into()));
    assert_eq!(b.description, "");
}

#[test]
fn lm_eval_steered_format() {
    let text = format!(
        "{LM_EVAL_HEADER},\n\
         sae_lens,add,gemma-scope-2b-pt-res-canonical,layers.20,12082,240.0,,layer_20/width_16k/canonical,\"increase dogs, a lot\",\n\
         sae_lens,clamp,gemma-scope-2b-pt-res-canonical,model.layers.7,5,-1,3,layer_20/width_16k/canonical,\n\
         sae_lens,add,google/gemma-scope-2b-pt-res,blocks.3.attn.hook_z,0,0.5,,layer_3/width_16k/average_l0_5,z\n\
         ,,gemma-scope-2b-pt-res-canonical,,7,1,,layer_20/width_16k/canonical,\n"
    );
    let plan = parse(&text).unwrap();
    assert_eq!(plan.format, PlanFormat::LmEval);
    let r = &plan.rows;
    assert_eq!(r.len(), 4);
    assert_eq!(
        (r[0].hook, r[0].latent, r[0].coefficient),
        (Some(HookPoint::resid_post(20)), 12082, 240.0)
    );
    assert_eq!(r[0].description, "increase dogs, a lot");
    // lm-eval's `clamp` keeps lm-eval's meaning: the projection clamp.
    assert_eq!(
        (r[1].action, r[1].hook, r[1].head_index),
        (
            SteerAction::ClampProjection,
            Some(HookPoint::resid_post(7)),
            Some(3)
        )
    );
    assert_eq!(r[2].hook, Some(HookPoint::new(3, Site::AttnZ)));
    assert_eq!(r[2].sae, SaeSource::HfRepo("google/gemma-scope-2b-pt-res".into()));
    // Empty loader / action / hookpoint: sae_lens, add, the SAE's own hook.
    assert_eq!((r[3].action, r[3].hook), (SteerAction::Add, None));
    assert_eq!(plan.location(&r[0], PlanField::Hook), "plan.csv:2:46");
    // Columns may come in any order and optional ones may be left out (the older lm-eval docstring header).
    let plan = parse(
        "sparse_model,feature_index,steering_coefficient,sae_id\n\
         gemma-scope-2b-pt-res-canonical,3,2,layer_20/width_16k/canonical\n",
    )
    .unwrap();
    assert_eq!(
        (plan.rows[0].latent, plan.rows[0].action, plan.rows[0].hook),
        (3, SteerAction::Add, None)
    );
}

#[test]
fn local_folders_resolve_from_the_current_dir_or_next_to_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("saes/mine")).unwrap();
    let path = dir.path().join("plan.csv");
    std::fs::write(
        &path,
        format!("{SEED_HEADER}\n4,1.5,saes/mine,,\"folder, no id\"\n"),
    )
    .unwrap();
    let plan = SteeringPlan::from_csv_file(&path).unwrap();
    assert_eq!(plan.rows[0].sae, SaeSource::Folder(dir.path().join("saes/mine")));
    assert_eq!(plan.rows[0].sae_id, "");
    let abs = fixtures().join("local/saelens_v6");
    let plan = parse(&format!("{SEED_HEADER}\n4,1.5,{},,\n", abs.display())).unwrap();
    assert_eq!(plan.rows[0].sae, SaeSource::Folder(abs));
}

#[test]
fn bad_coefficients_name_file_line_and_column() {
    let text = format!(
        "{SEED_HEADER}\n1,2,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,a\n\n12082,  abc ,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,b\n"
    );
    assert_eq!(
        err(&text),
        "plan.csv:4:9: steering_coefficient 'abc' is not a finite number"
    );
    let text = format!("{SEED_HEADER}\n1,inf,gemma-scope-2b-pt-res-canonical,x,\n");
    assert_eq!(
        err(&text),
        "plan.csv:2:3: steering_coefficient 'inf' is not a finite number"
    );
    let text = format!("{SEED_HEADER}\n1, ,gemma-scope-2b-pt-res-canonical,x,\n");
    assert_eq!(err(&text), "plan.csv:2:4: steering_coefficient is empty");
}

#[test]
fn bad_latents_and_head_indices() {
    for (latent, col) in [("-1", 1), ("1.0", 1), (" 12x", 2)] {
        let text = format!("{SEED_HEADER}\n{latent},1,gemma-scope-2b-pt-res-canonical,x,\n");
        let e = err(&text);
        assert!(e.starts_with(&format!("plan.csv:2:{col}: latent_idx '")), "{e}");
        assert!(
            e.ends_with("is not a latent index (a non-negative integer)"),
            "{e}"
        );
    }
    let text = format!("{LM_EVAL_HEADER}\nsae_lens,add,gemma-scope-2b-pt-res-canonical,layers.20,1,1,h,x,\n");
    assert_eq!(
        err(&text),
        "plan.csv:2:60: head_index 'h' is not a head index (a non-negative integer)"
    );
}

#[test]
fn unknown_actions_list_the_known_ones() {
    let text =
        format!("{LM_EVAL_HEADER}\nsae_lens,ablate,gemma-scope-2b-pt-res-canonical,layers.20,1,1,,x,\n");
    assert_eq!(
        err(&text),
        "plan.csv:2:10: unknown action 'ablate'; known actions: add, clamp (lm-eval's: clamp_projection), \
         add_if_active, clamp_projection, clamp_feature (the SAE-feature clamp)"
    );
}

#[test]
fn unknown_releases_suggest_the_nearest() {
    let text = format!(
        "{SEED_HEADER}\n12082,240,gemma-scope-2b-pt-res-canonicl,layer_20/width_16k/canonical,dogs\n"
    );
    let e = err(&text);
    assert!(
        e.starts_with("plan.csv:2:11: sae_release: 'gemma-scope-2b-pt-res-canonicl' is not a release"),
        "{e}"
    );
    assert!(
        e.contains("Nearest releases: gemma-scope-2b-pt-res-canonical"),
        "{e}"
    );
}

#[test]
fn bad_hook_names_list_the_accepted_forms() {
    let text = format!("{LM_EVAL_HEADER}\nsae_lens,add,gemma-scope-2b-pt-res-canonical, layer.20 ,1,1,,x,\n");
    let e = err(&text);
    assert!(
        e.starts_with("plan.csv:2:47: hookpoint: unknown hook point 'layer.20'"),
        "{e}"
    );
    assert!(
        e.contains("blocks.L.hook_resid_post") && e.contains("model.layers.L"),
        "{e}"
    );
}

#[test]
fn headers_rows_and_loaders_are_checked() {
    let e = err("a,b,c\n1,2,3\n");
    assert!(e.starts_with("plan.csv:1:1: unrecognised header 'a,b,c'"), "{e}");
    assert!(
        e.contains("latent_idx,steering_coefficient,sae_release,sae_id,[description],[action]"),
        "{e}"
    );
    let e = err("latent_idx,steering_coeficient,sae_release,sae_id\n");
    assert!(
        e.starts_with(
            "plan.csv:1:12: unknown column 'steering_coeficient' (did you mean 'steering_coefficient'?)"
        ),
        "{e}"
    );
    let e = err("latent_idx,sae_release,sae_id\n1,x,y\n");
    assert!(
        e.starts_with("plan.csv:1:1: the header has no 'steering_coefficient' column"),
        "{e}"
    );
    let e = err("latent_idx,steering_coefficient,sae_release,sae_id,latent_idx\n");
    assert_eq!(e, "plan.csv:1:52: column 'latent_idx' appears twice");
    let e = err(&format!("{SEED_HEADER}\n"));
    assert_eq!(e, "plan.csv: the steering plan has a header but no rows");
    assert_eq!(
        err(""),
        "plan.csv: the steering plan is empty (expected a header line)"
    );
    let e = err(&format!(
        "{SEED_HEADER}\n1,1,gemma-scope-2b-pt-res-canonical,x,dogs, cats\n"
    ));
    assert!(
        e.starts_with("plan.csv:2:45: the row has 6 fields but the header has 5"),
        "{e}"
    );
    let e = err(&format!("{SEED_HEADER}\n1,1\n"));
    assert_eq!(e, "plan.csv:2:4: the row has no sae_release field");
    let e = err(&format!(
        "{SEED_HEADER}\n1,1,gemma-scope-2b-pt-res-canonical,\"x\n"
    ));
    assert_eq!(
        e,
        "plan.csv:2:37: unterminated quoted field (a \" is never closed)"
    );
    let e = err(&format!(
        "{LM_EVAL_HEADER}\nsparsify,add,EleutherAI/sae-pythia-70m-32k,layers.3,30,10.0,,,\n"
    ));
    assert!(
        e.starts_with("plan.csv:2:1: loader 'sparsify' is not supported; known loaders: sae_lens"),
        "{e}"
    );
}

#[test]
fn non_utf8_plans_are_refused_with_a_position() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, b"latent_idx\n12\xff3\n").unwrap();
    let e = format!("{:#}", SteeringPlan::from_csv_file(&path).unwrap_err());
    assert_eq!(
        e,
        format!(
            "steering plan '{}' is not UTF-8 text (line 2, byte 13)",
            path.display()
        )
    );
}

/// How the splice is meant to use both halves: load the rows of a plan, and when a latent is out of
/// range, say where in the plan.
#[test]
fn plan_rows_load_and_range_errors_point_into_the_plan() {
    let hub = Hub {
        cache_dir: fixtures().join("hub"),
        offline: true,
        token: None,
        progress: false,
    };
    let text = format!(
        "{SEED_HEADER}\n12082, 240.0,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,dogs\n\
         16384,1,gemma-scope-2b-pt-res-canonical,layer_20/width_16k/canonical,too far\n"
    );
    let plan = parse(&text).unwrap();
    let ok = &plan.rows[0];
    let rows = load_decoder_rows(&hub, &ok.sae, &ok.sae_id, &[ok.latent]).unwrap();
    assert_eq!(
        (rows.hook, rows.d_in, rows.rows[0].len()),
        (HookPoint::resid_post(20), 2304, 2304)
    );
    let bad = &plan.rows[1];
    let e = load_decoder_rows(&hub, &bad.sae, &bad.sae_id, &[bad.latent]).unwrap_err();
    let oor = e.downcast_ref::<LatentOutOfRange>().unwrap();
    let msg = format!("{}: {oor}", plan.location(bad, PlanField::Latent));
    assert!(
        msg.starts_with("plan.csv:3:1: latent 16384 is out of range"),
        "{msg}"
    );
}
