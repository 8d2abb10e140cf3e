//! The cluster inventory (`cluster.toml`): what differs between clusters and nodes.
//!
//! Everything that reaches a unit file is validated here, before rendering, so
//! nothing from the inventory can inject a newline or an extra flag.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::component::COMPONENTS;
pub use crate::input::control_plane::{ApiServer, ControllerManager, RbacBootstrap, Scheduler};
use crate::input::recipe::Version;
use crate::util::digest::sha256_hex;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub cluster: Cluster,
    pub controllers: Vec<Controller>,
    /// Where the cluster's etcd runs (`[etcd]`): on every controller (default).
    #[serde(default)]
    pub etcd: crate::input::etcd::Etcd,
    #[serde(default)]
    pub apiserver: ApiServer,
    #[serde(default)]
    pub controller_manager: ControllerManager,
    #[serde(default)]
    pub scheduler: Scheduler,
    #[serde(default)]
    pub rbac_bootstrap: RbacBootstrap,

    /// The file this was read from; relative paths inside resolve against its folder.
    #[serde(skip)]
    pub path: PathBuf,
    /// sha256 of the file's bytes, recorded in build manifests.
    #[serde(skip)]
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    pub name: String,
    pub kubernetes_version: String,
    pub arch: String,
    pub public_address: String,
    pub service_cluster_ip_range: String,
    pub cluster_cidr: String,
    pub service_node_port_range: String,
    pub pki_dir: PathBuf,
    /// Defaults to `https://<internal_ip>:2379` of every controller, as in the seed.
    #[serde(default)]
    pub etcd_servers: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controller {
    pub name: String,
    pub internal_ip: String,
    /// Static network configuration (cloud-init network-config); all or none.
    #[serde(default)]
    pub interface: Option<String>,
    #[serde(default)]
    pub prefix: Option<u8>,
    #[serde(default)]
    pub gateway: Option<String>,
    #[serde(default)]
    pub dns: Vec<String>,
    /// `existing` for a controller added to a running etcd cluster (after
    /// `etcdctl member add`); `new` (the default) when the cluster is made.
    #[serde(
        default,
        skip_serializing_if = "crate::input::etcd::ClusterState::is_new"
    )]
    pub initial_cluster_state: crate::input::etcd::ClusterState,
}

pub const ARCHES: &[&str] = &["amd64", "arm64"];

impl Inventory {
    /// Read, parse and validate an inventory file.
    pub fn load(path: &Path) -> Result<Inventory> {
        let bytes = std::fs::read(path).map_err(|e| {
            let hint = if e.kind() == std::io::ErrorKind::NotFound {
                " (pass --inventory FILE, or run from a folder holding cluster.toml)"
            } else {
                ""
            };
            Error::input(format!(
                "cannot read inventory {}: {e}{hint}",
                path.display()
            ))
        })?;
        let text = String::from_utf8(bytes.clone())
            .map_err(|_| Error::input(format!("inventory {} is not UTF-8 text", path.display())))?;
        let mut inv: Inventory = toml::from_str(&text).map_err(|e| {
            Error::input(format!(
                "inventory {}: {}",
                path.display(),
                crate::error::clip_lines(&e.to_string())
            ))
        })?;
        inv.path = path.to_path_buf();
        inv.sha256 = sha256_hex(&bytes);
        inv.validate()
            .map_err(|e| e.context(format!("inventory {}", path.display())))?;
        Ok(inv)
    }

