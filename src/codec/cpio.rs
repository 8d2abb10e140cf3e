//! The SVR4 "newc" cpio format the Linux kernel unpacks: bytes only.
//!
//! The 110-byte header is written by hand (13 fixed-width hex fields) so every
//! byte is the caller's to decide: inode numbers count up from a given start,
//! nlink and mtime are given, device numbers and the check field are 0. Names
//! and data are padded to 4 bytes.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

use crate::error::{Error, Kind, Result};

const MAGIC: &[u8; 6] = b"070701";
const HEADER_LEN: usize = 110;
const TRAILER: &str = "TRAILER!!!";

pub const S_IFDIR: u32 = 0o040_000;
pub const S_IFREG: u32 = 0o100_000;
pub const S_IFLNK: u32 = 0o120_000;
const S_IFMT: u32 = 0o170_000;

/// Writes newc entries to `out` with unique inode numbers.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    mtime: u32,
}

pub fn write_err(e: io::Error) -> Error {
    Error::new(Kind::Io, format!("cannot write the cpio archive: {e}"))
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W, mtime: u64, first_ino: u32) -> Result<Self> {
        let mtime = u32::try_from(mtime).map_err(|_| {
            Error::input(format!(
                "mtime {mtime} does not fit the cpio header (32 bits); set SOURCE_DATE_EPOCH to an earlier time"
            ))
        })?;
        Ok(CpioWriter {
            out,
            next_ino: first_ino,
            mtime,
        })
    }

    /// One header (and name); `mode` holds the type bits. File data follows
    /// through `data` and ends with `end_data`.
    pub fn header(
        &mut self,
        name: &str,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
        size: u64,
    ) -> Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            Error::input(format!(
                "{name} is {size} bytes; the newc cpio format holds at most 4 GiB per file"
            ))
        })?;
        let ino = if name == TRAILER { 0 } else { self.next_ino };
        let namesize = name.len() as u32 + 1;
        let fields = [
            ino, mode, uid, gid, nlink, self.mtime, size, 0, 0, 0, 0, namesize, 0,
        ];
        let mut head = String::with_capacity(HEADER_LEN);
        head.push_str("070701");
        for f in fields {
            head.push_str(&format!("{f:08X}"));
        }
        debug_assert_eq!(head.len(), HEADER_LEN);
        self.out.write_all(head.as_bytes()).map_err(write_err)?;
        self.out.write_all(name.as_bytes()).map_err(write_err)?;
        self.out.write_all(&[0]).map_err(write_err)?;
        self.pad(HEADER_LEN + namesize as usize)?;
        if name != TRAILER {
            self.next_ino = self
                .next_ino
                .checked_add(1)
                .ok_or_else(|| Error::input("too many cpio entries"))?;
        }
        Ok(())
    }

    fn pad(&mut self, len: usize) -> Result<()> {
        let pad = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..pad]).map_err(write_err)
    }

    /// Where a file's data goes, right after its header.
    pub fn data(&mut self) -> &mut W {
        &mut self.out
    }

    /// Pad after `size` bytes of data.
    pub fn end_data(&mut self, size: u64) -> Result<()> {
        self.pad((size % 4) as usize)
    }

    /// A folder (nlink 2).
    pub fn dir(&mut self, name: &str, perm: u32, uid: u32, gid: u32) -> Result<()> {
        self.header(name, S_IFDIR | perm, uid, gid, 2, 0)
    }

    /// A symbolic link (its target is its data).
    pub fn symlink(
        &mut self,
        name: &str,
        perm: u32,
        uid: u32,
        gid: u32,
        target: &str,
    ) -> Result<()> {
        self.header(name, S_IFLNK | perm, uid, gid, 1, target.len() as u64)?;
        self.out.write_all(target.as_bytes()).map_err(write_err)?;
        self.end_data(target.len() as u64)
    }

    /// Hand back the output stream without a trailer (more entries follow,
    /// written by another writer).
    pub fn into_inner(mut self) -> Result<W> {
        self.out.flush().map_err(write_err)?;
        Ok(self.out)
    }

    /// Write the trailer and hand back the output stream.
    pub fn finish(mut self) -> Result<W> {
        self.header(TRAILER, 0, 0, 0, 1, 0)?;
        self.out.flush().map_err(write_err)?;
        Ok(self.out)
    }
}

// ---------------------------------------------------------------------------
// Reading, for `inspect` and for tests.

/// What a cpio member looks like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub path: String,
    /// Full mode word (type and permission bits).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub ino: u32,
    pub size: u64,
    /// sha256 of the data of regular files.
    pub sha256: Option<String>,
    /// Target of symlinks.
    pub target: Option<String>,
}

