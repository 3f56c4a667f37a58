//! SAE registry and loaders against tests/fixtures/sae (written by make_saes.py; the goldens in
//! expected.json are what numpy, safetensors and SAELens itself read back).

use std::path::{Path, PathBuf};

use sae_onnx::hook::{HookPoint, Site};
use sae_onnx::hub::Hub;
use sae_onnx::sae::{
    DecoderRows, EncoderParts, HASH_LIMIT, LatentOutOfRange, Sae, SaeArchitecture, SaeFormat, SaeSource,
    load_decoder_rows, load_encoder_parts, registry,
};
use serde_json::Value;

const COMMIT: &str = "5ae0000000000000000000000000000000c0ffee";

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sae")
}

/// The fixture cache, offline: what `HF_HUB_CACHE=tests/fixtures/sae/hub HF_HUB_OFFLINE=1` gives
/// (built directly: tests run in parallel threads and must not set process environment).
fn hub() -> Hub {
    Hub {
        cache_dir: fixtures().join("hub"),
        offline: true,
        token: None,
        progress: false,
    }
}

fn snapshot(rel: &str) -> PathBuf {
    fixtures()
        .join("hub/models--google--gemma-scope-2b-pt-res/snapshots")
        .join(COMMIT)
        .join(rel)
}

fn expected(key: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join("expected.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    assert!(v.get(key).is_some(), "expected.json has no '{key}'");
    v[key].clone()
}

fn f32s(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as usize)
        .collect()
}

/// Exact comparison: every golden value is a float32, written in a form that round-trips.
fn assert_rows(got: &[Vec<f32>], want: &Value, what: &str) {
    let want: Vec<Vec<f32>> = want.as_array().unwrap().iter().map(f32s).collect();
    assert_eq!(got.len(), want.len(), "{what}: row count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}[{i}]: length");
        if let Some(j) = (0..g.len()).find(|&j| g[j].to_bits() != w[j].to_bits()) {
            panic!("{what}[{i}][{j}]: got {} want {}", g[j], w[j]);
        }
    }
}

/// Decoder rows and encoder parts of `source`/`sae_id` equal golden `key`.
fn check_against_golden(source: &SaeSource, sae_id: &str, key: &str) -> (DecoderRows, EncoderParts) {
    let want = expected(key);
    let rows = load_decoder_rows(&hub(), source, sae_id, &usizes(&want["latents"]))
        .unwrap_or_else(|e| panic!("{key}: {e:#}"));
    assert_eq!(
        rows.hook.to_string(),
        want["hook"].as_str().unwrap(),
        "{key}: hook"
    );
    assert_eq!(rows.d_in, want["d_in"].as_u64().unwrap() as usize, "{key}: d_in");
    assert_eq!(
        rows.d_sae,
        want["d_sae"].as_u64().unwrap() as usize,
        "{key}: d_sae"
    );
    assert_eq!(rows.latents, usizes(&want["latents"]));
    assert_rows(&rows.rows, &want["W_dec_rows"], &format!("{key} W_dec"));
    let enc = load_encoder_parts(&hub(), source, sae_id, &usizes(&want["enc_latents"]))
        .unwrap_or_else(|e| panic!("{key}: {e:#}"));
    assert_eq!(enc.hook, rows.hook);
    assert_rows(&enc.w_enc_cols, &want["W_enc_cols"], &format!("{key} W_enc"));
    assert_eq!(enc.b_enc, f32s(&want["b_enc"]), "{key}: b_enc");
    assert_eq!(enc.b_dec, f32s(&want["b_dec"]), "{key}: b_dec");
    match &want["threshold"] {
        Value::Null => assert_eq!(enc.threshold, None, "{key}: threshold"),
        t => assert_eq!(enc.threshold.as_deref(), Some(&f32s(t)[..]), "{key}: threshold"),
    }
    if let Some(apply) = want.get("apply_b_dec_to_input") {
        assert_eq!(
            enc.apply_b_dec_to_input,
            apply.as_bool().unwrap(),
            "{key}: apply_b_dec_to_input"
        );
    }
    if let Some(arch) = want.get("architecture") {
        assert_eq!(
            enc.architecture.as_str(),
            arch.as_str().unwrap(),
            "{key}: architecture"
        );
    }
    (rows, enc)
}

