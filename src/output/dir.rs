//! `--format dir`: the tree itself, for inspection or for `cp -a` onto a root.
//! Built in a temp folder beside the destination and renamed into place.

use std::fs::{self, File};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use crate::codec::copy_exact;
use crate::error::{IoContext, Result};
use crate::plan::{EntryKind, Plan};

pub fn write_dir(plan: &Plan, dest: &Path) -> Result<()> {
    let parent = dest.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(&format!(
            ".{}.",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ))
        .suffix(".tmp")
        .tempdir_in(parent)
        .map_err(|e| crate::util::atomic::writable_hint(parent, e))?;
    let root = tmp.path();
    let is_root = is_root();
    let mtime = UNIX_EPOCH + Duration::from_secs(plan.meta.mtime);
    for e in plan.ordered() {
        let p = root.join(&e.path);
        match &e.kind {
            EntryKind::Dir => fs::create_dir(&p).with_path("cannot create", &p)?,
            EntryKind::File { size, .. } => {
                let mut f = File::create(&p).with_path("cannot create", &p)?;
                copy_exact(&mut *e.open()?, &mut f, *size, &e.path, 256 * 1024)?;
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
    // filling a folder changes its mtime.
    for e in plan.ordered().collect::<Vec<_>>().iter().rev() {
        let p = root.join(&e.path);
        if matches!(e.kind, EntryKind::Symlink { .. }) {
            continue;
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(e.mode))
            .with_path("cannot set permissions on", &p)?;
        File::open(&p)
            .and_then(|f| f.set_modified(mtime))
            .with_path("cannot set mtime on", &p)?;
    }
    fs::set_permissions(root, fs::Permissions::from_mode(0o755))
        .with_path("cannot set permissions on", root)?;
    if dest.exists() {
        fs::remove_dir_all(dest).with_path("cannot replace", dest)?;
    }
    let kept = tmp.keep();
    fs::rename(&kept, dest).with_path("cannot rename into place", dest)?;
    Ok(())
}

fn is_root() -> bool {
    // Only root may chown; elsewhere the tree keeps the builder's owner.
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}
