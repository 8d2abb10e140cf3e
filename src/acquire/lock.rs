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
//! A lock is an ordinary recipe (`kind = "file"` artifacts, `layout =
//! "controller"`), written by default to `<cache>/locks/`, which the CLI searches
//! after `--recipes` and before the built-in recipes.

use std::fmt::Write as _;
use std::path::PathBuf;

use crate::acquire::fetch::Fetcher;
use crate::error::{Error, Result};
use crate::input::assets::Assets;
use crate::input::recipe::Trust;
use crate::input::recipe::{self, Algorithm, Recipe, Version};
use crate::progress::{Event, Progress};
use crate::util::atomic;

/// The binaries a controller installs, and where.
pub const BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

#[derive(Debug, Clone)]
pub struct LockOptions {
    pub version: String,
    pub arches: Vec<String>,
    /// Folder the lock is written to.
    pub out_dir: PathBuf,
    /// Write even if a recipe pinned from the changelog exists for the version.
    pub force: bool,
}

#[derive(Debug)]
pub struct Locked {
    pub path: PathBuf,
    /// (binary, arch, `algorithm:hex`).
    pub digests: Vec<(String, String, String)>,
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
    let name = recipe::file_name(version);
    let dest = opts.out_dir.join(&name);
    if let Some(existing) = assets.recipe_file(&name)?
        && !existing.lock
    {
        let shadowed = Recipe::parse(assets, &name, &existing.text, &existing.origin)?;
        let stronger = shadowed
            .artifacts
            .iter()
            .any(|a| a.trust == Trust::Changelog);
        if stronger && !opts.force {
            return Err(Error::input(format!(
                "{} already pins {version} from the release changelog (a source independent \
                     of the download server); a lock from publisher checksums would be weaker. \
                     Pass --force to write one anyway",
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
        "# Lock for Kubernetes {version}, written by `imgbuild lock`.\n\
         # Digests are the publisher's checksum files next to each binary on {base}:\n\
         # they come from the same server as the binaries (trust = \"publisher-checksum\").\n\
         kubernetes_version = \"{version}\"\n\
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
            let order = match algorithm {
                Some(a) => vec![a],
                None => vec![Algorithm::Sha512, Algorithm::Sha256],
            };
            let mut found = None;
            for alg in order {
                let sum_path = format!("{url_path}.{}", alg.name());
                if let Some(body) = fetcher.get_text(&sum_path, progress)? {
                    found = Some((alg, parse_checksum(&body, alg, &fetcher.url(&sum_path))?));
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
                    fetcher.url(&url_path)
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
            src = fetcher.url(&format!(
                "{version}/bin/linux/{{arch}}/{bin}.{}",
                alg.name()
            )),
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
    // What we write must load like any recipe.
    Recipe::parse(assets, &name, &text, &dest.display().to_string())?;
    atomic::ensure_dir(&opts.out_dir)?;
    let path = atomic::write(&dest, text.as_bytes(), 0o644)?;
    progress.event(Event::Wrote { path: &path });
    Ok(Locked { path, digests })
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
