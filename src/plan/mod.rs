//! The build plan: the one intermediate representation between inputs and outputs.
//!
//! Inventory, recipe, overlay templates, PKI files and cached artifacts become a
//! `Plan`: a list of rootfs entries with their bytes (or where to read them), modes
//! and owners, and where each came from. Every output format (tar.gz, directory,
//! cpio, cloud-init, ...) is a writer over a `Plan`; none of them looks at the
//! inventory or the recipe again.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod assemble;
#[doc(hidden)]
pub mod fixture;

use crate::error::{Error, IoContext, Result};

pub use crate::input::network::Network;
pub use crate::input::recipe::Trust;
use crate::util::digest::{HashingReader, Sha256Hex};
use crate::util::stamp::Stamp;

/// Where an entry's bytes came from, recorded in the build manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Origin {
    /// Rendered from an overlay template (path relative to the overlay root).
    Template { template: String },
    /// A member of a pinned artifact (a release tarball, or the file itself).
    Artifact {
        artifact: String,
        member: String,
        /// `algorithm:hex` of the pinned artifact the member came from.
        pinned: String,
        trust: Trust,
        /// Where the pin came from (a changelog section, a checksum file, a lock).
        source: String,
    },
    /// A file of the cluster's PKI folder (certificates, keys, kubeconfigs).
    Pki { file: String },
    /// Made by imgbuild itself (folders, enablement symlinks).
    Generated { what: String },
}

/// Where a file's bytes are.
#[derive(Debug, Clone)]
pub enum Content {
    /// Small files (rendered templates, PKI) are held in memory.
    Inline(Arc<[u8]>),
    /// Large files stay in the cache and stream from there, verified as they are read.
    Blob(PathBuf),
    /// The same, for a blob whose bytes this user verified when it had this
    /// stamp (see `Cache::verified_blob`): read without hashing if, once
    /// open, it still has it and nobody else may write it; else as a `Blob`.
    Verified(PathBuf, Stamp),
}

#[derive(Debug, Clone)]
pub enum EntryKind {
    Dir,
    File {
        size: u64,
        sha256: Sha256Hex,
        content: Content,
    },
    Symlink {
        target: String,
    },
}

#[derive(Debug, Clone)]
pub struct Entry {
    /// Path inside the rootfs, relative (no leading `/`), `/`-separated, no `..`.
    pub path: String,
    /// Permission bits only (e.g. 0o644); the type is in `kind`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: EntryKind,
    pub origin: Origin,
    /// True when the entry is the same for every node of this recipe and arch
    /// (binaries and their folders): writers may build that part once.
    pub shared: bool,
    /// Private keys, kubeconfigs, encryption config: never printed, always 0600.
    pub secret: bool,
}

