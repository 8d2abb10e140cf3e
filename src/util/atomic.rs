//! Output files appear whole or not at all: they are written to a temp file in
//! the destination folder, synced, and renamed into place once complete (and
//! the folder synced after the rename, so a crash right after a build leaves
//! the old file or the new one, never an empty or half one). Folders
//! (`--format dir`, cloud-init's) are swapped the same way ([`swap_dir`]).
//!
//! Every temp file and folder is in a registry of live temp paths while it
//! exists under its temp name; the CLI's SIGINT/SIGTERM handler calls
//! [`remove_live`], so an interrupted build leaves no `.tmp` (0600, with keys)
//! behind. Creating, renaming and removing under the registry's lock keeps the
//! handler from missing a file made or renamed at the same moment.

use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use tempfile::{NamedTempFile, TempDir};

use crate::error::{Error, IoContext, Result};
use crate::util::writeback::Writeback;

// ---------------------------------------------------------------------------
// The registry of live temp paths.

/// What an interrupted process must remove.
enum Live {
    /// A temp file or folder, by its path.
    Path(PathBuf),
    /// Every name in a folder starting with a prefix (the cache's temp files,
    /// whose names carry this process's id).
    Prefix(PathBuf, String),
}

static LIVE: Mutex<Vec<Live>> = Mutex::new(Vec::new());

fn live() -> MutexGuard<'static, Vec<Live>> {
    // A panic elsewhere while holding the lock leaves the list as it was.
    LIVE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Make a temp file or folder with `make`, registered as live (under the
/// lock, so the signal handler sees it as soon as it exists). The guard
/// takes it off the list when dropped.
pub fn tracked<T>(
    make: impl FnOnce() -> io::Result<T>,
    path_of: impl FnOnce(&T) -> &Path,
) -> io::Result<(T, LiveGuard)> {
    let mut list = live();
    let made = make()?;
    let path = path_of(&made).to_path_buf();
    list.push(Live::Path(path.clone()));
    Ok((made, LiveGuard(path)))
}

/// Run `rename` (which moves the live path `path` away from its temp name)
/// under the registry's lock, and take `path` off the list if it succeeds.
pub fn settle<T, E>(
    path: &Path,
    rename: impl FnOnce() -> std::result::Result<T, E>,
) -> std::result::Result<T, E> {
    let mut list = live();
    let done = rename()?;
    list.retain(|l| !matches!(l, Live::Path(p) if p == path));
    Ok(done)
}

/// Register every name in `dir` that starts with `prefix` as live, for good
/// (the cache's temp files: see `store::cache`).
pub fn track_prefix(dir: &Path, prefix: &str) {
    let mut list = live();
    if !list
        .iter()
        .any(|l| matches!(l, Live::Prefix(d, p) if d == dir && p == prefix))
    {
        list.push(Live::Prefix(dir.to_path_buf(), prefix.to_string()));
    }
}

/// A live temp path; dropped, it is no longer on the list (whoever owns the
/// file or folder removes it, or has renamed it).
pub struct LiveGuard(PathBuf);

impl LiveGuard {
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let path = &self.0;
        live().retain(|l| !matches!(l, Live::Path(p) if p == path));
    }
}

/// Remove every live temp file and folder, and keep the registry locked
/// until the process ends: for a signal handler that exits right after.
/// Returns what it removed.
pub fn remove_live() -> Vec<PathBuf> {
    let list = live();
    let mut removed = Vec::new();
    let mut remove = |p: &Path| {
        let gone = match fs::symlink_metadata(p) {
            Ok(m) if m.is_dir() => {
                // Another thread may still be adding to the folder: retry.
                (0..5).any(|_| fs::remove_dir_all(p).is_ok())
            }
            Ok(_) => fs::remove_file(p).is_ok(),
            Err(_) => false,
        };
        if gone {
            removed.push(p.to_path_buf());
        }
    };
    for l in list.iter() {
        match l {
            Live::Path(p) => remove(p),
            Live::Prefix(dir, prefix) => {
                for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                    if e.file_name().to_string_lossy().starts_with(prefix.as_str()) {
                        remove(&e.path());
                    }
                }
            }
        }
    }
    // Held until exit: no new temp file is made, and none renamed, after this.
    std::mem::forget(list);
    removed
}

// ---------------------------------------------------------------------------
// Files.

