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
