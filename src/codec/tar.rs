//! Gzipped tar (ustar) with every header built here: root owner, fixed mtime,
//! no device numbers, no user/host leakage, so the bytes depend only on the plan.

use std::io::{self, Read, Write};

use crate::codec::copy_exact;
use crate::error::{self, Error, Result};

/// What one entry's header says, in bytes-level terms.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Relative, `/`-separated; a folder's gets its trailing `/` here.
    pub path: &'a str,
    /// Permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub kind: Kind<'a>,
}

#[derive(Debug, Clone, Copy)]
pub enum Kind<'a> {
    Dir,
    File { size: u64 },
    Symlink { target: &'a str },
}

/// The ustar header for `head`.
pub fn header(head: &Head, mtime: u64) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    let path = match head.kind {
        Kind::Dir => format!("{}/", head.path),
        _ => head.path.to_string(),
    };
    h.set_path(&path).map_err(|e| {
        Error::input(format!(
            "{}: cannot be stored in a tar header: {e}",
            head.path
        ))
    })?;
    h.set_mode(head.mode);
    h.set_uid(head.uid.into());
    h.set_gid(head.gid.into());
    // Names only for root: GNU tar then maps them on any machine the same way.
    let name = if head.uid == 0 { "root" } else { "" };
    h.set_username(name).expect("short name");
    h.set_groupname(if head.gid == 0 { "root" } else { "" })
        .expect("short name");
    h.set_mtime(mtime);
    match head.kind {
        Kind::Dir => {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_size(0);
        }
        Kind::File { size } => {
            h.set_entry_type(tar::EntryType::Regular);
            h.set_size(size);
        }
        Kind::Symlink { target } => {
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_link_name(target).map_err(|e| {
                Error::input(format!(
                    "{}: link target {:?} too long: {e}",
                    crate::error::clip(head.path),
                    crate::error::clip(target)
                ))
            })?;
        }
    }
    h.set_device_major(0).expect("ustar has device fields");
    h.set_device_minor(0).expect("ustar has device fields");
    h.set_cksum();
    Ok(h)
}

/// One member ready to be written: its header and, for a file, its data
/// (which must be exactly the header's size, else an error).
pub struct Member {
    pub header: tar::Header,
    /// For error messages.
    pub path: String,
    pub data: Option<Box<dyn Read + Send>>,
}

impl Member {
    /// The member for `head`; `open` gives a file's data (called for files only).
    pub fn new(
        head: &Head,
        mtime: u64,
        open: impl FnOnce() -> Result<Box<dyn Read + Send>>,
    ) -> Result<Member> {
        let header = header(head, mtime)?;
        let data = match head.kind {
            Kind::File { .. } => Some(open()?),
            _ => None,
        };
        Ok(Member {
            header,
            path: head.path.to_string(),
            data,
        })
    }

    fn size(&self) -> u64 {
        self.header.size().unwrap_or(0)
    }
}

/// How a file's data goes to the output of `append`: 8 KiB pieces, what
/// `io::copy` used before (the bytes of a gzip stream depend on it; see
/// `codec::copy_exact`).
const DATA_PIECE: usize = 8 * 1024;

/// Padding after `size` bytes of data.
fn pad(size: u64) -> usize {
    ((512 - size % 512) % 512) as usize
}

/// Append one member: header, data (exactly its size, else an error), padding.
pub fn append<W: Write>(out: &mut W, mut member: Member) -> Result<()> {
    let path = member.path.as_str();
    let werr = |e: io::Error| Error::new(error::Kind::Io, format!("writing {path}: {e}"));
    out.write_all(member.header.as_bytes()).map_err(werr)?;
    let size = member.size();
    if let Some(src) = member.data.as_mut() {
        copy_exact(src, out, size, path, DATA_PIECE)?;
        out.write_all(&[0u8; 512][..pad(size)]).map_err(werr)?;
    }
    Ok(())
}

/// The two zero blocks that end a tar archive.
pub fn finish<W: Write>(out: &mut W) -> io::Result<()> {
    out.write_all(&[0u8; 1024])
}

