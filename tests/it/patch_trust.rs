//! `sae-onnx patch` as a hostile user meets it (issue 12): it never writes over its own inputs
//! (the plan, the base model and its data, the SAE's files, under any name), never replaces an
//! existing output without --force nor anything that is not a regular file, refuses numbers that
//! would steer with infinities or NaN, refuses a hook nothing reads, reads plans with a bound, does
//! not leave the SAE folder or the Hugging Face snapshot, and names the plan's line in errors
//! without echoing control characters. Every case runs the real binary on the demo model.

use crate::common::{failed, run_isolated as sae_onnx, succeeded};
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sae_onnx::export::{self, ExportOptions};
use sae_onnx::onnx::{Model, SaveOptions};

const DEMO: &str = "models/tiny-gemma2";
const SEED_HEADER: &str = "latent_idx,steering_coefficient,sae_release,sae_id,description";

/// A scratch copy of the demo's SAE and plan beside an export of the demo model, so a failure
/// can destroy only copies.
struct Setup {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    base: PathBuf,
    sae: PathBuf,
    csv: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let base = dir.join("base.onnx");
    export::export(DEMO, &base, &ExportOptions::default()).unwrap();
    let sae = dir.join("sae");
    std::fs::create_dir(&sae).unwrap();
    for file in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(Path::new(DEMO).join("sae").join(file), sae.join(file)).unwrap();
    }
    let csv = dir.join("steer.csv");
    std::fs::write(&csv, format!("{SEED_HEADER}\n7, 24.0,{},,demo\n", sae.display())).unwrap();
    Setup {
        _tmp: tmp,
        dir,
        base,
        sae,
        csv,
    }
}

impl Setup {
    fn inputs(&self) -> Vec<PathBuf> {
        vec![
            self.csv.clone(),
            self.base.clone(),
            self.dir.join("base.onnx.data"),
            self.sae.join("cfg.json"),
            self.sae.join("sae_weights.safetensors"),
        ]
    }

