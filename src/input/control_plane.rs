//! The inventory's control-plane choices for current releases (v1.34 and
//! later): which API groups to enable, where the controller manager and the
//! scheduler listen, whether the controller manager allocates node CIDRs, and
//! whether the RBAC one-shot removes `admin.kubeconfig` after its single use.
//!
//! Older versions (the seed's v1.10.2) keep the seed's units byte for byte, so
//! these keys are refused for them.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, clip};
use crate::input::inventory::Inventory;
use crate::input::recipe::Version;

/// The first minor release the production control plane (audit policy, front
/// proxy, loopback-bound controller manager and scheduler, self-healing RBAC
/// one-shot) is rendered for; the layout's `since = "v1.34"` says the same.
pub const FIRST_CURRENT_MINOR: u32 = 34;

/// Whether `version` gets the production control plane.
pub fn is_current(version: Version) -> bool {
    (version.major, version.minor) >= (1, FIRST_CURRENT_MINOR)
}

/// `[apiserver]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiServer {
    /// Flags the recipe does not set, as `flag-name = "value"` (without `--`).
    #[serde(default)]
    pub extra_args: BTreeMap<String, String>,
    /// `--runtime-config` entries: API group versions (or resources) to turn on
    /// (`"resource.k8s.io/v1beta2"`, `"=true"` implied) or off (`"...=false"`).
    /// Nothing beyond the version's defaults when empty.
    #[serde(default)]
    pub runtime_config: Vec<String>,
}

/// `[controller_manager]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControllerManager {
    #[serde(default)]
    pub extra_args: BTreeMap<String, String>,
    /// `--bind-address` of the secure port (10257); 127.0.0.1 when absent.
    #[serde(default)]
    pub bind_address: Option<String>,
    /// Whether the controller manager gives every node a pod CIDR out of
    /// `cluster.cluster_cidr` (`--allocate-node-cidrs`, and `--cluster-cidr`
    /// only then); false when absent.
    #[serde(default)]
    pub allocate_node_cidrs: Option<bool>,
}

/// `[scheduler]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scheduler {
    #[serde(default)]
    pub extra_args: BTreeMap<String, String>,
    /// `--bind-address` of the secure port (10259); 127.0.0.1 when absent.
    #[serde(default)]
    pub bind_address: Option<String>,
}

/// `[rbac_bootstrap]`: the one-shot that applies the kubelet RBAC.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RbacBootstrap {
    /// Delete `/var/lib/kubernetes/admin.kubeconfig` (system:masters) from the
    /// node once the RBAC is applied; true when absent.
    #[serde(default)]
    pub remove_admin_kubeconfig: Option<bool>,
}

/// What the templates see as `control_plane`.
#[derive(Debug, Clone, Serialize)]
pub struct ControlPlaneCtx {
    /// `--runtime-config`'s value, or empty for none.
    pub runtime_config: String,
    pub controller_manager_bind_address: String,
    pub scheduler_bind_address: String,
    pub allocate_node_cidrs: bool,
    pub remove_admin_kubeconfig: bool,
}

const LOOPBACK: &str = "127.0.0.1";

impl ControlPlaneCtx {
    pub fn of(inv: &Inventory) -> ControlPlaneCtx {
        ControlPlaneCtx {
            runtime_config: inv
                .apiserver
                .runtime_config
                .iter()
                .map(|e| {
                    if e.contains('=') {
                        e.clone()
                    } else {
                        format!("{e}=true")
                    }
                })
                .collect::<Vec<_>>()
                .join(","),
            controller_manager_bind_address: inv
                .controller_manager
                .bind_address
                .clone()
                .unwrap_or_else(|| LOOPBACK.into()),
            scheduler_bind_address: inv
                .scheduler
                .bind_address
                .clone()
                .unwrap_or_else(|| LOOPBACK.into()),
            allocate_node_cidrs: inv.controller_manager.allocate_node_cidrs.unwrap_or(false),
            remove_admin_kubeconfig: inv.rbac_bootstrap.remove_admin_kubeconfig.unwrap_or(true),
        }
    }
}

/// Flags that have a key of their own: refused in `extra_args` on current
/// versions, naming the key. (section, flag, key)
const OWN_KEYS: [(&str, &str, &str); 4] = [
    ("apiserver", "runtime-config", "runtime_config"),
    ("controller_manager", "bind-address", "bind_address"),
    (
        "controller_manager",
        "allocate-node-cidrs",
        "allocate_node_cidrs",
    ),
    ("scheduler", "bind-address", "bind_address"),
];

