//! Hugging Face safetensors checkpoints, single or sharded (`model.safetensors.index.json`),
//! memory-mapped: a tensor is a slice of the map until it is written out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, Result, bail};
use prost::bytes::Bytes;
use safetensors::{Dtype, SafeTensors};

use crate::onnx::DataType;
use crate::onnx::external::map_file;

/// Where checkpoints keep the text model's tensors, depending on how it was saved.
pub(crate) const PREFIXES: [&str; 3] = ["model.", "model.language_model.", "language_model.model."];

/// One tensor of the checkpoint: its type, shape and bytes (a slice of the memory map).
#[derive(Debug, Clone)]
pub struct WeightView {
    pub name: String,
    /// Where it comes from, for messages: its safetensors file, or what it is computed from.
    pub source: String,
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub data: Bytes,
}

/// All safetensors files of a checkpoint, mapped.
pub struct Checkpoint {
    files: Vec<MappedFile>,
    /// Every tensor of every file, by name.
    index: HashMap<String, IndexEntry>,
}

/// One safetensors file and its memory map.
struct MappedFile {
    path: PathBuf,
    bytes: Bytes,
}

/// Where a tensor is: which of the checkpoint's files, and its shape.
struct IndexEntry {
    file: usize,
    shape: Vec<usize>,
}

/// A tensor found in the checkpoint: its full name (prefix included), shape and file.
pub struct TensorInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub file: PathBuf,
}

/// A safetensors index is a few hundred kilobytes; the bound makes `/dev/zero` an error.
const INDEX_MAX_BYTES: u64 = 64 << 20;

impl Checkpoint {
    /// Opens `model.safetensors`, or the shards listed in `model.safetensors.index.json`, in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let index_path = dir.join("model.safetensors.index.json");
        let shard_names: Vec<String> = if index_path.exists() {
            #[derive(serde::Deserialize)]
            struct Index {
                weight_map: BTreeMap<String, String>,
            }
            let text = crate::files::read_text(&index_path, "safetensors index", INDEX_MAX_BYTES)?;
            let index: Index = serde_json::from_str(&text)
                .with_context(|| format!("'{}' is not a safetensors index", index_path.display()))?;
            let mut names: Vec<String> = index.weight_map.into_values().collect();
            names.sort();
            names.dedup();
            names
        } else if dir.join("model.safetensors").exists() {
            vec!["model.safetensors".to_owned()]
        } else {
            bail!(
                "'{}' has neither model.safetensors nor model.safetensors.index.json; sae-onnx reads safetensors checkpoints only",
                dir.display()
            );
        };
        let root = checkpoint_root(dir)?;
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for name in shard_names {
            let path = shard_path(dir, &root, &name, &index_path)?;
            let bytes = map_file(&path)?;
            let st = SafeTensors::deserialize(&bytes)
                .map_err(|e| anyhow::anyhow!("'{}' is not a valid safetensors file: {e}", path.display()))?;
            for (tensor_name, view) in st.tensors() {
                let entry = IndexEntry {
                    file: files.len(),
                    shape: view.shape().to_vec(),
                };
                index.insert(tensor_name, entry);
            }
            files.push(MappedFile { path, bytes });
        }
        Ok(Self { files, index })
    }

    /// Tensor `name` under the first of `prefixes` that has it, without reading it.
    pub fn find(&self, prefixes: &[&str], name: &str) -> Option<TensorInfo> {
        prefixes.iter().find_map(|prefix| {
            let full = format!("{prefix}{name}");
            let entry = self.index.get(&full)?;
            Some(TensorInfo {
                name: full,
                shape: entry.shape.clone(),
                file: self.files[entry.file].path.clone(),
            })
        })
    }

    /// The checkpoint's safetensors files, for messages.
    pub fn file_names(&self) -> String {
        let names: Vec<String> = self
            .files
            .iter()
            .map(|f| format!("'{}'", f.path.display()))
            .collect();
        names.join(", ")
    }

    /// Whether the checkpoint has a tensor called `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// The tensor `name`, trying each prefix in turn (checkpoints nest the text model differently:
    /// `model.`, `model.language_model.`, `language_model.model.`).
    pub fn get(&self, prefixes: &[&str], name: &str) -> Result<WeightView> {
        for prefix in prefixes {
            let full = format!("{prefix}{name}");
            if let Some(entry) = self.index.get(&full) {
                return self.read(entry.file, &full);
            }
        }
        bail!(
            "the checkpoint ({}) has no tensor '{name}' (looked for it under {:?}); is this the right architecture?",
            self.file_names(),
            prefixes
        )
    }

    fn read(&self, file: usize, name: &str) -> Result<WeightView> {
        let MappedFile { path, bytes } = &self.files[file];
        let st = SafeTensors::deserialize(bytes).expect("validated when opened");
        let view = st
            .tensor(name)
            .with_context(|| format!("'{}': tensor '{name}'", path.display()))?;
        let dtype = match view.dtype() {
            Dtype::F32 => DataType::Float,
            Dtype::F16 => DataType::Float16,
            Dtype::BF16 => DataType::Bfloat16,
            other => bail!(
                "'{}': tensor '{name}' is {other:?}; sae-onnx reads f32, f16 and bf16 weights",
                path.display()
            ),
        };
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        Ok(WeightView {
            name: name.to_owned(),
            source: format!("'{}'", path.display()),
            dtype,
            shape: view.shape().to_vec(),
            data: bytes.slice(start..start + view.data().len()),
        })
    }

    /// Total bytes of all tensors, for progress bars.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes.len() as u64).sum()
    }
}

