//! A file's identity as `stat` sees it: the cheap way to know that a large file
//! imgbuild wrote (a cached segment, a shared archive in an output folder) is
//! still the one it wrote, without reading it again, as make and git do.
//!
//! Any write changes mtime and ctime, a file put in its place has another
//! inode, and ctime cannot be set back without changing the clock. A file
//! whose stamp differs is not trusted: it is hashed again, or rewritten.
//!
//! ctime also moves when a hard link to the file is made or removed, which
//! imgbuild does to a segment placed as a split's shared half. So ctime
//! counts only for a file someone else could have changed: a file this user
//! owns that nobody else may write changes mtime with every write, and only
//! its owner (or root) can set mtime back.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Stamp {
    /// The stamp of a regular file (not following a symlink); `None` for
    /// anything else or a file that is not there.
    pub fn of(path: &Path) -> io::Result<Option<Stamp>> {
        let m = match fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Self::of_meta(&m))
    }

    /// The stamp of an open file (race-free: whatever its path names now).
    pub fn of_file(file: &fs::File) -> io::Result<Option<Stamp>> {
        Ok(Self::of_meta(&file.metadata()?))
    }

    fn of_meta(m: &fs::Metadata) -> Option<Stamp> {
        if !m.file_type().is_file() {
            return None;
        }
        Some(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mode: m.mode(),
            uid: m.uid(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        })
    }

    /// Whether only this user (and root) may change the file: it is this
    /// user's, and neither its group nor others may write it.
    pub fn only_mine(&self) -> bool {
        self.uid == rustix::process::geteuid().as_raw() && self.mode & 0o022 == 0
    }

    /// Whether the file is still the one `recorded` describes (see the
    /// module's comment for when ctime counts).
    pub fn still(&self, recorded: &Stamp) -> bool {
        let ctime = self.only_mine() || self.ctime_ns == recorded.ctime_ns;
        ctime
            && Stamp {
                ctime_ns: recorded.ctime_ns,
                ..self.clone()
            } == *recorded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn any_change_to_the_file_changes_its_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"hello").unwrap();
        let first = Stamp::of(&p).unwrap().unwrap();
        assert_eq!(
            Stamp::of(&p).unwrap().unwrap(),
            first,
            "stable when untouched"
        );

        // Same size, different bytes, mtime put back: ctime still moves.
        let mtime = fs::metadata(&p).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut f = fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all(b"jello").unwrap();
        f.set_modified(mtime).unwrap();
        drop(f);
        let after = Stamp::of(&p).unwrap().unwrap();
        assert_eq!(after.mtime_ns, first.mtime_ns);
        assert_ne!(after, first);

        // A copy renamed into place has another inode.
        let q = dir.path().join("g");
        fs::write(&q, b"jello").unwrap();
        fs::rename(&q, &p).unwrap();
        assert_ne!(Stamp::of(&p).unwrap().unwrap().ino, after.ino);

        // A file others may write: ctime counts; a file only its owner may
        // write: a link made or removed (ctime) is no change, a write is.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o666)).unwrap();
        let shared = Stamp::of(&p).unwrap().unwrap();
        let link = dir.path().join("link");
        fs::hard_link(&p, &link).unwrap();
        assert!(!Stamp::of(&p).unwrap().unwrap().still(&shared));
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        let mine = Stamp::of(&p).unwrap().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::remove_file(&link).unwrap();
        let unlinked = Stamp::of(&p).unwrap().unwrap();
        assert_ne!(unlinked.ctime_ns, mine.ctime_ns);
        assert!(unlinked.still(&mine));
        fs::OpenOptions::new()
            .append(true)
            .open(&p)
            .unwrap()
            .write_all(b"!")
            .unwrap();
        assert!(!Stamp::of(&p).unwrap().unwrap().still(&mine));

        // A mode change is a change.
        let before = Stamp::of(&p).unwrap().unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_ne!(Stamp::of(&p).unwrap().unwrap(), before);

        assert_eq!(Stamp::of(&dir.path().join("none")).unwrap(), None);
        assert_eq!(Stamp::of(dir.path()).unwrap(), None, "not a regular file");
    }
}
