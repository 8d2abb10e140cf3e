//! Thin entry point: parse arguments, run the command, map errors to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::args::Cli::parse();
    cli::signals::install();
    let reporter = cli::report::Reporter::new(args.global.quiet);
    let result = cli::commands::run(&args, &reporter);
    reporter.finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Values are escaped where they are quoted; this is the net under them.
            let text = e.to_string();
            let lines: Vec<_> = text.split('\n').map(imgbuild::error::printable).collect();
            eprintln!("error: {}", lines.join("\n"));
            ExitCode::from(e.kind.exit_code())
        }
    }
}
