//! tar outputs (tar.gz, tar.zst, plain tar): a node's whole archive is the
//! cached shared segment (the binaries' tar entries, compressed on every
//! core, no end blocks) followed by the node's entries and the end-of-archive
//! blocks as one gzip member (zstd frame). A split build ships those two
//! parts as two files; concatenated, they are the whole archive byte for byte.
//!
//! zstd (and plain tar): the shared part is a frame per binary and one per
//! run of entries between them (`frames`), each made on one thread.
//!
//! gzip: the shared entries' tar stream is cut into fixed-size
//! chunks, each compressed on its own into a complete gzip member, and the
//! members are written in input order. Concatenated members are one valid
//! gzip stream for gzip, GNU tar and flate2's MultiGzDecoder. Not for an
//! initramfs: the kernel refuses a gzip member that ends inside a cpio entry
//! (seen under qemu), so cpio.gz members follow entries instead
//! (`frames`, `cpio::write_entries`). Chunk boundaries depend only on the input
//! bytes, so the output is the same for any number of threads. Memory is
//! fixed: `threads + 2` chunks (input and output buffers, reused) at most are
//! in flight, and each compressing thread keeps one deflate state.

use std::cell::RefCell;
use std::io::{self, Read, Write};
use std::path::Path;

use crate::codec::tar::{self, Head, Kind, Member, TarStream, append, finish};
use crate::codec::{gz, zstd};
use crate::error::{Error, Result};
use crate::output::format::Compression;
use crate::output::frames::{self, Encoder, OWN_PIECE};
use crate::output::manifest::OutputFile;
use crate::output::segment::{self, ARCHIVING, COMPRESSING, Cached, MAX_THREADS, Starts};
use crate::plan::{Entry, EntryKind, Plan};
use crate::progress::Progress;
use crate::store::cache::Cache;
use crate::util::atomic::AtomicFile;
use crate::util::digest::{HashingWriter, sha256_hex};
use crate::util::parallel;

/// The size of the input of each gzip member of the shared part. Pinned with
/// `gz::LEVEL` and the backend: it decides the output bytes. 1 MiB keeps the
/// buffers in flight small; the dictionary reset per member costs about 0.1%
/// in size.
pub const CHUNK: usize = 1 << 20;

/// The shared part of every node's tar archive, from the cache or made now
/// and cached. Keyed by everything its bytes depend on (entries, mtime,
/// compression and its settings).
pub fn segment(
    plan: &Plan,
    compression: Compression,
    cache: &Cache,
    threads: usize,
    starts: &Starts,
    progress: &dyn Progress,
) -> Result<Cached> {
    let shared: Vec<&Entry> = plan.shared().collect();
    let mtime = plan.meta.made_from.mtime;
    let step = match compression {
        Compression::None => ARCHIVING,
        _ => COMPRESSING,
    };
    let key = segment::key(
        "tar",
        compression,
        "",
        &shared_key(&shared, mtime, compression)?,
    );
    segment::cached(cache, key, Some(step), starts, progress, |tmp| {
        let mut w = segment::segment_writer(tmp);
        if compression == Compression::Gzip {
            write_shared(shared, mtime, &mut w, threads)?;
        } else {
            frames::write_pieces(
                &shared,
                compression,
                threads,
                &cache.tmp_dir(),
                &mut w,
                |r, enc| {
                    shared[r]
                        .iter()
                        .try_for_each(|e| append(enc, member(e, mtime)?))
                },
            )?;
        }
        Ok(w)
    })
}

/// The node's tar archive: the cached shared part, then the node's own
/// member (frame). A warm build copies the shared part and compresses only
/// the node's files.
pub fn write_whole(
    plan: &Plan,
    compression: Compression,
    seg: &Cached,
    starts: &Starts,
    dest: &Path,
) -> Result<OutputFile> {
    segment::whole_archive(seg, starts, dest, 0o600, |out| {
        write_per_node(plan.per_node(), plan.meta.made_from.mtime, compression, out)
    })
}

/// A split tar archive's node half: the node's entries and the end-of-archive
/// blocks as one gzip member (zstd frame), which appended to the shared half
/// gives exactly the whole archive (and alone is a valid archive of the
/// node's files).
pub fn write_node_half(plan: &Plan, compression: Compression, dest: &Path) -> Result<OutputFile> {
    let mode = if plan.per_node().any(|e| e.secret) {
        0o600
    } else {
        0o644
    };
    let file = AtomicFile::create(dest, mode)?;
    let out = write_per_node(
        plan.per_node(),
        plan.meta.made_from.mtime,
        compression,
        HashingWriter::new(file),
    )?;
    segment::commit_hashed(out)
}

