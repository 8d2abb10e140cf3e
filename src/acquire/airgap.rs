//! Air-gapped sites: one bundle file carries what a build needs.
//!
//! `imgbuild airgap export -o bundle.tar` writes an uncompressed tar (the
//! artifacts are compressed already) holding, in this order:
//! - `manifest.json`: format, version, arch, and every file below with its digest;
//! - `recipes/kubernetes-vX.Y.Z.toml` and `recipes/layouts/<layout>.toml`: the
//!   recipe (a built-in one or a lock) and its layout;
//! - `artifacts/<algorithm>/<hex>`: each pinned artifact exactly as published
//!   (the cache keeps the original), so the importing side checks it against
//!   the same pin the exporting side did.
//!
//! `imgbuild airgap import bundle.tar` reads the tar twice. The first pass reads
//! only headers (seeking over the data) plus the small text files, and refuses
//! the whole bundle, before anything is written, on: an absolute path, a `..`,
//! a link, device, folder or anything but a regular file, a name outside the
//! layout above, a duplicate, or an artifact the manifest does not list. The
//! second pass feeds each artifact to [`Cache::ingest`], which verifies it
//! against the recipe's pin before anything enters the cache.
//!
//! Which pins count: a recipe this machine knows already (built-in, `--recipes`
//! or an earlier lock) is used as it is here, not as the bundle has it. A recipe
//! it does not know is installed into `<cache>/locks/` after its artifacts
//! verified, but only if it is a lock (`publisher-checksum` or `local` trust): a
//! bundle cannot introduce pins that claim to come from a release changelog.
//!
//! Layouts decide which files go where in the image, with which modes: a
//! layout this machine lacks is taken from a bundle only with
//! `--allow-layouts` (one it has is used as it is here; a differing copy in
//! the bundle is reported and ignored), and any layout, wherever it comes
//! from, is checked when it is loaded (`Layout::check`: PKI files from the
//! fixed set, no path that leaves its folder).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::acquire::fetch::{FetchOptions, Fetcher, jobs_for};
use crate::error::{Error, IoContext, Result, clip};
use crate::input::Session;
use crate::input::assets::Assets;
use crate::input::inventory::Inventory;
use crate::input::recipe::Trust;
use crate::input::recipe::{Algorithm, Recipe, Version, is_plain};
use crate::progress::{Event, Progress};
use crate::store::cache::{Cache, Candidate, parse_pin};
use crate::store::ingest::Limits;
use crate::util::atomic::{self, AtomicFile};
use crate::util::digest::HashingWriter;
use crate::util::digest::sha256_hex;

pub const FORMAT: &str = "imgbuild-airgap-bundle/1";
const MANIFEST: &str = "manifest.json";
/// Largest text file (manifest, recipe, layout) accepted from a bundle.
const TEXT_LIMIT: u64 = 1 << 20;

/// How `airgap import` treats what a bundle brings besides artifacts.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Install layouts this machine lacks from the bundle.
    pub allow_layouts: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    pub format: String,
    pub created_by: String,
    pub kubernetes_version: String,
    pub arch: String,
    /// Recipe and layout files, by path in the bundle.
    pub files: Vec<BundleFile>,
    pub artifacts: Vec<BundleArtifact>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub path: String,
    pub sha256: String,
    /// Where the exporting side read it from.
    pub origin: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleArtifact {
    pub path: String,
    pub file: String,
    pub pin: String,
    pub trust: Trust,
    pub size: u64,
    pub recipe: String,
    pub arch: String,
}

#[derive(Debug)]
pub struct Exported {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    pub artifacts: usize,
}

