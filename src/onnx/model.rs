//! A model on disk: loading without reading external weights, and saving atomically with external
//! data that is shared, hard-linked or copied but never silently broken.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::Message;
use prost::bytes::Bytes;

use super::IR_VERSION;
use super::datafile::{self, DataIdentity, DataRecord, DataWriter, RECORDS_KEY, Records};
use super::external::{self, ALIGNMENT, ExternalData};
use super::make::make_metadata;
use super::pb::{GraphProto, ModelProto, TensorProto};
use super::tensor::{for_each_tensor, for_each_tensor_mut};
use crate::progress;

/// Protobuf messages cannot exceed 2 GiB; we keep a margin for the graph itself.
const PROTOBUF_LIMIT: usize = (2 << 30) - (64 << 20);

/// An ONNX model and the folder its external data locations are relative to.
#[derive(Debug, Clone)]
pub struct Model {
    pub proto: ModelProto,
    /// Folder against which external data locations resolve.
    pub dir: PathBuf,
    /// The file this model was loaded from; saving over it is refused.
    source: Option<PathBuf>,
}

/// Where tensor data goes when a model is saved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExternalDataPolicy {
    /// Inline, unless the protobuf would pass 2 GiB; then as `Always { min_bytes: 1024 }`.
    Auto,
    /// Inline tensors of at least `min_bytes` move to `<model file name>.data`.
    Always { min_bytes: u64 },
    /// Everything inline (tensors already external stay external).
    Never,
}

#[derive(Debug, Clone, Copy)]
pub struct SaveOptions {
    pub external: ExternalDataPolicy,
    pub progress: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        Self {
            external: ExternalDataPolicy::Auto,
            progress: false,
        }
    }
}

/// What a save did, for the user's summary line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SaveReport {
    pub model: PathBuf,
    pub model_bytes: u64,
    /// The data file written for this model, with its size, if tensors were externalized.
    pub data_file: Option<(PathBuf, u64)>,
    /// Data files of the source model referenced in place (same folder): no bytes copied.
    pub shared: Vec<PathBuf>,
    /// Data files hard-linked into the output folder.
    pub linked: Vec<PathBuf>,
    /// Data files copied into the output folder (hard-linking was not possible).
    pub copied: Vec<PathBuf>,
}

impl Model {
    /// A model that has not been on disk yet; external locations would resolve against `.`.
    pub fn new(proto: ModelProto) -> Self {
        Self {
            proto,
            dir: PathBuf::from("."),
            source: None,
        }
    }

    /// A model not yet on disk whose external data locations resolve against `dir`.
    pub fn in_dir(proto: ModelProto, dir: PathBuf) -> Self {
        Self {
            proto,
            dir,
            source: None,
        }
    }

