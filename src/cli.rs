//! Command-line interface: clap commands turned into validated calls into the library.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::export::{self, ExportOptions};
use crate::inspect;
use crate::onnx::DataType;

/// Export Gemma models to ONNX, steer them with SAE features, and measure what steering does.
#[derive(Debug, Parser)]
#[command(name = "sae-onnx", version, about, long_about = None, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,

    /// ONNX Runtime library (libonnxruntime.so.1.31.x) or the folder holding it. Default: the
    /// ORT_DYLIB_PATH variable, a copy beside this executable, the installed Python onnxruntime
    /// or onnxruntime-gpu package, then the copy fetched by scripts/fetch-ort.sh.
    #[arg(long, global = true, value_name = "PATH")]
    pub ort_lib: Option<PathBuf>,

    /// More detail on stderr (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// No progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

const EXAMPLES: &str = "Examples:
  sae-onnx export google/gemma-2-2b -o gemma-2-2b.onnx
  sae-onnx inspect model.onnx            what a model holds: I/O, opsets, weights, metadata
  sae-onnx inspect model.onnx --json     the same as JSON, for scripts";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export a Gemma checkpoint (Hugging Face id or local folder) to ONNX: pure Rust, no torch.
    /// Weights stream into `OUT.data` beside the model; residual-stream tensors carry their
    /// TransformerLens hook names (blocks.L.hook_resid_post, ...) so `patch` can find them.
    Export(ExportArgs),
    /// Show what an ONNX model holds: IR and opsets, inputs and outputs, weights, external data
    /// files, metadata, and the hook points and steering it carries.
    Inspect(InspectArgs),
}

#[derive(Debug, clap::Args)]
#[command(after_help = "Examples:
  sae-onnx export google/gemma-2-2b -o gemma-2-2b.onnx
  sae-onnx export models/tiny-gemma2 -o tiny.onnx --dtype f32
  HF_HUB_OFFLINE=1 sae-onnx export google/gemma-2-2b -o g.onnx   (from the local HF cache only)")]
pub struct ExportArgs {
    /// Hugging Face model id (org/name, fetched into the HF cache; HF_TOKEN for gated models) or
    /// a folder with config.json and *.safetensors.
    pub model: String,
    /// The .onnx file to write (its weights go to OUT.data beside it).
    #[arg(short, long, value_name = "OUT.onnx")]
    pub output: PathBuf,
    /// Weight and activation type. Norms, softmax and logits are float32 regardless, as in
    /// transformers. f16/bf16 need a GPU execution provider: ONNX Runtime's CPU kernels are f32.
    #[arg(long, value_enum, default_value_t = Dtype::F32)]
    pub dtype: Dtype,
    /// Branch, tag or commit of a hub model.
    #[arg(long, default_value = "main")]
    pub revision: String,
    /// Replace OUT.onnx if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl From<Dtype> for DataType {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => DataType::Float,
            Dtype::F16 => DataType::Float16,
            Dtype::Bf16 => DataType::Bfloat16,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// The .onnx file.
    pub model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Cli {
    pub fn init_logging(&self) {
        let level = match self.verbose {
            0 => tracing::Level::WARN,
            1 => tracing::Level::DEBUG,
            _ => tracing::Level::TRACE,
        };
        tracing_subscriber::fmt()
            .with_max_level(level)
            .with_writer(std::io::stderr)
            .with_target(false)
            .without_time()
            .init();
    }

    /// Whether to draw progress bars: on a terminal, unless --quiet.
    pub fn show_progress(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    pub fn run(&self) -> Result<()> {
        match &self.command {
            Command::Export(args) => {
                let options = ExportOptions {
                    dtype: args.dtype.into(),
                    revision: args.revision.clone(),
                    force: args.force,
                    progress: self.show_progress(),
                };
                let report = export::export(&args.model, &args.output, &options)?;
                let data = report.save.data_file.as_ref().map_or(0, |(_, n)| *n);
                eprintln!(
                    "exported {} ({} layers, {:.1}M parameters, {} nodes) to {} + {:.1} MiB of weights in {:.1}s",
                    report.architecture.hf_name(),
                    report.layers,
                    report.parameters as f64 / 1e6,
                    report.nodes,
                    args.output.display(),
                    data as f64 / (1 << 20) as f64,
                    report.seconds
                );
                Ok(())
            }
            Command::Inspect(args) => {
                let report = inspect::inspect(&args.model)?;
                if args.json {
                    println!("{}", serde_json::to_string_pretty(&report)?);
                } else {
                    print!("{report}");
                }
                Ok(())
            }
        }
    }
}
