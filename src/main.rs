//! Thin entry point: parse arguments, call the library, map errors to exit codes.

mod cli;
mod report;

use std::process::ExitCode;

use clap::Parser;

use cli::{CacheCommand, Cli, Command, PkiCommand};
use imgbuild::cache::Cache;
use imgbuild::flags::Severity;
use imgbuild::inventory::Inventory;
use imgbuild::recipe::Recipe;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reporter = report::Reporter::new(cli.global.quiet);
    match run(&cli, &reporter) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.kind.exit_code())
        }
    }
}

fn run(cli: &Cli, reporter: &report::Reporter) -> imgbuild::Result<()> {
    let session = cli.global.session();
    match &cli.command {
        Command::Controller(args) => {
            let built = imgbuild::build::controller(&session, &args.options(), reporter)?;
            for b in built {
                println!("{}", b.artifact.display());
            }
            Ok(())
        }
        Command::CloudInit(args) => {
            let built = imgbuild::build::cloud_init(&session, &args.options()?, reporter)?;
            for b in built {
                println!("{}", b.artifact.display());
            }
            Ok(())
        }
        Command::Inspect(args) => inspect(args),
        Command::Cache(CacheCommand::Import { files }) => {
            let cache = Cache::open(&session.cache_dir)?;
            let recipes = all_recipes(&session)?;
            for f in files {
                let index = cache.import(f, &recipes, reporter)?;
                println!(
                    "{} {} ({} members)",
                    index.pin,
                    index.file,
                    index.members.len()
                );
            }
            Ok(())
        }
        Command::Pki(PkiCommand::Init(args)) => {
            let inv = Inventory::load(&session.inventory)?;
            let report = imgbuild::pki::init(&inv, &args.options(), reporter)?;
            println!("{report}");
            Ok(())
        }
        Command::Pki(PkiCommand::Check) => {
            let inv = Inventory::load(&session.inventory)?;
            let report = imgbuild::pki::check(&inv, std::time::SystemTime::now());
            println!("{report}");
            match report.fits_inventory() {
                true => Ok(()),
                false => Err(imgbuild::Error::input("the PKI does not fit the inventory")),
            }
        }
        Command::Lint { node } => {
            let findings = imgbuild::build::lint(&session, node)?;
            let mut errors = 0;
            for (node, f) in &findings {
                let level = match f.severity {
                    Severity::Error => {
                        errors += 1;
                        "error"
                    }
                    Severity::Warning => "warning",
                    Severity::Notice => "note",
                };
                println!("{level}: node {node}: /{}: {}", f.file, f.message);
            }
            if errors > 0 {
                return Err(imgbuild::Error::input(format!(
                    "{errors} error(s): the configuration does not fit the inventory's Kubernetes version"
                )));
            }
            if !cli.global.quiet {
                eprintln!("lint: no errors ({} warning(s) or note(s))", findings.len());
            }
            Ok(())
        }
        Command::Recipes => {
            for r in all_recipes(&session)? {
                for a in &r.artifacts {
                    let arches: Vec<_> = a.digests.keys().map(String::as_str).collect();
                    println!(
                        "{}\t{}\t{}\t{}\t{:?}\t{}\t{}",
                        r.kubernetes_version,
                        arches.join(","),
                        a.file,
                        a.algorithm.name(),
                        a.trust,
                        a.source,
                        r.origin
                    );
                }
            }
            Ok(())
        }
        Command::Cache(CacheCommand::Ls) => {
            let cache = Cache::open(&session.cache_dir)?;
            for idx in cache.list()? {
                println!(
                    "{}\t{}\t{:?}\t{} bytes",
                    idx.file, idx.pin, idx.trust, idx.size
                );
            }
            Ok(())
        }
    }
}

/// One line per entry; then, with --verify, every difference from the manifest.
fn inspect(args: &cli::InspectArgs) -> imgbuild::Result<()> {
    use imgbuild::inspect;
    let found = inspect::inspect(&args.artifacts)?;
    for e in &found.entries {
        let size = e.size.map_or("-".to_string(), |s| s.to_string());
        let sha = e.sha256.as_deref().unwrap_or("-");
        let extra = match (e.kind, &e.target) {
            ("symlink", Some(t)) => format!(" -> {t}"),
            (_, Some(src)) => format!(" (from {src})"),
            _ => String::new(),
        };
        println!(
            "{:<7} {:04o} {}:{} {size:>10} {sha:<64} {}{extra}",
            e.kind, e.mode, e.uid, e.gid, e.path
        );
    }
    if !args.verify {
        return Ok(());
    }
    let manifest_path = match &args.manifest {
        Some(m) => m.clone(),
        None => inspect::default_manifest(&args.artifacts).ok_or_else(|| {
            imgbuild::Error::input(
                "cannot tell which manifest to verify against: pass --manifest FILE",
            )
        })?,
    };
    let manifest = inspect::read_manifest(&manifest_path)?;
    let problems = inspect::verify(&found, &manifest);
    if problems.is_empty() {
        eprintln!(
            "verified: {} entries match {}",
            found.entries.len(),
            manifest_path.display()
        );
        return Ok(());
    }
    for p in &problems {
        eprintln!("differs: {p}");
    }
    Err(imgbuild::Error::integrity(format!(
        "{} difference(s) from {}",
        problems.len(),
        manifest_path.display()
    )))
}

fn all_recipes(session: &imgbuild::build::Session) -> imgbuild::Result<Vec<Recipe>> {
    session
        .assets
        .recipe_names()?
        .iter()
        .map(|n| {
            let version = n
                .trim_start_matches("kubernetes-")
                .trim_end_matches(".toml");
            Recipe::load(&session.assets, version)
        })
        .collect()
}