    /// Loads a model, leaving external weights on disk and inline weights in a memory map.
    /// External data records are validated: safe locations, existing files, in-bounds ranges.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = read_mapped(path)?;
        let proto = ModelProto::decode(bytes).with_context(|| {
            format!("'{}' is not a valid ONNX model: the protobuf does not decode (truncated or not an .onnx file?)", path.display())
        })?;
        if proto.graph.is_none() {
            bail!(
                "'{}' decodes as protobuf but holds no graph: it is not an ONNX model",
                path.display()
            );
        }
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or_else(|| ".".into());
        let model = Self {
            proto,
            dir,
            source: Some(path.to_path_buf()),
        };
        model.check_data_records(path)?;
        model
            .check_external_data()
            .with_context(|| format!("in '{}'", path.display()))?;
        Ok(model)
    }

    pub fn graph(&self) -> &GraphProto {
        self.proto.graph.as_ref().expect("a Model always has a graph")
    }

    pub fn graph_mut(&mut self) -> &mut GraphProto {
        self.proto.graph.get_or_insert_with(Default::default)
    }

    pub fn source(&self) -> Option<&Path> {
        self.source.as_deref()
    }

    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.proto
            .metadata_props
            .iter()
            .find(|e| e.key() == key)
            .map(|e| e.value())
    }

    /// Sets `key` to `value`, replacing an existing entry (keys stay distinct, as ONNX requires).
    pub fn set_metadata(&mut self, key: &str, value: &str) {
        match self.proto.metadata_props.iter_mut().find(|e| e.key() == key) {
            Some(entry) => entry.value = Some(value.to_owned()),
            None => self.proto.metadata_props.push(make_metadata(key, value)),
        }
    }

    /// The distinct external data locations the model references.
    pub fn external_locations(&self) -> Result<BTreeSet<String>> {
        let mut locations = BTreeSet::new();
        for_each_tensor(self.graph(), &mut |t| {
            if let Some(record) = ExternalData::of(t)? {
                locations.insert(record.location);
            }
            Ok(())
        })?;
        Ok(locations)
    }

    /// The bytes of a tensor, wherever they live; external data is sliced from a memory map.
    pub fn tensor_bytes(&self, tensor: &TensorProto) -> Result<Bytes> {
        self.read_tensor_bytes(tensor)
            .with_context(|| match &self.source {
                Some(path) => format!("in '{}'", path.display()),
                None => "in the model being built".to_owned(),
            })
    }

    fn read_tensor_bytes(&self, tensor: &TensorProto) -> Result<Bytes> {
        match ExternalData::of(tensor)? {
            None => match &tensor.raw_data {
                Some(raw) => Ok(raw.clone()),
                None => Ok(Bytes::from(tensor.inline_bytes()?)),
            },
            Some(record) => {
                let path = external::resolve(&self.dir, &record.location)?;
                let file = external::map_file(&path)?;
                external::slice(&file, &record, tensor.byte_len(), tensor.name())
            }
        }
    }

    /// Each external data file's [`DataIdentity`], by location.
    pub fn data_identities(&self) -> Result<BTreeMap<String, DataIdentity>> {
        let records = self.data_records()?;
        let mut identities = BTreeMap::new();
        for location in self.external_locations()? {
            let path = external::resolve(&self.dir, &location)?;
            let meta =
                fs::metadata(&path).with_context(|| format!("cannot read data file '{}'", path.display()))?;
            let identity = match records.get(&location).and_then(|r| r.xxh3_128.clone()) {
                Some(xxh3_128) => DataIdentity::Recorded {
                    bytes: meta.len(),
                    xxh3_128,
                },
                None => DataIdentity::Stat {
                    bytes: meta.len(),
                    modified_ns: meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_nanos() as u64),
                },
            };
            identities.insert(location, identity);
        }
        Ok(identities)
    }

    /// The data-file records the graph carries (see [`datafile`]).
    pub fn data_records(&self) -> Result<Records> {
        datafile::records_of(self.metadata(RECORDS_KEY))
    }

    /// Refuses a model whose data files are no longer the ones it was saved with.
    fn check_data_records(&self, path: &Path) -> Result<()> {
        let records = self
            .data_records()
            .with_context(|| format!("in '{}'", path.display()))?;
        let used = self
            .external_locations()
            .with_context(|| format!("in '{}'", path.display()))?;
        for (location, record) in &records {
            // A record of a file no tensor reads any more (a graph edited by another tool)
            // says nothing about this graph's weights.
            if !used.contains(location) {
                continue;
            }
            let data =
                external::resolve(&self.dir, location).with_context(|| format!("in '{}'", path.display()))?;
            datafile::check(path, &data, record)?;
        }
        Ok(())
    }

    /// The records of the data files `locations` (resolved against `dir`) as they are now,
    /// checked against what this model recorded: a file that changed since the model was
    /// loaded or built is refused rather than recorded as if it belonged to the graph.
    fn current_records(&self, locations: &BTreeSet<String>, dir: &Path) -> Result<Records> {
        let known = self.data_records()?;
        let mut records = Records::new();
        for location in locations {
            let data = external::resolve(dir, location)?;
            let record = match known.get(location) {
                Some(recorded) => {
                    let model = self.source.clone().unwrap_or_else(|| dir.join("<new model>"));
                    datafile::check(&model, &data, recorded)?;
                    recorded.clone()
                }
                None => DataRecord::of_file(&data)?,
            };
            records.insert(location.clone(), record);
        }
        Ok(records)
    }

    fn check_external_data(&self) -> Result<()> {
        let mut file_sizes: BTreeMap<String, u64> = BTreeMap::new();
        for_each_tensor(self.graph(), &mut |t| {
            let Some(record) = ExternalData::of(t)? else {
                return Ok(());
            };
            let size = match file_sizes.get(&record.location) {
                Some(&size) => size,
                None => {
                    let path = external::resolve(&self.dir, &record.location)
                        .with_context(|| format!("tensor '{}'", t.name()))?;
                    let size = fs::metadata(&path)
                        .with_context(|| format!("cannot read '{}'", path.display()))?
                        .len();
                    file_sizes.insert(record.location.clone(), size);
                    size
                }
            };
            let length = record.length.or(t.byte_len()).unwrap_or(0);
            if record.offset.checked_add(length).is_none_or(|end| end > size) {
                bail!(
                    "tensor '{}' needs bytes {}..{} of '{}', which has only {size}: the data file is truncated or belongs to another model",
                    t.name(),
                    record.offset,
                    record.offset.saturating_add(length),
                    record.location
                );
            }
            Ok(())
        })
    }

    /// Saves the model to `path` atomically: data first, then the model under a temporary name
    /// renamed into place. The input model and its data files are never written.
    pub fn save(&self, path: &Path, options: &SaveOptions) -> Result<SaveReport> {
        let target = self.check_save_path(path)?;
        let mut proto = self.proto.clone();
        if proto.ir_version.unwrap_or(0) == 0 {
            proto.ir_version = Some(IR_VERSION);
        }
        let graph = proto.graph.get_or_insert_with(Default::default);
        let locations = self.external_locations()?;
        let data_name = format!("{}.data", target.file_name);
        for location in &locations {
            if same_file(&target.dir.join(location), path) {
                bail!(
                    "refusing to write '{}': the model's own external data file has that name",
                    path.display()
                );
            }
        }

        let mut report = SaveReport {
            model: path.to_path_buf(),
            ..Default::default()
        };
        let mut records = self.current_records(&locations, &self.dir)?;
        self.place_external_files(&locations, &target.dir, options, &mut report)?;
        let new_data = externalize_tensors(graph, options, &locations, &target.dir, &data_name)?;
        if let Some(new_data) = &new_data {
            records.insert(data_name.clone(), new_data.record.clone());
        }
        set_records(&mut proto, &records)?;

        let encoded_len = proto.encoded_len();
        if encoded_len > (2 << 30) - 1 {
            bail!(
                "the model's protobuf would be {encoded_len} bytes, past protobuf's 2 GiB limit; save it with external data"
            );
        }
        let model_file = write_temp_model(&proto, &target, path)?;

        // The data file goes into place first so a model never points at missing data; if the
        // model then cannot be renamed into place, the data file goes too.
        if let Some(new_data) = new_data {
            let data_path = target.dir.join(&data_name);
            new_data
                .temp
                .persist(&data_path)
                .with_context(|| format!("cannot write '{}'", data_path.display()))?;
            report.data_file = Some((data_path, new_data.record.bytes));
        }
        if let Err(err) = model_file.persist(path) {
            if let Some((data_path, _)) = &report.data_file {
                let _ = fs::remove_file(data_path);
            }
            return Err(err.error).with_context(|| format!("cannot write '{}'", path.display()));
        }
        report.model_bytes = encoded_len as u64;
        Ok(report)
    }

    /// Where `path` goes, refused when its folder is missing or it is the file this model was
    /// loaded from.
    fn check_save_path(&self, path: &Path) -> Result<SaveTarget> {
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("'{}' is not a file path", path.display()))?
            .to_owned();
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            bail!("output folder '{}' does not exist", dir.display());
        }
        if let Some(source) = &self.source
            && same_file(source, path)
        {
            bail!(
                "refusing to overwrite the input model '{}': choose another output path",
                path.display()
            );
        }
        Ok(SaveTarget { dir, file_name })
    }

    /// Makes every data file the model references reachable from `out_dir` under the same
    /// relative location: shared when it is the source folder, else hard-linked, else copied.
    fn place_external_files(
        &self,
        locations: &BTreeSet<String>,
        out_dir: &Path,
        options: &SaveOptions,
        report: &mut SaveReport,
    ) -> Result<()> {
        if locations.is_empty() {
            return Ok(());
        }
        let same_dir = same_file(&self.dir, out_dir);
        for location in locations {
            let source = external::resolve(&self.dir, location)?;
            if same_dir {
                report.shared.push(source);
                continue;
            }
            let target = out_dir.join(location);
            if target.exists() {
                if same_file(&source, &target) {
                    report.shared.push(target);
                    continue;
                }
                bail!(
                    "'{}' already exists and is not the model's data file '{}'; refusing to overwrite it. \
                     Write the output beside the input model to share its data, or into another folder",
                    target.display(),
                    source.display()
                );
            }
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create '{}'", parent.display()))?;
            }
            if fs::hard_link(&source, &target).is_ok() {
                report.linked.push(target);
            } else {
                copy_with_progress(&source, &target, options.progress)?;
                report.copied.push(target);
            }
        }
        Ok(())
    }
}