impl Entry {
    /// A folder made by imgbuild, owned by root.
    pub fn folder(path: &str, mode: u32, what: &str, shared: bool) -> Entry {
        Entry {
            path: path.to_string(),
            mode,
            uid: 0,
            gid: 0,
            kind: EntryKind::Dir,
            origin: Origin::Generated { what: what.into() },
            shared,
            secret: false,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self.kind {
            EntryKind::Dir => "dir",
            EntryKind::File { .. } => "file",
            EntryKind::Symlink { .. } => "symlink",
        }
    }

    pub fn size(&self) -> u64 {
        match &self.kind {
            EntryKind::File { size, .. } => *size,
            _ => 0,
        }
    }

    /// A reader over the file's bytes. Blob reads are checked against the
    /// recorded size and sha256 when the reader reaches the end: a corrupted
    /// cache fails the build instead of shipping.
    pub fn open(&self) -> Result<Box<dyn Read + Send>> {
        match &self.kind {
            EntryKind::File {
                content: Content::Inline(bytes),
                ..
            } => Ok(Box::new(io::Cursor::new(bytes.clone()))),
            EntryKind::File {
                content: content @ (Content::Blob(path) | Content::Verified(path, _)),
                size,
                sha256,
            } => {
                let file = File::open(path).with_path("cannot open cached blob", path)?;
                // Checked on the open file: what the path names may change.
                let trusted = match content {
                    Content::Verified(_, then) => Stamp::of_file(&file)
                        .ok()
                        .flatten()
                        .is_some_and(|now| now.only_mine() && now.still(then)),
                    _ => false,
                };
                Ok(Box::new(VerifyingReader {
                    inner: HashingReader::new(file),
                    hash: !trusted,
                    size: *size,
                    sha256: sha256.clone(),
                    path: path.clone(),
                }))
            }
            _ => Err(Error::input(format!("{} is not a file", self.path))),
        }
    }

    /// The file's bytes, read whole through [`Entry::open`] (so checked the same way).
    pub fn read_bytes(&self) -> Result<Vec<u8>> {
        let mut bytes = Vec::with_capacity(self.size() as usize);
        self.open()?.read_to_end(&mut bytes).map_err(|err| {
            let kind = match err.kind() {
                io::ErrorKind::InvalidData => crate::Kind::Integrity,
                _ => crate::Kind::Io,
            };
            Error::new(
                kind,
                format!("cannot read the bytes of /{}: {err}", self.path),
            )
        })?;
        if bytes.len() as u64 != self.size() {
            return Err(Error::integrity(format!(
                "/{}: its content is {} bytes, the plan records {}",
                self.path,
                bytes.len(),
                self.size()
            )));
        }
        Ok(bytes)
    }
}

/// Hashes what passes through and fails at EOF if the bytes are not the
/// pinned ones (without `hash`, only if their size is not the pinned one).
struct VerifyingReader {
    inner: HashingReader<File>,
    hash: bool,
    size: u64,
    sha256: Sha256Hex,
    path: PathBuf,
}

impl Read for VerifyingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = match self.hash {
            true => self.inner.read(buf)?,
            false => self.inner.read_unhashed(buf)?,
        };
        if self.inner.len() > self.size {
            return Err(corrupt(&self.path, "it is larger than recorded"));
        }
        if n == 0 && !buf.is_empty() {
            if self.inner.len() != self.size {
                return Err(corrupt(&self.path, "it is smaller than recorded"));
            }
            let actual = match self.hash {
                true => self.inner.sha256(),
                false => return Ok(0),
            };
            if actual != self.sha256 {
                return Err(corrupt(
                    &self.path,
                    &format!("sha256 is {actual}, expected {}", self.sha256),
                ));
            }
        }
        Ok(n)
    }
}

fn corrupt(path: &std::path::Path, why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "cached blob {} is corrupt ({why}); run `imgbuild cache verify` and import or fetch it again",
            path.display()
        ),
    )
}

/// What a node's build was made from: the facts every manifest records
/// (`output::manifest` writes and reads them as they are).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub imgbuild_version: String,
    pub recipe: String,
    pub kubernetes_version: String,
    pub arch: String,
    pub cluster: String,
    /// 1-based index of the node in the inventory.
    pub node_index: usize,
    pub node_name: String,
    /// sha256 of the inventory file's bytes.
    pub inventory_sha256: Sha256Hex,
    /// Entry mtimes (seconds since the epoch): SOURCE_DATE_EPOCH or a fixed default.
    pub mtime: u64,
}

/// Facts about the build: what it was made from, and what shapes the files.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    #[serde(flatten)]
    pub made_from: Provenance,
    /// Enabled units in the layout's start order (dependencies first).
    #[serde(skip)]
    pub unit_order: Vec<String>,
    /// The node's static network, if the inventory gives one.
    #[serde(skip)]
    pub network: Option<Network>,
    /// The OS profile the node is for (`--os`).
    #[serde(skip)]
    pub os: String,
    /// Folders the OS already has (relative paths): outputs that only add to
    /// a running system (Ignition) leave them to it.
    #[serde(skip)]
    pub system_dirs: Vec<String>,
    /// Where a node can fetch each artifact's members itself (cloud-init's
    /// and Ignition's `--binaries mirror=URL`).
    #[serde(skip)]
    pub sources: Vec<Source>,
}

