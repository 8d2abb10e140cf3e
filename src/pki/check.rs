//! `pki check`: per file, whether the PKI folder fits an inventory. The checks
//! live here; what they find is a [`CheckReport`] (see `report`).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::KeyPair;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

use super::files::{self, ReadError};
use super::keys::{
    cert_der, chains_to, first_attr, key_kind, missing_sans, parse_private_key, subject_cn,
    with_cert,
};
use super::profile::{self, Expect, Remedy};
use super::report::{CheckReport, Fix, Severity, shown};
use super::{
    CA_CERT, CA_KEY, ENCRYPTION_CONFIG, LEAVES, LOCAL_SERVER, Leaf, Role, San, WARN_DAYS,
    apiserver_sans, encryption, kubeconfig,
};
use crate::input::inventory::Inventory;

/// Check the PKI folder of `inv` as of `now`.
pub fn check(inv: &Inventory, now: SystemTime) -> CheckReport {
    let dir = inv.pki_dir();
    let now = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut r = CheckReport {
        dir: dir.clone(),
        inventory: inv.path.clone(),
        findings: Vec::new(),
        expiry_days: Vec::new(),
    };
    if !dir.is_dir() {
        r.push(
            &dir.display().to_string(),
            Severity::Error,
            "the PKI folder does not exist".into(),
            Some(Fix::Init),
        );
        return r;
    }
    // The folder's mode only warns: `init` sets it, and the files' own modes
    // are what keep the keys (errors below).
    check_mode(&mut r, &dir, ".", Severity::Warning, "chmod 700");

    let sans = match apiserver_sans(inv) {
        Ok(s) => s,
        Err(e) => {
            r.push(
                "kubernetes.pem",
                Severity::Error,
                format!("cannot list the names it needs: {e}"),
                None,
            );
            Vec::new()
        }
    };

    // The CA.
    // Half a CA cannot be completed: only a new one (--force) or a backup helps.
    let ca_missing = if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
        Fix::Force
    } else {
        Fix::Init
    };
    let ca = load_cert(&mut r, &dir, CA_CERT, ca_missing, Fix::Force);
    let ca_key = load_key(&mut r, &dir, CA_KEY, ca_missing, Fix::Force);
    if let Some(ca_der) = &ca {
        let ok = with_cert(ca_der, |c| {
            let mut problems = Vec::new();
            if !c.is_ca() {
                problems.push("is not a CA certificate (basicConstraints CA:FALSE)".to_string());
            }
            if c.verify_signature(None).is_err() {
                problems.push(
                    "is not self-signed (its signature does not verify with its own key)".into(),
                );
            }
            problems
        });
        match ok {
            Ok(problems) if problems.is_empty() => r.push(
                CA_CERT,
                Severity::Ok,
                format!("parses, self-signed CA {}", shown(&subject_cn(ca_der))),
                None,
            ),
            Ok(problems) => {
                for p in problems {
                    r.push(CA_CERT, Severity::Error, p, Some(Fix::Force));
                }
            }
            Err(e) => r.push(CA_CERT, Severity::Error, e, Some(Fix::Force)),
        }
        check_profile(&mut r, CA_CERT, ca_der, Expect::Ca, |_| Fix::Force, "");
        expiry(&mut r, CA_CERT, ca_der, now, Fix::Force);
        if let Some(key) = &ca_key {
            key_matches(&mut r, CA_CERT, CA_KEY, ca_der, key, Fix::Force);
        }
    }

    for leaf in LEAVES {
        check_pair(&mut r, &dir, leaf, ca.as_deref(), &sans, now);
        if let Role::Client {
            kubeconfig: name,
            user,
        } = leaf.role
        {
            check_kubeconfig(&mut r, &dir, name, user, leaf, inv, ca.as_deref(), now);
        }
    }
    if inv.etcd.local() {
        super::etcd::check(&mut r, inv, ca.as_deref(), now);
    }

    check_encryption(&mut r, &dir, &inv.cluster.kubernetes_version);
    super::front_proxy::check(&mut r, &dir, inv, now, ca.as_deref());
    // Per file, in the order of `files_for()`: a key's lines follow its certificate's.
    let order: Vec<String> = super::files_for(inv).into_iter().map(|f| f.name).collect();
    r.findings.sort_by_key(|f| {
        let base = f.file.split(" (").next().unwrap_or_default();
        let key_of = order.iter().position(|n| {
            n.strip_suffix("-key.pem")
                .is_some_and(|stem| base == format!("{stem}.pem"))
        });
        let at = order.iter().position(|n| n == base);
        // Certificates sort just before their key; the folder itself first.
        match (key_of, at) {
            (Some(k), _) => 2 * k,
            (None, Some(i)) => 2 * i + 1,
            (None, None) => 0,
        }
    });
    r
}

