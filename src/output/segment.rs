//! The node-independent part of an archive (the binaries, compressed), made
//! once per recipe, arch and mtime and kept in the cache as a segment. Whole
//! archives start with a copy of it; split builds ship it as the shared half.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};
use crate::output::format::Compression;
use crate::output::manifest::OutputFile;
use crate::plan::Plan;
use crate::progress::{Event, Progress};
use crate::store::cache::Cache;
use crate::store::segments::{self, Segment};
use crate::util::atomic::AtomicFile;
use crate::util::digest::{HashingWriter, ResumableSha256};

/// A cached segment: its key, file and record.
pub struct Cached {
    pub key: String,
    pub path: PathBuf,
    pub segment: Segment,
}

/// A segment being written: a temp file in the cache, hashed as it fills.
pub type SegmentWriter = HashingWriter<BufWriter<NamedTempFile>>;

pub fn segment_writer(tmp: NamedTempFile) -> SegmentWriter {
    HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp))
}

/// Threads that compress a segment, at most: each holds its buffers (or a
/// member in the making) and a deflate state, so memory stays near 30 MiB
/// however many cores there are.
pub const MAX_THREADS: usize = 8;

/// What a cache miss costs, for the progress line.
pub const COMPRESSING: &str =
    "compressing the binaries (once for every node of this recipe and arch)";
/// The same, uncompressed.
pub const ARCHIVING: &str = "archiving the binaries (once for every node of this recipe and arch)";

/// A segment's key: the archive, what its compression adds to the name
/// (`cpio`, `tar-gz`, `cpio-zst-entries`, ...), and the digest of
/// everything its bytes depend on.
pub fn key(archive: &str, compression: Compression, what: &str, digest: &str) -> String {
    let tag = match compression {
        Compression::None => "",
        Compression::Gzip => "-gz",
        Compression::Zstd(_) => "-zst",
    };
    format!("{archive}{tag}{what}-{digest}")
}

/// Segment `key` from the cache, or made now by `make` (which gets a temp
/// file in the cache and returns it written) and stored; `step` says what a
/// cache miss costs.
pub fn cached(
    cache: &Cache,
    key: String,
    step: Option<&str>,
    progress: &dyn Progress,
    make: impl FnOnce(NamedTempFile) -> Result<SegmentWriter>,
) -> Result<Cached> {
    if let Some((path, segment)) = cache.segment(&key)? {
        return Ok(Cached { key, path, segment });
    }
    if let Some(what) = step {
        progress.event(Event::Step { what });
    }
    let w = make(cache.temp_file()?)?;
    let state = w.hasher.save();
    let (buf, sha256, size) = w.finish();
    let tmp = buf
        .into_inner()
        .map_err(|e| Error::io("cannot write", Path::new("segment"), e.into_error()))?;
    let seg = Segment {
        sha256,
        size,
        state,
        stamp: None,
        placed: Vec::new(),
    };
    let (path, segment) = cache.store_segment(&key, tmp, &seg)?;
    Ok(Cached { key, path, segment })
}

/// Copy a cached segment to the start of `out` and return the hash state
/// after its bytes, so the output's digest costs only what follows.
pub fn copy_into(seg: &Cached, out: &mut std::fs::File) -> Result<ResumableSha256> {
    let hasher = ResumableSha256::resume(&seg.segment.state)
        .filter(|h| h.len() == seg.segment.size)
        .ok_or_else(|| {
            Error::integrity(format!(
                "cached segment {} has a damaged record",
                seg.path.display()
            ))
        })?;
    segments::copy_segment(&seg.path, &seg.segment, out)?;
    Ok(hasher)
}

/// A whole archive: the cached segment, then what `rest` appends (hashed on
/// from the segment's saved state), committed atomically.
pub fn whole_archive(
    seg: &Cached,
    dest: &Path,
    mode: u32,
    rest: impl FnOnce(HashingWriter<AtomicFile>) -> Result<HashingWriter<AtomicFile>>,
) -> Result<OutputFile> {
    let mut file = AtomicFile::create(dest, mode)?;
    let hasher = copy_into(seg, file.file_mut().with_path("cannot write", dest)?)?;
    commit_hashed(rest(HashingWriter::resume(file, hasher))?)
}

/// Put a hashed output file in place; its name, digest and size for the manifest.
pub fn commit_hashed(out: HashingWriter<AtomicFile>) -> Result<OutputFile> {
    let (file, sha256, size) = out.finish();
    let path = file.commit()?;
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(OutputFile { name, sha256, size })
}

/// The shared half of a split build: written by the first node that needs it
/// (and only if the copy already there is not the one a previous build wrote);
/// every other node of the build must need the same.
#[derive(Default)]
pub struct SharedHalf(Mutex<Option<(String, OutputFile)>>);

impl SharedHalf {
    pub fn place(
        &self,
        plan: &Plan,
        cache: &Cache,
        mut seg: Cached,
        dest: &Path,
        mode: u32,
        progress: &dyn Progress,
    ) -> Result<OutputFile> {
        let mut placed = self.0.lock().expect("shared half");
        match &*placed {
            Some((seen, o)) if *seen == seg.key => return Ok(o.clone()),
            Some(_) => {
                return Err(Error::input(format!(
                    "node {}: its binaries differ from the previous node's, so they cannot share one archive; build it without --split",
                    plan.meta.made_from.node_index
                )));
            }
            None => {}
        }
        if cache.place_segment(&seg.key, &mut seg.segment, &seg.path, dest, mode)? {
            progress.event(Event::Wrote { path: dest });
        } else {
            progress.event(Event::Step {
                what: &format!("{} is unchanged since the last build; kept", dest.display()),
            });
        }
        let out = OutputFile {
            name: dest
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            sha256: seg.segment.sha256,
            size: seg.segment.size,
        };
        *placed = Some((seg.key, out.clone()));
        Ok(out)
    }
}

/// Write `bytes` after a segment being made.
pub fn append(w: &mut SegmentWriter, bytes: &[u8], cache: &Cache) -> Result<()> {
    w.write_all(bytes)
        .map_err(|e| Error::io("cannot write", &cache.tmp_dir(), e))
}
