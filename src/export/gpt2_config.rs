//! GPT-2's config.json in the field names config.rs reads (`n_embd` → `hidden_size`, ...), with
//! GPT2Config's defaults, after refusing the variants gpt2.rs does not build. Kept apart from
//! gpt2.rs so that reading a config never depends on building a graph.

use anyhow::{Result, bail};
use serde_json::Value;

/// GPT2Config's defaults for the sizes, as transformers fills them in when config.json omits one.
const SIZES: [(&str, &str, u64); 5] = [
    ("n_embd", "hidden_size", 768),
    ("n_layer", "num_hidden_layers", 12),
    ("n_head", "num_attention_heads", 12),
    ("n_positions", "max_position_embeddings", 1024),
    ("vocab_size", "vocab_size", 50257),
];
/// GPT2Config's `layer_norm_epsilon`.
pub const LAYER_NORM_EPSILON: f64 = 1e-5;

/// Rewrites a GPT-2 config.json in the field names config.rs reads, after refusing what the
/// graph does not build: another `activation_function`, `n_inner`, cross attention, and the
/// attention-scaling switches at anything but their defaults.
pub fn translate_config(value: &mut Value) -> Result<()> {
    let Some(fields) = value.as_object_mut() else {
        bail!("config.json is not a JSON object");
    };
    let text = |v: Option<&Value>| v.map(|v| crate::files::printable(&v.to_string(), 100));
    match fields.get("activation_function") {
        None => {}
        Some(Value::String(s)) if s == "gelu_new" => {}
        other => bail!(
            "activation_function {} is not supported (sae-onnx builds GPT-2's gelu_new)",
            text(other).unwrap_or_default()
        ),
    }
    match fields.get("n_inner") {
        None | Some(Value::Null) => {}
        other => bail!(
            "n_inner {} is not supported (sae-onnx builds GPT-2's MLP of 4 × n_embd; n_inner must be null)",
            text(other).unwrap_or_default()
        ),
    }
    for (field, default) in [
        ("scale_attn_weights", true),
        ("scale_attn_by_inverse_layer_idx", false),
        ("reorder_and_upcast_attn", false),
        ("add_cross_attention", false),
    ] {
        match fields.get(field) {
            None => {}
            Some(Value::Bool(b)) if *b == default => {}
            other => bail!(
                "{field} {} is not supported (sae-onnx builds GPT-2 with {field} {default})",
                text(other).unwrap_or_default()
            ),
        }
    }
    for (gpt2_name, name, default) in SIZES {
        // transformers accepts either name (GPT2Config's attribute_map); save_pretrained writes GPT-2's.
        let size = fields
            .get(gpt2_name)
            .or_else(|| fields.get(name))
            .cloned()
            .unwrap_or(Value::from(default));
        fields.insert(name.to_owned(), size);
    }
    let hidden = fields["hidden_size"].as_u64();
    // Out of range is left to config.rs's bounds, which name the field.
    let inner = hidden.map_or(Value::Null, |h| Value::from(h.saturating_mul(4)));
    fields.insert("intermediate_size".into(), inner);
    if !fields.contains_key("layer_norm_epsilon") {
        fields.insert("layer_norm_epsilon".into(), Value::from(LAYER_NORM_EPSILON));
    }
    for field in ["num_key_value_heads", "head_dim"] {
        // GPT-2 has neither (every head is its own key/value head, of hidden / heads).
        fields.remove(field);
    }
    Ok(())
}