/// The tar bytes of `members` (headers, data, padding; no end blocks) as a
/// reader. Members are taken one at a time, so only one file is open at once.
pub struct TarStream<I> {
    members: I,
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

impl<I: Iterator<Item = Result<Member>>> TarStream<I> {
    pub fn new(members: I) -> Self {
        TarStream {
            members,
            state: State::Next,
        }
    }
}

fn to_io(e: Error) -> io::Error {
    let kind = if e.kind == error::Kind::Integrity {
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

impl<I: Iterator<Item = Result<Member>>> Read for TarStream<I> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match &mut self.state {
                State::Next => {
                    let Some(member) = self.members.next() else {
                        return Ok(0);
                    };
                    let m = member.map_err(to_io)?;
                    let size = m.size();
                    let data = m.data.map(|src| Data {
                        src,
                        left: size,
                        size,
                        path: m.path,
                    });
                    self.state = State::Header(io::Cursor::new(m.header.as_bytes().to_vec()), data);
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
                    // a verifying source check its digest.
                    if d.src.read(&mut [0u8; 1])? != 0 {
                        return Err(size_error(&d.path, "larger"));
                    }
                    self.state = State::Pad(pad(d.size));
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
    use crate::codec::tests::Writes;

    fn head(path: &str, size: u64) -> Head<'_> {
        Head {
            path,
            mode: 0o644,
            uid: 0,
            gid: 0,
            kind: Kind::File { size },
        }
    }

    /// A file member of `size` bytes whose data is `bytes`.
    fn member(path: &str, size: u64, bytes: &[u8]) -> Member {
        let bytes = bytes.to_vec();
        Member::new(&head(path, size), 7, || {
            Ok(Box::new(io::Cursor::new(bytes)))
        })
        .unwrap()
    }

    #[test]
    fn stream_matches_append() {
        let files: [(&str, Vec<u8>); 3] =
            [("a", vec![1; 1000]), ("b", vec![]), ("c", vec![2; 512])];
        let members = || files.iter().map(|(p, b)| Ok(member(p, b.len() as u64, b)));
        let mut streamed = Vec::new();
        TarStream::new(members())
            .read_to_end(&mut streamed)
            .unwrap();
        let mut appended = Vec::new();
        for m in members() {
            append(&mut appended, m.unwrap()).unwrap();
        }
        assert_eq!(streamed, appended);
        assert_eq!(streamed.len(), 512 + 1024 + 512 + 512 + 512);
    }

    /// What the tar crate really puts in the header we build: POSIX ustar,
    /// root names, our mtime, zero device numbers, nothing from the machine.
    #[test]
    fn header_bytes_are_plain_ustar() {
        let h = header(
            &head("etc/kubernetes/config/kube-scheduler.yaml", 1),
            1_700_000_000,
        )
        .unwrap();
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
        // Folders get their slash; symlinks their target and no data.
        let dir = Head {
            kind: Kind::Dir,
            ..head("etc", 0)
        };
        assert_eq!(&header(&dir, 0).unwrap().as_bytes()[..4], b"etc/");
        let link = Head {
            kind: Kind::Symlink { target: "/x" },
            ..head("l", 0)
        };
        let m = Member::new(&link, 0, || panic!("a symlink has no data to open")).unwrap();
        assert_eq!(m.header.link_name().unwrap().unwrap().to_str(), Some("/x"));
    }

    /// A gzip encoder's bytes depend on how its input is cut: data goes in
    /// the 8 KiB pieces it always has.
    #[test]
    fn data_goes_out_in_8_kib_pieces() {
        let mut w = Writes(Vec::new());
        append(&mut w, member("a", 20_000, &[1; 20_000])).unwrap();
        assert_eq!(w.0, [512, 8192, 8192, 3616, 480]);
    }

    #[test]
    fn a_source_of_another_size_is_an_error_not_padding() {
        for (bytes, what) in [(&[1u8; 10][..], "smaller"), (&[1u8; 30][..], "larger")] {
            let err = TarStream::new(std::iter::once(Ok(member("a", 20, bytes))))
                .read_to_end(&mut Vec::new())
                .unwrap_err();
            assert!(err.to_string().contains(what), "{err}");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
            let err = append(&mut Vec::new(), member("a", 20, bytes)).unwrap_err();
            assert_eq!(err.kind, error::Kind::Integrity);
        }
    }
}