/// `imgbuild airgap export`: fetch what is missing (unless `fetch` is None,
/// i.e. offline), then write the bundle atomically.
pub fn export(
    session: &Session,
    out: &Path,
    fetch: Option<&FetchOptions>,
    progress: &dyn Progress,
) -> Result<Exported> {
    let inventory = Inventory::load(&session.inventory)?;
    let arch = inventory.cluster.arch.clone();
    let recipe = Recipe::load(&session.assets, &inventory.cluster.kubernetes_version)?;
    let cache = Cache::open(&session.cache_dir)?;
    if let Some(opts) = fetch {
        Fetcher::new(&cache, opts)?.fetch(&jobs_for(&recipe, &inventory, &arch), progress)?;
    }
    // The same check (and message) as the build's.
    let needed = recipe.needed(&inventory);
    cache.resolve(&recipe, &needed, &arch)?;

    let recipe_asset = session
        .assets
        .recipe_file(&recipe.name)?
        .expect("the recipe was just loaded");
    let layout_rel = format!("layouts/{}.toml", recipe.layout);
    let layout_asset = session
        .assets
        .recipe_file(&layout_rel)?
        .expect("the layout was just loaded");
    let texts = [
        (format!("recipes/{}", recipe.name), recipe_asset),
        (format!("recipes/{layout_rel}"), layout_asset),
    ];
    let mut artifacts = Vec::new();
    for a in needed {
        let hex = a.digest_for(&recipe.name, &arch)?;
        let index = cache
            .lookup(a.algorithm, hex)?
            .expect("checked by resolve_artifacts");
        artifacts.push(BundleArtifact {
            path: format!("artifacts/{}/{hex}", a.algorithm.name()),
            file: index.file,
            pin: index.pin,
            trust: a.trust,
            size: index.size,
            recipe: recipe.name.clone(),
            arch: arch.clone(),
        });
    }
    let manifest = BundleManifest {
        format: FORMAT.into(),
        created_by: concat!("imgbuild ", env!("CARGO_PKG_VERSION")).into(),
        kubernetes_version: recipe.kubernetes_version.clone(),
        arch: arch.clone(),
        files: texts
            .iter()
            .map(|(path, asset)| BundleFile {
                path: path.clone(),
                sha256: sha256_hex(asset.text.as_bytes()),
                origin: session.assets.portable_origin(&asset.origin, path),
            })
            .collect(),
        artifacts,
    };
    let mut json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
    json.push(b'\n');

    let file = AtomicFile::create(out, 0o644)?;
    let mut tar = tar::Builder::new(HashingWriter::new(file));
    tar.mode(tar::HeaderMode::Deterministic);
    let append = |tar: &mut tar::Builder<_>, path: &str, size: u64, data: &mut dyn Read| {
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, path, data)
            .with_path("cannot write", out)
    };
    append(&mut tar, MANIFEST, json.len() as u64, &mut &json[..])?;
    for (path, asset) in &texts {
        let bytes = asset.text.as_bytes();
        append(&mut tar, path, bytes.len() as u64, &mut &bytes[..])?;
    }
    for a in &manifest.artifacts {
        let (alg, hex) = parse_pin(&a.pin).expect("pins we wrote parse");
        let src = cache.artifact_path(alg, hex);
        let f = File::open(&src).with_path("cannot read", &src)?;
        let size = f.metadata().with_path("cannot stat", &src)?.len();
        progress.event(Event::Step {
            what: &format!("adding {} ({} bytes)", a.file, size),
        });
        append(
            &mut tar,
            &a.path,
            size,
            &mut io::BufReader::with_capacity(1 << 20, f),
        )?;
    }
    let hashing = tar.into_inner().with_path("cannot write", out)?;
    let (file, sha256, size) = hashing.finish();
    let path = file.commit()?;
    progress.event(Event::Wrote { path: &path });
    Ok(Exported {
        path,
        sha256,
        size,
        artifacts: manifest.artifacts.len(),
    })
}

#[derive(Debug, Default)]
pub struct Imported {
    pub kubernetes_version: String,
    pub arch: String,
    /// `file pin` of artifacts verified into the cache.
    pub cached: Vec<String>,
    /// Of those, the ones that were there already.
    pub present: Vec<String>,
    /// Locks installed into the cache's locks folder.
    pub locks: Vec<PathBuf>,
}

/// What a bundle entry's name says it is.
enum Slot {
    Manifest,
    Recipe(String),
    Layout(String),
    Artifact(Algorithm, String),
}

/// Refuse any name but the few a bundle may hold.
fn classify(raw: &[u8]) -> std::result::Result<Slot, String> {
    let name = std::str::from_utf8(raw).map_err(|_| "the name is not UTF-8".to_string())?;
    if name.starts_with('/') {
        return Err("absolute path".into());
    }
    if name.split('/').any(|c| c == "..") {
        return Err("path with `..`".into());
    }
    if name == MANIFEST {
        return Ok(Slot::Manifest);
    }
    let plain = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && !s.starts_with('.')
    };
    if let Some(file) = name.strip_prefix("recipes/layouts/") {
        if let Some(stem) = file.strip_suffix(".toml").filter(|s| plain(s)) {
            return Ok(Slot::Layout(stem.to_string()));
        }
    } else if let Some(file) = name.strip_prefix("recipes/") {
        if file.starts_with("kubernetes-v") && file.ends_with(".toml") && plain(file) {
            return Ok(Slot::Recipe(file.to_string()));
        }
    } else if let Some(rest) = name.strip_prefix("artifacts/")
        && let Some((alg, hex)) = rest.split_once('/')
        && let Some((alg, hex)) = parse_pin(&format!("{alg}:{hex}"))
        && hex.bytes().all(|b| !b.is_ascii_uppercase())
    {
        return Ok(Slot::Artifact(alg, hex.to_string()));
    }
    Err("a name a bundle does not hold".into())
}

