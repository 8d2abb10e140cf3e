//! The user-data YAML, both ways: written for a plan ([`user_data`], with
//! `meta-data` and `network-config`), and read back into entries
//! ([`parse_user_data`], for `imgbuild inspect`). They sit together because
//! the reader understands exactly what the writer writes.
//!
//! The YAML is written here, not by a serializer: every scalar is a JSON string
//! (a valid YAML double-quoted scalar) or, for plain ASCII text files, a literal
//! block whose exact bytes we check; everything else is base64. So the bytes are
//! deterministic and decode to exactly the plan's files. The reader accepts that
//! subset only: a user-data edited by hand may be refused.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::{Binaries, Options, SEED_LABEL, SEED_MOUNT};
use crate::error::{Error, Result, clip};
use crate::output::manifest::Listed;
use crate::plan::{Entry, EntryKind, Network, Origin, Plan};
use crate::util::digest::sha256_hex;

/// What a user-data creates, as read back.
#[derive(Debug, Clone)]
pub struct UserData {
    /// Folders, files and symlinks, in path order. A binary the node installs
    /// at boot has no size, and its `target` says where it comes from.
    pub entries: Vec<Listed>,
    /// Whether it installs the binaries (`mirror` or `seed` mode).
    pub carries_binaries: bool,
    /// The binaries mode named in its header comment (`baked` when none is).
    pub binaries: String,
    /// A `--payload-url` user-data: where its boot step fetches the node's
    /// files and the sha256 they must have.
    pub payload: Option<super::payload::Fetch>,
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

pub(super) fn owner_spec(e: &Entry) -> String {
    format!("{}:{}", e.uid, e.gid)
}

pub(super) fn mode_str(mode: u32) -> String {
    format!("{mode:04o}")
}

/// Verify-then-install, run once per binary with positional arguments so no
/// value is ever spliced into shell text. `$1` is fetched by `FETCH`; with
/// `$6` (a member) and `$7` (`algorithm:hex`), `$1` is a release archive the
/// publisher serves only whole (etcd's): it is checked against that pin, and
/// the member taken from it.
pub(super) const INSTALL_SCRIPT: &str = r#"set -eu
src="$1" sha="$2" dest="$3" mode="$4" owner="$5" member="${6:-}" pin="${7:-}"
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

/// `get URL FILE` for v1.10.2 nodes (v1.34+ nodes bound and retry more:
/// `boot::install_script`).
const GET: &str = r#"get() {
  { if command -v curl >/dev/null 2>&1; then curl -fsSL --retry 5 -o "$2" "$1"; else wget -q -O "$2" "$1"; fi; } ||
    { rm -f "$2"; echo "imgbuild: cannot download $1" >&2; exit 1; }
}"#;

/// Fetch `$src` with `get` (defined by `GET` or its v1.34+ form), or the
/// archive holding `$member`, checked against `$pin` before the member is taken.
pub(super) const FETCH_MIRROR: &str = r#"GET
if [ -z "$member" ]; then get "$src" "$tmp"; else
  a="$tmp.archive"; get "$src" "$a"
  got=$("${pin%%:*}sum" "$a" | cut -d' ' -f1)
  [ "$got" = "${pin#*:}" ] || { rm -f "$a"; echo "imgbuild: $src has ${pin%%:*} $got, expected $pin: $dest not installed" >&2; exit 1; }
  tar -xzOf "$a" "$member" >"$tmp" || { rm -f "$a" "$tmp"; echo "imgbuild: no $member in $src" >&2; exit 1; }
  rm -f "$a"
fi"#;

pub(super) const FETCH_SEED: &str = r#"cp "$src" "$tmp" || { rm -f "$tmp"; echo "imgbuild: cannot copy $src from the seed volume" >&2; exit 1; }"#;

/// The verify-then-install script of a binaries mode that installs (mirror or seed).
pub(super) fn install_script(binaries: &Binaries) -> String {
    match binaries {
        Binaries::Mirror(_) => INSTALL_SCRIPT.replace("FETCH", &FETCH_MIRROR.replace("GET", GET)),
        _ => INSTALL_SCRIPT.replace("FETCH", FETCH_SEED),
    }
}

