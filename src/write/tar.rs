//! Gzipped tar (ustar) with every header built here: root owner, fixed mtime,
//! no device numbers, no user/host leakage, so the bytes depend only on the plan.

use std::io::{self, Read, Write};

use flate2::{Compression, GzBuilder};

use crate::error::{Error, Result};
use crate::plan::{Entry, EntryKind};

/// Pinned: output bytes depend on the deflate backend (zlib-rs) and the level.
pub const GZIP_LEVEL: u32 = 6;

pub fn gzip<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(w, Compression::new(GZIP_LEVEL))
}

/// The ustar header for `entry`.
pub fn header(entry: &Entry, mtime: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    let path = match entry.kind {
        EntryKind::Dir => format!("{}/", entry.path),
        _ => entry.path.clone(),
    };
    h.set_path(&path).map_err(|e| {
        Error::input(format!(
            "{}: cannot be stored in a tar header: {e}",
            entry.path
        ))
    })?;
    h.set_mode(entry.mode);
    h.set_uid(entry.uid.into());
    h.set_gid(entry.gid.into());
    // Names only for root: GNU tar then maps them on any machine the same way.
    let name = if entry.uid == 0 { "root" } else { "" };
    h.set_username(name).expect("short name");
    h.set_groupname(if entry.gid == 0 { "root" } else { "" })
        .expect("short name");
    h.set_mtime(mtime);
    match &entry.kind {
        EntryKind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        EntryKind::File { size, .. } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(*size);
        }
        EntryKind::Symlink { target } => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_link_name(target).map_err(|e| {
                Error::input(format!(
                    "{}: link target {target:?} too long: {e}",
                    entry.path
                ))
            })?;
        }
    }
    h.set_device_major(0).expect("ustar has device fields");
    h.set_device_minor(0).expect("ustar has device fields");
    h.set_cksum();
    Ok(h)
}

/// Append one entry: header, data (exactly `size` bytes, else an error), padding.
pub fn append<W: Write>(out: &mut W, entry: &Entry, mtime: u64) -> Result<()> {
    let h = header(entry, mtime)?;
    let werr = |e: io::Error| Error::new(crate::Kind::Io, format!("writing {}: {e}", entry.path));
    out.write_all(h.as_bytes()).map_err(werr)?;
    if let EntryKind::File { size, .. } = entry.kind {
        let mut src = entry.open()?;
        let copied = copy_exact(&mut src, out, size).map_err(|e| {
            let kind = if e.kind() == io::ErrorKind::InvalidData {
                crate::Kind::Integrity
            } else {
                crate::Kind::Io
            };
            Error::new(kind, format!("{}: {e}", entry.path))
        })?;
        let pad = (512 - copied % 512) % 512;
        out.write_all(&[0u8; 512][..pad as usize]).map_err(werr)?;
    }
    Ok(())
}

/// Copy exactly `size` bytes and check the source ends there (a short or long
/// source would corrupt every later entry).
fn copy_exact<R: Read + ?Sized, W: Write>(src: &mut R, out: &mut W, size: u64) -> io::Result<u64> {
    let copied = io::copy(&mut src.take(size), out)?;
    let mut probe = [0u8; 1];
    if copied != size || src.read(&mut probe)? != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("source has a different size than recorded ({size} bytes)"),
        ));
    }
    Ok(copied)
}

/// The two zero blocks that end a tar archive.
pub fn finish<W: Write>(out: &mut W) -> io::Result<()> {
    out.write_all(&[0u8; 1024])
}

/// Write `entries` as one tar stream (with end blocks) into `out`, gzipped as
/// two members: the shared entries, then the node's entries. Concatenated gzip
/// members are one valid stream for gzip, GNU tar and the kernel.
pub fn write_tar_gz<'a, W: Write>(
    shared: impl Iterator<Item = &'a Entry>,
    per_node: impl Iterator<Item = &'a Entry>,
    mtime: u64,
    out: W,
) -> Result<W> {
    let io_err = |e: io::Error| Error::new(crate::Kind::Io, format!("writing archive: {e}"));
    let mut gz = gzip(out);
    for e in shared {
        append(&mut gz, e, mtime)?;
    }
    let out = gz.finish().map_err(io_err)?;
    let mut gz = gzip(out);
    for e in per_node {
        append(&mut gz, e, mtime)?;
    }
    finish(&mut gz).map_err(io_err)?;
    gz.finish().map_err(io_err)
}
