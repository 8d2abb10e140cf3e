//! cloud-init: the node's configuration as NoCloud/provider user-data.
//!
//! `out/controller-<N>-cloud-init/` holds `user-data` (`#cloud-config`),
//! `meta-data`, `network-config` (when the inventory gives a static address) and
//! `seed.img` (a vfat NoCloud volume labelled `cidata` holding the same files).
//!
//! The YAML is written here, not by a serializer: every scalar is a JSON string
//! (a valid YAML double-quoted scalar) or, for plain ASCII text files, a literal
//! block whose exact bytes we check; everything else is base64. So the bytes are
//! deterministic and decode to exactly the plan's files.
//!
//! Binaries (hundreds of MB) cannot ride in user-data; `Binaries` decides how
//! they reach the node.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use crate::codec::gz::gzip_bytes;
use crate::codec::vfat::{self, VfatFile};
use crate::error::{Error, Result};
use crate::output::manifest::{self, OutputFile};
use crate::output::{Written, format};
use crate::plan::{Entry, EntryKind, Network, Plan};
use crate::progress::{Event, Progress};
use crate::util::atomic::{AtomicFile, ensure_dir_mode};
use crate::util::digest::{sha256_file, sha256_hex};

/// The filesystem label cloud-init's NoCloud source looks for.
pub const SEED_LABEL: &str = "cidata";
/// Where the `seed` binaries mode mounts the seed volume at boot.
pub const SEED_MOUNT: &str = "/run/imgbuild-seed";

/// How the node gets the binaries (the plan's shared files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binaries {
    /// The image already has them; user-data carries configuration only.
    Baked,
    /// A boot step downloads `<URL>/<version>/bin/linux/<arch>/<name>` (the
    /// dl.k8s.io layout) and installs it only if its sha256 is the pinned one.
    Mirror(String),
    /// They travel on the seed volume; a boot step copies and verifies them.
    Seed,
}

impl std::str::FromStr for Binaries {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "baked" => Ok(Binaries::Baked),
            "seed" => Ok(Binaries::Seed),
            _ => match s.strip_prefix("mirror=") {
                Some(url)
                    if (url.starts_with("http://") || url.starts_with("https://"))
                        && !url.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    Ok(Binaries::Mirror(url.trim_end_matches('/').to_string()))
                }
                Some(url) => Err(Error::input(format!(
                    "--binaries mirror={url}: the mirror must be an http:// or https:// URL without spaces"
                ))),
                None => Err(Error::input(format!(
                    "--binaries {s}: expected baked, seed or mirror=URL"
                ))),
            },
        }
    }
}

impl Binaries {
    pub fn name(&self) -> &'static str {
        match self {
            Binaries::Baked => "baked",
            Binaries::Mirror(_) => "mirror",
            Binaries::Seed => "seed",
        }
    }
}

/// Where the user-data goes, which decides how large it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Azure,
    Gcp,
    Openstack,
    Hetzner,
    Nocloud,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Aws,
        Provider::Azure,
        Provider::Gcp,
        Provider::Openstack,
        Provider::Hetzner,
        Provider::Nocloud,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Gcp => "gcp",
            Provider::Openstack => "openstack",
            Provider::Hetzner => "hetzner",
            Provider::Nocloud => "nocloud",
        }
    }

    /// The user-data size limit in bytes (kubernetes-facts.md §3), if any.
    pub fn limit(self) -> Option<usize> {
        match self {
            Provider::Aws => Some(16 * 1024),    // 16 KB raw, before base64
            Provider::Azure => Some(65_535),     // customData
            Provider::Gcp => Some(256 * 1024),   // per metadata value
            Provider::Openstack => Some(65_535), // Nova user_data
            Provider::Hetzner => Some(32 * 1024),
            Provider::Nocloud => None, // a filesystem
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "--provider {s}: expected one of aws, azure, gcp, openstack, hetzner, nocloud"
                ))
            })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub binaries: Binaries,
    pub provider: Provider,
}

/// The rendered files of one node.
#[derive(Debug, Clone)]
pub struct CloudInit {
    /// `#cloud-config` text, before any compression.
    pub user_data_text: String,
    /// What is written as `user-data`: the text, or its gzip when it had to shrink.
    pub user_data: Vec<u8>,
    pub gzipped: bool,
    pub meta_data: String,
    pub network_config: Option<String>,
    pub instance_id: String,
    /// Binaries to put on the seed volume (`seed` mode): file name and entry.
    pub seed_files: Vec<(String, Entry)>,
}

/// A YAML double-quoted scalar (JSON string syntax is a subset of it).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

