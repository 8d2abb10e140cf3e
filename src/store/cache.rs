//! The local artifact cache: content-addressed, verified on the way in and on
//! the way out, safe for concurrent imgbuild processes.
//!
//! Layout under the cache root:
//! - `artifacts/<algorithm>/<hex>`: a pinned artifact as published (tarball or binary);
//! - `blobs/sha256/<hex>`: a member taken from a verified artifact (what builds read);
//! - `index/<algorithm>-<hex>.json`: which members a verified artifact holds.
//!   Written last: its presence means the artifact and its members are in place;
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
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};
use crate::input::recipe::Trust;
use crate::input::recipe::{Algorithm, Artifact, ArtifactKind, Recipe};
use crate::progress::{Event, Progress};
use crate::util::stamp::Stamp;

#[derive(Debug, Clone)]
pub struct Cache {
    root: PathBuf,
}

/// What a verified artifact holds, as recorded in `index/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactIndex {
    pub artifact: String,
    pub file: String,
    /// `algorithm:hex` of the artifact.
    pub pin: String,
    pub trust: Trust,
    pub size: u64,
    /// Member path → its blob.
    pub members: BTreeMap<String, BlobRef>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

/// Passes bytes through while hashing them and keeping a copy.
struct Tee<R, W> {
    inner: R,
    copy: W,
    hashers: Vec<(Algorithm, Hasher)>,
    bytes: u64,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        for (_, h) in &mut self.hashers {
            h.update(&buf[..n]);
        }
        self.copy.write_all(&buf[..n])?;
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Writes a stream to a temp file, hashing it (sha256) on the way.
fn write_hashed(
    tmp: NamedTempFile,
    mut src: impl Read,
) -> io::Result<(NamedTempFile, String, u64)> {
    let mut out = BufWriter::with_capacity(1 << 20, tmp);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        out.write_all(&buf[..n])?;
        size += n as u64;
    }
    let tmp = out.into_inner().map_err(|e| e.into_error())?;
    Ok((tmp, hex::encode(h.finalize()), size))
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
        })
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

    fn index_path(&self, algorithm: Algorithm, hex: &str) -> PathBuf {
        self.root
            .join("index")
            .join(format!("{}-{hex}.json", algorithm.name()))
    }

    /// A new temp file inside the cache (same filesystem, so renames are atomic).
    /// Where files being written live (same filesystem as the stores).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn temp_file(&self) -> Result<NamedTempFile> {
        let dir = self.root.join("tmp");
        tempfile::Builder::new()
            .prefix(".part-")
            .tempfile_in(&dir)
            .with_path("cannot create a temporary file in", &dir)
    }

    /// The index of a verified artifact, if it and all its members are present.
    pub fn lookup(&self, algorithm: Algorithm, hex: &str) -> Result<Option<ArtifactIndex>> {
        let path = self.index_path(algorithm, hex);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io("cannot read", &path, e)),
        };
        let index: ArtifactIndex = serde_json::from_str(&text).map_err(|e| {
            Error::integrity(format!(
                "cache index {} is damaged ({e}); run `imgbuild cache verify`",
                path.display()
            ))
        })?;
        for blob in index.members.values() {
            match fs::metadata(self.blob_path(&blob.sha256)) {
                Ok(m) if m.len() == blob.size => {}
                _ => return Ok(None),
            }
        }
        Ok(Some(index))
    }

    /// Every artifact of `recipe` for `arch` with its verified index, or an
    /// error (exit 3) that says how to bring what is missing.
    pub fn resolve<'r>(
        &self,
        recipe: &'r Recipe,
        arch: &str,
    ) -> Result<Vec<(&'r Artifact, ArtifactIndex)>> {
        let mut out = Vec::new();
        for a in &recipe.artifacts {
            let hex = a.digest_for(&recipe.name, arch)?;
            let Some(index) = self.lookup(a.algorithm, hex)? else {
                return Err(Error::missing(format!(
                    "artifact {} ({}) of recipe {} is not in the cache {}.\n\
                     On a connected machine: `imgbuild fetch` (or `--mirror URL` for an internal mirror laid out like https://dl.k8s.io).\n\
                     Offline: download https://dl.k8s.io/{} elsewhere and run `imgbuild cache import {}`, \
                     or carry a bundle made by `imgbuild airgap export` and run `imgbuild airgap import BUNDLE`",
                    a.file_for(arch),
                    a.pin_for(&recipe.name, arch)?,
                    recipe.name,
                    self.root.display(),
                    a.url_path_for(arch),
                    a.file_for(arch),
                )));
            };
            out.push((a, index));
        }
        Ok(out)
    }

    /// Every index in the cache.
    pub fn list(&self) -> Result<Vec<ArtifactIndex>> {
        let dir = self.root.join("index");
        let mut out = Vec::new();
        for ent in fs::read_dir(&dir).with_path("cannot list", &dir)? {
            let path = ent.with_path("cannot list", &dir)?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = fs::read_to_string(&path).with_path("cannot read", &path)?;
                if let Ok(idx) = serde_json::from_str(&text) {
                    out.push(idx);
                }
            }
        }
        out.sort_by(|a: &ArtifactIndex, b| (&a.file, &a.pin).cmp(&(&b.file, &b.pin)));
        Ok(out)
    }

    /// Verify `src` against the pin of one of `candidates` (artifacts sharing a file
    /// name, e.g. the same tarball name pinned by several versions) while taking
    /// its members, in one pass. Nothing enters the cache unless a digest matches.
    pub fn ingest(
        &self,
        src: impl Read,
        label: &str,
        candidates: &[Candidate<'_>],
    ) -> Result<ArtifactIndex> {
        let first = candidates.first().expect("ingest needs a candidate");
        let kind = first.artifact.kind;
        let _shared = self.lock(false)?;
        let original = self.temp_file()?;
        let original_path = original.path().to_path_buf();
        let mut tee = Tee {
            inner: src,
            copy: BufWriter::with_capacity(1 << 20, original),
            hashers: Vec::new(),
            bytes: 0,
        };
        let mut algorithms: Vec<Algorithm> =
            candidates.iter().map(|c| c.artifact.algorithm).collect();
        if kind == ArtifactKind::File {
            // A single file is its own member, and members are named by sha256.
            algorithms.push(Algorithm::Sha256);
        }
        for alg in algorithms {
            if !tee.hashers.iter().any(|(a, _)| *a == alg) {
                tee.hashers.push((alg, Hasher::new(alg)));
            }
        }
        let wanted: BTreeSet<&str> = candidates
            .iter()
            .filter(|c| c.artifact.kind == ArtifactKind::Tarball)
            .flat_map(|c| c.artifact.members.iter().map(|m| m.path.as_str()))
            .collect();
        let mut taken: BTreeMap<String, (NamedTempFile, String, u64)> = BTreeMap::new();
        let extracted: io::Result<()> = match kind {
            ArtifactKind::Tarball => self.take_members(&mut tee, &wanted, &mut taken),
            // The file is its own member: the copy the tee keeps becomes the blob.
            ArtifactKind::File => Ok(()),
        };
        // Hash to the end whatever happened, so a wrong file is reported as one.
        let drained = io::copy(&mut tee, &mut io::sink());
        let Tee {
            copy,
            hashers,
            bytes,
            ..
        } = tee;
        drained.with_path("cannot read", Path::new(label))?;
        let actual: Vec<(Algorithm, String)> = hashers
            .into_iter()
            .map(|(a, h)| (a, h.finish_hex()))
            .collect();
        let digest_of = |alg: Algorithm| &actual.iter().find(|(a, _)| *a == alg).expect("hashed").1;
        let Some(matched) = candidates.iter().find(|c| {
            c.artifact
                .digests
                .get(c.arch)
                .is_some_and(|pin| pin == digest_of(c.artifact.algorithm))
        }) else {
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
            let got: Vec<String> = actual
                .iter()
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
        let (recipe, artifact, arch) = (matched.recipe, matched.artifact, matched.arch);
        let expected = artifact.digests[arch].clone();
        if let Err(e) = extracted {
            return Err(Error::integrity(format!(
                "{label}: digest matches but reading it as a tarball failed: {e}"
            )));
        }
        let original = copy
            .into_inner()
            .map_err(|e| Error::io("cannot write", &original_path, e.into_error()))?;
        if kind == ArtifactKind::File {
            // One pass: the original already is the member, and its sha256 was
            // computed on the way in. It becomes the blob by a hard link below.
            let dest = self.artifact_path(artifact.algorithm, &expected);
            self.persist(original, &dest)?;
            let sha256 = digest_of(Algorithm::Sha256).clone();
            self.link_blob(&dest, &sha256)?;
            let member = &artifact.members[0];
            let members = BTreeMap::from([(
                member.path.clone(),
                BlobRef {
                    sha256,
                    size: bytes,
                },
            )]);
            return self.write_index(artifact, arch, &expected, bytes, members);
        }
        let missing: Vec<_> = artifact
            .members
            .iter()
            .filter(|m| !taken.contains_key(&m.path))
            .map(|m| m.path.as_str())
            .collect();
        if !missing.is_empty() {
            return Err(Error::integrity(format!(
                "{label}: matches its pin but lacks member(s) {}: recipe {} names the wrong paths",
                missing.join(", "),
                recipe.name
            )));
        }
        let mut members = BTreeMap::new();
        for m in &artifact.members {
            let (tmp, sha256, size) = taken.remove(&m.path).expect("checked above");
            self.persist(tmp, &self.blob_path(&sha256))?;
            members.insert(m.path.clone(), BlobRef { sha256, size });
        }
        self.persist(original, &self.artifact_path(artifact.algorithm, &expected))?;
        self.write_index(artifact, arch, &expected, bytes, members)
    }

    /// Record a verified artifact; written last, so its presence means complete.
    fn write_index(
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
            members,
        };
        let mut tmp = self.temp_file()?;
        let json = serde_json::to_vec_pretty(&index).expect("index serializes");
        tmp.write_all(&json).with_path("cannot write", tmp.path())?;
        self.persist(tmp, &self.index_path(artifact.algorithm, expected))?;
        Ok(index)
    }

    /// Make the verified artifact at `src` also the blob `sha256` (a hard link:
    /// same bytes, no copy; a copy where links are not possible).
    fn link_blob(&self, src: &Path, sha256: &str) -> Result<()> {
        let dest = self.blob_path(sha256);
        if dest.exists() {
            return Ok(()); // same name, same bytes
        }
        match fs::hard_link(src, &dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(_) => {
                let file = File::open(src).with_path("cannot read", src)?;
                let (tmp, _, _) = write_hashed(self.temp_file()?, file)
                    .with_path("cannot copy into the cache from", src)?;
                self.persist(tmp, &dest)
            }
        }
    }

    /// Take the cache-wide lock (a lock on the cache folder itself, so no file
    /// is left behind): shared while files enter the cache, exclusive for
    /// `verify` and `gc`. Released when the returned handle is dropped.
    pub fn lock(&self, exclusive: bool) -> Result<File> {
        let file = File::open(&self.root).with_path("cannot open", &self.root)?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .with_path("cannot lock", &self.root)?;
        Ok(file)
    }

    /// Take the per-artifact download lock, waiting for another process that
    /// holds it (it is downloading the same artifact). `waiting` is called once
    /// if we have to wait. The lock file is removed when the guard drops.
    pub fn inflight_lock(
        &self,
        algorithm: Algorithm,
        hex: &str,
        waiting: impl FnOnce(),
    ) -> Result<InflightLock> {
        use std::os::unix::fs::MetadataExt;
        let path = self
            .root
            .join("inflight")
            .join(format!("{}-{hex}", algorithm.name()));
        let mut waiting = Some(waiting);
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_path("cannot open", &path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    if let Some(w) = waiting.take() {
                        w();
                    }
                    file.lock().with_path("cannot lock", &path)?;
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", &path, e));
                }
            }
            // The holder before us removes the file before unlocking: if the
            // name no longer leads to the file we locked, lock the new one.
            let ours = file.metadata().with_path("cannot stat", &path)?.ino();
            if fs::metadata(&path).is_ok_and(|m| m.ino() == ours) {
                return Ok(InflightLock { path, _file: file });
            }
        }
    }

    /// Folder of recipe locks, searched as a recipe folder.
    pub fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    fn take_members<R: Read>(
        &self,
        src: &mut R,
        wanted: &BTreeSet<&str>,
        taken: &mut BTreeMap<String, (NamedTempFile, String, u64)>,
    ) -> io::Result<()> {
        let mut gz = flate2::read::GzDecoder::new(src);
        {
            let mut archive = tar::Archive::new(&mut gz);
            for entry in archive.entries()? {
                let entry = entry?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let path = entry.path()?.to_string_lossy().into_owned();
                let path = path.trim_start_matches("./");
                if wanted.contains(path) && !taken.contains_key(path) {
                    let path = path.to_string();
                    let tmp = self
                        .temp_file()
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    taken.insert(path, write_hashed(tmp, entry)?);
                }
            }
        }
        // The tar reader stops at the end-of-archive blocks; read the rest of the gzip stream.
        io::copy(&mut gz, &mut io::sink())?;
        Ok(())
    }

    /// Move a verified temp file into place, read-only. An existing file of the same
    /// name has the same content (the name is its digest), so a race is harmless.
    fn persist(&self, tmp: NamedTempFile, dest: &Path) -> Result<()> {
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

/// Held while one process downloads one artifact; see [`Cache::inflight_lock`].
pub struct InflightLock {
    path: PathBuf,
    _file: File,
}

impl Drop for InflightLock {
    fn drop(&mut self) {
        // Removed while still locked, so a waiter notices and starts afresh.
        let _ = fs::remove_file(&self.path);
    }
}

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
        path.strip_prefix(&self.root)
            .unwrap_or(path)
            .display()
            .to_string()
    }

    fn files_in(&self, sub: &str) -> Result<Vec<PathBuf>> {
        let dir = self.root.join(sub);
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
                match hash_file(&path, alg) {
                    Ok((hex, size)) if hex == name => {
                        report.checked += 1;
                        report.bytes += size;
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
        for path in self.files_in("index")? {
            let rel = self.rel(&path);
            let index: Option<ArtifactIndex> = fs::read_to_string(&path)
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let Some(index) = index else {
                self.remove(&path)?;
                report.dropped.push(format!("{rel}: unreadable index"));
                continue;
            };
            let complete = self.index_files(&index).is_some_and(|files| {
                files.iter().all(|(p, size)| {
                    fs::metadata(p).is_ok_and(|m| size.is_none_or(|s| m.len() == s))
                })
            });
            if !complete {
                self.remove(&path)?;
                report.dropped.push(format!(
                    "{rel}: {} ({}) lost a file; fetch or import it again",
                    index.file, index.pin
                ));
            }
        }
        Ok(report)
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
}

/// `sha256:<hex>` → (algorithm, hex).
pub fn parse_pin(pin: &str) -> Option<(Algorithm, &str)> {
    let (alg, hex) = pin.split_once(':')?;
    let alg = match alg {
        "sha256" => Algorithm::Sha256,
        "sha512" => Algorithm::Sha512,
        _ => return None,
    };
    (hex.len() == alg.hex_len() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some((alg, hex))
}

/// A derived, node-independent part of an output (e.g. the binaries of a
/// tar.gz, compressed), kept so that later builds compress nothing large.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Segment {
    pub sha256: String,
    pub size: u64,
    /// The hash state after the segment's bytes: outputs that begin with the
    /// segment resume from it instead of hashing the segment again.
    pub state: crate::util::digest::Sha256State,
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
        self.root.join("segments").join(key)
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
        let path = self.segment_path(key);
        let Some(stamp) = Stamp::of(&path).with_path("cannot stat", &path)? else {
            self.drop_segment(key);
            return Ok(None);
        };
        if seg.stamp.as_ref() == Some(&stamp) {
            return Ok(Some((path, seg)));
        }
        match hash_file(&path, Algorithm::Sha256) {
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
    /// anything was written. The copy is made in the kernel (copy_file_range).
    pub fn place_segment(
        &self,
        key: &str,
        seg: &mut Segment,
        seg_path: &Path,
        dest: &Path,
        mode: u32,
    ) -> Result<bool> {
        let abs = std::path::absolute(dest).with_path("cannot resolve", dest)?;
        let current = Stamp::of(&abs).with_path("cannot stat", &abs)?;
        // The stamp holds the mode too: a copy whose mode changed is not kept.
        let still = |p: &Placed| p.path == abs && Some(&p.stamp) == current.as_ref();
        if seg.placed.iter().any(still) {
            return Ok(false);
        }
        let mut file = crate::util::atomic::AtomicFile::create(dest, mode)?;
        copy_segment(
            seg_path,
            seg,
            file.file_mut().with_path("cannot write", dest)?,
        )?;
        file.commit()?;
        if let Some(stamp) = Stamp::of(&abs).with_path("cannot stat", &abs)? {
            seg.placed.retain(|p| p.path != abs);
            seg.placed.insert(0, Placed { path: abs, stamp });
            seg.placed.truncate(PLACED_KEPT);
            // Best effort: without the record the next build copies again.
            let _ = self.write_segment_record(key, seg);
        }
        Ok(true)
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

/// Copy a cached segment to `out` at its current offset, in the kernel
/// (copy_file_range: the bytes never pass through this process).
pub fn copy_segment(seg_path: &Path, seg: &Segment, out: &mut File) -> Result<()> {
    let mut src = File::open(seg_path).with_path("cannot read", seg_path)?;
    let copied = io::copy(&mut src, out).with_path("cannot copy", seg_path)?;
    if copied != seg.size {
        return Err(Error::integrity(format!(
            "cached segment {} changed size while copying; run `imgbuild cache verify`",
            seg_path.display()
        )));
    }
    Ok(())
}

/// An artifact a file may be: its recipe, and the arch whose pin it should match.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub recipe: &'a Recipe,
    pub artifact: &'a Artifact,
    pub arch: &'a str,
}