/// Reads a file into a buffer that decoding can slice without copying (a memory map).
fn read_mapped(path: &Path) -> Result<Bytes> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read '{}'", path.display()))?;
    if meta.is_dir() {
        bail!("'{}' is a folder, not an .onnx file", path.display());
    }
    if meta.len() == 0 {
        bail!("'{}' is empty: not an ONNX model", path.display());
    }
    external::map_file(path)
}

/// True when both paths name the same existing file or folder (same device and inode).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (fs::metadata(a), fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The graph's record of the data files it reads; none at all for a graph without external data.
fn set_records(proto: &mut ModelProto, records: &Records) -> Result<()> {
    proto.metadata_props.retain(|e| e.key() != RECORDS_KEY);
    if !records.is_empty() {
        proto
            .metadata_props
            .push(make_metadata(RECORDS_KEY, &serde_json::to_string(records)?));
    }
    Ok(())
}

/// The folder and file name a model is saved to.
struct SaveTarget {
    dir: PathBuf,
    file_name: String,
}

/// A data file written for a save, under its temporary name until the model is in place.
struct NewDataFile {
    temp: tempfile::NamedTempFile,
    record: DataRecord,
}

/// Moves the graph's inline tensors to a new `data_name` in `dir` as `options` asks: always
/// (those of at least `min_bytes`), never, or when the protobuf would pass its 2 GiB limit.
fn externalize_tensors(
    graph: &mut GraphProto,
    options: &SaveOptions,
    locations: &BTreeSet<String>,
    dir: &Path,
    data_name: &str,
) -> Result<Option<NewDataFile>> {
    let min_bytes = match options.external {
        ExternalDataPolicy::Always { min_bytes } => min_bytes,
        ExternalDataPolicy::Never => return Ok(None),
        ExternalDataPolicy::Auto if graph.encoded_len() > PROTOBUF_LIMIT => 1024,
        ExternalDataPolicy::Auto => return Ok(None),
    };
    if locations.contains(data_name) {
        bail!(
            "cannot write new external data to '{data_name}': the model already reads tensors from a file of that name; choose another output name"
        );
    }
    write_external_data(graph, dir, data_name, min_bytes, options.progress)
}