    /// Runs `patch --csv CSV --model BASE -o OUT` with `extra` arguments.
    fn patch(&self, csv: &Path, out: &Path, extra: &[&str]) -> Output {
        let mut args = vec![
            "patch".to_owned(),
            "--csv".into(),
            csv.display().to_string(),
            "--model".into(),
            self.base.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        sae_onnx(&args, &self.dir)
    }

    fn plan(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

fn snapshot(paths: &[PathBuf]) -> BTreeMap<PathBuf, Vec<u8>> {
    paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(p).unwrap()))
        .collect()
}

#[test]
fn patch_never_writes_over_its_inputs() {
    let s = setup();
    let csv_link = s.dir.join("link.csv");
    std::os::unix::fs::symlink(&s.csv, &csv_link).unwrap();
    let weights_alias = s.dir.join("alias.onnx");
    std::fs::hard_link(s.sae.join("sae_weights.safetensors"), &weights_alias).unwrap();
    let before = snapshot(&s.inputs());
    let mut targets = s.inputs();
    targets.extend([csv_link, weights_alias]);
    for target in &targets {
        let run = s.patch(&s.csv, target, &["--force"]);
        failed(&run, &["input of this command"]);
        assert_eq!(snapshot(&s.inputs()), before, "patch -o {}", target.display());
    }
    // OUT.data beside the output is written by patches too big to stay inline: it is guarded too.
    let out = s.dir.join("sae").join("sae_weights.safetensors");
    let data_twin = s.dir.join("twin.onnx");
    std::fs::rename(&out, s.dir.join("twin.onnx.data")).unwrap();
    std::os::unix::fs::symlink(s.dir.join("twin.onnx.data"), &out).unwrap();
    let run = s.patch(&s.csv, &data_twin, &["--force"]);
    failed(&run, &["twin.onnx.data", "input of this command"]);
    assert!(!data_twin.exists());
}

#[test]
fn patch_replaces_only_regular_files_and_only_with_force() {
    let s = setup();
    let out = s.dir.join("steered.onnx");
    std::fs::write(&out, "precious").unwrap();
    let run = s.patch(&s.csv, &out, &[]);
    failed(&run, &["already exists", "--force"]);
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    succeeded(&s.patch(&s.csv, &out, &["--force"]));
    Model::load(&out).unwrap();

    // A FIFO stands for /dev/null and /dev/full: not a regular file, so never replaced.
    let fifo = s.dir.join("fifo.onnx");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let run = s.patch(&s.csv, &fifo, &["--force"]);
    failed(&run, &["not a regular file"]);
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
    let folder = s.dir.join("folder.onnx");
    std::fs::create_dir(&folder).unwrap();
    failed(&s.patch(&s.csv, &folder, &["--force"]), &["is a folder"]);
}

#[test]
fn patch_refuses_numbers_that_steer_with_infinities_or_nan() {
    let s = setup();
    let out = s.dir.join("x.onnx");
    let sae = s.sae.display();
    for (coefficient, wanted) in [
        ("1e45", "beyond float32"),
        ("-3.5e38", "beyond float32"),
        ("NaN", "not a finite number"),
        ("inf", "not a finite number"),
    ] {
        let csv = s.plan("n.csv", &format!("{SEED_HEADER}\n7,{coefficient},{sae},,x\n"));
        failed(&s.patch(&csv, &out, &[]), &["n.csv:2:3", wanted]);
        assert!(!out.exists(), "{coefficient}");
    }
    let csv = s.plan(
        "t.csv",
        &format!("{SEED_HEADER},action,threshold\n7,1,{sae},,x,add_if_active,1e39\n"),
    );
    failed(
        &s.patch(&csv, &out, &[]),
        &["t.csv:2:", "threshold", "beyond float32"],
    );

    // Within float32, but not once multiplied with W_dec[7].
    let weights = s.sae.join("sae_weights.safetensors");
    let clean = std::fs::read(&weights).unwrap();
    poke(&weights, "W_dec", 7 * 128 + 5, 1e30);
    let csv = s.plan("n.csv", &format!("{SEED_HEADER}\n7,1e10,{sae},,x\n"));
    failed(
        &s.patch(&csv, &out, &[]),
        &["n.csv:2:3", "W_dec[7]", "beyond float32"],
    );
    std::fs::write(&weights, &clean).unwrap();

    // NaN in the SAE: W_dec is read by every row; the threshold only by rows that gate on it.
    poke(&weights, "threshold", 7, f32::NAN);
    succeeded(&s.patch(&s.csv, &out, &[]));
    let clamp = s.plan(
        "c.csv",
        &format!("{SEED_HEADER},action\n3,1,{sae},,ok,clamp\n7,1,{sae},,x,clamp\n"),
    );
    let out2 = s.dir.join("y.onnx");
    failed(
        &s.patch(&clamp, &out2, &[]),
        &[
            "c.csv:3:1",
            "sae_weights.safetensors",
            "threshold",
            "latent 7",
            "NaN",
        ],
    );
    std::fs::write(&weights, &clean).unwrap();
    poke(&weights, "W_dec", 7 * 128 + 5, f32::NAN);
    failed(
        &s.patch(&s.csv, &out2, &[]),
        &[
            "steer.csv:2:1",
            "sae_weights.safetensors",
            "W_dec",
            "latent 7",
            "NaN",
        ],
    );
    std::fs::write(&weights, &clean).unwrap();
    poke(&weights, "W_enc", 5 * 32 + 7, f32::NAN);
    failed(&s.patch(&clamp, &out2, &[]), &["W_enc", "latent 7"]);
    assert!(!out2.exists());
}

/// Writes `value` at element `index` of float32 tensor `name` of a safetensors file.
fn poke(path: &Path, name: &str, index: usize, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n + index * 4;
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn steering_a_hook_nothing_reads_is_an_error() {
    let s = setup();
    // Layer 3 reads layer 2's resid_mid instead of its resid_post: the hook is still in the graph
    // and the metadata, but dead.
    let mut model = Model::load(&s.base).unwrap();
    model
        .graph_mut()
        .replace_all_uses_with("blocks.2.hook_resid_post", "blocks.2.hook_resid_mid");
    let dead = s.dir.join("dead.onnx");
    model.save(&dead, &SaveOptions::default()).unwrap();
    let out = s.dir.join("x.onnx");
    let run = sae_onnx(
        &[
            "patch".into(),
            "--csv".into(),
            s.csv.display().to_string(),
            "--model".into(),
            dead.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ],
        &s.dir,
    );
    failed(
        &run,
        &[
            "steer.csv:2:",
            "blocks.2.hook_resid_post",
            "no node of the graph reads",
        ],
    );
    assert!(!out.exists());
}

#[test]
fn plans_are_read_with_a_bound() {
    let s = setup();
    let out = s.dir.join("x.onnx");
    let run = s.patch(Path::new("/dev/zero"), &out, &[]);
    failed(&run, &["/dev/zero", "larger than"]);
    assert!(!out.exists());
}

#[test]
fn messages_name_the_row_and_the_model_and_escape_control_characters() {
    let s = setup();
    let out = s.dir.join("x.onnx");
    let csv = s.plan(
        "h.csv",
        &format!(
            "sparse_model,hookpoint,feature_index,steering_coefficient\n{},layers.99,7,1\n",
            s.sae.display()
        ),
    );
    failed(
        &s.patch(&csv, &out, &[]),
        &["h.csv:2:", "blocks.99.hook_resid_post", "4 layers", "0 to 3"],
    );
    let csv = s.plan("e.csv", &format!("{SEED_HEADER}\n7,1,\u{1b}[31mred\u{0},,x\n"));
    let run = s.patch(&csv, &out, &[]);
    let stderr = failed(&run, &["e.csv:2:", "control character", "\\u{1b}"]);
    assert!(
        !run.stderr.contains(&0x1b) && !run.stderr.contains(&0),
        "raw control bytes echoed: {stderr:?}"
    );
    // The SAE's own files are user files too.
    let cfg_path = s.sae.join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["metadata"]["hook_name"] = "blocks.2.\u{1b}[31mhook".into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let run = s.patch(&s.csv, &out, &[]);
    let stderr = failed(&run, &["steer.csv:2:", "cfg.json", "\\u{1b}[31mhook"]);
    assert!(!run.stderr.contains(&0x1b), "raw escape echoed: {stderr:?}");
    assert!(!out.exists());
}

#[test]
fn sae_ids_do_not_leave_the_sae_folder_or_the_snapshot() {
    let s = setup();
    let out = s.dir.join("x.onnx");
    // A folder of SAEs and, beside it, one it must not reach.
    let saes = s.dir.join("saes");
    std::fs::create_dir_all(saes.join("inside")).unwrap();
    for file in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(s.sae.join(file), saes.join("inside").join(file)).unwrap();
    }
    std::os::unix::fs::symlink(&s.sae, saes.join("link")).unwrap();
    let row = |id: &str| format!("{SEED_HEADER}\n7,1,{},{id},x\n", saes.display());
    succeeded(&s.patch(&s.plan("ok.csv", &row("inside")), &out, &[]));
    let abs = s.sae.display().to_string();
    for id in ["../sae", abs.as_str()] {
        let csv = s.plan("up.csv", &row(id));
        failed(
            &s.patch(&csv, &s.dir.join("y.onnx"), &[]),
            &["up.csv:2:", "not a folder inside"],
        );
    }
    failed(
        &s.patch(&s.plan("l.csv", &row("link")), &s.dir.join("y.onnx"), &[]),
        &["l.csv:2:", "outside the SAE folder"],
    );

    // A Hugging Face SAE repository in the cache, and another repository's SAE beside it.
    let commit = "0123456789abcdef0123456789abcdef01234567";
    for repo in ["models--org--saes", "models--org--other"] {
        let root = s.dir.join("hub").join(repo);
        std::fs::create_dir_all(root.join("refs")).unwrap();
        std::fs::write(root.join("refs/main"), commit).unwrap();
        let folder = root.join("snapshots").join(commit).join("layer_2");
        std::fs::create_dir_all(&folder).unwrap();
        for file in ["cfg.json", "sae_weights.safetensors"] {
            std::fs::copy(s.sae.join(file), folder.join(file)).unwrap();
        }
    }
    let hub_row = |id: &str| format!("{SEED_HEADER}\n7,1,org/saes,{id},x\n");
    succeeded(&s.patch(
        &s.plan("hub.csv", &hub_row("layer_2")),
        &s.dir.join("h.onnx"),
        &[],
    ));
    let escape = format!("../../../models--org--other/snapshots/{commit}/layer_2");
    failed(
        &s.patch(&s.plan("esc.csv", &hub_row(&escape)), &s.dir.join("y.onnx"), &[]),
        &["esc.csv:2:", "not a folder inside"],
    );
    assert!(!s.dir.join("y.onnx").exists());
}

/// The base path a patch reports (`steered BASE -> OUT`).
fn reported_base(run: &Output) -> String {
    succeeded(run);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("steered "))
        .unwrap_or_else(|| panic!("no summary line in: {stderr}"));
    line.split(" -> ").next().unwrap().to_owned()
}

