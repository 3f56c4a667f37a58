//! Where and how strongly a row steers (`positions`: all, no_special, prompt, generated, N:M, N:;
//! `normalize`: none, unit, residual) against transformers forward hooks on the Gemma 2 and Gemma 3
//! fixtures (tests/fixtures/steer_positions/make_positions.py): logits of full-sequence graphs and of
//! decoding graphs fed in two chunks (so positions come from the past length), greedy generation
//! token for token against `generate()`, eval's loglikelihood boundary; bad columns reported with
//! file:line:column.

use crate::common;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

use common::golden::Golden;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor};
use sae_onnx::contract::PROMPT_LENGTH;
use sae_onnx::export::{self, ExportOptions};
use sae_onnx::infer::generate::{GenerateOptions, Generator};
use sae_onnx::infer::kv_cache::CacheLayout;
use sae_onnx::infer::runtime::{self, SessionOptions};
use sae_onnx::onnx::Model;
use sae_onnx::steer::patch::{PatchOptions, PatchOutput, patch_with_output};
use sae_onnx::steer::{Normalize, PositionRule, SteeringPlan};

const TOLERANCE: f32 = 1e-4;
/// The goldens keep every STRIDE-th vocabulary entry of the logits.
const STRIDE: usize = 8;
const PROMPTS: usize = 2;
/// The prompt boundary the goldens' full forwards used (make_positions.py PROMPT_LENGTH).
const PROMPT_LENGTH_FED: [i64; PROMPTS] = [5, 3];
const ARCHS: [&str; 2] = ["gemma2", "gemma3"];
const CASES: &[&str] = &[
    "all",
    "no_special",
    "range",
    "range_open",
    "unit",
    "residual",
    "prompt",
    "generated",
    "mixed",
];
const GEN_CASES: &[&str] = &["all", "no_special", "range", "residual", "prompt", "generated"];

fn fixture(rel: &str) -> PathBuf {
    common::fixture(&format!("steer_positions/{rel}"))
}

fn golden(arch: &str) -> Golden {
    Golden::load(&fixture(&format!("golden_{arch}.safetensors")))
}

fn export_arch(arch: &str, dir: &Path, kv_cache: bool) -> PathBuf {
    let out = dir.join(format!("{arch}{}.onnx", if kv_cache { "_kv" } else { "" }));
    export::export(
        &format!("tests/fixtures/gemma/{arch}"),
        &out,
        &ExportOptions {
            kv_cache,
            ..Default::default()
        },
    )
    .unwrap();
    out
}

