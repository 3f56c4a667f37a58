//! External tensor data: the `location` / `offset` / `length` keys, the safety rules ONNX Runtime
//! enforces on them, and reading the bytes through a memory map.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::bytes::Bytes;

use super::make::make_metadata;
use super::pb::{TensorProto, tensor_proto::DataLocation};

/// Offsets of tensors we write are multiples of this, so each tensor can be memory-mapped on its own
/// page boundary (what `onnx.save_model(..., align_offset=True)` produces too).
pub const ALIGNMENT: u64 = 4096;

/// Where one tensor's bytes live in a data file beside the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalData {
    pub location: String,
    pub offset: u64,
    /// `None` means "to the end of the file", as the ONNX spec allows.
    pub length: Option<u64>,
}

impl ExternalData {
    /// The tensor's external-data record, or `None` if its data is inline.
    pub fn of(tensor: &TensorProto) -> Result<Option<Self>> {
        if !tensor.is_external() {
            return Ok(None);
        }
        let mut location = None;
        let mut offset = 0;
        let mut length = None;
        for entry in &tensor.external_data {
            let parse = |v: &str| {
                v.parse::<u64>().with_context(|| {
                    format!(
                        "tensor '{}': external data {} '{v}' is not a byte count",
                        tensor.name(),
                        entry.key()
                    )
                })
            };
            match entry.key() {
                "location" => location = Some(entry.value().to_owned()),
                "offset" => offset = parse(entry.value())?,
                "length" => length = Some(parse(entry.value())?),
                _ => {}
            }
        }
        let Some(location) = location else {
            bail!(
                "tensor '{}' is marked EXTERNAL but has no 'location'",
                tensor.name()
            );
        };
        check_location(&location).with_context(|| format!("tensor '{}'", tensor.name()))?;
        Ok(Some(Self {
            location,
            offset,
            length,
        }))
    }

    /// Points `tensor` at this record, dropping any inline data.
    pub fn apply_to(&self, tensor: &mut TensorProto) {
        tensor.raw_data = None;
        tensor.external_data = vec![
            make_metadata("location", &self.location),
            make_metadata("offset", &self.offset.to_string()),
        ];
        if let Some(length) = self.length {
            tensor
                .external_data
                .push(make_metadata("length", &length.to_string()));
        }
        tensor.set_data_location(DataLocation::External);
    }
}

/// Refuses locations ONNX Runtime refuses: empty, absolute, or climbing out of the model's folder.
pub fn check_location(location: &str) -> Result<()> {
    if location.is_empty() {
        bail!("external data location is empty");
    }
    // Both separators count: a model written on Windows may say `..\weights.bin`.
    let normalized = location.replace('\\', "/");
    let path = Path::new(&normalized);
    let drive_letter = normalized.len() >= 2 && normalized.as_bytes()[1] == b':';
    if path.is_absolute() || normalized.starts_with('/') || drive_letter {
        bail!("external data location '{location}' is absolute; it must be relative to the model's folder");
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        bail!("external data location '{location}' contains '..'; it must stay inside the model's folder");
    }
    Ok(())
}

/// The file a location names, refusing one that resolves (through symbolic links) outside `dir`.
pub fn resolve(dir: &Path, location: &str) -> Result<PathBuf> {
    check_location(location)?;
    let path = dir.join(location.replace('\\', "/"));
    let real = path
        .canonicalize()
        .with_context(|| format!("external data file '{}' is missing", path.display()))?;
    let real_dir = dir
        .canonicalize()
        .with_context(|| format!("cannot resolve folder '{}'", dir.display()))?;
    if !real.starts_with(&real_dir) {
        bail!(
            "external data file '{}' resolves to '{}', outside the model's folder '{}'; \
             ONNX Runtime refuses that, so copy the file into the folder instead of linking it",
            path.display(),
            real.display(),
            real_dir.display()
        );
    }
    Ok(path)
}

/// A whole data file, memory-mapped and shared cheaply between the tensors that slice it.
pub fn map_file(path: &Path) -> Result<Bytes> {
    let file = File::open(path).with_context(|| format!("cannot open '{}'", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot read '{}'", path.display()))?
        .len();
    if len == 0 {
        return Ok(Bytes::new());
    }
    // SAFETY: the map is read-only; we never write to files we map, and we write new files under
    // temporary names, so nothing of ours truncates a mapped file while it is in use.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.with_context(|| format!("cannot map '{}'", path.display()))?;
    Ok(Bytes::from_owner(map))
}

/// The slice of `file` (the mapped data file) that `record` names, checked against the file's size.
pub fn slice(file: &Bytes, record: &ExternalData, expected_len: Option<u64>, tensor: &str) -> Result<Bytes> {
    let file_len = file.len() as u64;
    let length = record
        .length
        .or(expected_len)
        .unwrap_or(file_len.saturating_sub(record.offset));
    let end = record.offset.checked_add(length).filter(|&end| end <= file_len);
    let Some(end) = end else {
        bail!(
            "tensor '{tensor}': external data [{}..+{length}] runs past the end of '{}' ({file_len} bytes); \
             the data file is truncated or belongs to another model",
            record.offset,
            record.location
        );
    };
    if let Some(expected) = expected_len
        && expected != length
    {
        bail!(
            "tensor '{tensor}': external data length {length} does not match its shape and type ({expected} bytes)"
        );
    }
    Ok(file.slice(record.offset as usize..end as usize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_locations_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../w.bin",
            "a/../../w.bin",
            "..\\w.bin",
            "C:\\w.bin",
        ] {
            assert!(check_location(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["model.onnx.data", "weights/part-0.bin", "./w.bin"] {
            check_location(good).unwrap();
        }
    }

    #[test]
    fn symlinks_leaving_the_folder_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("w.bin"), [0u8; 8]).unwrap();
        std::os::unix::fs::symlink(outside.path().join("w.bin"), dir.path().join("w.bin")).unwrap();
        let err = resolve(dir.path(), "w.bin").unwrap_err().to_string();
        assert!(err.contains("outside the model's folder"), "{err}");
    }

    #[test]
    fn slices_past_the_end_are_refused() {
        let file = Bytes::from_static(&[0u8; 16]);
        let record = ExternalData {
            location: "w".into(),
            offset: 8,
            length: Some(16),
        };
        assert!(slice(&file, &record, None, "t").is_err());
        let record = ExternalData {
            location: "w".into(),
            offset: 8,
            length: Some(8),
        };
        assert_eq!(slice(&file, &record, Some(8), "t").unwrap().len(), 8);
        assert!(
            slice(&file, &record, Some(4), "t").is_err(),
            "length must match the tensor's shape"
        );
    }
}
