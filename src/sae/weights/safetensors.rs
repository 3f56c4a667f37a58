//! `.safetensors` files: the safetensors crate parses and validates the header, the data is left
//! in place for [`StoredArray`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Result, anyhow, bail};
use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use super::array::{DType, Data, StoredArray, map_file};

/// A `.safetensors` file, mapped; only its header is parsed.
#[derive(Debug, Clone)]
pub struct Safetensors {
    file: PathBuf,
    map: Arc<Mmap>,
    header: Metadata,
    /// Where the tensors' data begins: after the header's 8-byte length and the header.
    data_start: usize,
}

impl Safetensors {
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let (header_len, header) = SafeTensors::read_metadata(&map[..])
            .map_err(|e| anyhow!("'{}' is not a readable safetensors file: {e}", path.display()))?;
        Ok(Self {
            file: path.to_owned(),
            map,
            header,
            data_start: 8 + header_len,
        })
    }

    /// The tensor names, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.tensors().into_keys().collect();
        names.sort();
        names
    }

    pub fn contains(&self, key: &str) -> bool {
        self.header.info(key).is_some()
    }

    pub fn array(&self, key: &str) -> Result<StoredArray> {
        let Some(info) = self.header.info(key) else {
            bail!(
                "'{}' has no tensor '{key}' (it has: {})",
                self.file.display(),
                self.keys().join(", ")
            );
        };
        let dtype = match info.dtype {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => bail!(
                "'{}': tensor '{key}' has dtype {other:?}; only F32, F16, BF16 and F64 are supported",
                self.file.display()
            ),
        };
        Ok(StoredArray {
            name: key.to_owned(),
            file: self.file.clone(),
            dtype,
            shape: info.shape.clone(),
            fortran_order: false,
            data: Data::Mapped {
                map: self.map.clone(),
                offset: self.data_start + info.data_offsets.0,
            },
        })
    }
}