fn read_text(entry: &mut impl Read, path: &str, bundle: &Path) -> Result<String> {
    let mut bytes = Vec::new();
    entry
        .take(TEXT_LIMIT + 1)
        .read_to_end(&mut bytes)
        .with_path("cannot read", bundle)?;
    if bytes.len() as u64 > TEXT_LIMIT {
        return Err(refuse(
            bundle,
            path,
            "larger than the 1 MiB limit for a text file (manifest, recipe or layout)",
        ));
    }
    String::from_utf8(bytes).map_err(|_| refuse(bundle, path, "not UTF-8 text"))
}

fn refuse(bundle: &Path, path: &str, why: &str) -> Error {
    Error::integrity(format!(
        "bundle {}: refused: entry {:?}: {why}. Nothing was imported",
        bundle.display(),
        clip(path)
    ))
}

/// What the first pass learned.
struct Scanned {
    manifest: BundleManifest,
    recipes: BTreeMap<String, String>,
    layouts: BTreeMap<String, String>,
    artifacts: BTreeMap<String, (Algorithm, String, u64)>,
}

fn scan(bundle: &Path, limits: Limits) -> Result<Scanned> {
    let file = File::open(bundle).with_path("cannot read", bundle)?;
    let length = file.metadata().with_path("cannot stat", bundle)?.len();
    let mut archive = tar::Archive::new(io::BufReader::new(file));
    let mut manifest: Option<BundleManifest> = None;
    let mut recipes = BTreeMap::new();
    let mut layouts = BTreeMap::new();
    let mut artifacts = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let bad = |e: io::Error| {
        Error::integrity(format!(
            "bundle {}: not a readable tar file ({e}). Nothing was imported",
            bundle.display()
        ))
    };
    for entry in archive.entries_with_seek().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if !kind.is_file() {
            let what = match kind {
                tar::EntryType::Symlink => "a symbolic link",
                tar::EntryType::Link => "a hard link",
                tar::EntryType::Char | tar::EntryType::Block => "a device file",
                tar::EntryType::Fifo => "a FIFO",
                tar::EntryType::Directory => "a folder",
                _ => "not a regular file",
            };
            return Err(refuse(
                bundle,
                &shown,
                &format!("{what} (only regular files are accepted)"),
            ));
        }
        let slot = classify(&raw).map_err(|why| refuse(bundle, &shown, &why))?;
        // Seeking over data does not notice a file cut short: check the end.
        if entry.raw_file_position().saturating_add(entry.size()) > length {
            return Err(refuse(
                bundle,
                &shown,
                "the bundle ends inside it (truncated in transfer?)",
            ));
        }
        if !seen.insert(shown.clone()) {
            return Err(refuse(bundle, &shown, "appears twice"));
        }
        if manifest.is_none() && !matches!(slot, Slot::Manifest) {
            return Err(refuse(
                bundle,
                &shown,
                "comes before manifest.json, which must be first",
            ));
        }
        match slot {
            Slot::Manifest => {
                let text = read_text(&mut entry, &shown, bundle)?;
                let m: BundleManifest = serde_json::from_str(&text)
                    .map_err(|e| refuse(bundle, &shown, &format!("not a bundle manifest ({e})")))?;
                if m.format != FORMAT {
                    return Err(refuse(
                        bundle,
                        &shown,
                        &format!("format {:?}, this imgbuild reads {FORMAT:?}", m.format),
                    ));
                }
                manifest = Some(m);
            }
            Slot::Recipe(name) => {
                recipes.insert(name, read_text(&mut entry, &shown, bundle)?);
            }
            Slot::Layout(name) => {
                layouts.insert(name, read_text(&mut entry, &shown, bundle)?);
            }
            Slot::Artifact(alg, hex) => {
                if entry.size() > limits.artifact {
                    return Err(
                        limits.too_large(&format!("bundle {}: entry {shown}", bundle.display()))
                    );
                }
                artifacts.insert(shown, (alg, hex, entry.size()));
            }
        }
    }
    let Some(manifest) = manifest else {
        return Err(Error::integrity(format!(
            "bundle {}: no manifest.json: not an imgbuild bundle. Nothing was imported",
            bundle.display()
        )));
    };
    // Names in the manifest follow the rules of names in the bundle.
    for path in manifest
        .artifacts
        .iter()
        .map(|a| &a.path)
        .chain(manifest.files.iter().map(|f| &f.path))
    {
        if let Err(why) = classify(path.as_bytes()) {
            return Err(refuse(
                bundle,
                path,
                &format!("manifest.json lists it: {why}"),
            ));
        }
    }
    if Version::parse(&manifest.kubernetes_version).is_none() || !is_plain(&manifest.arch) {
        return Err(refuse(
            bundle,
            MANIFEST,
            "its kubernetes_version or arch is not a version or an arch name",
        ));
    }
    // Every file is listed once with its digest, and every listed file is there.
    let mut once = BTreeSet::new();
    for path in manifest
        .artifacts
        .iter()
        .map(|a| &a.path)
        .chain(manifest.files.iter().map(|f| &f.path))
    {
        if !once.insert(path) {
            return Err(refuse(bundle, path, "listed twice in manifest.json"));
        }
    }
    let listed: BTreeMap<&str, &BundleArtifact> = manifest
        .artifacts
        .iter()
        .map(|a| (a.path.as_str(), a))
        .collect();
    for (path, (_, _, size)) in &artifacts {
        let Some(a) = listed.get(path.as_str()) else {
            return Err(refuse(bundle, path, "not listed in manifest.json"));
        };
        let (alg, hex, _) = &artifacts[path];
        if a.pin != format!("{}:{hex}", alg.name()) {
            return Err(refuse(
                bundle,
                path,
                &format!("manifest.json gives it pin {}", a.pin),
            ));
        }
        if a.size != *size {
            return Err(refuse(
                bundle,
                path,
                &format!("{size} bytes, manifest.json says {}", a.size),
            ));
        }
    }
    for a in &manifest.artifacts {
        if !artifacts.contains_key(&a.path) {
            return Err(refuse(
                bundle,
                &a.path,
                "listed in manifest.json but missing",
            ));
        }
    }
    let texts: BTreeMap<String, &String> = recipes
        .iter()
        .map(|(n, t)| (format!("recipes/{n}"), t))
        .chain(
            layouts
                .iter()
                .map(|(n, t)| (format!("recipes/layouts/{n}.toml"), t)),
        )
        .collect();
    for f in &manifest.files {
        match texts.get(&f.path) {
            Some(t) if sha256_hex(t.as_bytes()) == f.sha256 => {}
            Some(_) => {
                return Err(refuse(
                    bundle,
                    &f.path,
                    "does not match its digest in manifest.json",
                ));
            }
            None => {
                return Err(refuse(
                    bundle,
                    &f.path,
                    "listed in manifest.json but missing",
                ));
            }
        }
    }
    for path in texts.keys() {
        if !manifest.files.iter().any(|f| &f.path == path) {
            return Err(refuse(bundle, path, "not listed in manifest.json"));
        }
    }
    Ok(Scanned {
        manifest,
        recipes,
        layouts,
        artifacts,
    })
}

