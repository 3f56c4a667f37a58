//! One array of a weights file, read element by element without loading it: memory-mapped bytes
//! are sliced, a deflate stream is inflated up to the last element asked for. A 1m-wide Gemma
//! Scope `W_dec` is 9.4 GB; steering needs a few rows.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::DeflateDecoder;
use memmap2::Mmap;

/// Element types found in SAE weight files; all are read as f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
}

impl DType {
    pub fn size(self) -> usize {
        match self {
            DType::F16 | DType::BF16 => 2,
            DType::F32 => 4,
            DType::F64 => 8,
        }
    }

    /// Little-endian bytes of one element to f32 (f64 rounds to nearest, as torch's `.float()`).
    fn to_f32(self, b: &[u8]) -> f32 {
        match self {
            DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            DType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            DType::F64 => f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32,
        }
    }
}

/// Where an array's bytes are.
#[derive(Debug, Clone)]
pub(super) enum Data {
    /// `offset` is the byte offset of element 0 in the mapped file.
    Mapped { map: Arc<Mmap>, offset: usize },
    /// A deflate stream at `map[offset..offset + len]`; element 0 starts `skip` bytes into the
    /// decompressed stream (after the `.npy` header).
    Deflated {
        map: Arc<Mmap>,
        offset: usize,
        len: usize,
        skip: usize,
    },
}

/// One array of a weights file, read element by element.
#[derive(Debug, Clone)]
pub struct StoredArray {
    /// `W_dec`, `params.npz:W_dec.npy`... for messages.
    pub name: String,
    pub file: PathBuf,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub fortran_order: bool,
    pub(super) data: Data,
}

impl StoredArray {
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn describe(&self) -> String {
        format!("'{}' in '{}'", self.name, self.file.display())
    }

    /// Flat index of `[i, j]` in a 2-D array, honouring Fortran order.
    fn flat2(&self, i: usize, j: usize) -> usize {
        if self.fortran_order {
            j * self.shape[0] + i
        } else {
            i * self.shape[1] + j
        }
    }

    fn expect_rank(&self, rank: usize) -> Result<()> {
        ensure!(
            self.shape.len() == rank,
            "{} has shape {:?}, expected {rank} dimensions",
            self.describe(),
            self.shape
        );
        Ok(())
    }

    /// Rows `rows` of a 2-D array, one `Vec` of `shape[1]` values per requested row.
    pub fn rows(&self, rows: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.expect_rank(2)?;
        let (n, d) = (self.shape[0], self.shape[1]);
        let mut flat = Vec::with_capacity(rows.len() * d);
        for &r in rows {
            ensure!(
                r < n,
                "row {r} is out of range for {} of shape {:?}",
                self.describe(),
                self.shape
            );
            flat.extend((0..d).map(|j| self.flat2(r, j)));
        }
        if d == 0 {
            return Ok(vec![Vec::new(); rows.len()]);
        }
        Ok(self.gather(&flat)?.chunks(d).map(<[f32]>::to_vec).collect())
    }

    /// Columns `cols` of a 2-D array, one `Vec` of `shape[0]` values per requested column.
    pub fn cols(&self, cols: &[usize]) -> Result<Vec<Vec<f32>>> {
        self.expect_rank(2)?;
        let (n, d) = (self.shape[0], self.shape[1]);
        let mut flat = Vec::with_capacity(cols.len() * n);
        for &c in cols {
            ensure!(
                c < d,
                "column {c} is out of range for {} of shape {:?}",
                self.describe(),
                self.shape
            );
            flat.extend((0..n).map(|i| self.flat2(i, c)));
        }
        if n == 0 {
            return Ok(vec![Vec::new(); cols.len()]);
        }
        Ok(self.gather(&flat)?.chunks(n).map(<[f32]>::to_vec).collect())
    }

    /// Elements `idx` of a 1-D array.
    pub fn elements(&self, idx: &[usize]) -> Result<Vec<f32>> {
        self.expect_rank(1)?;
        for &i in idx {
            ensure!(
                i < self.shape[0],
                "index {i} is out of range for {} of shape {:?}",
                self.describe(),
                self.shape
            );
        }
        self.gather(idx)
    }