fn patched(base: &Path, csv: &Path, out: &Path, sweepable: bool) -> PathBuf {
    patch_with_output(
        &PatchOptions {
            csv: csv.to_path_buf(),
            output: out.to_path_buf(),
            model: Some(base.display().to_string()),
            replace: false,
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

type Inputs = Vec<(Cow<'static, str>, SessionInputValue<'static>)>;

fn ids_mask(ids: &[i64], total: usize) -> Inputs {
    vec![
        (
            "input_ids".into(),
            Tensor::from_array(([1, ids.len()], ids.to_vec())).unwrap().into(),
        ),
        (
            "attention_mask".into(),
            Tensor::from_array(([1, total], vec![1i64; total]))
                .unwrap()
                .into(),
        ),
    ]
}

/// Strided logits of prompt `k` at every position. The prompt boundary is fed when the graph takes
/// it. A decoding graph gets the first `split` tokens, then the rest after their cache.
fn logits(model: &Path, golden: &Golden, k: usize, split: usize) -> Vec<f32> {
    logits_fed(model, golden, k, split, &[])
}

/// [`logits`] with float32 scalar inputs fed besides (a sweepable patch's coefficients).
fn logits_fed(model: &Path, golden: &Golden, k: usize, split: usize, feeds: &[(&str, f32)]) -> Vec<f32> {
    let loaded = Model::load(model).unwrap();
    let takes_boundary = loaded.graph().input.iter().any(|i| i.name() == PROMPT_LENGTH);
    let layout = CacheLayout::of(&loaded).unwrap();
    let mut session = runtime::session(model, &SessionOptions::default()).unwrap();
    let (_, ids) = golden.i64s(&format!("p{k}.input_ids"));
    let chunks: Vec<&[i64]> = match layout {
        Some(_) => vec![&ids[..split], &ids[split..]],
        None => vec![&ids[..]],
    };
    let mut past: Option<Vec<DynValue>> = layout.map(|l| l.empty(1).unwrap());
    let mut seen = 0;
    let mut out = Vec::new();
    for chunk in chunks {
        seen += chunk.len();
        let mut inputs = ids_mask(chunk, seen);
        if takes_boundary {
            inputs.push((
                PROMPT_LENGTH.into(),
                Tensor::from_array(([1], vec![PROMPT_LENGTH_FED[k]]))
                    .unwrap()
                    .into(),
            ));
        }
        for &(name, value) in feeds {
            let scalar = Tensor::from_array((Vec::<i64>::new(), vec![value])).unwrap();
            inputs.push((name.to_owned().into(), scalar.into()));
        }
        if let Some(values) = past.take() {
            for (n, value) in values.into_iter().enumerate() {
                let kind = ["key", "value"][n % 2];
                inputs.push((format!("past_key_values.{}.{kind}", n / 2).into(), value.into()));
            }
        }
        let mut outputs = session.run(inputs).unwrap();
        let (shape, values) = outputs["logits"].try_extract_tensor::<f32>().unwrap();
        let vocab = *shape.last().unwrap() as usize;
        out.extend(
            values
                .chunks(vocab)
                .flat_map(|row| row.iter().step_by(STRIDE).copied()),
        );
        if let Some(l) = layout {
            past = Some(
                (0..2 * l.layers)
                    .map(|n| {
                        outputs
                            .remove(format!("present.{}.{}", n / 2, ["key", "value"][n % 2]))
                            .unwrap()
                    })
                    .collect(),
            );
        }
    }
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0.0, f32::max)
}

/// Each case's patched model against the golden logits; every case moves them far more than the
/// tolerance, so a rule that steered the wrong positions fails.
fn check_cases(arch: &str, base: &Path, dir: &Path, split: usize) {
    let golden = golden(arch);
    for k in 0..PROMPTS {
        let diff = max_diff(
            &logits(base, &golden, k, split),
            &golden.f32s(&format!("base.p{k}.logits")),
        );
        assert!(
            diff <= TOLERANCE,
            "{arch}: the unsteered export differs by {diff}"
        );
    }
    for case in CASES {
        let out = patched(
            base,
            &fixture(&format!("{case}.csv")),
            &dir.join(format!("{arch}_{case}_{split}.onnx")),
            false,
        );
        for k in 0..PROMPTS {
            let want = golden.f32s(&format!("{case}.p{k}.logits"));
            let diff = max_diff(&logits(&out, &golden, k, split), &want);
            assert!(
                diff <= TOLERANCE,
                "{arch} {case} prompt {k} (split {split}): max |Δlogit| = {diff}"
            );
        }
        let moved = (0..PROMPTS)
            .map(|k| {
                max_diff(
                    &golden.f32s(&format!("{case}.p{k}.logits")),
                    &golden.f32s(&format!("base.p{k}.logits")),
                )
            })
            .fold(0.0, f32::max);
        assert!(moved > 1e-2, "{arch} {case}: steering changes nothing");
    }
}

#[test]
fn every_rule_matches_transformers_hooks_on_full_sequence_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let base = export_arch(arch, tmp.path(), false);
        check_cases(arch, &base, tmp.path(), 0);
    }
}

