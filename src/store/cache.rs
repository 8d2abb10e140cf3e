//! The local artifact cache: content-addressed, verified on the way in and on
//! the way out, safe for concurrent imgbuild processes. This file holds the
//! artifacts themselves: opening the cache, looking artifacts up, and bringing
//! them in (`ingest`, `cache import`). Checking and cleaning the cache is in
//! `maintenance`, the derived segments in `segments`, the locks in `locks`.
//!
//! Layout under the cache root:
//! - `artifacts/<algorithm>/<hex>`: a pinned artifact as published (tarball or binary);
//! - `blobs/sha256/<hex>`: a member taken from a verified artifact (what builds read);
//! - `index/<algorithm>-<hex>.json`: which members a verified artifact holds.
//!   Written last: its presence means the artifact and its members are in place;
//! - `segments/<key>` and `<key>.json`: derived, node-independent parts of outputs;
//! - `tmp/`: files being written; renamed into place only once verified;
//! - `locks/`: recipe locks (`imgbuild lock`, `imgbuild airgap import`), searched
//!   as a recipe folder after `--recipes` and before the built-in recipes;
//! - `inflight/`: one lock file per artifact being downloaded, so that two
//!   processes fetching the same artifact download it once (removed after).
//!
//! The cache folder itself is locked (flock) shared while a file enters the
//! cache, and exclusively by `cache verify` and `cache gc` (which delete), so
//! they never see half an ingest.
//!
//! A file enters the cache only by a rename from `tmp/` after its digest matched:
//! readers never see a torn file, and two processes writing the same name write
//! the same bytes (the name is the digest).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use tempfile::NamedTempFile;

use super::ingest::{Limits, write_hashed};
use super::ledger::Ledger;
use crate::error::{Error, IoContext, Result};
use crate::input::recipe::Trust;
use crate::input::recipe::{Algorithm, Artifact, ArtifactKind, Recipe};
use crate::progress::{Event, Progress};
use crate::util::digest::sha256_hex;
use crate::util::stamp::Stamp;

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
    limits: Limits,
    /// What this user verified here, kept outside the cache (see `ledger`).
    pub(super) ledger: Ledger,
}

/// What a verified artifact holds, as recorded in `index/`. Nothing in it is
/// trusted as read: see `index.rs` for what is checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactIndex {
    pub artifact: String,
    pub file: String,
    /// `algorithm:hex` of the artifact.
    pub pin: String,
    pub trust: Trust,
    pub size: u64,
    /// Tarball or single file (absent in indexes written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ArtifactKind>,
    /// Member path → its blob.
    pub members: BTreeMap<String, BlobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobRef {
    pub sha256: String,
    pub size: u64,
}

