//! `imgbuild inspect`: list what an output holds, and check it against the build
//! manifest. Reads tar and cpio archives (gzip, zstd or plain: told apart by
//! their bytes), a split pair (tar, or cpio files read as one stream, as the
//! kernel does), a cloud-init folder, a seed image and an Ignition config.
//!
//! user-data is read by the parser beside its emitter (`output::cloud_init::yaml`),
//! which knows the YAML subset imgbuild writes; a user-data edited by hand may
//! be refused. The same holds for Ignition configs (`output::ignition::read`).
//!
//! A `--payload-url` build is checked as a chain: the payload
//! (`controller-N-payload.tar.gz`) holds the node's own entries; the small
//! user-data names the payload's sha256, which must be the one the manifest
//! lists for the payload (and, when the payload lies beside the cloud-init
//! folder, the payload's own).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::codec::{cpio, vfat, zstd};
use crate::error::{Error, IoContext, Kind, Result, clip};
use crate::output::cloud_init::{SEED_MOUNT, yaml};
use crate::output::format;
use crate::output::ignition::{self, config::wants_link};
use crate::output::manifest::{Listed, Manifest, ManifestEntry};
use crate::util::digest::{HashingWriter, sha256_file};

mod tree;

/// Entries an output may hold (a node holds a few dozen): more is refused.
pub const MAX_ENTRIES: usize = 65_536;
/// Bytes one tar member may hold (the largest binary is ~100 MB).
pub const MAX_MEMBER: u64 = 4 << 30;
/// Bytes a tar.gz may unpack to, in all.
pub const MAX_TOTAL: u64 = 16 << 30;
/// Bytes of a user-data, as read and once gunzipped (imgbuild's are tens of KB).
pub const MAX_USER_DATA: u64 = 16 << 20;

/// What kind of output was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Artifact {
    TarGz,
    Cpio,
    CloudInit,
    Ignition,
    /// A `--format dir` folder, or a root it was copied onto.
    Tree,
}

#[derive(Debug, Clone)]
pub struct Inspected {
    pub artifact: Artifact,
    pub entries: Vec<Listed>,
    /// cloud-init: whether the user-data installs the binaries (mirror/seed);
    /// with `baked` they are not part of this output.
    pub carries_binaries: bool,
    /// Facts worth showing (format of each file, seed label, binaries mode).
    pub notes: Vec<String>,
    /// Ignition: folders the config does not list but makes (parents of what
    /// it lists); the manifest may or may not hold them.
    pub implied: BTreeSet<String>,
    /// Ignition: units enabled (by preset, not by `.wants` symlinks).
    pub enabled: Vec<String>,
    /// A payload, or a user-data that fetches one (`--payload-url`).
    pub payload: Option<PayloadLink>,
}

/// What `--verify` checks of a payload build beyond the entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadLink {
    /// Who names the digest: the user-data, or the payload file itself.
    pub what: String,
    /// The sha256 the user-data requires, or the payload file's own.
    pub sha256: String,
    /// Where the user-data fetches the payload from (none for a payload file).
    pub url: Option<String>,
    /// The payload file whose entries are in `entries`, and its sha256; none
    /// when it was not found (the node's own entries are then not listed).
    pub read: Option<(PathBuf, String)>,
}

fn read_err(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| {
        let kind =
            if e.kind() == io::ErrorKind::InvalidData || e.kind() == io::ErrorKind::UnexpectedEof {
                Kind::Input
            } else {
                Kind::Io
            };
        Error::new(kind, format!("cannot read {}: {e}", path.display()))
    }
}

/// Inspect one output (a file or a cloud-init folder), or several files read
/// one after the other (a split pair).
pub fn inspect(paths: &[PathBuf]) -> Result<Inspected> {
    let Some(first) = paths.first() else {
        return Err(Error::input("inspect: name an output to read"));
    };
    let found = read_any(paths, first)?;
    tree::check_paths(first, &found.entries)?;
    Ok(found)
}