/// Validate the control-plane keys of `inv` (its version already validated).
pub fn validate(inv: &Inventory) -> Result<()> {
    let version = Version::parse(&inv.cluster.kubernetes_version).expect("validated before");
    let set: Vec<&str> = [
        (
            !inv.apiserver.runtime_config.is_empty(),
            "apiserver.runtime_config",
        ),
        (
            inv.controller_manager.bind_address.is_some(),
            "controller_manager.bind_address",
        ),
        (
            inv.controller_manager.allocate_node_cidrs.is_some(),
            "controller_manager.allocate_node_cidrs",
        ),
        (
            inv.scheduler.bind_address.is_some(),
            "scheduler.bind_address",
        ),
        (
            inv.rbac_bootstrap.remove_admin_kubeconfig.is_some(),
            "rbac_bootstrap.remove_admin_kubeconfig",
        ),
    ]
    .into_iter()
    .filter_map(|(on, key)| on.then_some(key))
    .collect();
    if !is_current(version) {
        if let Some(key) = set.first() {
            return Err(Error::input(format!(
                "{key}: needs cluster.kubernetes_version v1.{FIRST_CURRENT_MINOR} or later; \
                 {version} keeps the seed's units as they are"
            )));
        }
        return Ok(());
    }
    for (section, flag, key) in OWN_KEYS {
        let extra = match section {
            "apiserver" => &inv.apiserver.extra_args,
            "controller_manager" => &inv.controller_manager.extra_args,
            _ => &inv.scheduler.extra_args,
        };
        if extra.contains_key(flag) {
            return Err(Error::input(format!(
                "[{section}.extra_args] {flag}: set it with `{key}` in [{section}] instead"
            )));
        }
    }
    for (field, value) in [
        (
            "controller_manager.bind_address",
            &inv.controller_manager.bind_address,
        ),
        ("scheduler.bind_address", &inv.scheduler.bind_address),
    ] {
        if let Some(v) = value
            && v.parse::<IpAddr>().is_err()
        {
            return Err(Error::input(format!(
                "{field} = {:?}: not an IP address (\"127.0.0.1\" keeps the port on this machine, \"0.0.0.0\" opens it to the network)",
                clip(v)
            )));
        }
    }
    let mut keys = Vec::new();
    for (i, entry) in inv.apiserver.runtime_config.iter().enumerate() {
        let key = runtime_config_entry(entry)
            .map_err(|why| {
                Error::input(format!(
                    "apiserver.runtime_config[{i}] = {:?}: {why}",
                    clip(entry)
                ))
            })?
            .to_string();
        if keys.contains(&key) {
            return Err(Error::input(format!(
                "apiserver.runtime_config: {:?} appears twice",
                clip(&key)
            )));
        }
        keys.push(key);
    }
    Ok(())
}

/// An API version (`v1alpha1`, `v1beta2`, `v2`).
fn is_api_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 || rest.starts_with('0') {
        return false;
    }
    let tail = &rest[digits..];
    tail.is_empty()
        || ["alpha", "beta"].iter().any(|s| {
            tail.strip_prefix(s).is_some_and(|n| {
                !n.is_empty() && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit())
            })
        })
}

/// A lowercase DNS name: an API group, or a resource's plural name.
fn is_lower_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

/// Check one `runtime_config` entry; returns its key (without `=value`).
fn runtime_config_entry(entry: &str) -> std::result::Result<&str, String> {
    let (key, value) = match entry.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (entry, None),
    };
    if let Some(v) = value
        && v != "true"
        && v != "false"
    {
        return Err("the value after `=` must be true or false".into());
    }
    if let Some(all) = key.strip_prefix("api/")
        && ["all", "ga", "beta", "alpha", "legacy"].contains(&all)
    {
        return Err(format!(
            "{key} switches whole classes of APIs (api/all and api/alpha turn on every alpha API); \
             name each group version to enable instead, e.g. \"resource.k8s.io/v1beta2\""
        ));
    }
    let parts: Vec<&str> = key.split('/').collect();
    let ok = match parts.as_slice() {
        // The core group: `v1` (or `api/v1`).
        [v] | ["api", v] => is_api_version(v),
        [group, v] => is_lower_name(group) && is_api_version(v),
        [group, v, resource] => {
            is_lower_name(group) && is_api_version(v) && is_lower_name(resource)
        }
        _ => false,
    };
    if ok {
        Ok(key)
    } else {
        Err(
            "expected GROUP/VERSION or GROUP/VERSION/RESOURCE (e.g. \"resource.k8s.io/v1beta2\", \
             \"storage.k8s.io/v1alpha1/volumeattributesclasses\"), optionally =true or =false"
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_entries_name_group_versions() {
        for good in [
            "resource.k8s.io/v1beta2",
            "resource.k8s.io/v1beta2=true",
            "storage.k8s.io/v1alpha1/volumeattributesclasses=false",
            "v1",
            "api/v1=true",
            "flowcontrol.apiserver.k8s.io/v1beta3",
        ] {
            assert!(runtime_config_entry(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("api/all=true", "every alpha API"),
            ("api/all", "every alpha API"),
            ("api/alpha=true", "every alpha API"),
            ("api/beta=true", "name each group version"),
            ("resource.k8s.io/v1beta2=yes", "true or false"),
            ("Resource.k8s.io/v1", "GROUP/VERSION"),
            ("resource.k8s.io/beta1", "GROUP/VERSION"),
            ("resource.k8s.io/v1beta", "GROUP/VERSION"),
            ("resource.k8s.io/v01", "GROUP/VERSION"),
            ("a/v1/b/c", "GROUP/VERSION"),
            ("a/v1,b/v1", "GROUP/VERSION"),
            ("", "GROUP/VERSION"),
        ] {
            let err = runtime_config_entry(bad).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn first_current_minor_is_the_layouts_since() {
        let layout = include_str!("../../recipes/layouts/controller.toml");
        let since = format!("since = \"v1.{FIRST_CURRENT_MINOR}\"");
        let bounds: Vec<&str> = layout
            .lines()
            .filter(|l| l.trim_start().starts_with("since"))
            .collect();
        assert!(!bounds.is_empty());
        for l in bounds {
            assert_eq!(l.trim(), since);
        }
        assert!(is_current(Version::parse("v1.34.0").unwrap()));
        assert!(!is_current(Version::parse("v1.33.9").unwrap()));
        assert!(!is_current(Version::parse("v1.10.2").unwrap()));
    }
}