#[test]
fn a_changed_checkpoint_folder_is_exported_again_not_served_stale() {
    let s = setup();
    let ckpt = s.dir.join("ckpt");
    std::fs::create_dir(&ckpt).unwrap();
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(Path::new(DEMO).join(file), ckpt.join(file)).unwrap();
    }
    let run = |out: &str| {
        sae_onnx(
            &[
                "patch".into(),
                "--csv".into(),
                s.csv.display().to_string(),
                "--model".into(),
                ckpt.display().to_string(),
                "-o".into(),
                s.dir.join(out).display().to_string(),
            ],
            &s.dir,
        )
    };
    let first = reported_base(&run("a.onnx"));
    assert_eq!(
        reported_base(&run("b.onnx")),
        first,
        "an unchanged folder reuses its export"
    );
    poke(
        &ckpt.join("model.safetensors"),
        "model.embed_tokens.weight",
        3,
        0.5,
    );
    // Another folder: this one holds a link to the first export's data file under its name.
    std::fs::create_dir(s.dir.join("new")).unwrap();
    let second = reported_base(&run("new/c.onnx"));
    assert_ne!(second, first, "the edited checkpoint got the stale export");
}

#[test]
fn sae_configs_are_read_with_a_bound() {
    let s = setup();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let root = s.dir.join("hub").join("models--org--zero");
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), commit).unwrap();
    let folder = root.join("snapshots").join(commit).join("layer_2");
    std::fs::create_dir_all(&folder).unwrap();
    std::os::unix::fs::symlink("/dev/zero", folder.join("cfg.json")).unwrap();
    std::fs::copy(
        s.sae.join("sae_weights.safetensors"),
        folder.join("sae_weights.safetensors"),
    )
    .unwrap();
    let csv = s.plan("z.csv", &format!("{SEED_HEADER}\n7,1,org/zero,layer_2,x\n"));
    let out = s.dir.join("x.onnx");
    failed(
        &s.patch(&csv, &out, &[]),
        &["z.csv:2:", "cfg.json", "larger than"],
    );
    assert!(!out.exists());
}

