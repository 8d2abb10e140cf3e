//! zstd frames whose bytes depend only on the input and the level: the
//! reference libzstd, pinned (1.5.7, bundled by zstd-sys, built from source
//! with `cc` and linked statically; `check_library` refuses any other), one
//! thread per frame (never zstd's own workers, whose bytes differ from a
//! single thread's), no dictionary, no content size in the header (streamed
//! input of unknown length), and the content checksum on: the kernel verifies
//! it, and without it a flipped bit passes `zstd -t` and unpacks silently.
//!
//! Concatenated frames are one valid zstd stream for `zstd -d`, GNU tar
//! `--zstd` and the kernel's initramfs unpacker, which accepts a new frame
//! only at a cpio entry boundary (seen under qemu, as for gzip members), so
//! the writers end frames there. No skippable frames (the kernel refuses
//! them) and no padding between frames (`zstd -t` refuses it).

use std::io::{self, BufRead, Read, Write};
use std::ops::RangeInclusive;

use crate::error::{Error, Result};

/// The first four bytes of every zstd frame (RFC 8878 §3.1.1).
pub const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// The libzstd whose output the cache keys and pinned tests assume: the one
/// zstd-sys bundles (its version in Cargo.lock ends in `+zstd.1.5.7`).
pub const LIBRARY: &str = "1.5.7";
const LIBRARY_NUMBER: u32 = 10507;

/// The level used when none is given. Chosen by measurement (README,
/// "Benchmarks"): level 3 meets both the speed and the size target on
/// Go binaries; level 9 is 19% smaller than gzip but 4–5× slower.
pub const DEFAULT_LEVEL: i32 = 3;

/// Levels offered. Above 19 zstd wants `--ultra` windows (up to 128 MiB to
/// decompress) and compresses at well under 1 MB/s.
pub const LEVELS: RangeInclusive<i32> = 1..=19;

/// Refuse to compress with another libzstd than the pinned one: a system
/// library (`ZSTD_SYS_USE_PKG_CONFIG` at build time) makes other bytes.
pub fn check_library() -> Result<()> {
    library_problem().map_or(Ok(()), |p| Err(Error::input(p)))
}

fn library_problem() -> Option<String> {
    (zstd::zstd_safe::version_number() != LIBRARY_NUMBER).then(|| {
        format!(
            "this imgbuild is linked with libzstd {}, not the pinned {LIBRARY}: its zstd outputs \
             would not be reproducible. Rebuild it without ZSTD_SYS_USE_PKG_CONFIG",
            zstd::zstd_safe::version_string()
        )
    })
}

/// One zstd frame being written to `W`. Its bytes do not depend on how the
/// input is cut into writes, and `flush` does not end a block early (it only
/// flushes `W`), so they cannot depend on flushes either. `finish` ends the
/// frame and returns `W`.
pub struct Frame<W: Write>(zstd::stream::write::Encoder<'static, W>);

impl<W: Write> Frame<W> {
    pub fn new(out: W, level: i32) -> io::Result<Self> {
        if let Some(problem) = library_problem() {
            return Err(io::Error::other(problem));
        }
        if !LEVELS.contains(&level) {
            return Err(io::Error::other(format!(
                "zstd level {level} is outside {}..={}",
                LEVELS.start(),
                LEVELS.end()
            )));
        }
        let mut enc = zstd::stream::write::Encoder::new(out, level)?;
        enc.include_checksum(true)?;
        Ok(Frame(enc))
    }

    pub fn finish(self) -> io::Result<W> {
        self.0.finish()
    }
}

impl<W: Write> Write for Frame<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.get_mut().flush()
    }
}

/// `data` as one complete frame.
pub fn frame(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    let mut f = Frame::new(Vec::new(), level)?;
    f.write_all(data)?;
    f.finish()
}

/// A reader of every frame in `r`, one after the other (checksums verified).
/// Bytes that are not valid frames fail with `InvalidData`; errors of `r`
/// itself pass as they are.
pub fn decoder<'a, R: BufRead + 'a>(r: R) -> io::Result<impl Read + 'a> {
    let mut d = zstd::stream::read::Decoder::with_buffer(r)?;
    // A hostile frame may ask for a window of up to 2 GiB; imgbuild's levels
    // (1-19) use at most 8 MiB, so 16 MiB bounds what a reader allocates.
    d.window_log_max(24)?;
    Ok(Decoder(d))
}

