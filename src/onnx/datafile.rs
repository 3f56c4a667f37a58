//! Keeping a graph and its external data file a matched pair. A graph and its data file are two
//! files, renamed into place one after the other, and a steered model shares its base model's
//! data file: a kill between the renames, two exports to one path, or a re-export of the base
//! model would otherwise leave a graph reading weights it was not built with — wrong numbers and
//! no error. So every data file we write ends with a trailer (magic, format version, the data's
//! length and its xxh3-128 hash, computed while the data streams out), and every graph we save
//! records, under [`RECORDS_KEY`], each data file it reads: its size and, when it has our
//! trailer, the hash. Loading compares the records with the files, reading only the trailers.
//! Data files without our trailer (written by other tools) are recorded by size alone.
//!
//! ONNX Runtime reads tensors by offset and length, so the bytes after the last tensor are
//! never looked at.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

/// The metadata key holding the records: a JSON object from location to [`DataRecord`].
pub const RECORDS_KEY: &str = "sae_onnx.external_data";
const MAGIC: &[u8; 8] = b"SAEONNX\x01";
const VERSION: u32 = 1;
/// data length (u64) + hash (u128) + version (u32) + reserved (u32) + magic, little-endian.
pub const TRAILER_LEN: u64 = 40;

/// What a graph knows about one data file it reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataRecord {
    /// The whole file's size, trailer included.
    pub bytes: u64,
    /// The xxh3-128 hash of the data before the trailer (32 hex digits), for files with our
    /// trailer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xxh3_128: Option<String>,
}

/// Location -> record, as stored under [`RECORDS_KEY`].
pub type Records = BTreeMap<String, DataRecord>;

/// A data file known without reading it, for the keys of caches built on a model: the content
/// hash its graph records for it (files we wrote, checked when the model was loaded), else its
/// size and modification time, which every rewrite changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum DataIdentity {
    Recorded { bytes: u64, xxh3_128: String },
    Stat { bytes: u64, modified_ns: u64 },
}

/// Streams tensor data into a file, hashing it on the way, and ends it with the trailer.
pub struct DataWriter<W: Write> {
    writer: W,
    offset: u64,
    hasher: Xxh3,
}

impl<W: Write> DataWriter<W> {
    pub fn new(writer: W) -> Self {
        Self {
            writer,
            offset: 0,
            hasher: Xxh3::new(),
        }
    }

    /// Bytes of data written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.writer.write_all(bytes)?;
        self.hasher.update(bytes);
        self.offset += bytes.len() as u64;
        Ok(())
    }

    /// Zero-fills up to the next multiple of `alignment` and returns that offset.
    pub fn align(&mut self, alignment: u64) -> io::Result<u64> {
        let padded = self.offset.next_multiple_of(alignment);
        self.write_all(&vec![0u8; (padded - self.offset) as usize])?;
        Ok(padded)
    }

    /// Writes the trailer and flushes; returns the writer and the record a graph keeps.
    pub fn finish(mut self) -> io::Result<(W, DataRecord)> {
        let hash = self.hasher.digest128();
        let mut trailer = Vec::with_capacity(TRAILER_LEN as usize);
        trailer.extend_from_slice(&self.offset.to_le_bytes());
        trailer.extend_from_slice(&hash.to_le_bytes());
        trailer.extend_from_slice(&VERSION.to_le_bytes());
        trailer.extend_from_slice(&0u32.to_le_bytes());
        trailer.extend_from_slice(MAGIC);
        self.writer.write_all(&trailer)?;
        self.writer.flush()?;
        let record = DataRecord {
            bytes: self.offset + TRAILER_LEN,
            xxh3_128: Some(hex(hash)),
        };
        Ok((self.writer, record))
    }
}

fn hex(hash: u128) -> String {
    format!("{hash:032x}")
}

