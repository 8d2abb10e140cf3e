//! Thin entry point: parse arguments, run the command, map errors to exit codes.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

fn main() -> ExitCode {
    let args = match cli::args::Cli::try_parse() {
        Ok(args) => args,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) => {
            // clap quotes the value it refuses as it is: shown tamed.
            eprint!("{}", tame(&e.render().to_string(), 400));
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    cli::signals::install();
    let reporter = cli::report::Reporter::new(args.global.quiet);
    let result = cli::commands::run(&args, &reporter);
    reporter.finish();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Values are cut and escaped where they are quoted; this is the net
            // under them (our own messages run to a thousand characters or so).
            eprintln!("error: {}", tame(&e.to_string(), 8000));
            ExitCode::from(e.kind.exit_code())
        }
    }
}

/// A message fit for a terminal: each line's control characters escaped, and
/// a line longer than `max` characters (one quoting a huge value) cut in its
/// middle.
fn tame(text: &str, max: usize) -> String {
    let lines: Vec<String> = text
        .split('\n')
        .map(|line| {
            let line = imgbuild::error::printable(line);
            let n = line.chars().count();
            if n <= max {
                return line.into_owned();
            }
            let head: String = line.chars().take(max / 2).collect();
            let tail: String = line.chars().skip(n - max / 4).collect();
            format!("{head}… ({} characters cut) …{tail}", n - max / 2 - max / 4)
        })
        .collect();
    lines.join("\n")
}