fn flow(items: &[&str]) -> String {
    let parts: Vec<String> = items.iter().map(|s| q(s)).collect();
    format!("[{}]", parts.join(", "))
}

/// The content as a YAML literal block (`|`) when that round-trips exactly:
/// printable ASCII lines, one final newline, no leading blank or indented first
/// line, no whitespace-only lines.
fn literal_block(bytes: &[u8], indent: &str) -> Option<String> {
    let text = std::str::from_utf8(bytes).ok()?;
    let body = text.strip_suffix('\n')?;
    if body.is_empty() || body.ends_with('\n') || body.starts_with([' ', '\n']) {
        return None;
    }
    if !body
        .bytes()
        .all(|b| b == b'\n' || (0x20..0x7f).contains(&b))
    {
        return None;
    }
    let mut out = String::from("|\n");
    for line in body.split('\n') {
        if line.is_empty() {
            out.push('\n');
            continue;
        }
        if line.trim().is_empty() {
            return None;
        }
        out.push_str(indent);
        out.push_str(line);
        out.push('\n');
    }
    Some(out)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding (what write_files' `b64` decodes).
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decode standard base64 (whitespace ignored); `None` if it is not base64.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits, mut pad) = (0u32, 0u32, 0usize);
    for c in text.bytes().filter(|c| !c.is_ascii_whitespace()) {
        if c == b'=' {
            pad += 1;
            continue;
        }
        if pad > 0 {
            return None;
        }
        let v = B64.iter().position(|&b| b == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    (pad <= 2 && acc == 0).then_some(out)
}

fn owner_spec(e: &Entry) -> String {
    format!("{}:{}", e.uid, e.gid)
}

fn mode_str(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Verify-then-install, run once per binary with positional arguments so no
/// value is ever spliced into shell text. `$1` is fetched by `FETCH`.
const INSTALL_SCRIPT: &str = r#"set -eu
src="$1" sha="$2" dest="$3" mode="$4" owner="$5"
tmp="$dest.imgbuild-new"
FETCH
actual=$(sha256sum "$tmp" | cut -d' ' -f1)
if [ "$actual" != "$sha" ]; then
  rm -f "$tmp"
  echo "imgbuild: $dest from $src has sha256 $actual, expected $sha: not installed" >&2
  exit 1
fi
chmod "$mode" "$tmp"
chown "$owner" "$tmp"
mv -f "$tmp" "$dest""#;

const FETCH_MIRROR: &str = r#"if command -v curl >/dev/null 2>&1; then
  curl -fsSL --retry 5 -o "$tmp" "$src" || { rm -f "$tmp"; echo "imgbuild: cannot download $src" >&2; exit 1; }
else
  wget -q -O "$tmp" "$src" || { rm -f "$tmp"; echo "imgbuild: cannot download $src" >&2; exit 1; }
fi"#;

const FETCH_SEED: &str = r#"cp "$src" "$tmp" || { rm -f "$tmp"; echo "imgbuild: cannot copy $src from the seed volume" >&2; exit 1; }"#;

/// Render user-data, meta-data and network-config for `plan`.
pub fn render(plan: &Plan, opts: &Options) -> Result<CloudInit> {
    let binaries_on_node = opts.binaries != Binaries::Baked;
    let wanted = |e: &Entry| !e.shared || binaries_on_node;
    let meta = &plan.meta;

    let mut y = String::new();
    y.push_str("#cloud-config\n");
    let _ = writeln!(
        y,
        "# imgbuild {} | recipe {} | cluster {} | node {} ({}) | binaries {}",
        meta.imgbuild_version,
        meta.recipe,
        meta.cluster,
        meta.node_index,
        meta.node_name,
        opts.binaries.name()
    );

    // Folders first (bootcmd runs before write_files), with their modes and owners.
    let dirs: Vec<&Entry> = plan
        .entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Dir) && wanted(e))
        .collect();
    if !dirs.is_empty() {
        y.push_str("bootcmd:\n");
        for d in &dirs {
            let path = format!("/{}", d.path);
            let mode = mode_str(d.mode);
            let (uid, gid) = (d.uid.to_string(), d.gid.to_string());
            let _ = writeln!(
                y,
                "- {}",
                flow(&["install", "-d", "-m", &mode, "-o", &uid, "-g", &gid, &path])
            );
        }
    }

    let mut chowns = Vec::new();
    let files: Vec<&Entry> = plan
        .per_node()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
        .collect();
    if !files.is_empty() {
        y.push_str("write_files:\n");
    }
    for f in &files {
        let bytes = read_all(f)?;
        let path = format!("/{}", f.path);
        let _ = writeln!(y, "- path: {}", q(&path));
        // write_files resolves owners by name; numeric owners are set in runcmd.
        let _ = writeln!(y, "  owner: {}", q("root:root"));
        if f.uid != 0 || f.gid != 0 {
            chowns.push((owner_spec(f), path.clone()));
        }
        let _ = writeln!(y, "  permissions: {}", q(&mode_str(f.mode)));
        let block = if f.secret {
            None
        } else {
            literal_block(&bytes, "    ")
        };
        match block {
            _ if bytes.is_empty() => {
                let _ = writeln!(y, "  content: \"\"");
            }
            Some(b) => {
                let _ = write!(y, "  content: {b}");
            }
            None => {
                let _ = writeln!(y, "  encoding: \"b64\"");
                let b64 = base64_encode(&bytes);
                let _ = writeln!(y, "  content: {}", q(&b64));
            }
        }
    }

    y.push_str("runcmd:\n");
    // runcmd is one /bin/sh script: stop at the first failure, before any unit starts.
    y.push_str("- \"set -e\"\n");
    let mut seed_files: Vec<(String, Entry)> = Vec::new();
    if binaries_on_node {
        let bins: Vec<&Entry> = plan
            .shared()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .collect();
        let script = match &opts.binaries {
            Binaries::Mirror(_) => INSTALL_SCRIPT.replace("FETCH", FETCH_MIRROR),
            _ => INSTALL_SCRIPT.replace("FETCH", FETCH_SEED),
        };
        if opts.binaries == Binaries::Seed && !bins.is_empty() {
            let mount =
                format!("mkdir -p {SEED_MOUNT} && mount -o ro LABEL={SEED_LABEL} {SEED_MOUNT}");
            let _ = writeln!(y, "- {}", flow(&["sh", "-c", &mount]));
        }
        for b in &bins {
            let EntryKind::File { sha256, .. } = &b.kind else {
                unreachable!()
            };
            let name = b.path.rsplit('/').next().unwrap_or(&b.path);
            let src = match &opts.binaries {
                Binaries::Mirror(url) => {
                    format!(
                        "{url}/{}/bin/linux/{}/{name}",
                        meta.kubernetes_version, meta.arch
                    )
                }
                _ => {
                    if let Some((_, other)) = seed_files.iter().find(|(n, _)| n == name) {
                        return Err(Error::input(format!(
                            "/{} and /{} have the same file name; --binaries seed keeps binaries in the root of the seed volume",
                            other.path, b.path
                        )));
                    }
                    seed_files.push((name.to_string(), (*b).clone()));
                    format!("{SEED_MOUNT}/{name}")
                }
            };
            let dest = format!("/{}", b.path);
            let _ = writeln!(
                y,
                "- {}",
                flow(&[
                    "sh",
                    "-c",
                    &script,
                    "imgbuild-install",
                    &src,
                    sha256,
                    &dest,
                    &mode_str(b.mode),
                    &owner_spec(b),
                ])
            );
        }
        if opts.binaries == Binaries::Seed && !bins.is_empty() {
            let _ = writeln!(y, "- {}", flow(&["umount", SEED_MOUNT]));
        }
    }
    for (owner, path) in &chowns {
        let _ = writeln!(y, "- {}", flow(&["chown", owner, path]));
    }
    let mut units: Vec<String> = Vec::new();
    for e in plan.entries.iter().filter(|e| wanted(e)) {
        if let EntryKind::Symlink { target } = &e.kind {
            let path = format!("/{}", e.path);
            let _ = writeln!(y, "- {}", flow(&["ln", "-sfnT", target, &path]));
            if let Some(unit) = enabled_unit(&e.path) {
                units.push(unit.to_string());
            }
        }
    }
    y.push_str("- [\"systemctl\", \"daemon-reload\"]\n");
    units.sort_by_key(|u| {
        meta.unit_order
            .iter()
            .position(|o| o == u)
            .unwrap_or(usize::MAX)
    });
    units.dedup();
    for u in &units {
        let _ = writeln!(y, "- {}", flow(&["systemctl", "enable", "--now", u]));
    }

    let network_config = meta.network.as_ref().map(network_config);
    let instance_id = format!(
        "iid-imgbuild-{}",
        &sha256_hex(
            format!(
                "{y}\0{}\0{}",
                network_config.as_deref().unwrap_or(""),
                meta.node_name
            )
            .as_bytes()
        )[..20]
    );
    let meta_data = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(&instance_id),
        q(&meta.node_name)
    );

    let (user_data, gzipped) = fit_budget(&y, opts.provider, meta)?;
    Ok(CloudInit {
        user_data_text: y,
        user_data,
        gzipped,
        meta_data,
        network_config,
        instance_id,
        seed_files,
    })
}

