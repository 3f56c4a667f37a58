//! `sae-onnx export` as a hostile user meets it (issue 12): it never writes over the checkpoint it
//! reads nor replaces anything that is not a regular file; a config.json that would divide by
//! zero, overflow or contradict the checkpoint's tensors is an error naming config.json, the field
//! and the tensor (not a panic, not a graph that fails later inside ONNX Runtime); and a sharded
//! index cannot make it read files outside the checkpoint, while Hugging Face cache snapshots
//! (symlinks into `../../blobs`) still export. Every case runs the real binary on the demo model.

use crate::common::{failed, run_isolated as sae_onnx, succeeded};
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::{Value, json};

const DEMO: &str = "models/tiny-gemma2";
const CHECKPOINT_FILES: [&str; 5] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

fn export(model: &Path, out: &Path, extra: &[&str], home: &Path) -> Output {
    let mut args = vec!["export", model.to_str().unwrap(), "-o", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    sae_onnx(&args, home)
}

/// A copy of the demo checkpoint in `dir`.
fn checkpoint(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    for file in CHECKPOINT_FILES {
        std::fs::copy(Path::new(DEMO).join(file), dir.join(file)).unwrap();
    }
    dir.to_path_buf()
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    CHECKPOINT_FILES
        .iter()
        .map(|f| (dir.join(f), std::fs::read(dir.join(f)).unwrap()))
        .collect()
}

#[test]
fn export_never_writes_over_its_checkpoint_or_a_non_regular_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(&tmp.path().join("ckpt"));
    // Links to the folder itself: collecting the checkpoint's files must enter it once (two links
    // made 2^40 paths before the kernel's symlink limit stopped the walk).
    std::os::unix::fs::symlink(&ckpt, ckpt.join("loop1")).unwrap();
    std::os::unix::fs::symlink(".", ckpt.join("loop2")).unwrap();
    let before = snapshot(&ckpt);
    let alias = tmp.path().join("alias.onnx");
    std::fs::hard_link(ckpt.join("model.safetensors"), &alias).unwrap();
    let link = tmp.path().join("link.onnx");
    std::os::unix::fs::symlink(ckpt.join("config.json"), &link).unwrap();
    for out in [
        ckpt.join("model.safetensors"),
        ckpt.join("config.json"),
        alias,
        link,
    ] {
        let run = export(&ckpt, &out, &["--force"], tmp.path());
        failed(&run, &["input of this command"]);
        assert_eq!(snapshot(&ckpt), before, "export -o {}", out.display());
    }
    // OUT.data is written too: it is refused when it is the checkpoint's file.
    let out = tmp.path().join("w.onnx");
    std::fs::hard_link(ckpt.join("model.safetensors"), tmp.path().join("w.onnx.data")).unwrap();
    failed(
        &export(&ckpt, &out, &["--force"], tmp.path()),
        &["w.onnx.data", "input of this command"],
    );
    assert!(!out.exists());
    assert_eq!(snapshot(&ckpt), before);

    // A FIFO stands for /dev/null and /dev/full.
    let fifo = tmp.path().join("fifo.onnx");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    failed(
        &export(&ckpt, &fifo, &["--force"], tmp.path()),
        &["not a regular file"],
    );
    assert!(std::fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
}

/// An edit of config.json.
type Edit = Box<dyn Fn(&mut Value)>;

/// config.json edits that used to panic, export a graph ONNX Runtime rejects, or compute with the
/// wrong head split, with what the error must name.
fn bad_configs() -> Vec<(&'static str, Edit, Vec<&'static str>)> {
    let set = |k: &'static str, v: Value| Box::new(move |c: &mut Value| c[k] = v.clone()) as Edit;
    vec![
        (
            "heads 0",
            set("num_attention_heads", json!(0)),
            vec!["num_attention_heads is 0"],
        ),
        (
            "positions 0",
            set("max_position_embeddings", json!(0)),
            vec!["max_position_embeddings is 0"],
        ),
        ("hidden 0", set("hidden_size", json!(0)), vec!["hidden_size is 0"]),
        (
            "layers 0",
            set("num_hidden_layers", json!(0)),
            vec!["num_hidden_layers is 0"],
        ),
        (
            "kv 0",
            set("num_key_value_heads", json!(0)),
            vec!["num_key_value_heads is 0"],
        ),
        ("head_dim 0", set("head_dim", json!(0)), vec!["head_dim is 0"]),
        (
            "huge",
            set("hidden_size", json!(1u64 << 40)),
            vec!["hidden_size", "at most"],
        ),
        (
            "kv 3",
            set("num_key_value_heads", json!(3)),
            vec!["num_key_value_heads 3"],
        ),
        (
            "odd head_dim",
            set("head_dim", json!(31)),
            vec!["head_dim 31 is odd"],
        ),
        ("eps", set("rms_norm_eps", json!(-1.0)), vec!["rms_norm_eps"]),
        (
            "softcap 0",
            set("attn_logit_softcapping", json!(0.0)),
            vec!["attn_logit_softcapping"],
        ),
        (
            "window 0",
            set("sliding_window", json!(0)),
            vec!["sliding_window is 0"],
        ),
        (
            "kv missing",
            Box::new(|c: &mut Value| {
                c.as_object_mut().unwrap().remove("num_key_value_heads");
            }),
            vec!["k_proj.weight", "num_key_value_heads is missing"],
        ),
        (
            "head_dim",
            set("head_dim", json!(16)),
            vec!["q_proj.weight", "head_dim", "[64, 128]"],
        ),
        (
            "intermediate",
            set("intermediate_size", json!(512)),
            vec!["gate_proj.weight", "intermediate_size"],
        ),
        (
            "vocab",
            set("vocab_size", json!(1000)),
            vec!["embed_tokens.weight", "vocab_size"],
        ),
        (
            "layers 5",
            Box::new(|c: &mut Value| {
                c["num_hidden_layers"] = json!(5);
                c.as_object_mut().unwrap().remove("layer_types");
            }),
            vec!["layers.4.", "5 layers"],
        ),
        (
            // Checked tensor by tensor: no list of 26 billion expected tensors.
            "layers 2e9",
            Box::new(|c: &mut Value| {
                c["num_hidden_layers"] = json!(2_000_000_000u64);
                c.as_object_mut().unwrap().remove("layer_types");
            }),
            vec!["layers.4.", "2000000000 layers"],
        ),
        (
            "escapes",
            set("architectures", json!(["\u{1b}[2JEvil\u{0}"])),
            vec!["\\u{1b}[2JEvil\\u{0}"],
        ),
    ]
}

#[test]
fn configs_that_would_crash_or_contradict_the_tensors_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(&tmp.path().join("ckpt"));
    let original: Value =
        serde_json::from_str(&std::fs::read_to_string(ckpt.join("config.json")).unwrap()).unwrap();
    let out = tmp.path().join("x.onnx");
    for (case, edit, wanted) in bad_configs() {
        let mut config = original.clone();
        edit(&mut config);
        std::fs::write(ckpt.join("config.json"), config.to_string()).unwrap();
        let run = export(&ckpt, &out, &[], tmp.path());
        let stderr = failed(&run, &["config.json"]);
        for w in wanted {
            assert!(stderr.contains(w), "{case}: '{w}' missing from: {stderr}");
        }
        assert!(
            !run.stderr.contains(&0x1b) && !run.stderr.contains(&0),
            "{case}: raw control bytes echoed"
        );
        assert!(!out.exists(), "{case}: an output appeared");
        assert!(
            !tmp.path().join("x.onnx.data").exists(),
            "{case}: a data file appeared"
        );
    }
    std::fs::write(ckpt.join("config.json"), original.to_string()).unwrap();
    succeeded(&export(&ckpt, &out, &[], tmp.path()));
}

