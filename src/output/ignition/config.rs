//! The Ignition config, both ways: the spec's objects imgbuild uses (serde
//! types: what is written and what is read back), and their making from a
//! plan ([`config`]).
//!
//! Files carry their bytes as `data:;base64,` URLs, gzipped (`compression:
//! "gzip"`, our pinned gzip) when that makes the config smaller; binaries are
//! remote (`--binaries mirror=URL`) with `verification.hash` = the pinned
//! member's sha256, which Ignition checks before it writes a byte, or absent
//! (`baked`). Units go to `systemd.units` with their contents, the enabled ones
//! (`enabled: true`, Ignition's preset) first, in the layout's order; the
//! plan's `<target>.wants/<unit>` symlinks are not written (Ignition enables
//! through `/etc/systemd/system-preset/20-ignition.preset`). Folders the OS
//! already has are left to it. Owners are numeric ids (names would be looked
//! up in the target's /etc/passwd), modes are decimal integers, as the spec
//! wants.

use std::collections::BTreeSet;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize};

use super::{Binaries, Options};
use crate::codec::gz::gzip_bytes;
use crate::error::{Error, Result};
use crate::plan::{Entry, EntryKind, Origin, Plan};

/// Where Ignition writes `systemd.units`.
pub const UNIT_DIR: &str = "etc/systemd/system";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub ignition: Ignition,
    #[serde(default, skip_serializing_if = "Storage::is_empty")]
    pub storage: Storage,
    #[serde(default, skip_serializing_if = "Systemd::is_empty")]
    pub systemd: Systemd,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ignition {
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Storage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub directories: Vec<Directory>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<File>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<Link>,
}

impl Storage {
    fn is_empty(&self) -> bool {
        self.directories.is_empty() && self.files.is_empty() && self.links.is_empty()
    }
}