/// Fed in two chunks, the second chunk's positions start at the past length: the boundary of the
/// ranges (2:5, 3:, 1:4, 0:3) and of the prompt (5, 3) fall on either side of it.
#[test]
fn every_rule_matches_transformers_hooks_on_decoding_graphs() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let base = export_arch(arch, tmp.path(), true);
        for split in [3, 4] {
            check_cases(arch, &base, tmp.path(), split);
        }
    }
}

fn tokens(golden: &Golden, name: &str) -> Vec<u32> {
    golden.i64s(name).1.iter().map(|&t| t as u32).collect()
}

/// `generate` feeds the prompt boundary: `generated` keeps the first new token the unsteered
/// model's, `prompt` steers through the prompt's cache. Every case changes the tokens (the
/// fixture script asserts it), on decoding graphs, on full-sequence graphs, and batched.
#[test]
fn greedy_generation_with_rules_equals_transformers_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let options = GenerateOptions {
        max_new_tokens: 10,
        ..Default::default()
    };
    for arch in ARCHS {
        let golden = golden(arch);
        let prompts: Vec<Vec<u32>> = (0..PROMPTS)
            .map(|k| tokens(&golden, &format!("p{k}.input_ids")))
            .collect();
        for kv_cache in [true, false] {
            let base = export_arch(arch, tmp.path(), kv_cache);
            for case in GEN_CASES {
                let model = patched(
                    &base,
                    &fixture(&format!("gen_{case}.csv")),
                    &tmp.path().join(format!("{arch}_gen_{case}_{kv_cache}.onnx")),
                    false,
                );
                let mut generator = Generator::open(&model, &options).unwrap();
                for (k, prompt) in prompts.iter().enumerate() {
                    let want = tokens(&golden, &format!("gen.p{k}.{case}"));
                    let got = generator.generate(prompt, &options, |_| {}).unwrap().tokens;
                    assert_eq!(got, want, "{arch} {case} prompt {k} (kv cache {kv_cache})");
                }
                if kv_cache {
                    // one left-padded batch: each row's positions and boundary are its own
                    let batch = generator.generate_batch(&prompts, &options).unwrap();
                    for (k, generation) in batch.iter().enumerate() {
                        let want = tokens(&golden, &format!("gen.p{k}.{case}"));
                        assert_eq!(generation.tokens, want, "{arch} {case} prompt {k} batched");
                    }
                }
            }
            let first = |name: &str| tokens(&golden, name)[0];
            assert_eq!(first("gen.p0.generated"), first("gen.p0.base"));
            assert_ne!(first("gen.p0.prompt"), first("gen.p0.base"));
        }
    }
}

#[test]
fn special_ids_are_transformers_all_special_ids() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    for arch in ARCHS {
        let tokenizer = sae_onnx::tokenizer::Tokenizer::from_file(Path::new(&format!(
            "tests/fixtures/gemma/{arch}/tokenizer.json"
        )))
        .unwrap();
        let want: Vec<u32> = cases["models"][arch]["all_special_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokenizer.all_special_ids().unwrap(), want, "{arch}");
    }
}

/// A tokenizer folder whose configuration names additional and extra special tokens, a map that
/// overrides the configuration, and a token the vocabulary lacks (which is `<unk>`'s id).
#[test]
fn special_ids_follow_the_config_files() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(
        "tests/fixtures/gemma/gemma2/tokenizer.json",
        tmp.path().join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<bos>", "eos_token": "<pad>", "additional_special_tokens": ["<eos>", "<missing>"],
            "unk_token": {"content": "<unk>"}}"#,
    )
    .unwrap();
    let tokenizer = sae_onnx::tokenizer::Tokenizer::from_file(&tmp.path().join("tokenizer.json")).unwrap();
    assert_eq!(tokenizer.all_special_ids().unwrap(), vec![0, 1, 2, 3]);
    std::fs::write(
        tmp.path().join("special_tokens_map.json"),
        r#"{"additional_special_tokens": []}"#,
    )
    .unwrap();
    // the map's empty list replaces the configuration's: <eos> and <missing> (= <unk>) are gone
    std::fs::write(
        tmp.path().join("tokenizer_config.json"),
        r#"{"bos_token": "<bos>", "additional_special_tokens": ["<eos>", "<missing>"]}"#,
    )
    .unwrap();
    assert_eq!(tokenizer.all_special_ids().unwrap(), vec![2]);
}