/// Mount the seed volume read-only where `seed` mode copies the binaries from.
pub(super) fn seed_mount() -> String {
    format!("mkdir -p {SEED_MOUNT} && mount -o ro LABEL={SEED_LABEL} {SEED_MOUNT}")
}

/// One binary the node installs: where it comes from, the entry, and for a
/// member of an archive the node unpacks, that member's path in it and the
/// archive's pin (`algorithm:hex`).
pub(super) struct Source<'a> {
    pub src: String,
    pub entry: &'a Entry,
    pub unpack: Option<(String, String)>,
}

impl Source<'_> {
    /// The install step's arguments after `src sha dest mode owner`.
    pub fn unpack_args(&self) -> Vec<&str> {
        match &self.unpack {
            Some((member, pin)) => vec![member, pin],
            None => vec![],
        }
    }
}

/// What [`binary_sources`] returns: each binary with where it comes from, and
/// the seed volume's files.
pub(super) type Sources<'a> = (Vec<Source<'a>>, Vec<(String, Entry)>);

/// Binaries the node installs at boot, each with where it comes from (a mirror
/// URL, or its path on the seed volume), and the files the seed volume must
/// carry (`seed` mode: file name and entry). None with `baked`.
pub(super) fn binary_sources<'a>(plan: &'a Plan, binaries: &Binaries) -> Result<Sources<'a>> {
    let meta = &plan.meta;
    let mut sources = Vec::new();
    let mut seed_files: Vec<(String, Entry)> = Vec::new();
    if *binaries == Binaries::Baked {
        return Ok((sources, seed_files));
    }
    for b in plan
        .shared()
        .filter(|e| matches!(e.kind, EntryKind::File { .. }))
    {
        let name = b.path.rsplit('/').next().unwrap_or(&b.path);
        let mut unpack = None;
        let src = match binaries {
            Binaries::Mirror(url) => match (plan.source_of(b), &b.origin) {
                (Some(s), Origin::Artifact { member, .. }) => {
                    let (src, pin) = s.fetch(url, member);
                    unpack = pin.map(|p| (member.clone(), p.to_string()));
                    src
                }
                _ => format!(
                    "{url}/{}/bin/linux/{}/{name}",
                    meta.made_from.kubernetes_version, meta.made_from.arch
                ),
            },
            _ => {
                if let Some((_, other)) = seed_files.iter().find(|(n, _)| n == name) {
                    return Err(Error::input(format!(
                        "/{} and /{} have the same file name; --binaries seed keeps binaries in the root of the seed volume",
                        other.path, b.path
                    )));
                }
                seed_files.push((name.to_string(), b.clone()));
                format!("{SEED_MOUNT}/{name}")
            }
        };
        sources.push(Source {
            src,
            entry: b,
            unpack,
        });
    }
    Ok((sources, seed_files))
}

/// The units the node enables and starts, in the layout's start order: those
/// enabled by a symlink the user-data (or payload) creates.
pub(super) fn units_to_start(plan: &Plan, binaries_on_node: bool) -> Vec<String> {
    let mut units: Vec<String> = plan
        .entries
        .iter()
        .filter(|e| !e.shared || binaries_on_node)
        .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }))
        .filter_map(|e| enabled_unit(&e.path).map(str::to_string))
        .collect();
    units.sort_by_key(|u| {
        plan.meta
            .unit_order
            .iter()
            .position(|o| o == u)
            .unwrap_or(usize::MAX)
    });
    units.dedup();
    units
}

/// One `write_files` item owned by root (numeric owners are set in runcmd):
/// text as a literal block when that round-trips exactly, else base64.
pub(super) fn write_files_item(y: &mut String, path: &str, mode: u32, bytes: &[u8], secret: bool) {
    let _ = writeln!(y, "- path: {}", q(path));
    // write_files resolves owners by name; numeric owners are set in runcmd.
    let _ = writeln!(y, "  owner: {}", q("root:root"));
    let _ = writeln!(y, "  permissions: {}", q(&mode_str(mode)));
    let block = if secret {
        None
    } else {
        literal_block(bytes, "    ")
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
            let b64 = BASE64.encode(bytes);
            let _ = writeln!(y, "  content: {}", q(&b64));
        }
    }
}

