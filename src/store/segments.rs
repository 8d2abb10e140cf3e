//! Derived segments: node-independent parts of outputs (e.g. the binaries of a
//! tar.gz, compressed), kept in `segments/` so that later builds compress
//! nothing large. Unlike artifacts they are not pinned: a segment whose bytes
//! are not its record's is dropped and made again by the next build.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tempfile::NamedTempFile;

use super::cache::Cache;
use crate::error::{Error, IoContext, Result};
use crate::util::atomic::AtomicFile;
use crate::util::digest::{Sha256State, sha256_file};
use crate::util::stamp::Stamp;
use crate::util::writeback::AppendFile;

/// A derived, node-independent part of an output (e.g. the binaries of a
/// tar.gz, compressed), kept so that later builds compress nothing large.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    pub sha256: String,
    pub size: u64,
    /// The hash state after the segment's bytes: outputs that begin with the
    /// segment resume from it instead of hashing the segment again.
    pub state: Sha256State,
    /// The segment file as it was when last verified; while it matches, the
    /// file is trusted without reading it (see `stamp`).
    #[serde(default)]
    pub stamp: Option<Stamp>,
    /// Copies of the segment placed as output files (a split archive's shared
    /// half), newest first: a build whose copy is still as written skips it.
    #[serde(default)]
    pub placed: Vec<Placed>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placed {
    pub path: PathBuf,
    pub stamp: Stamp,
}

/// How many placed copies a segment remembers (one per output folder used).
const PLACED_KEPT: usize = 32;

impl Cache {
    pub fn segment_path(&self, key: &str) -> PathBuf {
        self.root().join("segments").join(key)
    }

    /// A cached segment, verified: a file changed since it was stored (its
    /// stamp differs) is hashed again, and dropped if its bytes are not the
    /// recorded ones; the caller then builds it anew.
    pub fn segment(&self, key: &str) -> Result<Option<(PathBuf, Segment)>> {
        let meta_path = self.segment_path(&format!("{key}.json"));
        let text = match fs::read_to_string(&meta_path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", &meta_path, e)),
        };
        let Ok(mut seg) = serde_json::from_str::<Segment>(&text) else {
            self.drop_segment(key);
            return Ok(None);
        };
        // The record is in the cache, which others may write: only a segment
        // this user made (or verified) is used; any other is made again.
        if self.ledger.get(&ledger_key(key)).as_deref() != Some(seg.sha256.as_str()) {
            return Ok(None);
        }
        let path = self.segment_path(key);
        let Some(stamp) = Stamp::of(&path).with_path("cannot stat", &path)? else {
            self.drop_segment(key);
            return Ok(None);
        };
        if seg.stamp.as_ref().is_some_and(|r| stamp.still(r)) {
            return Ok(Some((path, seg)));
        }
        match sha256_file(&path) {
            Ok((hex, size)) if hex == seg.sha256 && size == seg.size => {
                seg.stamp = Some(stamp);
                // Best effort: failing to record only costs a re-hash next time.
                let _ = self.write_segment_record(key, &seg);
                Ok(Some((path, seg)))
            }
            _ => {
                self.drop_segment(key);
                Ok(None)
            }
        }
    }

    /// Store a segment written to `tmp` (from `temp_file`), hashing nothing again:
    /// the caller hashed it while writing.
    pub fn store_segment(
        &self,
        key: &str,
        tmp: NamedTempFile,
        seg: &Segment,
    ) -> Result<(PathBuf, Segment)> {
        let path = self.segment_path(key);
        // Shared lock: `cache gc` must not see the file without its record.
        let _shared = self.lock(false)?;
        self.persist(tmp, &path)?;
        let mut seg = seg.clone();
        seg.stamp = Stamp::of(&path).with_path("cannot stat", &path)?;
        seg.placed.clear();
        self.write_segment_record(key, &seg)?;
        self.ledger.put(&ledger_key(key), &seg.sha256);
        Ok((path, seg))
    }

    fn write_segment_record(&self, key: &str, seg: &Segment) -> Result<()> {
        let mut meta = self.temp_file()?;
        meta.write_all(&serde_json::to_vec(seg).expect("serializes"))
            .with_path("cannot write", meta.path())?;
        self.persist(meta, &self.segment_path(&format!("{key}.json")))
    }

