//! SHA-256 as hex, the way Python's `hashlib` prints it: lm-eval's sample hashes, the resume
//! cache's keys, and the provenance `patch` records.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

/// `hashlib.sha256(s.encode()).hexdigest()`.
pub fn hash_string(s: &str) -> String {
    sha256_hex(s.as_bytes())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// The sha256 of a file's bytes (hex), read in blocks; errors name `what` and the file.
pub fn sha256_file(path: &Path, what: &str) -> Result<String> {
    let failed = || format!("cannot read {what} '{}'", path.display());
    let mut file = std::fs::File::open(path).with_context(failed)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(failed)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_sha256_hex() {
        // hashlib.sha256(b"0").hexdigest()
        assert_eq!(
            hash_string("0"),
            "5feceb66ffc86f38d952786c6d696c79c2dbc239dd4e91b46729d73a27fb57e9"
        );
    }
}