impl DataRecord {
    /// The record of the file at `path` as it is now: its size, and the hash in its trailer if
    /// it has ours (only the last bytes are read).
    pub fn of_file(path: &Path) -> Result<Self> {
        let mut file = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
        let bytes = file
            .metadata()
            .with_context(|| format!("cannot read '{}'", path.display()))?
            .len();
        let mut record = Self {
            bytes,
            xxh3_128: None,
        };
        if bytes < TRAILER_LEN {
            return Ok(record);
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        file.seek(SeekFrom::Start(bytes - TRAILER_LEN))
            .and_then(|_| file.read_exact(&mut trailer))
            .with_context(|| format!("cannot read '{}'", path.display()))?;
        let u64_at = |i: usize| u64::from_le_bytes(trailer[i..i + 8].try_into().expect("8 bytes"));
        let data_len = u64_at(0);
        let hash = u128::from_le_bytes(trailer[8..24].try_into().expect("16 bytes"));
        let version = u32::from_le_bytes(trailer[24..28].try_into().expect("4 bytes"));
        if &trailer[32..] == MAGIC && version == VERSION && data_len == bytes - TRAILER_LEN {
            record.xxh3_128 = Some(hex(hash));
        }
        Ok(record)
    }

    fn describe(&self) -> String {
        match &self.xxh3_128 {
            Some(hash) => format!("{} bytes, content hash {hash}", self.bytes),
            None => format!("{} bytes", self.bytes),
        }
    }
}

/// The records a graph carries (empty when it has none: graphs of other tools, older exports).
pub fn records_of(metadata: Option<&str>) -> Result<Records> {
    match metadata {
        None => Ok(Records::new()),
        Some(text) => serde_json::from_str(text).with_context(|| {
            format!("metadata '{RECORDS_KEY}' is not a JSON object of {{location: {{bytes, xxh3_128}}}}")
        }),
    }
}

/// Checks that the data file at `path` is still the one `recorded` describes; the error names
/// the model, the data file and the fix.
pub fn check(model: &Path, path: &Path, recorded: &DataRecord) -> Result<()> {
    let actual = DataRecord::of_file(path)?;
    let matches = actual.bytes == recorded.bytes
        && (recorded.xxh3_128.is_none() || actual.xxh3_128 == recorded.xxh3_128);
    if matches {
        return Ok(());
    }
    let how = if actual.bytes < recorded.bytes {
        "truncated or rewritten"
    } else {
        "rewritten"
    };
    bail!(
        "'{}' was saved with the data file '{}' at {}, but that file is now {} ({how} since: \
         a re-export of the base model it shares, or another export to the same path). The graph \
         would read weights it was not built with. Re-export the model (sae-onnx export … --force), \
         or re-run the patch that made it from the current base model; a graph rewritten by another \
         tool can drop the '{RECORDS_KEY}' metadata entry instead",
        model.display(),
        path.display(),
        recorded.describe(),
        actual.describe(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trailer_records_the_data_and_is_recognized() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let mut writer = DataWriter::new(File::create(&path).unwrap());
        writer.write_all(b"abc").unwrap();
        assert_eq!(writer.align(8).unwrap(), 8);
        writer.write_all(b"defg").unwrap();
        let (_, record) = writer.finish().unwrap();
        assert_eq!(record.bytes, 12 + TRAILER_LEN);
        let mut data = b"abc".to_vec();
        data.extend([0; 5]);
        data.extend(b"defg");
        assert_eq!(
            record.xxh3_128.as_deref(),
            Some(hex(xxhash_rust::xxh3::xxh3_128(&data)).as_str())
        );
        assert_eq!(DataRecord::of_file(&path).unwrap(), record);
        check(Path::new("m.onnx"), &path, &record).unwrap();

        // A foreign file of the same size: no trailer, so no hash, so not the recorded file.
        std::fs::write(&path, vec![7u8; record.bytes as usize]).unwrap();
        let foreign = DataRecord::of_file(&path).unwrap();
        assert_eq!((foreign.bytes, foreign.xxh3_128), (record.bytes, None));
        let err = check(Path::new("m.onnx"), &path, &record)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.onnx") && err.contains("w.bin") && err.contains("Re-export"),
            "{err}"
        );
    }
}
