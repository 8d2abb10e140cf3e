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
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha512};
use tempfile::NamedTempFile;

use crate::error::{Error, IoContext, Result};
use crate::input::recipe::Trust;
use crate::input::recipe::{Algorithm, Artifact, ArtifactKind, Recipe};
use crate::progress::{Event, Progress};
use crate::util::digest::HashingWriter;

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
    let mut out = HashingWriter::new(BufWriter::with_capacity(1 << 20, tmp));
    io::copy(&mut src, &mut out)?;
    let (out, sha256, size) = out.finish();
    let tmp = out.into_inner().map_err(|e| e.into_error())?;
    Ok((tmp, sha256, size))
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

    /// Where files being written live (same filesystem as the stores).
    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// A new temp file inside the cache (same filesystem, so renames are atomic).
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
    (hex.len() == alg.hex_len() && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some((alg, hex))
}
