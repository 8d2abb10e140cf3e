//! Initramfs outputs: newc cpio archives of a plan, whole or split, plain,
//! gzipped or zstd-compressed.
//!
//! The kernel unpacks concatenated archives (compressed or not) in order, so a
//! plan can be split into the node-independent part (binaries and the folders
//! they need) and the per-node part (configuration and the folders it needs):
//! both unpack to the same tree as the whole archive. Inode numbers count up
//! from 1, the node half's from 0x40000001, so a concatenated pair still has
//! unique ones; nlink is 1 for files and symlinks and 2 for folders.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::codec::cpio::{CpioWriter, S_IFDIR, S_IFLNK, S_IFREG, write_err};
use crate::codec::{gz, zstd};
use crate::error::{Error, Result};
use crate::output::format::Compression;
use crate::output::frames::{self, Encoder, OWN_PIECE};
use crate::output::manifest::OutputFile;
use crate::output::segment::{self, ARCHIVING, COMPRESSING, Cached, Starts};
use crate::plan::{Content, Entry, EntryKind, Plan};
use crate::progress::Progress;
use crate::store::cache::Cache;
use crate::util::atomic::write_atomic;
use crate::util::digest::{HashingWriter, sha256_hex};

/// Which entries of a plan an archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Everything: one archive per node.
    Whole,
    /// Node-independent entries (binaries) and their parent folders.
    Shared,
    /// Node-specific entries (configuration, PKI) and their parent folders.
    PerNode,
}

impl Part {
    /// Where inode numbers start. The two halves of a split use disjoint ranges
    /// so the concatenated pair still has unique inode numbers.
    pub fn first_ino(self) -> u32 {
        match self {
            Part::Whole | Part::Shared => 1,
            Part::PerNode => 0x4000_0001,
        }
    }
}

/// The entries of `part`, plus every folder they need, parents before children.
/// A folder needed by both halves appears in both with the same metadata. The
/// whole archive follows the order of every writer (`Plan::ordered`): the
/// shared half, then the node's half without the folders already written.
pub fn select(plan: &Plan, part: Part) -> Vec<&Entry> {
    match part {
        Part::Whole => {
            let mut out = select(plan, Part::Shared);
            let seen: std::collections::BTreeSet<&str> =
                out.iter().map(|e| e.path.as_str()).collect();
            let rest: Vec<&Entry> = select(plan, Part::PerNode)
                .into_iter()
                .filter(|e| !seen.contains(e.path.as_str()))
                .collect();
            out.extend(rest);
            out
        }
        Part::Shared | Part::PerNode => {
            let shared = part == Part::Shared;
            let mut needed: std::collections::BTreeSet<&str> = Default::default();
            for e in plan.entries.iter().filter(|e| e.shared == shared) {
                let mut path = e.path.as_str();
                while let Some((parent, _)) = path.rsplit_once('/') {
                    needed.insert(parent);
                    path = parent;
                }
            }
            plan.entries
                .iter()
                .filter(|e| {
                    e.shared == shared
                        || (matches!(e.kind, EntryKind::Dir) && needed.contains(e.path.as_str()))
                })
                .collect()
        }
    }
}

/// The cpio mode word: file type bits and permission bits.
pub fn cpio_mode(entry: &Entry) -> u32 {
    let kind = match entry.kind {
        EntryKind::Dir => S_IFDIR,
        EntryKind::File { .. } => S_IFREG,
        EntryKind::Symlink { .. } => S_IFLNK,
    };
    kind | (entry.mode & 0o7777)
}

/// Append one plan entry; file bytes stream from `Entry::open` and must be
/// exactly the recorded size (and, for in-memory content, digest).
pub fn put<W: Write>(w: &mut CpioWriter<W>, entry: &Entry) -> Result<()> {
    let perm = entry.mode & 0o7777;
    let (path, uid, gid) = (entry.path.as_str(), entry.uid, entry.gid);
    match &entry.kind {
        EntryKind::Dir => w.dir(path, perm, uid, gid),
        EntryKind::Symlink { target } => w.symlink(path, perm, uid, gid, target),
        EntryKind::File {
            size,
            sha256,
            content,
        } => {
            w.file(path, perm, uid, gid, *size, &mut *entry.open()?)?;
            // Blob readers verify their digest themselves; check in-memory content here.
            if let Content::Inline(bytes) = content {
                let d = sha256_hex(bytes);
                if &d != sha256 {
                    return Err(Error::integrity(format!(
                        "{path}: content sha256 is {d}, the plan records {sha256}"
                    )));
                }
            }
            Ok(())
        }
    }
}

