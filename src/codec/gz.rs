//! Parallel gzip as independent members.
//!
//! The input is cut into fixed-size chunks, each compressed on its own into a
//! complete gzip member; the members are written in input order. Concatenated
//! members are one valid gzip stream (RFC 1952 §2.2) for gzip, GNU tar and
//! flate2's MultiGzDecoder. Not for an initramfs: the kernel refuses a gzip
//! member that ends inside a cpio entry (seen under qemu), so cpio.gz members
//! follow entries instead (`cpio::write_entries_gz`). Chunk boundaries depend
//! only on the input bytes, so the output is the same for any number of threads.
//!
//! Memory is fixed: a pool of `threads + 2` chunk buffers (input and output)
//! circulates between the reader, the compressors and the writer, and each
//! compressor keeps one deflate state, reset per member. Neither the input
//! size nor a slow output grows it; the thread count is capped for the same
//! reason.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, mpsc};

use flate2::{Compress, Compression, Crc, FlushCompress, GzBuilder, Status};

/// Pinned together with the backend (zlib-rs, see Cargo.toml) and the level:
/// changing any of them changes the output bytes. 1 MiB keeps the buffers in
/// flight small; the dictionary reset per member costs about 0.1% in size.
pub const CHUNK: usize = 1 << 20;
pub const LEVEL: u32 = 6;
/// Compressing threads at most: each holds two chunk buffers and a deflate state.
pub const MAX_THREADS: usize = 8;

/// The 10-byte member header: no flags, mtime 0, no extra flags (level 6), OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// One complete gzip member holding `data`: fixed header (mtime 0, no name, OS unknown).
pub fn member(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 3 + 64);
    member_into(
        &mut Compress::new(Compression::new(LEVEL), false),
        data,
        &mut out,
    )?;
    Ok(out)
}

/// Compress `data` as one gzip member into `out` (cleared first), reusing `deflate`.
fn member_into(deflate: &mut Compress, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    out.clear();
    out.extend_from_slice(&HEADER);
    deflate.reset();
    let mut crc = Crc::new();
    crc.update(data);
    let mut input = data;
    loop {
        if out.capacity() - out.len() < 1024 {
            out.reserve(out.capacity().max(64 << 10));
        }
        let before = deflate.total_in();
        let status = deflate
            .compress_vec(input, out, FlushCompress::Finish)
            .map_err(io::Error::other)?;
        input = &input[(deflate.total_in() - before) as usize..];
        if status == Status::StreamEnd {
            break;
        }
    }
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&crc.amount().to_le_bytes());
    Ok(())
}

/// A streaming single-member encoder with the same fixed header.
pub fn encoder<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(w, Compression::new(LEVEL))
}

/// A chunk on its way: the input read, and the member made of it.
struct Slot {
    input: Vec<u8>,
    output: Vec<u8>,
}

/// Read `src` to its end, compress it as CHUNK-sized gzip members on `threads`
/// threads (at most MAX_THREADS), and write them in order to `out`. Returns
/// the bytes read.
pub fn compress_parallel<R: Read + Send>(
    mut src: R,
    out: &mut dyn Write,
    threads: usize,
) -> io::Result<u64> {
    let threads = threads.clamp(1, MAX_THREADS);
    std::thread::scope(|scope| {
        // Free slots go to the reader; filled ones to a compressor; compressed
        // ones to the writer (this thread), which frees them once written.
        let (free_tx, free_rx) = mpsc::channel::<Slot>();
        for _ in 0..threads + 2 {
            free_tx
                .send(Slot {
                    input: Vec::with_capacity(CHUNK),
                    output: Vec::with_capacity(CHUNK / 2),
                })
                .expect("receiver alive");
        }
        let (job_tx, job_rx) = mpsc::channel::<(u64, Slot)>();
        // Owned by the compressors: when they all stop, the reader's sends fail and it stops too.
        let job_rx = Arc::new(Mutex::new(job_rx));
        let (done_tx, done_rx) = mpsc::channel::<(u64, Slot, io::Result<()>)>();
        for _ in 0..threads {
            let job_rx = job_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                let mut deflate = Compress::new(Compression::new(LEVEL), false);
                loop {
                    let job = job_rx.lock().expect("job queue").recv();
                    let Ok((seq, mut slot)) = job else { break };
                    let res = member_into(&mut deflate, &slot.input, &mut slot.output);
                    if done_tx.send((seq, slot, res)).is_err() {
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
            // No free slot: the writer stopped (an error); stop reading too.
            while let Ok(mut slot) = free_rx.recv() {
                slot.input.resize(CHUNK, 0);
                let mut filled = 0;
                while filled < CHUNK {
                    let n = match src.read(&mut slot.input[filled..]) {
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(e),
                    };
                    if n == 0 {
                        break;
                    }
                    filled += n;
                }
                if filled == 0 {
                    break;
                }
                slot.input.truncate(filled);
                total += filled as u64;
                if job_tx.send((seq, slot)).is_err() {
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
        let mut pending: BTreeMap<u64, Slot> = BTreeMap::new();
        let mut write_err: Option<io::Error> = None;
        for (seq, slot, result) in done_rx.iter() {
            if let Err(e) = result {
                write_err.get_or_insert(e);
                break;
            }
            pending.insert(seq, slot);
            while let Some(slot) = pending.remove(&next) {
                if let Err(e) = out.write_all(&slot.output) {
                    write_err = Some(e);
                    break;
                }
                next += 1;
                // The reader may have ended: a failed send only means that.
                let _ = free_tx.send(slot);
            }
            if write_err.is_some() {
                break;
            }
        }
        // Unblock the reader (waiting for a slot) and the compressors.
        drop(free_tx);
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
        // More threads than the cap: the same bytes.
        let mut many = Vec::new();
        compress_parallel(&data[..], &mut many, 64).unwrap();
        assert_eq!(one, many);
        // Exactly one member per chunk, each what `member` makes of it.
        let expected: Vec<u8> = data
            .chunks(CHUNK)
            .flat_map(|c| member(c).unwrap())
            .collect();
        assert_eq!(one, expected);
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
    }

    /// The hand-framed member has the header flate2's own gzip encoder writes,
    /// and a trailer (crc32, size) that a checking decoder accepts.
    #[test]
    fn member_is_a_complete_gzip_member() {
        for data in [sample(3 * CHUNK / 2), Vec::new(), b"x".to_vec()] {
            let mut enc = encoder(Vec::new());
            enc.write_all(&data).unwrap();
            let theirs = enc.finish().unwrap();
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
        let noise: Vec<u8> = (0..CHUNK as u64)
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
}
