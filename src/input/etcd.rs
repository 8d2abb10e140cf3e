//! The inventory's `[etcd]`: where the cluster's datastore runs.
//!
//! - `mode = "local"` (the default): etcd on every controller, installed and
//!   configured by the image (its unit, data folder, certificates and binaries
//!   are the layout's `[parts.etcd]`); the API server talks to every
//!   controller's etcd. `cluster.etcd_servers`, if given, must name exactly
//!   those endpoints.
//! - `mode = "external"`: the image holds no etcd (the layout's `[parts.etcd]`
//!   is left out) and the API server uses `cluster.etcd_servers` (default:
//!   every controller's `https://<internal_ip>:2379`, as before etcd was part
//!   of the image).
//!
//! Per controller, `initial_cluster_state = "existing"` starts that
//! controller's etcd as a member added to a running cluster (after
//! `etcdctl member add`) instead of one founding a new cluster.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::inventory::{Inventory, url_host};

/// The layout part an external etcd leaves out.
pub const PART: &str = "etcd";

/// Client and peer ports, as in the seed.
pub const CLIENT_PORT: u16 = 2379;
pub const PEER_PORT: u16 = 2380;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Local,
    External,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClusterState {
    #[default]
    New,
    Existing,
}

impl ClusterState {
    pub fn is_new(&self) -> bool {
        *self == ClusterState::New
    }
    pub fn name(self) -> &'static str {
        match self {
            ClusterState::New => "new",
            ClusterState::Existing => "existing",
        }
    }
}

/// `[etcd]` of the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Etcd {
    #[serde(default)]
    pub mode: Mode,
    /// Flags etcd.service does not set, as `flag-name = "value"` (without
    /// `--`), checked like the components' (and against etcd's release).
    #[serde(default)]
    pub extra_args: std::collections::BTreeMap<String, String>,
}

impl Etcd {
    /// Whether the image runs etcd itself.
    pub fn local(&self) -> bool {
        self.mode == Mode::Local
    }

    /// The parts of the layout this inventory leaves out (none, or
    /// [`PART`]), with why.
    pub fn left_out(&self) -> Option<(&'static str, &'static str)> {
        (self.mode == Mode::External).then_some((PART, "by [etcd] mode = \"external\""))
    }

    /// `cluster.etcd_servers` fits the mode, and `initial_cluster_state` is
    /// only given where the image runs etcd.
    pub(crate) fn validate(&self, inv: &Inventory) -> Result<()> {
        if self.local() {
            let given: BTreeSet<&String> = inv.cluster.etcd_servers.iter().collect();
            let ours = local_endpoints(inv);
            if !given.is_empty() && given != ours.iter().collect() {
                return Err(Error::input(format!(
                    "cluster.etcd_servers names other endpoints than the controllers' own etcd \
                     ({}), and [etcd] mode is \"local\" (the default): every controller runs etcd. \
                     For an etcd elsewhere set [etcd] mode = \"external\"; otherwise remove etcd_servers",
                    ours.join(", ")
                )));
            }
            if inv
                .controllers
                .iter()
                .all(|c| c.initial_cluster_state == ClusterState::Existing)
            {
                return Err(Error::input(
                    "every controller has initial_cluster_state = \"existing\": at least one must \
                     belong to the running cluster (\"new\", the default) for the others to join it",
                ));
            }
        } else if !self.extra_args.is_empty() {
            return Err(Error::input(
                "[etcd.extra_args]: only for an etcd the image runs; [etcd] mode is \"external\"",
            ));
        } else if let Some((i, c)) = inv
            .controllers
            .iter()
            .enumerate()
            .find(|(_, c)| c.initial_cluster_state == ClusterState::Existing)
        {
            return Err(Error::input(format!(
                "controllers[{}] ({}).initial_cluster_state: only for an etcd the image runs; \
                 [etcd] mode is \"external\"",
                i + 1,
                crate::error::clip(&c.name)
            )));
        }
        Ok(())
    }
}

/// Every controller's client endpoint, `https://<internal_ip>:2379`.
pub fn local_endpoints(inv: &Inventory) -> Vec<String> {
    inv.controllers
        .iter()
        .map(|c| format!("https://{}:{CLIENT_PORT}", url_host(&c.internal_ip)))
        .collect()
}