/// Write `entries` as one complete newc archive (with trailer) to `out`.
pub fn write_cpio<'a, W: Write>(
    entries: impl IntoIterator<Item = &'a Entry>,
    mtime: u64,
    first_ino: u32,
    out: W,
) -> Result<W> {
    let mut w = CpioWriter::new(out, mtime, first_ino)?;
    for e in entries {
        put(&mut w, e)?;
    }
    w.finish()
}

/// Write the `part` of `plan` as one archive.
pub fn write_part<W: Write>(plan: &Plan, part: Part, out: W) -> Result<W> {
    write_cpio(
        select(plan, part),
        plan.meta.made_from.mtime,
        part.first_ino(),
        out,
    )
}

/// Key of a split's shared archive (compressed or not): everything its bytes
/// depend on, so a cached copy can stand in for it.
pub fn shared_key(plan: &Plan, compression: Compression) -> String {
    let (mtime, ino) = (plan.meta.made_from.mtime, Part::Shared.first_ino());
    let mut key = match compression {
        Compression::None | Compression::Gzip => format!(
            "imgbuild cpio shared part v2; gzip {}, zlib-rs level {}, a member per file from {OWN_PIECE} bytes; mtime {mtime}; first inode {ino}\n",
            compression == Compression::Gzip,
            gz::LEVEL,
        ),
        Compression::Zstd(level) => format!(
            "imgbuild cpio shared part v2; zstd {} level {level} with checksums, a frame per file from {OWN_PIECE} bytes; mtime {mtime}; first inode {ino}\n",
            zstd::LIBRARY
        ),
    };
    for e in select(plan, Part::Shared) {
        let what = match &e.kind {
            EntryKind::File { sha256, size, .. } => format!("{size} {sha256}"),
            EntryKind::Symlink { target } => format!("-> {target:?}"),
            EntryKind::Dir => String::new(),
        };
        key.push_str(&format!(
            "{:?} {:o} {}:{} {what}\n",
            e.path,
            cpio_mode(e),
            e.uid,
            e.gid
        ));
    }
    sha256_hex(key.as_bytes())
}

/// The `part`'s entries (no trailer), inode numbers from the part's first, as
/// gzip members or zstd frames that each end at an entry boundary (see
/// `frames`: the kernel accepts a new one only between entries, and one per
/// large file is what lets the binaries compress on every core), on
/// `threads` threads, through temp files in `tmp_dir`, to `out` in order.
/// Returns how many entries were written (the next inode is `first_ino` plus that).
pub fn write_entries<W: Write>(
    plan: &Plan,
    part: Part,
    compression: Compression,
    threads: usize,
    tmp_dir: &Path,
    out: &mut W,
) -> Result<u32> {
    let entries = select(plan, part);
    let (mtime, first_ino) = (plan.meta.made_from.mtime, part.first_ino());
    frames::write_pieces(
        &entries,
        compression,
        threads,
        tmp_dir,
        out,
        |range, enc| {
            let mut w = CpioWriter::new(enc, mtime, first_ino + range.start as u32)?;
            for e in &entries[range] {
                put(&mut w, e)?;
            }
            w.into_inner().map(|_| ())
        },
    )?;
    u32::try_from(entries.len()).map_err(|_| Error::input("too many cpio entries"))
}

/// A member (frame) holding only the trailer (ends a split's shared archive).
pub fn trailer(compression: Compression, mtime: u64) -> Result<Vec<u8>> {
    let trailer = CpioWriter::new(Vec::new(), mtime, 0)?.finish()?;
    match compression {
        Compression::None => Ok(trailer),
        Compression::Gzip => gz::member(&trailer).map_err(write_err),
        Compression::Zstd(level) => zstd::frame(&trailer, level).map_err(write_err),
    }
}

