//! The aggregation layer's PKI (from v1.34, see `input::control_plane`): a
//! front-proxy CA of its own and the client certificate the API server
//! presents to extension API servers (metrics-server behind `kubectl top` and
//! the HPA). The API server trusts that CA for `--requestheader-client-ca-file`
//! and proxies with `--proxy-client-cert-file`.
//!
//! Why a CA of its own: an extension API server believes the user and groups
//! in the request headers of any client whose certificate that CA signed (and
//! whose CN is `front-proxy-client`). With the cluster CA in that role, a
//! certificate the cluster CA signed for something else, or one the
//! controller manager signs for a kubelet's CSR, could be made to speak as
//! the proxy. Kubernetes' own docs and kubeadm keep them apart.

use std::path::Path;

use rcgen::{Issuer, KeyPair};
use time::OffsetDateTime;

use super::check::{ProfileFix, check_profile, expiry, key_matches, load_cert, load_key};
use super::generate::{InitOptions, Writer, ca_params_named, leaf_params, read_cert, read_key};
use super::keys::{chains_to, first_attr, generate_key, with_cert};
use super::profile::{Expect, Remedy};
use super::report::{CheckReport, Fix, Severity, shown};
use super::{Leaf, PkiFile, Role};
use crate::error::{Error, Result};
use crate::input::inventory::Inventory;
use crate::input::recipe::Version;

pub const CA_CERT: &str = "front-proxy-ca.pem";
pub const CA_KEY: &str = "front-proxy-ca-key.pem";

/// The client certificate, as the API server's `--requestheader-allowed-names` names it.
pub const CLIENT: Leaf = Leaf {
    stem: "front-proxy-client",
    common_name: "front-proxy-client",
    organization: "Kubernetes",
    role: Role::Client {
        kubeconfig: "",
        user: "front-proxy-client",
    },
};

/// Whether the inventory's version uses the aggregation layer's PKI.
pub fn wanted(inv: &Inventory) -> bool {
    Version::parse(&inv.cluster.kubernetes_version)
        .is_some_and(crate::input::control_plane::is_current)
}

/// Its files, in the order of `pki::files()`.
pub fn files() -> Vec<PkiFile> {
    [
        (CA_CERT.to_string(), false),
        (CA_KEY.to_string(), true),
        (CLIENT.cert_file(), false),
        (CLIENT.key_file(), true),
    ]
    .into_iter()
    .map(|(name, secret)| PkiFile { name, secret })
    .collect()
}

/// `pki init`: the front-proxy CA and client certificate, when missing (or,
/// with `--renew`, the client certificate when `renew` says it no longer fits).
pub(super) fn init(
    inv: &Inventory,
    opts: &InitOptions,
    w: &mut Writer,
    now: OffsetDateTime,
    renew: &dyn Fn(&str) -> bool,
) -> Result<()> {
    if !wanted(inv) {
        return Ok(());
    }
    let dir = w.dir.to_path_buf();
    let (ca_cert, ca_key) = (dir.join(CA_CERT), dir.join(CA_KEY));
    let key = match (ca_cert.exists(), ca_key.exists()) {
        (_, true) => read_key(&ca_key)?,
        (true, false) => {
            return Err(Error::input(format!(
                "{} exists but {} is missing: remove {CA_CERT} and run `imgbuild pki init` for a new \
                 front-proxy CA (then rebuild every node)",
                ca_cert.display(),
                ca_key.display()
            )));
        }
        (false, false) => {
            let key = generate_key().map_err(Error::input)?;
            w.write(CA_KEY, key.serialize_pem().as_bytes(), true, false)?;
            key
        }
    };
    let ca_der = if ca_cert.exists() {
        let der = read_cert(&ca_cert)?;
        if !same_key(&der, &key) {
            return Err(Error::input(format!(
                "{} does not match {}: restore the right pair, or remove both and run \
                 `imgbuild pki init` for a new front-proxy CA",
                ca_key.display(),
                ca_cert.display()
            )));
        }
        der
    } else {
        let name = format!("{} front-proxy CA", inv.cluster.name);
        let cert = ca_params_named(&name, now, opts.ca_days)?
            .self_signed(&key)
            .map_err(|e| Error::input(format!("cannot sign {CA_CERT}: {e}")))?;
        w.write(CA_CERT, cert.pem().as_bytes(), false, false)?;
        cert.der().to_vec()
    };
    let ca_not_after = with_cert(&ca_der, |c| c.validity().not_after.timestamp())
        .ok()
        .and_then(|t| OffsetDateTime::from_unix_timestamp(t).ok())
        .ok_or_else(|| Error::input(format!("{}: bad notAfter", ca_cert.display())))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der.clone().into(), key).map_err(|e| {
        Error::input(format!(
            "{}: cannot use it as an issuer: {e}",
            ca_cert.display()
        ))
    })?;

    let (cert_file, key_file) = (CLIENT.cert_file(), CLIENT.key_file());
    let cert_exists = dir.join(&cert_file).exists();
    let key = if dir.join(&key_file).exists() {
        if cert_exists && !(opts.renew && renew(&cert_file)) {
            return Ok(());
        }
        read_key(&dir.join(&key_file))?
    } else {
        let key = generate_key().map_err(Error::input)?;
        w.write(&key_file, key.serialize_pem().as_bytes(), true, false)?;
        key
    };
    let not_after = (now + time::Duration::days(opts.days.into())).min(ca_not_after);
    let cert = leaf_params(&CLIENT, &[], now, not_after, &key)?
        .signed_by(&key, &issuer)
        .map_err(|e| Error::input(format!("cannot sign {cert_file}: {e}")))?;
    w.write(&cert_file, cert.pem().as_bytes(), false, cert_exists)
}

