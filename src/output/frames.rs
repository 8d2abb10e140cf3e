//! Archives compressed as independent pieces that end at entry boundaries:
//! gzip members or zstd frames. Every file of 1 MiB or more is a piece of its
//! own and the entries between them share one, so the binaries compress on
//! every core (one piece per thread at a time), and the kernel, which accepts
//! a new member or frame only between cpio entries, unpacks them. Each piece
//! is compressed on one thread from the same bytes, so the output does not
//! depend on the number of threads. A whole file per piece also costs
//! nothing in size: its bytes are compressed in one go.
//!
//! Used by cpio.gz, cpio.zst and tar.zst (the tar.gz writer cuts its shared
//! part into fixed-size chunks instead: its bytes were pinned first, and
//! gzip gains nothing from longer pieces).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::Path;

use flate2::write::GzEncoder;

use crate::codec::{gz, zstd};
use crate::error::{Error, Kind, Result};
use crate::output::format::Compression;
use crate::output::segment::MAX_THREADS;
use crate::plan::{Entry, EntryKind};
use crate::util::parallel;

/// Files at least this large are a piece of their own; the entries between
/// them share one. Part of the cached segments' keys.
pub const OWN_PIECE: u64 = 1 << 20;

pub fn write_err(e: io::Error) -> Error {
    Error::new(Kind::Io, format!("cannot write the archive: {e}"))
}

/// A compressing writer: one gzip member, one zstd frame, or the bytes as
/// they are. `finish` ends it and returns the writer beneath.
pub enum Encoder<W: Write> {
    Plain(W),
    Gzip(GzEncoder<W>),
    Zstd(zstd::Frame<W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, out: W) -> Result<Self> {
        Ok(match compression {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(gz::encoder(out)),
            Compression::Zstd(level) => {
                zstd::check_library()?;
                Encoder::Zstd(zstd::Frame::new(out, level).map_err(write_err)?)
            }
        })
    }

    pub fn finish(self) -> Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(e) => e.finish().map_err(write_err),
            Encoder::Zstd(e) => e.finish().map_err(write_err),
        }
    }

    fn inner(&mut self) -> &mut dyn Write {
        match self {
            Encoder::Plain(w) => w,
            Encoder::Gzip(e) => e,
            Encoder::Zstd(e) => e,
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner().flush()
    }
}

/// `entries` cut into pieces: each file of `OWN_PIECE` bytes or more alone,
/// the runs of entries between them together.
pub fn pieces(entries: &[&Entry]) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    for (i, e) in entries.iter().enumerate() {
        if matches!(e.kind, EntryKind::File { size, .. } if size >= OWN_PIECE) {
            if start < i {
                out.push(start..i);
            }
            out.push(i..i + 1);
            start = i + 1;
        }
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

/// A piece's compressed bytes on their way to the output: a temp file.
pub type PieceWriter = Encoder<BufWriter<File>>;

/// Compress every piece of `entries` (see `pieces`) on `threads` threads (at
/// most MAX_THREADS) and write them to `out` in order. `write` puts the
/// entries of one piece (their index range) into its encoder. Pieces go to
/// temp files in `tmp_dir` and then to `out`, so memory stays flat: at most
/// `threads + 2` of them exist at a time.
pub fn write_pieces<W: Write>(
    entries: &[&Entry],
    compression: Compression,
    threads: usize,
    tmp_dir: &Path,
    out: &mut W,
    write: impl Fn(Range<usize>, &mut PieceWriter) -> Result<()> + Sync,
) -> Result<()> {
    let pieces = pieces(entries);
    let threads = threads.clamp(1, MAX_THREADS).min(pieces.len().max(1));
    let mut pieces = pieces.into_iter();
    parallel::pipeline(
        threads,
        threads + 2,
        || Ok(pieces.next()),
        || (),
        |(), range| -> Result<File> {
            let tmp = tempfile::tempfile_in(tmp_dir)
                .map_err(|e| Error::io("cannot create a temporary file in", tmp_dir, e))?;
            let mut enc = Encoder::new(compression, BufWriter::with_capacity(1 << 16, tmp))?;
            write(range, &mut enc)?;
            let buf = enc.finish()?;
            buf.into_inner().map_err(|e| write_err(e.into_error()))
        },
        |mut piece| {
            io::Seek::rewind(&mut piece).map_err(write_err)?;
            io::copy(&mut piece, out).map_err(write_err)?;
            Ok(())
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixture::file;

    #[test]
    fn large_files_are_pieces_of_their_own() {
        let small = file("a", 0o644, b"x", false);
        let mut big = file("b", 0o755, b"y", true);
        if let EntryKind::File { size, .. } = &mut big.kind {
            *size = OWN_PIECE;
        }
        let e = |s: &str| if s == "b" { &big } else { &small };
        let cut = |names: &str| {
            let list: Vec<&Entry> = names.split(' ').map(e).collect();
            pieces(&list)
                .into_iter()
                .map(|r| (r.start, r.end))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            cut("a a b a b b a"),
            [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6), (6, 7)]
        );
        assert_eq!(cut("b"), [(0, 1)]);
        assert_eq!(cut("a a"), [(0, 2)]);
        assert!(pieces(&[]).is_empty());
    }

    /// The three encoders round-trip, and their bytes do not depend on the
    /// number of threads that made the pieces.
    #[test]
    fn pieces_are_the_same_for_any_thread_count() {
        let entries: Vec<Entry> = (0..7)
            .map(|i| {
                let n = if i % 3 == 0 {
                    OWN_PIECE as usize + i
                } else {
                    100 * i
                };
                let bytes = crate::codec::gz::tests::nibbles(n);
                file(&format!("f{i}"), 0o644, &bytes, false)
            })
            .collect();
        let refs: Vec<&Entry> = entries.iter().collect();
        let dir = tempfile::tempdir().unwrap();
        for compression in [Compression::None, Compression::Gzip, Compression::Zstd(3)] {
            let run = |threads| {
                let mut out = Vec::new();
                write_pieces(
                    &refs,
                    compression,
                    threads,
                    dir.path(),
                    &mut out,
                    |r, enc| {
                        for e in &refs[r] {
                            io::copy(&mut *e.open()?, enc).map_err(write_err)?;
                        }
                        Ok(())
                    },
                )
                .unwrap();
                out
            };
            let one = run(1);
            for threads in [2, 16] {
                assert!(run(threads) == one, "{compression}, {threads} threads");
            }
            let mut back = Vec::new();
            match compression {
                Compression::None => back = one.clone(),
                Compression::Gzip => {
                    io::Read::read_to_end(
                        &mut flate2::read::MultiGzDecoder::new(&one[..]),
                        &mut back,
                    )
                    .unwrap();
                }
                Compression::Zstd(_) => {
                    assert_eq!(zstd::frame_sizes(&one).unwrap().len(), 5);
                    io::Read::read_to_end(&mut zstd::decoder(&one[..]).unwrap(), &mut back)
                        .unwrap();
                }
            };
            let expected: Vec<u8> = entries
                .iter()
                .flat_map(|e| {
                    let mut b = Vec::new();
                    io::Read::read_to_end(&mut *e.open().unwrap(), &mut b).unwrap();
                    b
                })
                .collect();
            assert!(back == expected, "{compression}");
        }
    }
}
