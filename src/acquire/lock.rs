//! `imgbuild lock`: a recipe for a version whose digests this repository does
//! not pin, written from the publisher's checksum files.
//!
//! For each controller binary, `<version>/bin/linux/<arch>/<name>.sha512` (else
//! `.sha256`) is read from the download base. Such a digest comes from the same
//! place as the file itself, so it proves the download is intact, not that the
//! server is honest: every artifact of a lock has `trust = "publisher-checksum"`,
//! distinct from the `changelog` pins shipped in `recipes/`, and each build
//! manifest records which trust each of its binaries had.
//!
//! etcd is pinned the same way, from its release's `SHA256SUMS`
//! (`<etcd base>/v<etcd version>/SHA256SUMS`, under `etcd/` on a mirror): the
//! lines of `etcd-v<version>-linux-<arch>.tar.gz`. Which etcd: `--etcd-version`,
//! else the one of the built-in recipe nearest the version (by minor).
//!
//! A lock is an ordinary recipe (`kind = "file"` artifacts for the Kubernetes
//! binaries, a `kind = "tarball"` one for etcd, `layout = "controller"`),
//! written by default to `<cache>/locks/`, which the CLI searches after
//! `--recipes` and before the built-in recipes.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::acquire::fetch::Fetcher;
use crate::error::{Error, Result};
use crate::input::assets::Assets;
use crate::input::recipe::Trust;
use crate::input::recipe::{
    self, Algorithm, Artifact, ArtifactKind, ETCD, Member, Recipe, Version,
};
use crate::progress::{Event, Progress};
use crate::util::atomic;

/// The binaries a controller installs, and where.
pub const BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

/// Where etcd publishes its releases.
pub const ETCD_BASE: &str = "https://github.com/etcd-io/etcd/releases/download";

#[derive(Debug, Clone)]
pub struct LockOptions {
    pub version: String,
    /// The etcd release to pin (`3.6.5` or `v3.6.5`); None: the one of the
    /// built-in recipe nearest `version` (by minor).
    pub etcd_version: Option<String>,
    pub arches: Vec<String>,
    /// Folder the lock is written to.
    pub out_dir: PathBuf,
    /// Write even if a recipe pinned from the changelog exists for the version.
    pub force: bool,
}

#[derive(Debug)]
pub struct Locked {
    pub path: PathBuf,
    /// (binary or file, arch, `algorithm:hex`).
    pub digests: Vec<(String, String, String)>,
    /// The etcd release pinned.
    pub etcd_version: String,
}

