//! Helpers for the hostile-input suites (`tests/hostile_*.rs`): what every
//! refusal must look like, bundles taken apart and put together again with
//! raw tar headers, gzip bombs, and watching the cache's temp folder while a
//! command runs.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::workspace::Workspace;

/// A refusal as the suite wants it: exit `code` (never 101, the panic code),
/// no "panicked" on stderr, every one of `says` in stderr, nothing in `out/`,
/// nothing unverified in the workspace's caches. Returns stderr.
pub fn assert_refused(ws: &Workspace, out: &Output, code: i32, says: &[&str]) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit code; stderr:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
    for s in says {
        assert!(stderr.contains(s), "stderr does not say {s:?}:\n{stderr}");
    }
    assert!(
        ws.files_under("out").is_empty(),
        "out/ holds {:?}",
        ws.files_under("out")
    );
    for cache in ["cache", "cache2"] {
        let left: Vec<_> = fs::read_dir(ws.path(cache).join("tmp"))
            .map(|rd| rd.map(|e| e.unwrap().file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{cache}/tmp holds {left:?}");
    }
    stderr
}

/// `cmd` run to the end, or killed after `limit` (then the test fails: a
/// hostile input must not make imgbuild run on and on).
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > limit {
            child.kill().unwrap();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still running after {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// Run `cmd` and return its output and the most bytes `tmp` (a cache's temp
/// folder) held at once while it ran: what a command unpacked before it knew
/// what it had.
pub fn peak_tmp(mut cmd: Command, tmp: &Path) -> (Output, u64) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak = 0;
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        let now: u64 = fs::read_dir(tmp)
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0);
        peak = peak.max(now);
        if start.elapsed() > Duration::from_secs(120) {
            child.kill().unwrap();
            panic!("still running after 120 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    (child.wait_with_output().unwrap(), peak)
}

/// A gzipped tar holding `member` as `size` zero bytes: a few hundred KiB
/// that expand a thousandfold. Made once per member and size per test binary.
pub fn gzip_bomb(member: &str, size: u64) -> Vec<u8> {
    type Made = Mutex<Vec<(String, u64, Vec<u8>)>>;
    static MADE: OnceLock<Made> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    if let Some((_, _, b)) = made.iter().find(|(m, s, _)| m == member && *s == size) {
        return b.clone();
    }
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o755);
    h.set_cksum();
    tar.append_data(&mut h, member, std::io::repeat(0).take(size))
        .unwrap();
    let bytes = tar.into_inner().unwrap().finish().unwrap();
    made.push((member.to_string(), size, bytes.clone()));
    bytes
}

/// A gzipped tar of these entries (name, bytes), in this order.
pub fn tarball_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, data) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        tar.append_data(&mut h, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// An uncompressed tar (a bundle) as a list of entries, to change and write
/// back with raw headers (the tar crate's builder refuses some hostile names,
/// which is the point).
#[derive(Clone)]
pub struct Bundle {
    pub entries: Vec<(String, Vec<u8>)>,
}

impl Bundle {
    pub fn read(path: &Path) -> Bundle {
        let mut entries = Vec::new();
        let mut ar = tar::Archive::new(fs::File::open(path).unwrap());
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let name = String::from_utf8_lossy(&e.path_bytes()).into_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            entries.push((name, data));
        }
        Bundle { entries }
    }

    /// Every entry whose name starts with `prefix`.
    pub fn named(&self, prefix: &str) -> Vec<String> {
        self.entries
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn get(&self, name: &str) -> &[u8] {
        &self.entries.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// The manifest as JSON, to change.
    pub fn manifest(&self) -> serde_json::Value {
        serde_json::from_slice(self.get("manifest.json")).unwrap()
    }

    /// Replace entry `name` (or add it last).
    pub fn set(&mut self, name: &str, data: Vec<u8>) -> &mut Self {
        match self.entries.iter_mut().find(|(n, _)| n == name) {
            Some(e) => e.1 = data,
            None => self.entries.push((name.into(), data)),
        }
        self
    }

    pub fn set_manifest(&mut self, m: &serde_json::Value) -> &mut Self {
        self.set("manifest.json", serde_json::to_vec_pretty(m).unwrap())
    }

    /// Change a text entry (recipe or layout) and record its new digest in
    /// the manifest, so that only the change itself is hostile.
    pub fn edit_text(&mut self, name: &str, f: impl FnOnce(String) -> String) -> &mut Self {
        let text = f(String::from_utf8(self.get(name).to_vec()).unwrap());
        self.rename_text(name, name, text)
    }

    /// Replace text entry `old` by `new` holding `text`, manifest included.
    pub fn rename_text(&mut self, old: &str, new: &str, text: String) -> &mut Self {
        let mut m = self.manifest();
        for f in m["files"].as_array_mut().unwrap() {
            if f["path"] == old {
                f["path"] = new.into();
                f["sha256"] = super::sha256_bytes(text.as_bytes()).into();
            }
        }
        self.set_manifest(&m);
        let e = self.entries.iter_mut().find(|(n, _)| n == old).unwrap();
        *e = (new.into(), text.into_bytes());
        self
    }

    /// Add a text entry, listed in the manifest.
    pub fn add_text(&mut self, name: &str, text: &str) -> &mut Self {
        let mut m = self.manifest();
        m["files"].as_array_mut().unwrap().push(serde_json::json!({
            "path": name,
            "sha256": super::sha256_bytes(text.as_bytes()),
            "origin": "test",
        }));
        self.set_manifest(&m);
        self.set(name, text.as_bytes().to_vec())
    }

    /// Replace the (first) artifact by `bytes`, named and listed by their
    /// sha256 as a bundle of a recipe pinning them would hold them.
    pub fn swap_artifact(&mut self, bytes: Vec<u8>) -> &mut Self {
        let old = self.named("artifacts/")[0].clone();
        let hex = super::sha256_bytes(&bytes);
        let mut m = self.manifest();
        let a = &mut m["artifacts"][0];
        a["path"] = format!("artifacts/sha256/{hex}").into();
        a["pin"] = format!("sha256:{hex}").into();
        a["size"] = bytes.len().into();
        self.set_manifest(&m);
        let e = self.entries.iter_mut().find(|(n, _)| *n == old).unwrap();
        *e = (format!("artifacts/sha256/{hex}"), bytes);
        self
    }

    /// The bundle's bytes, every entry a regular file with a raw header.
    pub fn bytes(&self) -> Vec<u8> {
        let mut t = tar::Builder::new(Vec::new());
        for (name, data) in &self.entries {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            let raw = name.as_bytes();
            if raw.len() > 100 {
                // Too long for a raw header: a GNU long name (only sane names get here).
                t.append_data(&mut h, name, &data[..]).unwrap();
                continue;
            }
            h.as_old_mut().name[..raw.len()].copy_from_slice(raw);
            h.set_cksum();
            t.append(&h, &data[..]).unwrap();
        }
        t.into_inner().unwrap()
    }

    pub fn write(&self, path: &Path) {
        fs::File::create(path)
            .unwrap()
            .write_all(&self.bytes())
            .unwrap();
    }
}
