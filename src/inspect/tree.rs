//! The tree an output lays down, for `inspect`: a `--format dir` folder (or a
//! root it was copied onto) read back, every entry with its type, mode,
//! owner, size, sha256 and link target as `lstat` sees it (links are never
//! followed, and the walk is bounded: [`super::MAX_ENTRIES`] entries,
//! [`MAX_DEPTH`] levels); the check every output's entries pass (plain paths,
//! nothing beneath a symlink); and files read with a cap.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{Artifact, Inspected, MAX_ENTRIES};
use crate::error::{Error, IoContext, Result, clip};
use crate::output::manifest::Listed;
use crate::util::digest::sha256_file;

/// Folders deeper than this are refused (the plan's are a few levels deep).
pub const MAX_DEPTH: usize = 64;

/// Every entry under `root`, parents first; the root itself is not an entry
/// (a note gives its owner and mode).
pub fn read_tree(root: &Path) -> Result<Inspected> {
    let top = fs::symlink_metadata(root).with_path("cannot read", root)?;
    let mut entries = Vec::new();
    let mut stack = vec![(String::new(), root.to_path_buf(), 0usize)];
    while let Some((rel, dir, depth)) = stack.pop() {
        if depth >= MAX_DEPTH {
            return Err(Error::input(format!(
                "{}: folders nested over {MAX_DEPTH} levels deep",
                dir.display()
            )));
        }
        for e in fs::read_dir(&dir).with_path("cannot read", &dir)? {
            let e = e.with_path("cannot read", &dir)?;
            let path = e.path();
            let name = e.file_name().into_string().map_err(|n| {
                Error::input(format!(
                    "{}: {} is not a UTF-8 name, which imgbuild never writes",
                    dir.display(),
                    clip(&n.to_string_lossy())
                ))
            })?;
            let rel = format!("{rel}/{name}");
            if entries.len() >= MAX_ENTRIES {
                return Err(Error::input(format!(
                    "{}: more than {MAX_ENTRIES} entries, far more than any node holds",
                    root.display()
                )));
            }
            let m = fs::symlink_metadata(&path).with_path("cannot stat", &path)?;
            let t = m.file_type();
            let (kind, size, sha256, target) = if t.is_dir() {
                stack.push((rel.clone(), path.clone(), depth + 1));
                ("dir", 0, None, None)
            } else if t.is_symlink() {
                let target = fs::read_link(&path).with_path("cannot read the link", &path)?;
                let target = target.into_os_string().into_string().map_err(|t| {
                    Error::input(format!(
                        "{}: link target {} is not UTF-8",
                        path.display(),
                        clip(&t.to_string_lossy())
                    ))
                })?;
                ("symlink", 0, None, Some(target))
            } else if t.is_file() {
                let (sha256, size) = sha256_file(&path)?;
                ("file", size, Some(sha256), None)
            } else {
                let what = if t.is_fifo() {
                    "a FIFO"
                } else if t.is_socket() {
                    "a socket"
                } else {
                    "a device"
                };
                return Err(Error::input(format!(
                    "{}: {what}, which imgbuild never writes",
                    path.display()
                )));
            };
            entries.push(Listed {
                path: rel,
                kind,
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                size: Some(size),
                sha256,
                target,
            });
        }
    }
    entries.sort_by(|a, b| crate::plan::path_order(&a.path, &b.path));
    Ok(Inspected {
        artifact: Artifact::Tree,
        entries,
        carries_binaries: true,
        notes: vec![format!(
            "{}: folder, itself {:04o} {}:{}",
            root.display(),
            top.mode() & 0o7777,
            top.uid(),
            top.gid()
        )],
        payload: None,
        implied: BTreeSet::new(),
        enabled: Vec::new(),
    })
}

/// Every entry's path is a plain path below the root (no empty, `.` or `..`
/// part), and none lies beneath a symlink of the output (unpacking it would
/// write through the link, wherever it points).
pub fn check_paths(what: &Path, entries: &[Listed]) -> Result<()> {
    let links: BTreeSet<&str> = entries
        .iter()
        .filter(|e| e.kind == "symlink")
        .map(|e| e.path.as_str())
        .collect();
    for e in entries {
        let rel = e.path.strip_prefix('/').unwrap_or(&e.path);
        if rel
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(Error::input(format!(
                "{}: entry {}: not a plain path below the root (an empty, . or .. part), which imgbuild never writes",
                what.display(),
                clip(&e.path)
            )));
        }
        let mut parent = rel;
        while let Some((up, _)) = parent.rsplit_once('/') {
            if links.contains(format!("/{up}").as_str()) {
                return Err(Error::input(format!(
                    "{}: entry {} lies beneath the symlink /{}: unpacking it would write through the link",
                    what.display(),
                    clip(&e.path),
                    clip(up)
                )));
            }
            parent = up;
        }
    }
    Ok(())
}

/// A file's bytes, refused when over `cap`.
pub fn read_capped(path: &Path, cap: u64) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|f| f.take(cap + 1).read_to_end(&mut bytes))
        .with_path("cannot read", path)?;
    if bytes.len() as u64 > cap {
        return Err(Error::input(format!(
            "{}: over {cap} bytes, far more than imgbuild writes",
            path.display()
        )));
    }
    Ok(bytes)
}