#[test]
fn plans_parse_positions_and_normalize_in_both_formats() {
    let seed = SteeringPlan::parse_csv(
        "latent_idx,steering_coefficient,sae_release,sae_id,positions,normalize\n\
         1,2.0,sae,,no_special,unit\n2,1.0,sae,,3:7,\n3,1.0,sae,,,residual\n",
        &fixture("x.csv"),
    )
    .unwrap();
    let rules: Vec<(PositionRule, Normalize)> = seed.rows.iter().map(|r| (r.steer_at, r.normalize)).collect();
    assert_eq!(
        rules,
        [
            (PositionRule::NoSpecial, Normalize::Unit),
            (
                PositionRule::Range {
                    start: 3,
                    end: Some(7)
                },
                Normalize::None
            ),
            (PositionRule::All, Normalize::Residual),
        ]
    );
    let lm = SteeringPlan::parse_csv(
        "loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,positions,normalize\n\
         sae_lens,add,sae,layers.1,4,2.0,generated,unit\nsae_lens,clamp,sae,layers.1,5,2.0,prompt,\n",
        &fixture("x.csv"),
    )
    .unwrap();
    assert_eq!(lm.rows[0].steer_at, PositionRule::Generated);
    assert_eq!(lm.rows[0].normalize, Normalize::Unit);
    assert_eq!(lm.rows[1].steer_at, PositionRule::Prompt);
}

#[test]
fn bad_rules_are_reported_with_file_line_and_column() {
    let header = "latent_idx,steering_coefficient,sae_release,sae_id,action,positions,normalize\n";
    for (row, at, wanted) in [
        (
            "1,2.0,sae,,add,specials,\n",
            "x.csv:2:16",
            "unknown positions rule 'specials'",
        ),
        ("1,2.0,sae,,add,5:2,\n", "x.csv:2:16", "is empty"),
        (
            "1,2.0,sae,,add,a:2,\n",
            "x.csv:2:16",
            "malformed positions range 'a:2'",
        ),
        ("1,2.0,sae,,add,,l2\n", "x.csv:2:17", "unknown normalize 'l2'"),
        (
            "1,2.0,sae,,clamp,,unit\n",
            "x.csv:2:19",
            "has no meaning on a clamp row",
        ),
        (
            "1,2.0,sae,,clamp_projection,,residual\n",
            "x.csv:2:30",
            "has no meaning on a clamp_projection row",
        ),
    ] {
        let text = format!("{header}{row}");
        let err = SteeringPlan::parse_csv(&text, Path::new("x.csv"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(at) && err.contains(wanted), "{row}: {err}");
    }
    // normalize none is the default, so it is accepted on a clamp row
    SteeringPlan::parse_csv(&format!("{header}1,2.0,sae,,clamp,,none\n"), &fixture("x.csv")).unwrap();
}

#[test]
fn provenance_and_inspect_show_the_rules_and_old_records_still_inspect() {
    let tmp = tempfile::tempdir().unwrap();
    let base = export_arch("gemma2", tmp.path(), false);
    let out = patched(
        &base,
        &fixture("mixed.csv"),
        &tmp.path().join("mixed.onnx"),
        false,
    );
    let model = Model::load(&out).unwrap();
    let record: serde_json::Value =
        serde_json::from_str(model.metadata("sae_onnx.steering").unwrap()).unwrap();
    let patch = &record[0];
    let rules: Vec<(&str, &str)> = patch["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["positions"].as_str().unwrap_or("all"),
                r["normalize"].as_str().unwrap_or("none"),
            )
        })
        .collect();
    assert_eq!(
        rules,
        [
            ("no_special", "none"),
            ("1:4", "unit"),
            ("2:", "residual"),
            ("no_special", "none"),
            ("0:3", "none"),
            ("generated", "none")
        ]
    );
    assert_eq!(patch["special_ids"], serde_json::json!([0, 1, 2, 3]));
    assert_eq!(patch["prompt_length_input"], PROMPT_LENGTH);
    let shown = sae_onnx::inspect::inspect(&out).unwrap().to_string();
    for wanted in [
        "(positions no_special)",
        "(positions 1:4, normalize unit)",
        "(positions 2:, normalize residual)",
        "no_special skips token ids 0, 1, 2, 3",
        "prompt/generated read the input steer.prompt_length",
    ] {
        assert!(shown.contains(wanted), "inspect lacks {wanted:?}:\n{shown}");
    }
    // a record written before the columns existed (no positions / normalize keys) reads as all / none
    let old = patched(&base, &fixture("all.csv"), &tmp.path().join("old.onnx"), false);
    let shown = sae_onnx::inspect::inspect(&old).unwrap().to_string();
    assert!(shown.contains("(positions all)"), "{shown}");
    // The prompt boundary input is there only when a rule reads it.
    let inputs = |m: &Path| -> Vec<String> {
        Model::load(m)
            .unwrap()
            .graph()
            .input
            .iter()
            .map(|i| i.name().to_owned())
            .collect()
    };
    assert!(inputs(&out).iter().any(|n| n == PROMPT_LENGTH));
    assert!(!inputs(&old).iter().any(|n| n == PROMPT_LENGTH));
}

