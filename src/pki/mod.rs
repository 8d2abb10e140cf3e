//! The cluster's PKI: the CA, the API server and client certificates, the
//! service-account key pair, the kubeconfigs and the encryption config, under the
//! file names the seed guide uses (`ca.pem`, `kubernetes-key.pem`, ...).
//!
//! [`init`] generates what is missing (never overwriting a CA or a key) and
//! [`check`] tells, per file, whether the folder fits an inventory. The build reads
//! these files as inputs, so builds stay reproducible; only `init` is random.
//!
//! Key type: every key `init` generates is ECDSA P-256 (rcgen with its `ring`
//! backend). Why not RSA 2048: rcgen generates RSA keys only with `aws-lc-rs`,
//! whose C build (aws-lc-sys) costs minutes on our 2-core machines; `ring` builds in
//! well under a minute. Every consumer accepts P-256, back to the seed's v1.10.2:
//! Go's TLS (apiserver, etcd client, kubectl), client-go's key parsing (PKCS#8
//! "PRIVATE KEY" and certificates as `--service-account-key-file`), and ES256
//! service-account tokens. `check` and `init --renew` also accept a PKI made
//! elsewhere with RSA keys (PKCS#1 or PKCS#8) or EC keys (SEC1 or PKCS#8).

mod check;
mod encryption;
mod etcd;
mod files;
mod front_proxy;
mod generate;
mod keys;
mod kubeconfig;
mod profile;
mod report;
mod yaml;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::input::inventory::Inventory;
use crate::progress::{Event, Progress};

pub use check::check;
pub use encryption::Cipher;
pub use etcd::{etcd_sans, is_etcd_cert};
pub use generate::{InitOptions, InitReport, init};
pub use report::{CheckReport, Finding, Fix, Severity};

/// Where the control plane's own components reach the API server: every
/// kubeconfig on a controller points here, as in the seed.
pub const LOCAL_SERVER: &str = "https://127.0.0.1:6443";

/// Certificates expiring sooner than this are reported as warnings.
pub const WARN_DAYS: i64 = 30;

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const ENCRYPTION_CONFIG: &str = "encryption-config.yaml";

/// What a certificate is for: decides its extensions and what `check` expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The API server's serving certificate (also its etcd and kubelet client).
    ApiServer,
    /// The service-account token key pair; the certificate carries the public key.
    ServiceAccount,
    /// A controller's etcd: serves clients and peers, and is its peers' client.
    Etcd,
    /// A client identity; `kubeconfig` is written for it.
    Client {
        kubeconfig: &'static str,
        user: &'static str,
    },
}

/// A certificate signed by the cluster CA: `<stem>.pem` and `<stem>-key.pem`.
#[derive(Debug, Clone, Copy)]
pub struct Leaf<'a> {
    pub stem: &'a str,
    pub common_name: &'a str,
    pub organization: &'a str,
    pub role: Role,
}

impl Leaf<'_> {
    pub fn cert_file(&self) -> String {
        format!("{}.pem", self.stem)
    }
    pub fn key_file(&self) -> String {
        format!("{}-key.pem", self.stem)
    }
}

/// Names, subjects and users as in "Kubernetes the hard way", which the seed follows.
pub const LEAVES: &[Leaf<'static>] = &[
    Leaf {
        stem: "kubernetes",
        // The seed's ClusterRoleBinding grants the kubelet API to user `kubernetes`.
        common_name: "kubernetes",
        organization: "Kubernetes",
        role: Role::ApiServer,
    },
    Leaf {
        stem: "service-account",
        common_name: "service-accounts",
        organization: "Kubernetes",
        role: Role::ServiceAccount,
    },
    Leaf {
        stem: "admin",
        common_name: "admin",
        organization: "system:masters",
        role: Role::Client {
            kubeconfig: "admin.kubeconfig",
            user: "admin",
        },
    },
    Leaf {
        stem: "kube-controller-manager",
        common_name: "system:kube-controller-manager",
        organization: "system:kube-controller-manager",
        role: Role::Client {
            kubeconfig: "kube-controller-manager.kubeconfig",
            user: "system:kube-controller-manager",
        },
    },
    Leaf {
        stem: "kube-scheduler",
        common_name: "system:kube-scheduler",
        organization: "system:kube-scheduler",
        role: Role::Client {
            kubeconfig: "kube-scheduler.kubeconfig",
            user: "system:kube-scheduler",
        },
    },
];