pub fn lock(
    fetcher: &Fetcher<'_>,
    assets: &Assets,
    opts: &LockOptions,
    progress: &dyn Progress,
) -> Result<Locked> {
    let version = &opts.version;
    // Before anything else: pins come over TLS or from a folder, never plain http.
    let fetcher = &fetcher.for_pins()?;
    if Version::parse(version).is_none() {
        return Err(Error::input(format!(
            "--version {}: expected vMAJOR.MINOR.PATCH, e.g. v1.33.0",
            crate::error::clip(version)
        )));
    }
    if opts.arches.is_empty() {
        return Err(Error::input("--arch: name at least one arch"));
    }
    for arch in &opts.arches {
        if !matches!(arch.as_str(), "amd64" | "arm64") {
            return Err(Error::input(format!(
                "--arch {}: expected amd64 or arm64",
                crate::error::clip(arch)
            )));
        }
    }
    let etcd = etcd_version(version, opts.etcd_version.as_deref())?;
    let name = recipe::file_name(version);
    let dest = opts.out_dir.join(&name);
    if let Some(existing) = assets.recipe_file(&name)?
        && !existing.lock
    {
        let shadowed = Recipe::parse(assets, &name, &existing.text, &existing.origin)?;
        let stronger = shadowed.artifacts.iter().any(|a| a.trust.repository_only());
        if stronger && !opts.force {
            return Err(Error::input(format!(
                "{} already pins {version} in this repository (from the release changelog, a source \
                     independent of the download server, or from unrelated projects); a lock from \
                     publisher checksums would replace every pin of it. Pass --force to write one anyway",
                existing.origin
            )));
        }
        // Locks come after built-in recipes and --recipes folders, so a forced
        // lock is only used from a folder given with --recipes.
        if assets.lock_dirs.iter().any(|d| d.as_path() == opts.out_dir) {
            return Err(Error::input(format!(
                "{} pins {version} and takes precedence over the locks in {}: write the lock \
                 elsewhere with --out DIR, then build with --recipes DIR",
                existing.origin,
                opts.out_dir.display()
            )));
        }
    }

    let mut text = format!(
        "# Lock for Kubernetes {version} with etcd {etcd}, written by `imgbuild lock`.\n\
         # Digests are the publisher's checksum files next to each binary on {base}\n\
         # and etcd's SHA256SUMS: they come from the same server as the files\n\
         # (trust = \"publisher-checksum\").\n\
         kubernetes_version = \"{version}\"\n\
         etcd_version = \"{etcd}\"\n\
         layout = \"controller\"\n",
        base = fetcher.base_description()
    );
    let mut digests = Vec::new();
    for bin in BINARIES {
        progress.event(Event::Step {
            what: &format!("reading checksums of {bin} {version}"),
        });
        let mut algorithm: Option<Algorithm> = None;
        let mut pins = Vec::new();
        for arch in &opts.arches {
            let url_path = format!("{version}/bin/linux/{arch}/{bin}");
            let place = fetcher.default_place(&url_path);
            let order = match algorithm {
                Some(a) => vec![a],
                None => vec![Algorithm::Sha512, Algorithm::Sha256],
            };
            let mut found = None;
            for alg in order {
                let sum = fetcher.default_place(&format!("{url_path}.{}", alg.name()));
                if let Some(body) = fetcher.get_text(&sum, progress)? {
                    found = Some((alg, parse_checksum(&body, alg, &sum.url())?));
                    break;
                }
            }
            let Some((alg, hex)) = found else {
                let tried = match algorithm {
                    Some(a) => format!(".{}", a.name()),
                    None => ".sha512 or .sha256".to_string(),
                };
                return Err(Error::missing(format!(
                    "no checksum file for {bin} {version} {arch}: {}{tried} does not exist. \
                     Does release {version} exist there? Releases before about v1.12 publish only \
                     .md5/.sha1 files: pin their digests yourself in a recipe under --recipes",
                    place.url()
                )));
            };
            algorithm = Some(alg);
            digests.push((
                bin.to_string(),
                arch.clone(),
                format!("{}:{hex}", alg.name()),
            ));
            pins.push((arch.clone(), hex));
        }
        let alg = algorithm.expect("at least one arch");
        let _ = write!(
            text,
            "\n[[artifacts]]\n\
             name = \"{bin}\"\n\
             kind = \"file\"\n\
             file = \"{bin}\"\n\
             url_path = \"{version}/bin/linux/{{arch}}/{bin}\"\n\
             algorithm = \"{alg}\"\n\
             trust = \"publisher-checksum\"\n\
             source = \"{src}\"\n\
             \n[artifacts.digests]\n",
            alg = alg.name(),
            src = fetcher
                .default_place(&format!(
                    "{version}/bin/linux/{{arch}}/{bin}.{}",
                    alg.name()
                ))
                .url(),
        );
        for (arch, hex) in &pins {
            let _ = writeln!(text, "{arch} = \"{hex}\"");
        }
        let _ = write!(
            text,
            "\n[[artifacts.members]]\n\
             path = \"{bin}\"\n\
             install = \"usr/local/bin/{bin}\"\n\
             mode = 0o755\n"
        );
    }
    lock_etcd(
        fetcher,
        etcd,
        &opts.arches,
        &mut text,
        &mut digests,
        progress,
    )?;
    // What we write must load like any recipe.
    Recipe::parse(assets, &name, &text, &dest.display().to_string())?;
    atomic::ensure_dir(&opts.out_dir)?;
    let path = atomic::write(&dest, text.as_bytes(), 0o644)?;
    progress.event(Event::Wrote { path: &path });
    Ok(Locked {
        path,
        digests,
        etcd_version: etcd.to_string(),
    })
}

