//! etcd's certificates: one per controller, `etcd-<name>.pem` and
//! `etcd-<name>-key.pem`, on every Kubernetes version (with `[etcd] mode =
//! "local"`, the default; none with an external etcd).
//!
//! Each controller's etcd serves its clients (the API server, etcdctl) on
//! `https://<internal_ip>:2379` and `https://127.0.0.1:2379`, and its peers on
//! `https://<internal_ip>:2380`, with this certificate (`--cert-file`,
//! `--peer-cert-file`), and presents the same one to its peers as their client
//! (`--peer-client-cert-auth`): extendedKeyUsage serverAuth and clientAuth.
//! SANs: the controller's internal IP and name, 127.0.0.1 and `localhost`.
//! Subject CN=<name>, O=etcd. The API server stays etcd's client with
//! `kubernetes.pem`, as in the seed; etcd trusts clients the cluster CA signed
//! (`--trusted-ca-file`, `--client-cert-auth`).
//!
//! Why not the seed era's `kubernetes.pem` as etcd's serving certificate (the
//! 1.10-era guide copies it to /etc/etcd/): its SANs cover every controller
//! and 127.0.0.1, so it would work, but then every etcd would hold the API
//! server's key, and one layout would need two PKI sets. One certificate per
//! node keeps a node's etcd key its own, on every version alike.

use std::net::IpAddr;

use super::check::check_pair;
use super::report::CheckReport;
use super::{Leaf, NODE, Role, San};
use crate::error::{Error, Result};
use crate::input::inventory::Inventory;

/// The organization in every etcd certificate's subject.
const ORGANIZATION: &str = "etcd";

/// `etcd-<node>`: the stem of a controller's files.
pub(super) fn stem(node: &str) -> String {
    format!("etcd-{node}")
}

pub(super) fn cert_file(node: &str) -> String {
    format!("{}.pem", stem(node))
}

pub(super) fn key_file(node: &str) -> String {
    format!("{}-key.pem", stem(node))
}

/// The leaf of the controller `name`, its stem made by [`stem`].
pub(super) fn leaf<'a>(stem: &'a str, name: &'a str) -> Leaf<'a> {
    Leaf {
        stem,
        common_name: name,
        organization: ORGANIZATION,
        role: Role::Etcd,
    }
}

/// Whether `name` is a controller's etcd key (`etcd-<name>-key.pem`).
pub(super) fn is_key_file(name: &str) -> bool {
    name.strip_prefix("etcd-")
        .and_then(|n| n.strip_suffix("-key.pem"))
        .is_some_and(|n| !n.is_empty() && n != NODE)
}

/// Whether `name` is a controller's etcd certificate (`etcd-<name>.pem`).
pub fn is_etcd_cert(name: &str) -> bool {
    name.strip_prefix("etcd-")
        .and_then(|n| n.strip_suffix(".pem"))
        .is_some_and(|n| !n.is_empty() && !n.ends_with("-key"))
}

/// The names node `index` (1-based)'s etcd certificate must carry, each with
/// why.
pub fn etcd_sans(inv: &Inventory, index: usize) -> Result<Vec<(San, String)>> {
    let c = &inv.controllers[index - 1];
    let at = format!("controllers[{index}] ({})", c.name);
    let ip: IpAddr = c.internal_ip.parse().map_err(|_| {
        Error::input(format!(
            "{at}.internal_ip = {:?}: not an IP address",
            c.internal_ip
        ))
    })?;
    let mut out = vec![
        (San::Ip(ip), format!("{at}.internal_ip")),
        (San::Dns(c.name.clone()), format!("{at}.name")),
    ];
    let loopback = San::Ip(IpAddr::from([127, 0, 0, 1]));
    if !out.iter().any(|(s, _)| *s == loopback) {
        out.push((loopback, "loopback (etcd also listens there)".into()));
    }
    out.push((San::Dns("localhost".into()), "loopback".into()));
    Ok(out)
}

/// Every controller's etcd pair: present, chains to the CA, fits its role,
/// its SANs cover the controller (see [`etcd_sans`]).
pub(super) fn check(r: &mut CheckReport, inv: &Inventory, ca: Option<&[u8]>, now: i64) {
    let dir = inv.pki_dir();
    for (i, c) in inv.controllers.iter().enumerate() {
        let stem = stem(&c.name);
        let leaf = leaf(&stem, &c.name);
        match etcd_sans(inv, i + 1) {
            Ok(sans) => check_pair(r, &dir, &leaf, ca, &sans, now),
            Err(e) => r.push(
                &leaf.cert_file(),
                super::report::Severity::Error,
                format!("cannot list the names it needs: {e}"),
                None,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_patterns() {
        assert_eq!(cert_file("controller-1"), "etcd-controller-1.pem");
        assert_eq!(key_file("controller-1"), "etcd-controller-1-key.pem");
        assert!(is_key_file("etcd-controller-1-key.pem"));
        assert!(!is_key_file("etcd-{node}-key.pem"));
        assert!(!is_key_file("etcd-controller-1.pem"));
        assert!(is_etcd_cert("etcd-a.pem"));
        assert!(!is_etcd_cert("etcd-a-key.pem"));
        assert!(!is_etcd_cert("kubernetes.pem"));
    }
}