/// A running digest of either algorithm.
#[derive(Clone)]
pub enum Hasher {
    Sha256(Sha256),
    Sha512(Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }
    pub fn finish_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

impl Cache {
    /// Open (creating if needed) the cache at `root`.
    pub fn open(root: &Path) -> Result<Cache> {
        for sub in [
            "artifacts/sha256",
            "artifacts/sha512",
            "blobs/sha256",
            "index",
            "segments",
            "tmp",
            "locks",
            "inflight",
        ] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir).with_path("cannot create cache folder", &dir)?;
        }
        Ok(Cache {
            root: root.to_path_buf(),
            limits: Limits::from_env()?,
            ledger: Ledger::for_cache(root),
        })
    }

    /// The caps on what enters the cache.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// `$XDG_CACHE_HOME/imgbuild`, else `~/.cache/imgbuild`.
    pub fn default_root() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("imgbuild");
        }
        if let Some(home) = std::env::var_os("HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(home).join(".cache/imgbuild");
        }
        PathBuf::from(".imgbuild-cache")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, sha256: &str) -> PathBuf {
        self.root.join("blobs/sha256").join(sha256)
    }

    pub fn artifact_path(&self, algorithm: Algorithm, hex: &str) -> PathBuf {
        self.root.join("artifacts").join(algorithm.name()).join(hex)
    }

    pub(super) fn index_path(&self, algorithm: Algorithm, hex: &str) -> PathBuf {
        self.root
            .join("index")
            .join(format!("{}-{hex}.json", algorithm.name()))
    }

    /// Where files being written live (same filesystem as the stores).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new temp file inside the cache (same filesystem, so renames are
    /// atomic). Its name carries this process's id, and every such name is
    /// registered as live (`util::atomic`): an interrupted build removes its
    /// own temp files, never another process's.
    pub fn temp_file(&self) -> Result<NamedTempFile> {
        let dir = self.root.join("tmp");
        let prefix = format!(".part-{}-", std::process::id());
        crate::util::atomic::track_prefix(&dir, &prefix);
        tempfile::Builder::new()
            .prefix(&prefix)
            .tempfile_in(&dir)
            .with_path("cannot create a temporary file in", &dir)
    }

    /// The index of a verified artifact, if it, the kept original and all its
    /// members are present. The index is checked as it is read (well-formed,
    /// its pin `algorithm:hex`, digests that are digests): an index that fails
    /// is an error naming what is wrong, not a miss.
    pub fn lookup(&self, algorithm: Algorithm, hex: &str) -> Result<Option<ArtifactIndex>> {
        Ok(self.read_index(algorithm, hex)?.map(|(index, _)| index))
    }

    /// Each of `artifacts` (of `recipe`) for `arch` with its verified index,
    /// or an error (exit 3) that names every one missing and says how to
    /// bring each.
    pub fn resolve<'r>(
        &self,
        recipe: &'r Recipe,
        artifacts: &[&'r Artifact],
        arch: &str,
    ) -> Result<Vec<(&'r Artifact, ArtifactIndex)>> {
        let mut out = Vec::new();
        let mut missing = Vec::new();
        for a in artifacts {
            match self.verified_index(recipe, a, arch)? {
                Some(index) => out.push((*a, index)),
                None => missing.push(*a),
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let mut what = Vec::new();
        let mut urls = Vec::new();
        for a in &missing {
            what.push(format!(
                "artifact {} ({})",
                a.file_for(arch),
                a.pin_for(&recipe.name, arch)?
            ));
            urls.push(a.upstream_url(arch));
        }
        let files: Vec<String> = missing.iter().map(|a| a.file_for(arch)).collect();
        Err(Error::missing(format!(
            "{} of recipe {} {} not in the cache {}.\n\
             On a connected machine: `imgbuild fetch` (or `--mirror URL` for an internal mirror: see docs/fetch.md for its layout).\n\
             Offline: download {} elsewhere and run `imgbuild cache import {}`, \
             or carry a bundle made by `imgbuild airgap export` and run `imgbuild airgap import BUNDLE`",
            what.join(" and "),
            recipe.name,
            if missing.len() == 1 { "is" } else { "are" },
            self.root.display(),
            urls.join(" and "),
            files.join(" "),
        )))
    }

    /// Every index in the cache.
    pub fn list(&self) -> Result<Vec<ArtifactIndex>> {
        let dir = self.root.join("index");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).with_path("cannot list", &dir)? {
            let path = ent.with_path("cannot list", &dir)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let pin = path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .and_then(|s| s.split_once('-'))
                    .and_then(|(alg, hex)| {
                        parse_pin(&format!("{alg}:{hex}")).map(|(a, _)| (a, hex.to_string()))
                    });
                if let Some((alg, hex)) = pin
                    && let Ok(Some((idx, _))) = self.read_index(alg, &hex)
                {
                    out.push(idx);
                }
            }
        }
        out.sort_by(|a: &ArtifactIndex, b| (&a.file, &a.pin).cmp(&(&b.file, &b.pin)));
        Ok(out)
    }

    /// Record a verified artifact; written last, so its presence means complete.
    pub(super) fn write_index(
        &self,
        artifact: &Artifact,
        arch: &str,
        expected: &str,
        size: u64,
        members: BTreeMap<String, BlobRef>,
    ) -> Result<ArtifactIndex> {
        let index = ArtifactIndex {
            artifact: artifact.name.clone(),
            file: artifact.file_for(arch),
            pin: format!("{}:{expected}", artifact.algorithm.name()),
            trust: artifact.trust,
            size,
            kind: Some(artifact.kind),
            members,
        };
        let mut tmp = self.temp_file()?;
        let json = serde_json::to_vec_pretty(&index).expect("index serializes");
        tmp.write_all(&json).with_path("cannot write", tmp.path())?;
        self.persist(tmp, &self.index_path(artifact.algorithm, expected))?;
        // The members were just taken from the verified artifact.
        self.ledger
            .put(&index_key(artifact.algorithm, expected), &sha256_hex(&json));
        Ok(index)
    }

    /// Make the verified artifact at `src` also the blob `sha256` (a hard link:
    /// same bytes, no copy; a copy where links are not possible).
    pub(super) fn link_blob(&self, src: &Path, sha256: &str) -> Result<()> {
        let dest = self.blob_path(sha256);
        if dest.exists() {
            return Ok(()); // same name, same bytes
        }
        match fs::hard_link(src, &dest) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
            Err(_) => {
                let file = File::open(src).with_path("cannot read", src)?;
                let (tmp, _, _) = write_hashed(self.temp_file()?, file)
                    .with_path("cannot copy into the cache from", src)?;
                self.persist(tmp, &dest)?;
            }
        }
        self.record_blob(sha256, None);
        Ok(())
    }

    /// Record, in this user's ledger, the stamp of blob `sha256`, whose bytes
    /// this user just verified (`before`: its stamp before they were read, to
    /// be sure they are still those). Builds then read it without hashing it
    /// again while it stays as it was (`verified_blob`). Only for a file
    /// nobody else may write: any other is hashed as it is read, every time.
    pub(super) fn record_blob(&self, sha256: &str, before: Option<&Stamp>) {
        let path = self.blob_path(sha256);
        let Ok(Some(stamp)) = Stamp::of(&path) else {
            return;
        };
        if stamp.only_mine() && before.is_none_or(|b| stamp.still(b)) {
            let json = serde_json::to_string(&stamp).expect("serializes");
            self.ledger.put(&blob_key(sha256), &json);
        }
    }

    /// The stamp blob `sha256` had when this user last verified its bytes.
    pub fn verified_blob(&self, sha256: &str) -> Option<Stamp> {
        serde_json::from_str(&self.ledger.get(&blob_key(sha256))?).ok()
    }

    /// Folder of recipe locks, searched as a recipe folder.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Move a verified temp file into place, read-only. An existing file of the same
    /// name has the same content (the name is its digest), so a race is harmless.
    pub(super) fn persist(&self, tmp: NamedTempFile, dest: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        tmp.as_file()
            .sync_all()
            .with_path("cannot sync", tmp.path())?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o444))
            .with_path("cannot set permissions on", tmp.path())?;
        tmp.persist(dest)
            .map_err(|e| Error::io("cannot move into the cache:", dest, e.error))?;
        Ok(())
    }

    /// `imgbuild cache import FILE...`: the file must match a pin of one of `recipes`
    /// (found by file name, decided by digest).
    pub fn import(
        &self,
        path: &Path,
        recipes: &[Recipe],
        progress: &dyn Progress,
    ) -> Result<ArtifactIndex> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let candidates: Vec<Candidate<'_>> = recipes
            .iter()
            .flat_map(|recipe| {
                recipe.artifacts.iter().flat_map(move |artifact| {
                    artifact.digests.keys().map(move |arch| Candidate {
                        recipe,
                        artifact,
                        arch,
                    })
                })
            })
            .filter(|c| c.artifact.file_for(c.arch) == name)
            .collect();
        if candidates.is_empty() {
            let known: BTreeSet<String> = recipes
                .iter()
                .flat_map(|r| {
                    r.artifacts
                        .iter()
                        .flat_map(|a| a.digests.keys().map(|arch| a.file_for(arch)))
                })
                .collect();
            return Err(Error::input(format!(
                "{}: no recipe pins a file of this name; importable files are: {}",
                path.display(),
                known.into_iter().collect::<Vec<_>>().join(", ")
            )));
        }
        // Looked at before it is opened: opening a FIFO would wait for a writer.
        let meta = fs::metadata(path).with_path("cannot read", path)?;
        if !meta.is_file() {
            return Err(Error::input(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        if meta.len() > self.limits.artifact {
            return Err(self.limits.too_large(&path.display().to_string()));
        }
        let file = File::open(path).with_path("cannot read", path)?;
        let index = self.ingest(
            io::BufReader::with_capacity(1 << 20, file),
            &path.display().to_string(),
            &candidates,
        )?;
        progress.event(Event::Cached {
            name: &index.file,
            digest: &index.pin,
        });
        Ok(index)
    }
}

/// An artifact a file may be: its recipe, and the arch whose pin it should match.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub recipe: &'a Recipe,
    pub artifact: &'a Artifact,
    pub arch: &'a str,
}

/// Hash a file with `algorithm`, streaming.
pub fn hash_file(path: &Path, algorithm: Algorithm) -> io::Result<(String, u64)> {
    let mut file = File::open(path)?;
    let mut h = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    Ok((h.finish_hex(), size))
}

/// `sha256:<hex>` → (algorithm, hex).
pub fn parse_pin(pin: &str) -> Option<(Algorithm, &str)> {
    let (alg, hex) = pin.split_once(':')?;
    let alg = match alg {
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        _ => return None,
    };
    is_hex(hex, alg.hex_len()).then_some((alg, hex))
}

/// `len` lowercase hex digits.
pub fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The ledger's name for the stamp of blob `sha256`.
fn blob_key(sha256: &str) -> String {
    format!("blob-{sha256}")
}

/// The ledger's name for the index of `algorithm:hex`.
pub(super) fn index_key(algorithm: Algorithm, hex: &str) -> String {
    format!("index-{}-{hex}", algorithm.name())
}