/// A file being written; dropped without `commit` it disappears. It can seek
/// (buffered bytes are written first), and `file_mut` gives the file itself
/// to code that needs one (a disk image, an in-kernel copy).
pub struct AtomicFile {
    tmp: io::BufWriter<Writeback<NamedTempFile>>,
    dest: PathBuf,
    mode: u32,
    live: LiveGuard,
}

/// A temp file named after `dest`, in `dest`'s folder, registered as live.
fn temp_beside(dest: &Path) -> Result<(NamedTempFile, LiveGuard)> {
    made_beside(dest, |b, dir| b.tempfile_in(dir), |t| t.path())
}

/// What `make` makes with a temp name for `dest` (`.NAME.XXXXXX.tmp`) in
/// `dest`'s folder, registered as live.
fn made_beside<T>(
    dest: &Path,
    make: impl FnOnce(&tempfile::Builder, &Path) -> io::Result<T>,
    path_of: impl FnOnce(&T) -> &Path,
) -> Result<(T, LiveGuard)> {
    let dir = parent(dest);
    let prefix = temp_prefix(dest);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    tracked(|| make(&builder, &dir), path_of).map_err(|e| writable_hint(&dir, e))
}

/// `.NAME.` for `dest` named NAME: temp files and folders are hidden and say
/// what they will be.
fn temp_prefix(dest: &Path) -> String {
    format!(
        ".{}.",
        dest.file_name().unwrap_or_default().to_string_lossy()
    )
}

/// The write buffer of an output file.
const BUFFER: usize = 1 << 20;

impl AtomicFile {
    pub fn create(dest: &Path, mode: u32) -> Result<AtomicFile> {
        Self::with_buffer(dest, mode, BUFFER)
    }

    /// A file without a write buffer (its writer passes large writes
    /// through), until [`AtomicFile::buffered`]: many can be open at once.
    pub fn unbuffered(dest: &Path, mode: u32) -> Result<AtomicFile> {
        Self::with_buffer(dest, mode, 0)
    }

    fn with_buffer(dest: &Path, mode: u32, capacity: usize) -> Result<AtomicFile> {
        let (tmp, live) = temp_beside(dest)?;
        Ok(AtomicFile {
            tmp: io::BufWriter::with_capacity(capacity, Writeback::new(tmp)),
            dest: dest.to_path_buf(),
            mode,
            live,
        })
    }

