//! NumPy `.npz` archives (a zip of `.npy` files, members STORED or DEFLATED, zip64 as NumPy
//! writes it): the zip crate reads the central directory, each array's `.npy` header is parsed
//! here, and the data is left in place for [`StoredArray`].

use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::DeflateDecoder;
use memmap2::Mmap;
use zip::CompressionMethod;
use zip::read::{ArchiveOffset, Config, ZipArchive};

use super::array::{DType, Data, StoredArray, map_file};
use crate::pycompat::literal::{PyLiteral, literal_eval};

/// A member of a zip archive.
#[derive(Debug, Clone)]
struct ZipMember {
    name: String,
    method: CompressionMethod,
    compressed_size: u64,
    uncompressed_size: u64,
    /// Offset of the member's data (after its local header).
    data_offset: u64,
}

/// A `.npz` archive, mapped.
#[derive(Debug, Clone)]
pub struct Npz {
    file: PathBuf,
    map: Arc<Mmap>,
    members: Vec<ZipMember>,
}

/// `.npy` headers are a few hundred bytes; no more than this is read (or inflated) to parse one.
const NPY_HEADER_MAX_BYTES: usize = 1 << 16;

impl Npz {
    pub fn open(path: &Path) -> Result<Self> {
        let map = map_file(path)?;
        let members = zip_members(&map)
            .with_context(|| format!("'{}' is not a readable npz (zip) file", path.display()))?;
        Ok(Self {
            file: path.to_owned(),
            map,
            members,
        })
    }

    /// The array names (member names without `.npy`).
    pub fn keys(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| m.name.strip_suffix(".npy").unwrap_or(&m.name).to_owned())
            .collect()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.member(key).is_some()
    }

    fn member(&self, key: &str) -> Option<&ZipMember> {
        self.members
            .iter()
            .find(|m| m.name.strip_suffix(".npy").unwrap_or(&m.name) == key)
    }

    /// The array `key` (member `key.npy`), without reading its data.
    pub fn array(&self, key: &str) -> Result<StoredArray> {
        let Some(m) = self.member(key) else {
            bail!(
                "'{}' has no array '{key}' (it has: {})",
                self.file.display(),
                self.keys().join(", ")
            );
        };
        let start = usize::try_from(m.data_offset)?;
        let len = usize::try_from(m.compressed_size)?;
        ensure!(
            start.checked_add(len).is_some_and(|end| end <= self.map.len()),
            "'{}': member '{}' runs past the end of the file",
            self.file.display(),
            m.name
        );
        let (header, data, most) = self.header_and_data(m, start, len)?;
        // The shape is checked against the bytes there are before anything is sized from it.
        let want = header
            .shape
            .iter()
            .try_fold(header.dtype.size() as u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|n| n.checked_add(header.len as u64));
        let holds = m.uncompressed_size.min(most);
        ensure!(
            want.is_some_and(|want| want <= holds),
            "'{}': member '{}' holds {holds} bytes but its header promises shape {:?} of {:?}",
            self.file.display(),
            m.name,
            header.shape,
            header.dtype
        );
        Ok(StoredArray {
            name: key.to_owned(),
            file: self.file.clone(),
            dtype: header.dtype,
            shape: header.shape,
            fortran_order: header.fortran_order,
            data,
        })
    }
    /// The `.npy` header of member `m` (its data at `map[start..start + len]`), where the array's
    /// elements are, and the most bytes the member can hold once decompressed.
    fn header_and_data(&self, m: &ZipMember, start: usize, len: usize) -> Result<(NpyHeader, Data, u64)> {
        let member = || format!("'{}': member '{}'", self.file.display(), m.name);
        let stored = &self.map[start..start + len];
        match m.method {
            CompressionMethod::STORE => {
                let header =
                    NpyHeader::parse(&stored[..len.min(NPY_HEADER_MAX_BYTES)]).with_context(member)?;
                let data = Data::Mapped {
                    map: self.map.clone(),
                    offset: start + header.len,
                };
                Ok((header, data, len as u64))
            }
            CompressionMethod::DEFLATE => {
                let mut head = Vec::new();
                DeflateDecoder::new(stored)
                    .take(NPY_HEADER_MAX_BYTES as u64)
                    .read_to_end(&mut head)
                    .with_context(member)?;
                let header = NpyHeader::parse(&head).with_context(member)?;
                let data = Data::Deflated {
                    map: self.map.clone(),
                    offset: start,
                    len,
                    skip: header.len,
                };
                // DEFLATE inflates at most 1032 bytes per byte.
                Ok((header, data, (len as u64).saturating_mul(1032)))
            }
            other => bail!(
                "'{}': member '{}' uses zip compression method {other}; only STORED (0) and DEFLATED (8) are supported",
                self.file.display(),
                m.name
            ),
        }
    }
}