/// Loglikelihood requests with the context as the prompt: eval's scorer feeds each request's
/// boundary, keeps apart requests that read the same tokens split differently (r0, r1), and shares
/// a prefix (r2, r3, over 32 tokens) on decoding graphs; per request against transformers.
#[test]
fn loglikelihoods_with_rules_equal_transformers_hooks() {
    use sae_onnx::infer::lm::{ScoringModel, TokenRequest};
    let tmp = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let golden = golden(arch);
        let requests: Vec<TokenRequest> = (0..)
            .take_while(|i| golden.has(&format!("ll.r{i}.context")))
            .map(|i| TokenRequest {
                context: tokens(&golden, &format!("ll.r{i}.context")),
                continuation: tokens(&golden, &format!("ll.r{i}.continuation")),
            })
            .collect();
        assert_eq!(requests.len(), 5);
        for kv_cache in [false, true] {
            let base = export_arch(arch, tmp.path(), kv_cache);
            for case in ["base", "no_special", "prompt", "generated", "mixed"] {
                let model = if case == "base" {
                    base.clone()
                } else {
                    patched(
                        &base,
                        &fixture(&format!("{case}.csv")),
                        &tmp.path().join(format!("{arch}_ll_{case}_{kv_cache}.onnx")),
                        false,
                    )
                };
                let want = golden.f64s(&format!("ll.{case}.logprob"));
                let (_, greedy) = golden.i64s(&format!("ll.{case}.is_greedy"));
                for batch_size in [1, 8] {
                    let mut scorer =
                        ScoringModel::open(&model, &SessionOptions::default(), 128, batch_size).unwrap();
                    let (answers, stats) = scorer.loglikelihood(&requests, |_, _| Ok(())).unwrap();
                    for (i, answer) in answers.iter().enumerate() {
                        let what =
                            format!("{arch} {case} request {i} (kv cache {kv_cache}, batch {batch_size})");
                        assert!(
                            (answer.logprob - want[i]).abs() <= 2e-3,
                            "{what}: {} vs {}",
                            answer.logprob,
                            want[i]
                        );
                        assert_eq!(answer.is_greedy, greedy[i] == 1, "{what}");
                    }
                    if kv_cache && batch_size == 8 {
                        assert!(
                            stats.shared_prefix_tokens > 0,
                            "{arch} {case}: no prefix was shared"
                        );
                    }
                }
            }
        }
    }
}

