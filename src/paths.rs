//! Where sae-onnx keeps what it fetches and builds: `$SAE_ONNX_HOME`, default `~/.cache/sae-onnx`.

use std::path::PathBuf;

pub fn cache_root() -> PathBuf {
    std::env::var_os("SAE_ONNX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sae-onnx")))
        .unwrap_or_else(|| PathBuf::from(".sae-onnx"))
}
