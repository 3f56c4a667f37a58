//! Command-line interface: clap commands turned into validated calls into the library.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::inspect;

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
  sae-onnx inspect model.onnx            what a model holds: I/O, opsets, weights, metadata
  sae-onnx inspect model.onnx --json     the same as JSON, for scripts";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show what an ONNX model holds: IR and opsets, inputs and outputs, weights, external data
    /// files, metadata, and the hook points and steering it carries.
    Inspect(InspectArgs),
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
