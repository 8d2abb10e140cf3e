//! The seed guide as data: `tests/fixtures/` (see the README, "Fixtures").

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::REPO;

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
