//! Outputs appear atomically: bytes go to a temporary file in the destination
//! folder, which is renamed over the final name only once everything is written
//! and synced. On error the temporary file is removed and nothing is left.

use std::fs::{self, File, Permissions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use flate2::{Compression, GzBuilder, write::GzEncoder};
use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};

/// The deflate level of every gzip we write: part of the output bytes, so fixed.
pub const GZIP_LEVEL: u32 = 9;

/// A file being written in place of `dest`.
pub struct AtomicFile {
    tmp: NamedTempFile,
    dest: PathBuf,
    mode: u32,
}

impl AtomicFile {
    /// Start writing `dest`; it gets permission bits `mode` (umask does not apply).
    pub fn create(dest: &Path, mode: u32) -> Result<Self> {
        let dir = parent_dir(dest);
        let tmp = tempfile::Builder::new()
            .prefix(".imgbuild-")
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_path("cannot create a temporary file in", dir)?;
        Ok(AtomicFile {
            tmp,
            dest: dest.to_path_buf(),
            mode,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// Sync, set the mode, and rename over the destination.
    pub fn commit(self) -> Result<()> {
        let dest = self.dest;
        let file = self.tmp.as_file();
        file.set_permissions(Permissions::from_mode(self.mode))
            .with_path("cannot set permissions of", self.tmp.path())?;
        file.sync_all().with_path("cannot sync", self.tmp.path())?;
        self.tmp
            .persist(&dest)
            .map_err(|e| Error::io("cannot rename into place", &dest, e.error))?;
        Ok(())
    }
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `dest` atomically with the bytes `write` produces into a buffered writer.
pub fn write_atomic<F>(dest: &Path, mode: u32, write: F) -> Result<()>
where
    F: FnOnce(&mut dyn Write) -> Result<()>,
{
    let mut file = AtomicFile::create(dest, mode)?;
    {
        let mut out = BufWriter::with_capacity(1 << 20, file.file());
        write(&mut out)?;
        out.flush().with_path("cannot write", dest)?;
    }
    file.commit()
}

/// A gzip stream with reproducible header bytes: mtime 0, no file name, OS
/// "unknown" (255), fixed level.
pub fn gzip_encoder<W: Write>(out: W) -> GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(out, Compression::new(GZIP_LEVEL))
}

/// Gzip `bytes` in memory (small outputs such as user-data).
pub fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut enc = gzip_encoder(Vec::new());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

/// Create `dir` (and missing parents) and give it exactly `mode`.
pub fn ensure_dir(dir: &Path, mode: u32) -> Result<()> {
    fs::create_dir_all(dir).with_path("cannot create folder", dir)?;
    fs::set_permissions(dir, Permissions::from_mode(mode))
        .with_path("cannot set permissions of", dir)
}

/// Map an I/O error of the output stream to an error naming the output.
pub fn out_err(dest: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io("cannot write", dest, e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_header_is_fixed() {
        let gz = gzip_bytes(b"hello");
        // magic, deflate, no flags (no name), mtime 0, xfl 2 (level 9), OS 255
        assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 2, 255]);
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

        write_atomic(&dest, 0o600, |w| {
            w.write_all(b"ok").map_err(out_err(Path::new("x")))
        })
        .unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"ok");
        let mode = fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