impl Member {
    pub fn type_name(&self) -> &'static str {
        match self.mode & S_IFMT {
            S_IFDIR => "dir",
            S_IFREG => "file",
            S_IFLNK => "symlink",
            _ => "other",
        }
    }
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

fn bad(what: impl Into<String>) -> Error {
    Error::input(format!("not a valid newc cpio archive: {}", what.into()))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                return Err(Error::new(
                    Kind::Io,
                    format!("cannot read the cpio archive: {e}"),
                ));
            }
        }
    }
    Ok(done)
}

fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let got = io::copy(&mut r.take(n), &mut io::sink())
        .map_err(|e| Error::new(Kind::Io, format!("cannot read the cpio archive: {e}")))?;
    if got != n {
        return Err(bad("truncated"));
    }
    Ok(())
}

/// Read every member of a stream of one or more concatenated newc archives, as
/// the kernel does: after a trailer, zero padding and then another archive may follow.
pub fn read_members(mut r: impl Read) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    let mut pos: u64 = 0;
    let mut head = [0u8; HEADER_LEN];
    loop {
        // Skip zero padding between archives (in 4-byte steps, like the kernel).
        let mut first = [0u8; 4];
        let n = read_full(&mut r, &mut first)?;
        if n == 0 {
            break;
        }
        if n < 4 {
            return Err(bad(format!("truncated at byte {pos}")));
        }
        pos += 4;
        if first == [0; 4] {
            continue;
        }
        head[..4].copy_from_slice(&first);
        if read_full(&mut r, &mut head[4..])? != HEADER_LEN - 4 {
            return Err(bad(format!("truncated header at byte {}", pos - 4)));
        }
        pos += (HEADER_LEN - 4) as u64;
        if &head[..6] != MAGIC {
            return Err(bad(format!(
                "bad magic at byte {}",
                pos - HEADER_LEN as u64
            )));
        }
        let field = |i: usize| -> Result<u32> {
            let s = std::str::from_utf8(&head[6 + 8 * i..14 + 8 * i])
                .map_err(|_| bad("non-ASCII header"))?;
            u32::from_str_radix(s, 16).map_err(|_| bad(format!("bad header field {s:?}")))
        };
        let (ino, mode, uid, gid, nlink, mtime, size) = (
            field(0)?,
            field(1)?,
            field(2)?,
            field(3)?,
            field(4)?,
            field(5)?,
            field(6)? as u64,
        );
        let namesize = field(11)? as usize;
        if namesize == 0 || namesize > 4096 {
            return Err(bad(format!("bad name size {namesize}")));
        }
        let name_pad = (4 - (HEADER_LEN + namesize) % 4) % 4;
        let mut name = vec![0u8; namesize + name_pad];
        if read_full(&mut r, &mut name)? != name.len() {
            return Err(bad("truncated name"));
        }
        pos += name.len() as u64;
        if name[namesize - 1] != 0 {
            return Err(bad("name not NUL-terminated"));
        }
        let name =
            String::from_utf8(name[..namesize - 1].to_vec()).map_err(|_| bad("non-UTF-8 name"))?;
        let data_pad = (4 - size % 4) % 4;
        if name == TRAILER {
            skip(&mut r, size + data_pad)?;
            pos += size + data_pad;
            continue;
        }
        let mut member = Member {
            path: name,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            ino,
            size,
            sha256: None,
            target: None,
        };
        match mode & S_IFMT {
            S_IFREG => {
                let mut hasher = Sha256::new();
                let mut limited = (&mut r).take(size);
                let mut buf = vec![0u8; 256 * 1024];
                let mut got = 0u64;
                loop {
                    let n = read_full(&mut limited, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    got += n as u64;
                }
                if got != size {
                    return Err(bad(format!("{} is truncated", member.path)));
                }
                member.sha256 = Some(hex::encode(hasher.finalize()));
                skip(&mut r, data_pad)?;
            }
            S_IFLNK => {
                let mut target = vec![0u8; size as usize];
                if read_full(&mut r, &mut target)? != target.len() {
                    return Err(bad(format!("{} is truncated", member.path)));
                }
                member.target =
                    Some(String::from_utf8(target).map_err(|_| bad("non-UTF-8 link target"))?);
                skip(&mut r, data_pad)?;
            }
            _ => skip(&mut r, size + data_pad)?,
        }
        pos += size + data_pad;
        members.push(member);
    }
    Ok(members)
}