/// One file of the PKI folder, for callers that copy or record them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFile {
    pub name: String,
    /// Private keys, kubeconfigs (they embed a key) and the encryption config:
    /// mode 0600, and never printed, logged or put in a manifest's text.
    pub secret: bool,
}

/// Every file `init` writes, in a stable order.
pub fn files() -> Vec<PkiFile> {
    let mut out = vec![
        PkiFile {
            name: CA_CERT.into(),
            secret: false,
        },
        PkiFile {
            name: CA_KEY.into(),
            secret: true,
        },
    ];
    for leaf in LEAVES {
        out.push(PkiFile {
            name: leaf.cert_file(),
            secret: false,
        });
        out.push(PkiFile {
            name: leaf.key_file(),
            secret: true,
        });
        if let Role::Client { kubeconfig, .. } = leaf.role {
            out.push(PkiFile {
                name: kubeconfig.into(),
                secret: true,
            });
        }
    }
    out.push(PkiFile {
        name: ENCRYPTION_CONFIG.into(),
        secret: true,
    });
    // The aggregation layer's, from v1.34 (`pki init` makes them only then).
    out.extend(front_proxy::files());
    out
}

/// The per-node files, as a layout names them: `{node}` stands for a
/// controller's name (see `etcd`).
pub fn node_file_patterns() -> Vec<PkiFile> {
    vec![
        PkiFile {
            name: etcd::cert_file(NODE),
            secret: false,
        },
        PkiFile {
            name: etcd::key_file(NODE),
            secret: true,
        },
    ]
}

/// What `{node}` in a per-node file's name stands for.
pub const NODE: &str = "{node}";

/// Every file `init` writes for `inv`: [`files`] (the front proxy's only from
/// v1.34), then each controller's own (none with an external etcd).
pub fn files_for(inv: &Inventory) -> Vec<PkiFile> {
    let proxy = front_proxy::files();
    let mut out: Vec<PkiFile> = files()
        .into_iter()
        .filter(|f| front_proxy::wanted(inv) || !proxy.contains(f))
        .collect();
    if inv.etcd.local() {
        for c in &inv.controllers {
            out.extend(node_file_patterns().into_iter().map(|f| PkiFile {
                name: f.name.replace(NODE, &c.name),
                secret: f.secret,
            }));
        }
    }
    out
}

/// True for files whose content must never be shown.
pub fn is_secret(name: &str) -> bool {
    files().iter().any(|f| f.name == name && f.secret) || etcd::is_key_file(name)
}

/// A name the API server certificate must carry, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum San {
    Ip(IpAddr),
    Dns(String),
}

impl std::fmt::Display for San {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            San::Ip(ip) => write!(f, "{ip}"),
            San::Dns(name) => f.write_str(name),
        }
    }
}