/// The node's part of a whole compressed cpio whose shared entries came first
/// (as `write_entries` pieces): the entries not already written, inodes
/// continuing from `next_ino`, and the trailer, as one member (frame).
pub fn write_rest<W: Write>(
    plan: &Plan,
    next_ino: u32,
    compression: Compression,
    out: W,
) -> Result<W> {
    let shared: std::collections::BTreeSet<&str> = select(plan, Part::Shared)
        .iter()
        .map(|e| e.path.as_str())
        .collect();
    let rest = select(plan, Part::Whole)
        .into_iter()
        .filter(|e| !shared.contains(e.path.as_str()));
    write_cpio(
        rest,
        plan.meta.made_from.mtime,
        next_ino,
        Encoder::new(compression, out)?,
    )?
    .finish()
}

/// Write the `part` of `plan` as one archive to `out`, compressed (as one
/// member or frame) or not.
pub fn write_part_to<W: Write>(
    plan: &Plan,
    part: Part,
    compression: Compression,
    out: W,
) -> Result<W> {
    let (entries, mtime, first_ino) = (
        select(plan, part),
        plan.meta.made_from.mtime,
        part.first_ino(),
    );
    write_cpio(entries, mtime, first_ino, Encoder::new(compression, out)?)?.finish()
}

/// 0600 when the part holds a secret (private keys), 0644 otherwise.
pub fn part_mode(plan: &Plan, part: Part) -> u32 {
    if select(plan, part).iter().any(|e| e.secret) {
        0o600
    } else {
        0o644
    }
}

/// Write the `part` of `plan` to `dest` atomically, compressed or not. The
/// file is 0600 when it holds a secret (private keys), 0644 otherwise.
/// Returns the written file's name, sha256 and size for the manifest.
pub fn write_file(
    plan: &Plan,
    part: Part,
    compression: Compression,
    dest: &Path,
) -> Result<(PathBuf, OutputFile)> {
    let mode = part_mode(plan, part);
    let mut digest = None;
    let path = write_atomic(dest, mode, |out| {
        let res = write_part_to(plan, part, compression, HashingWriter::new(out));
        let (_, sha256, size) = res.map_err(|e| e.context(dest.display()))?.finish();
        digest = Some((sha256, size));
        Ok(())
    })?;
    let (sha256, size) = digest.expect("set on success");
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok((path, OutputFile { name, sha256, size }))
}

/// A split cpio's shared archive, from the cache or made now and cached:
/// uncompressed, one archive; compressed, the cached shared entries' pieces
/// (see `entries_segment`) and a member (frame) with the trailer.
pub fn shared_segment(
    plan: &Plan,
    compression: Compression,
    cache: &Cache,
    threads: usize,
    starts: &Starts,
    progress: &dyn Progress,
) -> Result<Cached> {
    let key = segment::key("cpio", compression, "", &shared_key(plan, compression));
    if compression == Compression::None {
        return segment::cached(cache, key, Some(ARCHIVING), starts, progress, |tmp| {
            write_part_to(
                plan,
                Part::Shared,
                compression,
                segment::segment_writer(tmp),
            )
        });
    }
    // The entries' segment says so itself if it must be compressed.
    segment::cached(cache, key, None, starts, progress, |mut tmp| {
        let entries = entries_segment(plan, compression, cache, threads, starts, progress)?;
        let hasher = segment::copy_into(&entries, &mut tmp)?;
        let mut w = HashingWriter::resume(io::BufWriter::new(tmp), hasher);
        segment::append(
            &mut w,
            &trailer(compression, plan.meta.made_from.mtime)?,
            cache,
        )?;
        Ok(w)
    })
}

/// The shared entries of every compressed cpio (binaries and their folders,
/// no trailer) as members (frames) that end at entry boundaries, compressed
/// on every core once and cached. A whole archive is this plus the node's
/// member; a split's shared archive is this plus a trailer member.
fn entries_segment(
    plan: &Plan,
    compression: Compression,
    cache: &Cache,
    threads: usize,
    starts: &Starts,
    progress: &dyn Progress,
) -> Result<Cached> {
    let key = segment::key(
        "cpio",
        compression,
        "-entries",
        &shared_key(plan, compression),
    );
    segment::cached(cache, key, Some(COMPRESSING), starts, progress, |tmp| {
        let mut w = segment::segment_writer(tmp);
        write_entries(
            plan,
            Part::Shared,
            compression,
            threads,
            &cache.tmp_dir(),
            &mut w,
        )?;
        Ok(w)
    })
}