/// `user` or `group`: by id only (a name is resolved in the target root).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Id {
    pub id: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Directory {
    pub path: String,
    /// Permission bits, a decimal integer in the JSON (0o755 is 493).
    pub mode: u32,
    pub user: Id,
    pub group: Id,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub path: String,
    pub overwrite: bool,
    pub contents: Contents,
    pub mode: u32,
    pub user: Id,
    pub group: Id,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contents {
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verification {
    /// `sha256-<hex>` of the file's (decompressed) bytes.
    pub hash: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub path: String,
    pub target: String,
    pub overwrite: bool,
    pub user: Id,
    pub group: Id,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Systemd {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub units: Vec<Unit>,
}

impl Systemd {
    fn is_empty(&self) -> bool {
        self.units.is_empty()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unit {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<String>,
}

pub const DATA_PREFIX: &str = "data:;base64,";
pub const GZIP: &str = "gzip";
/// What `compression` adds to a file's JSON: gzip only pays beyond it.
const GZIP_FIELD: usize = r#","compression":"gzip""#.len();

/// A file's contents as a data URL: gzipped when the config gets smaller.
pub(super) fn data_contents(bytes: &[u8]) -> Contents {
    let raw = BASE64.encode(bytes);
    let gz = BASE64.encode(gzip_bytes(bytes));
    if gz.len() + GZIP_FIELD < raw.len() {
        Contents {
            source: format!("{DATA_PREFIX}{gz}"),
            compression: Some(GZIP.into()),
            verification: None,
        }
    } else {
        Contents {
            source: format!("{DATA_PREFIX}{raw}"),
            compression: None,
            verification: None,
        }
    }
}

/// `etc/systemd/system/<target>.wants/<unit>` → (`<target>`, `<unit>`).
pub fn wants_link(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(UNIT_DIR)?.strip_prefix('/')?;
    let (dir, unit) = rest.split_once('/')?;
    let target = dir.strip_suffix(".wants")?;
    (!unit.contains('/')).then_some((target, unit))
}

const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".target",
    ".timer",
    ".path",
    ".mount",
    ".automount",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

/// A unit file that `systemd.units` can carry: directly in /etc/systemd/system,
/// a unit suffix, text, and the mode and owner Ignition gives units (0644, root).
fn as_unit(e: &Entry) -> Option<(&str, String)> {
    let name = e.path.strip_prefix(UNIT_DIR)?.strip_prefix('/')?;
    let ok = !name.contains('/')
        && UNIT_SUFFIXES.iter().any(|s| name.ends_with(s))
        && e.mode == 0o644
        && e.uid == 0
        && e.gid == 0
        && !e.secret;
    let EntryKind::File { content, .. } = &e.kind else {
        return None;
    };
    if !ok || !matches!(content, crate::plan::Content::Inline(_)) {
        return None;
    }
    let text = String::from_utf8(e.read_bytes().ok()?).ok()?;
    Some((name, text))
}

/// Whether a unit's `[Install]` section puts it into `target` (`WantedBy=` or
/// `RequiredBy=`, space-separated, possibly on several lines).
fn installs_into(unit: &str, target: &str) -> bool {
    let mut in_install = false;
    for line in unit.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
        } else if in_install
            && let Some((key, value)) = line.split_once('=')
            && matches!(key.trim(), "WantedBy" | "RequiredBy")
            && value.split_whitespace().any(|t| t == target)
        {
            return true;
        }
    }
    false
}

/// The published file name of a binary (`<mirror>/<version>/bin/linux/<arch>/<name>`).
fn binary_name(e: &Entry) -> &str {
    let from = match &e.origin {
        Origin::Artifact { member, .. } => member.as_str(),
        _ => e.path.as_str(),
    };
    from.rsplit('/').next().unwrap_or(from)
}

/// The Ignition config for `plan`.
pub fn config(plan: &Plan, opts: &Options) -> Result<Config> {
    let meta = &plan.meta;
    let wanted = |e: &Entry| !e.shared || opts.binaries != Binaries::Baked;
    let enabled: Vec<(&str, &str)> = plan
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }))
        .filter_map(|e| wants_link(&e.path))
        .filter(|(_, unit)| meta.unit_order.iter().any(|u| u == unit))
        .collect();
    let is_enablement = |e: &Entry| {
        matches!(e.kind, EntryKind::Symlink { .. })
            && wants_link(&e.path).is_some_and(|l| enabled.contains(&l))
    };
    // `<target>.wants` folders holding nothing but enablement symlinks.
    let wants_dirs: BTreeSet<&str> = plan
        .entries
        .iter()
        .filter(|d| matches!(d.kind, EntryKind::Dir) && d.path.ends_with(".wants"))
        .filter(|d| {
            let prefix = format!("{}/", d.path);
            plan.entries
                .iter()
                .filter(|e| e.path.starts_with(&prefix))
                .all(is_enablement)
        })
        .map(|d| d.path.as_str())
        .collect();

    let mut storage = Storage::default();
    let mut units: Vec<Unit> = Vec::new();
    let mut unpack = super::unpack::Unpack::default();
    for e in plan.ordered().filter(|e| wanted(e)) {
        let path = format!("/{}", e.path);
        let (user, group) = (Id { id: e.uid }, Id { id: e.gid });
        match &e.kind {
            EntryKind::Dir => {
                if !meta.system_dirs.contains(&e.path) && !wants_dirs.contains(e.path.as_str()) {
                    storage.directories.push(Directory {
                        path,
                        mode: e.mode,
                        user,
                        group,
                    });
                }
            }
            EntryKind::Symlink { target } => {
                if !is_enablement(e) {
                    storage.links.push(Link {
                        path,
                        target: target.clone(),
                        overwrite: true,
                        user,
                        group,
                    });
                }
            }
            EntryKind::File { sha256, .. } => {
                if let Some((name, text)) = as_unit(e) {
                    units.push(Unit {
                        name: name.to_string(),
                        enabled: None,
                        contents: Some(text),
                    });
                    continue;
                }
                let contents = match (&e.origin, &opts.binaries) {
                    (Origin::Artifact { member, .. }, Binaries::Mirror(url)) => {
                        let source = match plan.source_of(e) {
                            Some(s) => match s.fetch(url, member) {
                                (single, None) => single,
                                (archive, Some(pin)) => {
                                    // Only in an archive: the node unpacks it.
                                    let m = super::unpack::Member {
                                        member: member.clone(),
                                        sha256: sha256.clone(),
                                        dest: path,
                                        mode: e.mode,
                                    };
                                    unpack.add(&s.file, &archive, pin, m);
                                    continue;
                                }
                            },
                            None => format!(
                                "{url}/{}/bin/linux/{}/{}",
                                meta.made_from.kubernetes_version,
                                meta.made_from.arch,
                                binary_name(e)
                            ),
                        };
                        Contents {
                            source,
                            compression: None,
                            verification: Some(Verification {
                                hash: format!("sha256-{sha256}"),
                            }),
                        }
                    }
                    _ => data_contents(&e.read_bytes()?),
                };
                storage.files.push(File {
                    path,
                    overwrite: true,
                    contents,
                    mode: e.mode,
                    user,
                    group,
                });
            }
        }
    }

    // Enabled units first, in the layout's order (the unpacking one-shot
    // before them all); a unit the overlay does not ship (the distribution's)
    // is enabled without contents.
    let mut ordered: Vec<Unit> = Vec::new();
    if !unpack.is_empty() {
        let (files, unit) = unpack.into_config(&meta.unit_order)?;
        storage.files.extend(files);
        ordered.push(unit);
    }
    for name in &meta.unit_order {
        let Some((target, _)) = enabled.iter().find(|(_, u)| u == name) else {
            continue;
        };
        let mut unit = match units.iter().position(|u| &u.name == name) {
            Some(i) => units.remove(i),
            None => Unit {
                name: name.clone(),
                enabled: None,
                contents: None,
            },
        };
        if let Some(text) = &unit.contents
            && !installs_into(text, target)
        {
            return Err(Error::input(format!(
                "unit {name} is enabled into {target} by the layout, but its [Install] section does not say WantedBy={target}: \
                 Ignition enables units through a preset, which follows [Install]"
            )));
        }
        unit.enabled = Some(true);
        ordered.push(unit);
    }
    ordered.extend(units);
    Ok(Config {
        ignition: Ignition {
            version: opts.spec.version().to_string(),
        },
        storage,
        systemd: Systemd { units: ordered },
    })
}