#[test]
fn the_canonical_example_resolves_in_the_registry() {
    let entry = registry()
        .sae("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
        .unwrap();
    assert_eq!(entry.release.repo_id, "google/gemma-scope-2b-pt-res");
    assert_eq!(entry.release.format, SaeFormat::GemmaScopeNpz);
    assert_eq!(entry.release.base_model_hf, "google/gemma-2-2b");
    assert_eq!(entry.sae.path, "layer_20/width_16k/average_l0_71");
    assert_eq!(entry.sae.hook_point().unwrap(), HookPoint::resid_post(20));
    assert_eq!((entry.sae.d_in, entry.sae.d_sae), (2304, Some(16384)));
    assert_eq!(
        entry.release.weights_path(entry.sae),
        "layer_20/width_16k/average_l0_71/params.npz"
    );
}

#[test]
fn canonical_release_loads_through_the_hub_cache_as_saelens_does() {
    let source = SaeSource::Release("gemma-scope-2b-pt-res-canonical".into());
    let (rows, enc) = check_against_golden(&source, "layer_20/width_16k/canonical", "canonical");
    assert_eq!(enc.architecture, SaeArchitecture::JumpRelu);
    assert!(!enc.apply_b_dec_to_input);
    let want = expected("canonical");
    let p = &rows.provenance;
    assert_eq!(p.source, source);
    assert_eq!(p.release.as_deref(), Some("gemma-scope-2b-pt-res-canonical"));
    assert_eq!(p.repo_id.as_deref(), Some("google/gemma-scope-2b-pt-res"));
    assert_eq!(p.revision.as_deref(), Some(COMMIT));
    assert_eq!(p.sae_id, "layer_20/width_16k/canonical");
    assert_eq!(p.path.as_deref(), Some("layer_20/width_16k/average_l0_71"));
    assert_eq!(p.format, SaeFormat::GemmaScopeNpz);
    assert!(
        p.file.ends_with("layer_20/width_16k/average_l0_71/params.npz"),
        "{}",
        p.file.display()
    );
    assert!(p.size < HASH_LIMIT);
    assert_eq!(p.sha256.as_deref(), want["sha256"].as_str());
    assert_eq!(p.mtime_unix, None);
    // The provenance serializes for the patched model's metadata.
    let json = serde_json::to_value(p).unwrap();
    assert_eq!(
        json["source"],
        serde_json::json!({"kind": "release", "name": "gemma-scope-2b-pt-res-canonical"})
    );
}

#[test]
fn a_repo_id_and_folder_find_the_registry_entry() {
    let source = SaeSource::HfRepo("google/gemma-scope-2b-pt-res".into());
    let (rows, _) = check_against_golden(&source, "layer_20/width_16k/average_l0_71", "canonical");
    assert!(
        rows.provenance
            .release
            .as_deref()
            .is_some_and(|r| r.starts_with("gemma-scope-2b-pt-res"))
    );
    assert_eq!(
        rows.provenance.repo_id.as_deref(),
        Some("google/gemma-scope-2b-pt-res")
    );
}

#[test]
fn embedding_saes_are_scaled_by_sqrt_d_in_as_saelens_does() {
    let source = SaeSource::Release("gemma-scope-2b-pt-res".into());
    let (rows, _) = check_against_golden(&source, "embedding/width_4k/average_l0_6", "embedding");
    assert_eq!(rows.hook, HookPoint::embed());
}

#[test]
fn registry_dimensions_are_checked_against_the_file() {
    let source = SaeSource::Release("gemma-scope-2b-pt-res".into());
    let err = Sae::open(&hub(), &source, "layer_12/width_16k/average_l0_82").unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("[96, 64]") && msg.contains("d_sae 16384") && msg.contains("d_in 2304"),
        "{msg}"
    );
    assert!(
        msg.contains("gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"),
        "{msg}"
    );
}

#[test]
fn stored_npz_in_a_cache_folder_takes_its_hook_from_the_path() {
    let dir = snapshot("layer_12/width_16k/average_l0_82");
    let source = SaeSource::Folder(dir.clone());
    let (rows, _) = check_against_golden(&source, "", "stored_npz");
    assert_eq!(rows.provenance.revision.as_deref(), Some(COMMIT));
    assert_eq!(rows.provenance.release, None);
    // The same folder given as parent + sae_id.
    let parent = SaeSource::Folder(snapshot(""));
    let again = load_decoder_rows(&hub(), &parent, "layer_12/width_16k/average_l0_82", &[17]).unwrap();
    assert_eq!(again.rows[0], rows.rows[1]);
}

#[test]
fn deflated_npz_with_a_minimal_cfg() {
    let source = SaeSource::Folder(fixtures().join("local/deflated_npz"));
    check_against_golden(&source, "", "deflated_npz");
}

