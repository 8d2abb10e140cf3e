//! Bytes only: the archive and compression formats imgbuild writes and reads
//! (tar, newc cpio, gzip, zstd, vfat).
//! Nothing here knows about inventories, recipes, plans or the cache: codec
//! imports nothing of ours but `crate::error` (a test checks the `use` lines).

pub mod cpio;
pub mod gz;
pub mod tar;
pub mod vfat;
pub mod zstd;

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Kind, Result};

/// The sha256 (lowercase hex) and length of everything `src` yields.
///
/// The one place codec hashes (the cpio and vfat readers report each file's
/// digest). Every other SHA-256 helper lives in `util::digest`, which codec
/// may not import; handing every file's data stream out to the caller instead
/// would turn the readers inside out for the sake of three lines.
pub(crate) fn sha256_of(src: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let size = io::copy(src, &mut hasher)?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Fill `buf` as far as `r` goes: fewer bytes only at its end.
pub fn read_up_to(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Copy exactly `size` bytes of `path`'s data from `src` to `out`, and check
/// that `src` ends there: a source of another size would shift every later
/// entry, so it is an error, never a silent truncation or padding. Reading to
/// the end also lets a verifying source check its digest; a source that fails
/// with `InvalidData` (such a check) is an integrity error too.
///
/// The data goes to `out` in writes of at most `chunk` bytes. That is part of
/// the output when `out` is a streaming gzip encoder: zlib-rs compresses the
/// same bytes differently when they come in other pieces (measured: 3 MiB of
/// a Go binary written in 8 KiB or 64 KiB pieces gives two different
/// streams). So each format keeps the piece size it has always used.
pub fn copy_exact(
    src: &mut dyn Read,
    out: &mut dyn Write,
    size: u64,
    path: &str,
    chunk: usize,
) -> Result<()> {
    let mut buf = vec![0u8; chunk];
    let mut done = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                return Err(Error::integrity(format!("{path}: {e}")));
            }
            Err(e) => {
                return Err(Error::new(
                    Kind::Io,
                    format!("cannot read the bytes of {path}: {e}"),
                ));
            }
        };
        if done + n as u64 > size {
            return Err(Error::integrity(format!(
                "{path}: its content is longer than the {size} bytes recorded"
            )));
        }
        out.write_all(&buf[..n])
            .map_err(|e| Error::new(Kind::Io, format!("cannot write {path}: {e}")))?;
        done += n as u64;
    }
    if done != size {
        return Err(Error::integrity(format!(
            "{path}: its content is {done} bytes, not the {size} recorded"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Records the size of every write (what a gzip encoder's bytes depend on).
    pub(crate) struct Writes(pub Vec<usize>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf.len());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn copy_exact_refuses_other_sizes() {
        let mut out = Vec::new();
        copy_exact(&mut &b"abc"[..], &mut out, 3, "a", 2).unwrap();
        assert_eq!(out, b"abc");
        let err = copy_exact(&mut &b"abc"[..], &mut Vec::new(), 4, "a", 2).unwrap_err();
        assert_eq!(err.kind, Kind::Integrity);
        assert!(err.to_string().contains("3 bytes, not the 4"), "{err}");
        let err = copy_exact(&mut &b"abc"[..], &mut Vec::new(), 2, "a", 8).unwrap_err();
        assert_eq!(err.kind, Kind::Integrity);
        assert!(err.to_string().contains("longer than"), "{err}");
        assert_eq!(
            sha256_of(&mut &b"abc"[..]).unwrap(),
            (
                "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".into(),
                3
            )
        );
    }
}
