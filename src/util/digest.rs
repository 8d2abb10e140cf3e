//! SHA-256 helpers: of bytes, of a file, of what passes through a reader or a
//! writer, and a SHA-256 whose state can be saved and resumed. (`codec`, which
//! imports nothing of ours but `error`, has its one helper of its own.)
//!
//! Every node's tar.gz starts with the same cached bytes (the compressed
//! binaries). Saving the hash state after those bytes lets a build hash only
//! what it adds, instead of re-reading ~100 MB per node.

use std::io::{self, Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// A lowercase hex sha256 digest.
pub type Sha256Hex = String;

pub fn sha256_hex(bytes: &[u8]) -> Sha256Hex {
    hex::encode(Sha256::digest(bytes))
}

/// sha256 and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(Sha256Hex, u64)> {
    let f = std::fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
    let mut r = HashingReader::new(f);
    io::copy(&mut r, &mut io::sink()).map_err(|e| Error::io("cannot read", path, e))?;
    Ok((r.sha256(), r.len()))
}

/// Hashes what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    len: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            len: 0,
        }
    }

    /// Bytes read so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Read without hashing (the bytes are counted).
    pub fn read_unhashed(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The sha256 of the bytes read so far.
    pub fn sha256(&self) -> Sha256Hex {
        hex::encode(self.hasher.clone().finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
}

/// Hashes what passes through, so a file's digest costs no second read; the
/// hash state can be saved and resumed (see `digest`).
pub struct HashingWriter<W> {
    pub inner: W,
    pub hasher: ResumableSha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        Self::resume(inner, ResumableSha256::new())
    }
    pub fn resume(inner: W, hasher: ResumableSha256) -> Self {
        HashingWriter { inner, hasher }
    }
    /// The writer, the sha256 of everything hashed, and its length.
    pub fn finish(self) -> (W, String, u64) {
        let size = self.hasher.len();
        (self.inner, self.hasher.finish_hex(), size)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

const H0: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sha256State {
    state: [u32; 8],
    /// Bytes hashed so far.
    len: u64,
    /// Bytes not yet forming a full 64-byte block (hex).
    tail: String,
}

#[derive(Clone)]
pub struct ResumableSha256 {
    state: [u32; 8],
    len: u64,
    buf: Vec<u8>,
}

impl Default for ResumableSha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl ResumableSha256 {
    pub fn new() -> Self {
        ResumableSha256 {
            state: H0,
            len: 0,
            buf: Vec::with_capacity(64),
        }
    }

    pub fn resume(s: &Sha256State) -> Option<Self> {
        let buf = hex::decode(&s.tail).ok().filter(|b| b.len() < 64)?;
        (s.len % 64 == buf.len() as u64).then_some(ResumableSha256 {
            state: s.state,
            len: s.len,
            buf,
        })
    }

    pub fn save(&self) -> Sha256State {
        Sha256State {
            state: self.state,
            len: self.len,
            tail: hex::encode(&self.buf),
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn update(&mut self, mut data: &[u8]) {
        self.len += data.len() as u64;
        if !self.buf.is_empty() {
            let take = (64 - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() < 64 {
                return;
            }
            sha2::compress256(&mut self.state, &[*GenericArray::from_slice(&self.buf)]);
            self.buf.clear();
        }
        let full = data.len() / 64 * 64;
        if full > 0 {
            let blocks: Vec<GenericArray<u8, _>> = data[..full]
                .chunks_exact(64)
                .map(|c| *GenericArray::from_slice(c))
                .collect();
            sha2::compress256(&mut self.state, &blocks);
        }
        self.buf.extend_from_slice(&data[full..]);
    }

    pub fn finish_hex(mut self) -> String {
        let bits = self.len.wrapping_mul(8);
        let mut pad = vec![0x80u8];
        let used = (self.buf.len() + 1) % 64;
        pad.resize(1 + if used <= 56 { 56 - used } else { 120 - used }, 0);
        pad.extend_from_slice(&bits.to_be_bytes());
        let len = self.len;
        self.update(&pad);
        self.len = len;
        debug_assert!(self.buf.is_empty());
        self.state.iter().map(|w| format!("{w:08x}")).collect()
    }
}

impl std::io::Write for ResumableSha256 {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn matches_sha2_at_every_boundary_and_after_resuming() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 % 253) as u8).collect();
        for n in [0, 1, 55, 56, 63, 64, 65, 119, 120, 128, 999, 1000] {
            let expected = hex::encode(Sha256::digest(&data[..n]));
            let mut h = ResumableSha256::new();
            h.update(&data[..n]);
            assert_eq!(h.clone().finish_hex(), expected, "n={n}");
            for split in [0, n / 3, n] {
                let mut a = ResumableSha256::new();
                a.update(&data[..split]);
                let saved = serde_json::to_string(&a.save()).unwrap();
                let mut b =
                    ResumableSha256::resume(&serde_json::from_str(&saved).unwrap()).unwrap();
                b.update(&data[split..n]);
                assert_eq!(b.finish_hex(), expected, "n={n} split={split}");
            }
        }
    }
}
