//! Output files appear whole or not at all: they are written to a temp file in
//! the destination folder and renamed into place once complete and synced.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};

/// A file being written; dropped without `commit` it disappears.
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

    pub fn commit(self) -> Result<PathBuf> {
        let dest = self.dest;
        let tmp = self
            .tmp
            .into_inner()
            .map_err(|e| Error::io("cannot write", &dest, e.into_error()))?;
        // Mode set explicitly: the umask must not decide who may read private keys.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(self.mode))
            .with_path("cannot set permissions on", tmp.path())?;
        // Not fsynced: the rename makes the file appear whole or not at all when a
        // build is interrupted; flushing ~100 MB per node to disk would dominate
        // multi-node builds. (The cache, which outlives builds, is synced.)
        tmp.persist(&dest)
            .map_err(|e| Error::io("cannot rename into place", &dest, e.error))?;
        Ok(dest)
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
    let mut f = AtomicFile::create(dest, mode)?;
    f.write_all(bytes).with_path("cannot write", dest)?;
    f.commit()
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
