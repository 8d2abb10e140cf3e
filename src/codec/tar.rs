//! Gzipped tar (ustar) with every header built here: root owner, fixed mtime,
//! no device numbers, no user/host leakage, so the bytes depend only on the plan.

use std::io::{self, Read, Write};

use crate::error::{Error, Result};
use crate::plan::{Entry, EntryKind};

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

/// The tar bytes of `entries` (headers, data, padding; no end blocks) as a
/// reader, streaming file data from their sources (cached blobs are verified
/// as they are read).
pub struct TarStream<'a> {
    entries: std::vec::IntoIter<&'a Entry>,
    mtime: u64,
    state: State,
}

enum State {
    Next,
    Header(io::Cursor<Vec<u8>>, Option<Data>),
    Data(Data),
    Pad(usize),
}

struct Data {
    src: Box<dyn Read + Send>,
    left: u64,
    size: u64,
    path: String,
}

impl<'a> TarStream<'a> {
    pub fn new(entries: Vec<&'a Entry>, mtime: u64) -> Self {
        TarStream {
            entries: entries.into_iter(),
            mtime,
            state: State::Next,
        }
    }
}

fn to_io(e: Error) -> io::Error {
    let kind = if e.kind == crate::Kind::Integrity {
        io::ErrorKind::InvalidData
    } else {
        io::ErrorKind::Other
    };
    io::Error::new(kind, e.to_string())
}

fn size_error(path: &str, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{path}: source is {what} than recorded"),
    )
}

impl Read for TarStream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.state {
                State::Next => {
                    let Some(e) = self.entries.next() else {
                        return Ok(0);
                    };
                    let h = header(e, self.mtime).map_err(to_io)?;
                    let data = match e.kind {
                        EntryKind::File { size, .. } => Some(Data {
                            src: e.open().map_err(to_io)?,
                            left: size,
                            size,
                            path: e.path.clone(),
                        }),
                        _ => None,
                    };
                    self.state = State::Header(io::Cursor::new(h.as_bytes().to_vec()), data);
                }
                State::Header(cur, data) => {
                    let n = cur.read(buf)?;
                    if n > 0 {
                        return Ok(n);
                    }
                    self.state = match data.take() {
                        Some(d) => State::Data(d),
                        None => State::Next,
                    };
                }
                State::Data(d) if d.left == 0 => {
                    // The source must end exactly here; reading its end also makes
                    // a cached blob check its digest.
                    if d.src.read(&mut [0u8; 1])? != 0 {
                        return Err(size_error(&d.path, "larger"));
                    }
                    self.state = State::Pad(((512 - d.size % 512) % 512) as usize);
                }
                State::Data(d) => {
                    let want = buf.len().min(usize::try_from(d.left).unwrap_or(usize::MAX));
                    let n = d.src.read(&mut buf[..want])?;
                    if n == 0 && want > 0 {
                        return Err(size_error(&d.path, "smaller"));
                    }
                    d.left -= n as u64;
                    return Ok(n);
                }
                State::Pad(0) => self.state = State::Next,
                State::Pad(n) => {
                    let k = (*n).min(buf.len());
                    buf[..k].fill(0);
                    *n -= k;
                    return Ok(k);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Content, Origin};
    use std::sync::Arc;

    fn file(path: &str, bytes: &[u8]) -> Entry {
        Entry {
            path: path.into(),
            mode: 0o644,
            uid: 0,
            gid: 0,
            kind: EntryKind::File {
                size: bytes.len() as u64,
                sha256: crate::util::digest::sha256_hex(bytes),
                content: Content::Inline(Arc::from(bytes.to_vec())),
            },
            origin: Origin::Generated {
                what: "test".into(),
            },
            shared: true,
            secret: false,
        }
    }

    #[test]
    fn stream_matches_append() {
        let a = file("a", &[1u8; 1000]);
        let b = file("b", b"");
        let c = file("c", &[2u8; 512]);
        let mut streamed = Vec::new();
        TarStream::new(vec![&a, &b, &c], 7)
            .read_to_end(&mut streamed)
            .unwrap();
        let mut appended = Vec::new();
        for e in [&a, &b, &c] {
            append(&mut appended, e, 7).unwrap();
        }
        assert_eq!(streamed, appended);
        assert_eq!(streamed.len(), 512 + 1024 + 512 + 512 + 512);
    }

    /// What the tar crate really puts in the header we build: POSIX ustar,
    /// root names, our mtime, zero device numbers, nothing from the machine.
    #[test]
    fn header_bytes_are_plain_ustar() {
        let e = file("etc/kubernetes/config/kube-scheduler.yaml", b"x");
        let h = header(&e, 1_700_000_000).unwrap();
        let b = h.as_bytes();
        let field = |at: usize, len: usize| {
            String::from_utf8_lossy(&b[at..at + len])
                .trim_end_matches('\0')
                .to_string()
        };
        assert_eq!(field(0, 100), "etc/kubernetes/config/kube-scheduler.yaml");
        assert_eq!(field(100, 8), "0000644");
        assert_eq!(field(108, 8), "0000000");
        assert_eq!(field(116, 8), "0000000");
        assert_eq!(field(124, 12), "00000000001");
        assert_eq!(
            u64::from_str_radix(&field(136, 12), 8).unwrap(),
            1_700_000_000
        );
        assert_eq!(b[156], b'0');
        assert_eq!(&b[257..263], b"ustar\0");
        assert_eq!(&b[263..265], b"00");
        assert_eq!(field(265, 32), "root");
        assert_eq!(field(297, 32), "root");
        assert_eq!(field(329, 8), "0000000");
        assert_eq!(field(337, 8), "0000000");
        assert_eq!(field(345, 155), "", "short paths need no prefix");
        // The checksum field is the octal sum of the header with the field as spaces.
        let mut sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        sum -= b[148..156].iter().map(|&x| u32::from(x)).sum::<u32>();
        sum += 8 * u32::from(b' ');
        assert_eq!(u32::from_str_radix(field(148, 8).trim(), 8).unwrap(), sum);
    }

    #[test]
    fn a_short_source_is_an_error_not_padding() {
        let mut e = file("a", &[1u8; 10]);
        if let EntryKind::File { size, .. } = &mut e.kind {
            *size = 20;
        }
        let err = TarStream::new(vec![&e], 0)
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert!(err.to_string().contains("smaller"), "{err}");
        let mut out = Vec::new();
        assert!(append(&mut out, &e, 0).is_err());
    }
}