/// Where the node can get an artifact's members at boot: each on its own
/// (`single`), or by fetching the artifact and unpacking it (`single` None).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    /// The artifact's file name (what [`Origin::Artifact`] names).
    pub file: String,
    /// The recipe's name for it (a mirror's folder for an artifact with a
    /// base of its own).
    pub name: String,
    /// The publisher's base URL, and whether it is not dl.k8s.io.
    pub base: String,
    pub own_base: bool,
    /// The artifact's path under the base.
    pub url_path: String,
    /// `algorithm:hex` of the artifact.
    pub pin: String,
    /// Member path → its path under the base when published on its own.
    pub single: BTreeMap<String, Option<String>>,
}

impl Source {
    pub fn of(a: &crate::input::recipe::Artifact, arch: &str, pin: &str) -> Source {
        Source {
            file: a.file_for(arch),
            name: a.name.clone(),
            base: a.base().to_string(),
            own_base: a.own_base(),
            url_path: a.url_path_for(arch),
            pin: pin.to_string(),
            single: a
                .members
                .iter()
                .map(|m| (m.path_for(arch), a.member_url_path(arch, &m.path)))
                .collect(),
        }
    }

    /// The URL of `under_base` (a path under the publisher's base) for a node
    /// told `mirror=URL`: `URL/<path>` for dl.k8s.io's artifacts,
    /// `URL/<name>/<path>` for one with a base of its own; with
    /// `URL` = https://dl.k8s.io (upstream), that one's own base.
    pub fn url(&self, mirror: &str, under_base: &str) -> String {
        let mirror = mirror.trim_end_matches('/');
        match (self.own_base, mirror == crate::input::recipe::DEFAULT_BASE) {
            (false, _) => format!("{mirror}/{under_base}"),
            (true, true) => format!("{}/{under_base}", self.base),
            (true, false) => format!("{mirror}/{}/{under_base}", self.name),
        }
    }

    /// How the node gets `member` from `mirror`: `(url, None)` for a member
    /// published on its own, `(artifact url, Some(algorithm:hex))` for one it
    /// unpacks from the artifact.
    pub fn fetch(&self, mirror: &str, member: &str) -> (String, Option<&str>) {
        match self.single.get(member).cloned().flatten() {
            Some(path) => (self.url(mirror, &path), None),
            None => (self.url(mirror, &self.url_path), Some(&self.pin)),
        }
    }
}

impl Plan {
    /// The source of an artifact entry, if it is one.
    pub fn source_of(&self, e: &Entry) -> Option<&Source> {
        match &e.origin {
            Origin::Artifact { artifact, .. } => {
                self.meta.sources.iter().find(|s| &s.file == artifact)
            }
            _ => None,
        }
    }
}

impl Meta {
    /// Whether the node gets the v1.34+ control plane (see
    /// `input::control_plane`): outputs that install it at boot (cloud-init)
    /// start its units without waiting and retry a failed boot step.
    pub fn current_control_plane(&self) -> bool {
        crate::input::recipe::Version::parse(&self.made_from.kubernetes_version)
            .is_some_and(crate::input::control_plane::is_current)
    }
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub meta: Meta,
    /// Parents before children; sorted by path. Writers keep this order.
    pub entries: Vec<Entry>,
}

impl Plan {
    /// Sort entries by path (so parents precede children) and check the tree is
    /// well-formed: unique paths, every parent present as a folder.
    pub fn finish(&mut self) -> Result<()> {
        self.entries.sort_by(|a, b| path_order(&a.path, &b.path));
        let mut kinds: BTreeMap<&str, bool> = BTreeMap::new();
        for e in &self.entries {
            if e.path.is_empty()
                || e.path.starts_with('/')
                || e.path.ends_with('/')
                || e.path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(Error::input(format!(
                    "bad rootfs path {:?}",
                    crate::error::clip(&e.path)
                )));
            }
            if let Some((parent, _)) = e.path.rsplit_once('/') {
                match kinds.get(parent) {
                    Some(true) => {}
                    Some(false) => {
                        return Err(Error::input(format!(
                            "{} is inside {parent}, which is not a folder",
                            e.path
                        )));
                    }
                    None => {
                        return Err(Error::input(format!(
                            "{} has no parent folder entry {parent}",
                            e.path
                        )));
                    }
                }
            }
            if kinds
                .insert(&e.path, matches!(e.kind, EntryKind::Dir))
                .is_some()
            {
                return Err(Error::input(format!(
                    "{} appears twice in the plan",
                    e.path
                )));
            }
        }
        Ok(())
    }

    /// Entries the same for every node (see `Entry::shared`), in plan order.
    pub fn shared(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| e.shared)
    }

    /// Entries specific to this node, in plan order.
    pub fn per_node(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(|e| !e.shared)
    }

    /// Entries in the order every writer uses: shared first, then per-node.
    /// Formats that concatenate (gzip members, cpio archives) can then build
    /// the shared part once for all nodes.
    pub fn ordered(&self) -> impl Iterator<Item = &Entry> {
        self.shared().chain(self.per_node())
    }
}

