//! Parallel gzip as independent members.
//!
//! The input is cut into fixed-size chunks, each compressed on its own into a
//! complete gzip member; the members are written in input order. Concatenated
//! members are one valid gzip stream (RFC 1952 §2.2) for gzip, GNU tar and
//! flate2's MultiGzDecoder. Not for an initramfs: the kernel refuses a cpio
//! archive cut across gzip members (seen under qemu), so cpio.gz stays one
//! member per archive. Chunk boundaries
//! depend only on the input bytes, so the output is the same for any number of
//! threads. Memory is bounded by the chunks in flight, not by the input size.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::mpsc;

use flate2::{Compression, GzBuilder};

/// Pinned together with the backend (zlib-rs, see Cargo.toml) and the level:
/// changing any of them changes the output bytes.
pub const CHUNK: usize = 4 << 20;
pub const LEVEL: u32 = 6;

/// One complete gzip member holding `data`: fixed header (mtime 0, no name, OS unknown).
pub fn member(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut enc = GzBuilder::new().mtime(0).operating_system(255).write(
        Vec::with_capacity(data.len() / 3 + 64),
        Compression::new(LEVEL),
    );
    enc.write_all(data)?;
    enc.finish()
}

/// A streaming single-member encoder with the same fixed header.
pub fn encoder<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(w, Compression::new(LEVEL))
}

/// Read `src` to its end, compress it as CHUNK-sized gzip members on `threads`
/// threads, and write them in order to `out`. Returns the bytes read.
pub fn compress_parallel<R: Read + Send>(
    mut src: R,
    out: &mut dyn Write,
    threads: usize,
) -> io::Result<u64> {
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        let (job_tx, job_rx) = mpsc::sync_channel::<(u64, Vec<u8>)>(threads);
        // Owned by the workers: when they all stop, the reader's sends fail and it stops too.
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::sync_channel::<(u64, io::Result<Vec<u8>>)>(threads);
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let job = job_rx.lock().expect("job queue").recv();
                    let Ok((seq, chunk)) = job else { break };
                    if done_tx.send((seq, member(&chunk))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done_tx);
        drop(job_rx);
        // Reading happens on its own thread so that compression never waits for I/O.
        let reader = scope.spawn(move || -> io::Result<u64> {
            let mut total = 0u64;
            let mut seq = 0u64;
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let mut filled = 0;
                while filled < CHUNK {
                    let n = src.read(&mut chunk[filled..])?;
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                chunk.truncate(filled);
                total += filled as u64;
                if job_tx.send((seq, chunk)).is_err() {
                    break;
                }
                seq += 1;
                if filled < CHUNK {
                    break;
                }
            }
            Ok(total)
        });
        // Write members in order as they complete.
        let mut next = 0u64;
        let mut pending: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
        let mut write_err: Option<io::Error> = None;
        for (seq, result) in done_rx.iter() {
            match result {
                Ok(bytes) => {
                    pending.insert(seq, bytes);
                }
                Err(e) => {
                    write_err.get_or_insert(e);
                }
            }
            while let Some(bytes) = pending.remove(&next) {
                if write_err.is_none()
                    && let Err(e) = out.write_all(&bytes)
                {
                    write_err = Some(e);
                }
                next += 1;
            }
            if write_err.is_some() {
                break;
            }
        }
        drop(done_rx);
        let read = reader.join().expect("reader thread")?;
        match write_err {
            Some(e) => Err(e),
            None => Ok(read),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| ((i * 7919) % 251) as u8 ^ (i / 1000) as u8)
            .collect()
    }

    #[test]
    fn round_trips_and_is_the_same_for_any_thread_count() {
        let data = sample(CHUNK * 2 + 12345);
        let mut one = Vec::new();
        compress_parallel(&data[..], &mut one, 1).unwrap();
        let mut four = Vec::new();
        compress_parallel(&data[..], &mut four, 4).unwrap();
        assert_eq!(one, four);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
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
}
