//! The node-independent part of an archive (the binaries, compressed), made
//! once per recipe, arch and mtime and kept in the cache as a segment. Whole
//! archives start with a copy of it; split builds ship it as the shared half.
//! The whole archives of the build that makes it are written as it is made
//! (`Starts`): the disk writes them while the binaries compress.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, IoContext, Result};
use crate::output::format::Compression;
use crate::output::manifest::OutputFile;
use crate::plan::Plan;
use crate::progress::{Event, Progress};
use crate::store::cache::Cache;
use crate::store::segments::{self, Segment};
use crate::util::atomic::AtomicFile;
use crate::util::digest::{HashingWriter, ResumableSha256};
use crate::util::writeback::{AppendFile, TempWriter, Writeback, copies_share_extents};

/// A cached segment: its key, file and record.
pub struct Cached {
    pub key: String,
    pub path: PathBuf,
    pub segment: Segment,
}

/// A segment being written: a temp file in the cache, hashed as it fills
/// and sent to disk as it fills (so storing it waits for little).
pub type SegmentWriter = HashingWriter<BufWriter<Sink>>;

pub fn segment_writer(sink: Sink) -> SegmentWriter {
    HashingWriter::new(BufWriter::with_capacity(1 << 20, sink))
}

/// Where a segment being made goes: its temp file in the cache, and the
/// whole archives of this build that start with it.
pub struct Sink {
    cache: TempWriter,
    starts: Vec<(PathBuf, AtomicFile)>,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.cache.write(buf)?;
        for (dest, file) in &mut self.starts {
            file.write_all(&buf[..n]).map_err(|e| named(dest, e))?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.cache.flush()?;
        for (dest, file) in &mut self.starts {
            file.flush().map_err(|e| named(dest, e))?;
        }
        Ok(())
    }
}

impl AppendFile for Sink {
    fn append_file(&mut self, src: &File) -> io::Result<u64> {
        let n = self.cache.append_file(src)?;
        for (_, file) in &mut self.starts {
            file.writer_mut()?.append_file(src)?;
        }
        Ok(n)
    }
}

fn named(dest: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", dest.display()))
}

/// The whole archives a build will write, which all begin with the same
/// segment. When that segment is not cached, the first `BEGUN` of them are
/// written while it is made, each byte as it comes out of the compressors,
/// instead of copied from it afterwards: on a cold build the disk writes
/// them while the CPU compresses. More would make the compressors wait for
/// the disk; the others are copied afterwards, several at once.
#[derive(Default)]
pub struct Starts {
    /// Handed to the first segment made; later ones get none.
    wanted: Mutex<Vec<PathBuf>>,
    /// Archives begun with segment `.0`, waiting for their node.
    begun: Mutex<Vec<(String, PathBuf, AtomicFile)>>,
}

impl Starts {
    pub fn new(wanted: Vec<PathBuf>) -> Self {
        Starts {
            wanted: Mutex::new(wanted),
            begun: Mutex::default(),
        }
    }

    fn open(&self, cache: &Cache) -> Result<Vec<(PathBuf, AtomicFile)>> {
        let wanted = std::mem::take(&mut *self.wanted.lock().expect("starts"));
        // Where a copy afterwards shares the extents (XFS, btrfs), it costs
        // nothing, and begun archives would each take their own space.
        let folder = wanted.first().and_then(|d| d.parent()).map(|f| {
            if f.as_os_str().is_empty() {
                Path::new(".")
            } else {
                f
            }
        });
        if folder.is_none_or(|f| copies_share_extents(&cache.tmp_dir(), f)) {
            return Ok(Vec::new());
        }
        wanted
            .into_iter()
            .take(BEGUN)
            .map(|dest| Ok((dest.clone(), AtomicFile::unbuffered(&dest, 0o600)?)))
            .collect()
    }

    fn begun(&self, key: &str, files: Vec<(PathBuf, AtomicFile)>) {
        let mut begun = self.begun.lock().expect("starts");
        begun.extend(files.into_iter().map(|(d, f)| (key.to_string(), d, f)));
    }

