//! Output files appear whole or not at all: they are written to a temp file in
//! the destination folder and renamed into place once complete.

use std::fs;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};

/// A file being written; dropped without `commit` it disappears. It can seek
/// (buffered bytes are written first), and `file_mut` gives the file itself
/// to code that needs one (a disk image, an in-kernel copy).
pub struct AtomicFile {
    tmp: io::BufWriter<NamedTempFile>,
    dest: PathBuf,
    mode: u32,
}

impl AtomicFile {
    pub fn create(dest: &Path, mode: u32) -> Result<AtomicFile> {
        let dir = parent(dest);
        let tmp = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                dest.file_name().unwrap_or_default().to_string_lossy()
            ))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| writable_hint(&dir, e))?;
        Ok(AtomicFile {
            tmp: io::BufWriter::with_capacity(1 << 20, tmp),
            dest: dest.to_path_buf(),
            mode,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dest
    }

    /// The temp file itself (buffer flushed), e.g. for an in-kernel copy into it.
    pub fn file_mut(&mut self) -> io::Result<&mut fs::File> {
        self.tmp.flush()?;
        Ok(self.tmp.get_mut().as_file_mut())
    }

    /// Give the file its mode and rename it into place.
    ///
    /// Not fsynced: the rename makes the file appear whole or not at all when a
    /// build is interrupted; flushing ~100 MB per node to disk would dominate
    /// multi-node builds. (The cache, which outlives builds, is synced.)
    pub fn commit(self) -> Result<PathBuf> {
        self.persist(false)
    }

    /// `commit`, with the bytes synced to disk before the rename (the seed
    /// volume image).
    pub fn commit_synced(self) -> Result<PathBuf> {
        self.persist(true)
    }

    fn persist(self, sync: bool) -> Result<PathBuf> {
        let dest = self.dest;
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| Error::io("cannot write", &dest, e.into_error()))?;
        // Mode set explicitly: the umask must not decide who may read private keys.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(self.mode))
            .with_path("cannot set permissions on", tmp.path())?;
        if sync {
            tmp.as_file().sync_all().with_path("cannot sync", &dest)?;
        }
        tmp.persist(&dest)
            .map_err(|e| Error::io("cannot rename into place", &dest, e.error))?;
        Ok(dest)
    }
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
        f.commit_synced().unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"aaaabbBBcc");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o640);
    }
}
