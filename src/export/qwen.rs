//! Qwen 2 / 2.5 and Qwen 3 as transformers 4.57 builds them: Llama's decoder (llama.rs) with
//! biases on the query, key and value projections (Qwen 2), or an RMSNorm on every query and key
//! head before RoPE (Qwen 3). Sliding layers (`use_sliding_window`, `max_window_layers`,
//! `layer_types`) are read by config.rs.

use anyhow::{Result, bail};

use super::config::{Arch, Config};
use super::family::Family;

pub fn family(config: &Config, arch: Arch) -> Result<Family> {
    let llama_like = super::llama::family(config, arch)?;
    Ok(match arch {
        Arch::Qwen2 => Family {
            qkv_bias: true,
            ..llama_like
        },
        Arch::Qwen3 => Family {
            qk_norms: true,
            ..llama_like
        },
        other => bail!("{} is not a Qwen architecture", other.hf_name()),
    })
}