/// A certificate and its key: each loads, the certificate fits `leaf` (see
/// [`check_leaf`]; `sans` are the names it must carry, for the roles that
/// serve) and the key matches it.
pub(super) fn check_pair(
    r: &mut CheckReport,
    dir: &Path,
    leaf: &Leaf,
    ca: Option<&[u8]>,
    sans: &[(San, String)],
    now: i64,
) {
    let cert_file = leaf.cert_file();
    let key_file = leaf.key_file();
    let cert_exists = dir.join(&cert_file).exists();
    // A missing key with a certificate present needs a new pair: --renew.
    let key_fix = if cert_exists { Fix::Renew } else { Fix::Init };
    let cert = load_cert(r, dir, &cert_file, Fix::Init, Fix::Renew);
    let key = load_key(r, dir, &key_file, key_fix, Fix::Renew);
    if let Some(der) = &cert {
        let new_pair = format!(
            "; for a new key pair remove {key_file} and {cert_file}, then run `imgbuild pki init --renew`"
        );
        let profile: ProfileFix = (
            |remedy| match remedy {
                Remedy::Reissue => Fix::Renew,
                Remedy::NewKey => Fix::Manual,
            },
            &new_pair,
        );
        check_leaf(r, leaf, &cert_file, der, ca, sans, now, profile);
        if let Some(key) = &key {
            key_matches(r, &cert_file, &key_file, der, key, Fix::Renew);
        }
    }
}

/// Any group or other permission bit on `name` gives a finding (an error for
/// keys, kubeconfigs and the encryption config) with the command that fixes it.
fn check_mode(r: &mut CheckReport, dir: &Path, name: &str, severity: Severity, cmd: &str) {
    let path = if name == "." {
        dir.to_path_buf()
    } else {
        dir.join(name)
    };
    if let Some(mode) = files::mode(&path)
        && mode & 0o077 != 0
    {
        let what = if name == "." {
            "it holds private keys"
        } else {
            "it holds secret keys"
        };
        r.push(
            name,
            severity,
            format!(
                "mode {mode:03o} lets other users read or change it ({what}): {cmd} {}",
                path.display()
            ),
            Some(Fix::Manual),
        );
    }
}

/// `missing` fixes an absent file, `fix` one that is there but wrong.
fn read_text(
    r: &mut CheckReport,
    dir: &Path,
    name: &str,
    missing: Fix,
    fix: Fix,
) -> Option<String> {
    match files::read_text(dir, name) {
        Ok(t) => Some(t),
        Err(ReadError::Missing) => {
            r.push(name, Severity::Error, "missing".into(), Some(missing));
            None
        }
        Err(ReadError::Outside(m)) => {
            r.push(name, Severity::Error, m, Some(Fix::Manual));
            None
        }
        Err(ReadError::Refused(m)) => {
            r.push(name, Severity::Error, m, Some(fix));
            None
        }
        Err(ReadError::Io(e)) => {
            r.push(name, Severity::Error, format!("cannot read: {e}"), None);
            None
        }
    }
}

pub(super) fn load_cert(
    r: &mut CheckReport,
    dir: &Path,
    name: &str,
    missing: Fix,
    fix: Fix,
) -> Option<Vec<u8>> {
    let text = read_text(r, dir, name, missing, fix)?;
    let der = match cert_der(&text) {
        Ok(d) => d,
        Err(e) => {
            r.push(name, Severity::Error, e, Some(fix));
            return None;
        }
    };
    match X509Certificate::from_der(&der) {
        Ok(_) => Some(der),
        Err(_) => {
            r.push(
                name,
                Severity::Error,
                "is not a parseable X.509 certificate".into(),
                Some(fix),
            );
            None
        }
    }
}