    /// The same file, with a write buffer from now on.
    pub fn buffered(self) -> io::Result<AtomicFile> {
        let AtomicFile {
            mut tmp,
            dest,
            mode,
            live,
        } = self;
        tmp.flush()?;
        let (inner, _) = tmp.into_parts();
        Ok(AtomicFile {
            tmp: io::BufWriter::with_capacity(BUFFER, inner),
            dest,
            mode,
            live,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// The mode the file gets when committed.
    pub fn set_mode(&mut self, mode: u32) {
        self.mode = mode;
    }

    /// The temp file itself (buffer flushed), for code that seeks in it (a
    /// disk image).
    pub fn file_mut(&mut self) -> io::Result<&mut fs::File> {
        self.tmp.flush()?;
        Ok(self.tmp.get_mut().get_mut().as_file_mut())
    }

    /// The temp file as written so far (buffer flushed), to append a file
    /// to it in the kernel ([`Writeback::append_file`]).
    pub fn writer_mut(&mut self) -> io::Result<&mut Writeback<NamedTempFile>> {
        self.tmp.flush()?;
        Ok(self.tmp.get_mut())
    }

    /// Give the file its mode, sync it, rename it into place and sync the
    /// folder: once this returns, the file is on disk under its name.
    pub fn commit(self) -> Result<PathBuf> {
        let dest = self.dest;
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| Error::io("cannot write", &dest, e.into_error()))?
            .into_inner();
        // Mode set explicitly: the umask must not decide who may read private keys.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(self.mode))
            .with_path("cannot set permissions on", tmp.path())?;
        tmp.as_file().sync_all().with_path("cannot sync", &dest)?;
        settle(self.live.path(), || tmp.persist(&dest))
            .map_err(|e| Error::io("cannot rename into place", &dest, e.error))?;
        sync_dir(&parent(&dest))?;
        Ok(dest)
    }
}

/// Make `dest` a hard link to `src` (a file already on disk), replacing what
/// is there in one rename, then sync the folder. `false` where no link can
/// be made (another filesystem, links not allowed here): the caller copies.
pub fn link(src: &Path, dest: &Path) -> Result<bool> {
    let dir = parent(dest);
    let prefix = temp_prefix(dest);
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    let made = tracked(
        || builder.make_in(&dir, |p| fs::hard_link(src, p)),
        |t| t.path(),
    );
    let Ok((tmp, live)) = made else {
        return Ok(false);
    };
    settle(live.path(), || tmp.persist(dest))
        .map_err(|e| Error::io("cannot rename into place", dest, e.error))?;
    sync_dir(&dir)?;
    Ok(true)
}

/// Sync a folder, so the names renamed into it are on disk.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_path("cannot sync", dir)
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.tmp.seek(pos)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

/// Write `bytes` to `dest` atomically.
pub fn write(dest: &Path, bytes: &[u8], mode: u32) -> Result<PathBuf> {
    write_atomic(dest, mode, |f| {
        f.write_all(bytes).with_path("cannot write", dest)
    })
}

/// Write `dest` atomically with whatever `write` puts into the stream.
pub fn write_atomic<F>(dest: &Path, mode: u32, write: F) -> Result<PathBuf>
where
    F: FnOnce(&mut AtomicFile) -> Result<()>,
{
    let mut file = AtomicFile::create(dest, mode)?;
    write(&mut file)?;
    file.flush().with_path("cannot write", dest)?;
    file.commit()
}

// ---------------------------------------------------------------------------
// Folders.

/// A folder being filled beside `dest` (a hidden temp folder), registered as
/// live; dropped without [`swap_dir`] it is removed.
pub struct TempFolder {
    dir: TempDir,
    live: LiveGuard,
}

impl TempFolder {
    pub fn beside(dest: &Path) -> Result<TempFolder> {
        let (dir, live) = made_beside(dest, |b, parent| b.tempdir_in(parent), |d| d.path())?;
        Ok(TempFolder { dir, live })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// Put the filled (and synced) `new` folder at `dest`, so that `dest` is
/// never missing: the two are exchanged in one step (`renameat2`'s
/// `RENAME_EXCHANGE`) and the old tree, now under the temp name, removed
/// after. Where the filesystem cannot exchange, the old folder is renamed
/// aside (`.NAME.old`) and the new one renamed in, and only then the old one
/// removed. A failure before the new folder is in place leaves `dest` as it
/// was and removes `new`. Once the new folder is in place the swap has
/// succeeded: what went wrong after that (an old folder that cannot be
/// removed) is returned as a warning naming what was left, not as an error.
pub fn swap_dir(new: TempFolder, dest: &Path) -> Result<Option<String>> {
    let parent = parent(dest);
    let TempFolder { dir, live: guard } = new;
    let tmp = dir.keep();
    // Under the registry's lock: an interrupted process removes the new tree
    // (not yet in place) or the old one (already replaced), never `dest`.
    let swapped = {
        let mut list = live();
        let swapped = exchange_or_rename(&tmp, dest, &parent);
        match &swapped {
            // The temp name now holds the old tree: still live, to be removed.
            Ok(Some(old)) if *old == tmp => {}
            Ok(old) => {
                list.retain(|l| !matches!(l, Live::Path(p) if *p == tmp));
                if let Some(old) = old {
                    list.push(Live::Path(old.clone()));
                }
            }
            Err(_) => {}
        }
        swapped
    };
    let old = match swapped {
        Ok(old) => old,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let mut left = Vec::new();
    if let Err(e) = sync_dir(&parent) {
        left.push(e.to_string());
    }
    if let Some(old) = &old {
        let _old_guard = LiveGuard(old.clone());
        if let Err(e) = fs::remove_dir_all(old) {
            left.push(format!(
                "cannot remove the previous folder, now {} (remove it by hand): {e}",
                old.display()
            ));
        }
    }
    drop(guard);
    Ok((!left.is_empty())
        .then(|| format!("{} is in place, but: {}", dest.display(), left.join("; "))))
}

/// Put `tmp` at `dest`; where the previous `dest` went, if there was one.
fn exchange_or_rename(tmp: &Path, dest: &Path, parent: &Path) -> Result<Option<PathBuf>> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, tmp, CWD, dest, RenameFlags::EXCHANGE) {
        Ok(()) => return Ok(Some(tmp.to_path_buf())),
        Err(rustix::io::Errno::NOENT) if tmp.exists() => {
            // Nothing at `dest` yet.
            return match fs::rename(tmp, dest) {
                Ok(()) => Ok(None),
                Err(e) => Err(Error::io("cannot rename into place", dest, e)),
            };
        }
        // Cannot exchange here (EINVAL on filesystems without it): two renames.
        Err(_) => {}
    }
    let name = dest.file_name().unwrap_or_default().to_string_lossy();
    let old = parent.join(format!(".{name}.old"));
    match fs::remove_dir_all(&old) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot remove the leftover", &old, e)),
    }
    let had_old = match fs::rename(dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("cannot move aside the previous", dest, e)),
    };
    if let Err(e) = fs::rename(tmp, dest) {
        if had_old {
            let _ = fs::rename(&old, dest);
        }
        return Err(Error::io("cannot rename into place", dest, e));
    }
    Ok(had_old.then_some(old))
}

/// Lock the output folder `dir` (an exclusive flock on the folder itself, so
/// no lock file is left behind) while its shared bookkeeping (SHA256SUMS, a
/// node's manifest) is read, merged and written back. Released when the
/// returned handle is dropped; another process waits for it.
pub fn lock_dir(dir: &Path) -> Result<fs::File> {
    let file = fs::File::open(dir).with_path("cannot open", dir)?;
    file.lock().with_path("cannot lock", dir)?;
    Ok(file)
}

fn parent(p: &Path) -> PathBuf {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub fn writable_hint(dir: &Path, e: io::Error) -> Error {
    Error::io("cannot write into output folder", dir, e)
        .context("check that the folder exists and is writable, or choose another with --out")
}

/// Create the output folder (and parents), with a clear message if we cannot.
pub fn ensure_dir(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir).map_err(|e| writable_hint(dir, e))
}

/// Create `dir` (and missing parents) and give it exactly `mode`.
pub fn ensure_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    ensure_dir(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
        .with_path("cannot set permissions of", dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_write_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        let err = write_atomic(&dest, 0o644, |w| {
            w.write_all(b"partial").unwrap();
            Err(Error::input("boom"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "boom");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);

        write(&dest, b"ok", 0o600).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"ok");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let img = AtomicFile::create(&dir.path().join("x.img"), 0o600).unwrap();
        drop(img);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    /// Seeking writes what is buffered first: writes land where they were made.
    #[test]
    fn seeks_and_writes_out_of_order() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("x.img");
        let mut f = AtomicFile::create(&dest, 0o640).unwrap();
        f.write_all(b"aaaa").unwrap();
        f.seek(SeekFrom::Start(8)).unwrap();
        f.write_all(b"cc").unwrap();
        f.seek(SeekFrom::Start(4)).unwrap();
        f.write_all(b"bb").unwrap();
        f.file_mut().unwrap().write_all(b"BB").unwrap();
        f.commit().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"aaaabbBBcc");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }

    /// A folder swapped in replaces the old one whole; a second swap finds
    /// no leftover; a live temp file is removed by `remove_live`-style cleanup.
    #[test]
    fn folders_swap_whole_and_live_paths_are_known() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tree");
        for round in 0..3 {
            let new = TempFolder::beside(&dest).unwrap();
            fs::write(new.path().join("f"), format!("{round}")).unwrap();
            assert!(
                live()
                    .iter()
                    .any(|l| matches!(l, Live::Path(p) if p == new.path()))
            );
            assert_eq!(swap_dir(new, &dest).unwrap(), None);
            assert_eq!(
                fs::read_to_string(dest.join("f")).unwrap(),
                format!("{round}")
            );
            let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
            assert_eq!(names.len(), 1, "leftovers beside the folder");
        }
        // Dropped unswapped: gone, and off the list.
        let new = TempFolder::beside(&dest).unwrap();
        let path = new.path().to_path_buf();
        drop(new);
        assert!(!path.exists());
        assert!(
            !live()
                .iter()
                .any(|l| matches!(l, Live::Path(p) if *p == path))
        );
        // A committed file is off the list too.
        let f = AtomicFile::create(&dir.path().join("x"), 0o600).unwrap();
        let tmp = f.live.path().to_path_buf();
        f.commit().unwrap();
        assert!(
            !live()
                .iter()
                .any(|l| matches!(l, Live::Path(p) if *p == tmp))
        );
    }
}