/// `model.safetensors.index.json` mapping every tensor to `shard`.
fn index_to(dir: &Path, shard: &str) {
    let bytes = std::fs::read(Path::new(DEMO).join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let map: serde_json::Map<String, Value> = header
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .map(|k| (k.clone(), json!(shard)))
        .collect();
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        json!({"metadata": {}, "weight_map": map}).to_string(),
    )
    .unwrap();
}

#[test]
fn shards_outside_the_checkpoint_are_refused_and_cache_snapshots_export() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = checkpoint(&tmp.path().join("ckpt"));
    // A valid safetensors file outside the folder: before the fix, export read it.
    let outside = tmp.path().join("outside.safetensors");
    std::fs::rename(ckpt.join("model.safetensors"), &outside).unwrap();
    let out = tmp.path().join("x.onnx");
    let absolute = outside.display().to_string();
    for shard in ["../outside.safetensors", absolute.as_str()] {
        index_to(&ckpt, shard);
        failed(
            &export(&ckpt, &out, &[], tmp.path()),
            &[
                "model.safetensors.index.json",
                "not a file inside the checkpoint folder",
            ],
        );
        assert!(!out.exists());
    }
    std::os::unix::fs::symlink(&outside, ckpt.join("shard.safetensors")).unwrap();
    index_to(&ckpt, "shard.safetensors");
    failed(
        &export(&ckpt, &out, &[], tmp.path()),
        &["shard.safetensors", "outside the checkpoint folder"],
    );
    assert!(!out.exists());

    // The Hugging Face cache's layout: snapshot files are symlinks into ../../blobs.
    let commit = "4f1c2a9e0b7d3c5a6e8f9a0b1c2d3e4f5a6b7c8d";
    let repo = tmp.path().join("hub").join("models--org--tiny");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    for (i, file) in CHECKPOINT_FILES.iter().enumerate() {
        let name = if *file == "model.safetensors" {
            "model-00001-of-00001.safetensors"
        } else {
            file
        };
        std::fs::copy(
            Path::new(DEMO).join(file),
            repo.join("blobs").join(format!("b{i}")),
        )
        .unwrap();
        std::os::unix::fs::symlink(format!("../../blobs/b{i}"), snapshot.join(name)).unwrap();
    }
    index_to(&snapshot, "model-00001-of-00001.safetensors");
    succeeded(&sae_onnx(
        &[
            "export",
            "org/tiny",
            "-o",
            tmp.path().join("hub.onnx").to_str().unwrap(),
        ],
        tmp.path(),
    ));
    // The same snapshot given as a folder.
    succeeded(&export(&snapshot, &tmp.path().join("snap.onnx"), &[], tmp.path()));
    // A shard name that leaves the snapshot is refused by name.
    index_to(&snapshot, "../../blobs/b1");
    failed(
        &sae_onnx(
            &[
                "export",
                "org/tiny",
                "-o",
                tmp.path().join("esc.onnx").to_str().unwrap(),
            ],
            tmp.path(),
        ),
        &["../../blobs/b1", "not a path inside"],
    );
    assert!(!tmp.path().join("esc.onnx").exists());
}