/// The subject alternative names the API server certificate needs for `inv`,
/// each with the inventory field it comes from.
pub fn apiserver_sans(inv: &Inventory) -> Result<Vec<(San, String)>> {
    let mut out: Vec<(San, String)> = Vec::new();
    let mut push = |san: San, why: String| {
        if !out.iter().any(|(s, _)| *s == san) {
            out.push((san, why));
        }
    };
    for (i, c) in inv.controllers.iter().enumerate() {
        let ip: IpAddr = c.internal_ip.parse().map_err(|_| {
            Error::input(format!(
                "controllers[{}] ({}).internal_ip = {:?}: not an IP address",
                i + 1,
                crate::error::clip(&c.name),
                crate::error::clip(&c.internal_ip)
            ))
        })?;
        push(
            San::Ip(ip),
            format!("controllers[{}] ({}).internal_ip", i + 1, c.name),
        );
    }
    let public = &inv.cluster.public_address;
    match public.parse::<IpAddr>() {
        Ok(ip) => push(San::Ip(ip), "cluster.public_address".into()),
        Err(_) => push(
            San::Dns(public.to_ascii_lowercase()),
            "cluster.public_address".into(),
        ),
    }
    push(
        San::Ip(inv.service_ip()?),
        "first address of cluster.service_cluster_ip_range".into(),
    );
    push(San::Ip(IpAddr::from([127, 0, 0, 1])), "loopback".into());
    for name in [
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster",
        "kubernetes.default.svc.cluster.local",
    ] {
        push(San::Dns(name.into()), "in-cluster name of the API".into());
    }
    Ok(out)
}

/// Releases before v1.13 read the legacy `EncryptionConfig` (apiVersion `v1`,
/// through `--experimental-encryption-provider-config`); later ones
/// `EncryptionConfiguration` of `apiserver.config.k8s.io/v1`.
pub fn legacy_encryption_config(kubernetes_version: &str) -> bool {
    let mut parts = kubernetes_version
        .trim_start_matches('v')
        .split('.')
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let major = parts.next().unwrap_or(1);
    let minor = parts.next().unwrap_or(0);
    (major, minor) < (1, 13)
}

/// The inventory bundled with imgbuild (the seed's three controllers).
const BUNDLED_EXAMPLE: &str = include_str!("../../cluster.toml");

/// Whether `inv` says what the bundled example says (comments and layout aside).
pub fn is_bundled_example(inv: &Inventory) -> bool {
    let Ok(example) = toml::from_str::<Inventory>(BUNDLED_EXAMPLE) else {
        return false;
    };
    // `path` and `sha256` are not serialized: this compares the content only.
    serde_json::to_value(&example).ok() == serde_json::to_value(inv).ok()
}

/// What a build calls before it reads the PKI: the same check as `pki check`,
/// refusing a PKI that does not fit the inventory (the error says what to run).
///
/// The one case where a PKI appears without `pki init`: the inventory is the
/// bundled example, unchanged, and its `pki_dir` does not exist at all. Then the
/// example's PKI is generated and a notice says where it is and that every node
/// of one cluster must be built from it. An edited example, or any other
/// inventory, gets an error naming `imgbuild pki init` instead: a CA made
/// silently on a second machine would split the cluster.
pub fn ensure_for_build(inv: &Inventory, progress: &dyn Progress) -> Result<CheckReport> {
    let dir = inv.pki_dir();
    // Of two builds started at once on a fresh checkout, one claims the folder
    // and generates while holding its lock; the other waits for that lock.
    let (lock, claimed) = generate::with_parent_lock(&dir, || {
        if !dir.exists() && is_bundled_example(inv) && claim_dir(&dir)? {
            Ok((Some(generate::lock_dir(&dir, true)?), true))
        } else if dir.is_dir() {
            Ok((Some(generate::lock_dir(&dir, false)?), false))
        } else {
            Ok((None, false))
        }
    })?;
    if claimed {
        let report = generate::init_locked(inv, &InitOptions::default(), progress)?;
        let msg = format!(
            "NEW PKI for the bundled example: {dir} now holds a new CA, keys, kubeconfigs and \
             an encryption key ({n} files). Every node of one cluster must be built from this \
             same PKI: build all nodes from this folder, or copy it (mode 0700: it holds \
             private keys) before building elsewhere. `imgbuild pki check --inventory {inv}` \
             reports on it.",
            dir = dir.display(),
            n = report.created.len(),
            inv = inv.path.display(),
        );
        progress.event(Event::Notice { message: &msg });
    }
    let report = check(inv, std::time::SystemTime::now());
    for f in report.warnings() {
        let msg = format!("PKI {}: {}", f.file, f.message);
        progress.event(Event::Warning { message: &msg });
    }
    drop(lock);
    match report.error() {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// Create `dir` (0700) unless it exists: of two builds started at once on a
/// fresh checkout, only the one that created it generates the PKI; the other
/// waits for it (the folder's lock) instead of mixing two CAs.
fn claim_dir(dir: &Path) -> Result<bool> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_path("create", parent)?;
    }
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(Error::io("create", dir, e)),
    }
}

