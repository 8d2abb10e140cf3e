//! Bringing an artifact into the cache, in two steps: the whole file is
//! copied into a temp file of the cache while it is hashed, and compared with
//! the pin; only then, from that verified copy, are a tarball's members
//! extracted. Nothing unverified is ever unpacked, and every size is capped
//! (see [`Limits`]): a hostile mirror, bundle or file can neither fill the disk
//! nor make imgbuild unpack a decompression bomb.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::Path;

use tempfile::NamedTempFile;

use super::cache::{ArtifactIndex, BlobRef, Cache, Candidate, Hasher};
use crate::error::{Error, IoContext, Kind, Result, clip};
use crate::input::recipe::{Algorithm, ArtifactKind};
use crate::util::digest::HashingWriter;

/// The variable that sets [`Limits::artifact`].
pub const ENV_MAX_ARTIFACT: &str = "IMGBUILD_MAX_ARTIFACT_SIZE";
/// Default largest artifact: release tarballs are a few hundred MB.
pub const DEFAULT_MAX_ARTIFACT: u64 = 2 << 30;
/// Entries a tarball may hold (a release tarball holds a few dozen).
pub const MAX_TAR_ENTRIES: u64 = 100_000;
/// A tarball may expand to this many times its size (release tarballs: about
/// 3×; a gzip bomb: up to 1000×) ...
pub const EXPANSION_RATIO: u64 = 20;
/// ... plus this much (tar's zero padding makes tiny tarballs expand a lot).
pub const EXPANSION_SLACK: u64 = 64 << 20;

/// Caps on what enters the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest artifact (a download body, a file given to `cache import`, a
    /// bundle entry) and largest member taken from a tarball.
    pub artifact: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            artifact: DEFAULT_MAX_ARTIFACT,
        }
    }
}

impl Limits {
    /// The default, or `IMGBUILD_MAX_ARTIFACT_SIZE` (bytes, or with K, M, G).
    pub fn from_env() -> Result<Limits> {
        match std::env::var(ENV_MAX_ARTIFACT) {
            Ok(v) if !v.trim().is_empty() => parse_size(&v)
                .filter(|n| *n > 0)
                .map(|artifact| Limits { artifact })
                .ok_or_else(|| {
                    Error::input(format!(
                        "{ENV_MAX_ARTIFACT} = {:?}: expected a size in bytes, optionally with K, M or G \
                         (e.g. 4G); unset it for the default ({})",
                        clip(&v),
                        show_size(DEFAULT_MAX_ARTIFACT)
                    ))
                }),
            _ => Ok(Limits::default()),
        }
    }

    /// Bytes a tarball of `compressed` bytes may expand to.
    pub fn expanded(&self, compressed: u64) -> u64 {
        compressed
            .saturating_mul(EXPANSION_RATIO)
            .saturating_add(EXPANSION_SLACK)
    }

    /// The error for `what` (named) being larger than the artifact cap.
    pub fn too_large(&self, what: &str) -> Error {
        Error::integrity(format!(
            "{what}: larger than the cap of {} for one artifact (set {ENV_MAX_ARTIFACT} to change it). \
             Nothing was stored",
            show_size(self.artifact)
        ))
    }
}

/// `123`, `64K`, `512M`, `2G` → bytes.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, shift) = match s.as_bytes().last()? {
        b'K' | b'k' => (&s[..s.len() - 1], 10),
        b'M' | b'm' => (&s[..s.len() - 1], 20),
        b'G' | b'g' => (&s[..s.len() - 1], 30),
        _ => (s, 0),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// A size for a message: `2 GiB`, `64 KiB`, or bytes.
pub fn show_size(n: u64) -> String {
    for (shift, unit) in [(30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// An artifact copied into a temp file of the cache, with its digests.
struct Received {
    file: NamedTempFile,
    digests: Vec<(Algorithm, String)>,
    size: u64,
}

impl Received {
    fn digest(&self, alg: Algorithm) -> Option<&str> {
        self.digests
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, h)| h.as_str())
    }
}

/// Why a read of a tarball stopped: it expanded beyond its cap.
#[derive(Debug)]
struct OverCap(String);

impl fmt::Display for OverCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for OverCap {}

/// Counts the bytes a decompressor gives and fails past `limit`.
struct Capped<R> {
    inner: R,
    seen: u64,
    limit: u64,
    compressed: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.seen += n as u64;
        if self.seen > self.limit {
            return Err(io::Error::other(OverCap(format!(
                "it expands to more than {} ({EXPANSION_RATIO} times its {} compressed bytes, plus {})",
                show_size(self.limit),
                self.compressed,
                show_size(EXPANSION_SLACK)
            ))));
        }
        Ok(n)
    }
}