/// Order paths component by component so that `a/b` sorts right after `a`
/// (plain string order would put `a-x` between them).
pub fn path_order(a: &str, b: &str) -> std::cmp::Ordering {
    a.split('/').cmp(b.split('/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A blob this user verified (its stamp recorded) is read without
    /// hashing while, once open, it is unchanged and only this user may
    /// write it; otherwise it is hashed, and wrong bytes fail the read.
    #[test]
    fn verified_blobs_are_hashed_unless_unchanged_and_only_mine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        std::fs::write(&path, b"pinned bytes").unwrap();
        let pinned = crate::util::digest::sha256_hex(b"pinned bytes");
        // The same size, other bytes: only hashing can tell.
        std::fs::write(&path, b"other  bytes").unwrap();
        let read = |content: Content| {
            let e = super::fixture::file("usr/local/bin/x", 0o755, b"", true);
            let e = Entry {
                kind: EntryKind::File {
                    size: 12,
                    sha256: pinned.clone(),
                    content,
                },
                ..e
            };
            e.read_bytes()
        };
        let now = || Stamp::of(&path).unwrap().unwrap();
        assert_eq!(
            read(Content::Blob(path.clone())).unwrap_err().kind,
            crate::Kind::Integrity
        );
        // Trusted: recorded as it is now, and only mine (0644).
        assert!(read(Content::Verified(path.clone(), now())).is_ok());
        // Writable by others: hashed, whatever the record says.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = read(Content::Verified(path.clone(), now())).unwrap_err();
        assert!(err.to_string().contains("sha256 is"), "{err}");
        // Changed since it was recorded (here its mode): hashed.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let then = now();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        assert!(read(Content::Verified(path.clone(), then)).is_err());
        // A size other than the pinned one fails even when trusted.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::write(&path, b"longer than pinned").unwrap();
        assert!(read(Content::Verified(path.clone(), now())).is_err());
    }

    fn dir(path: &str) -> Entry {
        Entry::folder(path, 0o755, "folder", false)
    }

    fn meta() -> Meta {
        let mut m = super::fixture::meta();
        m.made_from = Provenance {
            recipe: "r".into(),
            kubernetes_version: "v1".into(),
            node_name: "n".into(),
            mtime: 0,
            ..m.made_from
        };
        m
    }

    #[test]
    fn parents_sort_before_children() {
        let mut plan = Plan {
            meta: meta(),
            entries: vec![dir("a/b"), dir("a-x"), dir("a")],
        };
        plan.finish().unwrap();
        let paths: Vec<_> = plan.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "a/b", "a-x"]);
    }

    #[test]
    fn missing_parent_and_duplicates_are_errors() {
        let mut plan = Plan {
            meta: meta(),
            entries: vec![dir("a/b")],
        };
        assert!(plan.finish().unwrap_err().to_string().contains("no parent"));
        let mut plan = Plan {
            meta: meta(),
            entries: vec![dir("a"), dir("a")],
        };
        assert!(plan.finish().unwrap_err().to_string().contains("twice"));
        let mut plan = Plan {
            meta: meta(),
            entries: vec![dir("a/../b")],
        };
        assert!(plan.finish().is_err());
    }
}