/// `etc/systemd/system/<target>.wants/<unit>` → `<unit>`.
fn enabled_unit(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("etc/systemd/system/")?;
    let (dir, unit) = rest.split_once('/')?;
    (dir.ends_with(".wants") && !unit.contains('/')).then_some(unit)
}

fn read_all(e: &Entry) -> Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(e.size() as usize);
    std::io::Read::read_to_end(&mut e.open()?, &mut bytes).map_err(|err| {
        Error::new(
            if err.kind() == std::io::ErrorKind::InvalidData {
                crate::Kind::Integrity
            } else {
                crate::Kind::Io
            },
            format!("cannot read the bytes of /{}: {err}", e.path),
        )
    })?;
    if bytes.len() as u64 != e.size() {
        return Err(Error::integrity(format!(
            "/{}: its content is {} bytes, the plan records {}",
            e.path,
            bytes.len(),
            e.size()
        )));
    }
    Ok(bytes)
}

fn network_config(n: &Network) -> String {
    let mut s = String::from("version: 2\nethernets:\n");
    let _ = writeln!(s, "  {}:", q(&n.interface));
    let _ = writeln!(
        s,
        "    addresses:\n    - {}",
        q(&format!("{}/{}", n.address, n.prefix))
    );
    let default = if n.gateway.is_ipv4() {
        "0.0.0.0/0"
    } else {
        "::/0"
    };
    let _ = writeln!(
        s,
        "    routes:\n    - to: {}\n      via: {}",
        q(default),
        q(&n.gateway.to_string())
    );
    s.push_str("    nameservers:\n      addresses:\n");
    for d in &n.dns {
        let _ = writeln!(s, "      - {}", q(&d.to_string()));
    }
    s
}

