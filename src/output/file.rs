//! Helpers the cpio and cloud-init writers share, on top of [`crate::util::atomic`]:
//! streaming into an atomic file, a seekable atomic file (for disk images),
//! in-memory gzip with the pinned header, private folders.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};
use crate::util::atomic::{self, AtomicFile};

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

/// An atomic output that can seek (disk images are not written front to back).
pub struct SeekableAtomicFile {
    tmp: NamedTempFile,
    dest: PathBuf,
    mode: u32,
}

impl SeekableAtomicFile {
    pub fn create(dest: &Path, mode: u32) -> Result<Self> {
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let tmp = tempfile::Builder::new()
            .prefix(&format!(
                ".{}.",
                dest.file_name().unwrap_or_default().to_string_lossy()
            ))
            .suffix(".tmp")
            .tempfile_in(&dir)
            .map_err(|e| atomic::writable_hint(&dir, e))?;
        Ok(SeekableAtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            mode,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    pub fn commit(self) -> Result<PathBuf> {
        let dest = self.dest;
        // Mode set explicitly: the umask must not decide who may read private keys.
        self.tmp
            .as_file()
            .set_permissions(Permissions::from_mode(self.mode))
            .with_path("cannot set permissions on", self.tmp.path())?;
        self.tmp
            .as_file()
            .sync_all()
            .with_path("cannot sync", &dest)?;
        self.tmp
            .persist(&dest)
            .map_err(|e| Error::io("cannot rename into place", &dest, e.error))?;
        Ok(dest)
    }
}

/// Gzip `bytes` in memory (user-data), with the same pinned header and level
/// as every other gzip we write.
pub fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut enc = crate::codec::gz::encoder(Vec::new());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Create `dir` (and missing parents) and give it exactly `mode`.
pub fn ensure_dir_mode(dir: &Path, mode: u32) -> Result<()> {
    atomic::ensure_dir(dir)?;
    fs::set_permissions(dir, Permissions::from_mode(mode))
        .with_path("cannot set permissions of", dir)
}

/// An I/O error while writing `dest`.
pub fn out_err(dest: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io("cannot write", dest, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_header_is_fixed() {
        let gz = gzip_bytes(b"hello");
        // magic, deflate, no flags (no name), mtime 0, xfl 0 (level 6), OS 255
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        assert_eq!(gz, gzip_bytes(b"hello"));
    }

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

        write_atomic(&dest, 0o600, |w| w.write_all(b"ok").map_err(out_err(&dest))).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"ok");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

        let img = SeekableAtomicFile::create(&dir.path().join("x.img"), 0o600).unwrap();
        drop(img);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