/// `--initial-cluster`: every controller as `<name>=https://<internal_ip>:2380`.
pub fn initial_cluster(inv: &Inventory) -> String {
    inv.controllers
        .iter()
        .map(|c| {
            format!(
                "{}=https://{}:{PEER_PORT}",
                c.name,
                url_host(&c.internal_ip)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::inventory::tests::{GOOD, load};

    /// Two controllers, the second with an IPv6 address.
    fn inv() -> String {
        GOOD.replace("10.240.0.12", "fd00::12")
    }

    fn refused(text: &str, says: &[&str]) {
        let err = load(text).unwrap_err().to_string();
        for s in says {
            assert!(err.contains(s), "{err:?} does not say {s:?}");
        }
        assert!(err.len() < 1000, "{err}");
    }

    #[test]
    fn local_by_default_with_every_controller_in_the_cluster() {
        let loaded = load(&inv()).unwrap();
        assert!(loaded.etcd.local());
        assert_eq!(loaded.etcd.left_out(), None);
        assert_eq!(
            initial_cluster(&loaded),
            "controller-1=https://10.240.0.11:2380,controller-2=https://[fd00::12]:2380"
        );
        assert_eq!(
            loaded.etcd_servers(),
            ["https://10.240.0.11:2379", "https://[fd00::12]:2379"]
        );
        // The controllers' own endpoints, given explicitly (in any order), are fine.
        let same = inv().replace(
            "pki_dir = \"pki\"",
            "pki_dir = \"pki\"\netcd_servers = [\"https://[fd00::12]:2379\", \"https://10.240.0.11:2379\"]",
        );
        assert!(load(&same).is_ok());
    }

    #[test]
    fn external_uses_etcd_servers_and_leaves_the_part_out() {
        let text = inv().replace(
            "pki_dir = \"pki\"",
            "pki_dir = \"pki\"\netcd_servers = [\"https://etcd.internal:2379\"]",
        ) + "\n[etcd]\nmode = \"external\"\n";
        let loaded = load(&text).unwrap();
        assert!(!loaded.etcd.local());
        assert_eq!(loaded.etcd.left_out().map(|(p, _)| p), Some(PART));
        assert_eq!(loaded.etcd_servers(), ["https://etcd.internal:2379"]);
    }

    #[test]
    fn bad_etcd_settings_are_refused_by_name() {
        // Someone else's etcd while the controllers run their own.
        refused(
            &inv().replace(
                "pki_dir = \"pki\"",
                "pki_dir = \"pki\"\netcd_servers = [\"https://etcd.internal:2379\"]",
            ),
            &["cluster.etcd_servers", "mode = \"external\""],
        );
        refused(
            &format!("{}\n[etcd]\nmode = \"remote\"\n", inv()),
            &["mode", "local", "external"],
        );
        refused(
            &format!("{}\n[etcd]\nmodes = \"local\"\n", inv()),
            &["unknown field"],
        );
        // Every controller joining an existing cluster: there is none to join.
        let all = inv()
            .replace(
                "internal_ip = \"10.240.0.11\"",
                "internal_ip = \"10.240.0.11\"\ninitial_cluster_state = \"existing\"",
            )
            .replace(
                "internal_ip = \"fd00::12\"",
                "internal_ip = \"fd00::12\"\ninitial_cluster_state = \"existing\"",
            );
        refused(&all, &["initial_cluster_state", "at least one"]);
        refused(
            &inv().replace(
                "internal_ip = \"fd00::12\"",
                "internal_ip = \"fd00::12\"\ninitial_cluster_state = \"joining\"",
            ),
            &["initial_cluster_state", "new", "existing"],
        );
        // Settings for an etcd the image does not run.
        let external = format!("{}\n[etcd]\nmode = \"external\"\n", inv());
        refused(
            &external.replace(
                "internal_ip = \"fd00::12\"",
                "internal_ip = \"fd00::12\"\ninitial_cluster_state = \"existing\"",
            ),
            &[
                "controllers[2] (controller-2).initial_cluster_state",
                "external",
            ],
        );
        refused(
            &format!("{external}\n[etcd.extra_args]\nquota-backend-bytes = \"8589934592\"\n"),
            &["[etcd.extra_args]", "external"],
        );
        // etcd's extra flags are held to the components' rules.
        refused(
            &format!(
                "{}\n[etcd.extra_args]\nlog-level = \"debug --force-new-cluster\"\n",
                inv()
            ),
            &["etcd.extra_args", "spaces"],
        );
    }

    #[test]
    fn a_controller_joins_an_existing_cluster() {
        let text = inv().replace(
            "internal_ip = \"fd00::12\"",
            "internal_ip = \"fd00::12\"\ninitial_cluster_state = \"existing\"",
        );
        let loaded = load(&text).unwrap();
        assert_eq!(
            loaded.controllers[0].initial_cluster_state,
            ClusterState::New
        );
        assert_eq!(
            loaded.controllers[1].initial_cluster_state.name(),
            "existing"
        );
    }
}