/// The config's bytes: compact JSON, a final newline.
pub fn to_bytes(config: &Config) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(config).expect("the config serializes");
    bytes.push(b'\n');
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wants_links_and_install_sections() {
        assert_eq!(
            wants_link("etc/systemd/system/multi-user.target.wants/a.service"),
            Some(("multi-user.target", "a.service"))
        );
        assert_eq!(wants_link("etc/systemd/system/a.service"), None);
        assert_eq!(wants_link("etc/systemd/system/x.wants/d/a.service"), None);
        let unit = "[Unit]\nDescription=x\n[Install]\nWantedBy=a.target  multi-user.target\n";
        assert!(installs_into(unit, "multi-user.target"));
        assert!(!installs_into(unit, "graphical.target"));
        assert!(!installs_into(
            "[Unit]\nWantedBy=multi-user.target\n",
            "multi-user.target"
        ));
    }

    #[test]
    fn data_urls_gzip_only_when_smaller() {
        let small = data_contents(b"a\n");
        assert_eq!(small.source, "data:;base64,YQo=");
        assert_eq!(small.compression, None);
        let text = "Environment=A=b\n".repeat(50);
        let big = data_contents(text.as_bytes());
        assert_eq!(big.compression.as_deref(), Some("gzip"));
        assert!(big.source.len() < text.len() / 4, "{}", big.source);
    }
}