/// Raw when it fits the provider's limit, else gzipped; else an error with both sizes.
fn fit_budget(text: &str, provider: Provider, meta: &crate::plan::Meta) -> Result<(Vec<u8>, bool)> {
    let Some(limit) = provider.limit() else {
        return Ok((text.as_bytes().to_vec(), false));
    };
    if text.len() <= limit {
        return Ok((text.as_bytes().to_vec(), false));
    }
    let gz = gzip_bytes(text.as_bytes());
    if gz.len() <= limit {
        return Ok((gz, true));
    }
    Err(Error::input(format!(
        "user-data for node {} ({}) is {} bytes raw and {} bytes gzipped; the {} limit is {limit} bytes. \
         Use --binaries baked or seed (binaries are not in user-data then), or --provider nocloud with the seed volume",
        meta.node_index,
        meta.node_name,
        text.len(),
        gz.len(),
        provider.name()
    )))
}

/// Write `<dest>` (a folder, 0700) with user-data, meta-data, network-config
/// and seed.img, all 0600 (they hold private keys). The folder appears whole:
/// it is built beside `dest` and renamed into place.
pub fn write_folder(plan: &Plan, rendered: &CloudInit, dest: &Path) -> Result<PathBuf> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    crate::util::atomic::ensure_dir(&parent)?;
    let name = dest
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempdir_in(&parent)
        .map_err(|e| crate::util::atomic::writable_hint(&parent, e))?;
    ensure_dir_mode(tmp.path(), 0o700)?;
    let put = |file: &str, bytes: &[u8]| -> Result<()> {
        crate::util::atomic::write(&tmp.path().join(file), bytes, 0o600).map(drop)
    };
    put("user-data", &rendered.user_data)?;
    put("meta-data", rendered.meta_data.as_bytes())?;
    if let Some(n) = &rendered.network_config {
        put("network-config", n.as_bytes())?;
    }
    write_seed(plan, rendered, &tmp.path().join("seed.img"))?;

    // Swap the new folder in; an older one is moved aside and then removed.
    let tmp = tmp.keep();
    let old = parent.join(format!(".{name}.old"));
    let _ = fs::remove_dir_all(&old);
    let had_old = match fs::rename(dest, &old) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(Error::io("cannot move aside the previous", dest, e));
        }
    };
    if let Err(e) = fs::rename(&tmp, dest) {
        let _ = fs::remove_dir_all(&tmp);
        if had_old {
            let _ = fs::rename(&old, dest);
        }
        return Err(Error::io("cannot rename into place", dest, e));
    }
    if had_old {
        fs::remove_dir_all(&old).map_err(|e| Error::io("cannot remove the previous", &old, e))?;
    }
    Ok(dest.to_path_buf())
}

