//! `sae-onnx inspect`: what a model holds, as text for people and JSON for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::contract::decoder_map::DecoderMap;
use crate::contract::hook_site::{HookSite, locate, locate_in};
use crate::contract::meta;
use crate::contract::meta::STEERING;
use crate::hook::{HookPoint, Site};
use crate::onnx::datafile::{DataRecord, RECORDS_KEY};
use crate::onnx::external::{self, ExternalData};
use crate::onnx::pb::{GraphProto, ValueInfoProto, tensor_shape_proto::dimension, type_proto};
use crate::onnx::tensor::{dtype_name, for_each_tensor};
use crate::onnx::{DataType, Model};

#[derive(Debug, Serialize)]
pub struct Report {
    pub path: String,
    pub file_bytes: u64,
    pub ir_version: i64,
    pub producer: String,
    pub opsets: Vec<Opset>,
    pub inputs: Vec<Io>,
    pub outputs: Vec<Io>,
    pub nodes: usize,
    pub op_types: BTreeMap<String, usize>,
    pub initializers: usize,
    pub parameters: u64,
    pub weight_bytes: u64,
    pub external_data: Vec<ExternalFile>,
    pub metadata: BTreeMap<String, String>,
    /// Decoder layers: from our metadata, else from the recovered decoder.
    pub layers: Option<usize>,
    /// Hook points found, with the tensor each one steers.
    pub hooks: Vec<HookFound>,
    /// For graphs other than our exports: the decoder recovered from the data flow, or why not.
    pub decoder: Option<DecoderReport>,
    /// The steering patches applied, oldest first (`sae_onnx.steering`).
    pub steering: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct HookFound {
    pub hook: String,
    pub tensor: String,
    /// Where a fused norm adds the residual sum, the one reader steered: `input K of node N`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reader: Option<String>,
}

/// The decoder `contract::decoder_map` recovered from a foreign graph.
#[derive(Debug, Serialize)]
pub struct DecoderReport {
    /// `None` when it could not be recovered; `error` says why.
    pub layers: Option<usize>,
    pub embedding: Option<String>,
    pub stream_start: Option<String>,
    pub final_norm: Option<String>,
    pub lm_head: Option<String>,
    /// Hooks of the recovered layers that could not be found, each with the reason.
    pub missing: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Opset {
    pub domain: String,
    pub version: i64,
}

#[derive(Debug, Serialize)]
pub struct Io {
    pub name: String,
    pub dtype: String,
    /// Each dimension: a number, or the symbolic name (`batch`, `sequence`).
    pub shape: Vec<ShapeDim>,
}

/// One dimension of an input or output: in JSON a number, a string (symbolic) or `null` (unknown).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ShapeDim {
    Fixed(i64),
    Symbolic(String),
    Unknown,
}

impl fmt::Display for ShapeDim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Fixed(v) => write!(f, "{v}"),
            Self::Symbolic(p) => f.write_str(p),
            Self::Unknown => f.write_str("?"),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ExternalFile {
    pub location: String,
    pub file_bytes: u64,
    pub tensors: usize,
    pub referenced_bytes: u64,
    /// What the graph recorded about the file when it was saved (size, content hash); `None` for
    /// graphs of other tools. Loading has checked the file against it.
    pub record: Option<DataRecord>,
}

pub fn inspect(path: &Path) -> Result<Report> {
    let model = Model::load(path)?;
    let (layers, hooks, decoder) = hooks_and_decoder(&model);
    let graph = model.graph();
    let mut op_types = BTreeMap::new();
    let nodes = count_nodes(graph, &mut op_types);
    let mut parameters = 0;
    let mut weight_bytes = 0;
    let mut files: BTreeMap<String, ExternalFile> = BTreeMap::new();
    let records = model.data_records()?;
    for t in &graph.initializer {
        parameters += t.numel();
    }
    for_each_tensor(graph, &mut |t| {
        let bytes = t.byte_len().unwrap_or(0);
        weight_bytes += bytes;
        if let Some(record) = ExternalData::of(t)? {
            let file = files
                .entry(record.location.clone())
                .or_insert_with(|| ExternalFile {
                    location: record.location.clone(),
                    file_bytes: external::resolve(&model.dir, &record.location)
                        .ok()
                        .and_then(|p| std::fs::metadata(p).ok())
                        .map_or(0, |m| m.len()),
                    tensors: 0,
                    referenced_bytes: 0,
                    record: records.get(&record.location).cloned(),
                });
            file.tensors += 1;
            file.referenced_bytes += record.length.unwrap_or(bytes);
        }
        Ok(())
    })?;
    Ok(Report {
        path: path.display().to_string(),
        file_bytes: std::fs::metadata(path)
            .with_context(|| format!("cannot read '{}'", path.display()))?
            .len(),
        ir_version: model.proto.ir_version(),
        producer: format!(
            "{} {}",
            model.proto.producer_name(),
            model.proto.producer_version()
        )
        .trim()
        .to_owned(),
        opsets: model
            .proto
            .opset_import
            .iter()
            .map(|o| Opset {
                domain: o.domain().to_owned(),
                version: o.version(),
            })
            .collect(),
        inputs: graph
            .input
            .iter()
            .filter(|v| !graph.initializer.iter().any(|t| t.name() == v.name()))
            .map(io)
            .collect(),
        outputs: graph.output.iter().map(io).collect(),
        nodes,
        op_types,
        initializers: graph.initializer.len(),
        parameters,
        weight_bytes,
        external_data: files.into_values().collect(),
        metadata: model
            .proto
            .metadata_props
            .iter()
            .filter(|e| ![STEERING, meta::HOOKS, RECORDS_KEY].contains(&e.key()))
            .map(|e| (e.key().to_owned(), e.value().to_owned()))
            .collect(),
        layers,
        hooks,
        decoder,
        steering: model
            .metadata(STEERING)
            .and_then(|s| serde_json::from_str(s).ok())
            .unwrap_or_default(),
    })
}

/// Our exports list their hooks; other graphs are mapped from their data flow.
fn hooks_and_decoder(model: &Model) -> (Option<usize>, Vec<HookFound>, Option<DecoderReport>) {
    if model.metadata(meta::FORMAT).is_some() {
        let layers = model.metadata(meta::NUM_LAYERS).and_then(|v| v.parse().ok());
        let names: Vec<String> = model
            .metadata(meta::HOOKS)
            .and_then(|h| serde_json::from_str(h).ok())
            .unwrap_or_default();
        let hooks = names
            .into_iter()
            .filter_map(|name| {
                let site = locate(model, HookPoint::parse(&name).ok()?).ok()?;
                Some(found(name, site))
            })
            .collect();
        return (layers, hooks, None);
    }
    match DecoderMap::recover(model) {
        Ok(map) => {
            let (hooks, missing) = decoder_hooks(model, &map);
            let report = DecoderReport {
                layers: Some(map.layers.len()),
                embedding: Some(map.embed.clone()),
                stream_start: Some(map.stream_start.clone()),
                final_norm: Some(map.final_norm.clone()),
                lm_head: Some(node_label(model, map.head)),
                missing,
                error: None,
            };
            (Some(map.layers.len()), hooks, Some(report))
        }
        Err(e) => {
            let report = DecoderReport {
                layers: None,
                embedding: None,
                stream_start: None,
                final_norm: None,
                lm_head: None,
                missing: Vec::new(),
                error: Some(format!("{e:#}")),
            };
            (None, Vec::new(), Some(report))
        }
    }
}

/// Every hook of the recovered layers: those found, and those not with the reason.
fn decoder_hooks(model: &Model, map: &DecoderMap) -> (Vec<HookFound>, Vec<String>) {
    let hooks = std::iter::once(HookPoint::embed()).chain((0..map.layers.len()).flat_map(|l| {
        Site::ALL
            .into_iter()
            .filter(|s| *s != Site::Embed)
            .map(move |s| HookPoint::new(l, s))
    }));
    let mut found_hooks = Vec::new();
    let mut missing = Vec::new();
    for hook in hooks {
        match locate_in(model, map, hook) {
            Ok(site) => found_hooks.push(found(hook.to_string(), site)),
            Err(e) => missing.push(format!("{hook}: {e:#}")),
        }
    }
    (found_hooks, missing)
}

fn found(hook: String, site: HookSite) -> HookFound {
    HookFound {
        hook,
        tensor: site.tensor,
        reader: site
            .only_reader
            .map(|(node, input)| format!("input {input} of node {node}")),
    }
}

fn node_label(model: &Model, node: usize) -> String {
    let n = &model.graph().node[node];
    format!("{} ({})", n.name(), n.op_type())
}

fn count_nodes(graph: &GraphProto, op_types: &mut BTreeMap<String, usize>) -> usize {
    let mut n = 0;
    for node in &graph.node {
        n += 1;
        let op = match node.domain() {
            "" | "ai.onnx" => node.op_type().to_owned(),
            domain => format!("{domain}.{}", node.op_type()),
        };
        *op_types.entry(op).or_default() += 1;
        for attr in &node.attribute {
            for g in attr.g.iter().chain(attr.graphs.iter()) {
                n += count_nodes(g, op_types);
            }
        }
    }
    n
}

fn io(value: &ValueInfoProto) -> Io {
    let (dtype, shape) = match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(type_proto::Value::TensorType(t)) => {
            let dtype = DataType::try_from(t.elem_type())
                .map_or("unknown", dtype_name)
                .to_owned();
            let shape = t
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match &d.value {
                            Some(dimension::Value::DimValue(v)) => ShapeDim::Fixed(*v),
                            Some(dimension::Value::DimParam(p)) => ShapeDim::Symbolic(p.clone()),
                            None => ShapeDim::Unknown,
                        })
                        .collect()
                })
                .unwrap_or_default();
            (dtype, shape)
        }
        Some(_) => ("non-tensor".to_owned(), Vec::new()),
        None => ("unknown".to_owned(), Vec::new()),
    };
    Io {
        name: value.name().to_owned(),
        dtype,
        shape,
    }
}

