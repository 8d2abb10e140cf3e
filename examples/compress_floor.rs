//! The floor of a cold build: the time to compress the shared part once on
//! every core, from memory, with imgbuild's own compressors and nothing else
//! (no reading, hashing, archiving or writing). `scripts/bench` compares the
//! cold builds with it.
//!
//!   cargo run --release --example compress_floor -- gzip FILE...
//!   cargo run --release --example compress_floor -- zstd:LEVEL FILE...
//!
//! gzip: the files' bytes end to end in 1 MiB chunks, each a gzip member
//! (`codec::gz::Deflate`, as the tar.gz writer does). zstd: each file one
//! frame (`codec::zstd::Frame`, as the tar.zst and cpio.zst writers do with
//! every file of 1 MiB or more). `IMGBUILD_THREADS` sets the threads (default:
//! every core, at most 8, as imgbuild).

use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use imgbuild::codec::{gz, zstd};

/// Compresses one piece, returning its compressed size.
type Compress = Box<dyn Fn(&[u8]) -> usize + Sync>;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(mode), files) = (args.next(), args.collect::<Vec<_>>()) else {
        eprintln!("usage: compress_floor gzip|zstd:LEVEL FILE...");
        std::process::exit(2);
    };
    let files: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}")))
        .collect();
    let total: usize = files.iter().map(Vec::len).sum();
    let threads = std::env::var("IMGBUILD_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, 8);
    let (pieces, compress): (Vec<&[u8]>, Compress) = match mode.split_once(':') {
        None if mode == "gzip" => {
            let all: Vec<u8> = files.concat();
            let leaked: &'static [u8] = Box::leak(all.into_boxed_slice());
            let pieces = leaked.chunks(1 << 20).collect();
            (
                pieces,
                Box::new(|p: &[u8]| {
                    let mut out = Vec::new();
                    gz::Deflate::default().member_into(p, &mut out).unwrap();
                    out.len()
                }),
            )
        }
        Some(("zstd", level)) => {
            let level: i32 = level.parse().expect("zstd:LEVEL");
            (
                files.iter().map(Vec::as_slice).collect(),
                Box::new(move |p: &[u8]| {
                    let mut f = zstd::Frame::new(Vec::new(), level).unwrap();
                    f.write_all(p).unwrap();
                    f.finish().unwrap().len()
                }),
            )
        }
        _ => {
            eprintln!("usage: compress_floor gzip|zstd:LEVEL FILE...");
            std::process::exit(2);
        }
    };
    // Largest first: the threads finish together (the floor, not our order).
    let mut order: Vec<usize> = (0..pieces.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(pieces[i].len()));
    let next = AtomicUsize::new(0);
    let out = Mutex::new(0usize);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&p) = order.get(i) else { break };
                    let n = compress(pieces[p]);
                    *out.lock().unwrap() += n;
                }
            });
        }
    });
    let secs = start.elapsed().as_secs_f64();
    let out = out.into_inner().unwrap();
    println!(
        "{mode} floor: {:.1} MB on {threads} threads in {secs:.3} s ({:.0} MB/s), output {out} bytes ({:.4} of input)",
        total as f64 / 1e6,
        total as f64 / 1e6 / secs,
        out as f64 / total as f64
    );
}
