//! What sets one model family's decoder apart from the others ([`Family`]); the decoder itself
//! (decoder.rs) is shared, and each family's file (gemma.rs, llama.rs, qwen.rs, gpt2.rs) derives
//! its `Family` from the config, refusing fields it does not build.

/// What one family's decoder does differently from the others; everything else is shared.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// Gemma multiplies the embeddings by √hidden_size, rounded to the model dtype.
    pub embedding_scale: Option<f64>,
    pub norm_scale: NormScale,
    /// Gemma 2 and 3 norm the attention and MLP outputs before adding them to the residual
    /// (`post_attention_layernorm`, `post_feedforward_layernorm`; the pre-MLP norm is then
    /// `pre_feedforward_layernorm`). Without, `post_attention_layernorm` is the pre-MLP norm.
    pub post_norms: bool,
    /// Gemma 3 and Qwen 3 RMSNorm each query and key head (`q_norm`, `k_norm`) before RoPE.
    pub qk_norms: bool,
    /// Qwen 2 adds biases to the query, key and value projections (not to the output one).
    pub qkv_bias: bool,
    /// The gated MLP's gate activation, `down(act(gate(x)) * up(x))`; GPT-2's `c_proj(act(c_fc(x)))`.
    pub activation: Activation,
    /// Attention scores are multiplied by this before the mask.
    pub attention_scale: f64,
    /// `cap·tanh(x/cap)` of the attention scores (Gemma 2) and of the logits (Gemma 2, 3).
    pub attention_softcap: Option<f64>,
    pub final_softcap: Option<f64>,
    /// The LM head is the embedding matrix; else `lm_head.weight`.
    pub tied_embeddings: bool,
    /// Gemma exports fall back to the embeddings when an untied checkpoint has no `lm_head.weight`.
    pub lm_head_optional: bool,
    pub layout: Layout,
}

/// How a family lays out its weights and what its decoder layer is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `model.layers.L`: RMSNorms, separate q/k/v/o Linear projections, RoPE, a gated MLP
    /// (Gemma, Llama, Mistral, Qwen).
    Rotary,
    /// GPT-2's `transformer.h.L` (gpt2.rs): learned position embeddings added to the token ones,
    /// LayerNorms with bias, Conv1D projections (weights `[in, out]`, with biases) of which
    /// `c_attn` computes q, k and v at once, no RoPE, an ungated MLP.
    Gpt2,
}

/// How an RMSNorm's weight scales the normalised input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormScale {
    /// Gemma: `normed.float() * (1 + w.float())` in float32, then cast to the model dtype.
    OnePlusWeight,
    /// Llama, Mistral, Qwen: `w * normed.to(dtype)`, the product in the model dtype.
    Weight,
}

/// The MLP's activation (of the gate, in a gated MLP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Also GPT-2's `gelu_new`, the same formula.
    GeluTanh,
    GeluExact,
    /// `x·sigmoid(x)` (transformers' `silu`).
    Silu,
}
