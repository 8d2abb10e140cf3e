//! Gzip with a pinned header, level and backend, so the bytes depend only on
//! the input: single members (reusing a deflate state) and a streaming
//! encoder. Concatenated members are one valid gzip stream (RFC 1952 §2.2);
//! the parallel gzip of the tar.gz writer (`output::tar`) is built on that.

use std::io::{self, Write};

use flate2::{Compress, Compression, Crc, FlushCompress, GzBuilder, Status};

/// Pinned together with the backend (zlib-rs, see Cargo.toml): changing
/// either changes the output bytes.
pub const LEVEL: u32 = 6;

/// The 10-byte member header: no flags, mtime 0, no extra flags (level 6), OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// A deflate state kept for many members: allocating one is the costly part
/// of a small member, so each compressing thread keeps its own.
pub struct Deflate(Compress);

impl Default for Deflate {
    fn default() -> Self {
        Deflate(Compress::new(Compression::new(LEVEL), false))
    }
}

impl Deflate {
    /// Compress `data` as one complete gzip member into `out` (cleared first).
    pub fn member_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        let deflate = &mut self.0;
        out.clear();
        // zlib-rs compresses differently when the output buffer runs out
        // (measured: a 1 MiB chunk of a Go binary came out 2 bytes shorter
        // when the buffer ended at 512 KiB), so reused buffers of other sizes
        // gave other bytes. With room for the worst case it never runs out,
        // and the member is the same whatever buffer it goes into.
        out.reserve(HEADER.len() + bound(data.len()) + 8);
        out.extend_from_slice(&HEADER);
        deflate.reset();
        let mut crc = Crc::new();
        crc.update(data);
        // One call, which must finish: a second would mean the buffer ran out.
        let status = deflate
            .compress_vec(data, out, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        if status != Status::StreamEnd || deflate.total_in() != data.len() as u64 {
            return Err(io::Error::other(format!(
                "deflate did not finish {} bytes within its bound",
                data.len()
            )));
        }
        out.extend_from_slice(&crc.sum().to_le_bytes());
        out.extend_from_slice(&crc.amount().to_le_bytes());
        Ok(())
    }
}

/// More than deflate can make of `n` bytes (zlib-ng's bound, generously).
fn bound(n: usize) -> usize {
    n + (n >> 3) + (n >> 6) + 64
}

/// One complete gzip member holding `data`: fixed header (mtime 0, no name, OS unknown).
pub fn member(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    Deflate::default().member_into(data, &mut out)?;
    Ok(out)
}

/// A streaming single-member encoder with the same fixed header.
pub fn encoder<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(w, Compression::new(LEVEL))
}

/// Gzip `bytes` in memory through the streaming encoder (user-data).
pub fn gzip_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut enc = encoder(Vec::new());
    enc.write_all(bytes).expect("writing to a Vec cannot fail");
    enc.finish().expect("writing to a Vec cannot fail")
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Read;

    /// `n` bytes that compress somewhat, like a binary.
    pub(crate) fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    /// `n` random nibbles: about 54% after deflate, and sensitive to where
    /// zlib-rs's output buffer runs out.
    pub(crate) fn nibbles(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x1234_5678;
        (0..n)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (x >> 33) as u8 & 15
            })
            .collect()
    }

    /// The hand-framed member has the header flate2's own gzip encoder writes,
    /// and a trailer (crc32, size) that a checking decoder accepts.
    #[test]
    fn member_is_a_complete_gzip_member() {
        for data in [sample(3 << 19), Vec::new(), b"x".to_vec()] {
            let theirs = gzip_bytes(&data);
            let ours = member(&data).unwrap();
            assert_eq!(ours[..10], theirs[..10]);
            assert_eq!(ours[ours.len() - 8..], theirs[theirs.len() - 8..]);
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&ours[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data);
        }
        // Incompressible input: the output outgrows its first allocation.
        let noise: Vec<u8> = (0..1u64 << 20)
            .map(|i| {
                (i.wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407)
                    >> 33) as u8
            })
            .collect();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&member(&noise).unwrap()[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, noise);
        // A reused state makes the same bytes as a fresh one.
        let mut deflate = Deflate::default();
        let mut out = Vec::new();
        for data in [sample(1000), noise.clone(), sample(1000)] {
            deflate.member_into(&data, &mut out).unwrap();
            assert_eq!(out, member(&data).unwrap());
        }
    }

    /// zlib-rs's bytes depend on where its output buffer runs out (these
    /// random nibbles came out different with buffers of 64, 128, 224 and 416
    /// KiB): a member must not, or reused buffers make it depend on the thread
    /// count.
    #[test]
    fn a_member_does_not_depend_on_its_buffer() {
        let nibbles = nibbles(1 << 20);
        let expected = member(&nibbles).unwrap();
        let mut deflate = Deflate::default();
        for cap in [0, 64 << 10, 128 << 10, 224 << 10, 416 << 10, 4 << 20] {
            let mut out = Vec::with_capacity(cap);
            deflate.member_into(&nibbles, &mut out).unwrap();
            assert!(out == expected, "with a buffer of {cap} bytes");
        }
    }

    #[test]
    fn gzip_header_is_fixed() {
        let gz = gzip_bytes(b"hello");
        // magic, deflate, no flags (no name), mtime 0, xfl 0 (level 6), OS 255
        assert_eq!(&gz[..10], &HEADER);
        assert_eq!(gz, gzip_bytes(b"hello"));
    }
}
