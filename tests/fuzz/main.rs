//! Fuzz harness: every parser of user files, fed seeded mutations of real seed files, must not
//! panic, hang, allocate without bound, modify its input, or refuse without naming the input.
//! Bounded for CI (`SAE_ONNX_FUZZ_CASES`, `SAE_ONNX_FUZZ_SECONDS`, `SAE_ONNX_FUZZ_SEED`; see
//! RELIABILITY.md); failing cases are kept under `target/fuzz-failures/`.
//!
//! Library parsers run in this process (the counting allocator sees them); whole commands run as
//! the real binary under a memory limit, where a panic is exit code 101 and an abort a signal.

mod harness;
mod mutate;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use harness::Target;
use prost::Message;
use sae_onnx::onnx::pb::ModelProto;

#[global_allocator]
static ALLOC: harness::Counting = harness::Counting;

const BIN: &str = env!("CARGO_BIN_EXE_sae-onnx");

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> Vec<u8> {
    std::fs::read(repo(path)).unwrap_or_else(|e| panic!("seed {path}: {e}"))
}

fn err_text(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// A safetensors file's header region: the 8-byte length and the JSON it announces.
fn safetensors_hot(seed: &[u8]) -> usize {
    seed.get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()) as usize + 8)
        .unwrap_or(0)
        .min(seed.len())
}

/// The demo model exported once (graph + data file), shared by the ONNX targets.
fn demo_export() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new(BIN)
            .args(["-q", "export"])
            .arg(repo("models/tiny-gemma2"))
            .arg("-o")
            .arg(dir.path().join("base.onnx"))
            .status()
            .unwrap();
        assert!(status.success(), "exporting the demo model failed");
        dir
    })
    .path()
}

/// Runs the binary on a case with a memory limit and a time limit. A panic or a signal is
/// raised here as a panic, so the harness records it; an ordinary failure returns stderr.
fn run_binary(args: &[&std::ffi::OsStr], cwd: &Path) -> Result<(), String> {
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    let mut command = Command::new(BIN);
    command.args(args).current_dir(cwd).env("HF_HUB_OFFLINE", "1");
    // SAFETY: setrlimit only, between fork and exec.
    unsafe {
        command.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4 << 30,
                rlim_max: 4 << 30,
            };
            libc::setrlimit(libc::RLIMIT_AS, &limit);
            Ok(())
        });
    }
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start sae-onnx");
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(harness::HANG_SECONDS);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for sae-onnx") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sae-onnx ran past {} s", harness::HANG_SECONDS);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stderr = String::new();
    use std::io::Read;
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    if let Some(signal) = status.signal() {
        panic!("sae-onnx was killed by signal {signal}: {stderr}");
    }
    match status.code() {
        Some(0) => Ok(()),
        Some(101) => panic!("sae-onnx panicked: {stderr}"),
        _ => Err(stderr),
    }
}

/// `sae-onnx patch --csv PLAN --model BASE -o OUT --force` in `cwd`.
fn patch(plan: &Path, base: &Path, out: &Path, cwd: &Path) -> Result<(), String> {
    let args = [
        os("-q"),
        os("patch"),
        os("--csv"),
        plan.as_os_str(),
        os("--model"),
        base.as_os_str(),
        os("-o"),
        out.as_os_str(),
        os("--force"),
    ];
    run_binary(&args, cwd)
}

