//! Kubeconfigs with embedded CA and client credentials, laid out as
//! `kubectl config set-cluster/set-credentials/set-context --embed-certs` writes
//! them (cluster = inventory cluster.name, context `default`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use yaml_rust2::Yaml;

use super::report::shown;

/// The YAML text of a kubeconfig. Strings go through JSON quoting, which is valid
/// YAML, so no value can break the layout.
pub(crate) fn render(
    cluster: &str,
    server: &str,
    ca_pem: &str,
    user: &str,
    cert_pem: &str,
    key_pem: &str,
) -> String {
    let q = |s: &str| serde_json::to_string(s).expect("a string serializes");
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: {cluster}\n  \
           cluster:\n    \
             certificate-authority-data: {ca}\n    \
             server: {server}\n\
         users:\n\
         - name: {user}\n  \
           user:\n    \
             client-certificate-data: {cert}\n    \
             client-key-data: {key}\n\
         contexts:\n\
         - name: default\n  \
           context:\n    \
             cluster: {cluster}\n    \
             user: {user}\n\
         current-context: default\n\
         preferences: {{}}\n",
        cluster = q(cluster),
        server = q(server),
        user = q(user),
        ca = B64.encode(ca_pem),
        cert = B64.encode(cert_pem),
        key = B64.encode(key_pem),
    )
}

/// What a kubeconfig's current context uses.
pub(crate) struct Parsed {
    pub cluster: String,
    pub user: String,
    pub server: String,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

/// Keys a kubeconfig on a node may hold: what `render` writes. Anything else
/// (an `exec` plugin, a token, a proxy, `insecure-skip-tls-verify`, ...) would
/// change what the components do on every node, unseen by `check`.
const TOP_KEYS: &[&str] = &[
    "apiVersion",
    "kind",
    "clusters",
    "users",
    "contexts",
    "current-context",
    "preferences",
];
const CLUSTER_KEYS: &[&str] = &["certificate-authority-data", "server"];
const USER_KEYS: &[&str] = &["client-certificate-data", "client-key-data"];

/// Read the current context of a kubeconfig. Error texts never quote data fields.
pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
    let doc = super::yaml::load(text)?;
    only_keys(&doc, TOP_KEYS, "the kubeconfig")?;
    let current = doc["current-context"]
        .as_str()
        .ok_or("has no current-context")?;
    let context = named(&doc["contexts"], current)
        .map(|c| &c["context"])
        .ok_or_else(|| {
            format!(
                "current-context {} is not among its contexts",
                shown(current)
            )
        })?;
    let cluster = context["cluster"]
        .as_str()
        .ok_or_else(|| format!("context {} names no cluster", shown(current)))?;
    let user = context["user"]
        .as_str()
        .ok_or_else(|| format!("context {} names no user", shown(current)))?;
    let c = named(&doc["clusters"], cluster)
        .map(|c| &c["cluster"])
        .ok_or_else(|| {
            format!(
                "cluster {} of context {} is not defined",
                shown(cluster),
                shown(current)
            )
        })?;
    let u = named(&doc["users"], user)
        .map(|u| &u["user"])
        .ok_or_else(|| {
            format!(
                "user {} of context {} is not defined",
                shown(user),
                shown(current)
            )
        })?;
    let server = c["server"]
        .as_str()
        .ok_or_else(|| format!("cluster {} has no server", shown(cluster)))?;
    let data = |node: &Yaml, field: &str, file_field: &str| -> Result<String, String> {
        if let Some(path) = node[file_field].as_str() {
            // Never read: the image carries this file only, not what it names.
            return Err(format!(
                "refers to a file ({file_field}: {}) instead of embedding {field}; the node image \
                 needs the data embedded (kubectl config ... --embed-certs, or imgbuild pki init --renew)",
                shown(path)
            ));
        }
        match node[field].as_str() {
            Some(b64) => B64
                .decode(b64.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| format!("{field} is not base64 of PEM text")),
            None => Err(format!("has no {field}")),
        }
    };
    let parsed = Parsed {
        cluster: cluster.to_string(),
        user: user.to_string(),
        server: server.to_string(),
        ca_pem: data(c, "certificate-authority-data", "certificate-authority")?,
        cert_pem: data(u, "client-certificate-data", "client-certificate")?,
        key_pem: data(u, "client-key-data", "client-key")?,
    };
    only_keys(c, CLUSTER_KEYS, &format!("cluster {}", shown(cluster)))?;
    only_keys(u, USER_KEYS, &format!("user {}", shown(user)))?;
    Ok(parsed)
}

/// Refuse a mapping key outside `allowed`, naming it (keys are not secret).
fn only_keys(node: &Yaml, allowed: &[&str], what: &str) -> Result<(), String> {
    for key in node.as_hash().into_iter().flat_map(|h| h.keys()) {
        let name = key.as_str().unwrap_or("(not text)");
        if !allowed.contains(&name) {
            return Err(format!(
                "{what} has {}, which imgbuild does not write: on a node it could run a command, \
                 send a token or skip TLS checks; a control-plane kubeconfig holds only {}",
                shown(name),
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

fn named<'a>(list: &'a Yaml, name: &str) -> Option<&'a Yaml> {
    list.as_vec()?
        .iter()
        .find(|item| item["name"].as_str() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_then_parse() {
        let text = render(
            "kubernetes",
            "https://127.0.0.1:6443",
            "CA PEM\n",
            "system:kube-scheduler",
            "CERT PEM\n",
            "KEY PEM\n",
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.cluster, "kubernetes");
        assert_eq!(p.user, "system:kube-scheduler");
        assert_eq!(p.server, "https://127.0.0.1:6443");
        assert_eq!(p.ca_pem, "CA PEM\n");
        assert_eq!(p.cert_pem, "CERT PEM\n");
        assert_eq!(p.key_pem, "KEY PEM\n");
    }

    #[test]
    fn file_references_and_bad_contexts_are_named() {
        let text = "apiVersion: v1\nkind: Config\nclusters:\n- name: k\n  cluster:\n    certificate-authority: /var/lib/kubernetes/ca.pem\n    server: https://127.0.0.1:6443\nusers:\n- name: u\n  user:\n    client-certificate-data: QQ==\n    client-key-data: QQ==\ncontexts:\n- name: default\n  context:\n    cluster: k\n    user: u\ncurrent-context: default\n";
        let err = parse(text).err().unwrap();
        assert!(err.contains("embed"), "{err}");
        assert!(
            err.contains("certificate-authority: \"/var/lib/kubernetes/ca.pem\""),
            "{err}"
        );
        let exec = text
            .replace(
                "    client-key-data: QQ==\n",
                "    client-key-data: QQ==\n    exec:\n      command: /bin/sh\n",
            )
            .replace(
                "certificate-authority:",
                "certificate-authority-data: QQ==\n    x:",
            );
        let err = parse(&exec).err().unwrap();
        assert!(err.contains("\"x\"") || err.contains("\"exec\""), "{err}");
        let err = parse(&text.replace("current-context: default", "current-context: other"))
            .err()
            .unwrap();
        assert!(err.contains("\"other\""), "{err}");
        assert!(parse("a: [").is_err());
    }
}