#[test]
fn gemma_scope_2_safetensors() {
    let local = fixtures().join("local/gemma_scope_2");
    check_against_golden(
        &SaeSource::Folder(local.clone()),
        "resid_post/layer_9_width_16k_l0_small",
        "gs2_resid",
    );
    let (rows, _) = check_against_golden(
        &SaeSource::Folder(local.join("attn_out/layer_3_width_16k_l0_big")),
        "",
        "gs2_attn",
    );
    assert_eq!(rows.hook, HookPoint::new(3, Site::AttnZ));
    assert_eq!(rows.provenance.format, SaeFormat::GemmaScope2Safetensors);
}

#[test]
fn saelens_folders_v6_and_pre_6() {
    let (rows, enc) = check_against_golden(
        &SaeSource::Folder(fixtures().join("local/saelens_v6")),
        "",
        "saelens_v6",
    );
    assert_eq!(rows.provenance.format, SaeFormat::SaeLens);
    assert_eq!(enc.architecture, SaeArchitecture::JumpRelu);
    let (_, enc) = check_against_golden(
        &SaeSource::Folder(fixtures().join("local/saelens_old")),
        "",
        "saelens_old",
    );
    assert_eq!(enc.architecture, SaeArchitecture::Standard);
    assert!(
        enc.apply_b_dec_to_input,
        "pre-6.0 configs default apply_b_dec_to_input to true"
    );
}

#[test]
fn unfoldable_activation_normalization_is_refused() {
    let source = SaeSource::Folder(fixtures().join("local/saelens_norm"));
    let msg = format!("{:#}", Sae::open(&hub(), &source, "").unwrap_err());
    assert!(
        msg.contains("expected_average_only_in") && msg.contains("Refusing"),
        "{msg}"
    );
}

/// jbloom's GPT-2 SAEs were trained on TransformerLens's centered residual stream
/// (`center_writing_weights`); fed the Hugging Face activation x, the folded encoder must give the
/// features SAELens computes from `x - mean(x)` (expected_centered.json, by make_centered.py).
#[test]
fn center_writing_weights_is_folded_into_the_encoder_as_saelens_sees_it() {
    let text = std::fs::read_to_string(fixtures().join("expected_centered.json")).unwrap();
    let want: Value = serde_json::from_str(&text).unwrap();
    let latents = usizes(&want["latents"]);
    let source = SaeSource::Folder(fixtures().join("local/saelens_centered"));
    let enc = load_encoder_parts(&hub(), &source, "", &latents).unwrap();
    assert_eq!(enc.hook.to_string(), want["hook"].as_str().unwrap());
    assert!(enc.apply_b_dec_to_input);
    let xs: Vec<Vec<f32>> = want["x"].as_array().unwrap().iter().map(f32s).collect();
    let mut differs_from_uncentered = false;
    for (t, x) in xs.iter().enumerate() {
        let feats = f32s(&want["features"][t]);
        let raw = f32s(&want["features_uncentered"][t]);
        for (k, col) in enc.w_enc_cols.iter().enumerate() {
            let pre: f64 = x
                .iter()
                .zip(&enc.b_dec)
                .zip(col)
                .map(|((&x, &b), &w)| (f64::from(x) - f64::from(b)) * f64::from(w))
                .sum::<f64>()
                + f64::from(enc.b_enc[k]);
            let got = pre.max(0.0) as f32;
            assert!(
                (got - feats[k]).abs() <= 1e-4 * (1.0 + feats[k].abs()),
                "token {t} latent {}: {got} vs SAELens {}",
                latents[k],
                feats[k]
            );
            differs_from_uncentered |= (raw[k] - feats[k]).abs() > 1e-2;
        }
    }
    assert!(differs_from_uncentered, "the fixture must tell centered from raw");
}

/// An SAELens folder with `cfg` (a pre-6.0 config on top of saelens_old's) in a temp dir.
fn saelens_folder_with(cfg_changes: Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let old = fixtures().join("local/saelens_old");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(old.join("cfg.json")).unwrap()).unwrap();
    for (k, v) in cfg_changes.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    std::fs::write(dir.path().join("cfg.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        old.join("sae_weights.safetensors"),
        dir.path().join("sae_weights.safetensors"),
    )
    .unwrap();
    dir
}

