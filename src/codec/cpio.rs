//! The SVR4 "newc" cpio format the Linux kernel unpacks: bytes only.
//!
//! The 110-byte header is written by hand (13 fixed-width hex fields) so every
//! byte is the caller's to decide: inode numbers count up from a given start,
//! nlink and mtime are given, device numbers and the check field are 0. Names
//! and data are padded to 4 bytes.
//!
//! Not the `cpio` crate (0.4): its newc writer prints the hex fields in lower
//! case (`{:08x}`) where ours, like the kernel's `gen_init_cpio` and GNU cpio,
//! are upper case. So `c_mode` of every entry we write (folders `000041ED`,
//! files `000081A4`, binaries `000081ED`, symlinks `0000A1FF`) comes out
//! different, and so does any other field holding a digit above 9 (`c_mtime`,
//! `c_filesize`, the trailer's `c_namesize` `0000000B`): every archive imgbuild
//! has shipped would change. `crate_writes_lower_case_c_mode` below shows it on
//! one entry. (Its `trailer()` also writes mtime 0, and its writer pads
//! nothing after a short file instead of failing.) Our reader stays too: the
//! crate's stops at the zero padding the kernel skips between concatenated
//! archives, and does not bound name sizes; a test checks that it reads our
//! archives with the same fields as ours.

use std::io::{self, Read, Write};

use crate::codec::{copy_exact, sha256_of};
use crate::error::{Error, Kind, Result, clip};