/// The members of the zip archive `bytes`, from its central directory.
fn zip_members(bytes: &[u8]) -> Result<Vec<ZipMember>> {
    // NumPy writes nothing before the archive; a known offset spares searching for one.
    let config = Config {
        archive_offset: ArchiveOffset::Known(0),
    };
    let mut archive = ZipArchive::with_config(config, Cursor::new(bytes))?;
    (0..archive.len())
        .map(|i| {
            let member = archive.by_index_raw(i)?;
            ensure!(!member.encrypted(), "encrypted zip members are not supported");
            Ok(ZipMember {
                name: String::from_utf8_lossy(member.name_raw()).into_owned(),
                method: member.compression(),
                compressed_size: member.compressed_size(),
                uncompressed_size: member.size(),
                data_offset: member.data_start().context("zip member without a data offset")?,
            })
        })
        .collect()
}

/// The header of a `.npy` file: `\x93NUMPY`, version, header length, then a Python dict literal
/// such as `{'descr': '<f4', 'fortran_order': False, 'shape': (16384, 2304), }`.
#[derive(Debug)]
struct NpyHeader {
    dtype: DType,
    fortran_order: bool,
    shape: Vec<usize>,
    /// Bytes before the data.
    len: usize,
}

impl NpyHeader {
    fn parse(b: &[u8]) -> Result<Self> {
        ensure!(
            b.len() >= 10 && &b[..6] == b"\x93NUMPY",
            "not a .npy array (bad magic)"
        );
        let (text_at, text_len) = match b[6] {
            1 => (10, usize::from(u16::from_le_bytes([b[8], b[9]]))),
            2 | 3 => {
                let len = b.get(8..12).context("truncated .npy header")?;
                (12, u32::from_le_bytes(len.try_into()?) as usize)
            }
            v => bail!(".npy format version {v} is not supported"),
        };
        let text = b
            .get(text_at..text_at + text_len)
            .context("truncated .npy header")?;
        let text = std::str::from_utf8(text).context(".npy header is not text")?;
        let literal = if b[6] == 1 {
            literal_eval(&without_python2_longs(text))
        } else {
            literal_eval(text)
        };
        let PyLiteral::Dict(dict) = literal.with_context(|| format!("bad .npy header: {text}"))? else {
            bail!(".npy header is not a dict: {text}");
        };
        let value_of = |key: &str| {
            dict.iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(_, v)| v)
                .with_context(|| format!(".npy header has no '{key}': {text}"))
        };
        let dtype = match value_of("descr")?.as_str().context("bad .npy descr")? {
            "<f4" => DType::F32,
            "<f2" => DType::F16,
            "<f8" => DType::F64,
            other => {
                bail!(".npy dtype '{other}' is not supported (expected little-endian float: <f4, <f2, <f8)")
            }
        };
        let PyLiteral::Bool(fortran_order) = *value_of("fortran_order")? else {
            bail!("bad .npy fortran_order: {text}")
        };
        let shape = value_of("shape")?
            .as_seq()
            .with_context(|| format!("bad .npy shape: {text}"))?
            .iter()
            .map(|d| match d {
                PyLiteral::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("bad .npy shape: {text}"))?;
        Ok(Self {
            dtype,
            fortran_order,
            shape,
            len: text_at + text_len,
        })
    }
}

/// Version 1 headers written by Python 2 spell sizes as longs (`(16384L, 2304L)`); NumPy drops
/// the `L` before `literal_eval` (`_filter_header`), and so do we. Quoted text is kept as is.
fn without_python2_longs(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quote = None;
    let mut after_digit = false;
    for c in text.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None if c == 'L' && after_digit => continue,
            None => {}
        }
        after_digit = quote.is_none() && c.is_ascii_digit();
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npy_v1(text: &str) -> Vec<u8> {
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        b
    }

    #[test]
    fn npy_headers_parse() {
        let b = npy_v1("{'descr': '<f4', 'fortran_order': False, 'shape': (16384, 2304), }");
        let h = NpyHeader::parse(&b).unwrap();
        assert_eq!(
            (h.dtype, h.fortran_order, h.shape.clone(), h.len),
            (DType::F32, false, vec![16384, 2304], b.len())
        );
        let text = "{'descr': '<f8', 'fortran_order': True, 'shape': (7,), }";
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend((text.len() as u32).to_le_bytes());
        b.extend(text.as_bytes());
        let h = NpyHeader::parse(&b).unwrap();
        assert_eq!(
            (h.dtype, h.fortran_order, h.shape, h.len),
            (DType::F64, true, vec![7], 12 + text.len())
        );
        let b = npy_v1("{'descr': '>f4', 'fortran_order': False, 'shape': (), }");
        assert!(NpyHeader::parse(&b).unwrap_err().to_string().contains(">f4"));
    }

    #[test]
    fn python2_headers_and_malformed_ones() {
        let b = npy_v1("{'descr': '<f2', 'fortran_order': False, 'shape': (3L, 4L), }");
        assert_eq!(NpyHeader::parse(&b).unwrap().shape, vec![3, 4]);
        for bad in [
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }",
            "{'descr': '<f4', 'fortran_order': 0, 'shape': (1,), }",
            "{'descr': '<f4', 'fortran_order': False}",
            "['descr', '<f4']",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,",
        ] {
            assert!(NpyHeader::parse(&npy_v1(bad)).is_err(), "{bad}");
        }
        assert!(NpyHeader::parse(&npy_v1("{}")[..11]).is_err());
    }
}