/// `--sweepable` with rules: the coefficient inputs of masked rows (row 1: `add` at 1:4, `unit`)
/// default to the plan's values and, fed, give transformers' result for the changed plan; on full
/// and decoding graphs, with every action in the plan.
#[test]
fn sweepable_patches_compose_with_rules() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    let alt = cases["cases"]["mixed_alt"][1]["coefficient"].as_f64().unwrap() as f32;
    for arch in ARCHS {
        let golden = golden(arch);
        for (kv_cache, split) in [(false, 0), (true, 3)] {
            let base = export_arch(arch, tmp.path(), kv_cache);
            let model = patched(
                &base,
                &fixture("mixed.csv"),
                &tmp.path().join(format!("{arch}_sweep_{kv_cache}.onnx")),
                true,
            );
            for k in 0..PROMPTS {
                let want = golden.f32s(&format!("mixed.p{k}.logits"));
                let diff = max_diff(&logits(&model, &golden, k, split), &want);
                assert!(diff <= TOLERANCE, "{arch} sweepable mixed prompt {k}: {diff}");
                let want_alt = golden.f32s(&format!("mixed_alt.p{k}.logits"));
                let fed = logits_fed(&model, &golden, k, split, &[("steer.coeff.1", alt)]);
                let diff = max_diff(&fed, &want_alt);
                assert!(
                    diff <= TOLERANCE,
                    "{arch} sweepable mixed, steer.coeff.1 fed, prompt {k}: {diff}"
                );
                assert!(
                    max_diff(&want, &want_alt) > 1e-2,
                    "{arch}: the fed coefficient changes nothing"
                );
            }
        }
    }
}

/// A second patch with a boundary rule reuses the first one's input: `prompt` stacked on
/// `generated` (the same `add`) steers every position, which is the `all` golden.
#[test]
fn stacked_patches_share_the_prompt_boundary_input() {
    let tmp = tempfile::tempdir().unwrap();
    for arch in ARCHS {
        let golden = golden(arch);
        let base = export_arch(arch, tmp.path(), false);
        let first = patched(
            &base,
            &fixture("generated.csv"),
            &tmp.path().join(format!("{arch}_g.onnx")),
            false,
        );
        let both = patched(
            &first,
            &fixture("prompt.csv"),
            &tmp.path().join(format!("{arch}_gp.onnx")),
            false,
        );
        let model = Model::load(&both).unwrap();
        let boundary = model
            .graph()
            .input
            .iter()
            .filter(|i| i.name() == PROMPT_LENGTH)
            .count();
        assert_eq!(boundary, 1);
        for k in 0..PROMPTS {
            let diff = max_diff(
                &logits(&both, &golden, k, 0),
                &golden.f32s(&format!("all.p{k}.logits")),
            );
            assert!(diff <= TOLERANCE, "{arch} prompt {k}: {diff}");
        }
        // --replace with a plan without boundary rules takes the input away with the old steering
        let replaced = tmp.path().join(format!("{arch}_r.onnx"));
        patch_with_output(
            &PatchOptions {
                csv: fixture("all.csv"),
                output: replaced.clone(),
                model: Some(both.display().to_string()),
                replace: true,
                progress: false,
            },
            &PatchOutput {
                sweepable: false,
                force: true,
            },
        )
        .unwrap();
        let model = Model::load(&replaced).unwrap();
        assert!(!model.graph().input.iter().any(|i| i.name() == PROMPT_LENGTH));
        assert!(
            !model
                .graph()
                .initializer
                .iter()
                .any(|i| i.name() == PROMPT_LENGTH)
        );
    }
}
