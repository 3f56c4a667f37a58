//! `.safetensors` files: the header is parsed by the safetensors crate, the data left in place
//! for [`StoredArray`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, bail};
use memmap2::Mmap;

use super::array::{DType, Data, StoredArray, map_file};

/// A `.safetensors` file, mapped; only its header is parsed.
#[derive(Debug, Clone)]
pub struct Safetensors {
    pub file: PathBuf,
    map: Arc<Mmap>,
    /// name -> (dtype, shape, absolute byte offset)
    tensors: Vec<(String, DType, Vec<usize>, usize)>,
    /// Names with dtypes we cannot read (for messages).
    unsupported: Vec<(String, String)>,
}

impl Safetensors {
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let (n, metadata) = safetensors::SafeTensors::read_metadata(&map[..])
            .map_err(|e| anyhow::anyhow!("'{}' is not a readable safetensors file: {e}", path.display()))?;
        let base = 8 + n;
        let mut tensors = Vec::new();
        let mut unsupported = Vec::new();
        for (name, info) in metadata.tensors() {
            let dtype = match info.dtype {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                safetensors::Dtype::F64 => DType::F64,
                other => {
                    unsupported.push((name, format!("{other:?}")));
                    continue;
                }
            };
            tensors.push((name, dtype, info.shape.clone(), base + info.data_offsets.0));
        }
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            file: path.to_owned(),
            map,
            tensors,
            unsupported,
        })
    }

    pub fn keys(&self) -> Vec<String> {
        self.tensors
            .iter()
            .map(|t| t.0.clone())
            .chain(self.unsupported.iter().map(|u| u.0.clone()))
            .collect()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.tensors.iter().any(|t| t.0 == key) || self.unsupported.iter().any(|u| u.0 == key)
    }

    pub fn array(&self, key: &str) -> Result<StoredArray> {
        if let Some((_, dtype)) = self.unsupported.iter().find(|u| u.0 == key) {
            bail!(
                "'{}': tensor '{key}' has dtype {dtype}; only F32, F16, BF16 and F64 are supported",
                self.file.display()
            );
        }
        let Some((name, dtype, shape, offset)) = self.tensors.iter().find(|t| t.0 == key) else {
            bail!(
                "'{}' has no tensor '{key}' (it has: {})",
                self.file.display(),
                self.keys().join(", ")
            );
        };
        Ok(StoredArray {
            name: name.clone(),
            file: self.file.clone(),
            dtype: *dtype,
            shape: shape.clone(),
            fortran_order: false,
            data: Data::Mapped {
                map: self.map.clone(),
                offset: *offset,
            },
        })
    }
}
