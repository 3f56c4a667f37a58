//! `--format transformers.js`: the folder `@huggingface/transformers` (3.8) loads with
//! `AutoModelForCausalLM.from_pretrained`: `config.json`, `generation_config.json`, the
//! tokenizer files, and `onnx/model.onnx` with its data as `onnx/model.onnx_data` (then
//! `_1`, `_2`, ...), the names transformers.js derives from the model file name.
//!
//! `config.json` is the checkpoint's, with a `transformers.js_config` section that says which
//! file to load (`dtype`: fp32 is `model.onnx`, fp16 `model_fp16.onnx`; without it the browser
//! would ask for the 8-bit `model_quantized.onnx`) and how many data files it has
//! (`use_external_data_format`: without it the weights are not fetched in the browser).
//!
//! A sweepable model keeps its coefficients as inputs (`--coefficients inputs`), listed with
//! their steer.csv values in config.json's `sae_onnx.coefficient_inputs` (the web page's slider
//! starts there). transformers.js's `generate()` drops inputs it does not know, so they are fed
//! through the model's forward call, step by step, as `web/app.js` does.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::checkpoint_files::CheckpointFiles;
use super::{Coefficients, Written, graph};
use crate::contract::meta;
use crate::onnx::Model;

const CONFIG_MAX_BYTES: u64 = 1 << 20;

pub fn write(
    model: &Model,
    files: &CheckpointFiles,
    coefficients: Coefficients,
    out: &Path,
) -> Result<Written> {
    let (dtype, graph_name) = match model.metadata(meta::DTYPE).unwrap_or("float32") {
        "float32" => ("fp32", "onnx/model.onnx"),
        "float16" => ("fp16", "onnx/model_fp16.onnx"),
        other => bail!(
            "transformers.js runs float32 and float16 graphs, not {other}: export with --dtype float32 (or float16)"
        ),
    };
    let data_name = format!(
        "{}_data",
        Path::new(graph_name).file_name().unwrap().to_string_lossy()
    );
    let packaged = graph::write(model, coefficients, out, graph_name, &data_name)?;
    let data_files = packaged.files.len() - 1;

    let text = crate::files::read_text(&files.config, "model config", CONFIG_MAX_BYTES)?;
    let mut config: Value = serde_json::from_str(&text)
        .with_context(|| format!("'{}' is not valid JSON", files.config.display()))?;
    let section = config
        .as_object_mut()
        .with_context(|| format!("'{}' is not a JSON object", files.config.display()))?
        .entry("transformers.js_config")
        .or_insert_with(|| json!({}));
    let Some(section) = section.as_object_mut() else {
        bail!(
            "'{}': transformers.js_config is not an object",
            files.config.display()
        );
    };
    section.insert("dtype".into(), json!(dtype));
    section.insert("use_external_data_format".into(), json!(data_files));
    if !packaged.coefficient_inputs.is_empty() {
        let inputs: serde_json::Map<String, Value> = packaged
            .coefficient_inputs
            .iter()
            .map(|(name, value)| (name.clone(), json!(value)))
            .collect();
        config
            .as_object_mut()
            .unwrap()
            .insert("sae_onnx".into(), json!({ "coefficient_inputs": inputs }));
    }

    let mut written = packaged.files;
    crate::files::write_atomic(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    written.push("config.json".to_owned());
    let copies = files
        .generation_config
        .iter()
        .map(|p| ("generation_config.json", p))
        .chain(files.tokenizer.iter().map(|(n, p)| (*n, p)));
    for (name, path) in copies {
        std::fs::copy(path, out.join(name)).with_context(|| format!("cannot copy '{}'", path.display()))?;
        written.push(name.to_owned());
    }
    Ok(Written {
        files: written,
        weights: packaged.placement,
        coefficient_inputs: packaged.coefficient_inputs,
    })
}