/// The encoded model, synced, under a temporary name in the target folder.
fn write_temp_model(proto: &ModelProto, target: &SaveTarget, path: &Path) -> Result<tempfile::NamedTempFile> {
    let mut model_file = crate::files::temp_file(&target.dir, &target.file_name)?;
    {
        let mut writer = BufWriter::new(model_file.as_file_mut());
        writer
            .write_all(&proto.encode_to_vec())
            .and_then(|()| writer.flush())
            .with_context(|| format!("cannot write '{}'", path.display()))?;
    }
    model_file
        .as_file()
        .sync_all()
        .with_context(|| format!("cannot write '{}'", path.display()))?;
    Ok(model_file)
}

/// Moves inline tensors of at least `min_bytes` into a new data file (temporary name in `dir`),
/// each at a 4096-byte aligned offset, ended by our trailer. Returns the file and its record, or
/// `None` if none moved.
fn write_external_data(
    graph: &mut GraphProto,
    dir: &Path,
    data_name: &str,
    min_bytes: u64,
    show_progress: bool,
) -> Result<Option<NewDataFile>> {
    let mut total = 0u64;
    for_each_tensor(graph, &mut |t| {
        if !t.is_external() && t.byte_len().is_some_and(|n| n >= min_bytes) {
            total += t.byte_len().unwrap_or(0);
        }
        Ok(())
    })?;
    if total == 0 {
        return Ok(None);
    }
    let mut temp = crate::files::temp_file(dir, data_name)?;
    let bar = progress::bytes_bar(total, &format!("writing {data_name}"), show_progress);
    let data_path = dir.join(data_name);
    let record = {
        let mut writer = DataWriter::new(BufWriter::with_capacity(1 << 20, temp.as_file_mut()));
        for_each_tensor_mut(graph, &mut |t| {
            if t.is_external() || t.byte_len().is_none_or(|n| n < min_bytes) {
                return Ok(());
            }
            let bytes = match &t.raw_data {
                Some(raw) => raw.clone(),
                None => Bytes::from(t.inline_bytes()?),
            };
            let padded = writer
                .align(ALIGNMENT)
                .and_then(|padded| writer.write_all(&bytes).map(|()| padded))
                .with_context(|| format!("cannot write '{}'", data_path.display()))?;
            let record = ExternalData {
                location: data_name.to_owned(),
                offset: padded,
                length: Some(bytes.len() as u64),
            };
            clear_typed_data(t);
            record.apply_to(t);
            bar.inc(bytes.len() as u64);
            Ok(())
        })?;
        let (_, record) = writer
            .finish()
            .with_context(|| format!("cannot write '{}'", data_path.display()))?;
        record
    };
    temp.as_file()
        .sync_all()
        .with_context(|| format!("cannot write '{}'", data_path.display()))?;
    bar.finish_and_clear();
    Ok(Some(NewDataFile { temp, record }))
}

fn clear_typed_data(t: &mut TensorProto) {
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
}

/// Copies `source` to `target` through a temporary file, so an interrupted copy leaves nothing.
fn copy_with_progress(source: &Path, target: &Path, show_progress: bool) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut input = File::open(source).with_context(|| format!("cannot open '{}'", source.display()))?;
    let total = input
        .metadata()
        .with_context(|| format!("cannot read '{}'", source.display()))?
        .len();
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut temp = crate::files::temp_file(dir, &name)?;
    let bar = progress::bytes_bar(total, &format!("copying {name}"), show_progress);
    let mut buf = vec![0u8; 8 << 20];
    loop {
        let n = input
            .read(&mut buf)
            .with_context(|| format!("cannot read '{}'", source.display()))?;
        if n == 0 {
            break;
        }
        temp.write_all(&buf[..n])
            .with_context(|| format!("cannot write '{}'", target.display()))?;
        bar.inc(n as u64);
    }
    crate::files::persist(temp, target)?;
    bar.finish_and_clear();
    Ok(())
}
