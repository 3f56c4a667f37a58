//! `--format llama.cpp`: a control-vector GGUF file (`llama-cli --control-vector OUT`).
//!
//! Layer convention, from llama.cpp's source (commit de3ff815, the one npm node-llama-cpp 3.22.1
//! bundles): `common_control_vector_load_one` (common/common.cpp:2002-2085) reads tensors named
//! `direction.<k>`, F32 and 1-D, refuses k = 0 and adds `direction.k` at
//! `data[(k - 1) * n_embd]`; `common_init_from_params` (common/common.cpp:1462-1478), the
//! `--control-vector` path of llama-cli, applies it over layers 1..n_layer;
//! `llama_adapter_cvec::apply` (src/llama-adapter.cpp:96-130) copies offset `n_embd * (il - 1)`
//! into `tensors[il]` for 1 <= il < n_layer; `apply_to` adds `tensors[il]` in
//! `build_cvec(cur, il)` (src/llama-graph.cpp:1508), which src/models/gemma.cpp:117,
//! gemma2.cpp:148 and gemma3.cpp:192 call at the end of decoder layer `il` (0-based), after the
//! residual add. So `direction.k` is added to `blocks.k.hook_resid_post`, and
//! `blocks.0.hook_resid_post` cannot be reached. tests/it/package_llama_cpp.rs checks this in
//! llama.cpp itself.
//!
//! The file is GGUF version 3 (ggml/include/gguf.h, docs/gguf.md): little-endian header, typed
//! metadata, tensor infos, then tensor data, each tensor aligned to 32 bytes (the default
//! alignment, so no `general.alignment` key is written).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, bail};

const MAGIC: &[u8; 4] = b"GGUF";
const VERSION: u32 = 3;
const ALIGNMENT: usize = 32;
/// `gguf_type` values (gguf.h).
const TYPE_UINT32: u32 = 4;
const TYPE_STRING: u32 = 8;
/// `ggml_type` of float32 tensors (ggml.h).
const GGML_TYPE_F32: u32 = 0;

/// Vectors added to the residual stream after decoder layers, as llama.cpp loads them.
#[derive(Debug, Clone, PartialEq)]
pub struct ControlVector {
    /// llama.cpp's architecture name (`gemma`, `gemma2`, `gemma3`): `controlvector.model_hint`.
    pub model_hint: String,
    /// The model's decoder layer count: `controlvector.layer_count`.
    pub layer_count: u32,
    /// Decoder layer (0-based, as `blocks.L`) to the vector added to its output.
    pub directions: BTreeMap<u32, Vec<f32>>,
}

impl ControlVector {
    /// Checks what llama.cpp would refuse or silently drop, so that such a file is never
    /// written.
    fn check(&self) -> Result<usize> {
        let Some(width) = self.directions.values().next().map(Vec::len) else {
            bail!("no steering vector to write: a llama.cpp control vector needs at least one direction");
        };
        for (&layer, values) in &self.directions {
            if layer == 0 {
                bail!(
                    "blocks.0.hook_resid_post cannot be steered by llama.cpp: it adds control vectors after decoder layers 1..{} only (llama_adapter_cvec::apply starts at layer 1)",
                    self.layer_count.saturating_sub(1)
                );
            }
            if layer >= self.layer_count {
                bail!(
                    "blocks.{layer}.hook_resid_post: the model has {} decoder layers",
                    self.layer_count
                );
            }
            if values.len() != width || width == 0 {
                bail!(
                    "the direction for blocks.{layer}.hook_resid_post has {} values, the others {width}: every direction is one d_model vector",
                    values.len()
                );
            }
        }
        Ok(width)
    }

    /// The GGUF file's bytes.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let width = self.check()?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.directions.len() as u64).to_le_bytes());
        out.extend_from_slice(&3u64.to_le_bytes());
        // What gguf-py's `GGUFWriter(path, "controlvector")` writes first (repeng's control
        // vectors do the same); llama.cpp's loader reads only the tensors.
        put_string(&mut out, "general.architecture");
        out.extend_from_slice(&TYPE_STRING.to_le_bytes());
        put_string(&mut out, "controlvector");
        put_string(&mut out, "controlvector.model_hint");
        out.extend_from_slice(&TYPE_STRING.to_le_bytes());
        put_string(&mut out, &self.model_hint);
        put_string(&mut out, "controlvector.layer_count");
        out.extend_from_slice(&TYPE_UINT32.to_le_bytes());
        out.extend_from_slice(&self.layer_count.to_le_bytes());
        let tensor_bytes = padded(width * 4);
        for (i, layer) in self.directions.keys().enumerate() {
            put_string(&mut out, &format!("direction.{layer}"));
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&(width as u64).to_le_bytes());
            out.extend_from_slice(&GGML_TYPE_F32.to_le_bytes());
            out.extend_from_slice(&((i * tensor_bytes) as u64).to_le_bytes());
        }
        out.resize(padded(out.len()), 0);
        for values in self.directions.values() {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.resize(padded(out.len()), 0);
        }
        Ok(out)
    }

    /// Writes the file under a temporary name and renames it to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = self.encode()?;
        crate::files::write_atomic(path, &bytes)
    }
}

