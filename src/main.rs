use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = sae_onnx::cli::Cli::parse();
    cli.init_logging();
    match cli.run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
