//! What our graphs promise every consumer: the graph's input and output names, the decoding
//! graph's cache tensor names, the metadata keys, and the context lengths a consumer accepts.
//! The exporter writes them; kv_cache, scoring, generate, eval, patch and inspect read them.
//! [`sweep`]: the coefficient inputs of a `--sweepable` patch (`patch` writes them, `eval
//! --sweep` feeds them). [`hook_site`]: which tensor of a graph is a hook (`patch` steers it,
//! `inspect` lists it). [`results`]: the results file lm-eval writes (`eval` writes it, `compare`
//! reads it, ours and lm-eval's own).

use crate::onnx::pb::NodeProto;

pub mod decoder_map;
pub mod hook_site;
pub mod results;
pub mod sweep;

/// Graph input and output names.
pub const INPUT_IDS: &str = "input_ids";
pub const ATTENTION_MASK: &str = "attention_mask";
pub const LOGITS: &str = "logits";
/// The prompt boundary of steered graphs with `prompt` / `generated` rows: int64 `[batch]`, each
/// row's prompt length in its own tokens (padding not counted). An initializer backs it with a
/// default of `[MAX_CONTEXT]` (everything is prompt), so runtimes that feed nothing still run it.
pub const PROMPT_LENGTH: &str = "steer.prompt_length";

/// Names of the decoding graph's cache tensors.
pub fn past_name(layer: usize, kind: &str) -> String {
    format!("past_key_values.{layer}.{kind}")
}

pub fn present_name(layer: usize, kind: &str) -> String {
    format!("present.{layer}.{kind}")
}

/// The longest context accepted (`--max-length` or the model's metadata): far beyond any model's,
/// and small enough that token arithmetic cannot overflow.
pub const MAX_CONTEXT: usize = 1 << 24;

/// Node-name prefix of the nodes `patch` splices (how `--replace`, `inspect` and the decoder
/// map find them). The node that adds the change to the hook is named `{STEER_NODE_PREFIX}{hook}`
/// (maybe with a `_N` suffix); the nodes computing the change are named below it,
/// `{STEER_NODE_PREFIX}{hook}/...`.
pub const STEER_NODE_PREFIX: &str = "/sae_onnx/steer/";

/// Name prefix of the tensors `patch` adds: a hook's constant is `{STEER_TENSOR_PREFIX}{hook}`
/// (with `_N` when a second patch steers the same hook), the others `{STEER_TENSOR_PREFIX}{hook}/...`
/// (how `--replace` and `package --format llama.cpp` find them).
pub const STEER_TENSOR_PREFIX: &str = "sae_onnx.steer.";

/// The node that adds a patch's change to its hook, input 0 (not one of the nodes computing the
/// change).
pub fn is_steering_add(node: &NodeProto) -> bool {
    node.op_type() == "Add"
        && node
            .name()
            .strip_prefix(STEER_NODE_PREFIX)
            .is_some_and(|rest| !rest.contains('/'))
}

/// Keys of the metadata our exports carry (`inspect`, `patch` and `eval` read them).
pub mod meta {
    pub const FORMAT: &str = "sae_onnx.format";
    pub const SOURCE: &str = "sae_onnx.source";
    pub const REVISION: &str = "sae_onnx.revision";
    pub const ARCHITECTURE: &str = "sae_onnx.architecture";
    pub const NUM_LAYERS: &str = "sae_onnx.num_layers";
    pub const D_MODEL: &str = "sae_onnx.d_model";
    pub const D_ATTN_Z: &str = "sae_onnx.d_attn_z";
    pub const VOCAB_SIZE: &str = "sae_onnx.vocab_size";
    /// The context length lm-eval would use (`max_position_embeddings`).
    pub const MAX_POSITIONS: &str = "sae_onnx.max_position_embeddings";
    pub const DTYPE: &str = "sae_onnx.dtype";
    pub const TOKENIZER: &str = "sae_onnx.tokenizer";
    /// JSON array of the hook tensor names the graph exposes.
    pub const HOOKS: &str = "sae_onnx.hooks";
    /// The operator profile the graph was built with: `portable` or `ort` (see [`crate::export::Ops`]).
    pub const OPS: &str = "sae_onnx.ops";
    /// "1" on decoding graphs (`past_key_values.*` in, `present.*` out).
    pub const KV_CACHE: &str = "sae_onnx.kv_cache";
    /// JSON list of the steering patches applied, oldest first (`patch` writes it).
    pub const STEERING: &str = "sae_onnx.steering";
}