/// The etcd release to pin: `asked` (`3.6.5` or `v3.6.5`), else the one of
/// the built-in recipe nearest `version` (by minor; the newer of two as near).
fn etcd_version(version: &str, asked: Option<&str>) -> Result<Version> {
    if let Some(v) = asked {
        let full = if v.starts_with('v') {
            v.to_string()
        } else {
            format!("v{v}")
        };
        return Version::parse(&full)
            .filter(|v| v.major == 3)
            .ok_or_else(|| {
                Error::input(format!(
                    "--etcd-version {}: expected an etcd release such as 3.6.5",
                    crate::error::clip(v)
                ))
            });
    }
    let wanted = Version::parse(version).map_or(0, |v| v.minor);
    let builtin = Assets::default();
    let mut best: Option<(u32, Version, Version)> = None;
    for name in builtin.recipe_names()? {
        let v = name
            .trim_start_matches("kubernetes-")
            .trim_end_matches(".toml");
        let Ok(r) = Recipe::load(&builtin, v) else {
            continue;
        };
        let (Some(k), Some(e)) = (Version::parse(&r.kubernetes_version), r.etcd()) else {
            continue;
        };
        let distance = k.minor.abs_diff(wanted);
        if best.is_none_or(|(d, bk, _)| distance < d || (distance == d && k > bk)) {
            best = Some((distance, k, e));
        }
    }
    best.map(|(_, _, e)| e).ok_or_else(|| {
        Error::input("--etcd-version: no built-in recipe says which etcd to pin; name one (e.g. --etcd-version 3.6.5)")
    })
}

/// Append etcd's artifact for `etcd` to the lock `text`, pinned from the
/// release's SHA256SUMS (one line per release file).
fn lock_etcd(
    fetcher: &Fetcher<'_>,
    etcd: Version,
    arches: &[String],
    text: &mut String,
    digests: &mut Vec<(String, String, String)>,
    progress: &dyn Progress,
) -> Result<()> {
    progress.event(Event::Step {
        what: &format!("reading etcd {etcd}'s SHA256SUMS"),
    });
    let file = format!("etcd-{etcd}-linux-{{arch}}.tar.gz");
    let mut members = vec![
        Member {
            path: format!("etcd-{etcd}-linux-{{arch}}/etcd"),
            install: "usr/local/bin/etcd".into(),
            mode: 0o755,
        },
        Member {
            path: format!("etcd-{etcd}-linux-{{arch}}/etcdctl"),
            install: "usr/local/bin/etcdctl".into(),
            mode: 0o755,
        },
    ];
    if etcd.minor >= 5 {
        members.push(Member {
            path: format!("etcd-{etcd}-linux-{{arch}}/etcdutl"),
            install: "usr/local/bin/etcdutl".into(),
            mode: 0o755,
        });
    }
    let mut artifact = Artifact {
        name: ETCD.into(),
        kind: ArtifactKind::Tarball,
        file,
        base: Some(ETCD_BASE.into()),
        url_path: format!("{etcd}/etcd-{etcd}-linux-{{arch}}.tar.gz"),
        members_url_path: None,
        algorithm: Algorithm::Sha256,
        trust: Trust::PublisherChecksum,
        source: String::new(),
        digests: Default::default(),
        members,
    };
    let sums = fetcher.place(&artifact, &format!("{etcd}/SHA256SUMS"))?;
    let Some(body) = fetcher.get_text(&sums, progress)? else {
        return Err(Error::missing(format!(
            "no checksum file for etcd {etcd}: {} does not exist. Does etcd release {etcd} exist there?",
            sums.url()
        )));
    };
    for arch in arches {
        let name = artifact.file_for(arch);
        let hex = body
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                let (hex, file) = (it.next()?, it.next()?);
                (file.trim_start_matches('*') == name).then(|| hex.to_ascii_lowercase())
            })
            .ok_or_else(|| Error::missing(format!("{}: no line for {name}", sums.url())))?;
        let hex = parse_checksum(&hex, Algorithm::Sha256, &sums.url())?;
        digests.push((name, arch.clone(), format!("sha256:{hex}")));
        artifact.digests.insert(arch.clone(), hex);
    }
    artifact.source = sums.url();
    let mut table = toml::Table::new();
    table.insert(
        "artifacts".into(),
        toml::Value::Array(vec![toml::Value::try_from(&artifact).expect("serializes")]),
    );
    text.push('\n');
    text.push_str(&toml::to_string(&table).expect("serializes"));
    Ok(())
}

/// A checksum file holds the hex digest, optionally followed by a file name.
/// Public for the fuzz harness (`fuzz/`) only.
#[doc(hidden)]
pub fn parse_checksum(body: &str, alg: Algorithm, url: &str) -> Result<String> {
    let token = body.split_whitespace().next().unwrap_or("");
    let hex = token.to_ascii_lowercase();
    if hex.len() != alg.hex_len() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::integrity(format!(
            "{url}: not a {} checksum file (expected {} hex characters, got {:?})",
            alg.name(),
            alg.hex_len(),
            crate::error::clip(token)
        )));
    }
    Ok(hex)
}
