//! NumPy `.npz` archives (a zip of `.npy` files, members STORED or DEFLATED, zip64 as NumPy
//! writes it): the arrays' headers are read, their data left in place for [`StoredArray`].

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail, ensure};
use flate2::read::DeflateDecoder;
use memmap2::Mmap;

use super::array::{DType, Data, StoredArray, map_file};

/// A member of a zip archive.
#[derive(Debug, Clone)]
struct ZipMember {
    name: String,
    /// 0 = STORED, 8 = DEFLATED.
    method: u16,
    compressed_size: u64,
    uncompressed_size: u64,
    /// Offset of the member's data (after its local header).
    data_offset: u64,
}

/// A `.npz` archive, mapped.
#[derive(Debug, Clone)]
pub struct Npz {
    pub file: PathBuf,
    map: Arc<Mmap>,
    members: Vec<ZipMember>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

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
        let name = key.to_owned();
        let start = usize::try_from(m.data_offset)?;
        let len = usize::try_from(m.compressed_size)?;
        ensure!(
            start.checked_add(len).is_some_and(|end| end <= self.map.len()),
            "'{}': member '{}' runs past the end of the file",
            self.file.display(),
            m.name
        );
        let member = || format!("'{}': member '{}'", self.file.display(), m.name);
        let (header, data) = match m.method {
            0 => {
                let header = NpyHeader::parse(&self.map[start..start + len]).with_context(member)?;
                let data = Data::Mapped {
                    map: self.map.clone(),
                    offset: start + header.len,
                };
                (header, data)
            }
            8 => {
                // The header is at most a few hundred bytes; inflate just enough of it.
                let mut head = Vec::new();
                DeflateDecoder::new(&self.map[start..start + len])
                    .take(1 << 16)
                    .read_to_end(&mut head)
                    .with_context(member)?;
                let header = NpyHeader::parse(&head).with_context(member)?;
                let data = Data::Deflated {
                    map: self.map.clone(),
                    offset: start,
                    len,
                    skip: header.len,
                };
                (header, data)
            }
            other => bail!(
                "'{}': member '{}' uses zip compression method {other}; only STORED (0) and DEFLATED (8) are supported",
                self.file.display(),
                m.name
            ),
        };
        let array = StoredArray {
            name,
            file: self.file.clone(),
            dtype: header.dtype,
            shape: header.shape,
            fortran_order: header.fortran_order,
            data,
        };
        // The shape is checked against the bytes there are before anything is sized from it:
        // a stored member holds its data, and DEFLATE inflates at most 1032 bytes per byte.
        let want = array
            .shape
            .iter()
            .try_fold(array.dtype.size() as u64, |n, &d| n.checked_mul(d as u64))
            .and_then(|n| n.checked_add(header.len as u64));
        let most = match m.method {
            0 => len as u64,
            _ => (len as u64).saturating_mul(1032),
        };
        let holds = m.uncompressed_size.min(most);
        ensure!(
            want.is_some_and(|want| want <= holds),
            "'{}': member '{}' holds {holds} bytes but its header promises shape {:?} of {:?}",
            self.file.display(),
            m.name,
            array.shape,
            array.dtype
        );
        Ok(array)
    }
}