struct Decoder<R>(R);

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| {
            // libzstd's own errors (a bad checksum, a corrupt block) come as
            // `Other` without an OS error code.
            if e.kind() == io::ErrorKind::Other && e.raw_os_error().is_none() {
                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
            } else {
                e
            }
        })
    }
}

/// The compressed size of each frame of `bytes`, in order; an error if they
/// are not whole frames back to back.
pub fn frame_sizes(bytes: &[u8]) -> io::Result<Vec<usize>> {
    let mut sizes = Vec::new();
    let mut rest = bytes;
    while !rest.is_empty() {
        let n = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "not a zstd frame at byte {}: {}",
                    bytes.len() - rest.len(),
                    zstd::zstd_safe::get_error_name(code)
                ),
            )
        })?;
        sizes.push(n);
        rest = &rest[n..];
    }
    Ok(sizes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::gz::tests::{nibbles, sample};

    fn unzstd(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        decoder(bytes).unwrap().read_to_end(&mut out).unwrap();
        out
    }

    #[test]
    fn the_pinned_library_is_linked() {
        check_library().unwrap();
        assert_eq!(zstd::zstd_safe::version_string(), LIBRARY);
    }

    /// Magic, a frame header with the checksum flag and no content size, the
    /// data back, and concatenated frames read as one stream.
    #[test]
    fn frames_carry_a_checksum_and_concatenate() {
        let data = sample(3 << 20);
        let one = frame(&data, DEFAULT_LEVEL).unwrap();
        assert_eq!(one[..4], MAGIC);
        // Frame header descriptor: checksum flag (bit 2) set, no content size (bits 6-7).
        assert_eq!(one[4] & 0b1100_0100, 0b0000_0100, "{:08b}", one[4]);
        assert_eq!(unzstd(&one), data);
        let two = [one.clone(), frame(b"tail", DEFAULT_LEVEL).unwrap()].concat();
        assert_eq!(
            frame_sizes(&two).unwrap(),
            [one.len(), two.len() - one.len()]
        );
        assert_eq!(unzstd(&two), [&data[..], b"tail"].concat());
        assert!(frame_sizes(&[&two[..], &[0, 0, 0, 0]].concat()).is_err());
        // An empty input is a valid frame too.
        assert_eq!(unzstd(&frame(b"", DEFAULT_LEVEL).unwrap()), b"");
    }

    /// The bytes depend on the data and the level only: not on how the input
    /// is cut into writes, nor on flushes.
    #[test]
    fn bytes_do_not_depend_on_writes_or_flushes() {
        let data = nibbles(5 << 20);
        for level in [1, DEFAULT_LEVEL, 9] {
            let expected = frame(&data, level).unwrap();
            for piece in [7, 4096, 128 << 10, 1 << 20] {
                let mut f = Frame::new(Vec::new(), level).unwrap();
                for (i, p) in data.chunks(piece).enumerate() {
                    f.write_all(p).unwrap();
                    if i % 3 == 0 {
                        f.flush().unwrap();
                    }
                }
                assert!(
                    f.finish().unwrap() == expected,
                    "level {level}, writes of {piece}"
                );
            }
        }
        assert_ne!(frame(&data, 1).unwrap(), frame(&data, 9).unwrap());
    }

    /// A flipped bit is caught by the checksum, not unpacked silently.
    #[test]
    fn a_flipped_bit_fails_the_checksum() {
        let data = sample(1 << 20);
        let good = frame(&data, DEFAULT_LEVEL).unwrap();
        let mut caught = 0;
        for at in (20..good.len() - 4).step_by(good.len() / 50) {
            let mut bad = good.clone();
            bad[at] ^= 0x10;
            let mut out = Vec::new();
            if let Err(e) = decoder(&bad[..]).unwrap().read_to_end(&mut out) {
                assert!(
                    matches!(
                        e.kind(),
                        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof
                    ),
                    "{e:?}"
                );
                caught += 1;
            }
        }
        assert!(caught >= 45, "{caught} of ~50 flips caught");
    }

    #[test]
    fn levels_outside_the_range_are_refused() {
        assert!(Frame::new(Vec::new(), 0).is_err());
        assert!(Frame::new(Vec::new(), 20).is_err());
        assert!(Frame::new(Vec::new(), 19).is_ok());
    }
}