    /// Folder the inventory lives in (relative paths resolve against it).
    pub fn base_dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.base_dir().join(&self.cluster.pki_dir)
    }

    /// etcd endpoints: explicit, or one per controller as in the seed.
    pub fn etcd_servers(&self) -> Vec<String> {
        if self.cluster.etcd_servers.is_empty() {
            crate::input::etcd::local_endpoints(self)
        } else {
            self.cluster.etcd_servers.clone()
        }
    }

    /// Resolve `--node`: a 1-based index or a controller name.
    pub fn node(&self, selector: &str) -> Result<(usize, &Controller)> {
        let n = self.controllers.len();
        if let Ok(index) = selector.parse::<usize>() {
            if index == 0 || index > n {
                return Err(Error::input(format!(
                    "--node {index}: the inventory {} has {n} controller(s); nodes are numbered 1 to {n}",
                    self.path.display()
                )));
            }
            return Ok((index, &self.controllers[index - 1]));
        }
        self.controllers
            .iter()
            .enumerate()
            .find(|(_, c)| c.name == selector)
            .map(|(i, c)| (i + 1, c))
            .ok_or_else(|| {
                let names: Vec<_> = self.controllers.iter().map(|c| c.name.as_str()).collect();
                Error::input(format!(
                    "--node {:?}: no controller of that name in {}; there are: {}",
                    crate::error::clip(selector),
                    self.path.display(),
                    names.join(", ")
                ))
            })
    }

    /// The first address of the service range: the `kubernetes` service's ClusterIP.
    pub fn service_ip(&self) -> Result<IpAddr> {
        let range = &self.cluster.service_cluster_ip_range;
        let (net, prefix) = parse_cidr(range)
            .map_err(|e| Error::input(format!("cluster.service_cluster_ip_range: {e}")))?;
        // The first address after the network's; a /32 (or /128) has none.
        let first = match net {
            IpAddr::V4(v4) if prefix < 32 => {
                u32::from(v4).checked_add(1).map(|a| IpAddr::V4(a.into()))
            }
            IpAddr::V6(v6) if prefix < 128 => {
                u128::from(v6).checked_add(1).map(|a| IpAddr::V6(a.into()))
            }
            _ => None,
        };
        first.ok_or_else(|| {
            Error::input(format!(
                "cluster.service_cluster_ip_range = {:?}: leaves no address for the kubernetes service (the range's first address); use a larger range, e.g. \"10.32.0.0/24\"",
                crate::error::clip(range)
            ))
        })
    }

    fn validate(&self) -> Result<()> {
        let c = &self.cluster;
        dns_label("cluster.name", &c.name)?;
        if !ARCHES.contains(&c.arch.as_str()) {
            return Err(Error::input(format!(
                "cluster.arch = {:?}: must be one of {}",
                crate::error::clip(&c.arch),
                ARCHES.join(", ")
            )));
        }
        version("cluster.kubernetes_version", &c.kubernetes_version)?;
        address("cluster.public_address", &c.public_address)?;
        cidr(
            "cluster.service_cluster_ip_range",
            &c.service_cluster_ip_range,
        )?;
        self.service_ip()?;
        cidr("cluster.cluster_cidr", &c.cluster_cidr)?;
        port_range(
            "cluster.service_node_port_range",
            &c.service_node_port_range,
        )?;
        if c.pki_dir.as_os_str().is_empty() {
            return Err(Error::input(
                "cluster.pki_dir is empty: name the folder holding the certificates",
            ));
        }
        for (i, url) in c.etcd_servers.iter().enumerate() {
            etcd_url(&format!("cluster.etcd_servers[{i}]"), url)?;
        }

        if self.controllers.is_empty() {
            return Err(Error::input(
                "no [[controllers]]: add one table per controller with name and internal_ip",
            ));
        }
        let mut names = BTreeSet::new();
        let mut ips = BTreeSet::new();
        for (i, ctl) in self.controllers.iter().enumerate() {
            let at = format!("controllers[{}] ({})", i + 1, crate::error::clip(&ctl.name));
            dns_label(&format!("{at}.name"), &ctl.name)?;
            ip(&format!("{at}.internal_ip"), &ctl.internal_ip)?;
            if !names.insert(&ctl.name) {
                return Err(Error::input(format!(
                    "{at}.name: controller name {:?} appears twice; names must be unique",
                    ctl.name
                )));
            }
            let canonical: IpAddr = ctl.internal_ip.parse().expect("validated above");
            if !ips.insert(canonical) {
                return Err(Error::input(format!(
                    "{at}.internal_ip: {} is used by another controller; addresses must be unique",
                    ctl.internal_ip
                )));
            }
            crate::input::network::Network::of(ctl).map_err(|e| e.context(&at))?;
        }
        for c in COMPONENTS {
            for (k, v) in c.extra_args(self) {
                extra_arg(&format!("{}.extra_args", c.section), k, v)?;
            }
        }
        crate::input::control_plane::validate(self)?;
        self.etcd.validate(self)
    }
}

/// An IPv6 address needs brackets inside a URL.
pub fn url_host(ip: &str) -> String {
    if ip.contains(':') {
        format!("[{ip}]")
    } else {
        ip.to_string()
    }
}

fn ip(field: &str, value: &str) -> Result<()> {
    let ok = value.parse::<IpAddr>().is_ok();
    require(ok, field, value, "not an IP address (e.g. \"10.240.0.11\")")
}

/// An IP address or a DNS name (the load balancer may have either).
fn address(field: &str, value: &str) -> Result<()> {
    let name = !value.is_empty()
        && value.len() <= 253
        && value
            .split('.')
            .all(|l| is_dns_label(&l.to_ascii_lowercase()));
    let ok = name || value.parse::<IpAddr>().is_ok();
    require(ok, field, value, "not an IP address or DNS name")
}

