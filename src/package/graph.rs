//! The graph as a package holds it: its data files under the names the runtime looks for
//! (hard-linked when possible, else copied), and a sweepable model's coefficient inputs in a
//! layout runtimes can feed.
//!
//! Why the coefficients change: `patch --sweepable` makes each `steer.coeff.<k>` an initializer
//! that is also a graph input (ONNX's "default value"). ONNX Runtime leaves such inputs out of
//! `get_inputs()` and warns for every session ("Initializer steer.coeff.0 appears in graph
//! inputs and will not be treated as constant value/weight"), and onnxruntime-genai, which
//! feeds only the inputs the session lists, never overrides them: the coefficient has no effect
//! there. A package therefore holds either plain inputs (no initializer: listed, fed, no
//! warning) or plain constants (no input), see [`Coefficients`].

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::Coefficients;
use crate::contract::sweep::{COEFFICIENT_INPUTS, coefficient_inputs};
use crate::onnx::datafile::RECORDS_KEY;
use crate::onnx::external::{self, ExternalData};
use crate::onnx::tensor::for_each_tensor_mut;
use crate::onnx::{ExternalDataPolicy, Model, SaveOptions};

/// How the weights reached the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Hard links to the model's data files: no bytes copied.
    Linked,
    /// Copies (the package is on another filesystem).
    Copied,
    /// The graph holds its weights inline.
    Inline,
}

#[derive(Debug, Clone)]
pub struct PackagedGraph {
    /// Files written, relative to the package folder.
    pub files: Vec<String>,
    pub placement: Placement,
    /// The inputs a caller must feed, with the steer.csv value of each.
    pub coefficient_inputs: Vec<(String, f64)>,
}

/// Writes `model` into `package` as `graph_path` (relative, e.g. `onnx/model.onnx`) with its
/// data files named `data_name` (then `data_name_1`, ...) beside it.
pub fn write(
    model: &Model,
    coefficients: Coefficients,
    package: &Path,
    graph_path: &str,
    data_name: &str,
) -> Result<PackagedGraph> {
    let graph_file = package.join(graph_path);
    let graph_dir = crate::files::parent_dir(&graph_file).to_path_buf();
    fs::create_dir_all(&graph_dir).with_context(|| format!("cannot create '{}'", graph_dir.display()))?;
    let mut packaged = Model::in_dir(model.proto.clone(), graph_dir.clone());
    let coefficient_inputs = rewrite_coefficients(&mut packaged, coefficients)?;

    let relative_dir = Path::new(graph_path).parent().unwrap_or(Path::new(""));
    let mut files = Vec::new();
    let mut placement = Placement::Inline;
    let locations: BTreeSet<String> = model.external_locations()?;
    for (i, location) in locations.iter().enumerate() {
        let name = if i == 0 {
            data_name.to_owned()
        } else {
            format!("{data_name}_{i}")
        };
        let source = external::resolve(&model.dir, location)?;
        let target = graph_dir.join(&name);
        let linked = fs::hard_link(&source, &target).is_ok();
        if !linked {
            fs::copy(&source, &target)
                .with_context(|| format!("cannot copy '{}' to '{}'", source.display(), target.display()))?;
        }
        placement = if linked && placement != Placement::Copied {
            Placement::Linked
        } else {
            Placement::Copied
        };
        rename_location(&mut packaged, location, &name)?;
        files.push(relative_dir.join(&name).display().to_string());
    }
    packaged.save(
        &graph_file,
        &SaveOptions {
            external: ExternalDataPolicy::Never,
            progress: false,
        },
    )?;
    files.insert(0, graph_path.to_owned());
    Ok(PackagedGraph {
        files,
        placement,
        coefficient_inputs,
    })
}

/// Applies `coefficients` to a sweepable model's `steer.coeff.<k>` inputs; returns those left
/// for the caller to feed.
fn rewrite_coefficients(model: &mut Model, coefficients: Coefficients) -> Result<Vec<(String, f64)>> {
    let records = coefficient_inputs(&model.proto)?;
    let names: BTreeSet<&str> = records.iter().map(|r| r.input.as_str()).collect();
    let graph = model.graph_mut();
    match coefficients {
        Coefficients::Inputs => {
            graph.initializer.retain(|t| !names.contains(t.name()));
            Ok(records.iter().map(|r| (r.input.clone(), r.default)).collect())
        }
        Coefficients::Fixed => {
            graph.input.retain(|i| !names.contains(i.name()));
            model
                .proto
                .metadata_props
                .retain(|e| e.key() != COEFFICIENT_INPUTS);
            Ok(Vec::new())
        }
    }
}

/// Points every tensor stored in `from` at `to`, and moves the graph's record of the file.
fn rename_location(model: &mut Model, from: &str, to: &str) -> Result<()> {
    for_each_tensor_mut(model.graph_mut(), &mut |t| {
        if let Some(mut record) = ExternalData::of(t)?
            && record.location == from
        {
            record.location = to.to_owned();
            record.apply_to(t);
        }
        Ok(())
    })?;
    let mut records = model.data_records()?;
    if let Some(record) = records.remove(from) {
        records.insert(to.to_owned(), record);
        model.set_metadata(RECORDS_KEY, &serde_json::to_string(&records)?);
    }
    Ok(())
}