/// Reads the central directory (zip64 aware: NumPy writes every member with zip64 extras).
fn zip_members(b: &[u8]) -> Result<Vec<ZipMember>> {
    const EOCD: u32 = 0x0605_4b50;
    const EOCD64_LOCATOR: u32 = 0x0706_4b50;
    const EOCD64: u32 = 0x0606_4b50;
    const CENTRAL: u32 = 0x0201_4b50;
    const LOCAL: u32 = 0x0403_4b50;
    ensure!(b.len() >= 22, "file too short for a zip archive");
    // The end-of-central-directory record is in the last 22 + 65535 bytes.
    let lowest = b.len().saturating_sub(22 + 0xFFFF);
    let eocd = (lowest..=b.len() - 22)
        .rev()
        .find(|&i| u32_at(b, i) == Some(EOCD))
        .context("no end-of-central-directory record")?;
    let short = |at: usize| u16_at(b, eocd + at).map(u64::from).context("truncated zip");
    let long = |at: usize| u32_at(b, eocd + at).map(u64::from).context("truncated zip");
    let (mut count, mut cd_size, mut cd_offset) = (short(10)?, long(12)?, long(16)?);
    if count == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        let loc = eocd
            .checked_sub(20)
            .context("zip64 archive without a zip64 locator")?;
        ensure!(
            u32_at(b, loc) == Some(EOCD64_LOCATOR),
            "zip64 archive without a zip64 locator"
        );
        let at = usize::try_from(u64_at(b, loc + 8).context("truncated zip")?)?;
        ensure!(
            u32_at(b, at) == Some(EOCD64),
            "bad zip64 end-of-central-directory record"
        );
        count = u64_at(b, at + 32).context("truncated zip")?;
        cd_size = u64_at(b, at + 40).context("truncated zip")?;
        cd_offset = u64_at(b, at + 48).context("truncated zip")?;
    }
    let mut members = Vec::new();
    let mut at = usize::try_from(cd_offset)?;
    let end = at
        .checked_add(usize::try_from(cd_size)?)
        .context("bad central directory size")?;
    ensure!(end <= b.len(), "central directory runs past the end of the file");
    for _ in 0..count {
        ensure!(
            u32_at(b, at) == Some(CENTRAL),
            "bad central directory entry at byte {at}"
        );
        let field16 = |o: usize| u16_at(b, at + o).context("truncated central directory");
        let field32 = |o: usize| u32_at(b, at + o).context("truncated central directory");
        let method = field16(10)?;
        let flags = field16(8)?;
        ensure!(flags & 1 == 0, "encrypted zip members are not supported");
        let mut compressed_size = u64::from(field32(20)?);
        let mut uncompressed_size = u64::from(field32(24)?);
        let (name_len, extra_len, comment_len) = (
            usize::from(field16(28)?),
            usize::from(field16(30)?),
            usize::from(field16(32)?),
        );
        let mut local_offset = u64::from(field32(42)?);
        let name_at = at + 46;
        let name = b
            .get(name_at..name_at + name_len)
            .context("truncated central directory")?;
        let name = String::from_utf8_lossy(name).into_owned();
        // zip64 extra field (id 1): the 64-bit values of the fields that are 0xFFFFFFFF, in order.
        let extra = b
            .get(name_at + name_len..name_at + name_len + extra_len)
            .context("truncated central directory")?;
        let mut e = 0;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap_or(0);
            let size = usize::from(u16_at(extra, e + 2).unwrap_or(0));
            if id == 1 {
                let mut f = e + 4;
                for value in [&mut uncompressed_size, &mut compressed_size, &mut local_offset] {
                    if *value == 0xFFFF_FFFF {
                        *value = u64_at(extra, f).context("truncated zip64 extra field")?;
                        f += 8;
                    }
                }
            }
            e += 4 + size;
        }
        let local = usize::try_from(local_offset)?;
        ensure!(
            u32_at(b, local) == Some(LOCAL),
            "bad local header for member '{name}'"
        );
        let local_name_len = usize::from(u16_at(b, local + 26).context("truncated local header")?);
        let local_extra_len = usize::from(u16_at(b, local + 28).context("truncated local header")?);
        let data_offset = (local + 30 + local_name_len + local_extra_len) as u64;
        members.push(ZipMember {
            name,
            method,
            compressed_size,
            uncompressed_size,
            data_offset,
        });
        at = name_at + name_len + extra_len + comment_len;
    }
    Ok(members)
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
            1 => (10, usize::from(u16_at(b, 8).unwrap_or(0))),
            2 | 3 => (12, u32_at(b, 8).context("truncated .npy header")? as usize),
            v => bail!(".npy format version {v} is not supported"),
        };
        let text = b
            .get(text_at..text_at + text_len)
            .context("truncated .npy header")?;
        let text = std::str::from_utf8(text).context(".npy header is not text")?;
        let value_of = |key: &str| -> Result<&str> {
            let at = text
                .find(&format!("'{key}'"))
                .with_context(|| format!(".npy header has no '{key}': {text}"))?;
            let rest = &text[at + key.len() + 2..];
            Ok(rest
                .trim_start()
                .strip_prefix(':')
                .context("bad .npy header")?
                .trim_start())
        };
        let descr = value_of("descr")?;
        let descr = descr
            .strip_prefix('\'')
            .and_then(|d| d.split('\'').next())
            .context("bad .npy descr")?;
        let dtype = match descr {
            "<f4" => DType::F32,
            "<f2" => DType::F16,
            "<f8" => DType::F64,
            other => {
                bail!(".npy dtype '{other}' is not supported (expected little-endian float: <f4, <f2, <f8)")
            }
        };
        let fortran = value_of("fortran_order")?;
        let fortran_order = if fortran.starts_with("True") {
            true
        } else if fortran.starts_with("False") {
            false
        } else {
            bail!("bad .npy fortran_order: {text}")
        };
        let shape = value_of("shape")?;
        let shape = shape
            .strip_prefix('(')
            .and_then(|s| s.split(')').next())
            .context("bad .npy shape")?;
        let shape = shape
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.trim_end_matches('L')
                    .parse::<usize>()
                    .with_context(|| format!("bad .npy shape: {text}"))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            dtype,
            fortran_order,
            shape,
            len: text_at + text_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_headers_parse() {
        let text = "{'descr': '<f4', 'fortran_order': False, 'shape': (16384, 2304), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
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
        let text = "{'descr': '>f4', 'fortran_order': False, 'shape': (), }";
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((text.len() as u16).to_le_bytes());
        b.extend(text.as_bytes());
        assert!(NpyHeader::parse(&b).unwrap_err().to_string().contains(">f4"));
    }
}
