//! Keeping the cache sound: `cache verify` re-hashes every stored file and drops
//! what does not match its name (or its record, for derived segments);
//! `cache gc` removes leftovers of interrupted writes and unreferenced files.
//! Both hold the cache-wide lock exclusively.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use super::cache::{ArtifactIndex, Cache, hash_file, index_key, parse_pin};
use super::index::{differs, kind_of};
use super::segments::Segment;
use crate::error::{Error, IoContext, Result};
use crate::input::recipe::Algorithm;
use crate::progress::{Event, Progress};
use crate::util::digest::sha256_hex;
use crate::util::stamp::Stamp;

/// What `cache verify` found.
#[derive(Debug, Default)]
pub struct VerifyReport {
    /// Files re-hashed.
    pub checked: usize,
    pub bytes: u64,
    /// What was wrong, one line each (each was removed).
    pub dropped: Vec<String>,
    /// How many of those were derived segments (the next build remakes them).
    pub segments_dropped: usize,
}

/// What `cache gc` removed.
#[derive(Debug, Default)]
pub struct GcReport {
    /// Removed paths (relative to the cache root) and their sizes.
    pub removed: Vec<(String, u64)>,
}

impl Cache {
    /// The content-addressed folders and the algorithm their names are in.
    fn stores(&self) -> [(&'static str, Algorithm); 3] {
        [
            ("artifacts/sha256", Algorithm::Sha256),
            ("artifacts/sha512", Algorithm::Sha512),
            ("blobs/sha256", Algorithm::Sha256),
        ]
    }

    fn remove(&self, path: &Path) -> Result<u64> {
        let size = fs::symlink_metadata(path).map(|m| m.len()).unwrap_or(0);
        match fs::remove_file(path) {
            Ok(()) => Ok(size),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(Error::io("cannot remove", path, e)),
        }
    }

    fn rel(&self, path: &Path) -> String {
        path.strip_prefix(self.root())
            .unwrap_or(path)
            .display()
            .to_string()
    }

    pub(super) fn files_in(&self, sub: &str) -> Result<Vec<PathBuf>> {
        let dir = self.root().join(sub);
        let mut out = Vec::new();
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io("cannot list", &dir, e)),
        };
        for ent in rd {
            out.push(ent.with_path("cannot list", &dir)?.path());
        }
        out.sort();
        Ok(out)
    }

    /// `imgbuild cache verify`: re-hash every stored file against its name, drop
    /// what does not match, then drop indexes whose files are gone.
    pub fn verify(&self, progress: &dyn Progress) -> Result<VerifyReport> {
        let _excl = self.lock(true)?;
        let mut report = VerifyReport::default();
        for (sub, alg) in self.stores() {
            for path in self.files_in(sub)? {
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let rel = self.rel(&path);
                let meta = fs::symlink_metadata(&path).with_path("cannot stat", &path)?;
                if !meta.file_type().is_file() {
                    self.remove(&path)?;
                    report.dropped.push(format!("{rel}: not a regular file"));
                    continue;
                }
                let before = Stamp::of(&path).ok().flatten();
                match hash_file(&path, alg) {
                    Ok((hex, size)) if hex == name => {
                        report.checked += 1;
                        report.bytes += size;
                        if sub.starts_with("blobs/")
                            && let Some(before) = &before
                        {
                            self.record_blob(&name, Some(before));
                        }
                    }
                    Ok((hex, _)) => {
                        self.remove(&path)?;
                        report.dropped.push(format!(
                            "{rel}: corrupt (content hashes to {}:{hex})",
                            alg.name()
                        ));
                    }
                    Err(e) => {
                        self.remove(&path)?;
                        report.dropped.push(format!("{rel}: unreadable ({e})"));
                    }
                }
                progress.event(Event::Step {
                    what: &format!("verified {rel}"),
                });
            }
        }
        self.verify_segments(&mut report, progress)?;
        // Indexes last: their files were checked above.
        for path in self.files_in("index")? {
            let rel = self.rel(&path);
            if let Some(problem) = self.verify_index(&path) {
                self.remove(&path)?;
                report.dropped.push(format!("{rel}: {problem}"));
            }
            progress.event(Event::Step {
                what: &format!("verified {rel}"),
            });
        }
        Ok(report)
    }

    /// What is wrong with the index at `path`, if anything: unreadable, not
    /// well-formed or not the index its name says, a file lost, or members
    /// that are not what the kept original (re-hashed against the pin the
    /// name gives) holds. A sound index is recorded in this user's ledger.
    fn verify_index(&self, path: &Path) -> Option<String> {
        let name = path.file_name()?.to_string_lossy().into_owned();
        let pin = name
            .strip_suffix(".json")
            .and_then(|stem| stem.split_once('-'))
            .and_then(|(alg, hex)| {
                parse_pin(&format!("{alg}:{hex}")).map(|(a, h)| (a, h.to_string()))
            });
        let Some((alg, hex)) = pin else {
            return Some("not an index name (<algorithm>-<hex>.json)".into());
        };
        let (index, bytes) = match self.read_index(alg, &hex) {
            Ok(Some(found)) => found,
            Ok(None) => {
                let what = fs::read(path)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<ArtifactIndex>(&b).ok())
                    .map(|i| format!("{} ({})", i.file, i.pin))
                    .unwrap_or_else(|| format!("{}:{hex}", alg.name()));
                return Some(format!("{what} lost a file; fetch or import it again"));
            }
            Err(e) => {
                return Some(
                    e.message()
                        .split(". Run `imgbuild cache verify`")
                        .next()?
                        .to_string(),
                );
            }
        };
        let derived = match self.derive_members(alg, &hex, kind_of(&index), &index) {
            Ok(d) => d,
            Err(e) => return Some(e.message().to_string()),
        };
        if let Some(why) = differs(&index, &derived) {
            return Some(format!(
                "{} ({}) does not hold what its index says: {why}",
                index.file, index.pin
            ));
        }
        self.ledger.put(&index_key(alg, &hex), &sha256_hex(&bytes));
        None
    }

    /// The files an index stands for: the artifact and its member blobs (with sizes).
    fn index_files(&self, index: &ArtifactIndex) -> Option<Vec<(PathBuf, Option<u64>)>> {
        let (alg, hex) = parse_pin(&index.pin)?;
        let mut out = vec![(self.artifact_path(alg, hex), Some(index.size))];
        for b in index.members.values() {
            out.push((self.blob_path(&b.sha256), Some(b.size)));
        }
        Some(out)
    }

    /// `imgbuild cache gc`: remove leftovers of interrupted writes, and files no
    /// index refers to. With `keep`, also drop artifacts for which it says false
    /// (e.g. pinned by no known recipe).
    pub fn gc(&self, keep: Option<&dyn Fn(&ArtifactIndex) -> bool>) -> Result<GcReport> {
        let _excl = self.lock(true)?;
        let mut report = GcReport::default();
        let rm = |path: &Path, report: &mut GcReport| -> Result<()> {
            let size = self.remove(path)?;
            report.removed.push((self.rel(path), size));
            Ok(())
        };
        // Nothing is being ingested (we hold the lock exclusively), but a build
        // may be writing a segment: remove temp files untouched for an hour.
        let stale = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
        for path in self.files_in("tmp")? {
            let old = fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t < stale);
            if old {
                rm(&path, &mut report)?;
            }
        }
        for path in self.files_in("inflight")? {
            if let Ok(f) = File::open(&path)
                && f.try_lock().is_ok()
            {
                rm(&path, &mut report)?;
            }
        }
        let mut referenced: BTreeSet<PathBuf> = BTreeSet::new();
        for path in self.files_in("index")? {
            let index: Option<ArtifactIndex> = fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let files = index.as_ref().and_then(|i| self.index_files(i));
            match (index, files) {
                (Some(index), Some(files)) if keep.is_none_or(|k| k(&index)) => {
                    referenced.extend(files.into_iter().map(|(p, _)| p));
                }
                _ => rm(&path, &mut report)?,
            }
        }
        for (sub, _) in self.stores() {
            for path in self.files_in(sub)? {
                if !referenced.contains(&path) {
                    rm(&path, &mut report)?;
                }
            }
        }
        // Segments: derived data. Halves of a pair that lost the other half go;
        // with `keep` (gc --unused), all of them.
        let segments = self.files_in("segments")?;
        for path in &segments {
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let other = match name.strip_suffix(".json") {
                Some(key) => self.segment_path(key),
                None => self.segment_path(&format!("{name}.json")),
            };
            if keep.is_some() || !segments.contains(&other) {
                rm(path, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Segments are derived data: one whose bytes are not its record's (or
    /// that lost its record or its file) is dropped; the next build remakes it.
    fn verify_segments(&self, report: &mut VerifyReport, progress: &dyn Progress) -> Result<()> {
        let files = self.files_in("segments")?;
        for path in &files {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let rel = self.rel(path);
            if let Some(key) = name.strip_suffix(".json") {
                if !files.contains(&self.segment_path(key)) {
                    self.remove(path)?;
                    report.segments_dropped += 1;
                    report.dropped.push(format!("{rel}: its segment is gone"));
                }
                continue;
            }
            let seg: Option<Segment> =
                fs::read_to_string(self.segment_path(&format!("{name}.json")))
                    .ok()
                    .and_then(|t| serde_json::from_str(&t).ok());
            let problem = match (&seg, hash_file(path, Algorithm::Sha256)) {
                (None, _) => Some("no readable record".to_string()),
                (Some(seg), Ok((hex, size))) if hex == seg.sha256 && size == seg.size => {
                    report.checked += 1;
                    report.bytes += size;
                    None
                }
                (Some(_), Ok((hex, _))) => {
                    Some(format!("corrupt (content hashes to sha256:{hex})"))
                }
                (Some(_), Err(e)) => Some(format!("unreadable ({e})")),
            };
            if let Some(problem) = problem {
                self.drop_segment(&name);
                report.segments_dropped += 1;
                report
                    .dropped
                    .push(format!("{rel}: {problem}; the next build makes it again"));
            }
            progress.event(Event::Step {
                what: &format!("verified {rel}"),
            });
        }
        Ok(())
    }
}