const MAGIC: &[u8; 6] = b"070701";
/// How a file's data goes to the output: 256 KiB pieces (the bytes of a
/// cpio.gz member depend on it; see `codec::copy_exact`).
const DATA_PIECE: usize = 256 * 1024;
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

    /// One header (and name); `mode` holds the type bits. A file's data and
    /// padding follow (`file`, `symlink`).
    fn header(
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

    /// Pad after `size` bytes of data.
    fn end_data(&mut self, size: u64) -> Result<()> {
        self.pad((size % 4) as usize)
    }

    /// A regular file (nlink 1) of `size` bytes, read from `data`: exactly
    /// `size` bytes, else an error (see `codec::copy_exact`).
    pub fn file(
        &mut self,
        name: &str,
        perm: u32,
        uid: u32,
        gid: u32,
        size: u64,
        data: &mut dyn Read,
    ) -> Result<()> {
        self.header(name, S_IFREG | perm, uid, gid, 1, size)?;
        copy_exact(data, &mut self.out, size, name, DATA_PIECE)?;
        self.end_data(size)
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

fn read_err(e: io::Error) -> Error {
    Error::new(Kind::Io, format!("cannot read the cpio archive: {e}"))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    super::read_up_to(r, buf).map_err(read_err)
}

fn skip(r: &mut impl Read, n: u64) -> Result<()> {
    let got = io::copy(&mut r.take(n), &mut io::sink()).map_err(read_err)?;
    if got != n {
        return Err(bad("truncated"));
    }
    Ok(())
}

/// Members a stream may hold (a node has a few dozen).
pub const MAX_MEMBERS: usize = 65_536;
/// Bytes a symlink's target may hold (PATH_MAX).
pub const MAX_TARGET: u64 = 4096;

/// Read every member of a stream of one or more concatenated newc archives, as
/// the kernel does: after a trailer, zero padding and then another archive may follow.
///
/// What the kernel would unpack differently from the listing is refused: a
/// regular file with nlink above 1, or two entries of one archive sharing an
/// inode number (the kernel hard-links a file to an earlier entry with its
/// inode, whatever its own data; imgbuild gives every entry its own inode
/// and files nlink 1). So are a symlink target over [`MAX_TARGET`] bytes and
/// more than [`MAX_MEMBERS`] members.
pub fn read_members(mut r: impl Read) -> Result<Vec<Member>> {
    let mut members = Vec::new();
    // Inode numbers of the current archive (the kernel forgets them at each trailer).
    let mut inodes: std::collections::HashMap<u32, String> = std::collections::HashMap::new();
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
            inodes.clear();
            continue;
        }
        let shown = clip(&name);
        if members.len() >= MAX_MEMBERS {
            return Err(bad(format!(
                "more than {MAX_MEMBERS} members, far more than any node holds"
            )));
        }
        if mode & S_IFMT == S_IFREG && nlink > 1 {
            return Err(bad(format!(
                "{shown} is a file with nlink {nlink}: the kernel would hard-link it to a later entry with inode {ino}, which imgbuild never writes"
            )));
        }
        if let Some(other) = inodes.get(&ino) {
            return Err(bad(format!(
                "{shown} shares inode {ino} with {other}: the kernel may hard-link them, which imgbuild never writes"
            )));
        }
        inodes.insert(ino, shown.clone());
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
                let (sha256, got) = sha256_of(&mut (&mut r).take(size)).map_err(read_err)?;
                if got != size {
                    return Err(bad(format!("{shown} is truncated")));
                }
                member.sha256 = Some(sha256);
                skip(&mut r, data_pad)?;
            }
            S_IFLNK => {
                if size > MAX_TARGET {
                    return Err(bad(format!(
                        "{shown}: a symlink target of {size} bytes (at most {MAX_TARGET})"
                    )));
                }
                let mut target = vec![0u8; size as usize];
                if read_full(&mut r, &mut target)? != target.len() {
                    return Err(bad(format!("{shown} is truncated")));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::tests::Writes;

    const FIELDS: [&str; 13] = [
        "c_ino",
        "c_mode",
        "c_uid",
        "c_gid",
        "c_nlink",
        "c_mtime",
        "c_filesize",
        "c_devmajor",
        "c_devminor",
        "c_rdevmajor",
        "c_rdevminor",
        "c_namesize",
        "c_check",
    ];

    /// The names of the header fields that differ between two headers.
    fn differing(a: &[u8], b: &[u8]) -> Vec<&'static str> {
        assert_eq!((&a[..6], &b[..6]), (&MAGIC[..], &MAGIC[..]));
        let field = |h: &[u8], i: usize| h[6 + 8 * i..14 + 8 * i].to_vec();
        (0..13)
            .filter(|&i| field(a, i) != field(b, i))
            .map(|i| FIELDS[i])
            .collect()
    }

    /// File "a" (inode 7, `perm`, 3 bytes) and the trailer, written by us.
    fn ours(perm: u32, mtime: u32) -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), mtime.into(), 7).unwrap();
        w.file("a", perm, 0, 0, 3, &mut &b"xyz"[..]).unwrap();
        w.finish().unwrap()
    }

    /// The same, written by the `cpio` crate with every field set as we set it.
    fn theirs(perm: u32, mtime: u32) -> Vec<u8> {
        let b = ::cpio::NewcBuilder::new("a")
            .ino(7)
            .mode(S_IFREG | perm)
            .uid(0)
            .gid(0)
            .nlink(1)
            .mtime(mtime);
        let mut w = b.write(Vec::new(), 3);
        w.write_all(b"xyz").unwrap();
        let out = w.finish().unwrap();
        // Its `trailer()` has mtime 0; ours carries the archive's mtime.
        ::cpio::NewcBuilder::new(TRAILER)
            .nlink(1)
            .mtime(mtime)
            .write(out, 0)
            .finish()
            .unwrap()
    }

    /// Why the crate does not write our headers: it prints hex in lower case.
    /// Where no field holds a digit above 9 its bytes are ours; a 0644 file's
    /// c_mode (0x81A4) and the trailer's c_namesize (0xB) differ, and nothing else.
    #[test]
    fn crate_writes_lower_case_c_mode() {
        let (a, b) = (ours(0o600, 0x1234), theirs(0o600, 0x1234));
        assert_eq!(a.len(), b.len());
        // The file entry (mode 0x8180): identical.
        assert_eq!(a[..116], b[..116]);
        // The trailer: c_namesize is 11.
        assert_eq!(differing(&a[116..], &b[116..]), ["c_namesize"]);
        assert_eq!(
            (&a[116 + 94..116 + 102], &b[116 + 94..116 + 102]),
            (&b"0000000B"[..], &b"0000000b"[..])
        );

        let (a, b) = (ours(0o644, 0x1234), theirs(0o644, 0x1234));
        assert_eq!(differing(&a, &b), ["c_mode"]);
        assert_eq!(
            (&a[14..22], &b[14..22]),
            (&b"000081A4"[..], &b"000081a4"[..])
        );
        assert!(a.eq_ignore_ascii_case(&b), "only the case differs");
    }

    /// A gzip encoder's bytes depend on how its input is cut: data goes in
    /// the 256 KiB pieces it always has.
    #[test]
    fn data_goes_out_in_256_kib_pieces() {
        let mut w = CpioWriter::new(Writes(Vec::new()), 0, 1).unwrap();
        w.file("ab", 0o644, 0, 0, 600_001, &mut &vec![1; 600_001][..])
            .unwrap();
        // Header, name, NUL, padding to 116, data, padding.
        assert_eq!(w.out.0, [110, 2, 1, 3, 262_144, 262_144, 75_713, 3]);
    }

    /// The crate's reader reads our archives with the fields ours reports.
    #[test]
    fn crate_reads_what_we_write() {
        let mut w = CpioWriter::new(Vec::new(), 1_700_000_000, 0x4000_0001).unwrap();
        w.dir("d", 0o755, 0, 0).unwrap();
        w.file("d/f", 0o600, 1000, 1000, 5, &mut &b"hello"[..])
            .unwrap();
        w.symlink("d/l", 0o777, 0, 0, "f").unwrap();
        let archive = w.finish().unwrap();
        let ours = read_members(&archive[..]).unwrap();
        let mut rest = &archive[..];
        let mut theirs = Vec::new();
        loop {
            let mut r = ::cpio::NewcReader::new(rest).unwrap();
            let e = r.entry().clone();
            if e.is_trailer() {
                break;
            }
            assert_eq!(
                (
                    e.dev_major(),
                    e.dev_minor(),
                    e.rdev_major(),
                    e.rdev_minor(),
                    e.checksum()
                ),
                (0, 0, 0, 0, None)
            );
            let mut data = Vec::new();
            r.read_to_end(&mut data).unwrap();
            let sha = (e.mode() & S_IFMT == S_IFREG).then(|| sha256_of(&mut &data[..]).unwrap().0);
            let target = (e.mode() & S_IFMT == S_IFLNK).then(|| String::from_utf8(data).unwrap());
            theirs.push(Member {
                path: e.name().into(),
                mode: e.mode(),
                uid: e.uid(),
                gid: e.gid(),
                nlink: e.nlink(),
                mtime: e.mtime(),
                ino: e.ino(),
                size: e.file_size().into(),
                sha256: sha,
                target,
            });
            rest = r.finish().unwrap();
        }
        assert_eq!(ours, theirs);
        assert_eq!(
            ours.iter().map(|m| m.ino).collect::<Vec<_>>(),
            [0x4000_0001, 0x4000_0002, 0x4000_0003]
        );
    }
}
