//! Where sae-onnx keeps what it fetches and builds: `$SAE_ONNX_HOME`, default `~/.cache/sae-onnx`.

use std::path::PathBuf;

pub fn cache_root() -> PathBuf {
    std::env::var_os("SAE_ONNX_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sae-onnx")))
        .unwrap_or_else(|| PathBuf::from(".sae-onnx"))
}

/// A temporary file in `dir` for an output called `name`, to be renamed into place when complete.
/// Created with mode 0666 less the umask, as an ordinary file would be (tempfile's default, 0600,
/// would make every model we write unreadable to other users once renamed).
pub fn output_tempfile(dir: &std::path::Path, name: &str) -> anyhow::Result<tempfile::NamedTempFile> {
    use anyhow::Context;
    use std::os::unix::fs::PermissionsExt;
    tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(0o666))
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a temporary file in '{}'", dir.display()))
}
