//! Reading the cache's indexes without trusting them.
//!
//! An index says which blob each member of a verified artifact is. Whoever can
//! write the cache can rewrite it, so an index is checked each time it is read:
//! it must parse, name the pin its file name and the recipe give, list member
//! paths that are relative paths and digests that are 64 lowercase hex digits,
//! and its blobs and the kept original must be there. A build also binds it to
//! the pinned artifact: unless this user's ledger records these exact index
//! bytes as verified, the members are derived again from the kept original
//! (hashed against the recipe's pin first) and must be the ones the index
//! names. The blobs' bytes are checked against the index as a build reads them
//! (`plan::Entry::open`).

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::Path;

use super::cache::{ArtifactIndex, BlobRef, Cache, Candidate, Hasher, index_key, is_hex};
use super::ingest::tar_error;
use crate::error::{Error, IoContext, Kind, Result, clip};
use crate::input::recipe::{Algorithm, Artifact, ArtifactKind, Recipe};
use crate::util::digest::{HashingWriter, sha256_hex};

/// Largest index file read (an index lists a few members).
const INDEX_LIMIT: u64 = 1 << 20;

/// Why an index cannot be what it claims, or None.
pub fn check_index(index: &ArtifactIndex, algorithm: Algorithm, hex: &str) -> Option<String> {
    let pin = format!("{}:{hex}", algorithm.name());
    if index.pin != pin {
        return Some(format!(
            "it records the pin {:?}, but it is the index of {pin}",
            clip(&index.pin)
        ));
    }
    if index.members.is_empty() {
        return Some("it lists no member".into());
    }
    for (path, blob) in &index.members {
        if !is_member_path(path) {
            return Some(format!(
                "member path {:?} is not a relative path inside the artifact",
                clip(path)
            ));
        }
        if !is_hex(&blob.sha256, 64) {
            return Some(format!(
                "member {}: digest {:?} is not 64 lowercase hex digits",
                clip(path),
                clip(&blob.sha256)
            ));
        }
    }
    None
}

/// A relative `/`-separated path without empty, `.` or `..` parts.
pub fn is_member_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.contains('\0')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Members derived from an artifact differ from what its index says.
pub(super) fn differs(
    index: &ArtifactIndex,
    derived: &BTreeMap<String, BlobRef>,
) -> Option<String> {
    for (path, blob) in &index.members {
        match derived.get(path) {
            Some(d) if d == blob => {}
            Some(d) => {
                return Some(format!(
                    "member {} is sha256:{} ({} bytes) in the pinned artifact, but the index says sha256:{} ({} bytes)",
                    clip(path),
                    d.sha256,
                    d.size,
                    blob.sha256,
                    blob.size
                ));
            }
            None => {
                return Some(format!(
                    "member {} is not in the pinned artifact",
                    clip(path)
                ));
            }
        }
    }
    None
}

impl Cache {
    /// The error for an index that is not what it claims.
    pub(super) fn altered(&self, path: &Path, why: &str) -> Error {
        Error::integrity(format!(
            "cache index {} was altered or is damaged: {why}. Run `imgbuild cache verify` \
             (it removes what does not hold), then fetch or import the artifact again",
            path.display()
        ))
    }

    /// The index of `algorithm:hex` and its bytes, checked (see the module
    /// docs); None when it, the kept original or a blob is missing.
    pub(super) fn read_index(
        &self,
        algorithm: Algorithm,
        hex: &str,
    ) -> Result<Option<(ArtifactIndex, Vec<u8>)>> {
        let path = self.index_path(algorithm, hex);
        let mut bytes = Vec::new();
        match File::open(&path) {
            Ok(f) => f
                .take(INDEX_LIMIT + 1)
                .read_to_end(&mut bytes)
                .with_path("cannot read", &path)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", &path, e)),
        };
        if bytes.len() as u64 > INDEX_LIMIT {
            return Err(self.altered(&path, "it is larger than 1 MiB"));
        }
        let index: ArtifactIndex = serde_json::from_slice(&bytes)
            .map_err(|e| self.altered(&path, &format!("not an index ({e})")))?;
        if let Some(why) = check_index(&index, algorithm, hex) {
            return Err(self.altered(&path, &why));
        }
        let present =
            |p: &Path, size: u64| fs::metadata(p).is_ok_and(|m| m.is_file() && m.len() == size);
        if !present(&self.artifact_path(algorithm, hex), index.size)
            || !index
                .members
                .values()
                .all(|b| present(&self.blob_path(&b.sha256), b.size))
        {
            return Ok(None);
        }
        Ok(Some((index, bytes)))
    }