/// The header comment: what the user-data was made from.
pub(super) fn header(plan: &Plan, binaries: &Binaries, more: &str) -> String {
    let meta = &plan.meta;
    format!(
        "#cloud-config\n# imgbuild {} | recipe {} | cluster {} | node {} ({}) | binaries {}{more}\n",
        meta.made_from.imgbuild_version,
        meta.made_from.recipe,
        meta.made_from.cluster,
        meta.made_from.node_index,
        meta.made_from.node_name,
        binaries.name()
    )
}

/// The `#cloud-config` text for `plan`, and the binaries the seed volume
/// must carry (`seed` mode: file name and entry).
pub(super) fn user_data(plan: &Plan, opts: &Options) -> Result<(String, Vec<(String, Entry)>)> {
    let binaries_on_node = opts.binaries != Binaries::Baked;
    let wanted = |e: &Entry| !e.shared || binaries_on_node;

    let current = plan.meta.current_control_plane();
    let mut y = header(plan, &opts.binaries, "");
    // From v1.34: nginx from the distribution, unless the image has it (--no-packages).
    let units = units_to_start(plan, binaries_on_node);
    if current && opts.packages && units.iter().any(|u| u == "nginx.service") {
        y.push_str("packages:\n- \"nginx\"\n");
    }

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
        write_files_item(&mut y, &path, f.mode, &bytes, f.secret);
        if f.uid != 0 || f.gid != 0 {
            chowns.push((owner_spec(f), path));
        }
    }

    let (sources, seed_files) = binary_sources(plan, &opts.binaries)?;
    if current {
        // The boot step, retried at every boot until it succeeds (see `boot`).
        let script = super::boot::script(plan, &opts.binaries, &(sources, Vec::new()));
        write_files_item(
            &mut y,
            super::boot::SCRIPT_PATH,
            0o700,
            script.as_bytes(),
            false,
        );
        return Ok((y, seed_files));
    }
    y.push_str("runcmd:\n");
    // runcmd is one /bin/sh script: stop at the first failure, before any unit starts.
    y.push_str("- \"set -e\"\n");
    if !sources.is_empty() {
        let script = install_script(&opts.binaries);
        if opts.binaries == Binaries::Seed {
            let _ = writeln!(y, "- {}", flow(&["sh", "-c", &seed_mount()]));
        }
        for s in &sources {
            let b = s.entry;
            let EntryKind::File { sha256, .. } = &b.kind else {
                unreachable!()
            };
            let dest = format!("/{}", b.path);
            let (mode, owner) = (mode_str(b.mode), owner_spec(b));
            let mut args = vec![
                "sh",
                "-c",
                &script,
                "imgbuild-install",
                &s.src,
                sha256,
                &dest,
                &mode,
                &owner,
            ];
            args.extend(s.unpack_args());
            let _ = writeln!(y, "- {}", flow(&args));
        }
        if opts.binaries == Binaries::Seed {
            let _ = writeln!(y, "- {}", flow(&["umount", SEED_MOUNT]));
        }
    }
    for (owner, path) in &chowns {
        let _ = writeln!(y, "- {}", flow(&["chown", owner, path]));
    }
    for e in plan.entries.iter().filter(|e| wanted(e)) {
        if let EntryKind::Symlink { target } = &e.kind {
            let path = format!("/{}", e.path);
            let _ = writeln!(y, "- {}", flow(&["ln", "-sfnT", target, &path]));
        }
    }
    y.push_str("- [\"systemctl\", \"daemon-reload\"]\n");
    for u in &units {
        let _ = writeln!(y, "- {}", flow(&["systemctl", "enable", "--now", u]));
    }
    Ok((y, seed_files))
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

pub(super) fn network_config(n: &Network) -> String {
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

/// `meta-data`: the instance id and the host name.
pub(super) fn meta_data(instance_id: &str, node_name: &str) -> String {
    format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        q(instance_id),
        q(node_name)
    )
}

/// A scalar of our YAML subset: a JSON string.
fn scalar(v: &str, what: &str) -> Result<String> {
    serde_json::from_str::<String>(v.trim()).map_err(|_| {
        Error::input(format!(
            "{what}: {:?} is not a quoted string (was the user-data edited?)",
            crate::error::clip(v)
        ))
    })
}

fn parse_mode(s: &str, what: &str) -> Result<u32> {
    u32::from_str_radix(s, 8)
        .map_err(|_| Error::input(format!("{what}: permissions {:?} are not octal", clip(s))))
}

