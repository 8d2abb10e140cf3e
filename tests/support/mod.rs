//! Test support: a temporary workspace with an inventory, a PKI folder, stand-in
//! Kubernetes binaries in a release-shaped tarball, a test recipe pinning that
//! tarball (the shipped recipe with only the digests replaced), and a cache.
//!
//! Stand-ins are used because release binaries cannot be downloaded here; the
//! shipped recipes keep the real upstream pins.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sha2::{Digest, Sha256, Sha512};

pub const BIN: &str = env!("CARGO_BIN_EXE_imgbuild");
pub const REPO: &str = env!("CARGO_MANIFEST_DIR");
pub const BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

pub struct Workspace {
    pub tmp: tempfile::TempDir,
    pub version: String,
    pub arch: String,
}

/// The bundled example inventory with another version (and arch).
pub fn example_inventory(version: &str, arch: &str) -> String {
    let text = fs::read_to_string(Path::new(REPO).join("cluster.toml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("kubernetes_version") {
            out.push_str(&format!("kubernetes_version = \"{version}\"\n"));
        } else if line.starts_with("arch") {
            out.push_str(&format!("arch = \"{arch}\"\n"));
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// Deterministic bytes standing in for a binary (an ELF-looking shell script is
/// not needed: nothing executes them outside the boot tests).
pub fn stand_in(name: &str, size: usize) -> Vec<u8> {
    let mut out = format!("#!/bin/sh\n# stand-in for {name}\nexec sleep infinity\n").into_bytes();
    let mut block = Sha256::digest(name.as_bytes()).to_vec();
    while out.len() < size {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(size);
    out
}

/// A gzipped tar shaped like `kubernetes-server-linux-<arch>.tar.gz`.
pub fn server_tarball(binaries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    for (name, bytes) in binaries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(1_500_000_000);
        h.set_cksum();
        tar.append_data(&mut h, format!("kubernetes/server/bin/{name}"), &bytes[..])
            .unwrap();
    }
    // Release tarballs hold more than we take.
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "kubernetes/LICENSES", &b"MIT\n\n"[..])
        .unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// Rewrite a shipped recipe so that every artifact's pin for `arch` is the
/// digest of `tarball` (in the recipe's own algorithm).
pub fn test_recipe(version: &str, arch: &str, tarball: &[u8]) -> String {
    let path = Path::new(REPO).join(format!("recipes/kubernetes-{version}.toml"));
    let mut recipe: toml::Value = toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    for a in recipe["artifacts"].as_array_mut().unwrap() {
        let digest = match a["algorithm"].as_str().unwrap() {
            "sha256" => hex::encode(Sha256::digest(tarball)),
            "sha512" => hex::encode(Sha512::digest(tarball)),
            other => panic!("algorithm {other}"),
        };
        a["digests"]
            .as_table_mut()
            .unwrap()
            .insert(arch.into(), digest.into());
        a["trust"] = "local".into();
    }
    toml::to_string(&recipe).unwrap()
}

impl Workspace {
    /// Inventory, PKI, test recipe and a cache holding the stand-ins, for `version`.
    pub fn new(version: &str) -> Workspace {
        Self::with_binaries(version, "amd64", 64 * 1024)
    }

    pub fn with_binaries(version: &str, arch: &str, size: usize) -> Workspace {
        let ws = Self::not_imported(version, arch, size);
        ws.ok(&["cache", "import", "kubernetes-server-linux-amd64.tar.gz"]
            .map(|s| s.replace("amd64", arch)));
        ws
    }

    /// Inventory, PKI, the stand-in tarball and a recipe pinning it; nothing in the cache.
    pub fn not_imported(version: &str, arch: &str, size: usize) -> Workspace {
        let ws = Self::bare(version, arch);
        let bins: Vec<(&str, Vec<u8>)> = BINARIES.iter().map(|n| (*n, stand_in(n, size))).collect();
        ws.add_tarball(&bins);
        ws
    }

    /// Like `new`, but with the fixed PKI of `tests/fixtures/pki/<version>/`
    /// instead of a fresh one, so that every output byte is known in advance.
    pub fn fixed_pki(version: &str) -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("cluster.toml"),
            example_inventory(version, "amd64"),
        )
        .unwrap();
        let ws = Workspace {
            tmp,
            version: version.into(),
            arch: "amd64".into(),
        };
        let src = Path::new(REPO).join("tests/fixtures/pki").join(version);
        fs::create_dir_all(ws.path("pki")).unwrap();
        for f in files_under(&src) {
            let to = ws.path("pki").join(&f);
            fs::copy(src.join(&f), &to).unwrap();
            if !f.ends_with(".pem") || f.ends_with("-key.pem") {
                use std::os::unix::fs::PermissionsExt;
                fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
        let bins: Vec<(&str, Vec<u8>)> = BINARIES
            .iter()
            .map(|n| (*n, stand_in(n, 64 * 1024)))
            .collect();
        ws.add_tarball(&bins);
        ws.ok(&["cache", "import", "kubernetes-server-linux-amd64.tar.gz"]);
        ws
    }

    /// Inventory and PKI only; no recipe, no cache.
    pub fn bare(version: &str, arch: &str) -> Workspace {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("cluster.toml"),
            example_inventory(version, arch),
        )
        .unwrap();
        let ws = Workspace {
            tmp,
            version: version.into(),
            arch: arch.into(),
        };
        ws.make_pki();
        ws
    }

    /// Write the server tarball and a recipe pinning it.
    pub fn add_tarball(&self, bins: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let tarball = server_tarball(bins);
        let name = format!("kubernetes-server-linux-{}.tar.gz", self.arch);
        fs::write(self.path(&name), &tarball).unwrap();
        fs::create_dir_all(self.path("recipes")).unwrap();
        fs::write(
            self.path(&format!("recipes/kubernetes-{}.toml", self.version)),
            test_recipe(&self.version, &self.arch, &tarball),
        )
        .unwrap();
        tarball
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The PKI as the seed expects it, made by `imgbuild pki init` (a real CA,
    /// so consumers like nginx can load it; the build refuses a PKI that does
    /// not fit the inventory).
    pub fn make_pki(&self) {
        let out = Command::new(BIN)
            .args(["pki", "init", "--inventory"])
            .arg(self.path("cluster.toml"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "imgbuild pki init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The imgbuild command, run in the workspace with its cache and recipes.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir())
            .env("IMGBUILD_CACHE", self.path("cache"))
            .env("IMGBUILD_RECIPES", self.path("recipes"))
            .env_remove("SOURCE_DATE_EPOCH")
            // `controller` fetches what the cache lacks unless offline: these
            // tests must never reach for dl.k8s.io (tests/fetch.rs uses a
            // loopback mirror for downloads).
            .env("IMGBUILD_OFFLINE", "1")
            .env_remove("IMGBUILD_MIRROR")
            .env("NO_PROXY", "*")
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy");
        c
    }

    pub fn run<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "imgbuild {:?} failed ({}):\n{}",
            args.iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run and require failure with `code`; returns stderr.
    pub fn fails<S: AsRef<std::ffi::OsStr>>(&self, args: &[S], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "expected exit {code}; stderr:\n{stderr}"
        );
        stderr
    }

    /// Files (relative paths) under `rel`, recursively, sorted.
    pub fn files_under(&self, rel: &str) -> Vec<String> {
        files_under(&self.path(rel))
    }
}

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

pub fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(fs::read(p).unwrap()))
}

/// One of the seed guide's systemd units, from `tests/fixtures/seed/units.toml`.
#[derive(serde::Deserialize)]
pub struct SeedUnit {
    pub path: String,
    pub command: String,
    /// `name=value`, in the guide's order, shell variables as the guide writes them.
    pub flags: Vec<String>,
    /// Every line but ExecStart, blank lines dropped.
    pub other_lines: Vec<String>,
}

impl SeedUnit {
    /// The flags as `imgbuild::input::unit::exec_start` returns them, with the
    /// guide's variables filled in for a node at `node_ip` and etcd on `etcd`.
    pub fn flags_for(&self, node_ip: &str, etcd: &[&str]) -> Vec<(String, Option<String>)> {
        self.flags
            .iter()
            .map(|f| {
                let mut v = f.replace("${INTERNAL_IP}", node_ip);
                for (i, ip) in etcd.iter().enumerate() {
                    v = v.replace(&format!("${{NODE{}_INTERNAL_IP}}", i + 1), ip);
                }
                match v.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (v, None),
                }
            })
            .collect()
    }
}

/// A fixture file under `tests/fixtures/`.
pub fn fixture(rel: &str) -> String {
    let p = Path::new(REPO).join("tests/fixtures").join(rel);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// The seed guide's units by name (`kube-apiserver`, ...).
pub fn seed_units() -> BTreeMap<String, SeedUnit> {
    #[derive(serde::Deserialize)]
    struct Units {
        units: BTreeMap<String, SeedUnit>,
    }
    let units: Units = toml::from_str(&fixture("seed/units.toml")).expect("seed/units.toml");
    assert_eq!(units.units.len(), 3, "the seed has three units");
    units.units
}

/// The seed's two RBAC objects, in the order it applies them.
pub fn seed_rbac() -> [String; 2] {
    [
        fixture("seed/rbac-kube-apiserver-to-kubelet.yaml"),
        fixture("seed/rbac-kube-apiserver-binding.yaml"),
    ]
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}