    /// The archive `dest` begun with segment `key`, if there is one.
    fn take(&self, key: &str, dest: &Path) -> Result<Option<AtomicFile>> {
        let mut begun = self.begun.lock().expect("starts");
        let Some(i) = begun.iter().position(|(k, d, _)| k == key && d == dest) else {
            return Ok(None);
        };
        let file = begun.swap_remove(i).2;
        Ok(Some(file.buffered().with_path("cannot write", dest)?))
    }
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
/// file in the cache, and the archives of `starts`, and returns them
/// written) and stored; `step` says what a cache miss costs.
pub fn cached(
    cache: &Cache,
    key: String,
    step: Option<&str>,
    starts: &Starts,
    progress: &dyn Progress,
    make: impl FnOnce(Sink) -> Result<SegmentWriter>,
) -> Result<Cached> {
    if let Some((path, segment)) = cache.segment(&key)? {
        return Ok(Cached { key, path, segment });
    }
    if let Some(what) = step {
        progress.event(Event::Step { what });
    }
    let sink = Sink {
        cache: Writeback::new(cache.temp_file()?),
        starts: starts.open(cache)?,
    };
    let w = make(sink)?;
    let state = w.hasher.save();
    let (buf, sha256, size) = w.finish();
    let sink = buf
        .into_inner()
        .map_err(|e| Error::io("cannot write", Path::new("segment"), e.into_error()))?;
    let tmp = sink.cache.into_inner();
    let seg = Segment {
        sha256,
        size,
        state,
        stamp: None,
        placed: Vec::new(),
    };
    let (path, segment) = cache.store_segment(&key, tmp, &seg)?;
    starts.begun(&key, sink.starts);
    Ok(Cached { key, path, segment })
}

/// Copy a cached segment to the start of `out` and return the hash state
/// after its bytes, so the output's digest costs only what follows.
pub fn copy_into(seg: &Cached, out: &mut impl AppendFile) -> Result<ResumableSha256> {
    let hasher = resume(seg)?;
    segments::copy_segment(&seg.path, &seg.segment, out)?;
    Ok(hasher)
}

/// The hash state after the segment's bytes.
fn resume(seg: &Cached) -> Result<ResumableSha256> {
    ResumableSha256::resume(&seg.segment.state)
        .filter(|h| h.len() == seg.segment.size)
        .ok_or_else(|| {
            Error::integrity(format!(
                "cached segment {} has a damaged record",
                seg.path.display()
            ))
        })
}

/// A whole archive: the segment (begun while it was made, or copied from
/// the cache), then what `rest` appends (hashed on from the segment's saved
/// state), committed atomically.
pub fn whole_archive(
    seg: &Cached,
    starts: &Starts,
    dest: &Path,
    mode: u32,
    rest: impl FnOnce(HashingWriter<AtomicFile>) -> Result<HashingWriter<AtomicFile>>,
) -> Result<OutputFile> {
    let (mut file, hasher) = match starts.take(&seg.key, dest)? {
        Some(file) => (file, resume(seg)?),
        None => {
            let mut file = AtomicFile::create(dest, mode)?;
            let hasher = copy_into(seg, file.writer_mut().with_path("cannot write", dest)?)?;
            (file, hasher)
        }
    };
    file.set_mode(mode);
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

/// How many archives are written while their segment is made, at most.
/// Measured on 2 cores and ext4: 3 of them gain the fsync waits, 50 made
/// the compressors wait for the disk (whole archives of 50 nodes took 9.9 s
/// instead of 7.0 s).
const BEGUN: usize = 4;

/// What the nodes of one build share: a split's shared half, or the whole
/// archives begun while the segment is made.
#[derive(Default)]
pub struct Shared {
    pub half: SharedHalf,
    pub starts: Starts,
}

/// The shared half of a split build: written by the first node that needs it
/// (and only if the copy already there is not the one a previous build wrote);
/// every other node of the build must need the same.
#[derive(Default)]
pub struct SharedHalf(Mutex<Option<(String, OutputFile)>>);

impl Shared {
    /// Put the shared half of a split build in place (once per build).
    pub fn place(
        &self,
        plan: &Plan,
        cache: &Cache,
        mut seg: Cached,
        dest: &Path,
        mode: u32,
        progress: &dyn Progress,
    ) -> Result<OutputFile> {
        let mut placed = self.half.0.lock().expect("shared half");
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
        let begun = self.starts.take(&seg.key, dest)?;
        if cache.place_segment(&seg.key, &mut seg.segment, &seg.path, dest, mode, begun)? {
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