#[test]
fn run_time_normalization_and_unknown_model_kwargs_are_refused() {
    for (mode, says) in [
        ("constant_norm_rescale", "per token"),
        ("layer_norm", "per token"),
        ("covariance_whitening", "whitening statistics"),
        ("sqrt_d_model", "not one SAELens knows"),
    ] {
        let dir = saelens_folder_with(serde_json::json!({ "normalize_activations": mode }));
        let source = SaeSource::Folder(dir.path().to_path_buf());
        let msg = format!("{:#}", Sae::open(&hub(), &source, "").unwrap_err());
        assert!(
            msg.contains(mode) && msg.contains(says) && msg.contains("cfg.json"),
            "{msg}"
        );
    }
    let dir = saelens_folder_with(serde_json::json!({
        "model_from_pretrained_kwargs": {"center_writing_weights": false, "refactor_factored_attn_matrices": true}
    }));
    let source = SaeSource::Folder(dir.path().to_path_buf());
    let msg = format!("{:#}", Sae::open(&hub(), &source, "").unwrap_err());
    assert!(msg.contains("refactor_factored_attn_matrices"), "{msg}");
    // fold_ln leaves the residual stream as it is: accepted, and nothing is centered.
    let dir = saelens_folder_with(serde_json::json!({
        "model_from_pretrained_kwargs": {"center_writing_weights": false, "fold_ln": true}
    }));
    let source = SaeSource::Folder(dir.path().to_path_buf());
    let plain = load_encoder_parts(
        &hub(),
        &SaeSource::Folder(fixtures().join("local/saelens_old")),
        "",
        &[1],
    )
    .unwrap();
    let same = load_encoder_parts(&hub(), &source, "", &[1]).unwrap();
    assert_eq!(plain.w_enc_cols, same.w_enc_cols);
}

#[test]
fn other_families_are_in_the_registry_with_their_hooks_and_settings() {
    let reg = registry();
    let jb = reg.sae("gpt2-small-res-jb", "blocks.8.hook_resid_pre").unwrap();
    assert_eq!(jb.release.base_model_hf, "openai-community/gpt2");
    assert_eq!((jb.sae.d_in, jb.sae.d_sae), (768, None));
    assert_eq!(
        jb.release.config_overrides.as_ref().unwrap()["model_from_pretrained_kwargs"]["center_writing_weights"],
        Value::Bool(true)
    );
    let mistral = reg.release("mistral-7b-res-wg").unwrap();
    assert_eq!(mistral.base_model_hf, "mistralai/Mistral-7B-v0.1");
    assert_eq!(
        mistral.config_overrides.as_ref().unwrap()["normalize_activations"],
        "constant_norm_rescale"
    );
    let ls = reg.sae("llama_scope_lxr_8x", "l15r_8x").unwrap();
    assert_eq!(ls.sae.hook, "blocks.15.hook_resid_post");
    assert_eq!((ls.sae.d_in, ls.sae.d_sae), (4096, Some(32768)));
    assert_eq!(ls.release.format, SaeFormat::LlamaScope);
    let kk = reg.sae("gpt2-small-hook-z-kk", "blocks.3.hook_z").unwrap();
    assert_eq!(kk.sae.hook_point().unwrap().site, Site::AttnZ);
    assert_eq!(
        kk.release.weights_path(kk.sae),
        kk.sae.path,
        "single-file pickles"
    );
    let qwen = registry().search("qwen2.5-7b");
    assert!(
        !qwen.is_empty()
            && qwen
                .iter()
                .all(|e| e.release.base_model_hf == "Qwen/Qwen2.5-7B-Instruct")
    );
    // Formats sae-onnx does not read are refused before any download, naming the file.
    for release in [
        "llama_scope_lxr_8x",
        "goodfire-llama-3.1-8b-instruct",
        "qwen-scope-3-8b-base-w64k-l50",
    ] {
        let r = reg.release(release).unwrap();
        let source = SaeSource::Release(release.into());
        let msg = format!("{:#}", Sae::open(&hub(), &source, &r.saes[0].id).unwrap_err());
        assert!(
            msg.contains("cannot read yet") && msg.contains(&r.weights_path(&r.saes[0])),
            "{msg}"
        );
    }
}

#[test]
fn latents_out_of_range_are_errors_that_carry_latent_and_width() {
    let source = SaeSource::Release("gemma-scope-2b-pt-res-canonical".into());
    let err = load_decoder_rows(&hub(), &source, "layer_20/width_16k/canonical", &[3, 16384]).unwrap_err();
    let oor = err
        .downcast_ref::<LatentOutOfRange>()
        .expect("a LatentOutOfRange");
    assert_eq!((oor.latent, oor.d_sae), (16384, 16384));
    let msg = err.to_string();
    assert!(
        msg.contains("latent 16384") && msg.contains("d_sae = 16384"),
        "{msg}"
    );
    assert!(
        msg.contains("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"),
        "{msg}"
    );
    let folder = SaeSource::Folder(fixtures().join("local/saelens_v6"));
    let err = load_encoder_parts(&hub(), &folder, "", &[96]).unwrap_err();
    assert_eq!(err.downcast_ref::<LatentOutOfRange>().map(|e| e.d_sae), Some(96));
}