/// The NoCloud seed volume: same files as the folder, plus binaries in `seed` mode.
pub fn write_seed(plan: &Plan, rendered: &CloudInit, dest: &Path) -> Result<()> {
    let mut files: Vec<VfatFile> = Vec::new();
    let mem = |name: &str, bytes: Vec<u8>| VfatFile {
        path: name.to_string(),
        size: bytes.len() as u64,
        open: Box::new(move || Ok(Box::new(std::io::Cursor::new(bytes.clone())))),
    };
    files.push(mem("meta-data", rendered.meta_data.clone().into_bytes()));
    if let Some(n) = &rendered.network_config {
        files.push(mem("network-config", n.clone().into_bytes()));
    }
    files.push(mem("user-data", rendered.user_data.clone()));
    for (name, e) in &rendered.seed_files {
        files.push(VfatFile {
            path: name.clone(),
            size: e.size(),
            open: Box::new(move || e.open()),
        });
    }
    // A fixed volume id derived from the content: same inputs, same bytes.
    let volume_id =
        u32::from_str_radix(&rendered.instance_id[rendered.instance_id.len() - 8..], 16)
            .expect("instance id ends in hex");
    let mut out = AtomicFile::create(dest, 0o600)?;
    vfat::write_vfat(
        out.file_mut()
            .map_err(|e| Error::io("cannot write", dest, e))?,
        dest,
        SEED_LABEL,
        volume_id,
        plan.meta.mtime,
        &files,
    )?;
    out.commit_synced().map(drop)
}

