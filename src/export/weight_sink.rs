//! GraphBuilder: accumulates nodes under scoped names (`/model/layers.3/self_attn/...`) and
//! streams weights into the external data file as they are added, so an export never holds
//! more than one converted chunk of weights in memory.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use anyhow::{Context, Result, bail};
use indicatif::ProgressBar;

use super::weights::{WeightView, convert};
use crate::onnx::datafile::{DataRecord, DataWriter};
use crate::onnx::external::{ALIGNMENT, ExternalData};
use crate::onnx::make::{AttrValue, make_node, make_tensor};
use crate::onnx::pb::{NodeProto, TensorProto};
use crate::onnx::{DataType, MS_DOMAIN};

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

/// Builds one graph: nodes in order, initializers, and unique scoped names.
pub struct GraphBuilder<'s> {
    pub nodes: Vec<NodeProto>,
    /// Interior mutability lets a constant be made inside the argument list of [`Self::op`].
    initializers: RefCell<Vec<TensorProto>>,
    scope: Vec<String>,
    counters: HashMap<String, usize>,
    constants: RefCell<HashMap<String, String>>,
    sink: &'s mut WeightSink,
}

impl<'s> GraphBuilder<'s> {
    pub fn new(sink: &'s mut WeightSink) -> Self {
        Self {
            nodes: Vec::new(),
            initializers: RefCell::default(),
            scope: Vec::new(),
            counters: HashMap::new(),
            constants: RefCell::default(),
            sink,
        }
    }

    /// The nodes and initializers built.
    pub fn finish(self) -> (Vec<NodeProto>, Vec<TensorProto>) {
        (self.nodes, self.initializers.into_inner())
    }

    /// Runs `f` with `name` appended to the node-name scope.
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.scope.push(name.to_owned());
        let result = f(self);
        self.scope.pop();
        result
    }

    fn node_name(&mut self, op_type: &str) -> String {
        let prefix = format!("/{}/{op_type}", self.scope.join("/"));
        let n = self.counters.entry(prefix.clone()).or_default();
        let name = if *n == 0 { prefix } else { format!("{prefix}_{n}") };
        *n += 1;
        name
    }

    /// Adds a node and returns its (first) output, named after the node as torch.onnx does.
    pub fn op(&mut self, op_type: &str, inputs: &[&str], attrs: Vec<(&str, AttrValue)>) -> String {
        let name = self.node_name(op_type);
        let output = format!("{name}_output_0");
        self.push("", op_type, name, inputs, &[&output], attrs);
        output
    }

    /// Adds a node whose output has a chosen name (the hook tensors).
    pub fn op_named(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
        output: &str,
    ) -> String {
        let name = self.node_name(op_type);
        self.push("", op_type, name, inputs, &[output], attrs);
        output.to_owned()
    }

    /// Adds a node of ONNX Runtime's contrib domain (`com.microsoft`). `outputs` lists its
    /// outputs in order: `None` takes a name derived from the node's, `Some(name)` a chosen one
    /// (a hook), `Some("")` leaves an optional output out. Returns the output names.
    pub fn op_ms(
        &mut self,
        op_type: &str,
        inputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
        outputs: &[Option<&str>],
    ) -> Vec<String> {
        let name = self.node_name(op_type);
        let outputs: Vec<String> = outputs
            .iter()
            .enumerate()
            .map(|(i, out)| match out {
                Some(chosen) => (*chosen).to_owned(),
                None => format!("{name}_output_{i}"),
            })
            .collect();
        let refs: Vec<&str> = outputs.iter().map(String::as_str).collect();
        self.push(MS_DOMAIN, op_type, name, inputs, &refs, attrs);
        outputs
    }

    fn push(
        &mut self,
        domain: &str,
        op_type: &str,
        name: String,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, AttrValue)>,
    ) {
        let mut node = make_node(op_type, inputs, outputs, name);
        if !domain.is_empty() {
            node = node.with_domain(domain);
        }
        for (key, value) in attrs {
            node = node.with_attr(key, value);
        }
        self.nodes.push(node);
    }

    /// Renames the output `from` of the node that makes it, which must have no consumer yet.
    pub fn rename_output(&mut self, from: &str, to: &str) {
        assert!(
            !self.nodes.iter().any(|n| n.input.iter().any(|i| i == from)),
            "'{from}' is already consumed"
        );
        let output = self
            .nodes
            .iter_mut()
            .rev()
            .flat_map(|n| n.output.iter_mut())
            .find(|o| *o == from)
            .expect("a node makes the tensor being renamed");
        *output = to.to_owned();
    }

    /// A weight from the checkpoint, written to the data file (or inline when small) as `dtype`.
    pub fn weight(&mut self, name: &str, weight: &WeightView, dtype: DataType) -> Result<String> {
        let dims: Vec<i64> = weight.shape.iter().map(|&d| d as i64).collect();
        let numel: usize = weight.shape.iter().product();
        let width = if dtype == DataType::Float { 4 } else { 2 };
        let tensor = if numel * width >= EXTERNAL_MIN_BYTES {
            self.sink
                .write(name, weight, dtype, &dims)
                .with_context(|| format!("writing weight '{name}'"))?
        } else {
            let mut raw = Vec::new();
            convert(&weight.data, weight.dtype, dtype, &mut raw)?;
            check_finite(&raw, dtype, weight, 0)?;
            self.sink.progress.inc(weight.data.len() as u64);
            make_tensor(name, dtype, &dims, raw)
        };
        self.initializers.get_mut().push(tensor);
        Ok(name.to_owned())
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
        self.sink.progress.inc_length(view.data.len() as u64);
        self.weight(name, &view, dtype)
    }

    /// An int64 constant, created once per distinct value.
    pub fn const_i64(&self, values: &[i64]) -> String {
        let key = format!("i64{values:?}");
        if let Some(name) = self.constants.borrow().get(&key) {
            return name.clone();
        }
        let name = format!("/const/i64_{}", self.constants.borrow().len());
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.initializers
            .borrow_mut()
            .push(make_tensor(&name, DataType::Int64, &[values.len() as i64], raw));
        self.constants.borrow_mut().insert(key, name.clone());
        name
    }

    /// An int64 scalar constant (Range bounds), created once per value.
    pub fn const_scalar_i64(&self, value: i64) -> String {
        let key = format!("i64scalar{value}");
        if let Some(name) = self.constants.borrow().get(&key) {
            return name.clone();
        }
        let name = format!("/const/i64_scalar_{}", self.constants.borrow().len());
        self.initializers.borrow_mut().push(make_tensor(
            &name,
            DataType::Int64,
            &[],
            value.to_le_bytes().to_vec(),
        ));
        self.constants.borrow_mut().insert(key, name.clone());
        name
    }

    /// A scalar constant of `dtype` (rounded to it), created once per distinct value.
    pub fn const_scalar(&self, value: f32, dtype: DataType) -> String {
        let key = format!("{dtype:?}{}", value.to_bits());
        if let Some(name) = self.constants.borrow().get(&key) {
            return name.clone();
        }
        let name = format!("/const/scalar_{}", self.constants.borrow().len());
        let raw = match dtype {
            DataType::Float16 => half::f16::from_f32(value).to_le_bytes().to_vec(),
            DataType::Bfloat16 => half::bf16::from_f32(value).to_le_bytes().to_vec(),
            _ => value.to_le_bytes().to_vec(),
        };
        self.initializers
            .borrow_mut()
            .push(make_tensor(&name, dtype, &[], raw));
        self.constants.borrow_mut().insert(key, name.clone());
        name
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