fn same_key(der: &[u8], key: &KeyPair) -> bool {
    with_cert(der, |c| {
        c.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
    })
    .unwrap_or(false)
}

/// `pki check`: the front-proxy CA (self-signed, a CA, not the cluster CA)
/// and the client certificate (CN, chain to the front-proxy CA, clientAuth).
pub(super) fn check(
    r: &mut CheckReport,
    dir: &Path,
    inv: &Inventory,
    now: i64,
    cluster_ca: Option<&[u8]>,
) {
    if !wanted(inv) {
        return;
    }
    let half = dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists();
    let missing = if half { Fix::Manual } else { Fix::Init };
    let ca = load_cert(r, dir, CA_CERT, missing, Fix::Manual);
    let ca_key = load_key(r, dir, CA_KEY, missing, Fix::Manual);
    if half && (ca.is_none() || ca_key.is_none()) {
        r.push(
            CA_CERT,
            Severity::Error,
            format!(
                "the front-proxy CA is incomplete: remove {CA_CERT} and {CA_KEY}, run `imgbuild pki init` \
                 for a new one, then rebuild every node"
            ),
            Some(Fix::Manual),
        );
    }
    if let Some(der) = &ca {
        let ca_ok = with_cert(der, |c| c.is_ca() && c.verify_signature(None).is_ok());
        if ca_ok == Ok(true) {
            r.push(CA_CERT, Severity::Ok, "parses, self-signed CA".into(), None);
        } else {
            r.push(
                CA_CERT,
                Severity::Error,
                "is not a self-signed CA certificate".into(),
                Some(Fix::Manual),
            );
        }
        let shares = cluster_ca.is_some_and(|c| {
            with_cert(c, |c| c.public_key().raw.to_vec()).ok()
                == with_cert(der, |d| d.public_key().raw.to_vec()).ok()
        });
        if shares {
            r.push(
                CA_CERT,
                Severity::Error,
                "is the cluster CA (same key): extension API servers would believe request \
                 headers from anything the cluster CA signed; the front-proxy CA must be its own \
                 (remove front-proxy-ca*.pem and front-proxy-client*.pem, then run `imgbuild pki init`)"
                    .into(),
                Some(Fix::Manual),
            );
        }
        check_profile(r, CA_CERT, der, Expect::Ca, |_| Fix::Manual, "");
        expiry(r, CA_CERT, der, now, Fix::Manual);
        if let Some(key) = &ca_key {
            key_matches(r, CA_CERT, CA_KEY, der, key, Fix::Manual);
        }
    }
    let (cert_file, key_file) = (CLIENT.cert_file(), CLIENT.key_file());
    let key_fix = if dir.join(&cert_file).exists() {
        Fix::Renew
    } else {
        Fix::Init
    };
    let cert = load_cert(r, dir, &cert_file, Fix::Init, Fix::Renew);
    let key = load_key(r, dir, &key_file, key_fix, Fix::Renew);
    let Some(der) = cert else {
        return;
    };
    let cn = with_cert(&der, |c| first_attr(c.subject().iter_common_name()))
        .ok()
        .flatten()
        .unwrap_or_default();
    if cn == CLIENT.common_name {
        r.push(&cert_file, Severity::Ok, format!("subject CN={cn}"), None);
    } else {
        r.push(
            &cert_file,
            Severity::Error,
            format!(
                "subject CN={}, expected CN={} (the API server's --requestheader-allowed-names)",
                shown(&cn),
                CLIENT.common_name
            ),
            Some(Fix::Renew),
        );
    }
    match &ca {
        Some(ca) if chains_to(&der, ca) => r.push(
            &cert_file,
            Severity::Ok,
            format!("chains to {CA_CERT}"),
            None,
        ),
        Some(_) => r.push(
            &cert_file,
            Severity::Error,
            format!("was not issued by {CA_CERT} (issuer or signature differs)"),
            Some(Fix::Renew),
        ),
        None => {}
    }
    let new_pair = format!(
        "; for a new key pair remove {key_file} and {cert_file}, then run `imgbuild pki init --renew`"
    );
    let fix: ProfileFix = (
        |remedy| match remedy {
            Remedy::Reissue => Fix::Renew,
            Remedy::NewKey => Fix::Manual,
        },
        &new_pair,
    );
    check_profile(r, &cert_file, &der, Expect::Leaf(CLIENT.role), fix.0, fix.1);
    expiry(r, &cert_file, &der, now, Fix::Renew);
    if let Some(key) = &key {
        key_matches(r, &cert_file, &key_file, &der, key, Fix::Renew);
    }
}
