//! What a release looks like to the tests: stand-in binaries in a tarball
//! shaped like `kubernetes-server-linux-<arch>.tar.gz`, and a test recipe
//! pinning it. Stand-ins are used because release binaries cannot be
//! downloaded here; the shipped recipes keep the real upstream pins.

use std::fs;
use std::path::Path;

use sha2::{Digest, Sha256, Sha512};

use super::REPO;

/// The binaries a server tarball holds (and a recipe takes from it).
pub const BINARIES: [&str; 4] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
];

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

/// A server tarball of stand-ins of `size` bytes whose bytes depend on `seed`
/// (the workspaces' own tarball has the seed "").
pub fn stand_in_tarball(seed: &str, size: usize) -> Vec<u8> {
    let bins: Vec<(&str, Vec<u8>)> = BINARIES
        .iter()
        .map(|n| (*n, stand_in(&format!("{seed}{n}"), size)))
        .collect();
    server_tarball(&bins)
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