fn os(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

#[test]
fn steer_csv() {
    // The plans name SAE folders relative to themselves: give each name the demo SAE.
    let dir = tempfile::tempdir().unwrap();
    for name in ["sae", "sae_res", "sae_relu", "sae_jumprelu"] {
        copy_demo_sae(&dir.path().join(name));
    }
    let mut seeds = vec![read("models/tiny-gemma2/steer.csv")];
    for name in ["case_a", "case_b", "case_c", "case_d"] {
        seeds.push(read(&format!("tests/fixtures/steer/{name}.csv")));
        seeds.push(read(&format!("tests/fixtures/steer/{name}_lmeval.csv")));
    }
    for name in ["mixed", "add_if_active_threshold", "lmeval_clamp"] {
        let text = String::from_utf8(read(&format!("tests/fixtures/steer_actions/{name}.csv"))).unwrap();
        seeds.push(
            text.replace("../../../models/tiny-gemma2/sae", "sae")
                .into_bytes(),
        );
    }
    // The position and normalize columns (their SAE path need not resolve: the target parses).
    for name in ["mixed", "range", "no_special"] {
        seeds.push(read(&format!("tests/fixtures/steer_positions/{name}.csv")));
    }
    Target::new("steer_csv", seeds, dir.path().join("fuzz-case.csv"), |path| {
        sae_onnx::steer::plan::SteeringPlan::from_csv_file(path)
            .map(drop)
            .map_err(err_text)
    })
    .text()
    .fuzz();
}

#[test]
fn sweep_grid() {
    let dir = tempfile::tempdir().unwrap();
    let model = demo_export().join("base.onnx");
    let seed = format!(
        "model: {}\nplans:\n  - name: demo\n    csv: {}\n    coefficients: [0, 12, 24]\n\
         tasks: [{}]\neval: {{limit: 10, batch_size: 8, num_fewshot: 0, device: cpu}}\nshards: 2\n\
         workers: 4\noutput: out\n",
        model.display(),
        repo("models/tiny-gemma2/steer.csv").display(),
        repo("models/tiny-gemma2/demo_mc.yaml").display(),
    );
    Target::new(
        "sweep_grid",
        vec![seed.into_bytes()],
        dir.path().join("fuzz-case.yaml"),
        |path| {
            sae_onnx::sweep::grid::Grid::load(path)
                .map(drop)
                .map_err(err_text)
        },
    )
    .text()
    .fuzz();
}

fn copy_demo_sae(to: &Path) {
    std::fs::create_dir(to).unwrap();
    for file in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(repo("models/tiny-gemma2/sae").join(file), to.join(file)).unwrap();
    }
}

/// A whole `patch` of the demo model with a mutated plan against the demo SAE.
#[test]
fn patch_plan() {
    let dir = tempfile::tempdir().unwrap();
    copy_demo_sae(&dir.path().join("sae"));
    let base = demo_export().join("base.onnx");
    let out = dir.path().join("out.onnx");
    let seeds = vec![
        read("models/tiny-gemma2/steer.csv"),
        b"latent_idx,steering_coefficient,sae_release,sae_id,description,action,threshold\n5,24.0,sae,,a,add,\n3,43.0,sae,,c,clamp,\n1,2.0,sae,,t,add_if_active,0.5\n5,-5.0,sae,,p,clamp_projection,\n".to_vec(),
        b"loader,action,sparse_model,hookpoint,feature_index,steering_coefficient,head_index,sae_id,description\nsae_lens,add,sae,blocks.1.hook_resid_post,7,24.0,,,demo\n".to_vec(),
    ];
    Target::new("patch_plan", seeds, dir.path().join("fuzz-case.csv"), |path| {
        patch(path, &base, &out, dir.path())
    })
    .text()
    .fuzz();
}

fn onnx_seeds(case_dir: &Path) -> Vec<Vec<u8>> {
    let export = demo_export();
    std::fs::copy(export.join("base.onnx.data"), case_dir.join("base.onnx.data")).unwrap();
    std::fs::copy(
        repo("tests/fixtures/foreign/genai/model.onnx.data"),
        case_dir.join("model.onnx.data"),
    )
    .unwrap();
    vec![
        std::fs::read(export.join("base.onnx")).unwrap(),
        read("tests/fixtures/foreign/genai/model.onnx"),
        read("tests/fixtures/foreign/torchscript/model.onnx"),
    ]
}

fn load_and_inspect(path: &Path) -> Result<(), String> {
    let model = sae_onnx::onnx::Model::load(path).map_err(err_text)?;
    for tensor in &model.graph().initializer {
        model.tensor_bytes(tensor).map_err(err_text)?;
    }
    sae_onnx::inspect::inspect(path).map(drop).map_err(err_text)
}

#[test]
fn onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = onnx_seeds(dir.path());
    Target::new(
        "onnx_model",
        seeds,
        dir.path().join("fuzz-case.onnx"),
        load_and_inspect,
    )
    .fuzz();
}

