//! Rendering overlay templates with tera. Undefined variables are errors; a
//! template error names the template and, where tera knows it, the line.

use serde::Serialize;
use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::input::Versions;
use crate::input::component::COMPONENTS;
use crate::input::control_plane::ControlPlaneCtx;
use crate::input::inventory::{Controller, Inventory, url_host};

/// Everything a template may use. Only validated inventory values get here.
#[derive(Debug, Serialize)]
pub struct Context<'a> {
    pub cluster: ClusterCtx<'a>,
    pub node: NodeCtx<'a>,
    pub controllers: &'a [Controller],
    pub etcd_servers: Vec<String>,
    pub k8s: K8sCtx,
    /// The datastore: where it runs, and for a local one its release and
    /// this node's bootstrap values.
    pub etcd: EtcdCtx,
    pub extra_args: BTreeMap<&'static str, &'a BTreeMap<String, String>>,
    /// The OS profile: `name` and its folders (`bin_dir`, ...).
    pub os: &'a BTreeMap<String, String>,
    /// The inventory's control-plane choices for current versions.
    pub control_plane: ControlPlaneCtx,
}

#[derive(Debug, Serialize)]
pub struct ClusterCtx<'a> {
    pub name: &'a str,
    pub public_address: &'a str,
    /// The public address as it goes in a URL (IPv6 in brackets).
    pub public_address_url_host: String,
    pub service_cluster_ip_range: &'a str,
    pub cluster_cidr: &'a str,
    pub service_node_port_range: &'a str,
    pub arch: &'a str,
}

#[derive(Debug, Serialize)]
pub struct NodeCtx<'a> {
    pub index: usize,
    pub name: &'a str,
    pub internal_ip: &'a str,
    /// The internal IP as it goes in a URL (IPv6 in brackets).
    pub url_host: String,
}

#[derive(Debug, Serialize)]
pub struct K8sCtx {
    pub version: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

#[derive(Debug, Serialize)]
pub struct EtcdCtx {
    /// `local` or `external`.
    pub mode: &'static str,
    /// The recipe's etcd release (`v3.6.5`), and its parts; all empty or 0
    /// when the recipe carries none.
    pub version: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    /// `--initial-cluster`: every controller as `name=https://ip:2380`.
    pub initial_cluster: String,
    /// This node's `--initial-cluster-state`: `new` or `existing`.
    pub initial_cluster_state: &'static str,
}

impl<'a> Context<'a> {
    pub fn new(
        inv: &'a Inventory,
        index: usize,
        versions: Versions,
        os: &'a BTreeMap<String, String>,
    ) -> Context<'a> {
        let version = versions.k8s;
        let node = &inv.controllers[index - 1];
        let c = &inv.cluster;
        Context {
            cluster: ClusterCtx {
                name: &c.name,
                public_address: &c.public_address,
                public_address_url_host: url_host(&c.public_address),
                service_cluster_ip_range: &c.service_cluster_ip_range,
                cluster_cidr: &c.cluster_cidr,
                service_node_port_range: &c.service_node_port_range,
                arch: &c.arch,
            },
            node: NodeCtx {
                index,
                name: &node.name,
                internal_ip: &node.internal_ip,
                url_host: url_host(&node.internal_ip),
            },
            controllers: &inv.controllers,
            etcd_servers: inv.etcd_servers(),
            k8s: K8sCtx {
                version: version.to_string(),
                major: version.major,
                minor: version.minor,
                patch: version.patch,
            },
            etcd: EtcdCtx {
                mode: if inv.etcd.local() {
                    "local"
                } else {
                    "external"
                },
                version: versions.etcd.map(|v| v.to_string()).unwrap_or_default(),
                major: versions.etcd.map_or(0, |v| v.major),
                minor: versions.etcd.map_or(0, |v| v.minor),
                patch: versions.etcd.map_or(0, |v| v.patch),
                initial_cluster: crate::input::etcd::initial_cluster(inv),
                initial_cluster_state: node.initial_cluster_state.name(),
            },
            extra_args: COMPONENTS
                .iter()
                .map(|c| (c.section, c.extra_args(inv)))
                .collect(),
            os,
            control_plane: ControlPlaneCtx::of(inv),
        }
    }
}

/// Templates parsed once, rendered per node.
pub struct Renderer {
    tera: tera::Tera,
}

impl Renderer {
    /// `templates`: (name, text, origin) — origin is shown in errors.
    pub fn new(templates: &[(String, String, String)]) -> Result<Renderer> {
        let mut tera = tera::Tera::default();
        tera.autoescape_on(vec![]);
        for (name, text, origin) in templates {
            tera.add_raw_template(name, text)
                .map_err(|e| Error::input(format!("template {origin}: {}", chain(&e))))?;
        }
        Ok(Renderer { tera })
    }

    pub fn render(&self, name: &str, origin: &str, ctx: &Context<'_>) -> Result<String> {
        let ctx = tera::Context::from_serialize(ctx).expect("context serializes");
        self.tera
            .render(name, &ctx)
            .map_err(|e| Error::input(format!("template {origin}: {}", chain(&e))))
    }
}

/// tera puts the useful part (which variable, which line) in the source chain.
fn chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        parts.push(s.to_string());
        cur = s.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undefined_variable_names_template_and_variable() {
        let r = Renderer::new(&[("t".into(), "a\n{{ nope }}\n".into(), "overlays/x/t".into())])
            .unwrap();
        let inv: Inventory = toml::from_str(
            r#"[cluster]
name = "k"
kubernetes_version = "v1.10.2"
arch = "amd64"
public_address = "1.2.3.4"
service_cluster_ip_range = "10.32.0.0/24"
cluster_cidr = "10.200.0.0/16"
service_node_port_range = "30000-32767"
pki_dir = "pki"
[[controllers]]
name = "c"
internal_ip = "10.0.0.1"
"#,
        )
        .unwrap();
        let os = BTreeMap::new();
        let versions = Versions {
            k8s: crate::input::recipe::Version::parse("v1.10.2").unwrap(),
            etcd: None,
        };
        let ctx = Context::new(&inv, 1, versions, &os);
        let err = r.render("t", "overlays/x/t", &ctx).unwrap_err().to_string();
        assert!(
            err.contains("overlays/x/t") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn syntax_error_names_line() {
        let err = Renderer::new(&[("t".into(), "a\nb\n{% if %}\n".into(), "overlays/x/t".into())])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("overlays/x/t") && err.contains("3:"), "{err}");
    }
}
