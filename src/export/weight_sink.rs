//! The export's weights: [`ExportBuilder`] streams each into the external data file as the graph
//! adds it, so an export never holds more than one converted chunk of weights in memory.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;

use super::weights::{WeightView, convert};
use crate::onnx::DataType;
use crate::onnx::builder::GraphBuilder;
use crate::onnx::datafile::{DataRecord, DataWriter};
use crate::onnx::external::{ALIGNMENT, ExternalData};
use crate::onnx::make::make_tensor;
use crate::onnx::pb::TensorProto;

/// Tensors at least this large go to the data file; smaller ones stay in the protobuf.
const EXTERNAL_MIN_BYTES: usize = 1024;
/// Converted weights are written in pieces of this many bytes.
const CONVERT_CHUNK: usize = 16 << 20;

/// Appends tensors to a data file at aligned offsets and hands back external tensor records.
pub struct WeightSink {
    writer: DataWriter<BufWriter<File>>,
    location: String,
    scratch: Vec<u8>,
    progress: ProgressBar,
}

impl WeightSink {
    pub fn new(file: File, location: &str, progress: ProgressBar) -> Self {
        Self {
            writer: DataWriter::new(BufWriter::with_capacity(4 << 20, file)),
            location: location.to_owned(),
            scratch: Vec::new(),
            progress,
        }
    }

    /// Writes `weight` converted to `dtype` and returns the initializer pointing at it.
    fn write(
        &mut self,
        name: &str,
        weight: &WeightView,
        dtype: DataType,
        dims: &[i64],
    ) -> Result<TensorProto> {
        // A full disk or a failing device surfaces here: the message names the file.
        let failed =
            |location: &str| format!("cannot write '{location}' (the weights file beside the output)");
        let padded = self
            .writer
            .align(ALIGNMENT)
            .with_context(|| failed(&self.location))?;
        let mut length = 0u64;
        let width = if dtype == DataType::Float { 4 } else { 2 };
        if weight.dtype == dtype {
            for piece in weight.data.chunks(CONVERT_CHUNK) {
                check_finite(piece, dtype, weight, length as usize / width)?;
                self.writer
                    .write_all(piece)
                    .with_context(|| failed(&self.location))?;
                release_pages(piece);
                length += piece.len() as u64;
            }
        } else {
            let from_width = if weight.dtype == DataType::Float { 4 } else { 2 };
            for piece in weight.data.chunks(CONVERT_CHUNK / 4 * from_width) {
                convert(piece, weight.dtype, dtype, &mut self.scratch)?;
                check_finite(&self.scratch, dtype, weight, length as usize / width)?;
                self.writer
                    .write_all(&self.scratch)
                    .with_context(|| failed(&self.location))?;
                release_pages(piece);
                length += self.scratch.len() as u64;
            }
        }
        self.progress.inc(weight.data.len() as u64);
        let mut tensor = make_tensor(name, dtype, dims, Vec::new());
        ExternalData {
            location: self.location.clone(),
            offset: padded,
            length: Some(length),
        }
        .apply_to(&mut tensor);
        Ok(tensor)
    }

    /// Ends the data file with its trailer, syncs it, and returns the record the graph keeps.
    pub fn finish(self) -> Result<DataRecord> {
        let (writer, record) = self.writer.finish()?;
        writer.get_ref().sync_all()?;
        self.progress.finish_and_clear();
        Ok(record)
    }
}

/// Drops the pages of `data` (a slice of a read-only file mapping) from this process once they
/// are written out, so reading a 5 GB checkpoint does not leave 5 GB resident. The mapping stays
/// valid: a later read faults the pages back in from the file.
fn release_pages(data: &[u8]) {
    if data.is_empty() {
        return;
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
    let start = data.as_ptr() as usize;
    // Whole pages inside the slice only: a partial page may hold bytes of a neighbouring tensor
    // still to be read (dropping it would only cost a re-read, but there is no need).
    let first = start.next_multiple_of(page);
    let end = (start + data.len()) / page * page;
    if end > first {
        // SAFETY: [first, end) lies within `data`, a read-only, file-backed mapping; MADV_DONTNEED
        // discards clean pages only, which the kernel re-reads from the file on the next access.
        unsafe {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
        }
    }
}

/// The export's graph builder: its weights stream into the data file.
pub type ExportBuilder<'s> = GraphBuilder<&'s mut WeightSink>;

impl ExportBuilder<'_> {
    /// A weight from the checkpoint, written to the data file (or inline when small) as `dtype`.
    pub fn weight(&mut self, name: &str, weight: &WeightView, dtype: DataType) -> Result<String> {
        let dims: Vec<i64> = weight.shape.iter().map(|&d| d as i64).collect();
        let numel: usize = weight.shape.iter().product();
        let width = if dtype == DataType::Float { 4 } else { 2 };
        let sink = self.store();
        let tensor = if numel * width >= EXTERNAL_MIN_BYTES {
            sink.write(name, weight, dtype, &dims)
                .with_context(|| format!("writing weight '{name}'"))?
        } else {
            let mut raw = Vec::new();
            convert(&weight.data, weight.dtype, dtype, &mut raw)?;
            check_finite(&raw, dtype, weight, 0)?;
            sink.progress.inc(weight.data.len() as u64);
            make_tensor(name, dtype, &dims, raw)
        };
        Ok(self.initializer(tensor))
    }

    /// A small computed tensor (norm scales, RoPE frequencies), stored inline or externally by size.
    pub fn computed(
        &mut self,
        name: &str,
        dtype: DataType,
        dims: &[usize],
        values: &[f32],
    ) -> Result<String> {
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let view = WeightView {
            name: name.to_owned(),
            source: "computed from config.json".to_owned(),
            dtype: DataType::Float,
            shape: dims.to_vec(),
            data: raw.into(),
        };
        self.store().progress.inc_length(view.data.len() as u64);
        self.weight(name, &view, dtype)
    }
}

/// Refuses a weight holding NaN or infinity as it will be stored (`bytes` of `dtype`, starting at
/// element `first`): a corrupt checkpoint, or a value past the range of the export's dtype, would
/// otherwise export fine and score NaN.
fn check_finite(bytes: &[u8], dtype: DataType, weight: &WeightView, first: usize) -> Result<()> {
    if let Some(i) = super::weights::first_non_finite(bytes, dtype) {
        let how = if weight.dtype == dtype {
            String::new()
        } else {
            format!(" after conversion to {}", crate::onnx::tensor::dtype_name(dtype))
        };
        bail!(
            "tensor '{}' ({}) holds NaN or infinity at element {}{how}: the checkpoint is corrupt, \
             a config.json value is out of range, or the values do not fit this --dtype",
            weight.name,
            weight.source,
            first + i
        );
    }
    Ok(())
}

/// Creates the data file's temporary in `dir`.
pub fn data_tempfile(dir: &Path, data_name: &str) -> Result<tempfile::NamedTempFile> {
    crate::files::temp_file(dir, data_name)
}
