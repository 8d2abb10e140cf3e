//! Compare the two pure-Rust deflate backends flate2 can use, on the same
//! bytes, the way imgbuild compresses the binaries (1 MiB chunks, level 6, one
//! thread): zlib-rs (pinned, see Cargo.toml) and miniz_oxide.
//!
//!   cargo run --release --example deflate_backends -- FILE...

use std::io::Write;
use std::time::Instant;

const CHUNK: usize = 1 << 20;
const LEVEL: u32 = 6;

fn main() {
    let files: Vec<String> = std::env::args().skip(1).collect();
    if files.is_empty() {
        eprintln!("usage: deflate_backends FILE...");
        std::process::exit(2);
    }
    let mut data = Vec::new();
    for f in &files {
        data.extend(std::fs::read(f).unwrap_or_else(|e| panic!("{f}: {e}")));
    }
    let mb = data.len() as f64 / 1e6;
    let zlib_rs = run(&data, |chunk| {
        let mut enc = flate2::write::DeflateEncoder::new(
            Vec::with_capacity(chunk.len() / 2),
            flate2::Compression::new(LEVEL),
        );
        enc.write_all(chunk).unwrap();
        enc.finish().unwrap().len()
    });
    let miniz = run(&data, |chunk| {
        miniz_oxide::deflate::compress_to_vec(chunk, LEVEL as u8).len()
    });
    println!(
        "{mb:.1} MB in {} MiB chunks, level {LEVEL}, one thread:",
        CHUNK >> 20
    );
    for (name, (secs, size)) in [("zlib-rs", zlib_rs), ("miniz_oxide", miniz)] {
        println!(
            "  {name:<12} {secs:6.2} s  {:6.1} MB/s  output {:.4} of input",
            mb / secs,
            size as f64 / data.len() as f64
        );
    }
    println!(
        "  miniz_oxide / zlib-rs: time {:.2}x, size {:.4}x",
        miniz.0 / zlib_rs.0,
        miniz.1 as f64 / zlib_rs.1 as f64
    );
}

fn run(data: &[u8], compress: impl Fn(&[u8]) -> usize) -> (f64, usize) {
    let start = Instant::now();
    let size = data.chunks(CHUNK).map(compress).sum();
    (start.elapsed().as_secs_f64(), size)
}