/// A failed read of a verified tarball: a bomb, or not a gzipped tar at all.
pub(super) fn tar_error(label: &str, kind: Kind, e: io::Error) -> Error {
    if let Some(cap) = e.get_ref().and_then(|i| i.downcast_ref::<OverCap>()) {
        return Error::integrity(format!(
            "{label}: {cap}: refused as a decompression bomb. Nothing was stored"
        ));
    }
    Error::new(
        kind,
        format!(
            "{label}: matches its pin but reading it as a gzipped tar failed: {e}. Nothing was stored"
        ),
    )
}

/// Writes a stream to a temp file, hashing it (sha256) on the way.
pub(super) fn write_hashed(
    tmp: NamedTempFile,
    mut src: impl Read,
) -> io::Result<(NamedTempFile, String, u64)> {
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp));
    io::copy(&mut src, &mut out)?;
    let (out, sha256, size) = out.finish();
    let tmp = out.into_inner().map_err(|e| e.into_error())?;
    Ok((tmp, sha256, size))
}

impl Cache {
    /// Verify `src` against the pin of one of `candidates` (artifacts sharing a file
    /// name, e.g. the same tarball name pinned by several versions), then take
    /// its members from the verified copy. Nothing enters the cache unless a
    /// digest matches, and nothing is unpacked before.
    pub fn ingest(
        &self,
        src: impl Read,
        label: &str,
        candidates: &[Candidate<'_>],
    ) -> Result<ArtifactIndex> {
        let Some(first) = candidates.first() else {
            return Err(Error::input(format!("{label}: no recipe pins this file")));
        };
        let _shared = self.lock(false)?;
        let mut algorithms: Vec<Algorithm> =
            candidates.iter().map(|c| c.artifact.algorithm).collect();
        // A single file is its own member, and members are named by sha256.
        algorithms.push(Algorithm::Sha256);
        algorithms.sort_by_key(|a| a.name());
        algorithms.dedup();
        let received = self.receive(src, label, &algorithms)?;
        let matched = candidates.iter().find(|c| {
            c.artifact
                .digests
                .get(c.arch)
                .is_some_and(|pin| Some(pin.as_str()) == received.digest(c.artifact.algorithm))
        });
        let Some(matched) = matched else {
            let expected: Vec<String> = candidates
                .iter()
                .map(|c| {
                    format!(
                        "{}:{} ({} {})",
                        c.artifact.algorithm.name(),
                        c.artifact
                            .digests
                            .get(c.arch)
                            .map(String::as_str)
                            .unwrap_or("?"),
                        c.recipe.name,
                        c.arch
                    )
                })
                .collect();
            let got: Vec<String> = received
                .digests
                .iter()
                .filter(|(a, _)| candidates.iter().any(|c| c.artifact.algorithm == *a))
                .map(|(a, h)| format!("{}:{h}", a.name()))
                .collect();
            return Err(Error::integrity(format!(
                "{label}: digest mismatch for {}: expected {}, got {}. Nothing was stored: \
                 this is not the pinned release artifact (a truncated or altered download?)",
                first.artifact.file_for(first.arch),
                expected.join(" or "),
                got.join(", ")
            )));
        };
        let (artifact, arch) = (matched.artifact, matched.arch);
        let expected = artifact.digest_for(&matched.recipe.name, arch)?.to_string();
        let dest = self.artifact_path(artifact.algorithm, &expected);
        let size = received.size;
        let members = match artifact.kind {
            ArtifactKind::File => {
                let member = artifact.members.first().ok_or_else(|| {
                    Error::input(format!("artifact {} has no members", artifact.name))
                })?;
                let sha256 = received
                    .digest(Algorithm::Sha256)
                    .unwrap_or_default()
                    .to_string();
                // The verified original is the member: it becomes the blob by a hard link.
                self.persist(received.file, &dest)?;
                self.link_blob(&dest, &sha256)?;
                BTreeMap::from([(member.path_for(arch), BlobRef { sha256, size })])
            }
            ArtifactKind::Tarball => {
                let paths: Vec<String> =
                    artifact.members.iter().map(|m| m.path_for(arch)).collect();
                let wanted: BTreeSet<&str> = paths.iter().map(String::as_str).collect();
                let mut taken: BTreeMap<String, (NamedTempFile, String, u64)> = BTreeMap::new();
                let copy = received
                    .file
                    .reopen()
                    .with_path("cannot read", received.file.path())?;
                self.walk_tarball(copy, size, label, &wanted, |path, entry| {
                    let tmp = self.temp_file()?;
                    let written =
                        write_hashed(tmp, entry).map_err(|e| tar_error(label, Kind::Io, e))?;
                    taken.insert(path.to_string(), written);
                    Ok(())
                })?;
                let missing: Vec<&str> = wanted
                    .iter()
                    .filter(|p| !taken.contains_key(**p))
                    .copied()
                    .collect();
                if !missing.is_empty() {
                    return Err(Error::integrity(format!(
                        "{label}: matches its pin but lacks member(s) {}: recipe {} names the wrong paths",
                        missing.join(", "),
                        matched.recipe.name
                    )));
                }
                let mut members = BTreeMap::new();
                for (path, (tmp, sha256, size)) in taken {
                    self.persist(tmp, &self.blob_path(&sha256))?;
                    self.record_blob(&sha256, None);
                    members.insert(path, BlobRef { sha256, size });
                }
                self.persist(received.file, &dest)?;
                members
            }
        };
        self.write_index(artifact, arch, &expected, size, members)
    }

    /// Copy `src` into a temp file of the cache, hashing it with each of
    /// `algorithms`; refused past the artifact cap.
    fn receive(
        &self,
        mut src: impl Read,
        label: &str,
        algorithms: &[Algorithm],
    ) -> Result<Received> {
        let tmp = self.temp_file()?;
        let path = tmp.path().to_path_buf();
        let mut out = BufWriter::with_capacity(1 << 20, tmp);
        let mut hashers: Vec<(Algorithm, Hasher)> =
            algorithms.iter().map(|a| (*a, Hasher::new(*a))).collect();
        let mut buf = vec![0u8; 256 * 1024];
        let mut size = 0u64;
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io("cannot read", Path::new(label), e)),
            };
            size += n as u64;
            if size > self.limits().artifact {
                return Err(self.limits().too_large(label));
            }
            for (_, h) in &mut hashers {
                h.update(&buf[..n]);
            }
            out.write_all(&buf[..n]).with_path("cannot write", &path)?;
        }
        let file = out
            .into_inner()
            .map_err(|e| Error::io("cannot write", &path, e.into_error()))?;
        Ok(Received {
            file,
            digests: hashers
                .into_iter()
                .map(|(a, h)| (a, h.finish_hex()))
                .collect(),
            size,
        })
    }

    /// Read the gzipped tar `file` (`compressed` bytes, already verified) and
    /// hand each wanted regular member to `take`, once. Capped: entries,
    /// member size, and how far the whole may expand. A wanted member that
    /// appears twice is refused (tools disagree on which one counts).
    pub(super) fn walk_tarball(
        &self,
        file: File,
        compressed: u64,
        label: &str,
        wanted: &BTreeSet<&str>,
        mut take: impl FnMut(&str, &mut dyn Read) -> Result<()>,
    ) -> Result<()> {
        let bad = |e: io::Error| tar_error(label, Kind::Integrity, e);
        let mut gz = Capped {
            inner: flate2::read::GzDecoder::new(BufReader::with_capacity(1 << 20, file)),
            seen: 0,
            limit: self.limits().expanded(compressed),
            compressed,
        };
        {
            let mut archive = tar::Archive::new(&mut gz);
            let mut count = 0u64;
            let mut seen = BTreeSet::new();
            for entry in archive.entries().map_err(bad)? {
                let mut entry = entry.map_err(bad)?;
                count += 1;
                if count > MAX_TAR_ENTRIES {
                    return Err(Error::integrity(format!(
                        "{label}: holds more than {MAX_TAR_ENTRIES} entries: refused. Nothing was stored"
                    )));
                }
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
                let path = raw.trim_start_matches("./");
                if !wanted.contains(path) {
                    continue;
                }
                if !seen.insert(path.to_string()) {
                    return Err(Error::integrity(format!(
                        "{label}: member {} appears twice: refused. Nothing was stored",
                        clip(path)
                    )));
                }
                if entry.size() > self.limits().artifact {
                    return Err(self
                        .limits()
                        .too_large(&format!("{label}: member {}", clip(path))));
                }
                take(path, &mut entry)?;
            }
        }
        // The tar reader stops at the end-of-archive blocks; read the rest of the gzip stream.
        io::copy(&mut gz, &mut io::sink()).map_err(bad)?;
        Ok(())
    }
}