/// A plan entry as the tar codec sees it.
fn head(e: &Entry) -> Head<'_> {
    let kind = match &e.kind {
        EntryKind::Dir => Kind::Dir,
        EntryKind::File { size, .. } => Kind::File { size: *size },
        EntryKind::Symlink { target } => Kind::Symlink { target },
    };
    Head {
        path: &e.path,
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        kind,
    }
}

/// A plan entry's tar member, its data streaming from `Entry::open` (cached
/// blobs are verified as they are read).
fn member(e: &Entry, mtime: u64) -> Result<Member> {
    Member::new(&head(e), mtime, || e.open())
}

/// Key of the shared part's compressed form: everything its bytes depend on.
pub fn shared_key(entries: &[&Entry], mtime: u64, compression: Compression) -> Result<String> {
    let mut key = match compression {
        Compression::Gzip => format!(
            "imgbuild tar.gz shared part v1; zlib-rs level {} chunk {}\n",
            gz::LEVEL,
            CHUNK
        ),
        Compression::Zstd(level) => format!(
            "imgbuild tar.zst shared part v1; zstd {} level {level} with checksums, a frame per file from {OWN_PIECE} bytes\n",
            zstd::LIBRARY
        ),
        Compression::None => "imgbuild tar shared part v1; uncompressed\n".to_string(),
    }
    .into_bytes();
    for e in entries {
        key.extend_from_slice(tar::header(&head(e), mtime)?.as_bytes());
        if let EntryKind::File { sha256, .. } = &e.kind {
            key.extend_from_slice(sha256.as_bytes());
        }
    }
    Ok(sha256_hex(&key))
}

/// Compress the shared entries as parallel gzip members into `out`.
pub fn write_shared(
    entries: Vec<&Entry>,
    mtime: u64,
    out: &mut dyn Write,
    threads: usize,
) -> Result<()> {
    let stream = TarStream::new(entries.into_iter().map(|e| member(e, mtime)));
    compress_parallel(stream, out, threads).map_err(|e| {
        let kind = if e.kind() == io::ErrorKind::InvalidData {
            crate::Kind::Integrity
        } else {
            crate::Kind::Io
        };
        Error::new(kind, format!("writing the archive's shared part: {e}"))
    })?;
    Ok(())
}