/// Structured mutations of the external-data tables (`location`, `offset`, `length`, unknown
/// keys) of a model's initializers, which byte mutations rarely reach intact.
fn mutate_external_data(seed: &[u8], rng: &mut mutate::Rng) -> Vec<u8> {
    use sae_onnx::onnx::pb::StringStringEntryProto;
    const VALUES: &[&str] = &[
        "../base.onnx.data",
        "/etc/passwd",
        "base.onnx.data/..",
        "",
        "missing.data",
        "base.onnx",
        ".",
        "0",
        "1",
        "-1",
        "4095",
        "4096",
        "18446744073709551615",
        "18446744073709551616",
        "99999999999",
        "1e3",
        " 4096",
        "0x10",
        "NaN",
    ];
    const KEYS: &[&str] = &["location", "offset", "length", "checksum", "basepath", ""];
    let mut model = ModelProto::decode(seed).expect("seed decodes");
    let graph = model.graph.as_mut().expect("seed has a graph");
    let n = graph.initializer.len();
    for _ in 0..1 + rng.below(3) {
        let tensor = &mut graph.initializer[rng.below(n)];
        match rng.below(4) {
            0 if !tensor.external_data.is_empty() => {
                let i = rng.below(tensor.external_data.len());
                tensor.external_data[i].value = Some(rng.pick(VALUES).to_string());
            }
            1 if !tensor.external_data.is_empty() => {
                let i = rng.below(tensor.external_data.len());
                tensor.external_data.remove(i);
            }
            2 => tensor.external_data.push(StringStringEntryProto {
                key: Some(rng.pick(KEYS).to_string()),
                value: Some(rng.pick(VALUES).to_string()),
            }),
            _ => tensor.data_location = Some(rng.below(3) as i32),
        }
    }
    model.encode_to_vec()
}

#[test]
fn external_data() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = onnx_seeds(dir.path()).into_iter().take(2).collect();
    Target::new(
        "external_data",
        seeds,
        dir.path().join("fuzz-case.onnx"),
        load_and_inspect,
    )
    .mutator(mutate_external_data)
    .fuzz();
}

/// The steering record (`sae_onnx.steering` in `metadata_props`) of a steered model, mutated as
/// text: `inspect` and `package --format llama.cpp` read it back, and a record that no longer
/// agrees with the graph's steering constants must be refused, never packaged.
fn mutate_steering_record(seed: &[u8], rng: &mut mutate::Rng) -> Vec<u8> {
    let mut model = ModelProto::decode(seed).expect("seed decodes");
    let record = model
        .metadata_props
        .iter_mut()
        .find(|e| e.key.as_deref() == Some(sae_onnx::contract::meta::STEERING))
        .expect("seed carries a steering record");
    let text = record.value.take().unwrap_or_default();
    // The record is its own splice donor: there is one seed.
    let donors = [text.clone().into_bytes()];
    let mutated = mutate::mutate(text.as_bytes(), &donors, rng, true, 0, 1 << 16);
    record.value = Some(String::from_utf8_lossy(&mutated).into_owned());
    model.encode_to_vec()
}

#[test]
fn steering_record() {
    let dir = tempfile::tempdir().unwrap();
    let steered = dir.path().join("steered.onnx");
    patch(
        &repo("models/tiny-gemma2/steer.csv"),
        &demo_export().join("base.onnx"),
        &steered,
        &repo("models/tiny-gemma2"),
    )
    .expect("patching the demo model");
    let seeds = vec![std::fs::read(&steered).unwrap()];
    let case = dir.path().join("fuzz-case.onnx");
    // The case keeps the steered model's weights file, which its graph names.
    let out = dir.path().join("control.gguf");
    Target::new("steering_record", seeds, case.clone(), |path| {
        sae_onnx::inspect::inspect(path).map(drop).map_err(err_text)?;
        let args = [
            os("-q"),
            os("package"),
            path.as_os_str(),
            os("--format"),
            os("llama.cpp"),
            os("-o"),
            out.as_os_str(),
            os("--force"),
        ];
        run_binary(&args, dir.path())
    })
    .mutator(mutate_steering_record)
    .fuzz();
}

/// Reads an SAE array the way steering does: a few elements, never the whole (a 1m-wide SAE's
/// W_dec is 9 GB): the first and last element, and the first row of a matrix.
fn read_ends(array: &sae_onnx::sae::weights::StoredArray) -> Result<(), String> {
    if array.is_empty() {
        return Ok(());
    }
    array.gather(&[0, array.len() - 1]).map_err(err_text)?;
    if array.shape.len() == 2 {
        array.rows(&[0]).map_err(err_text)?;
    }
    Ok(())
}