/// Read the user-data imgbuild writes back into entries.
pub fn parse_user_data(text: &[u8], what: &str) -> Result<UserData> {
    let text = std::str::from_utf8(text).map_err(|_| Error::input(format!("{what}: not UTF-8")))?;
    if !text.starts_with("#cloud-config\n") {
        return Err(Error::input(format!(
            "{what}: does not start with #cloud-config"
        )));
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut section = "";
    let mut entries: Vec<Listed> = Vec::new();
    let mut files: Vec<BTreeMap<&str, String>> = Vec::new();
    let mut chowns: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    let mut carries = false;
    let mut payload = None;
    let mut mode_name = String::from("baked");
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        i += 1;
        if line.starts_with('#') || line.is_empty() {
            if let Some((_, m)) = line.split_once("| binaries ") {
                mode_name = m.split(" | ").next().unwrap_or(m).trim().to_string();
            }
            continue;
        }
        if !line.starts_with(['-', ' ']) {
            section = line.strip_suffix(':').ok_or_else(|| {
                Error::input(format!("{what}: line {i}: unexpected {:?}", clip(line)))
            })?;
            continue;
        }
        let bad = |why: &str| Error::input(format!("{what}: line {i}: {why}: {:?}", clip(line)));
        let owner_ids = |owner: &str| -> Result<(u32, u32)> {
            let (u, g) = owner.split_once(':').ok_or_else(|| bad("bad owner"))?;
            let uid = u.parse().map_err(|_| bad("bad uid"))?;
            Ok((uid, g.parse().map_err(|_| bad("bad gid"))?))
        };
        match section {
            // Packages the node installs (nginx): not entries of its tree.
            "packages" => continue,
            "bootcmd" | "runcmd" => {
                let item = line
                    .strip_prefix("- ")
                    .ok_or_else(|| bad("expected a list item"))?;
                let argv: Vec<String> = match serde_json::from_str::<serde_json::Value>(item) {
                    Ok(serde_json::Value::Array(a)) => a
                        .into_iter()
                        .map(|v| {
                            v.as_str()
                                .map(String::from)
                                .ok_or_else(|| bad("non-string argument"))
                        })
                        .collect::<Result<_>>()?,
                    Ok(serde_json::Value::String(_)) => continue,
                    _ => return Err(bad("expected a JSON-style list")),
                };
                let a: Vec<&str> = argv.iter().map(String::as_str).collect();
                match a.as_slice() {
                    ["install", "-d", "-m", mode, "-o", uid, "-g", gid, path] => {
                        entries.push(Listed {
                            path: path.to_string(),
                            kind: "dir",
                            mode: parse_mode(mode, what)?,
                            uid: uid.parse().map_err(|_| bad("bad uid"))?,
                            gid: gid.parse().map_err(|_| bad("bad gid"))?,
                            size: Some(0),
                            sha256: None,
                            target: None,
                        })
                    }
                    ["ln", "-sfnT", target, path] => {
                        entries.push(Listed::symlink(path, target, 0, 0))
                    }
                    ["chown", owner, path] => {
                        chowns.insert(path.to_string(), owner_ids(owner)?);
                    }
                    [
                        "sh",
                        "-c",
                        _,
                        "imgbuild-install",
                        src,
                        sha,
                        dest,
                        mode,
                        owner,
                        ..,
                    ] => {
                        carries = true;
                        let (uid, gid) = owner_ids(owner)?;
                        entries.push(Listed {
                            path: dest.to_string(),
                            kind: "file",
                            mode: parse_mode(mode, what)?,
                            uid,
                            gid,
                            size: None,
                            sha256: Some(sha.to_string()),
                            // Where it comes from, until a seed volume says more.
                            target: Some(src.to_string()),
                        });
                    }
                    _ => {}
                }
            }
            "write_files" => {
                let (rest, new) = match line.strip_prefix("- ") {
                    Some(r) => (r, true),
                    None => (
                        line.strip_prefix("  ")
                            .ok_or_else(|| bad("bad indentation"))?,
                        false,
                    ),
                };
                if new {
                    files.push(BTreeMap::new());
                }
                let cur = files
                    .last_mut()
                    .ok_or_else(|| bad("field outside a list item"))?;
                let (key, value) = rest
                    .split_once(": ")
                    .ok_or_else(|| bad("expected key: value"))?;
                let key = match key {
                    "path" => "path",
                    "owner" => "owner",
                    "permissions" => "permissions",
                    "encoding" => "encoding",
                    "content" => "content",
                    _ => return Err(bad("unknown write_files field")),
                };
                if key == "content" && value == "|" {
                    let mut block = Vec::new();
                    while i < lines.len() && (lines[i].is_empty() || lines[i].starts_with("    ")) {
                        block.push(lines[i].get(4..).unwrap_or(""));
                        i += 1;
                    }
                    while block.last() == Some(&"") {
                        block.pop();
                    }
                    cur.insert("content", format!("{}\n", block.join("\n")));
                    cur.insert("literal", String::new());
                } else {
                    cur.insert(key, scalar(value, what)?);
                }
            }
            _ => return Err(bad("unknown section")),
        }
    }
    for f in &files {
        let path = f
            .get("path")
            .ok_or_else(|| Error::input(format!("{what}: a write_files item has no path")))?;
        let shown = clip(path);
        let content = f.get("content").cloned().unwrap_or_default();
        let bytes = match f.get("encoding").map(String::as_str) {
            None => content.into_bytes(),
            Some("b64") => {
                // White space is skipped, as cloud-init's decoder skips it.
                let packed: String = content.split_ascii_whitespace().collect();
                BASE64
                    .decode(packed)
                    .map_err(|_| Error::input(format!("{what}: {shown}: content is not base64")))?
            }
            Some(other) => {
                return Err(Error::input(format!(
                    "{what}: {shown}: encoding {} is not one imgbuild writes",
                    clip(other)
                )));
            }
        };
        if path == super::boot::SCRIPT_PATH {
            // The v1.34+ boot step: the binaries it installs, its links and owners.
            let script = String::from_utf8(bytes)
                .map_err(|_| Error::input(format!("{what}: {path}: not UTF-8")))?;
            let (installed, owners) = super::boot::read_script(&script, what)?;
            carries |= installed.iter().any(|e| e.kind == "file");
            entries.extend(installed);
            chowns.extend(owners);
            continue;
        }
        if path == super::payload::SCRIPT_PATH {
            // The boot script of --payload-url: not a file of the node's tree.
            let script = String::from_utf8(bytes)
                .map_err(|_| Error::input(format!("{what}: {shown}: not UTF-8")))?;
            let (fetch, installs) = super::payload::read_script(&script, what)?;
            carries |= installs.iter().any(|e| e.kind == "file");
            entries.extend(installs);
            payload = Some(fetch);
            continue;
        }
        let (uid, gid) = match chowns.get(path) {
            Some(o) => *o,
            None if f.get("owner").map(String::as_str) == Some("root:root") => (0, 0),
            None => {
                return Err(Error::input(format!(
                    "{what}: {shown}: owner must be root:root"
                )));
            }
        };
        let mode = parse_mode(
            f.get("permissions").map(String::as_str).unwrap_or("0644"),
            what,
        )?;
        entries.push(Listed {
            path: path.clone(),
            kind: "file",
            mode,
            uid,
            gid,
            size: Some(bytes.len() as u64),
            sha256: Some(sha256_hex(&bytes)),
            target: None,
        });
    }
    entries.sort_by(|a, b| crate::plan::path_order(&a.path, &b.path));
    Ok(UserData {
        entries,
        carries_binaries: carries,
        binaries: mode_name,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;
    use crate::output::cloud_init::{Provider, render};
    use crate::plan::fixture::sample_plan;

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
    fn parsed_user_data_matches_the_plan_exactly() {
        let plan = sample_plan();
        let opts = Options {
            binaries: Binaries::Baked,
            provider: Provider::Nocloud,
            payload: None,
            packages: true,
        };
        let r = render(&plan, &opts).unwrap();
        let found = parse_user_data(r.user_data_text.as_bytes(), "user-data").unwrap();
        let files: Vec<_> = found.entries.iter().filter(|e| e.kind == "file").collect();
        let want: Vec<_> = plan
            .per_node()
            .filter(|e| matches!(e.kind, EntryKind::File { .. }))
            .collect();
        assert_eq!(files.len(), want.len());
        for (f, e) in files.iter().zip(&want) {
            let EntryKind::File { sha256, size, .. } = &e.kind else {
                unreachable!()
            };
            assert_eq!(f.path, format!("/{}", e.path));
            assert_eq!(
                (f.mode, f.size, f.sha256.as_ref()),
                (e.mode, Some(*size), Some(sha256))
            );
        }
        assert_eq!(found.binaries, "baked");
        assert!(!found.carries_binaries);
        assert!(parse_user_data(b"#cloud-config\nwrite_files:\n- path: /x\n", "u").is_err());
    }

    #[test]
    fn base64_content_decodes_and_bad_base64_is_refused() {
        let file = |content: &str| {
            format!(
                "#cloud-config\nwrite_files:\n- path: \"/x\"\n  owner: \"root:root\"\n  permissions: \"0600\"\n  encoding: \"b64\"\n  content: \"{content}\"\n"
            )
        };
        let ok = parse_user_data(file("Zm9v YmFy").as_bytes(), "u").unwrap();
        assert_eq!(ok.entries[0].sha256, Some(sha256_hex(b"foobar")));
        assert_eq!(BASE64.encode(b"fo"), "Zm8=");
        let err = parse_user_data(file("Zm9v!").as_bytes(), "u").unwrap_err();
        assert!(
            err.to_string().contains("/x: content is not base64"),
            "{err}"
        );
    }

    /// The verify-then-install step, run for real with /bin/sh: a good copy is
    /// installed with its mode, a tampered one is refused loudly and not installed.
    #[test]
    fn install_step_refuses_a_wrong_digest() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("kube-apiserver");
        fs::write(&src, b"binary").unwrap();
        let dest = dir.path().join("installed");
        let script = install_script(&Binaries::Seed);
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

    /// The mirror step for a member of a release archive, run for real with
    /// /bin/sh and curl (file:// URL), as v1.10.2's runcmd and v1.34's boot
    /// script run it: the archive is checked against its pin, then the member
    /// against its sha256; either wrong installs nothing.
    #[test]
    fn install_step_unpacks_a_pinned_archive() {
        let mirror = Binaries::Mirror("file:///unused".into());
        for script in [
            install_script(&mirror),
            super::super::boot::install_script(&mirror),
        ] {
            unpacks_a_pinned_archive(&script);
        }
    }

    fn unpacks_a_pinned_archive(script: &str) {
        let dir = tempfile::tempdir().unwrap();
        let body: &[u8] = b"etcd binary";
        let archive = crate::plan::fixture::tar_gz(&[("etcd-v3.6.5-linux-amd64/etcd", body)]);
        let src = dir.path().join("etcd-v3.6.5-linux-amd64.tar.gz");
        fs::write(&src, &archive).unwrap();
        let dest = dir.path().join("etcd");
        let run = |sha: &str, pin: &str| {
            std::process::Command::new("sh")
                .args(["-c", script, "imgbuild-install"])
                .arg(format!("file://{}", src.display()))
                .arg(sha)
                .arg(&dest)
                .args(["0755", &format!("{}:{}", own_ids().0, own_ids().1)])
                .args(["etcd-v3.6.5-linux-amd64/etcd", pin])
                .output()
                .unwrap()
        };
        let pin = format!("sha256:{}", sha256_hex(&archive));
        let bad_pin = run(&sha256_hex(body), &format!("sha256:{}", sha256_hex(b"x")));
        let said = String::from_utf8_lossy(&bad_pin.stderr);
        assert!(
            !bad_pin.status.success() && said.contains("not installed"),
            "{said}"
        );
        assert!(!dest.exists());
        let bad_member = run(&sha256_hex(b"other"), &pin);
        assert!(!bad_member.status.success());
        assert!(!dest.exists());
        let good = run(&sha256_hex(body), &pin);
        assert!(
            good.status.success(),
            "{}",
            String::from_utf8_lossy(&good.stderr)
        );
        assert_eq!(fs::read(&dest).unwrap(), body);
        let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(left.len(), 2, "temporary files left behind");
    }

    /// Our own uid and gid, so chown succeeds without privileges.
    fn own_ids() -> (u32, u32) {
        use std::os::unix::fs::MetadataExt as _;
        let f = tempfile::NamedTempFile::new().unwrap();
        let md = f.as_file().metadata().unwrap();
        (md.uid(), md.gid())
    }
}