/// A chunk on its way: the input read, and the member made of it.
#[derive(Default)]
struct Slot {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// Read `src` to its end, compress it as CHUNK-sized gzip members on
/// `threads` threads (at most MAX_THREADS), and write them in order to `out`.
/// Returns the bytes read.
pub fn compress_parallel(
    mut src: impl Read,
    out: &mut dyn Write,
    threads: usize,
) -> io::Result<u64> {
    let threads = threads.clamp(1, MAX_THREADS);
    // Slots the sink has written, for the producer to fill again.
    let free: RefCell<Vec<Slot>> = RefCell::default();
    let (mut total, mut ended) = (0u64, false);
    parallel::pipeline(
        threads,
        threads + 2,
        || {
            if ended {
                return Ok::<_, io::Error>(None);
            }
            let mut slot = free.borrow_mut().pop().unwrap_or_default();
            let filled = read_chunk(&mut src, &mut slot.input)?;
            total += filled as u64;
            ended = filled < CHUNK;
            Ok((filled > 0).then_some(slot))
        },
        gz::Deflate::default,
        |deflate, mut slot| {
            deflate.member_into(&slot.input, &mut slot.output)?;
            Ok(slot)
        },
        |slot| {
            out.write_all(&slot.output)?;
            free.borrow_mut().push(slot);
            Ok(())
        },
    )?;
    Ok(total)
}

/// Fill `buf` with the next CHUNK bytes of `src` (fewer only at its end).
fn read_chunk(src: &mut impl Read, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.resize(CHUNK, 0);
    let mut filled = 0;
    while filled < CHUNK {
        match src.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(filled);
    Ok(filled)
}

/// The node's own entries and the end-of-archive blocks, as one gzip member
/// (zstd frame).
pub fn write_per_node<'a, W: Write>(
    entries: impl Iterator<Item = &'a Entry>,
    mtime: u64,
    compression: Compression,
    out: W,
) -> Result<W> {
    let mut enc = Encoder::new(compression, out)?;
    for e in entries {
        append(&mut enc, member(e, mtime)?)?;
    }
    finish(&mut enc).map_err(frames::write_err)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::gz::tests::{nibbles, sample};
    use crate::plan::fixture::{file, sample_plan};

    #[test]
    fn round_trips_and_is_the_same_for_any_thread_count() {
        let data = sample(CHUNK * 2 + 12345);
        let mut one = Vec::new();
        compress_parallel(&data[..], &mut one, 1).unwrap();
        let mut four = Vec::new();
        compress_parallel(&data[..], &mut four, 4).unwrap();
        assert_eq!(one, four);
        // More threads than the cap: the same bytes.
        let mut many = Vec::new();
        compress_parallel(&data[..], &mut many, 64).unwrap();
        assert_eq!(one, many);
        // Exactly one member per chunk, each what `member` makes of it.
        let expected: Vec<u8> = data
            .chunks(CHUNK)
            .flat_map(|c| gz::member(c).unwrap())
            .collect();
        assert_eq!(one, expected);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        // Exactly a chunk: no empty member after it.
        let mut exact = Vec::new();
        assert_eq!(
            compress_parallel(&data[..CHUNK], &mut exact, 2).unwrap(),
            CHUNK as u64
        );
        assert_eq!(exact, gz::member(&data[..CHUNK]).unwrap());
        // Data whose deflate bytes depend on the output buffer: buffers are
        // reused in an order that depends on the thread count, and must not matter.
        let data = nibbles(CHUNK * 9);
        let mut one = Vec::new();
        compress_parallel(&data[..], &mut one, 1).unwrap();
        for threads in [2, 8] {
            let mut many = Vec::new();
            compress_parallel(&data[..], &mut many, threads).unwrap();
            assert!(one == many, "{threads} threads");
        }
    }

    #[test]
    fn a_write_error_stops_everything_and_is_reported() {
        struct FailSecond(usize);
        impl Write for FailSecond {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0 += 1;
                if self.0 > 1 {
                    return Err(io::Error::other("disk full"));
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let data = sample(CHUNK * 20 + 5);
        let err = compress_parallel(&data[..], &mut FailSecond(0), 3).unwrap_err();
        assert!(err.to_string().contains("disk full"));
    }

    #[test]
    fn empty_input_writes_nothing() {
        let mut out = Vec::new();
        assert_eq!(compress_parallel(&[][..], &mut out, 2).unwrap(), 0);
        assert!(out.is_empty());
    }

    #[test]
    fn a_read_error_is_reported() {
        struct Failing;
        impl Read for Failing {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut out = Vec::new();
        let err = compress_parallel(Failing, &mut out, 2).unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
    }

    /// The shared part and the node's member are one tar.gz that GNU tar's
    /// reader (the tar crate here) lists with the plan's entries.
    #[test]
    fn shared_and_node_parts_make_one_archive() {
        let plan = sample_plan();
        let mut bytes = Vec::new();
        write_shared(
            plan.shared().collect(),
            plan.meta.made_from.mtime,
            &mut bytes,
            2,
        )
        .unwrap();
        let bytes = write_per_node(
            plan.per_node(),
            plan.meta.made_from.mtime,
            Compression::Gzip,
            bytes,
        )
        .unwrap();
        let mut archive = ::tar::Archive::new(flate2::read::MultiGzDecoder::new(&bytes[..]));
        let paths: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let p = e.unwrap().path().unwrap().to_string_lossy().into_owned();
                p.trim_end_matches('/').to_string()
            })
            .collect();
        let expected: Vec<String> = plan.ordered().map(|e| e.path.clone()).collect();
        assert_eq!(paths, expected);
        // A wrong size in the plan is an error, not a shifted archive.
        let mut e = file("a", 0o644, b"abc", false);
        if let EntryKind::File { size, .. } = &mut e.kind {
            *size = 4;
        }
        let err = write_per_node([&e].into_iter(), 0, Compression::Gzip, Vec::new()).unwrap_err();
        assert_eq!(err.kind, crate::Kind::Integrity);
    }
}
