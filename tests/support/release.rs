//! What a release looks like to the tests: stand-in binaries in a tarball
//! shaped like `kubernetes-server-linux-<arch>.tar.gz`, etcd's in one shaped
//! like `etcd-v<etcd>-linux-<arch>.tar.gz`, and a test recipe pinning both.
//! Stand-ins are used because release binaries cannot be downloaded here;
//! the shipped recipes keep the real upstream pins.

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

/// The etcd release the shipped recipe of `version` carries (`v3.6.5`); for a
/// version without one, what `imgbuild lock` picks: the shipped recipe's of
/// the nearest minor (the newer of two as near).
pub fn etcd_version(version: &str) -> String {
    let minor = |v: &str| -> u32 { v.split('.').nth(1).unwrap().parse().unwrap() };
    let mut best: Option<(u32, u32, String)> = None;
    for (v, recipe) in shipped_recipes() {
        let v = v.as_str();
        let etcd = recipe["etcd_version"].as_str().unwrap().to_string();
        if v == version {
            return etcd;
        }
        let d = minor(v).abs_diff(minor(version));
        if best
            .as_ref()
            .is_none_or(|(bd, bm, _)| d < *bd || (d == *bd && minor(v) > *bm))
        {
            best = Some((d, minor(v), etcd));
        }
    }
    best.unwrap().2
}

/// Every shipped recipe (`recipes/kubernetes-<version>.toml`): its version and text.
pub fn shipped_recipes() -> Vec<(String, toml::Value)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(Path::new(REPO).join("recipes")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if let Some(v) = name
            .strip_prefix("kubernetes-")
            .and_then(|n| n.strip_suffix(".toml"))
        {
            let recipe = toml::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
            out.push((v.to_string(), recipe));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The binaries etcd's tarball holds for `etcd` (`etcdutl` from 3.5 on).
pub fn etcd_binaries(etcd: &str) -> Vec<&'static str> {
    let minor: u32 = etcd
        .trim_start_matches("v3.")
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let mut out = vec!["etcd", "etcdctl"];
    if minor >= 5 {
        out.push("etcdutl");
    }
    out
}

/// `etcd-<etcd>-linux-<arch>.tar.gz`
pub fn etcd_tarball_name(etcd: &str, arch: &str) -> String {
    format!("etcd-{etcd}-linux-{arch}.tar.gz")
}

/// A gzipped tar shaped like etcd's release tarball for `etcd` and `arch`.
pub fn etcd_tarball(etcd: &str, arch: &str, binaries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let top = format!("etcd-{etcd}-linux-{arch}");
    let mut extra = vec![("README.md", b"etcd\n".to_vec())];
    extra.extend(binaries.iter().map(|(n, b)| (*n, b.clone())));
    for (name, bytes) in extra {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(if name == "README.md" { 0o644 } else { 0o755 });
        h.set_mtime(1_500_000_000);
        h.set_cksum();
        tar.append_data(&mut h, format!("{top}/{name}"), &bytes[..])
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// etcd stand-ins of `size` bytes for `etcd`, their bytes depending on `seed`.
pub fn etcd_stand_ins(etcd: &str, seed: &str, size: usize) -> Vec<(&'static str, Vec<u8>)> {
    etcd_binaries(etcd)
        .into_iter()
        .map(|n| (n, stand_in(&format!("{seed}{n}"), size)))
        .collect()
}

/// Rewrite a shipped recipe so that every artifact's pin for `arch` is the
/// digest of `tarball` (in the recipe's own algorithm), etcd's that of
/// `etcd` (its tarball).
pub fn test_recipe(version: &str, arch: &str, tarball: &[u8], etcd: &[u8]) -> String {
    let path = Path::new(REPO).join(format!("recipes/kubernetes-{version}.toml"));
    let mut recipe: toml::Value = toml::from_str(&fs::read_to_string(path).unwrap()).unwrap();
    for a in recipe["artifacts"].as_array_mut().unwrap() {
        let tarball = if a["name"].as_str() == Some("etcd") {
            etcd
        } else {
            tarball
        };
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