pub(super) fn load_key(
    r: &mut CheckReport,
    dir: &Path,
    name: &str,
    missing: Fix,
    fix: Fix,
) -> Option<KeyPair> {
    let text = read_text(r, dir, name, missing, fix)?;
    check_mode(r, dir, name, Severity::Error, "chmod 600");
    match parse_private_key(&text) {
        Ok(k) => {
            r.push(
                name,
                Severity::Ok,
                format!("parses ({})", key_kind(&k)),
                None,
            );
            Some(k)
        }
        Err(e) => {
            r.push(name, Severity::Error, e, Some(fix));
            None
        }
    }
}

pub(super) fn expiry(r: &mut CheckReport, file: &str, der: &[u8], now: i64, fix: Fix) {
    let Ok((nb, na)) = with_cert(der, |c| {
        (
            c.validity().not_before.timestamp(),
            c.validity().not_after.timestamp(),
        )
    }) else {
        return;
    };
    let days = (na - now).div_euclid(86_400);
    r.expiry_days.push((file.to_string(), days));
    if now < nb {
        r.push(
            file,
            Severity::Error,
            format!("not valid yet (valid from unix time {nb}); is this machine's clock right?"),
            Some(fix),
        );
    } else if now > na {
        r.push(
            file,
            Severity::Error,
            format!("expired {} day(s) ago", -days),
            Some(fix),
        );
    } else if days < WARN_DAYS {
        r.push(
            file,
            Severity::Warning,
            format!("expires in {days} day(s) (under {WARN_DAYS})"),
            Some(fix),
        );
    } else {
        r.push(
            file,
            Severity::Ok,
            format!("{days} days until expiry"),
            None,
        );
    }
}

pub(super) fn key_matches(
    r: &mut CheckReport,
    cert_file: &str,
    key_file: &str,
    der: &[u8],
    key: &KeyPair,
    fix: Fix,
) {
    let same = with_cert(der, |c| {
        c.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    })
    .unwrap_or(false);
    if same {
        r.push(
            cert_file,
            Severity::Ok,
            format!("key {key_file} matches the certificate"),
            None,
        );
    } else {
        r.push(
            cert_file,
            Severity::Error,
            format!("key {key_file} does not match the certificate"),
            Some(fix),
        );
    }
}

/// How a file's profile problems are fixed: each remedy's fix, and what to add
/// to the message of a problem that needs a new key.
pub(super) type ProfileFix<'a> = (fn(Remedy) -> Fix, &'a str);

/// The profile's findings for the certificate in `file` (see `profile`).
pub(super) fn check_profile(
    r: &mut CheckReport,
    file: &str,
    der: &[u8],
    expect: Expect,
    fix: impl Fn(Remedy) -> Fix,
    new_key: &str,
) {
    let Ok((summary, problems)) = with_cert(der, |c| profile::inspect(c, expect)) else {
        return;
    };
    if problems.is_empty() {
        r.push(file, Severity::Ok, summary, None);
    }
    for p in problems {
        let mut message = p.message;
        if p.remedy == Remedy::NewKey {
            message.push_str(new_key);
        }
        r.push(file, p.severity, message, Some(fix(p.remedy)));
    }
}

/// Subject, CA chain, SANs, profile and expiry of a certificate in `file` (a
/// .pem file or the client certificate inside a kubeconfig).
#[allow(clippy::too_many_arguments)]
fn check_leaf(
    r: &mut CheckReport,
    leaf: &Leaf,
    file: &str,
    der: &[u8],
    ca_der: Option<&[u8]>,
    sans: &[(San, String)],
    now: i64,
    (fix, new_key): ProfileFix,
) {
    let subject = with_cert(der, |c| {
        (
            first_attr(c.subject().iter_common_name()),
            first_attr(c.subject().iter_organization()),
        )
    });
    match subject {
        Ok((cn, o)) => {
            if cn.as_deref() == Some(leaf.common_name) && o.as_deref() == Some(leaf.organization) {
                r.push(
                    file,
                    Severity::Ok,
                    format!("subject CN={} O={}", leaf.common_name, leaf.organization),
                    None,
                );
            } else {
                r.push(
                    file,
                    Severity::Error,
                    format!(
                        "subject CN={} O={}, expected CN={} O={}",
                        shown(&cn.unwrap_or_default()),
                        shown(&o.unwrap_or_default()),
                        leaf.common_name,
                        leaf.organization
                    ),
                    Some(Fix::Renew),
                );
            }
        }
        Err(e) => {
            r.push(file, Severity::Error, e, Some(Fix::Renew));
            return;
        }
    }
    if let Some(ca_der) = ca_der {
        if chains_to(der, ca_der) {
            r.push(file, Severity::Ok, format!("chains to {CA_CERT}"), None);
        } else {
            r.push(
                file,
                Severity::Error,
                format!("was not issued by {CA_CERT} (issuer or signature differs)"),
                Some(Fix::Renew),
            );
        }
    }
    if matches!(leaf.role, Role::ApiServer | Role::Etcd) {
        let missing = missing_sans(der, sans);
        if missing.is_empty() {
            r.push(
                file,
                Severity::Ok,
                format!("SANs cover the inventory ({} names)", sans.len()),
                None,
            );
        } else {
            let list: Vec<String> = missing
                .iter()
                .map(|(san, why)| format!("{san} ({why})"))
                .collect();
            r.push(
                file,
                Severity::Error,
                format!("SANs do not cover {}", list.join(", ")),
                Some(Fix::Renew),
            );
        }
    }
    check_profile(r, file, der, Expect::Leaf(leaf.role), fix, new_key);
    expiry(r, file, der, now, Fix::Renew);
}