/// Sets the first element of checkpoint tensor `name` (bf16) to `bits`.
fn poke_bf16(model: &Path, name: &str, bits: u16) {
    let mut bytes = std::fs::read(model).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    assert_eq!(header[name]["dtype"], "BF16");
    let start = 8 + header_len + header[name]["data_offsets"][0].as_u64().unwrap() as usize;
    bytes[start..start + 2].copy_from_slice(&bits.to_le_bytes());
    std::fs::write(model, bytes).unwrap();
}

#[test]
fn weights_and_constants_that_are_not_finite_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path();
    let tensor = "model.layers.2.mlp.down_proj.weight";

    let nan = checkpoint(&tmp.path().join("nan"));
    poke_bf16(&nan.join("model.safetensors"), tensor, 0x7fc0);
    let out = tmp.path().join("nan.onnx");
    let message = failed(
        &export(&nan, &out, &[], home),
        &[tensor, "NaN or infinity", "model.safetensors"],
    );
    assert!(!out.exists(), "{message}");

    // 1e5 is a bf16 value but past float16's range: refused for --dtype f16 only.
    let big = checkpoint(&tmp.path().join("big"));
    poke_bf16(&big.join("model.safetensors"), tensor, 0x47c3);
    failed(
        &export(&big, &tmp.path().join("big16.onnx"), &["--dtype", "f16"], home),
        &[tensor, "after conversion to float16"],
    );
    succeeded(&export(&big, &tmp.path().join("big32.onnx"), &[], home));

    // A RoPE base so small that the rotary frequencies overflow.
    let rope = checkpoint(&tmp.path().join("rope"));
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(rope.join("config.json")).unwrap()).unwrap();
    config["rope_theta"] = json!(1e-50);
    std::fs::write(rope.join("config.json"), config.to_string()).unwrap();
    failed(
        &export(&rope, &tmp.path().join("rope.onnx"), &[], home),
        &["inv_freq", "computed from config.json", "NaN or infinity"],
    );
}