/// A byte count as `inspect` prints it (1.5 KiB, 3.2 GiB).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn human_count(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.1}K", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.2}B", n as f64 / 1e9),
    }
}

/// Hook lines the text report shows (`--json` lists all): one layer's worth and the embedding.
const HOOKS_SHOWN: usize = 8;

impl DecoderReport {
    fn write(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(error) = &self.error {
            writeln!(
                f,
                "decoder: not recovered from the data flow, so no hooks can be steered:"
            )?;
            for line in error.lines() {
                writeln!(f, "  {line}")?;
            }
            return Ok(());
        }
        let show = |v: &Option<String>| v.clone().unwrap_or_default();
        writeln!(f, "decoder (recovered from the data flow, names unused):")?;
        writeln!(f, "  embedding     {}", show(&self.embedding))?;
        writeln!(f, "  stream start  {}", show(&self.stream_start))?;
        writeln!(f, "  final norm    {}", show(&self.final_norm))?;
        writeln!(f, "  LM head       {}", show(&self.lm_head))?;
        for m in &self.missing {
            writeln!(f, "  not found: {m}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_header(f)?;
        self.write_io(f)?;
        self.write_graph(f)?;
        self.write_external_data(f)?;
        self.write_hooks(f)?;
        self.write_steering(f)?;
        self.write_metadata(f)
    }
}

impl Report {
    /// The file, its size, IR version, opsets and producer.
    fn write_header(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} ({})", self.path, human_bytes(self.file_bytes))?;
        let opsets: Vec<String> = self
            .opsets
            .iter()
            .map(|o| {
                format!(
                    "{}={}",
                    if o.domain.is_empty() { "ai.onnx" } else { &o.domain },
                    o.version
                )
            })
            .collect();
        writeln!(
            f,
            "  IR version {}, opsets {}, producer '{}'",
            self.ir_version,
            opsets.join(" "),
            self.producer
        )?;
        Ok(())
    }

    /// The graph's inputs and outputs with their types and shapes.
    fn write_io(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (title, ios) in [("inputs", &self.inputs), ("outputs", &self.outputs)] {
            writeln!(f, "{title}:")?;
            for io in ios {
                let shape: Vec<String> = io.shape.iter().map(ToString::to_string).collect();
                writeln!(f, "  {:<24} {:<9} [{}]", io.name, io.dtype, shape.join(", "))?;
            }
        }
        Ok(())
    }

    /// Node counts by operator, parameters and weight bytes.
    fn write_graph(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ops: Vec<(&String, &usize)> = self.op_types.iter().collect();
        ops.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let ops: Vec<String> = ops.iter().map(|(op, n)| format!("{op} {n}")).collect();
        writeln!(f, "graph: {} nodes ({})", self.nodes, ops.join(", "))?;
        writeln!(
            f,
            "weights: {} parameters in {} initializers, {}",
            human_count(self.parameters),
            self.initializers,
            human_bytes(self.weight_bytes)
        )?;
        Ok(())
    }

    /// Each data file and whether it matches the graph's record of it.
    fn write_external_data(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.external_data.is_empty() {
            writeln!(f, "external data:")?;
            for file in &self.external_data {
                writeln!(
                    f,
                    "  {:<24} {} ({} tensors, {} referenced)",
                    file.location,
                    human_bytes(file.file_bytes),
                    file.tensors,
                    human_bytes(file.referenced_bytes)
                )?;
                match &file.record {
                    Some(DataRecord {
                        bytes,
                        xxh3_128: Some(hash),
                    }) => writeln!(
                        f,
                        "    matches the graph's record: {bytes} bytes, content hash {hash}"
                    )?,
                    Some(DataRecord { bytes, .. }) => writeln!(
                        f,
                        "    matches the graph's record: {bytes} bytes (no content hash: not written by sae-onnx)"
                    )?,
                    None => writeln!(
                        f,
                        "    not recorded in the graph (saved by another tool): a rewritten file would go unnoticed"
                    )?,
                }
            }
        }
        Ok(())
    }

    /// The decoder layers and the hook points found (their tensors, unless named after them).
    fn write_hooks(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(decoder) = &self.decoder {
            decoder.write(f)?;
        }
        if let Some(layers) = self.layers {
            let resid_post = self
                .hooks
                .iter()
                .filter(|h| h.hook.ends_with("hook_resid_post"))
                .count();
            writeln!(
                f,
                "decoder layers: {layers}; hook points found: {} ({resid_post} resid_post)",
                self.hooks.len()
            )?;
            let named_after_hooks = self.hooks.iter().all(|h| h.hook == h.tensor);
            if !named_after_hooks {
                for h in self.hooks.iter().take(HOOKS_SHOWN) {
                    let reader = h
                        .reader
                        .as_ref()
                        .map(|r| format!(" (steered at {r})"))
                        .unwrap_or_default();
                    writeln!(f, "  {:<28} -> {}{reader}", h.hook, h.tensor)?;
                }
                if self.hooks.len() > HOOKS_SHOWN {
                    writeln!(
                        f,
                        "  ... {} more (--json lists all)",
                        self.hooks.len() - HOOKS_SHOWN
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The steering patches applied: their CSV rows and SAE files.
    fn write_steering(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.steering.is_empty() {
            writeln!(f, "steering: none")?;
        } else {
            writeln!(
                f,
                "steering ({} patch{}):",
                self.steering.len(),
                if self.steering.len() == 1 { "" } else { "es" }
            )?;
            for patch in &self.steering {
                writeln!(
                    f,
                    "  from {} ({})",
                    patch["csv"].as_str().unwrap_or("?"),
                    patch["tool"].as_str().unwrap_or("?")
                )?;
                for row in patch["rows"].as_array().into_iter().flatten() {
                    // Records older than the positions and normalize columns steer every position, unscaled.
                    let positions = row["positions"].as_str().unwrap_or("all");
                    let normalize = match row["normalize"].as_str() {
                        Some(n) => format!(", normalize {n}"),
                        None => String::new(),
                    };
                    writeln!(
                        f,
                        "    line {:<3} {} latent {} x {} of {} {} at {} (positions {positions}{normalize})  {}",
                        row["line"],
                        row["action"].as_str().unwrap_or(""),
                        row["latent"],
                        row["coefficient"],
                        row["sae"].as_str().unwrap_or(""),
                        row["sae_id"].as_str().unwrap_or(""),
                        row["hook"].as_str().unwrap_or(""),
                        row["description"].as_str().unwrap_or("")
                    )?;
                }
                if let Some(ids) = patch["special_ids"].as_array() {
                    let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                    writeln!(f, "    no_special skips token ids {}", ids.join(", "))?;
                }
                if let Some(input) = patch["prompt_length_input"].as_str() {
                    writeln!(
                        f,
                        "    prompt/generated read the input {input} (int64 [batch], each row's prompt length; \
                         default: all prompt)"
                    )?;
                }
                for sae in patch["saes"].as_array().into_iter().flatten() {
                    let hash = sae["sha256"].as_str().map_or_else(
                        || format!("{} bytes", sae["size"]),
                        |h| format!("sha256 {}", &h[..16.min(h.len())]),
                    );
                    // Records older than prepend_bos have no key: nothing is shown for them.
                    let bos = match sae.get("prepend_bos") {
                        Some(serde_json::Value::Bool(true)) => ", trained with BOS first (prepend_bos)",
                        Some(serde_json::Value::Bool(false)) => ", trained without BOS (prepend_bos false)",
                        Some(_) => ", prepend_bos not stated",
                        None => "",
                    };
                    writeln!(
                        f,
                        "    SAE file {} ({hash}{bos})",
                        sae["file"].as_str().unwrap_or("")
                    )?;
                }
            }
        }
        Ok(())
    }

    /// The metadata entries, long values cut at 200 bytes.
    fn write_metadata(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.metadata.is_empty() {
            writeln!(f, "metadata:")?;
            for (k, v) in &self.metadata {
                let shown = if v.len() > 200 {
                    format!("{}… ({} bytes)", &v[..v.floor_char_boundary(200)], v.len())
                } else {
                    v.clone()
                };
                writeln!(f, "  {k}: {shown}")?;
            }
        }
        Ok(())
    }
}