#[allow(clippy::too_many_arguments)]
fn check_kubeconfig(
    r: &mut CheckReport,
    dir: &Path,
    name: &str,
    user: &str,
    leaf: &Leaf,
    inv: &Inventory,
    ca_der: Option<&[u8]>,
    now: i64,
) {
    let Some(text) = read_text(r, dir, name, Fix::Init, Fix::Renew) else {
        return;
    };
    check_mode(r, dir, name, Severity::Error, "chmod 600");
    let kc = match kubeconfig::parse(&text) {
        Ok(k) => k,
        Err(e) => {
            r.push(name, Severity::Error, e, Some(Fix::Renew));
            return;
        }
    };
    if kc.server == LOCAL_SERVER {
        r.push(name, Severity::Ok, format!("server {LOCAL_SERVER}"), None);
    } else {
        r.push(
            name,
            Severity::Error,
            format!("server is {}, expected {LOCAL_SERVER}", shown(&kc.server)),
            Some(Fix::Renew),
        );
    }
    if kc.user != user {
        r.push(
            name,
            Severity::Warning,
            format!("user is named {}, expected {user:?}", shown(&kc.user)),
            Some(Fix::Renew),
        );
    }
    if kc.cluster != inv.cluster.name {
        r.push(
            name,
            Severity::Warning,
            format!(
                "cluster is named {}, the inventory's cluster.name is {:?}",
                shown(&kc.cluster),
                inv.cluster.name
            ),
            Some(Fix::Renew),
        );
    }
    match (cert_der(&kc.ca_pem), ca_der) {
        (Ok(embedded), Some(ca)) if embedded == ca => r.push(
            name,
            Severity::Ok,
            format!("embedded CA is {CA_CERT}"),
            None,
        ),
        (Ok(_), Some(_)) => r.push(
            name,
            Severity::Error,
            format!("embedded CA is not {CA_CERT}"),
            Some(Fix::Renew),
        ),
        (Err(e), _) => r.push(
            name,
            Severity::Error,
            format!("certificate-authority-data {e}"),
            Some(Fix::Renew),
        ),
        (Ok(_), None) => {}
    }
    let cert = match cert_der(&kc.cert_pem) {
        Ok(d) => d,
        Err(e) => {
            r.push(
                name,
                Severity::Error,
                format!("client-certificate-data {e}"),
                Some(Fix::Renew),
            );
            return;
        }
    };
    let where_ = format!("{name} (client certificate)");
    let renew: ProfileFix = (|_| Fix::Renew, "");
    check_leaf(r, leaf, &where_, &cert, ca_der, &[], now, renew);
    match parse_private_key(&kc.key_pem) {
        Ok(key) => key_matches(r, &where_, "client-key-data", &cert, &key, Fix::Renew),
        Err(e) => r.push(
            name,
            Severity::Error,
            format!("client-key-data {e}"),
            Some(Fix::Renew),
        ),
    }
}

fn check_encryption(r: &mut CheckReport, dir: &Path, version: &str) {
    let Some(text) = read_text(r, dir, ENCRYPTION_CONFIG, Fix::Init, Fix::Manual) else {
        return;
    };
    check_mode(r, dir, ENCRYPTION_CONFIG, Severity::Error, "chmod 600");
    encryption::check(r, &text, version);
}
