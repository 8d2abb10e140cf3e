//! An Ignition config read back into entries (for `imgbuild inspect`): what
//! Ignition's files stage makes of it on an empty root. Listed folders, files
//! (data URLs decoded, gunzipped), links and unit files; the parents of all of
//! them that the config does not list, as Ignition creates them (0755, root);
//! remote files by their source and verification hash. Enabled units are
//! returned by name: Ignition enables them through a preset file, not entries.
//!
//! It reads the subset imgbuild writes; a config edited by hand may be refused.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use flate2::read::MultiGzDecoder;

use super::config::{Config, Contents, DATA_PREFIX, GZIP, UNIT_DIR};
use crate::error::{Error, Result};
use crate::output::manifest::Listed;
use crate::plan::path_order;
use crate::util::digest::sha256_hex;

/// A config, as Ignition would lay it on an empty root.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The spec version the config declares.
    pub version: String,
    /// In path order. A remote file has no size; its `target` is its source.
    pub entries: Vec<Listed>,
    /// Paths (absolute) of the folders no entry of the config lists, made
    /// because something inside them is.
    pub implied: BTreeSet<String>,
    /// Units with `enabled: true`, in the config's order.
    pub enabled: Vec<String>,
    /// Whether any file is fetched (binaries from a mirror).
    pub carries_binaries: bool,
}

/// Bytes the files of one config may decode to, in all (imgbuild's decode
/// to tens of KB): a gzip bomb in a data URL is refused, not unpacked.
const MAX_DECODED: u64 = 64 << 20;

/// The bytes of a data URL imgbuild writes (`data:;base64,`, maybe gzipped);
/// what they decode to counts against `left`.
fn decode(c: &Contents, what: &str, left: &mut u64) -> Result<Vec<u8>> {
    let b64 = c.source.strip_prefix(DATA_PREFIX).ok_or_else(|| {
        Error::input(format!(
            "{what}: source {:?} is neither a {DATA_PREFIX} URL nor http(s)",
            crate::error::clip(&c.source)
        ))
    })?;
    let bytes = BASE64
        .decode(b64)
        .map_err(|e| Error::input(format!("{what}: bad base64: {e}")))?;
    match c.compression.as_deref() {
        None => spend(bytes, what, left),
        Some(GZIP) => {
            let mut out = Vec::new();
            MultiGzDecoder::new(&bytes[..])
                .take(*left + 1)
                .read_to_end(&mut out)
                .map_err(|e| Error::input(format!("{what}: bad gzip: {e}")))?;
            spend(out, what, left)
        }
        Some(other) => Err(Error::input(format!(
            "{what}: compression {other:?} (Ignition knows gzip only)"
        ))),
    }
}

fn spend(bytes: Vec<u8>, what: &str, left: &mut u64) -> Result<Vec<u8>> {
    *left = left.checked_sub(bytes.len() as u64).ok_or_else(|| {
        Error::input(format!(
            "{what}: the config's files decode to more than {MAX_DECODED} bytes (imgbuild's are tens of KB)"
        ))
    })?;
    Ok(bytes)
}

fn file_entry(path: String, mode: u32, uid: u32, gid: u32, bytes: &[u8]) -> Listed {
    Listed {
        path,
        kind: "file",
        mode,
        uid,
        gid,
        size: Some(bytes.len() as u64),
        sha256: Some(sha256_hex(bytes)),
        target: None,
    }
}