    /// Every element, in storage order (for 1-D arrays such as `b_dec`).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.gather(&(0..self.len()).collect::<Vec<_>>())
    }

    /// The elements at flat (storage order) indices `flat`, in the order asked.
    pub fn gather(&self, flat: &[usize]) -> Result<Vec<f32>> {
        if let Some(&k) = flat.iter().find(|&&k| k >= self.len()) {
            bail!(
                "element {k} is out of range for {} of shape {:?}",
                self.describe(),
                self.shape
            );
        }
        match &self.data {
            Data::Mapped { map, offset } => self.gather_mapped(&map[*offset..], flat),
            Data::Deflated {
                map,
                offset,
                len,
                skip,
            } => self.gather_deflated(&map[*offset..*offset + *len], *skip, flat),
        }
    }

    /// `flat` from `bytes`, the mapped data from element 0 on.
    fn gather_mapped(&self, bytes: &[u8], flat: &[usize]) -> Result<Vec<f32>> {
        let size = self.dtype.size();
        ensure!(
            bytes.len() >= self.len() * size,
            "{} is truncated: {} bytes for {} elements",
            self.describe(),
            bytes.len(),
            self.len()
        );
        Ok(flat
            .iter()
            .map(|&k| self.dtype.to_f32(&bytes[k * size..(k + 1) * size]))
            .collect())
    }

    /// `flat` from the deflate stream `compressed`, whose element 0 is `skip` bytes in: inflated
    /// once, in index order, up to the last element asked for.
    fn gather_deflated(&self, compressed: &[u8], skip: usize, flat: &[usize]) -> Result<Vec<f32>> {
        let size = self.dtype.size();
        let mut order: Vec<usize> = (0..flat.len()).collect();
        order.sort_unstable_by_key(|&i| flat[i]);
        let mut out = vec![0f32; flat.len()];
        let mut stream = DeflateDecoder::new(compressed);
        skip_bytes(&mut stream, skip as u64)
            .with_context(|| format!("cannot inflate {}", self.describe()))?;
        // `pos`: the element the stream is at; `last`: the last element read, reused for repeats.
        let (mut pos, mut last) = (0usize, None::<(usize, f32)>);
        let mut buf = [0u8; 8];
        for i in order {
            let k = flat[i];
            if let Some((lk, v)) = last
                && lk == k
            {
                out[i] = v;
                continue;
            }
            skip_bytes(&mut stream, ((k - pos) * size) as u64)
                .and_then(|()| stream.read_exact(&mut buf[..size]))
                .with_context(|| format!("cannot inflate {} (element {k})", self.describe()))?;
            let v = self.dtype.to_f32(&buf[..size]);
            out[i] = v;
            last = Some((k, v));
            pos = k + 1;
        }
        Ok(out)
    }
}

fn skip_bytes(r: &mut impl Read, n: u64) -> io::Result<()> {
    let skipped = io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    if skipped < n {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "stream ended early"));
    }
    Ok(())
}

pub(super) fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    // SAFETY: the map is read-only; like every reader of model weights (safetensors, ONNX Runtime) we
    // assume the file is not truncated or rewritten while we read it.
    let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map '{}'", path.display()))?;
    Ok(Arc::new(map))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fortran_order_and_repeated_indices() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        // 2x3 Fortran-order array [[0,1,2],[3,4,5]] stored column-major: 0 3 1 4 2 5.
        let bytes: Vec<u8> = [0f32, 3., 1., 4., 2., 5.]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        std::fs::write(&path, &bytes).unwrap();
        let a = StoredArray {
            name: "a".into(),
            file: path.clone(),
            dtype: DType::F32,
            shape: vec![2, 3],
            fortran_order: true,
            data: Data::Mapped {
                map: map_file(&path).unwrap(),
                offset: 0,
            },
        };
        assert_eq!(
            a.rows(&[1, 0, 1]).unwrap(),
            vec![vec![3., 4., 5.], vec![0., 1., 2.], vec![3., 4., 5.]]
        );
        assert_eq!(a.cols(&[2]).unwrap(), vec![vec![2., 5.]]);
        assert!(a.rows(&[2]).unwrap_err().to_string().contains("out of range"));
    }
}