#[test]
fn head_indices_and_widths_past_any_model_are_errors_not_allocations() {
    let s = setup();
    let out = s.dir.join("x.onnx");
    let row = |head: &str| {
        format!(
            "sparse_model,hookpoint,feature_index,steering_coefficient,head_index\n{},blocks.2.attn.hook_z,7,1,{head}\n",
            s.sae.display()
        )
    };
    failed(
        &s.patch(&s.plan("h.csv", &row("99999999999")), &out, &[]),
        &["h.csv:2:", "head 99999999999", "beyond any model"],
    );
    // A model whose metadata claims an absurd attention width.
    let mut model = Model::load(&s.base).unwrap();
    model.set_metadata("sae_onnx.d_attn_z", "99999999999");
    let wide = s.dir.join("wide.onnx");
    model.save(&wide, &SaveOptions::default()).unwrap();
    let run = sae_onnx(
        &[
            "patch".into(),
            "--csv".into(),
            s.plan("z.csv", &row("0")).display().to_string(),
            "--model".into(),
            wide.display().to_string(),
            "-o".into(),
            out.display().to_string(),
        ],
        &s.dir,
    );
    failed(&run, &["width of 99999999999", "metadata"]);
    assert!(!out.exists());
}

#[test]
fn a_hub_model_is_exported_again_when_its_branch_moves() {
    let s = setup();
    let repo = s.dir.join("hub").join("models--org--tiny");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    for commit in ["a".repeat(40), "b".repeat(40)] {
        let snapshot = repo.join("snapshots").join(&commit);
        std::fs::create_dir_all(&snapshot).unwrap();
        for file in ["config.json", "model.safetensors", "tokenizer.json"] {
            std::fs::copy(Path::new(DEMO).join(file), snapshot.join(file)).unwrap();
        }
    }
    let run = |commit: String, out: &str| {
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        std::fs::create_dir_all(s.dir.join(out)).unwrap();
        reported_base(&sae_onnx(
            &[
                "patch".into(),
                "--csv".into(),
                s.csv.display().to_string(),
                "--model".into(),
                "org/tiny".into(),
                "-o".into(),
                s.dir.join(out).join("x.onnx").display().to_string(),
            ],
            &s.dir,
        ))
    };
    let first = run("a".repeat(40), "one");
    let second = run("b".repeat(40), "two");
    assert!(first.contains(&"a".repeat(40)), "{first}");
    assert!(
        second.contains(&"b".repeat(40)),
        "main moved, the stale export was used: {second}"
    );
}