/// `gguf_string_t`: u64 byte length, then UTF-8 without a terminator.
fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn padded(n: usize) -> usize {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector(directions: &[(u32, Vec<f32>)]) -> ControlVector {
        ControlVector {
            model_hint: "gemma2".into(),
            layer_count: 3,
            directions: directions.iter().cloned().collect(),
        }
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    /// Walks the file as the GGUF v3 spec lays it out, field by field.
    #[test]
    fn layout_follows_the_gguf_v3_spec() {
        let bytes = vector(&[(2, vec![1.5, -2.0, 0.25]), (1, vec![3.0, 0.0, -1.0])])
            .encode()
            .unwrap();
        assert_eq!(&bytes[0..4], b"GGUF");
        assert_eq!(u32_at(&bytes, 4), 3, "version");
        assert_eq!(u64_at(&bytes, 8), 2, "tensor count");
        assert_eq!(u64_at(&bytes, 16), 3, "metadata kv count");
        let mut at = 24;
        let string = |at: &mut usize| {
            let n = u64_at(&bytes, *at) as usize;
            let s = std::str::from_utf8(&bytes[*at + 8..*at + 8 + n])
                .unwrap()
                .to_owned();
            *at += 8 + n;
            s
        };
        assert_eq!(string(&mut at), "general.architecture");
        assert_eq!(u32_at(&bytes, at), 8, "GGUF_TYPE_STRING");
        at += 4;
        assert_eq!(string(&mut at), "controlvector");
        assert_eq!(string(&mut at), "controlvector.model_hint");
        assert_eq!(u32_at(&bytes, at), 8, "GGUF_TYPE_STRING");
        at += 4;
        assert_eq!(string(&mut at), "gemma2");
        assert_eq!(string(&mut at), "controlvector.layer_count");
        assert_eq!(u32_at(&bytes, at), 4, "GGUF_TYPE_UINT32");
        assert_eq!(u32_at(&bytes, at + 4), 3);
        at += 8;
        let mut offsets = Vec::new();
        for expected in ["direction.1", "direction.2"] {
            assert_eq!(string(&mut at), expected, "tensor infos in layer order");
            assert_eq!(u32_at(&bytes, at), 1, "n_dims");
            assert_eq!(u64_at(&bytes, at + 4), 3, "ne[0]");
            assert_eq!(u32_at(&bytes, at + 12), 0, "GGML_TYPE_F32");
            offsets.push(u64_at(&bytes, at + 16) as usize);
            at += 24;
        }
        assert_eq!(offsets, [0, 32], "each tensor starts on a 32-byte boundary");
        let data = at.div_ceil(32) * 32;
        assert!(
            bytes[at..data].iter().all(|&b| b == 0),
            "zero padding before the data"
        );
        let f = |i: usize| f32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!([f(data), f(data + 4), f(data + 8)], [3.0, 0.0, -1.0]);
        assert_eq!([f(data + 32), f(data + 36), f(data + 40)], [1.5, -2.0, 0.25]);
        assert_eq!(bytes.len(), data + 64);
    }

    #[test]
    fn layer_zero_is_refused_as_unreachable() {
        let err = vector(&[(0, vec![1.0])]).encode().unwrap_err().to_string();
        assert!(
            err.contains("blocks.0.hook_resid_post") && err.contains("llama_adapter_cvec"),
            "{err}"
        );
    }

    #[test]
    fn layers_past_the_model_and_ragged_widths_are_refused() {
        let err = vector(&[(3, vec![1.0])]).encode().unwrap_err().to_string();
        assert!(err.contains("3 decoder layers"), "{err}");
        let err = vector(&[(1, vec![1.0]), (2, vec![1.0, 2.0])])
            .encode()
            .unwrap_err()
            .to_string();
        assert!(err.contains("has 2 values, the others 1"), "{err}");
        assert!(vector(&[]).encode().is_err());
    }

    #[test]
    fn write_replaces_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cv.gguf");
        let cv = vector(&[(1, vec![0.5; 4])]);
        cv.write(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), cv.encode().unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}
