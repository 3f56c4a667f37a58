//! `--format genai`: the folder onnxruntime-genai opens with `og.Model(OUT)`: the decoding
//! graph as `model.onnx` + `model.onnx.data`, `genai_config.json`, and the tokenizer files.
//!
//! The config describes our graph, not the model builder's: inputs `input_ids`,
//! `attention_mask`, `past_key_values.%d.key/value`, outputs `logits`, `present.%d.key/value`;
//! positions come from the mask inside the graph (no `position_ids`). Two settings follow from
//! the graph keeping every past token and growing its cache by concatenation:
//! `past_present_share_buffer` is false, and there is no `sliding_window` section, which tells
//! genai the graph's cache holds only the window (genai then hands it window-sized buffers,
//! and the graph's `present` no longer fits them); the window is applied inside the graph.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::checkpoint_files::CheckpointFiles;
use super::{Coefficients, Written, graph};
use crate::export::config::{Arch, Config};
use crate::onnx::Model;

const CONFIG_MAX_BYTES: u64 = 1 << 20;

pub fn write(
    model: &Model,
    files: &CheckpointFiles,
    coefficients: Coefficients,
    out: &Path,
) -> Result<Written> {
    let config = genai_config(files)?;
    let packaged = graph::write(model, coefficients, out, "model.onnx", "model.onnx.data")?;
    let mut written = packaged.files;
    crate::files::write_atomic(
        &out.join("genai_config.json"),
        serde_json::to_string_pretty(&config)?.as_bytes(),
    )?;
    written.push("genai_config.json".to_owned());
    for (name, path) in &files.tokenizer {
        std::fs::copy(path, out.join(name)).with_context(|| format!("cannot copy '{}'", path.display()))?;
        written.push((*name).to_owned());
    }
    Ok(Written {
        files: written,
        weights: packaged.placement,
        coefficient_inputs: packaged.coefficient_inputs,
    })
}

/// `genai_config.json` from the checkpoint's `config.json` and `generation_config.json`.
pub fn genai_config(files: &CheckpointFiles) -> Result<Value> {
    let (config, arch) = Config::load(&files.config)?;
    let raw = read_json(&files.config)?;
    let generation = match &files.generation_config {
        Some(path) => read_json(path)?,
        None => json!({}),
    };
    // generation_config.json wins over config.json, as in transformers' generate().
    let token = |key: &str| {
        generation
            .get(key)
            .or_else(|| raw.get(key))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let search = |key: &str, default: Value| generation.get(key).cloned().unwrap_or(default);
    let context = config.max_position_embeddings;
    Ok(json!({
        "model": {
            "type": match arch {
                Arch::Gemma => "gemma",
                Arch::Gemma2 => "gemma2",
                Arch::Gemma3 => "gemma3_text",
                Arch::Llama => "llama",
                Arch::Mistral => "mistral",
                Arch::Qwen2 => "qwen2",
                Arch::Qwen3 => "qwen3",
                Arch::Gpt2 => "gpt2",
            },
            "bos_token_id": token("bos_token_id"),
            "eos_token_id": token("eos_token_id"),
            "pad_token_id": token("pad_token_id"),
            "context_length": context,
            "vocab_size": config.vocab_size,
            "decoder": {
                "session_options": { "log_id": "onnxruntime-genai", "provider_options": [] },
                "filename": "model.onnx",
                "head_size": config.head_dim(),
                "hidden_size": config.hidden_size,
                "num_attention_heads": config.num_attention_heads,
                "num_hidden_layers": config.num_hidden_layers,
                "num_key_value_heads": config.kv_heads(),
                "inputs": {
                    "input_ids": crate::contract::INPUT_IDS,
                    "attention_mask": crate::contract::ATTENTION_MASK,
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": crate::contract::LOGITS,
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        // transformers' GenerationConfig defaults where the file says nothing.
        "search": {
            "do_sample": search("do_sample", json!(false)),
            "temperature": search("temperature", json!(1.0)),
            "top_k": search("top_k", json!(50)),
            "top_p": search("top_p", json!(1.0)),
            "repetition_penalty": search("repetition_penalty", json!(1.0)),
            "num_beams": search("num_beams", json!(1)),
            "num_return_sequences": search("num_return_sequences", json!(1)),
            "length_penalty": search("length_penalty", json!(1.0)),
            "no_repeat_ngram_size": search("no_repeat_ngram_size", json!(0)),
            "diversity_penalty": search("diversity_penalty", json!(0.0)),
            "early_stopping": search("early_stopping", json!(false)),
            "min_length": search("min_length", json!(0)),
            "max_length": search("max_length", json!(context)),
            "past_present_share_buffer": false,
        },
    }))
}

fn read_json(path: &Path) -> Result<Value> {
    let text = crate::files::read_text(path, "checkpoint config", CONFIG_MAX_BYTES)?;
    serde_json::from_str(&text).with_context(|| format!("'{}' is not valid JSON", path.display()))
}