/// `imgbuild airgap import`: see the module docs.
pub fn import(
    session: &Session,
    bundle: &Path,
    opts: ImportOptions,
    progress: &dyn Progress,
) -> Result<Imported> {
    let cache = Cache::open(&session.cache_dir)?;
    let scanned = scan(bundle, cache.limits())?;

    // Layouts the bundle brings that this machine lacks, for parsing its locks.
    let (staging, _live) = atomic::tracked(tempfile::tempdir, |d| d.path())
        .with_path("cannot create a temporary folder in", &std::env::temp_dir())?;
    let mut new_layouts = Vec::new();
    for (name, text) in &scanned.layouts {
        let rel = format!("layouts/{name}.toml");
        if let Some(local) = session.assets.recipe_file(&rel)? {
            if &local.text != text {
                progress.event(Event::Warning {
                    message: &format!(
                        "the bundle's layout {name} differs from {}; {} is used",
                        local.origin, local.origin
                    ),
                });
            }
        } else {
            if !opts.allow_layouts {
                return Err(refuse(
                    bundle,
                    &format!("recipes/{rel}"),
                    "a layout this machine does not have; a layout decides which files go where in \
                     the image, with which modes: pass --allow-layouts to take it from the bundle if you \
                     trust whoever made it",
                ));
            }
            let path = staging.path().join(&rel);
            std::fs::create_dir_all(path.parent().unwrap()).with_path("cannot create", &path)?;
            std::fs::write(&path, text).with_path("cannot write", &path)?;
            new_layouts.push((rel, text));
        }
    }
    let staged = Assets {
        lock_dirs: (session.assets.lock_dirs.iter().cloned())
            .chain([staging.path().to_path_buf()])
            .collect(),
        ..session.assets.clone()
    };

    let mut recipes: Vec<Recipe> = Vec::new();
    let mut new_recipes: Vec<(String, &String)> = Vec::new();
    for (name, text) in &scanned.recipes {
        let version = name
            .trim_start_matches("kubernetes-")
            .trim_end_matches(".toml");
        if let Some(local) = session.assets.recipe_file(name)? {
            if &local.text != text {
                progress.event(Event::Warning {
                    message: &format!(
                        "the bundle's {name} differs from {}; its artifacts are checked against the pins of {}",
                        local.origin, local.origin
                    ),
                });
            }
            recipes.push(Recipe::load(&session.assets, version)?);
            continue;
        }
        let origin = format!("{}:recipes/{name}", bundle.display());
        let r = Recipe::parse(&staged, name, text, &origin)?;
        if let Some(a) = r.artifacts.iter().find(|a| a.trust.repository_only()) {
            return Err(Error::integrity(format!(
                "bundle {}: refused: recipes/{name} claims {}-pinned digests (artifact {}) but \
                 this machine has no such recipe; a bundle can only bring locks (publisher-checksum \
                 or local trust). If you trust it, put it in a folder given with --recipes. \
                 Nothing was imported",
                bundle.display(),
                a.trust.name(),
                a.name
            )));
        }
        new_recipes.push((name.clone(), text));
        recipes.push(r);
    }

    // Every artifact must be pinned by one of those recipes: decide before writing.
    let mut plan: Vec<(&String, Candidate<'_>)> = Vec::new();
    for (path, (alg, hex, _)) in &scanned.artifacts {
        let found = recipes.iter().find_map(|r| {
            r.artifact_by_digest(*alg, hex)
                .map(|(a, arch)| (r, a, arch))
        });
        let Some((recipe, artifact, arch)) = found else {
            return Err(refuse(
                bundle,
                path,
                "no recipe pins this digest (neither the bundle's nor this machine's)",
            ));
        };
        plan.push((
            path,
            Candidate {
                recipe,
                artifact,
                arch,
            },
        ));
    }

    // Second pass: verify each artifact into the cache.
    let mut imported = Imported {
        kubernetes_version: scanned.manifest.kubernetes_version.clone(),
        arch: scanned.manifest.arch.clone(),
        ..Imported::default()
    };
    let file = File::open(bundle).with_path("cannot read", bundle)?;
    let mut archive = tar::Archive::new(io::BufReader::with_capacity(1 << 20, file));
    for entry in archive.entries().with_path("cannot read", bundle)? {
        let entry = entry.with_path("cannot read", bundle)?;
        let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let Some((_, c)) = plan.iter().find(|(p, _)| **p == path) else {
            continue;
        };
        let hex = c.artifact.digests[c.arch].as_str();
        let label = format!("{}:{path}", bundle.display());
        let index = match cache.lookup(c.artifact.algorithm, hex)? {
            Some(index) => {
                imported
                    .present
                    .push(format!("{} {}", index.file, index.pin));
                index
            }
            None => cache.ingest(entry, &label, std::slice::from_ref(c))?,
        };
        progress.event(Event::Cached {
            name: &index.file,
            digest: &index.pin,
        });
        imported
            .cached
            .push(format!("{} {}", index.file, index.pin));
    }
    if imported.cached.len() != plan.len() {
        return Err(Error::integrity(format!(
            "bundle {} changed while it was read; import it again",
            bundle.display()
        )));
    }

    // Only now, with every artifact verified, install the locks it brought.
    let locks = cache.locks_dir();
    for (rel, text) in new_layouts {
        let dest = locks.join(&rel);
        atomic::ensure_dir(dest.parent().unwrap())?;
        imported
            .locks
            .push(atomic::write(&dest, text.as_bytes(), 0o644)?);
    }
    for (name, text) in new_recipes {
        let dest = locks.join(&name);
        imported
            .locks
            .push(atomic::write(&dest, text.as_bytes(), 0o644)?);
    }
    Ok(imported)
}