/// Write `bytes` to `dir/name` through a temporary file in the same folder and a
/// rename, so an interrupted run leaves the old file or the new one, never half.
pub(crate) fn write_atomic(dir: &Path, name: &str, bytes: &[u8], secret: bool) -> Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    // tempfile creates with mode 0600: a secret is never readable by others, not
    // even for the moment before the rename.
    // Registered as live: an interrupted run removes it (util::atomic).
    let (mut tmp, live) = crate::util::atomic::tracked(
        || {
            tempfile::Builder::new()
                .prefix(&format!(".{name}."))
                .suffix(".tmp")
                .tempfile_in(dir)
        },
        |t| t.path(),
    )
    .with_path("create a temporary file in", dir)?;
    tmp.write_all(bytes).with_path("write", &path)?;
    let mode = if secret { 0o600 } else { 0o644 };
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(mode))
        .with_path("set permissions of", &path)?;
    tmp.as_file().sync_all().with_path("sync", &path)?;
    crate::util::atomic::settle(live.path(), || tmp.persist(&path))
        .map_err(|e| Error::io("rename into place", &path, e.error))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apiserver_sans_follow_the_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        let text = BUNDLED_EXAMPLE
            .replace("\"203.0.113.10\"", "\"API.Example.com\"")
            .replace("10.32.0.0/24", "fd00:32::/112");
        std::fs::write(&path, text).unwrap();
        let inv = Inventory::load(&path).unwrap();
        let sans: Vec<String> = apiserver_sans(&inv)
            .unwrap()
            .iter()
            .map(|(s, _)| s.to_string())
            .collect();
        assert_eq!(
            sans[..6],
            [
                "10.240.0.11",
                "10.240.0.12",
                "10.240.0.13",
                "api.example.com",
                "fd00:32::1",
                "127.0.0.1"
            ]
        );
        assert_eq!(sans.len(), 11);
        assert!(!is_bundled_example(&inv));
    }

    #[test]
    fn bundled_example_is_recognised_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.toml");
        let reformatted: String = BUNDLED_EXAMPLE
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, reformatted).unwrap();
        assert!(is_bundled_example(&Inventory::load(&path).unwrap()));
    }

    #[test]
    fn encryption_format_follows_version() {
        assert!(legacy_encryption_config("v1.10.2"));
        assert!(legacy_encryption_config("v1.12.10"));
        assert!(!legacy_encryption_config("v1.13.0"));
        assert!(!legacy_encryption_config("v1.34.7"));
    }

    #[test]
    fn secret_files_are_keys_kubeconfigs_and_encryption_config() {
        let secret: Vec<_> = files()
            .into_iter()
            .filter(|f| f.secret)
            .map(|f| f.name)
            .collect();
        for name in &secret {
            assert!(
                name.ends_with("-key.pem")
                    || name.ends_with(".kubeconfig")
                    || name == ENCRYPTION_CONFIG,
                "{name}"
            );
        }
        assert_eq!(secret.len(), 6 + 3 + 1 + 2);
        assert!(!is_secret("ca.pem"));
        assert!(is_secret("ca-key.pem"));
    }

    #[test]
    fn atomic_write_sets_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = write_atomic(dir.path(), "a-key.pem", b"x", true).unwrap();
        assert_eq!(p.metadata().unwrap().permissions().mode() & 0o777, 0o600);
        let p = write_atomic(dir.path(), "a.pem", b"y", false).unwrap();
        assert_eq!(p.metadata().unwrap().permissions().mode() & 0o777, 0o644);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "temporary files left behind: {names:?}");
    }
}
