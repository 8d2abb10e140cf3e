//! `--format dir`: the tree itself, for inspection or for copying onto a root.
//! Built in a temp folder beside the destination and swapped into place
//! (`util::atomic::swap_dir`). Returns a warning when the swap left something
//! behind.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::codec::copy_exact;
use crate::error::{IoContext, Result};
use crate::plan::{EntryKind, Plan};
use crate::util::atomic::{TempFolder, swap_dir, sync_dir};

pub fn write_dir(plan: &Plan, dest: &Path) -> Result<Option<String>> {
    let tmp = TempFolder::beside(dest)?;
    let root = tmp.path();
    let is_root = is_root();
    let mtime = UNIX_EPOCH + Duration::from_secs(plan.meta.made_from.mtime);
    for e in plan.ordered() {
        let p = root.join(&e.path);
        match &e.kind {
            EntryKind::Dir => fs::create_dir(&p).with_path("cannot create", &p)?,
            EntryKind::File { size, .. } => {
                let mut f = File::create(&p).with_path("cannot create", &p)?;
                copy_exact(&mut *e.open()?, &mut f, *size, &e.path, 256 * 1024)
                    .map_err(|err| err.context(dest.display()))?;
                f.sync_all().with_path("cannot sync", &p)?;
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &p).with_path("cannot create", &p)?
            }
        }
        if is_root {
            std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid))
                .with_path("cannot chown", &p)?;
        }
    }
    // Modes and times after content: a 0555 folder could not be filled, and
    // filling a folder changes its mtime. Folders are synced first (what they
    // hold is on disk before the tree is renamed into place).
    for e in plan.ordered().collect::<Vec<_>>().iter().rev() {
        let p = root.join(&e.path);
        match e.kind {
            EntryKind::Symlink { .. } => continue,
            EntryKind::Dir => sync_dir(&p)?,
            EntryKind::File { .. } => {}
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
            .with_path("cannot set permissions on", &p)?;
        File::open(&p)
            .and_then(|f| f.set_modified(mtime))
            .with_path("cannot set mtime on", &p)?;
    }
    sync_dir(root)?;
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))
        .with_path("cannot set permissions on", root)?;
    // The old tree is moved aside, the new one renamed in, and only then the
    // old one removed: `dest` is never missing.
    swap_dir(tmp, dest)
}

fn is_root() -> bool {
    builder_uid() == Some(0)
}

/// The uid this process writes files as (the owner of `/proc/self`).
fn builder_uid() -> Option<u32> {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .ok()
}

/// Built as another user than root, the tree's files are that user's: what
/// to say, with the exact command that copies the tree onto a root with the
/// manifest's owners (root) and the tree's modes, leaving the root folder's
/// own owner and mode as they are (the tree's top-level names are copied,
/// not `.`). `None` when built as root.
pub fn not_root_warning(plan: &Plan, dest: &Path) -> Option<String> {
    let uid = match builder_uid() {
        Some(0) => return None,
        Some(uid) => uid.to_string(),
        None => "(unknown)".to_string(),
    };
    let shown = dest.display().to_string();
    let head = format!(
        "{shown} was built as uid {uid}, not root: its files are owned by uid {uid}, while its manifest says root. \
         Do not `cp -a` it onto a root (that gives uid {uid} the node's binaries, units and keys, and the root folder itself)"
    );
    // Every entry of a plan is root's (plan::assemble); were one not, a copy
    // forcing root would be wrong, so no command is given.
    if plan.entries.iter().any(|e| e.uid != 0 || e.gid != 0) {
        return Some(format!(
            "{head}; use --format tar.gz, whose entries carry their owners"
        ));
    }
    let mut top: Vec<&str> = plan
        .entries
        .iter()
        .map(|e| e.path.split('/').next().unwrap_or(&e.path))
        .collect();
    top.sort();
    top.dedup();
    let top: Vec<String> = top.into_iter().map(sh_quote).collect();
    Some(format!(
        "{head}. Copy it with root as owner (an image mounted at /mnt; /mnt itself is left as it is):\n  \
         sudo tar -C {} --owner=0 --group=0 --numeric-owner -cf - {} | sudo tar -C /mnt --numeric-owner -xpf -",
        sh_quote(&shown),
        top.join(" ")
    ))
}

/// `s` as one shell word.
fn sh_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "/._-+=:@,%".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