    /// Put a copy of segment `key` at `dest` (mode `mode`), unless the copy a
    /// previous build put there is still as it was written. Returns whether
    /// anything was written. The copy is `begun` (written while the segment
    /// was made), or the segment file itself (a hard link, see `link_segment`),
    /// or made now in the kernel (copy_file_range).
    pub fn place_segment(
        &self,
        key: &str,
        seg: &mut Segment,
        seg_path: &Path,
        dest: &Path,
        mode: u32,
        begun: Option<AtomicFile>,
    ) -> Result<bool> {
        let abs = std::path::absolute(dest).with_path("cannot resolve", dest)?;
        let current = Stamp::of(&abs).with_path("cannot stat", &abs)?;
        // The stamp holds the mode too: a copy whose mode changed is not kept.
        let still =
            |p: &Placed| p.path == abs && current.as_ref().is_some_and(|c| c.still(&p.stamp));
        if begun.is_none() && seg.placed.iter().any(still) {
            return Ok(false);
        }
        match begun {
            Some(mut file) => {
                file.set_mode(mode);
                file.commit()?;
            }
            None if self.link_segment(seg, seg_path, dest, mode)? => {}
            None => {
                let mut file = AtomicFile::create(dest, mode)?;
                copy_segment(
                    seg_path,
                    seg,
                    file.writer_mut().with_path("cannot write", dest)?,
                )?;
                file.commit()?;
            }
        }
        if let Some(stamp) = Stamp::of(&abs).with_path("cannot stat", &abs)? {
            seg.placed.retain(|p| p.path != abs);
            seg.placed.insert(0, Placed { path: abs, stamp });
            seg.placed.truncate(PLACED_KEPT);
            // Best effort: without the record the next build copies again.
            let _ = self.write_segment_record(key, seg);
        }
        Ok(true)
    }

    /// Make `dest` the segment file itself, by a hard link (as cargo puts its
    /// build outputs in place, and pnpm its store's files): 115 MB placed
    /// without writing them, and stored once. Only a segment file this user
    /// owns, so nobody else can change the output through it; its mode
    /// becomes the output's. Changing the output in place changes the
    /// segment's stamp, so the next build hashes the segment again and drops
    /// it if its bytes changed. `false` where no link can be made (another
    /// filesystem): the caller copies.
    fn link_segment(
        &self,
        seg: &mut Segment,
        seg_path: &Path,
        dest: &Path,
        mode: u32,
    ) -> Result<bool> {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let meta = fs::symlink_metadata(seg_path).with_path("cannot stat", seg_path)?;
        if meta.uid() != rustix::process::geteuid().as_raw() || !meta.file_type().is_file() {
            return Ok(false);
        }
        if meta.mode() & 0o7777 != mode {
            fs::set_permissions(seg_path, fs::Permissions::from_mode(mode))
                .with_path("cannot set permissions on", seg_path)?;
        }
        if !crate::util::atomic::link(seg_path, dest)? {
            return Ok(false);
        }
        // The link (and the mode) changed the file's ctime, nothing else.
        seg.stamp = Stamp::of(seg_path).with_path("cannot stat", seg_path)?;
        Ok(true)
    }

    /// How many derived segments the cache holds, and their bytes.
    pub fn segments_usage(&self) -> Result<(usize, u64)> {
        let mut n = 0;
        let mut bytes = 0;
        for path in self.files_in("segments")? {
            if path.extension().is_none() {
                n += 1;
                bytes += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            }
        }
        Ok((n, bytes))
    }

    /// Drop a segment found corrupt (it is derived data: the next build remakes it).
    pub fn drop_segment(&self, key: &str) {
        let _ = fs::remove_file(self.segment_path(&format!("{key}.json")));
        let _ = fs::remove_file(self.segment_path(key));
    }
}

/// The ledger's name for segment `key`.
fn ledger_key(key: &str) -> String {
    format!("segment-{key}")
}

/// Append a cached segment to `out`, in the kernel (copy_file_range: the
/// bytes never pass through this process), sent to disk as it is copied.
pub fn copy_segment(seg_path: &Path, seg: &Segment, out: &mut impl AppendFile) -> Result<()> {
    let src = File::open(seg_path).with_path("cannot read", seg_path)?;
    let copied = out.append_file(&src).map_err(|e| {
        Error::new(
            crate::error::Kind::Io,
            format!("cannot copy {} {e}", seg_path.display()),
        )
    })?;
    if copied != seg.size {
        return Err(Error::integrity(format!(
            "cached segment {} changed size while copying; run `imgbuild cache verify`",
            seg_path.display()
        )));
    }
    Ok(())
}
