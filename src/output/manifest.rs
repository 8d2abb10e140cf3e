//! The build manifest: every entry with its type, mode, owner, size, sha256,
//! link target and origin, plus what the build was made from. It never holds
//! file contents, so it is safe to publish even though the build holds keys.
//!
//! One schema for both directions: the build writes it ([`write`]) and
//! `inspect --verify` reads it back ([`read`]) with the same types. On disk
//! the keys of every object are in alphabetical order: the manifest is
//! serialized through `serde_json::Value`, whose maps keep their keys sorted
//! (tests/outputs.rs pins the bytes), so the order of the fields below does
//! not show in the file.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::{Entry, EntryKind, Origin, Plan, Provenance};

/// A node's manifest, as written and as read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(flatten)]
    pub meta: Provenance,
    /// The format of the build that wrote the file last (e.g. `tar.gz`,
    /// `cpio.gz (split)`, `cloud-init (binaries seed)`).
    pub format: String,
    /// Output files of every format built from the same inputs, by name.
    pub outputs: Vec<Output>,
    pub entries: Vec<ManifestEntry>,
}

/// A file a build wrote: its name (relative to the output folder), sha256, size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// An output file in the manifest, with the format that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Output {
    pub format: String,
    #[serde(flatten)]
    pub file: OutputFile,
}

/// One entry of the node's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Absolute path in the rootfs (`/etc/...`).
    pub path: String,
    /// "dir", "file" or "symlink".
    #[serde(rename = "type")]
    pub kind: String,
    /// Permission bits in octal, four digits.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Part of the node-independent half (the binaries).
    #[serde(default)]
    pub shared: bool,
    pub secret: bool,
    pub origin: Origin,
}

impl From<&Entry> for ManifestEntry {
    fn from(e: &Entry) -> Self {
        ManifestEntry {
            path: format!("/{}", e.path),
            kind: e.type_name().to_string(),
            mode: format!("{:04o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            size: e.size(),
            sha256: match &e.kind {
                EntryKind::File { sha256, .. } => Some(sha256.clone()),
                _ => None,
            },
            target: match &e.kind {
                EntryKind::Symlink { target } => Some(target.clone()),
                _ => None,
            },
            shared: e.shared,
            secret: e.secret,
            origin: e.origin.clone(),
        }
    }
}

/// One entry of an output as a reader finds it (`imgbuild inspect`), to be
/// compared with the [`ManifestEntry`] the build recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// Absolute path in the rootfs (`/etc/...`), as in the manifest.
    pub path: String,
    /// "dir", "file" or "symlink".
    pub kind: &'static str,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// `None` when the output does not carry it (a mirrored binary).
    pub size: Option<u64>,
    pub sha256: Option<String>,
    pub target: Option<String>,
}

impl Listed {
    /// A symbolic link as readers list it: mode 0777, size 0.
    pub fn symlink(path: &str, target: &str, uid: u32, gid: u32) -> Self {
        Listed {
            path: path.to_string(),
            kind: "symlink",
            mode: 0o777,
            uid,
            gid,
            size: Some(0),
            sha256: None,
            target: Some(target.to_string()),
        }
    }
}

impl Manifest {
    /// The manifest of `plan` built as `format`, which wrote `outputs`.
    pub fn new(plan: &Plan, format: &str, outputs: Vec<OutputFile>) -> Self {
        Manifest {
            meta: plan.meta.made_from.clone(),
            format: format.to_string(),
            outputs: outputs
                .into_iter()
                .map(|file| Output {
                    format: format.to_string(),
                    file,
                })
                .collect(),
            entries: plan.ordered().map(ManifestEntry::from).collect(),
        }
    }

    /// The file's bytes: pretty JSON, keys sorted, a final newline.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("manifest serializes");
        let mut bytes = serde_json::to_vec_pretty(&value).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Parse a manifest's bytes.
    pub fn from_bytes(bytes: &[u8]) -> serde_json::Result<Self> {
        serde_json::from_slice(bytes)
    }
}

/// Read the manifest at `path` (for `inspect --verify`).
pub fn read(path: &Path) -> Result<Manifest> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::io("cannot read manifest", path, e)
            .context("pass --manifest FILE (the controller-<N>.manifest.json of the build)")
    })?;
    Manifest::from_bytes(&bytes)
        .map_err(|e| Error::input(format!("manifest {}: {e}", path.display())))
}

/// Write the node's manifest at `path`. Several formats of one node share the
/// manifest: when the file already describes exactly the same entries and
/// inputs, the other formats' outputs are kept beside this one's; otherwise
/// the file is replaced. Under the output folder's lock.
pub fn write(path: &Path, plan: &Plan, format: &str, outputs: Vec<OutputFile>) -> Result<()> {
    let mut manifest = Manifest::new(plan, format, outputs);
    // Read, merged and written under the output folder's lock: two builds of
    // the node in other formats at once keep both formats' outputs.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let _lock = crate::util::atomic::lock_dir(dir)?;
    let old = std::fs::read(path)
        .ok()
        .and_then(|b| Manifest::from_bytes(&b).ok());
    if let Some(old) = old
        && old.meta == manifest.meta
        && old.entries == manifest.entries
    {
        for o in old.outputs {
            if !manifest.outputs.iter().any(|n| n.file.name == o.file.name) {
                manifest.outputs.push(o);
            }
        }
    }
    manifest
        .outputs
        .sort_by(|a, b| a.file.name.cmp(&b.file.name));
    crate::util::atomic::write(path, &manifest.to_bytes(), 0o644).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixture::sample_plan;

    #[test]
    fn reads_back_what_it_writes_with_keys_sorted() {
        let plan = sample_plan();
        let file = |name: &str| OutputFile {
            name: name.into(),
            sha256: "ab".into(),
            size: 3,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller-1.manifest.json");
        write(&path, &plan, "tar.gz", vec![file("controller-1.tar.gz")]).unwrap();
        write(&path, &plan, "cpio", vec![file("controller-1.cpio")]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.starts_with(b"{\n  \"arch\": \"amd64\",\n  \"cluster\""));
        let back = read(&path).unwrap();
        assert_eq!(back.to_bytes(), bytes);
        assert_eq!(back.format, "cpio");
        let outputs: Vec<_> = back
            .outputs
            .iter()
            .map(|o| (o.format.as_str(), o.file.name.as_str()))
            .collect();
        assert_eq!(
            outputs,
            [
                ("cpio", "controller-1.cpio"),
                ("tar.gz", "controller-1.tar.gz")
            ]
        );
        assert_eq!(back.entries, Manifest::new(&plan, "x", vec![]).entries);

        // Other inputs: the other formats' outputs are dropped.
        let mut other = plan.clone();
        other.meta.made_from.mtime += 1;
        write(&path, &other, "dir", vec![]).unwrap();
        assert!(read(&path).unwrap().outputs.is_empty());
    }
}