/// The folder a checkpoint's files must resolve into: the checkpoint folder itself, or for a
/// Hugging Face cache snapshot (`models--org--name/snapshots/<commit>`), whose files are symlinks
/// into `../../blobs`, the repository's cache folder.
fn checkpoint_root(dir: &Path) -> Result<PathBuf> {
    let dir = dir
        .canonicalize()
        .with_context(|| format!("cannot read the checkpoint folder '{}'", dir.display()))?;
    let repo = dir
        .parent()
        .filter(|p| p.file_name().is_some_and(|n| n == "snapshots"))
        .and_then(Path::parent)
        .filter(|r| {
            r.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("models--"))
        });
    Ok(repo.map_or_else(|| dir.clone(), Path::to_path_buf))
}

/// `dir/name` for a shard the index names, refused unless `name` is a plain relative path and
/// the file, links followed, lies inside `root`: an index (downloaded with the checkpoint) must
/// not make export read arbitrary files.
fn shard_path(dir: &Path, root: &Path, name: &str, index_path: &Path) -> Result<PathBuf> {
    let plain = !name.is_empty()
        && Path::new(name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        bail!(
            "'{}' names the shard '{}', which is not a file inside the checkpoint folder (absolute paths and '..' are refused)",
            index_path.display(),
            crate::files::printable(name, 200)
        );
    }
    let path = dir.join(name);
    if let Ok(target) = path.canonicalize()
        && !target.starts_with(root)
    {
        bail!(
            "'{}' is a link to '{}', outside the checkpoint folder '{}'; refusing to read it (copy the file into the folder)",
            path.display(),
            target.display(),
            root.display()
        );
    }
    Ok(path)
}

/// The index of the first NaN or infinity among little-endian float elements of `dtype` (an
/// all-ones exponent), if any. Other types have none.
pub fn first_non_finite(bytes: &[u8], dtype: DataType) -> Option<usize> {
    match dtype {
        DataType::Float => bytes
            .chunks_exact(4)
            .position(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) & 0x7f80_0000 == 0x7f80_0000),
        DataType::Float16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7c00 == 0x7c00),
        DataType::Bfloat16 => bytes
            .chunks_exact(2)
            .position(|c| u16::from_le_bytes([c[0], c[1]]) & 0x7f80 == 0x7f80),
        _ => None,
    }
}

/// Converts little-endian elements between float types, chunk by chunk into `out`.
pub fn convert(data: &[u8], from: DataType, to: DataType, out: &mut Vec<u8>) -> Result<()> {
    use half::{bf16, f16};
    let width = |t| match t {
        DataType::Float => Ok(4),
        DataType::Float16 | DataType::Bfloat16 => Ok(2),
        other => bail!("cannot convert {other:?} weights"),
    };
    let (wf, wt) = (width(from)?, width(to)?);
    out.clear();
    out.reserve(data.len() / wf * wt);
    for chunk in data.chunks_exact(wf) {
        let value: f32 = match from {
            DataType::Float => f32::from_le_bytes(chunk.try_into().expect("4 bytes")),
            DataType::Float16 => f16::from_le_bytes([chunk[0], chunk[1]]).to_f32(),
            _ => bf16::from_le_bytes([chunk[0], chunk[1]]).to_f32(),
        };
        match to {
            DataType::Float => out.extend_from_slice(&value.to_le_bytes()),
            DataType::Float16 => out.extend_from_slice(&f16::from_f32(value).to_le_bytes()),
            _ => out.extend_from_slice(&bf16::from_f32(value).to_le_bytes()),
        }
    }
    Ok(())
}