#[test]
fn unknown_releases_and_ids_suggest_the_nearest() {
    let msg = registry()
        .release("gemma-scope-2b-pt-res-canonicl")
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("unknown SAE release 'gemma-scope-2b-pt-res-canonicl'"),
        "{msg}"
    );
    assert!(
        msg.contains("did you mean: 'gemma-scope-2b-pt-res-canonical'"),
        "{msg}"
    );
    let source = SaeSource::Release("gemma-scope-2b-pt-res-canonical".into());
    let msg = format!(
        "{:#}",
        Sae::open(&hub(), &source, "layer_20/width_16k/canonicl").unwrap_err()
    );
    assert!(msg.contains("has no SAE 'layer_20/width_16k/canonicl'"), "{msg}");
    assert!(msg.contains("'layer_20/width_16k/canonical'"), "{msg}");
    let suggestions = msg
        .split("did you mean: ")
        .nth(1)
        .unwrap()
        .split("?)")
        .next()
        .unwrap();
    assert!(
        suggestions.matches(", ").count() <= 4,
        "at most 5 suggestions: {suggestions}"
    );
    let msg = registry()
        .sae("gemma-scope-2b-pt-res-canonical", "")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("give an sae_id"), "{msg}");
}

#[test]
fn registry_search_filters_by_words() {
    let all = registry().search("");
    assert_eq!(all.len(), 10018);
    let hits = registry().search("2b-pt-res-canonical LAYER_20/");
    assert!(hits.iter().any(|e| e.sae.id == "layer_20/width_16k/canonical"));
    assert!(
        hits.iter()
            .all(|e| e.release.release == "gemma-scope-2b-pt-res-canonical" && e.sae.layer == Some(20))
    );
    assert!(registry().search("no-such-thing-anywhere").is_empty());
}

#[test]
fn missing_files_and_unreadable_formats_say_why() {
    // Not in the offline cache.
    let source = SaeSource::Release("gemma-scope-2b-pt-res-canonical".into());
    let msg = format!(
        "{:#}",
        Sae::open(&hub(), &source, "layer_5/width_16k/canonical").unwrap_err()
    );
    assert!(
        msg.contains("HF_HUB_OFFLINE") && msg.contains("layer_5/width_16k/average_l0_"),
        "{msg}"
    );
    // dictionary_learning pickles are refused before any download.
    let release = registry()
        .releases
        .iter()
        .find(|r| r.format == SaeFormat::DictionaryLearning)
        .unwrap();
    let source = SaeSource::Release(release.release.clone());
    let msg = format!(
        "{:#}",
        Sae::open(&hub(), &source, &release.saes[0].id).unwrap_err()
    );
    assert!(msg.contains("PyTorch pickle"), "{msg}");
    // A repository the registry does not know, not cached.
    let source = SaeSource::HfRepo("someone/my-saes".into());
    let msg = format!(
        "{:#}",
        Sae::open(&hub(), &source, "blocks.3.hook_resid_post").unwrap_err()
    );
    assert!(
        msg.contains("found no SAE") && msg.contains("params.npz"),
        "{msg}"
    );
    // A folder without an SAE.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let msg = format!(
        "{:#}",
        Sae::open(&hub(), &SaeSource::Folder(dir.path().into()), "").unwrap_err()
    );
    assert!(msg.contains("holds no SAE") && msg.contains("sae_id"), "{msg}");
}

#[test]
fn sources_are_classified() {
    let here = fixtures();
    assert_eq!(
        SaeSource::classify(" gemma-scope-2b-pt-res-canonical ", None).unwrap(),
        SaeSource::Release("gemma-scope-2b-pt-res-canonical".into())
    );
    assert_eq!(
        SaeSource::classify("google/gemma-scope-2b-pt-res", None).unwrap(),
        SaeSource::HfRepo("google/gemma-scope-2b-pt-res".into())
    );
    assert_eq!(
        SaeSource::classify("local/saelens_v6", Some(&here)).unwrap(),
        SaeSource::Folder(here.join("local/saelens_v6"))
    );
    let msg = format!(
        "{:#}",
        SaeSource::classify("gemma-scope-2b-pt-res-canonicall", None).unwrap_err()
    );
    assert!(
        msg.contains("Nearest releases: gemma-scope-2b-pt-res-canonical"),
        "{msg}"
    );
    let msg = format!(
        "{:#}",
        SaeSource::classify("expected.json", Some(&here)).unwrap_err()
    );
    assert!(msg.contains("is a file"), "{msg}");
}