#[test]
fn sae_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = vec![
        read("models/tiny-gemma2/sae/sae_weights.safetensors"),
        read("tests/fixtures/sae/local/saelens_v6/sae_weights.safetensors"),
        read(
            "tests/fixtures/sae/local/gemma_scope_2/resid_post/layer_9_width_16k_l0_small/params.safetensors",
        ),
    ];
    Target::new(
        "sae_safetensors",
        seeds,
        dir.path().join("fuzz-case.safetensors"),
        |path| {
            let file = sae_onnx::sae::weights::Safetensors::open(path).map_err(err_text)?;
            for key in file.keys() {
                read_ends(&file.array(&key).map_err(err_text)?)?;
            }
            Ok(())
        },
    )
    .hot(safetensors_hot)
    .fuzz();
}

#[test]
fn sae_npz() {
    let dir = tempfile::tempdir().unwrap();
    let hub = "tests/fixtures/sae/hub/models--google--gemma-scope-2b-pt-res/snapshots/5ae0000000000000000000000000000000c0ffee";
    let seeds = vec![
        read(&format!("{hub}/layer_20/width_16k/average_l0_71/params.npz")),
        read(&format!("{hub}/embedding/width_4k/average_l0_6/params.npz")),
        read("tests/fixtures/sae/local/deflated_npz/params.npz"),
    ];
    Target::new("sae_npz", seeds, dir.path().join("fuzz-case.npz"), |path| {
        let file = sae_onnx::sae::weights::Npz::open(path).map_err(err_text)?;
        for key in file.keys() {
            read_ends(&file.array(&key).map_err(err_text)?)?;
        }
        Ok(())
    })
    .fuzz();
}

/// A whole `patch` with the demo SAE's cfg.json as the case (hook, architecture, dimensions,
/// normalisation, b_dec handling).
#[test]
fn sae_cfg_json() {
    let dir = tempfile::tempdir().unwrap();
    copy_demo_sae(&dir.path().join("sae"));
    std::fs::copy(repo("models/tiny-gemma2/steer.csv"), dir.path().join("steer.csv")).unwrap();
    let plan = dir.path().join("steer.csv");
    let base = demo_export().join("base.onnx");
    let out = dir.path().join("out.onnx");
    let seeds = vec![
        read("models/tiny-gemma2/sae/cfg.json"),
        read("tests/fixtures/sae/local/saelens_old/cfg.json"),
        read("tests/fixtures/sae/local/saelens_norm/cfg.json"),
    ];
    Target::new("sae_cfg_json", seeds, dir.path().join("sae/cfg.json"), |_| {
        patch(&plan, &base, &out, dir.path())
    })
    .text()
    .fuzz();
}

/// A checkpoint folder (config, weights, tokenizer) where one file is the case; the whole
/// `export` runs on it.
/// The demo checkpoint's files, which the export targets copy beside each case.
const DEMO_CHECKPOINT: (&str, &[&str]) = (
    "models/tiny-gemma2",
    &[
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ],
);

/// A families fixture checkpoint (Llama, GPT-2, ...), with the generation config `generate` reads.
fn family_checkpoint(family: &str) -> (String, &'static [&'static str]) {
    (
        format!("tests/fixtures/families/{family}"),
        &[
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "generation_config.json",
        ],
    )
}

fn export_target(
    name: &'static str,
    (source, files): (&str, &[&str]),
    case_file: &'static str,
    seeds: Vec<Vec<u8>>,
    hot: fn(&[u8]) -> usize,
    text: bool,
) {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("ckpt");
    std::fs::create_dir(&checkpoint).unwrap();
    for file in files {
        if *file != case_file {
            std::fs::copy(repo(source).join(file), checkpoint.join(file)).unwrap();
        }
    }
    let out = dir.path().join("out.onnx");
    Target::new(name, seeds, checkpoint.join(case_file), |_| {
        run_binary(
            &[
                os("-q"),
                os("export"),
                checkpoint.as_os_str(),
                os("-o"),
                out.as_os_str(),
                os("--force"),
            ],
            dir.path(),
        )?;
        // What export accepts must run: a config that contradicts the weights has to be
        // refused by export, not by ONNX Runtime later.
        let generate = [
            os("-q"),
            os("generate"),
            out.as_os_str(),
            os("--prompt"),
            os("The dog"),
            os("--max-new-tokens"),
            os("2"),
        ];
        // Finite weights can still overflow to NaN activations, as they would in
        // transformers: that is the checkpoint's numbers, not a contradiction.
        match run_binary(&generate, dir.path()) {
            Ok(()) => Ok(()),
            Err(message) if message.contains("non-finite log-probability") => Ok(()),
            // generate reads the checkpoint's generation_config.json (and config.json's
            // eos_token_id): a refusal there names the case, as any refusal must.
            Err(message) if message.contains(case_file) => Err(message),
            Err(message) => {
                panic!("export accepted the case, but the model it wrote does not run: {message}")
            }
        }
    })
    .text_if(text)
    .hot(hot)
    .fuzz();
}