    /// The index of `artifact` (of `recipe`, for `arch`) for a build: checked
    /// as [`Cache::lookup`] does, holding every member the recipe names (else
    /// taken again from the kept original), and bound to the pinned artifact
    /// (see the module docs). None when it is not in the cache.
    pub fn verified_index(
        &self,
        recipe: &Recipe,
        artifact: &Artifact,
        arch: &str,
    ) -> Result<Option<ArtifactIndex>> {
        let alg = artifact.algorithm;
        let hex = artifact.digest_for(&recipe.name, arch)?;
        let Some((index, bytes)) = self.read_index(alg, hex)? else {
            return Ok(None);
        };
        let lacks = artifact
            .members
            .iter()
            .any(|m| !index.members.contains_key(&m.path_for(arch)));
        if lacks {
            // Another recipe pinning the same artifact took other members:
            // take this recipe's from the kept original (verified again).
            let original = self.artifact_path(alg, hex);
            let file = File::open(&original).with_path("cannot read", &original)?;
            let candidate = Candidate {
                recipe,
                artifact,
                arch,
            };
            let label = original.display().to_string();
            return self
                .ingest(
                    BufReader::with_capacity(1 << 20, file),
                    &label,
                    &[candidate],
                )
                .map(Some);
        }
        let key = index_key(alg, hex);
        if self.ledger.get(&key).as_deref() == Some(sha256_hex(&bytes).as_str()) {
            return Ok(Some(index));
        }
        let path = self.index_path(alg, hex);
        let derived = self.derive_members(alg, hex, artifact.kind, &index)?;
        if let Some(why) = differs(&index, &derived) {
            return Err(self.altered(&path, &why));
        }
        self.ledger.put(&key, &sha256_hex(&bytes));
        Ok(Some(index))
    }

    /// The members `index` names, as the kept original of `algorithm:hex`
    /// holds them, after hashing that original against the pin.
    pub(super) fn derive_members(
        &self,
        algorithm: Algorithm,
        hex: &str,
        kind: ArtifactKind,
        index: &ArtifactIndex,
    ) -> Result<BTreeMap<String, BlobRef>> {
        let path = self.artifact_path(algorithm, hex);
        let label = path.display().to_string();
        let mut file = File::open(&path).with_path("cannot read", &path)?;
        let mut pinned = Hasher::new(algorithm);
        let mut sha256 = Hasher::new(Algorithm::Sha256);
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf).with_path("cannot read", &path)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            if size > self.limits().artifact {
                return Err(self.limits().too_large(&label));
            }
            pinned.update(&buf[..n]);
            if kind == ArtifactKind::File {
                sha256.update(&buf[..n]);
            }
        }
        let actual = pinned.finish_hex();
        if actual != hex {
            return Err(Error::integrity(format!(
                "{label}: the cache's copy of the pinned artifact hashes to {}:{actual}; \
                 run `imgbuild cache verify`, then fetch or import it again",
                algorithm.name()
            )));
        }
        let mut out = BTreeMap::new();
        match kind {
            ArtifactKind::File => {
                for path in index.members.keys().take(1) {
                    let sha256 = sha256.clone().finish_hex();
                    out.insert(path.clone(), BlobRef { sha256, size });
                }
            }
            ArtifactKind::Tarball => {
                let wanted = index.members.keys().map(String::as_str).collect();
                let file = File::open(&path).with_path("cannot read", &path)?;
                self.walk_tarball(file, size, &label, &wanted, |member, entry| {
                    let mut w = HashingWriter::new(io::sink());
                    io::copy(entry, &mut w).map_err(|e| tar_error(&label, Kind::Integrity, e))?;
                    let (_, sha256, size) = w.finish();
                    out.insert(member.to_string(), BlobRef { sha256, size });
                    Ok(())
                })?;
            }
        }
        Ok(out)
    }
}

/// The kind of an index that does not record it: a single file is its own
/// only member, of the artifact's size.
pub fn kind_of(index: &ArtifactIndex) -> ArtifactKind {
    index.kind.unwrap_or_else(|| {
        let single =
            index.members.len() == 1 && index.members.values().all(|b| b.size == index.size);
        if single {
            ArtifactKind::File
        } else {
            ArtifactKind::Tarball
        }
    })
}
