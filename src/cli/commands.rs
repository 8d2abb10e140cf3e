//! Each command: call the library, print what it returns.

use std::path::PathBuf;

use imgbuild::acquire::fetch::{self, Fetcher};
use imgbuild::acquire::lock::{self, LockOptions};
use imgbuild::input::Session;
use imgbuild::input::inventory::Inventory;
use imgbuild::input::lint::Severity;
use imgbuild::input::recipe::{Recipe, Trust};
use imgbuild::output::cloud_init::Provider;
use imgbuild::output::cloud_init::payload::Payload;
use imgbuild::output::{Written, format};
use imgbuild::store::cache::Cache;

use crate::cli::args::{
    AirgapCommand, CacheCommand, Cli, Command, DownloadArgs, InspectArgs, PkiCommand,
};
use crate::cli::report::Reporter;

/// Run the parsed command; what it prints goes to stdout, progress to `reporter`.
pub fn run(cli: &Cli, reporter: &Reporter) -> imgbuild::Result<()> {
    let session = cli.global.session()?;
    match &cli.command {
        Command::Controller(args) => {
            let opts = args.options()?;
            let written = fetching(&session, &args.download, reporter, || {
                imgbuild::build::controller(&session, &opts, reporter)
            })?;
            print_shipped(&written);
            Ok(())
        }
        Command::CloudInit(args) => {
            let opts = args.options()?;
            for w in imgbuild::build::cloud_init(&session, &opts, reporter)? {
                match &opts.cloud_init.payload {
                    None => println!("{}", w.artifact.display()),
                    Some(p) => print_payload_build(&w, p, opts.cloud_init.provider),
                }
            }
            Ok(())
        }
        Command::Ignition(args) => {
            let opts = args.options()?;
            // The binaries' pinned digests come from the cache, as their bytes do for `controller`.
            let written = fetching(&session, &args.download, reporter, || {
                imgbuild::build::ignition(&session, &opts, reporter)
            })?;
            for w in written {
                println!("{}", w.artifact.display());
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
        Command::Fetch(args) => {
            let summary = fetch::fetch_inventory(&session, &args.options(), reporter)?;
            for idx in summary.downloaded.iter().chain(&summary.present) {
                println!("{}\t{}\t{}", idx.file, idx.pin, trust_name(idx.trust));
            }
            Ok(())
        }
        Command::Lock(args) => {
            let cache = Cache::open(&session.cache_dir)?;
            let arches = if args.arch.is_empty() {
                vec![
                    Inventory::load(&session.inventory)
                        .map(|i| i.cluster.arch)
                        .unwrap_or_else(|_| "amd64".into()),
                ]
            } else {
                args.arch.clone()
            };
            let opts = LockOptions {
                version: args.version.clone(),
                etcd_version: args.etcd_version.clone(),
                arches,
                out_dir: args.out.clone().unwrap_or_else(|| cache.locks_dir()),
                force: args.force,
            };
            let fetcher = Fetcher::new(&cache, &args.fetch.options())?;
            let locked = lock::lock(&fetcher, &session.assets, &opts, reporter)?;
            for (bin, arch, pin) in &locked.digests {
                println!("{bin}\t{arch}\t{pin}\tpublisher-checksum");
            }
            println!("{}", locked.path.display());
            Ok(())
        }
        Command::Airgap(AirgapCommand::Export {
            out,
            offline,
            fetch,
        }) => {
            let opts = fetch.options();
            let exported = imgbuild::acquire::airgap::export(
                &session,
                out,
                (!offline).then_some(&opts),
                reporter,
            )?;
            println!(
                "{}\t{} artifact(s)\t{} bytes\tsha256:{}",
                exported.path.display(),
                exported.artifacts,
                exported.size,
                exported.sha256
            );
            Ok(())
        }
        Command::Airgap(AirgapCommand::Import {
            bundle,
            allow_layouts,
        }) => {
            let opts = imgbuild::acquire::airgap::ImportOptions {
                allow_layouts: *allow_layouts,
            };
            let imported = imgbuild::acquire::airgap::import(&session, bundle, opts, reporter)?;
            for line in &imported.cached {
                println!("{line}");
            }
            for lock in &imported.locks {
                println!("installed {}", lock.display());
            }
            Ok(())
        }
        Command::Cache(CacheCommand::Verify) => {
            let cache = Cache::open(&session.cache_dir)?;
            let report = cache.verify(reporter)?;
            for line in &report.dropped {
                println!("removed {line}");
            }
            println!(
                "{} file(s), {} bytes verified; {} removed",
                report.checked,
                report.bytes,
                report.dropped.len()
            );
            if report.dropped.is_empty() {
                Ok(())
            } else {
                let artifacts = report.dropped.len() - report.segments_dropped;
                let what = match (artifacts, report.segments_dropped) {
                    (0, n) => format!(
                        "{n} damaged derived segment(s), now removed; the next build makes them again"
                    ),
                    (n, 0) => format!(
                        "{n} corrupt or incomplete entr{}, now removed; fetch or import them again",
                        if n == 1 { "y" } else { "ies" }
                    ),
                    (n, m) => format!(
                        "{n} corrupt or incomplete entr{} (fetch or import them again) and {m} damaged derived segment(s) (the next build makes them again), now removed",
                        if n == 1 { "y" } else { "ies" }
                    ),
                };
                Err(imgbuild::Error::integrity(format!("the cache held {what}")))
            }
        }
        Command::Cache(CacheCommand::Gc { unused }) => {
            let cache = Cache::open(&session.cache_dir)?;
            let report = if *unused {
                let recipes = all_recipes(&session)?;
                let pinned = |idx: &imgbuild::store::cache::ArtifactIndex| {
                    imgbuild::store::cache::parse_pin(&idx.pin).is_some_and(|(alg, hex)| {
                        recipes
                            .iter()
                            .any(|r| r.artifact_by_digest(alg, hex).is_some())
                    })
                };
                cache.gc(Some(&pinned))?
            } else {
                cache.gc(None)?
            };
            for (path, _) in &report.removed {
                println!("removed {path}");
            }
            let freed: u64 = report.removed.iter().map(|(_, s)| s).sum();
            println!(
                "{} file(s) removed, {freed} bytes freed",
                report.removed.len()
            );
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
        Command::Lint { node, os } => {
            let os = crate::cli::config::os_name(os)?;
            let findings = imgbuild::build::lint(&session, node, &os)?;
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
                    "{}\t{}\t{}\t{} bytes",
                    idx.file,
                    idx.pin,
                    trust_name(idx.trust),
                    idx.size
                );
            }
            let (n, bytes) = cache.segments_usage()?;
            if n > 0 {
                let message = format!(
                    "also {n} derived segment(s) (compressed binaries reused by builds), {:.1} MB; `imgbuild cache gc --unused` removes them",
                    bytes as f64 / 1e6
                );
                imgbuild::progress::Progress::event(
                    reporter,
                    imgbuild::progress::Event::Notice { message: &message },
                );
            }
            Ok(())
        }
    }
}

/// Run `build`, which reads only the cache. When it finds an artifact missing
/// (after its inventory and PKI checks), fetch what the recipe needs and build
/// again, unless offline.
fn fetching<T>(
    session: &Session,
    download: &DownloadArgs,
    reporter: &Reporter,
    build: impl Fn() -> imgbuild::Result<T>,
) -> imgbuild::Result<T> {
    match build() {
        Err(e) if e.kind == imgbuild::Kind::Missing && !download.offline => {
            fetch::fetch_inventory(session, &download.fetch.options(), reporter)?;
            build()
        }
        other => other,
    }
}

/// One line per entry; then, with --verify, every difference from the manifest.
/// Everything read from the output is printed with its control characters
/// escaped (`printable`): a hostile name cannot drive the terminal.
fn inspect(args: &InspectArgs) -> imgbuild::Result<()> {
    use imgbuild::error::printable;
    use imgbuild::inspect;
    let found = inspect::inspect(&args.artifacts)?;
    if let Some(p) = &found.payload {
        // The URL without its query, which may be a signature.
        let from = p.url.as_deref().map(|u| u.split('?').next().unwrap_or(u));
        let from = from
            .map(|u| format!(", fetched from {}", printable(u)))
            .unwrap_or_default();
        eprintln!(
            "payload: {} names sha256 {}{from}",
            printable(&p.what),
            printable(&p.sha256)
        );
    }
    for e in &found.entries {
        let size = e.size.map_or("-".to_string(), |s| s.to_string());
        let sha = printable(e.sha256.as_deref().unwrap_or("-"));
        let extra = match (e.kind, &e.target) {
            ("symlink", Some(t)) => format!(" -> {}", printable(t)),
            (_, Some(src)) => format!(" (from {})", printable(src)),
            _ => String::new(),
        };
        println!(
            "{:<7} {:04o} {}:{} {size:>10} {sha:<64} {}{extra}",
            e.kind,
            e.mode,
            e.uid,
            e.gid,
            printable(&e.path)
        );
    }
    // Ignition: the units its preset enables.
    for unit in &found.enabled {
        println!("enabled {}", printable(unit));
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
    let manifest = imgbuild::output::manifest::read(&manifest_path)?;
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
        eprintln!("differs: {}", printable(p));
    }
    Err(imgbuild::Error::integrity(format!(
        "{} difference(s) from {}",
        problems.len(),
        manifest_path.display()
    )))
}

fn all_recipes(session: &Session) -> imgbuild::Result<Vec<Recipe>> {
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

fn trust_name(t: Trust) -> String {
    serde_json::to_value(t)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

/// A `--payload-url` build: the folder with the user-data's size, and the
/// payload with where to upload it. The first field is always the path.
fn print_payload_build(w: &Written, p: &Payload, provider: Provider) {
    let dir = w.artifact.parent().unwrap_or(std::path::Path::new(""));
    let size = |name: &str| w.outputs.iter().find(|o| o.name == name).map(|o| o.size);
    let folder = format::cloud_init_dir(w.node_index);
    let user_data = size(&format!("{folder}/user-data")).unwrap_or_default();
    let limit = match provider.limit() {
        Some(l) => format!("the {} limit is {l}", provider.name()),
        None => format!("{}: no limit", provider.name()),
    };
    println!(
        "{}\tuser-data {user_data} bytes ({limit})",
        w.artifact.display()
    );
    let payload = format::payload_name(w.node_index);
    println!(
        "{}\tupload to {}",
        dir.join(&payload).display(),
        p.url_for(w.node_index, &w.node_name)
    );
}

/// Every file to ship, once: a split build's shared file first.
fn print_shipped(written: &[Written]) {
    let mut paths: Vec<PathBuf> = Vec::new();
    for w in written {
        let dir = w.artifact.parent().unwrap_or(std::path::Path::new(""));
        let mut mine: Vec<_> = w.outputs.iter().map(|o| dir.join(&o.name)).collect();
        if mine.is_empty() {
            mine.push(w.artifact.clone());
        }
        for p in mine {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
    }
    paths.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| format::is_shared_half(&n.to_string_lossy()))
    });
    for p in paths {
        println!("{}", p.display());
    }
}