#[test]
fn export_config_json() {
    export_target(
        "export_config_json",
        DEMO_CHECKPOINT,
        "config.json",
        vec![read("models/tiny-gemma2/config.json")],
        |_| 0,
        true,
    );
}

/// The Llama-family and GPT-2 config readers (llama3 RoPE scaling, sliding windows, Qwen's
/// switches, GPT-2's translated names), each against its own checkpoint.
#[test]
fn export_config_json_families() {
    for (name, family) in [
        ("export_config_json_llama", "llama"),
        ("export_config_json_gpt2", "gpt2"),
    ] {
        let (source, files) = family_checkpoint(family);
        let mut seeds = vec![read(&format!("{source}/config.json"))];
        if family == "llama" {
            for other in ["mistral", "qwen2", "qwen3"] {
                seeds.push(read(&format!("tests/fixtures/families/{other}/config.json")));
            }
        }
        export_target(name, (&source, files), "config.json", seeds, |_| 0, true);
    }
}

/// `generate`'s stop ids from `generation_config.json` (read from the exported checkpoint).
#[test]
fn generation_config_json() {
    let (source, files) = family_checkpoint("llama");
    export_target(
        "generation_config_json",
        (&source, files),
        "generation_config.json",
        vec![
            read(&format!("{source}/generation_config.json")),
            br#"{"eos_token_id": [1, 2], "bos_token_id": 0}"#.to_vec(),
        ],
        |_| 0,
        true,
    );
}

#[test]
fn export_safetensors() {
    export_target(
        "export_safetensors",
        DEMO_CHECKPOINT,
        "model.safetensors",
        vec![read("models/tiny-gemma2/model.safetensors")],
        safetensors_hot,
        false,
    );
}

/// A task folder holding the case as a task YAML beside local data files; every task the scan
/// finds is loaded and every document rendered (prompt, choices, target, few-shot context).
#[test]
fn task_yaml() {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tests/fixtures/lm_eval/tasks/tiny_mc_test.jsonl",
        "tests/fixtures/lm_eval/tasks/tiny_mc_validation.jsonl",
        "tests/fixtures/lm_eval/tasks/tiny_mmlu_format_animals_dev.jsonl",
        "tests/fixtures/lm_eval/tasks/tiny_mmlu_format_animals_test.jsonl",
        "tests/fixtures/lm_eval_gen/tasks/tiny_gsm_test.jsonl",
        "tests/fixtures/lm_eval_gen/tasks/tiny_gsm_train.jsonl",
    ] {
        let name = Path::new(file).file_name().unwrap();
        std::fs::copy(repo(file), dir.path().join(name)).unwrap();
    }
    std::fs::copy(
        repo("tests/fixtures/lm_eval/tasks/_tiny_mmlu_format_template_yaml"),
        dir.path().join("_tiny_mmlu_format_template_yaml"),
    )
    .unwrap();
    // Data paths relative to the task folder, where the loader looks after the working directory.
    let local = |path: &str| {
        String::from_utf8(read(path))
            .unwrap()
            .replace("tests/fixtures/lm_eval/tasks/", "")
            .replace("tests/fixtures/lm_eval_gen/tasks/", "")
            .into_bytes()
    };
    let seeds = vec![
        local("tests/fixtures/lm_eval/tasks/tiny_mc.yaml"),
        local("tests/fixtures/lm_eval/tasks/tiny_mmlu_format_animals.yaml"),
        local("tests/fixtures/lm_eval_gen/tasks/tiny_gsm.yaml"),
        local("tests/fixtures/lm_eval_gen/tasks/tiny_gsm_stops.yaml"),
        local("tests/fixtures/lm_eval_winogrande/tasks/tiny_winogrande.yaml"),
    ];
    let folder = dir.path().to_path_buf();
    Target::new(
        "task_yaml",
        seeds,
        dir.path().join("fuzz_case.yaml"),
        move |path| {
            use sae_onnx::eval::task::Task;
            use sae_onnx::eval::task_index::{Entry, TaskIndex};
            let mut index = TaskIndex::default();
            let Some(name) = index.add_file(path).map_err(err_text)? else {
                return Ok(());
            };
            let Some(Entry::Task { path, config }) = index.entries.get(&name).cloned() else {
                return Ok(());
            };
            let _ = &folder;
            let mut task = Task::load(&name, &path, config, None, 1234).map_err(err_text)?;
            let docs = task.eval_docs.clone();
            for doc in docs.iter().take(4) {
                let rendered = task
                    .doc_to_text_value(doc)
                    .and_then(|_| task.doc_to_target(doc))
                    .and_then(|_| task.fewshot_context(doc));
                rendered.map_err(|e| format!("{} ({}): {e:#}", name, path.display()))?;
                if task.config.doc_to_choice.is_some() {
                    task.doc_to_choice(doc)
                        .map_err(|e| format!("{} ({}): {e:#}", name, path.display()))?;
                }
            }
            Ok(())
        },
    )
    .text()
    .fuzz();
}

