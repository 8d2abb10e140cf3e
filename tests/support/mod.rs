//! Test support, shared by every integration test: the one [`Workspace`]
//! (inventory, PKI, stand-in release, recipes, cache, mirror, a scrubbed
//! environment and `run`/`ok`/`fails`), the stand-in release, the seed
//! guide's fixtures, a loopback mirror, and small helpers.

#![allow(dead_code)]

pub mod hostile;
pub mod http_mirror;
mod release;
mod seed;
mod workspace;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

// Each test binary uses a part of these.
#[allow(unused_imports)]
pub use release::{
    BINARIES, etcd_binaries, etcd_stand_ins, etcd_tarball, etcd_tarball_name, etcd_version,
    example_inventory, server_tarball, shipped_recipes, stand_in, stand_in_tarball, test_recipe,
};
#[allow(unused_imports)]
pub use seed::{SeedUnit, fixture, seed_rbac, seed_units};
#[allow(unused_imports)]
pub use workspace::{Builder, Workspace, assert_no_secret};

pub const BIN: &str = env!("CARGO_BIN_EXE_imgbuild");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Files and symlinks (paths relative to `root`) under `root`, recursively, sorted.
pub fn files_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(root, root, &mut out);
    out.sort();
    out
}

/// One entry of a tree as found on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: &'static str,
    pub mode: u32,
    pub owner: (u32, u32),
    /// sha256 of a file, target of a symlink.
    pub what: String,
}

/// Every entry under `root` (relative paths), recursively.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let (kind, what) = if m.file_type().is_symlink() {
                ("symlink", fs::read_link(&p).unwrap().display().to_string())
            } else if m.is_dir() {
                ("dir", String::new())
            } else {
                ("file", sha256_file(&p))
            };
            let mode = if kind == "symlink" {
                0o777
            } else {
                m.mode() & 0o7777
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode,
                    owner: (m.uid(), m.gid()),
                    what,
                },
            );
            if kind == "dir" {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Run a command, require success, return stdout.
pub fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `find` listing of a tree: type and mode, owner, path, link target.
pub fn tree_listing(root: &Path) -> String {
    sh(Command::new("find")
        .arg(".")
        .args(["-printf", "%M %U:%G %p %l\n"])
        .current_dir(root))
    .lines()
    .filter(|l| !l.ends_with(" . "))
    .map(|l| format!("{l}\n"))
    .collect()
}

/// GNU tar extracts the gzipped `archive` into the folder `into`.
pub fn untar(archive: &Path, into: &Path) {
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into));
}

/// Everything a process printed: stdout, then stderr.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `cmd` (its program, arguments, environment and folder) run through
/// `prefix`, e.g. `["unshare", "-n"]`, or `["sh", "-c", "umask 077; exec \"$0\" \"$@\""]`.
pub fn wrapped(prefix: &[&str], cmd: &Command) -> Command {
    let mut c = Command::new(prefix[0]);
    c.args(&prefix[1..])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    if let Some(dir) = cmd.get_current_dir() {
        c.current_dir(dir);
    }
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

/// Give controller-1 of the workspace's example inventory a static network
/// (ens3, 10.240.0.11/24 via 10.240.0.1, two DNS servers).
pub fn add_static_network(ws: &Workspace) {
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    let inv = inv.replace(
        "internal_ip = \"10.240.0.11\"\n",
        "internal_ip = \"10.240.0.11\"\ninterface = \"ens3\"\nprefix = 24\ngateway = \"10.240.0.1\"\ndns = [\"10.240.0.2\", \"10.240.0.3\"]\n",
    );
    fs::write(ws.path("cluster.toml"), inv).unwrap();
}

/// `systemd-analyze verify` of `units` against the tree at `root`.
pub fn systemd_verify(root: &Path, units: &[PathBuf]) -> Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .unwrap()
}

/// `systemd-analyze verify` accepts `units` in the tree at `root` without a
/// word; a failure's message starts with `context`.
pub fn assert_systemd_verifies(root: &Path, units: &[PathBuf], context: &str) {
    let out = systemd_verify(root, units);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{context}systemd-analyze verify: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `cloud-init schema` accepts the (plain YAML) user-data.
pub fn cloud_init_schema_ok(user_data: &Path) {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(user_data)
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        out.status.success() && said.contains("Valid cloud-config"),
        "{said}"
    );
}

pub fn sha256_file(p: &Path) -> String {
    sha256_bytes(&fs::read(p).unwrap())
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