/// `imgbuild cloud-init` for one node: `controller-N-cloud-init/` in
/// `out_dir`, and the node's manifest listing every file of the folder.
pub fn write_node(
    plan: &Plan,
    opts: &Options,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Written> {
    let m = &plan.meta;
    progress.event(Event::Step {
        what: &format!(
            "writing cloud-init for node {} ({}), binaries {}",
            m.node_index,
            m.node_name,
            opts.binaries.name()
        ),
    });
    let rendered = render(plan, opts)?;
    if rendered.gzipped {
        progress.event(Event::Notice {
            message: &format!(
                "user-data of node {} is {} bytes, over the {} limit of {} bytes: written gzipped ({} bytes)",
                m.node_index,
                rendered.user_data_text.len(),
                opts.provider.name(),
                opts.provider.limit().unwrap_or_default(),
                rendered.user_data.len()
            ),
        });
    }
    let folder = format::cloud_init_dir(m.node_index);
    let dest = out_dir.join(&folder);
    write_folder(plan, &rendered, &dest)?;
    progress.event(Event::Wrote { path: &dest });
    let mut outputs = Vec::new();
    for f in ["user-data", "meta-data", "network-config", "seed.img"] {
        let p = dest.join(f);
        if p.exists() {
            let (sha256, size) = sha256_file(&p)?;
            outputs.push(OutputFile {
                name: format!("{folder}/{f}"),
                sha256,
                size,
            });
        }
    }
    let manifest = out_dir.join(format::manifest_name(m.node_index));
    let label = format!("cloud-init (binaries {})", opts.binaries.name());
    manifest::write(&manifest, plan, &label, outputs.clone())?;
    progress.event(Event::Wrote { path: &manifest });
    Ok(Written {
        node_index: m.node_index,
        node_name: m.node_name.clone(),
        artifact: dest,
        manifest,
        outputs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixture::sample_plan;

    fn opts(binaries: Binaries) -> Options {
        Options {
            binaries,
            provider: Provider::Nocloud,
        }
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        for n in 0..300usize {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + n) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
        assert!(base64_decode("Zm9v!").is_none());
    }

    #[test]
    fn literal_blocks_only_when_exact() {
        assert_eq!(literal_block(b"a\n\nb\n", "  ").unwrap(), "|\n  a\n\n  b\n");
        for bad in [
            &b"a"[..],
            b"a\n\n",
            b" a\n",
            b"\na\n",
            b"a\t\n",
            b"a\r\n",
            b"a\n  \nb\n",
            "é\n".as_bytes(),
            b"",
        ] {
            assert!(literal_block(bad, "  ").is_none(), "{bad:?}");
        }
    }

    #[test]
    fn secrets_are_base64_and_modes_kept() {
        let plan = sample_plan();
        let r = render(&plan, &opts(Binaries::Baked)).unwrap();
        let y = &r.user_data_text;
        assert!(y.starts_with("#cloud-config\n"));
        assert!(
            !y.contains("secret"),
            "a private key is in clear text:\n{y}"
        );
        assert!(y.contains("\"/var/lib/kubernetes/ca-key.pem\"\n  owner: \"root:root\"\n  permissions: \"0600\"\n  encoding: \"b64\""));
        assert!(
            !y.contains("kube-apiserver\"\n  owner"),
            "baked binaries must not be in user-data"
        );
        assert!(y.contains("[\"systemctl\", \"enable\", \"--now\", \"kube-apiserver.service\"]"));
        assert_eq!(r.user_data, y.as_bytes());
        assert!(r.seed_files.is_empty());
    }

    #[test]
    fn instance_id_follows_content() {
        let plan = sample_plan();
        let a = render(&plan, &opts(Binaries::Baked)).unwrap();
        assert_eq!(
            a.instance_id,
            render(&plan, &opts(Binaries::Baked)).unwrap().instance_id
        );
        let mut changed = plan.clone();
        let e = changed
            .entries
            .iter_mut()
            .find(|e| e.path == "etc/systemd/system/kube-apiserver.service")
            .unwrap();
        *e = crate::plan::fixture::file(&e.path, 0o644, b"[Unit]\nDescription=changed\n", false);
        let b = render(&changed, &opts(Binaries::Baked)).unwrap();
        assert_ne!(a.instance_id, b.instance_id);
        assert!(a.meta_data.contains("local-hostname: \"controller-1\""));
    }

    #[test]
    fn budgets_gzip_then_fail_with_both_sizes() {
        let mut plan = sample_plan();
        // ~40 KB of compressible text: too big raw for AWS, fits gzipped.
        let text = "Environment=KUBE_FLAG=value-that-repeats\n".repeat(1000);
        plan.entries.push(crate::plan::fixture::file(
            "etc/big.conf",
            0o644,
            text.as_bytes(),
            false,
        ));
        plan.finish().unwrap();
        let mut o = opts(Binaries::Baked);
        o.provider = Provider::Aws;
        let r = render(&plan, &o).unwrap();
        assert!(r.gzipped && r.user_data.len() <= 16384 && r.user_data_text.len() > 16384);
        o.provider = Provider::Gcp;
        assert!(!render(&plan, &o).unwrap().gzipped);

        // 40 KB of incompressible secret: no provider but nocloud takes it.
        let mut plan = sample_plan();
        let noise: Vec<u8> = (0..40_000u32)
            .map(|i| sha256_hex(&i.to_le_bytes()).as_bytes()[0] ^ (i as u8))
            .collect();
        let mut key = crate::plan::fixture::file("etc/noise.key", 0o600, &noise, false);
        key.secret = true;
        plan.entries.push(key);
        plan.finish().unwrap();
        o.provider = Provider::Aws;
        let err = render(&plan, &o).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bytes raw")
                && msg.contains("bytes gzipped")
                && msg.contains("aws limit is 16384"),
            "{msg}"
        );
        o.provider = Provider::Nocloud;
        assert!(!render(&plan, &o).unwrap().gzipped);
    }

    #[test]
    fn binaries_modes_parse() {
        assert_eq!("baked".parse::<Binaries>().unwrap(), Binaries::Baked);
        assert_eq!(
            "mirror=https://mirror.internal/k8s/"
                .parse::<Binaries>()
                .unwrap(),
            Binaries::Mirror("https://mirror.internal/k8s".into())
        );
        assert!("mirror=ftp://x".parse::<Binaries>().is_err());
        assert!("mirror=https://a b".parse::<Binaries>().is_err());
        assert!("sideload".parse::<Binaries>().is_err());
        assert_eq!("hetzner".parse::<Provider>().unwrap().limit(), Some(32768));
    }

    #[test]
    fn network_config_gives_address_route_and_dns() {
        let n = Network {
            interface: "eth0".into(),
            address: "10.240.0.11".parse().unwrap(),
            prefix: 24,
            gateway: "10.240.0.1".parse().unwrap(),
            dns: vec!["10.240.0.2".parse().unwrap()],
        };
        let text = network_config(&n);
        assert!(
            text.contains("- \"10.240.0.11/24\"") && text.contains("via: \"10.240.0.1\""),
            "{text}"
        );
    }

    /// cloud-init's own code reads the user-data and its write_files module
    /// writes the files under a temporary root (tests/tools/cloud_init_write_files.py);
    /// returns {"files": {path: [mode, owner, sha256, size]}, "runcmd", "bootcmd"}.
    fn decode_with_cloud_init(user_data: &Path) -> serde_json::Value {
        let root = tempfile::tempdir().unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/cloud_init_write_files.py");
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .arg(user_data)
            .arg(root.path())
            .output()
            .expect(
                "Debian's python3 with cloud-init must be installed (apt-get install cloud-init)",
            );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn cloud_init_schema(user_data: &Path) {
        // `cloud-init schema` reads plain YAML: check the uncompressed text.
        let out = std::process::Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(user_data)
            .output()
            .expect("cloud-init must be installed (apt-get install cloud-init)");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && all.contains("Valid cloud-config"),
            "{all}"
        );
    }

    #[test]
    fn cloud_init_accepts_every_mode_and_write_files_decode_to_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = sample_plan();
        // A non-root file and a binary-looking per-node file exercise chown and b64.
        let mut owned = crate::plan::fixture::file(
            "var/lib/kubernetes/etcd.conf",
            0o640,
            b"name: one\n",
            false,
        );
        owned.uid = 1234;
        owned.gid = 4321;
        plan.entries.push(owned);
        plan.entries.push(crate::plan::fixture::file(
            "etc/blob.bin",
            0o644,
            &[0, 1, 2, 255, b'\n'],
            false,
        ));
        plan.finish().unwrap();
        for mode in [
            Binaries::Baked,
            Binaries::Mirror("http://127.0.0.1:8080/k8s".into()),
            Binaries::Seed,
        ] {
            let r = render(&plan, &opts(mode.clone())).unwrap();
            let ud = dir.path().join(format!("user-data-{}", mode.name()));
            fs::write(&ud, &r.user_data).unwrap();
            cloud_init_schema(&ud);
            let doc = decode_with_cloud_init(&ud);
            let files = doc["files"].as_object().unwrap();
            let expected: Vec<&Entry> = plan
                .per_node()
                .filter(|e| matches!(e.kind, EntryKind::File { .. }))
                .collect();
            assert_eq!(files.len(), expected.len(), "{files:?}");
            for e in expected {
                let EntryKind::File { sha256, size, .. } = &e.kind else {
                    unreachable!()
                };
                let f = &files[&format!("/{}", e.path)];
                assert_eq!(f[0], format!("{:04o}", e.mode), "{}", e.path);
                assert_eq!(f[1], "root:root");
                assert_eq!(f[2], sha256.as_str(), "{}", e.path);
                assert_eq!(f[3], *size, "{}", e.path);
            }
            let runcmd = doc["runcmd"].to_string();
            assert!(
                runcmd.contains(r#"["chown","1234:4321","/var/lib/kubernetes/etcd.conf"]"#),
                "{runcmd}"
            );
            assert!(runcmd.contains(r#"["ln","-sfnT","/etc/systemd/system/kube-apiserver.service","/etc/systemd/system/multi-user.target.wants/kube-apiserver.service"]"#), "{runcmd}");
            let bootcmd = doc["bootcmd"].to_string();
            assert!(
                bootcmd.contains(
                    r#"["install","-d","-m","0700","-o","0","-g","0","/var/lib/kubernetes"]"#
                ),
                "{bootcmd}"
            );
            let installs = doc["runcmd"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c[3] == "imgbuild-install")
                .count();
            match &mode {
                Binaries::Baked => {
                    assert_eq!(installs, 0);
                    assert!(!bootcmd.contains("/usr/local/bin"), "{bootcmd}");
                }
                Binaries::Mirror(_) => {
                    assert_eq!(installs, 2);
                    let apiserver = plan
                        .entries
                        .iter()
                        .find(|e| e.path == "usr/local/bin/kube-apiserver")
                        .unwrap();
                    let EntryKind::File { sha256, .. } = &apiserver.kind else {
                        unreachable!()
                    };
                    assert!(runcmd.contains(&format!(
                        r#""imgbuild-install","http://127.0.0.1:8080/k8s/v1.36.0/bin/linux/amd64/kube-apiserver","{sha256}","/usr/local/bin/kube-apiserver","0755","0:0"]"#
                    )), "{runcmd}");
                }
                Binaries::Seed => {
                    assert_eq!(installs, 2);
                    assert_eq!(r.seed_files.len(), 2);
                    assert!(
                        runcmd.contains("mount -o ro LABEL=cidata /run/imgbuild-seed"),
                        "{runcmd}"
                    );
                }
            }
        }
    }

    /// The verify-then-install step, run for real with /bin/sh: a good copy is
    /// installed with its mode, a tampered one is refused loudly and not installed.
    #[test]
    fn install_step_refuses_a_wrong_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("kube-apiserver");
        fs::write(&src, b"binary").unwrap();
        let dest = dir.path().join("installed");
        let script = INSTALL_SCRIPT.replace("FETCH", FETCH_SEED);
        let run = |sha: &str| {
            std::process::Command::new("sh")
                .args(["-c", &script, "imgbuild-install"])
                .arg(&src)
                .arg(sha)
                .arg(&dest)
                .args(["0750", &format!("{}:{}", own_ids().0, own_ids().1)])
                .output()
                .unwrap()
        };
        let bad = run(&sha256_hex(b"other"));
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("not installed"));
        assert!(!dest.exists());
        let good = run(&sha256_hex(b"binary"));
        assert!(
            good.status.success(),
            "{}",
            String::from_utf8_lossy(&good.stderr)
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o750
        );
        assert_eq!(fs::read(&dest).unwrap(), b"binary");
    }

    /// Our own uid and gid, so chown succeeds without privileges.
    fn own_ids() -> (u32, u32) {
        use std::os::unix::fs::MetadataExt as _;
        let f = tempfile::NamedTempFile::new().unwrap();
        let md = f.as_file().metadata().unwrap();
        (md.uid(), md.gid())
    }

    #[test]
    fn network_config_converts_with_cloud_init() {
        let n = Network {
            interface: "ens3".into(),
            address: "10.240.0.11".parse().unwrap(),
            prefix: 24,
            gateway: "10.240.0.1".parse().unwrap(),
            dns: vec!["10.240.0.2".parse().unwrap()],
        };
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network-config");
        fs::write(&p, network_config(&n)).unwrap();
        let out_dir = dir.path().join("out");
        let out = std::process::Command::new("cloud-init")
            .args([
                "devel",
                "net-convert",
                "-k",
                "yaml",
                "-D",
                "debian",
                "-O",
                "networkd",
                "-p",
            ])
            .arg(&p)
            .arg("-d")
            .arg(&out_dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut text = String::new();
        for e in walk(&out_dir) {
            text.push_str(&fs::read_to_string(e).unwrap());
        }
        for want in [
            "Name=ens3",
            "Address=10.240.0.11/24",
            "Gateway=10.240.0.1",
            "DNS=10.240.0.2",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn folder_is_private_and_seed_lists_with_mtools() {
        use std::os::unix::fs::PermissionsExt as _;
        let mut plan = sample_plan();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("controller-1-cloud-init");
        let o = opts(Binaries::Seed);
        plan.meta.network = Some(Network {
            interface: "eth0".into(),
            address: "10.240.0.11".parse().unwrap(),
            prefix: 24,
            gateway: "10.240.0.1".parse().unwrap(),
            dns: vec!["1.1.1.1".parse().unwrap()],
        });
        let r = render(&plan, &o).unwrap();
        write_folder(&plan, &r, &dest).unwrap();
        // Twice: replaces the folder, same bytes.
        let first = fs::read(dest.join("seed.img")).unwrap();
        write_folder(&plan, &r, &dest).unwrap();
        assert_eq!(first, fs::read(dest.join("seed.img")).unwrap());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "leftovers beside the folder"
        );
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["meta-data", "network-config", "seed.img", "user-data"]
        );
        for n in &names {
            assert_eq!(
                fs::metadata(dest.join(n)).unwrap().permissions().mode() & 0o777,
                0o600,
                "{n}"
            );
        }
        let img = dest.join("seed.img");
        let label = std::process::Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains("cidata"));
        let listing = std::process::Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for f in [
            "::/user-data",
            "::/meta-data",
            "::/network-config",
            "::/kube-apiserver",
            "::/kubectl",
        ] {
            assert!(listing.lines().any(|l| l == f), "{f} missing:\n{listing}");
        }
        for f in ["user-data", "meta-data", "network-config"] {
            let cat = std::process::Command::new("mtype")
                .arg("-i")
                .arg(&img)
                .arg(format!("::/{f}"))
                .output()
                .unwrap();
            assert_eq!(cat.stdout, fs::read(dest.join(f)).unwrap(), "{f}");
        }
        let (_, entries) = vfat::read_vfat(&img).unwrap();
        let k = entries.iter().find(|e| e.path == "kubectl").unwrap();
        let kubectl = plan
            .entries
            .iter()
            .find(|e| e.path == "usr/local/bin/kubectl")
            .unwrap();
        let EntryKind::File { sha256, .. } = &kubectl.kind else {
            unreachable!()
        };
        assert_eq!(k.sha256.as_ref(), Some(sha256));
    }
}