#[test]
fn dataset_rows() {
    let dir = tempfile::tempdir().unwrap();
    let seeds = vec![
        read("models/tiny-gemma2/demo_mc_test.jsonl"),
        read("tests/fixtures/lm_eval_gen/tasks/tiny_gsm_train.jsonl"),
    ];
    let csv_dir = tempfile::tempdir().unwrap();
    let csv_seeds = vec![b"question,label,score\n\"a, b\",1,0.5\nc,2,1\n\"multi\nline\",3,\n".to_vec()];
    for (name, kind, seeds, file, dir) in [
        ("dataset_jsonl", "json", seeds, "fuzz-case.jsonl", &dir),
        ("dataset_csv", "csv", csv_seeds, "fuzz-case.csv", &csv_dir),
    ] {
        let folder = dir.path().to_path_buf();
        Target::new(name, seeds, dir.path().join(file), move |path| {
            let files = serde_json::Value::String(path.to_string_lossy().into_owned());
            sae_onnx::eval::data::load_local(kind, &files, &folder)
                .map(drop)
                .map_err(err_text)
        })
        .text()
        .fuzz();
    }
}

#[test]
fn jinja_template() {
    let dir = tempfile::tempdir().unwrap();
    let seeds: Vec<Vec<u8>> = [
        "{{question}}",
        "{{question.strip()}}\nA. {{choices[0]}}\nB. {{choices[1]}}\nAnswer:",
        "{% for c in choices %}{{ loop.index }}. {{ c | upper }}\n{% endfor %}",
        "{{ choices.index(choices[label]) }} {{ question.split(' ') | join('_') }} {{ '%.2f' | format(1.5) }}",
        "{{ question.replace('dog', 'cat') if label > 0 else question[::-1] }}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let doc = serde_json::json!({"question": "The dog sees the", "choices": ["cat", "big brown horse", "tree"], "label": 1});
    Target::new(
        "jinja_template",
        seeds,
        dir.path().join("fuzz-case.jinja"),
        |path| {
            let template = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
            // A template is a YAML value, not a file: its errors are named by the task that
            // holds it (task_yaml checks that), so here only the promises of safety apply.
            match sae_onnx::eval::template::render(&template, &doc) {
                Ok(_) => Ok(()),
                Err(e) => Err(format!("fuzz-case.jinja: {e:#}")),
            }
        },
    )
    .text()
    .fuzz();
}

/// A model's chat template (the real ones of tests/fixtures/chat/templates), mutated, read from
/// a tokenizer_config.json named after the case and rendered for a fixed conversation, as
/// `generate --chat` renders it.
#[test]
fn chat_template() {
    use sae_onnx::infer::chat_template::{ChatTemplate, Message};
    let dir = tempfile::tempdir().unwrap();
    let templates = repo("tests/fixtures/chat/templates");
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&templates)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(seeds.len() >= 4, "seed templates in {}", templates.display());
    // Templates that would run or allocate without bound but for the render's fuel.
    seeds.extend(
        [
            "{% for i in range(1000000000) %}{{ i }}{% endfor %}",
            "{{ bos_token * 1000000000 }}",
            "{% set s = namespace(t=eos_token) %}{% for i in range(64) %}{% set s.t = s.t ~ s.t %}{% endfor %}{{ s.t }}",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ]
        .map(|s| s.as_bytes().to_vec()),
    );
    let conversation = [
        Message {
            role: "system".into(),
            content: "Answer briefly.".into(),
        },
        Message::user("What is 2 + 2?"),
        Message {
            role: "assistant".into(),
            content: "4".into(),
        },
        Message::user("And 3 + 3?"),
    ];
    let case = dir.path().join("fuzz-case.jinja");
    // The config that holds the case, named after it so that a refusal naming it names the case.
    let config = dir.path().join("fuzz-case.jinja.tokenizer_config.json");
    Target::new("chat_template", seeds, case, move |path| {
        let source = String::from_utf8_lossy(&std::fs::read(path).unwrap()).into_owned();
        let json = serde_json::json!({"chat_template": source, "bos_token": "<|begin_of_text|>", "eos_token": "<|im_end|>"});
        std::fs::write(&config, json.to_string()).unwrap();
        let template = ChatTemplate::from_tokenizer_config(&config)
            .map_err(err_text)?
            .expect("the config holds a template");
        template
            .render(&conversation, true, &[])
            .map(drop)
            .map_err(err_text)
    })
    .text()
    .fuzz();
}