/// Read a config's bytes; `what` names it in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Listing> {
    let config: Config = serde_json::from_slice(bytes).map_err(|e| {
        Error::input(format!(
            "{what}: not an Ignition config imgbuild writes: {e}"
        ))
    })?;
    let mut found: BTreeMap<String, Listed> = BTreeMap::new();
    let mut add = |e: Listed| -> Result<()> {
        let path = e.path.clone();
        if found.insert(path.clone(), e).is_some() {
            return Err(Error::input(format!(
                "{what}: {} is given twice",
                crate::error::clip(&path)
            )));
        }
        Ok(())
    };
    let mut carries_binaries = false;
    let mut left = MAX_DECODED;
    for d in &config.storage.directories {
        add(Listed {
            path: d.path.clone(),
            kind: "dir",
            mode: d.mode,
            uid: d.user.id,
            gid: d.group.id,
            size: Some(0),
            sha256: None,
            target: None,
        })?;
    }
    for f in &config.storage.files {
        let src = &f.contents.source;
        if src.starts_with("http://") || src.starts_with("https://") {
            carries_binaries = true;
            let sha256 = f
                .contents
                .verification
                .as_ref()
                .and_then(|v| v.hash.strip_prefix("sha256-").map(str::to_string));
            add(Listed {
                path: f.path.clone(),
                kind: "file",
                mode: f.mode,
                uid: f.user.id,
                gid: f.group.id,
                size: None,
                sha256: Some(sha256.unwrap_or_else(|| {
                    "(no sha256 verification hash: Ignition would not check it)".into()
                })),
                target: Some(src.clone()),
            })?;
        } else {
            let bytes = decode(
                &f.contents,
                &format!("{what}: {}", crate::error::clip(&f.path)),
                &mut left,
            )?;
            add(file_entry(
                f.path.clone(),
                f.mode,
                f.user.id,
                f.group.id,
                &bytes,
            ))?;
        }
    }
    for l in &config.storage.links {
        add(Listed::symlink(&l.path, &l.target, l.user.id, l.group.id))?;
    }
    let mut enabled = Vec::new();
    for u in &config.systemd.units {
        if let Some(text) = &u.contents {
            let path = format!("/{UNIT_DIR}/{}", u.name);
            add(file_entry(path, 0o644, 0, 0, text.as_bytes()))?;
        }
        if u.enabled == Some(true) {
            enabled.push(u.name.clone());
        }
    }
    // Binaries fetched in archives: what the unpacking one-shot installs,
    // instead of the archives, its script and itself.
    if let Some(unit) = config
        .systemd
        .units
        .iter()
        .find(|u| u.name == super::unpack::UNIT)
    {
        let text = unit.contents.as_deref().unwrap_or_default();
        let groups = super::unpack::parse_unit(text).ok_or_else(|| {
            Error::input(format!(
                "{what}: {} is not the unit imgbuild writes",
                super::unpack::UNIT
            ))
        })?;
        for (archive, m) in groups {
            let Some(src) = found.get(&archive).and_then(|a| a.target.clone()) else {
                return Err(Error::input(format!(
                    "{what}: {} takes {} from {archive}, which the config does not fetch",
                    super::unpack::UNIT,
                    m.member
                )));
            };
            found.insert(
                m.dest.clone(),
                Listed {
                    path: m.dest,
                    kind: "file",
                    mode: m.mode,
                    uid: 0,
                    gid: 0,
                    size: None,
                    sha256: Some(m.sha256),
                    target: Some(format!("{src} ({})", m.member)),
                },
            );
        }
        found.retain(|p, _| {
            !p.starts_with(&format!("{}/", super::unpack::ARCHIVES))
                && p != super::unpack::SCRIPT
                && *p != format!("/{UNIT_DIR}/{}", super::unpack::UNIT)
        });
        enabled.retain(|u| u != super::unpack::UNIT);
    }
    let mut implied = BTreeSet::new();
    for path in found.keys() {
        let mut p = path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if parent.is_empty() {
                break;
            }
            if !found.contains_key(parent) {
                implied.insert(parent.to_string());
            }
            p = parent;
        }
    }
    for path in &implied {
        found.insert(
            path.clone(),
            Listed {
                path: path.clone(),
                kind: "dir",
                mode: 0o755,
                uid: 0,
                gid: 0,
                size: Some(0),
                sha256: None,
                target: None,
            },
        );
    }
    let mut entries: Vec<Listed> = found.into_values().collect();
    entries.sort_by(|a, b| path_order(&a.path, &b.path));
    Ok(Listing {
        version: config.ignition.version,
        entries,
        implied,
        enabled,
        carries_binaries,
    })
}