/// Parse `addr/prefix`; host bits must be zero.
pub fn parse_cidr(value: &str) -> std::result::Result<(IpAddr, u8), String> {
    let (addr, prefix) = value
        .split_once('/')
        .ok_or("not a CIDR (expected address/prefix, e.g. \"10.32.0.0/24\")")?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|_| format!("{:?} is not an IP address", crate::error::clip(addr)))?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = prefix.parse().ok().filter(|p| *p <= max).ok_or(format!(
        "prefix {:?} must be a number from 0 to {max}",
        crate::error::clip(prefix)
    ))?;
    let host_bits_set = match addr {
        IpAddr::V4(v4) => prefix < 32 && u32::from(v4) & (u32::MAX >> prefix) != 0,
        IpAddr::V6(v6) => prefix < 128 && u128::from(v6) & (u128::MAX >> prefix) != 0,
    };
    if host_bits_set {
        return Err(format!(
            "{} has host bits set; use the network address",
            crate::error::clip(value)
        ));
    }
    Ok((addr, prefix))
}

fn cidr(field: &str, value: &str) -> Result<()> {
    parse_cidr(value)
        .map(|_| ())
        .map_err(|e| Error::input(format!("{field} = {:?}: {e}", crate::error::clip(value))))
}

fn port_range(field: &str, value: &str) -> Result<()> {
    let parsed = value.split_once('-').and_then(|(a, b)| {
        let a: u16 = a.parse().ok()?;
        let b: u16 = b.parse().ok()?;
        (a >= 1 && a <= b).then_some(())
    });
    let expected = "not a port range (expected FIRST-LAST with 1 <= FIRST <= LAST <= 65535, e.g. \"30000-32767\")";
    require(parsed.is_some(), field, value, expected)
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn dns_label(field: &str, value: &str) -> Result<()> {
    let expected = "not a DNS label (lowercase letters, digits and '-', at most 63, not starting or ending with '-')";
    require(is_dns_label(value), field, value, expected)
}

fn version(field: &str, value: &str) -> Result<()> {
    // Version::parse refuses parts that do not fit, so no later step can overflow.
    let ok = Version::parse(value).is_some() && !value.contains('+');
    require(
        ok,
        field,
        value,
        "not a Kubernetes release version (e.g. \"v1.10.2\")",
    )
}

fn etcd_url(field: &str, value: &str) -> Result<()> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    let ok = rest.is_some_and(|r| {
        !r.is_empty()
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]_".contains(&b))
    });
    require(
        ok,
        field,
        value,
        "not an etcd URL (e.g. \"https://10.240.0.10:2379\")",
    )
}

/// `Ok` when `ok`, else an error naming the field and the value it refused
/// (cut to a sensible length) and what was expected.
fn require(ok: bool, field: &str, value: &str, expected: &str) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::input(format!(
            "{field} = {:?}: {expected}",
            crate::error::clip(value)
        )))
    }
}

/// Characters that systemd or a shell would give a meaning to, or that would
/// split one argument into two.
fn safe_arg_value(v: &str) -> bool {
    v.chars().all(|c| {
        !c.is_whitespace()
            && !c.is_control()
            && !matches!(c, '"' | '\'' | '\\' | '%' | '$' | ';' | '`')
    })
}