/// compare on a run whose results JSON (or one samples file) is the case, against the intact
/// base run: loading, pairing documents, the tests and the plot's figure.
#[test]
fn compare_results() {
    let fixtures = repo("tests/fixtures/compare/lm_eval");
    let run_dir = |name: &str| fixtures.join(name).join("tests__fixtures__gemma__gemma2");
    let files = |name: &str| -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(run_dir(name))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        files
    };
    let base_dir = run_dir("base");
    for (name, pick) in [
        ("compare_results", "results_"),
        ("compare_samples", "samples_tiny_mc_"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut case_name = String::new();
        for file in files("coef8") {
            let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
            if file_name.starts_with(pick) {
                case_name = file_name;
            } else {
                std::fs::copy(&file, dir.path().join(&file_name)).unwrap();
            }
        }
        let seeds = ["coef8", "coef32", "base"]
            .iter()
            .filter_map(|run| {
                files(run)
                    .into_iter()
                    .find(|f| f.file_name().unwrap().to_string_lossy().starts_with(pick))
            })
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        let folder = dir.path().to_path_buf();
        let base_dir = &base_dir;
        Target::new(name, seeds, dir.path().join(&case_name), move |_| {
            use sae_onnx::compare::{self, CompareOptions, Run};
            let run = Run::load(&folder).map_err(err_text)?;
            let base = Run::load(base_dir).map_err(|e| format!("the intact base run: {e:#}"))?;
            let runs = vec![base, run];
            let options = CompareOptions {
                resamples: 50,
                seed: 1234,
                alpha: 0.05,
                tasks: Vec::new(),
                metrics: Vec::new(),
            };
            let sweep = compare::sweep_values(&runs, Some(&[0.0, 8.0])).map_err(err_text)?;
            compare::compare(&runs, &sweep.x, &options).map_err(err_text)?;
            compare::sweep_figure(&runs, &sweep, &options).map_err(err_text)?;
            Ok(())
        })
        .text()
        .fuzz();
    }
}

/// A resume cache (header, then one answer per line) read for the key it was written with.
#[test]
fn eval_cache() {
    use sae_onnx::eval::cache::{self, CacheKey};
    let dir = tempfile::tempdir().unwrap();
    let key = CacheKey(
        serde_json::json!({"model": "3f2a", "tokenizer": "9c1e", "device": "cpu", "tf32": false})
            .as_object()
            .unwrap()
            .clone(),
    );
    let mut seed = cache::header_line(&key);
    seed.push('\n');
    for (context, continuation, logprob, greedy) in [
        ("[2,651,5929]", "[573]", -1.25, true),
        ("[2,651,5929,573]", "[1362,4]", -7.5e-3, false),
        ("[2]", "[17,18,19]", -30.0, false),
    ] {
        seed.push_str(&format!(
            "{{\"context\":{context},\"continuation\":{continuation},\"logprob\":{logprob},\"is_greedy\":{greedy}}}\n"
        ));
    }
    Target::new(
        "eval_cache",
        vec![seed.into_bytes()],
        dir.path().join("fuzz-case.cache.jsonl"),
        |path| cache::read(path, &key).map(drop).map_err(err_text),
    )
    .text()
    .fuzz();
}
