//! tar.gz outputs: a node's whole archive is the cached shared segment (the
//! binaries' tar entries as parallel gzip members, no end blocks) followed by
//! one gzip member with the node's entries and the end-of-archive blocks. A
//! split build ships those two parts as two files; concatenated, they are the
//! whole archive byte for byte.

use std::io::{self, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::codec::gz;
use crate::codec::tar::{TarStream, append, finish, header};
use crate::error::{Error, Result};
use crate::output::manifest::OutputFile;
use crate::output::segment::{self, COMPRESSING, Cached};
use crate::plan::{Entry, EntryKind, Plan};
use crate::progress::Progress;
use crate::store::cache::Cache;
use crate::util::atomic::AtomicFile;
use crate::util::digest::HashingWriter;

/// The shared part of every node's tar.gz, from the cache or made now and
/// cached. Keyed by everything its bytes depend on (entries, mtime, deflate settings).
pub fn segment(
    plan: &Plan,
    cache: &Cache,
    threads: usize,
    progress: &dyn Progress,
) -> Result<Cached> {
    let shared: Vec<&Entry> = plan.shared().collect();
    let key = format!("tar-gz-{}", shared_key(&shared, plan.meta.mtime)?);
    segment::cached(cache, key, Some(COMPRESSING), progress, |tmp| {
        let mut w = segment::segment_writer(tmp);
        write_shared(shared, plan.meta.mtime, &mut w, threads)?;
        Ok(w)
    })
}

/// The node's tar.gz: the cached shared part, then the node's own member.
/// A warm build copies the shared part and compresses only the node's files.
pub fn write_whole(plan: &Plan, seg: &Cached, dest: &Path) -> Result<OutputFile> {
    segment::whole_archive(seg, dest, 0o600, |out| {
        write_per_node(plan.per_node(), plan.meta.mtime, out)
    })
}

/// A split tar.gz's node half: the node's entries and the end-of-archive
/// blocks as one gzip member, which appended to the shared half gives exactly
/// the whole archive (and alone is a valid archive of the node's files).
pub fn write_node_half(plan: &Plan, dest: &Path) -> Result<OutputFile> {
    let mode = if plan.per_node().any(|e| e.secret) {
        0o600
    } else {
        0o644
    };
    let file = AtomicFile::create(dest, mode)?;
    let out = write_per_node(plan.per_node(), plan.meta.mtime, HashingWriter::new(file))?;
    segment::commit_hashed(out)
}

/// Key of the shared part's compressed form: everything its bytes depend on.
pub fn shared_key(entries: &[&Entry], mtime: u64) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!(
        "imgbuild tar.gz shared part v1; zlib-rs level {} chunk {}\n",
        gz::LEVEL,
        gz::CHUNK
    ));
    for e in entries {
        h.update(header(e, mtime)?.as_bytes());
        if let EntryKind::File { sha256, .. } = &e.kind {
            h.update(sha256.as_bytes());
        }
    }
    Ok(hex::encode(h.finalize()))
}

/// Compress the shared entries as parallel gzip members into `out`.
pub fn write_shared(
    entries: Vec<&Entry>,
    mtime: u64,
    out: &mut dyn Write,
    threads: usize,
) -> Result<()> {
    gz::compress_parallel(TarStream::new(entries, mtime), out, threads).map_err(|e| {
        let kind = if e.kind() == io::ErrorKind::InvalidData {
            crate::Kind::Integrity
        } else {
            crate::Kind::Io
        };
        Error::new(kind, format!("writing the archive's shared part: {e}"))
    })?;
    Ok(())
}

/// The node's own entries and the end-of-archive blocks, as one gzip member.
pub fn write_per_node<'a, W: Write>(
    entries: impl Iterator<Item = &'a Entry>,
    mtime: u64,
    out: W,
) -> Result<W> {
    let io_err = |e: io::Error| Error::new(crate::Kind::Io, format!("writing archive: {e}"));
    let mut enc = gz::encoder(out);
    for e in entries {
        append(&mut enc, e, mtime)?;
    }
    finish(&mut enc).map_err(io_err)?;
    enc.finish().map_err(io_err)
}