fn extra_arg(section: &str, key: &str, value: &str) -> Result<()> {
    let key_ok = !key.is_empty()
        && !key.starts_with('-')
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !key_ok {
        return Err(Error::input(format!(
            "[{section}] key {:?}: a flag name without the leading -- (lowercase letters, digits, '-')",
            crate::error::clip(key)
        )));
    }
    if !safe_arg_value(value) {
        return Err(Error::input(format!(
            "[{section}] {key} = {:?}: values may not hold spaces, quotes, backslashes, '%', '$', ';' or control characters",
            crate::error::clip(value)
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid inventory (v1.10.2, two controllers), for tests here and elsewhere.
    /// (Its first line is a comment: `syntax_errors_give_the_line` counts it.)
    pub(crate) const GOOD: &str = include_str!("../../tests/fixtures/two-controllers.toml");

    /// `text` written to a temporary cluster.toml and loaded.
    pub(crate) fn load(text: &str) -> Result<Inventory> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        Inventory::load(&path)
    }

    #[test]
    fn defaults_and_selection() {
        let inv = load(GOOD).unwrap();
        assert_eq!(
            inv.etcd_servers(),
            ["https://10.240.0.11:2379", "https://10.240.0.12:2379"]
        );
        assert_eq!(inv.node("2").unwrap().1.name, "controller-2");
        assert_eq!(inv.node("controller-1").unwrap().0, 1);
        assert!(inv.node("0").unwrap_err().to_string().contains("1 to 2"));
        assert!(inv.node("3").is_err());
        assert!(
            inv.node("ctl")
                .unwrap_err()
                .to_string()
                .contains("controller-1, controller-2")
        );
        assert_eq!(inv.service_ip().unwrap().to_string(), "10.32.0.1");
    }

    fn bad(from: &str, to: &str, expect: &str) {
        let text = GOOD.replacen(from, to, 1);
        assert_ne!(text, GOOD, "replacement {from:?} did not apply");
        let err = load(&text).unwrap_err().to_string();
        assert!(err.contains(expect), "{err:?} does not contain {expect:?}");
        assert!(
            err.contains("cluster.toml"),
            "{err:?} does not name the file"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        bad(
            "10.240.0.11\"",
            "10.240.0.300\"",
            "controllers[1] (controller-1).internal_ip",
        );
        bad("10.32.0.0/24", "10.32.0.0/33", "service_cluster_ip_range");
        bad("10.200.0.0/16", "10.200.0.1/16", "host bits");
        bad("30000-32767", "32767-30000", "service_node_port_range");
        bad("30000-32767", "0-10", "port range");
        bad("\"controller-2\"", "\"controller-1\"", "appears twice");
        bad("10.240.0.12", "10.240.0.11", "used by another controller");
        bad(
            "name = \"kubernetes\"",
            "name = \"Kube rnetes\"",
            "cluster.name",
        );
        bad("arch = \"amd64\"", "arch = \"x86\"", "cluster.arch");
        bad("v1.10.2", "1.10", "kubernetes_version");
        bad("pki_dir", "pki_folder", "unknown field");
        bad("[[controllers]]", "[[controller]]", "unknown field");
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let err = load(&GOOD.replace("arch = \"amd64\"", "arch = amd64"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 5"), "{err}");
    }

    #[test]
    fn extra_args_cannot_inject() {
        for (k, v) in [
            ("v", "2\nExecStartPre=/bin/sh"),
            ("v", "2 --insecure-port=8080"),
            ("--v", "2"),
            ("V", "2"),
            ("feature-gates", "A=true;rm"),
        ] {
            let text = format!("{GOOD}\n[apiserver.extra_args]\n{k:?} = {v:?}\n");
            let err = load(&text).unwrap_err().to_string();
            assert!(err.contains("apiserver.extra_args"), "{err}");
        }
        let ok = format!("{GOOD}\n[apiserver.extra_args]\nfeature-gates = \"A=true,B=false\"\n");
        load(&ok).unwrap();
    }

    /// Values that used to overflow (a panic in debug builds, a silent wrap in
    /// release) are refused with the field named.
    #[test]
    fn overflowing_values_are_refused_not_wrapped() {
        let big = GOOD.replace("\"v1.10.2\"", "\"v1.99999999999.0\"");
        let err = load(&big).unwrap_err().to_string();
        assert!(
            err.contains("kubernetes_version") && err.contains("v1.99999999999.0"),
            "{err}"
        );
        for range in ["255.255.255.255/32", "10.32.0.7/32", "ffff::/128"] {
            let text = GOOD.replace("\"10.32.0.0/24\"", &format!("{range:?}"));
            let err = load(&text).unwrap_err().to_string();
            assert!(err.contains("service_cluster_ip_range"), "{range}: {err}");
        }
        let text = GOOD.replace("\"10.32.0.0/24\"", "\"10.32.0.0/31\"");
        assert_eq!(
            load(&text).unwrap().service_ip().unwrap().to_string(),
            "10.32.0.1"
        );
    }

    /// A megabyte-long value gives an error of a readable length.
    #[test]
    fn echoed_values_are_cut() {
        let long = "x".repeat(1 << 20);
        for (from, to) in [
            ("name = \"controller-1\"", format!("name = \"{long}\"")),
            ("arch = \"amd64\"", format!("arch = \"{long}\"")),
            (
                "cluster_cidr = \"10.200.0.0/16\"",
                format!("cluster_cidr = \"{long}\""),
            ),
            (
                "public_address = \"203.0.113.10\"",
                format!("public_address = \"{long}!\""),
            ),
            // TOML's own errors quote the line (found by fuzz/: the inventory target).
            ("arch = \"amd64\"", format!("arch = \"amd64\" {long}")),
            ("arch = \"amd64\"", format!("arch = {long}")),
            ("arch = \"amd64\"", format!("arch = \"{long}")),
        ] {
            let err = load(&GOOD.replacen(from, &to, 1)).unwrap_err().to_string();
            assert!(err.len() < 1000, "{} bytes: {}", err.len(), &err[..200]);
        }
    }
}