/// A whole compressed cpio: the cached shared entries, then the node's
/// entries and the trailer as one member (frame). Only the node's part is
/// compressed and hashed.
pub fn write_whole(
    plan: &Plan,
    compression: Compression,
    cache: &Cache,
    threads: usize,
    starts: &Starts,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<OutputFile> {
    let seg = entries_segment(plan, compression, cache, threads, starts, progress)?;
    let next_ino = Part::Shared.first_ino() + select(plan, Part::Shared).len() as u32;
    segment::whole_archive(&seg, starts, dest, part_mode(plan, Part::Whole), |out| {
        write_rest(plan, next_ino, compression, out)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::cpio::{Member, read_members};
    use crate::error::Kind;
    use crate::plan::fixture::{file, run_ok, sample_plan};
    use crate::util::digest::sha256_hex;
    use std::process::Command;

    const CPIO: &str = "GNU cpio must be installed (apt-get install cpio)";

    #[test]
    fn gzip_file_is_reproducible_and_private_when_secret() {
        use std::os::unix::fs::PermissionsExt as _;
        let plan = sample_plan();
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.cpio.gz");
        let b = dir.path().join("b.cpio.gz");
        write_file(&plan, Part::Whole, Compression::Gzip, &a).unwrap();
        write_file(&plan, Part::Whole, Compression::Gzip, &b).unwrap();
        let bytes = std::fs::read(&a).unwrap();
        assert_eq!(bytes, std::fs::read(&b).unwrap());
        assert_eq!(&bytes[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
        let plain = flate2::read::GzDecoder::new(&bytes[..]);
        assert_eq!(read_members(plain).unwrap().len(), plan.entries.len());
        // One gzip member per archive: the kernel refuses a cpio archive cut
        // across members ("junk at the end of compressed archive", seen with
        // Debian's 6.1 kernel), so the parallel member-per-chunk gzip is not for cpio.
        let mut first = Vec::new();
        let mut dec = flate2::bufread::GzDecoder::new(&bytes[..]);
        std::io::Read::read_to_end(&mut dec, &mut first).unwrap();
        assert!(
            dec.into_inner().is_empty(),
            "bytes after the first gzip member"
        );
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let s = dir.path().join("s.cpio");
        write_file(&plan, Part::Shared, Compression::None, &s).unwrap();
        assert_eq!(
            std::fs::metadata(&s).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(std::fs::read(&s).unwrap(), archive(&plan, Part::Shared));
    }

    fn archive(plan: &Plan, part: Part) -> Vec<u8> {
        write_part(plan, part, Vec::new()).unwrap()
    }

    #[test]
    fn header_bytes_are_exact() {
        let e = file("a", 0o644, b"xyz", false);
        let out = write_cpio([&e], 0x1234, 7, Vec::new()).unwrap();
        let head = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(
            head,
            "070701\
             00000007000081A4000000000000000000000001\
             000012340000000300000000000000000000000000000000\
             0000000200000000"
        );
        // name "a\0" padded to 4 with the header: 110 + 2 = 112
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..115], b"xyz");
        assert_eq!(out[115], 0);
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(out.len() % 4, 0);
        let trailer = std::str::from_utf8(&out[116..226]).unwrap();
        assert!(trailer.ends_with("0000000B00000000"), "{trailer}");
    }

    #[test]
    fn round_trip_and_unique_inodes() {
        let plan = sample_plan();
        let members = read_members(&archive(&plan, Part::Whole)[..]).unwrap();
        assert_eq!(members.len(), plan.entries.len());
        let whole = select(&plan, Part::Whole);
        for (m, e) in members.iter().zip(&whole) {
            assert_eq!(m.path, e.path);
            assert_eq!(m.mode, cpio_mode(e));
            assert_eq!(
                m.size,
                e.size()
                    .max(m.target.as_ref().map_or(0, |t| t.len() as u64))
            );
            assert_eq!(m.mtime, 1_700_000_000);
            if let EntryKind::File { sha256, .. } = &e.kind {
                assert_eq!(m.sha256.as_ref(), Some(sha256));
            }
        }
        let mut inos: Vec<_> = members.iter().map(|m| m.ino).collect();
        inos.sort();
        inos.dedup();
        assert_eq!(inos.len(), members.len());
        // Shared half first, each path once, every parent before its children.
        assert!(members[..5].iter().all(|m| m.path.starts_with("usr")));
        let mut seen = std::collections::BTreeSet::new();
        for m in &members {
            if let Some((parent, _)) = m.path.rsplit_once('/') {
                assert!(seen.contains(parent), "{} before its parent", m.path);
            }
            assert!(seen.insert(m.path.as_str()), "{} twice", m.path);
        }
        assert_eq!(archive(&plan, Part::Whole), archive(&plan, Part::Whole));
    }

    #[test]
    fn split_parts_hold_their_folders_and_concatenate_to_the_tree() {
        let plan = sample_plan();
        let shared = archive(&plan, Part::Shared);
        let node = archive(&plan, Part::PerNode);
        let shared_paths: Vec<_> = read_members(&shared[..])
            .unwrap()
            .into_iter()
            .map(|m| m.path)
            .collect();
        assert_eq!(
            shared_paths,
            [
                "usr",
                "usr/local",
                "usr/local/bin",
                "usr/local/bin/kube-apiserver",
                "usr/local/bin/kubectl"
            ]
        );
        let both = [shared, node].concat();
        let members = read_members(&both[..]).unwrap();
        // Folders in both halves carry identical metadata (only the inode differs).
        let mut seen: std::collections::BTreeMap<&str, &Member> = Default::default();
        for m in &members {
            if let Some(first) = seen.insert(&m.path, m) {
                assert_eq!(m.type_name(), "dir", "{}", m.path);
                assert_eq!(
                    Member {
                        ino: first.ino,
                        ..m.clone()
                    },
                    *first
                );
            }
        }
        let paths: Vec<_> = seen.keys().map(|p| p.to_string()).collect();
        let mut expected: Vec<_> = plan.entries.iter().map(|e| e.path.clone()).collect();
        expected.sort();
        assert_eq!(paths, expected);
        let mut inos: Vec<_> = members.iter().map(|m| m.ino).collect();
        inos.sort();
        inos.dedup();
        assert_eq!(inos.len(), members.len());
    }

    #[test]
    fn a_folder_needed_by_both_halves_appears_in_both() {
        let plan = sample_plan();
        let node: Vec<_> = select(&plan, Part::PerNode)
            .iter()
            .map(|e| e.path.as_str())
            .collect();
        assert!(node.contains(&"usr") && node.contains(&"usr/local"));
        assert!(!node.contains(&"usr/local/bin"));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let mut e = file("a", 0o644, b"abc", false);
        if let EntryKind::File { size, .. } = &mut e.kind {
            *size = 4;
        }
        let err = write_cpio([&e], 0, 1, Vec::new()).unwrap_err();
        assert_eq!(err.kind, Kind::Integrity);
        assert!(
            err.to_string().contains("3 bytes, not the 4 recorded"),
            "{err}"
        );
        if let EntryKind::File { size, .. } = &mut e.kind {
            *size = 2;
        }
        let err = write_cpio([&e], 0, 1, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("longer than"), "{err}");

        // A cached blob that changed on disk after planning.
        let dir = tempfile::tempdir().unwrap();
        let blob = dir.path().join("blob");
        std::fs::write(&blob, b"abcd").unwrap();
        let mut e = file("b", 0o755, b"abcd", true);
        e.kind = EntryKind::File {
            size: 4,
            sha256: sha256_hex(b"abcd"),
            content: Content::Blob(blob.clone()),
        };
        write_cpio([&e], 0, 1, Vec::new()).unwrap();
        std::fs::write(&blob, b"abce").unwrap();
        let err = write_cpio([&e], 0, 1, Vec::new()).unwrap_err();
        assert_eq!(err.kind, Kind::Integrity, "{err}");
        let mut e = file("c", 0o644, b"abc", false);
        if let EntryKind::File { sha256, .. } = &mut e.kind {
            *sha256 = sha256_hex(b"abd");
        }
        assert_eq!(
            write_cpio([&e], 0, 1, Vec::new()).unwrap_err().kind,
            Kind::Integrity
        );
    }

    #[test]
    fn short_writes_are_errors() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Ok(0);
                }
                let n = buf.len().min(self.0);
                self.0 -= n;
                Ok(n)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let plan = sample_plan();
        assert!(write_part(&plan, Part::Whole, Full(1000)).is_err());
    }

    fn gnu_cpio_list(archive: &[u8]) -> String {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, archive).unwrap();
        let stdout = run_ok(
            Command::new("cpio")
                .args(["-itv", "--quiet", "--numeric-uid-gid", "-F"])
                .arg(&path),
            CPIO,
        );
        String::from_utf8(stdout).unwrap()
    }

    /// `ls -l`-style type and permission string of a plan entry.
    fn ls_mode(e: &Entry) -> String {
        let mut s = String::from(match e.kind {
            EntryKind::Dir => "d",
            EntryKind::File { .. } => "-",
            EntryKind::Symlink { .. } => "l",
        });
        for shift in [6, 3, 0] {
            let bits = (e.mode >> shift) & 7;
            s.push(if bits & 4 != 0 { 'r' } else { '-' });
            s.push(if bits & 2 != 0 { 'w' } else { '-' });
            s.push(if bits & 1 != 0 { 'x' } else { '-' });
        }
        s
    }

    #[test]
    fn gnu_cpio_lists_modes_owners_types() {
        let plan = sample_plan();
        let listing = gnu_cpio_list(&archive(&plan, Part::Whole));
        let lines: Vec<_> = listing.lines().collect();
        assert_eq!(lines.len(), plan.entries.len(), "{listing}");
        for (line, e) in lines.iter().zip(select(&plan, Part::Whole)) {
            let f: Vec<_> = line.split_whitespace().collect();
            // mode nlink uid gid size month day year name [-> target]
            assert_eq!(f[0], ls_mode(e), "{line}");
            assert_eq!(f[2], e.uid.to_string(), "{line}");
            assert_eq!(f[3], e.gid.to_string(), "{line}");
            match &e.kind {
                EntryKind::File { size, .. } => assert_eq!(f[4], size.to_string(), "{line}"),
                EntryKind::Symlink { target } => {
                    assert_eq!(
                        &f[f.len() - 3..],
                        [e.path.as_str(), "->", target.as_str()],
                        "{line}"
                    )
                }
                EntryKind::Dir => {}
            }
            if !matches!(e.kind, EntryKind::Symlink { .. }) {
                assert_eq!(*f.last().unwrap(), e.path, "{line}");
            }
        }
    }

    #[test]
    fn gnu_cpio_extracts_split_pair_to_identical_tree() {
        use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
        let plan = sample_plan();
        let dir = tempfile::tempdir().unwrap();
        let pair = [archive(&plan, Part::Shared), archive(&plan, Part::PerNode)].concat();
        for (name, bytes) in [("whole", archive(&plan, Part::Whole)), ("split", pair)] {
            let dest = dir.path().join(name);
            std::fs::create_dir(&dest).unwrap();
            let src = dir.path().join(format!("{name}.cpio"));
            std::fs::write(&src, &bytes).unwrap();
            // -idm: make folders, keep mtimes; GNU cpio reads concatenated
            // archives only one at a time, so feed each half separately for the pair.
            let halves = if name == "split" {
                let shared = archive(&plan, Part::Shared);
                vec![shared.clone(), bytes[shared.len()..].to_vec()]
            } else {
                vec![bytes]
            };
            for half in halves {
                let h = dir.path().join("half.cpio");
                std::fs::write(&h, half).unwrap();
                run_ok(
                    Command::new("cpio")
                        .args(["-idm", "--quiet", "--no-absolute-filenames", "-F"])
                        .arg(&h)
                        .current_dir(&dest),
                    CPIO,
                );
            }
            for e in &plan.entries {
                let p = dest.join(&e.path);
                let md = std::fs::symlink_metadata(&p).unwrap();
                match &e.kind {
                    EntryKind::Dir => assert!(md.is_dir()),
                    EntryKind::File { sha256, .. } => {
                        assert!(md.is_file());
                        assert_eq!(
                            &sha256_hex(&std::fs::read(&p).unwrap()),
                            sha256,
                            "{}",
                            e.path
                        );
                        assert_eq!(md.mtime(), plan.meta.made_from.mtime as i64);
                    }
                    EntryKind::Symlink { target } => {
                        assert_eq!(std::fs::read_link(&p).unwrap().to_str().unwrap(), target)
                    }
                }
                if !matches!(e.kind, EntryKind::Symlink { .. }) {
                    assert_eq!(md.permissions().mode() & 0o7777, e.mode, "{}", e.path);
                }
            }
        }
    }
}
