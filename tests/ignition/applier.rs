//! A small Ignition applier: what Ignition's files stage (2.14,
//! `internal/exec/stages/files`) makes of the configs imgbuild writes, on an
//! empty root. Folders (by depth) with their modes and owners, then files
//! (data URLs decoded, gunzipped), links, then units: each unit's contents at
//! /etc/systemd/system/NAME (0644), and every enabled unit as a line
//! `enable NAME` of /etc/systemd/system-preset/20-ignition.preset, which is
//! how Ignition enables units (no `.wants` symlinks); in the config's order,
//! where Ignition's own order is that of a Go map's range. Parents that no entry
//! lists are made 0755, root. Remote files are not fetched: they are returned,
//! with their source and verification hash, for the test to check.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::Value;

/// Where Ignition writes its preset for `enabled: true`.
pub const PRESET: &str = "etc/systemd/system-preset/20-ignition.preset";

/// A file the config fetches from a URL.
#[derive(Debug, Clone)]
pub struct Remote {
    /// Relative path in the root.
    pub path: String,
    pub source: String,
    /// `verification.hash`, e.g. `sha256-...`.
    pub hash: Option<String>,
    pub mode: u32,
    pub owner: (u32, u32),
}

fn is_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&fs::metadata("/proc/self").unwrap()) == 0
}

fn rel(path: &str) -> &str {
    assert!(path.starts_with('/'), "path not absolute: {path}");
    &path[1..]
}

fn owner(v: &Value, what: &str) -> u32 {
    match &v[what] {
        Value::Null => 0,
        o => o["id"]
            .as_u64()
            .unwrap_or_else(|| panic!("{what} is not by id: {o}")) as u32,
    }
}

fn mode(v: &Value, default: u32) -> u32 {
    v["mode"].as_u64().map_or(default, |m| m as u32)
}

/// `mkdir -p` with 0755 root for every folder made.
fn parents(root: &Path, rel_path: &str) {
    let mut p = root.to_path_buf();
    let parts: Vec<&str> = rel_path.split('/').collect();
    for c in &parts[..parts.len() - 1] {
        p.push(c);
        if !p.exists() {
            fs::create_dir(&p).unwrap();
            set(&p, 0o755, (0, 0));
        }
    }
}

fn set(p: &Path, mode: u32, (uid, gid): (u32, u32)) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
    if is_root() {
        std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    }
}

fn decode(contents: &Value) -> Vec<u8> {
    let source = contents["source"].as_str().unwrap();
    let b64 = source
        .strip_prefix("data:;base64,")
        .unwrap_or_else(|| panic!("not a base64 data URL: {source}"));
    let bytes = BASE64.decode(b64).unwrap();
    match contents["compression"].as_str() {
        None => bytes,
        Some("gzip") => {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        }
        Some(other) => panic!("compression {other}"),
    }
}

/// Apply `config` to the empty folder `root`; returns the remote files.
pub fn apply(config: &Value, root: &Path) -> Vec<Remote> {
    assert_eq!(fs::read_dir(root).unwrap().count(), 0, "root not empty");
    let storage = &config["storage"];
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut dirs = list(&storage["directories"]);
    // Ignition sorts folders by depth (stable), so /a is made before /a/b.
    dirs.sort_by_key(|d| d["path"].as_str().unwrap().matches('/').count());
    for d in &dirs {
        let path = rel(d["path"].as_str().unwrap());
        parents(root, path);
        let p = root.join(path);
        if !p.is_dir() {
            fs::create_dir(&p).unwrap();
        }
        set(&p, mode(d, 0o755), (owner(d, "user"), owner(d, "group")));
    }
    let mut remote = Vec::new();
    for f in list(&storage["files"]) {
        let path = rel(f["path"].as_str().unwrap());
        let (m, o) = (mode(&f, 0o644), (owner(&f, "user"), owner(&f, "group")));
        let source = f["contents"]["source"].as_str().unwrap();
        if !source.starts_with("data:") {
            remote.push(Remote {
                path: path.to_string(),
                source: source.to_string(),
                hash: f["contents"]["verification"]["hash"]
                    .as_str()
                    .map(String::from),
                mode: m,
                owner: o,
            });
            continue;
        }
        assert_eq!(f["overwrite"], true, "{path}");
        parents(root, path);
        let p = root.join(path);
        fs::write(&p, decode(&f["contents"])).unwrap();
        set(&p, m, o);
    }
    for l in list(&storage["links"]) {
        let path = rel(l["path"].as_str().unwrap());
        parents(root, path);
        std::os::unix::fs::symlink(l["target"].as_str().unwrap(), root.join(path)).unwrap();
    }
    for u in list(&config["systemd"]["units"]) {
        let name = u["name"].as_str().unwrap();
        if let Some(text) = u["contents"].as_str() {
            let path = format!("etc/systemd/system/{name}");
            parents(root, &path);
            let p = root.join(&path);
            fs::write(&p, text).unwrap();
            set(&p, 0o644, (0, 0));
        }
        if u["enabled"] == true {
            parents(root, PRESET);
            let p = root.join(PRESET);
            let mut f = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&p)
                .unwrap();
            writeln!(f, "enable {name}").unwrap();
            set(&p, 0o644, (0, 0));
        }
    }
    remote
}