fn read_any(paths: &[PathBuf], first: &Path) -> Result<Inspected> {
    if paths.len() == 1 && first.is_dir() {
        let name = first.file_name().unwrap_or_default().to_string_lossy();
        if name.ends_with("-cloud-init") || first.join("user-data").exists() {
            return inspect_cloud_init_dir(first);
        }
        return tree::read_tree(first);
    }
    let mut kinds = Vec::new();
    for p in paths {
        // A FIFO would block the read, a device never end.
        if !std::fs::metadata(p).with_path("cannot read", p)?.is_file() {
            return Err(Error::input(format!(
                "{}: not a regular file nor an output folder",
                p.display()
            )));
        }
        kinds.push(sniff(p)?);
    }
    if paths.len() == 1 && kinds[0] == Sniffed::Vfat {
        return inspect_seed(first);
    }
    if paths.len() == 1 && kinds[0] == Sniffed::Ignition {
        return inspect_ignition(first);
    }
    let name = first.file_name().unwrap_or_default().to_string_lossy();
    if paths.len() == 1 && matches!(kinds[0], Sniffed::Tar(_)) && format::is_payload(&name) {
        let mut out = inspect_tar(first)?;
        let (sha256, _) = sha256_file(first)?;
        out.carries_binaries = false;
        out.payload = Some(PayloadLink {
            what: first.display().to_string(),
            sha256: sha256.clone(),
            url: None,
            read: Some((first.to_path_buf(), sha256)),
        });
        return Ok(out);
    }
    if kinds.iter().all(|k| matches!(k, Sniffed::Tar(_))) {
        // One archive, or the halves of a split one (the shared half has no
        // end-of-archive blocks: it is the start of the whole archive).
        let mut out = inspect_tar(first)?;
        for p in &paths[1..] {
            let more = inspect_tar(p)?;
            out.entries.extend(more.entries);
            out.notes.extend(more.notes);
        }
        return Ok(out);
    }
    for (p, k) in paths.iter().zip(&kinds) {
        if !matches!(k, Sniffed::Cpio(_)) {
            return Err(Error::input(format!(
                "{}: several files are read as one output: all tar (a split tar.gz or tar.zst pair), or all cpio (one initramfs); this is {}",
                p.display(),
                k.name()
            )));
        }
    }
    let mut entries = Vec::new();
    let mut notes = Vec::new();
    for (p, k) in paths.iter().zip(&kinds) {
        let members = cpio::read_members(unpacked(p)?).map_err(|e| e.context(p.display()))?;
        notes.push(format!(
            "{}: {}, {} entries",
            p.display(),
            k.name(),
            members.len()
        ));
        entries.extend(members.into_iter().map(|m| Listed {
            path: format!(
                "/{}",
                m.path.trim_start_matches("./").trim_start_matches('/')
            ),
            kind: m.type_name(),
            mode: m.perm(),
            uid: m.uid,
            gid: m.gid,
            size: Some(if m.type_name() == "file" { m.size } else { 0 }),
            sha256: m.sha256,
            target: m.target,
        }));
    }
    Ok(Inspected {
        artifact: Artifact::Cpio,
        entries,
        carries_binaries: true,
        notes,
        payload: None,
        implied: BTreeSet::new(),
        enabled: Vec::new(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sniffed {
    Tar(Packed),
    Cpio(Packed),
    Vfat,
    Ignition,
}

/// How an archive's bytes are compressed, as its first bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Packed {
    Plain,
    Gzip,
    Zstd,
}

impl Packed {
    fn of(head: &[u8]) -> Packed {
        if head.starts_with(&[0x1f, 0x8b]) {
            Packed::Gzip
        } else if head.starts_with(&zstd::MAGIC) {
            Packed::Zstd
        } else {
            Packed::Plain
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Packed::Plain => "",
            Packed::Gzip => ".gz",
            Packed::Zstd => ".zst",
        }
    }
}

impl Sniffed {
    fn name(self) -> String {
        match self {
            Sniffed::Tar(p) => format!("tar{}", p.suffix()),
            Sniffed::Cpio(p) => format!("cpio{}", p.suffix()),
            Sniffed::Vfat => "vfat image".into(),
            Sniffed::Ignition => "Ignition config".into(),
        }
    }
}

/// A file's bytes, decompressed when they start with a gzip or zstd magic
/// (every member or frame, one after the other; zstd checksums verified).
fn unpacked(path: &Path) -> Result<Box<dyn Read>> {
    let mut file = BufReader::new(File::open(path).with_path("cannot open", path)?);
    let head = io::BufRead::fill_buf(&mut file).map_err(read_err(path))?;
    Ok(match Packed::of(head) {
        Packed::Plain => Box::new(file),
        Packed::Gzip => Box::new(MultiGzDecoder::new(file)),
        Packed::Zstd => Box::new(zstd::decoder(file).map_err(read_err(path))?),
    })
}

/// Tell formats apart by their bytes, not their names.
fn sniff(path: &Path) -> Result<Sniffed> {
    let mut f = File::open(path).with_path("cannot open", path)?;
    let mut head = vec![0u8; 512];
    let n = crate::codec::read_up_to(&mut f, &mut head).map_err(read_err(path))?;
    head.truncate(n);
    let packed = Packed::of(&head);
    if packed != Packed::Plain {
        let mut inner = vec![0u8; 512];
        let n =
            crate::codec::read_up_to(&mut unpacked(path)?, &mut inner).map_err(read_err(path))?;
        inner.truncate(n);
        if inner.starts_with(b"070701") {
            return Ok(Sniffed::Cpio(packed));
        }
        if inner.len() >= 262 && &inner[257..262] == b"ustar" {
            return Ok(Sniffed::Tar(packed));
        }
        return Err(Error::input(format!(
            "{}: a {} stream holding neither a tar nor a newc cpio archive",
            path.display(),
            if packed == Packed::Gzip {
                "gzip"
            } else {
                "zstd"
            }
        )));
    }
    if head.starts_with(b"070701") {
        return Ok(Sniffed::Cpio(packed));
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(Sniffed::Tar(packed));
    }
    if head.trim_ascii_start().starts_with(b"{") {
        return Ok(Sniffed::Ignition);
    }
    if head.len() == 512
        && head[510..512] == [0x55, 0xaa]
        && (head[54..57] == *b"FAT" || head[82..87] == *b"FAT32")
    {
        return Ok(Sniffed::Vfat);
    }
    Err(Error::input(format!(
        "{}: not an imgbuild output (expected tar.gz, tar.zst, cpio, cpio.gz, cpio.zst, a seed image, a cloud-init folder or an Ignition config)",
        path.display()
    )))
}

fn inspect_tar(path: &Path) -> Result<Inspected> {
    let mut archive = tar::Archive::new(unpacked(path)?);
    let mut entries = Vec::new();
    let mut total: u64 = 0;
    // Raw entries: a GNU long name or a PAX header (which imgbuild never
    // writes) is refused, not read into memory whatever its size.
    for e in archive.entries().map_err(read_err(path))?.raw(true) {
        let mut e = e.map_err(read_err(path))?;
        if entries.len() >= MAX_ENTRIES {
            return Err(Error::input(format!(
                "{}: more than {MAX_ENTRIES} entries, far more than any node holds",
                path.display()
            )));
        }
        let h = e.header().clone();
        let raw = String::from_utf8(e.path_bytes().into_owned()).map_err(|b| {
            Error::input(format!(
                "{}: entry {} is not a UTF-8 name, which imgbuild never writes",
                path.display(),
                clip(&String::from_utf8_lossy(b.as_bytes()))
            ))
        })?;
        if raw.starts_with('/') {
            return Err(Error::input(format!(
                "{}: entry {} has an absolute name, which imgbuild never writes",
                path.display(),
                clip(&raw)
            )));
        }
        let rel = raw.trim_start_matches("./").trim_end_matches('/');
        let mode = h.mode().map_err(read_err(path))? & 0o7777;
        let id = |v: io::Result<u64>, what: &str| -> Result<u32> {
            let v = v.map_err(read_err(path))?;
            u32::try_from(v).map_err(|_| {
                Error::input(format!(
                    "{}: entry {}: {what} {v} does not fit 32 bits",
                    path.display(),
                    clip(rel)
                ))
            })
        };
        let uid = id(h.uid(), "uid")?;
        let gid = id(h.gid(), "gid")?;
        let (kind, size, sha256, target) = match h.entry_type() {
            tar::EntryType::Directory => ("dir", 0, None, None),
            tar::EntryType::Symlink => {
                let t = e.link_name_bytes().map(|t| {
                    String::from_utf8(t.into_owned()).map_err(|_| {
                        Error::input(format!(
                            "{}: entry {}: its link target is not UTF-8",
                            path.display(),
                            clip(rel)
                        ))
                    })
                });
                ("symlink", 0, None, t.transpose()?)
            }
            tar::EntryType::Regular => {
                let size = e.size();
                total = total.saturating_add(size);
                if size > MAX_MEMBER || total > MAX_TOTAL {
                    return Err(Error::input(format!(
                        "{}: entry {} is {size} bytes: over the cap of {MAX_MEMBER} bytes per member, {MAX_TOTAL} in all",
                        path.display(),
                        clip(rel)
                    )));
                }
                let mut hasher = HashingWriter::new(io::sink());
                io::copy(&mut e, &mut hasher).map_err(read_err(path))?;
                let (_, sha256, n) = hasher.finish();
                ("file", n, Some(sha256), None)
            }
            other => {
                return Err(Error::input(format!(
                    "{}: {} is a {other:?} entry, which imgbuild never writes",
                    path.display(),
                    clip(rel)
                )));
            }
        };
        entries.push(Listed {
            path: format!("/{rel}"),
            kind,
            mode,
            uid,
            gid,
            size: Some(size),
            sha256,
            target,
        });
    }
    Ok(Inspected {
        artifact: Artifact::TarGz,
        entries,
        carries_binaries: true,
        notes: vec![format!("{}: {}", path.display(), sniff(path)?.name())],
        payload: None,
        implied: BTreeSet::new(),
        enabled: Vec::new(),
    })
}

fn inspect_ignition(path: &Path) -> Result<Inspected> {
    let bytes = tree::read_capped(path, MAX_USER_DATA)?;
    let what = path.display().to_string();
    let read = ignition::read::parse(&bytes, &what)?;
    Ok(Inspected {
        artifact: Artifact::Ignition,
        entries: read.entries,
        carries_binaries: read.carries_binaries,
        notes: vec![format!("{what}: Ignition config, spec {}", read.version)],
        payload: None,
        implied: read.implied,
        enabled: read.enabled,
    })
}

/// A user-data file's bytes (gzipped or not), read back into entries.
fn read_user_data(bytes: Vec<u8>, what: &str) -> Result<Inspected> {
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        MultiGzDecoder::new(&bytes[..])
            .take(MAX_USER_DATA + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::input(format!("{what}: bad gzip: {e}")))?;
        if out.len() as u64 > MAX_USER_DATA {
            return Err(Error::input(format!(
                "{what}: gunzips to more than {MAX_USER_DATA} bytes (imgbuild's user-data is tens of KB)"
            )));
        }
        out
    } else {
        bytes
    };
    let parsed = yaml::parse_user_data(&text, what)?;
    Ok(Inspected {
        artifact: Artifact::CloudInit,
        entries: parsed.entries,
        carries_binaries: parsed.carries_binaries,
        notes: vec![format!(
            "{what}: cloud-config, binaries {}",
            parsed.binaries
        )],
        payload: parsed.payload.map(|f| PayloadLink {
            what: what.to_string(),
            sha256: f.sha256,
            url: Some(f.url),
            read: None,
        }),
        implied: BTreeSet::new(),
        enabled: Vec::new(),
    })
}

fn inspect_cloud_init_dir(dir: &Path) -> Result<Inspected> {
    let ud = dir.join("user-data");
    let bytes = tree::read_capped(&ud, MAX_USER_DATA)
        .map_err(|e| e.context(format!("{} is not a cloud-init folder", dir.display())))?;
    let mut out = read_user_data(bytes, &ud.display().to_string())?;
    read_payload_beside(dir, &mut out)?;
    let seed = dir.join("seed.img");
    if seed.exists() {
        // Sizes of seed-carried binaries come from the seed volume.
        let (label, files) = vfat::read_vfat(&seed)?;
        out.notes
            .push(format!("{}: vfat, label {label}", seed.display()));
        fill_seed_sizes(&mut out, &files);
    }
    Ok(out)
}

/// A payload user-data's folder: the node's entries come from the payload
/// beside the folder (`controller-N-payload.tar.gz`), when it is there.
fn read_payload_beside(dir: &Path, out: &mut Inspected) -> Result<()> {
    let Some(link) = &mut out.payload else {
        return Ok(());
    };
    let name = dir.file_name().unwrap_or_default().to_string_lossy();
    let Some(node) = format::node_of(&name) else {
        return Ok(());
    };
    let path = dir
        .parent()
        .unwrap_or(Path::new("."))
        .join(format::payload_name(node));
    if !path.exists() {
        out.notes.push(format!(
            "{} not found: the node's own entries are not listed",
            path.display()
        ));
        return Ok(());
    }
    let (sha256, _) = sha256_file(&path)?;
    link.read = Some((path.clone(), sha256));
    let payload = inspect_tar(&path)?;
    out.entries.extend(payload.entries);
    out.entries
        .sort_by(|a, b| crate::plan::path_order(&a.path, &b.path));
    out.notes.extend(payload.notes);
    Ok(())
}

fn inspect_seed(image: &Path) -> Result<Inspected> {
    let (label, files) = vfat::read_vfat(image)?;
    let ud = vfat::read_vfat_file(image, "user-data", MAX_USER_DATA)?
        .ok_or_else(|| Error::input(format!("{}: no user-data on this volume", image.display())))?;
    let mut out = read_user_data(ud, &format!("{}::user-data", image.display()))?;
    out.notes
        .push(format!("{}: vfat, label {label}", image.display()));
    fill_seed_sizes(&mut out, &files);
    Ok(out)
}

/// Binaries installed from the seed: check the copy on the volume has the
/// pinned digest and take its size.
fn fill_seed_sizes(out: &mut Inspected, files: &[vfat::VfatEntry]) {
    for e in out.entries.iter_mut().filter(|e| e.size.is_none()) {
        let Some(name) = e.target.take() else {
            continue;
        };
        let Some(f) = name.strip_prefix(&format!("{SEED_MOUNT}/")) else {
            e.target = Some(name);
            continue;
        };
        if let Some(v) = files.iter().find(|v| v.path == f) {
            e.size = Some(v.size);
            // The digest listed is what the volume holds; verify compares it with the pin.
            e.sha256 = v.sha256.clone();
        } else {
            e.sha256 = Some(format!("(missing from the seed volume: {f})"));
        }
    }
}

// ---------------------------------------------------------------------------
// --verify

/// The payload's digest: the manifest's payload output, the user-data and the
/// payload file read must all name the same.
fn verify_payload_link(link: &PayloadLink, manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let name = format::payload_name(manifest.meta.node_index);
    match manifest.outputs.iter().find(|o| o.file.name == name) {
        Some(o) if o.file.sha256 != link.sha256 => problems.push(format!(
            "{}: the payload's sha256 is {}, the manifest's {name} has {}",
            link.what, link.sha256, o.file.sha256
        )),
        Some(_) => {}
        None => problems.push(format!(
            "{}: the manifest lists no {name} (imgbuild cloud-init --payload-url writes it)",
            link.what
        )),
    }
    if let Some((path, sha256)) = &link.read
        && *sha256 != link.sha256
    {
        problems.push(format!(
            "{}: sha256 is {sha256}, the user-data requires {}",
            path.display(),
            link.sha256
        ));
    }
    problems
}

/// The manifest beside an output: `controller-<N>.manifest.json` for
/// `controller-<N>.tar.gz`, `controller-<N>-node.cpio.gz`, `controller-<N>-cloud-init/`, ...
pub fn default_manifest(paths: &[PathBuf]) -> Option<PathBuf> {
    for p in paths {
        let name = p.file_name()?.to_string_lossy().into_owned();
        let rest = name.strip_prefix("controller-")?;
        let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
        if digits.is_empty() {
            continue;
        }
        let dir = p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return Some(dir.join(format!("controller-{digits}.manifest.json")));
    }
    None
}

/// Every difference between the output and the manifest, as sentences.
pub fn verify(found: &Inspected, manifest: &Manifest) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_path: BTreeMap<&str, &Listed> = BTreeMap::new();
    for e in &found.entries {
        if let Some(prev) = by_path.insert(&e.path, e) {
            // A folder in both halves of a split pair is fine if identical.
            if prev != e || e.kind != "dir" {
                problems.push(format!("{}: appears twice, differently", e.path));
            }
        }
    }
    if let Some(link) = &found.payload {
        problems.extend(verify_payload_link(link, manifest));
    }
    let expected: Vec<&ManifestEntry> = manifest
        .entries
        .iter()
        .filter(|m| match (&found.payload, m.shared) {
            // A payload, and the binaries the user-data installs (mirror, seed).
            (Some(_), true) => found.carries_binaries,
            // The node's own entries, when the payload was read.
            (Some(link), false) => link.read.is_some(),
            // cloud-init and Ignition with baked binaries carry only the node's part.
            (None, true) => {
                !matches!(found.artifact, Artifact::CloudInit | Artifact::Ignition)
                    || found.carries_binaries
            }
            (None, false) => true,
        })
        .collect();
    let mut enabled: BTreeSet<&str> = found.enabled.iter().map(String::as_str).collect();
    for m in &expected {
        if found.artifact == Artifact::Ignition {
            // Ignition enables by preset: a `.wants` symlink of the manifest
            // is a unit the config enables, and its folder is not made.
            let rel = m.path.trim_start_matches('/');
            if let Some((_, unit)) = wants_link(rel).filter(|_| m.kind == "symlink") {
                if !enabled.remove(unit) {
                    problems.push(format!("{}: {unit} is not enabled in the config", m.path));
                }
                continue;
            }
            if m.kind == "dir" && rel.ends_with(".wants") && !by_path.contains_key(m.path.as_str())
            {
                continue;
            }
        }
        let Some(f) = by_path.remove(m.path.as_str()) else {
            problems.push(format!(
                "{}: in the manifest, missing from the output",
                m.path
            ));
            continue;
        };
        let mut diff = |what: &str, want: String, got: String| {
            if want != got {
                problems.push(format!(
                    "{}: {what} is {got}, the manifest says {want}",
                    m.path
                ));
            }
        };
        diff("type", m.kind.clone(), f.kind.to_string());
        diff("mode", m.mode.clone(), format!("{:04o}", f.mode));
        diff(
            "owner",
            format!("{}:{}", m.uid, m.gid),
            format!("{}:{}", f.uid, f.gid),
        );
        if m.kind == "file" {
            if let Some(size) = f.size {
                diff("size", m.size.to_string(), size.to_string());
            }
            diff(
                "sha256",
                m.sha256.clone().unwrap_or_default(),
                f.sha256.clone().unwrap_or_default(),
            );
        }
        if m.kind == "symlink" {
            diff(
                "link target",
                m.target.clone().unwrap_or_default(),
                f.target.clone().unwrap_or_default(),
            );
        }
    }
    for extra in by_path.keys().filter(|p| !found.implied.contains(**p)) {
        problems.push(format!("{extra}: in the output, not in the manifest"));
    }
    for unit in enabled {
        problems.push(format!(
            "{unit}: enabled in the config, not in the manifest"
        ));
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::cloud_init::{self, Binaries, Options, Provider};
    use crate::output::cpio::{self as cpio_out, Part};
    use crate::output::format::Compression::{self, Gzip};
    use crate::plan::Plan;
    use crate::plan::fixture::sample_plan;

    fn manifest_of(plan: &Plan) -> Manifest {
        Manifest::new(plan, "test", vec![])
    }

    #[test]
    fn split_cpio_pair_verifies_and_tampering_is_found() {
        let plan = sample_plan();
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("controller-shared.cpio.gz");
        let node = dir.path().join("controller-1-node.cpio");
        cpio_out::write_file(&plan, Part::Shared, Gzip, &shared).unwrap();
        cpio_out::write_file(&plan, Part::PerNode, Compression::None, &node).unwrap();
        let found = inspect(&[shared.clone(), node.clone()]).unwrap();
        let manifest = manifest_of(&plan);
        assert_eq!(verify(&found, &manifest), Vec::<String>::new());

        // Only one half: the other half's entries are missing.
        let half = inspect(std::slice::from_ref(&node)).unwrap();
        assert!(
            verify(&half, &manifest)
                .iter()
                .any(|p| p.contains("/usr/local/bin/kubectl: in the manifest, missing"))
        );

        // A changed mode and a changed byte in the per-node archive.
        let mut bytes = std::fs::read(&node).unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let at = text.find("per node").unwrap();
        bytes[at] = b'P';
        std::fs::write(&node, &bytes).unwrap();
        let problems = verify(&inspect(&[shared, node]).unwrap(), &manifest);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].starts_with("/usr/local/node.conf: sha256 is"),
            "{problems:?}"
        );
    }

    #[test]
    fn tar_gz_of_main_writer_verifies() {
        let plan = sample_plan();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("controller-1.tar.gz");
        let mut out = Vec::new();
        crate::output::tar::write_shared(
            plan.shared().collect(),
            plan.meta.made_from.mtime,
            &mut out,
            2,
        )
        .unwrap();
        let out = crate::output::tar::write_per_node(
            plan.per_node(),
            plan.meta.made_from.mtime,
            Gzip,
            out,
        )
        .unwrap();
        std::fs::write(&path, out).unwrap();
        let found = inspect(std::slice::from_ref(&path)).unwrap();
        assert_eq!(found.artifact, Artifact::TarGz);
        assert_eq!(verify(&found, &manifest_of(&plan)), Vec::<String>::new());
        let mut other = plan.clone();
        other
            .entries
            .retain(|e| e.path != "var/lib/kubernetes/empty");
        let problems = verify(&found, &manifest_of(&other));
        assert_eq!(
            problems,
            ["/var/lib/kubernetes/empty: in the output, not in the manifest"]
        );
    }

    #[test]
    fn cloud_init_folder_and_seed_verify_in_every_mode() {
        let plan = sample_plan();
        let manifest = manifest_of(&plan);
        let dir = tempfile::tempdir().unwrap();
        for binaries in [
            Binaries::Baked,
            Binaries::Mirror("https://127.0.0.1/m".into()),
            Binaries::Seed,
        ] {
            let opts = Options {
                binaries: binaries.clone(),
                provider: Provider::Nocloud,
                payload: None,
                packages: true,
            };
            let r = cloud_init::render(&plan, &opts).unwrap();
            let dest = dir
                .path()
                .join(format!("controller-1-cloud-init-{}", binaries.name()));
            cloud_init::write_folder(&plan, &r, &dest).unwrap();
            for target in [dest.clone(), dest.join("seed.img")] {
                let found = inspect(std::slice::from_ref(&target)).unwrap();
                assert_eq!(found.carries_binaries, binaries != Binaries::Baked);
                assert_eq!(
                    verify(&found, &manifest),
                    Vec::<String>::new(),
                    "{binaries:?} {target:?}"
                );
            }
        }
        // A seed whose binary is not the pinned one fails verification.
        let mut bad = plan.clone();
        let e = bad
            .entries
            .iter_mut()
            .find(|e| e.path == "usr/local/bin/kubectl")
            .unwrap();
        *e = crate::plan::fixture::file("usr/local/bin/kubectl", 0o755, b"not kubectl", true);
        let opts = Options {
            binaries: Binaries::Seed,
            provider: Provider::Nocloud,
            payload: None,
            packages: true,
        };
        let r = cloud_init::render(&bad, &opts).unwrap();
        let dest = dir.path().join("bad");
        cloud_init::write_folder(&bad, &r, &dest).unwrap();
        let problems = verify(&inspect(&[dest]).unwrap(), &manifest);
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("/usr/local/bin/kubectl: size")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.starts_with("/usr/local/bin/kubectl: sha256")),
            "{problems:?}"
        );
    }

    #[test]
    fn default_manifest_names() {
        let p = |s: &str| PathBuf::from(s);
        assert_eq!(
            default_manifest(&[
                p("out/controller-shared.cpio.gz"),
                p("out/controller-2-node.cpio.gz")
            ]),
            Some(p("out/controller-2.manifest.json"))
        );
        assert_eq!(
            default_manifest(&[p("controller-12-cloud-init")]),
            Some(p("./controller-12.manifest.json"))
        );
        assert_eq!(default_manifest(&[p("x.tar.gz")]), None);
    }
}
