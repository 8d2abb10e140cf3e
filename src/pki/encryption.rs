//! `encryption-config.yaml`: the keys that encrypt Secrets in etcd.
//!
//! The first provider listed encrypts what the API server writes; every
//! provider listed is tried when it reads. A new config gets one 32-byte key
//! of one cipher:
//!
//! - `secretbox` (XSalsa20 and Poly1305) from v1.13 (the versions that read an
//!   `EncryptionConfiguration`); upstream rates it strong, and `aescbc` weak
//!   ("not recommended due to CBC's vulnerability to padding oracle attacks",
//!   kubernetes.io, Encrypting Confidential Data at Rest). secretbox exists
//!   since v1.7 (kubernetes/kubernetes#46916), so `--encryption secretbox`
//!   works for older versions too;
//! - `aescbc` before v1.13: the seed's v1.10.2 config, as the seed writes it
//!   (with `identity` last).
//!
//! A key is never replaced: Secrets written with it would become unreadable.
//! Changing the cipher of an existing config is the upstream key rotation, one
//! step per [`switch_to`] call, each followed by a rollout of every controller
//! (see docs/pki.md).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use yaml_rust2::Yaml;

use super::ENCRYPTION_CONFIG;
use super::report::{CheckReport, Fix, Severity, shown};

/// The ciphers imgbuild writes keys for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    Aescbc,
    Secretbox,
}

impl Cipher {
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aescbc => "aescbc",
            Cipher::Secretbox => "secretbox",
        }
    }

    /// The cipher of a new config for `kubernetes_version` (see the module comment).
    pub fn default_for(kubernetes_version: &str) -> Cipher {
        if super::legacy_encryption_config(kubernetes_version) {
            Cipher::Aescbc
        } else {
            Cipher::Secretbox
        }
    }
}

impl std::str::FromStr for Cipher {
    type Err = String;
    fn from_str(s: &str) -> Result<Cipher, String> {
        match s {
            "aescbc" => Ok(Cipher::Aescbc),
            "secretbox" => Ok(Cipher::Secretbox),
            _ => Err(format!("{s:?} is not secretbox or aescbc")),
        }
    }
}

/// One key: its name and base64 secret (always 32 bytes decoded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Key {
    pub name: String,
    pub secret_b64: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Provider {
    Cipher(Cipher, Vec<Key>),
    Identity,
    /// kms, aesgcm or anything else: read past, never written by imgbuild.
    Other(String),
}

impl fmt::Display for Provider {
    /// `secretbox (key1, key2)`, `identity`; never a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Provider::Cipher(c, keys) => {
                let names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
                write!(f, "{} ({})", c.name(), names.join(", "))
            }
            Provider::Identity => f.write_str("identity"),
            Provider::Other(name) => f.write_str(name),
        }
    }
}

pub(crate) struct Parsed {
    pub legacy: bool,
    /// The providers of the entry for `secrets`, in order.
    pub providers: Vec<Provider>,
    /// Entries for other resources than `secrets` (kept by hand; imgbuild
    /// does not rewrite such a file).
    pub other_entries: bool,
}

impl Parsed {
    /// Whether [`render`] can write this config back without losing anything.
    pub fn renderable(&self) -> bool {
        !self.other_entries
            && self
                .providers
                .iter()
                .all(|p| !matches!(p, Provider::Other(_)))
    }
}

/// A new config: one fresh key of `cipher` (aescbc also reads plain text, as
/// the seed's does).
pub(crate) fn new_providers(cipher: Cipher) -> Result<Vec<Provider>, String> {
    let key = new_key("key1")?;
    Ok(match cipher {
        Cipher::Aescbc => vec![Provider::Cipher(cipher, vec![key]), Provider::Identity],
        Cipher::Secretbox => vec![Provider::Cipher(cipher, vec![key])],
    })
}

/// The YAML of a config (`Provider::Other` cannot be written: see `renderable`).
pub(crate) fn render(legacy: bool, providers: &[Provider]) -> String {
    let (kind, api) = if legacy {
        ("EncryptionConfig", "v1")
    } else {
        ("EncryptionConfiguration", "apiserver.config.k8s.io/v1")
    };
    let mut out = format!(
        "kind: {kind}\napiVersion: {api}\nresources:\n  - resources:\n      - secrets\n    providers:\n"
    );
    for p in providers {
        match p {
            Provider::Cipher(c, keys) => {
                out.push_str(&format!("      - {}:\n          keys:\n", c.name()));
                for k in keys {
                    let name = serde_json::to_string(&k.name).expect("a string serializes");
                    out.push_str(&format!(
                        "            - name: {name}\n              secret: {}\n",
                        k.secret_b64
                    ));
                }
            }
            Provider::Identity => out.push_str("      - identity: {}\n"),
            Provider::Other(_) => {}
        }
    }
    out
}

/// Read the format and the providers for `secrets`. Errors name what is
/// wrong, never a secret.
pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
    let doc = super::yaml::load(text)?;
    let kind = doc["kind"].as_str().unwrap_or("");
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let legacy = match (kind, api) {
        ("EncryptionConfig", "v1") => true,
        ("EncryptionConfiguration", "apiserver.config.k8s.io/v1") => false,
        _ => {
            return Err(format!(
                "kind {} apiVersion {} is neither EncryptionConfig v1 nor EncryptionConfiguration apiserver.config.k8s.io/v1",
                shown(kind),
                shown(api)
            ));
        }
    };
    let entries = doc["resources"].as_vec().ok_or("has no resources list")?;
    let covers_secrets = |e: &Yaml| {
        e["resources"]
            .as_vec()
            .is_some_and(|r| r.iter().any(|n| n.as_str() == Some("secrets")))
    };
    let entry = entries
        .iter()
        .find(|e| covers_secrets(e))
        .ok_or("has no entry for secrets: Secrets are stored unencrypted")?;
    let mut providers = Vec::new();
    for p in entry["providers"].as_vec().into_iter().flatten() {
        let hash = p.as_hash().filter(|h| h.len() == 1).ok_or(
            "has a providers item that does not name exactly one provider (aescbc, secretbox, identity, ...)",
        )?;
        let (name, body) = hash.iter().next().expect("one entry");
        let name = name
            .as_str()
            .ok_or("has a provider whose name is not text")?;
        providers.push(match name {
            "aescbc" => Provider::Cipher(Cipher::Aescbc, keys(Cipher::Aescbc, body)?),
            "secretbox" => Provider::Cipher(Cipher::Secretbox, keys(Cipher::Secretbox, body)?),
            "identity" => Provider::Identity,
            other => Provider::Other(shown(other).trim_matches('"').to_string()),
        });
    }
    if providers.is_empty() {
        return Err("lists no providers for secrets: Secrets are stored unencrypted".into());
    }
    Ok(Parsed {
        legacy,
        providers,
        other_entries: entries.len() > 1,
    })
}

fn keys(cipher: Cipher, body: &Yaml) -> Result<Vec<Key>, String> {
    let c = cipher.name();
    let list = body["keys"]
        .as_vec()
        .filter(|l| !l.is_empty())
        .ok_or_else(|| format!("{c} lists no keys"))?;
    let mut out: Vec<Key> = Vec::new();
    for k in list {
        let name = k["name"]
            .as_str()
            .filter(|n| !n.is_empty())
            .ok_or_else(|| format!("a {c} key has no name"))?;
        let secret = k["secret"]
            .as_str()
            .ok_or_else(|| format!("{c} key {} has no secret", shown(name)))?;
        let len = B64
            .decode(secret.trim())
            .map_err(|_| format!("{c} key {}: secret is not base64", shown(name)))?
            .len();
        if len != 32 {
            return Err(format!(
                "{c} key {} is {len} bytes; imgbuild requires 32-byte keys",
                shown(name)
            ));
        }
        if out.iter().any(|o| o.name == name) {
            return Err(format!("{c} lists the key name {} twice", shown(name)));
        }
        out.push(Key {
            name: name.to_string(),
            secret_b64: secret.trim().to_string(),
        });
    }
    Ok(out)
}

/// A fresh 32-byte key from the operating system's random generator.
pub(crate) fn new_key(name: &str) -> Result<Key, String> {
    Ok(Key {
        name: name.into(),
        secret_b64: B64.encode(super::keys::random_bytes(32)?),
    })
}

/// What one [`switch_to`] call did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// `to` already encrypts (and, with `drop_old`, nothing else is listed).
    Nothing,
    /// A new key of `to` was added second: it reads, nothing writes with it yet.
    Added(String),
    /// `to` moved first: it encrypts from now on; the others still read.
    Promoted,
    /// Every provider but `to` removed (their descriptions).
    Dropped(Vec<String>),
}

/// One step of changing the config's cipher to `to`, never removing a key
/// unless `drop_old` (and then only once `to` already encrypts).
pub(crate) fn switch_to(
    providers: &mut Vec<Provider>,
    to: Cipher,
    drop_old: bool,
) -> Result<Step, String> {
    let is_to = |p: &Provider| matches!(p, Provider::Cipher(c, _) if *c == to);
    let first = providers.first().is_some_and(is_to);
    if drop_old {
        if !first {
            return Err(format!(
                "--drop-old-keys: {} does not encrypt yet (it is not the first provider); run `imgbuild pki init --encryption {}` and roll out every controller first",
                to.name(),
                to.name()
            ));
        }
        let dropped: Vec<String> = providers[1..].iter().map(|p| p.to_string()).collect();
        providers.truncate(1);
        return Ok(if dropped.is_empty() {
            Step::Nothing
        } else {
            Step::Dropped(dropped)
        });
    }
    if first {
        return Ok(Step::Nothing);
    }
    if let Some(i) = providers.iter().position(is_to) {
        let p = providers.remove(i);
        providers.insert(0, p);
        return Ok(Step::Promoted);
    }
    let taken = |n: &str| {
        providers
            .iter()
            .any(|p| matches!(p, Provider::Cipher(_, keys) if keys.iter().any(|k| k.name == n)))
    };
    let name = (1..)
        .map(|i| format!("key{i}"))
        .find(|n| !taken(n))
        .expect("an unused name");
    let key = new_key(&name)?;
    providers.insert(1.min(providers.len()), Provider::Cipher(to, vec![key]));
    Ok(Step::Added(name))
}

/// `pki check`'s findings on the config's text: its format for `version`,
/// which provider encrypts (an error for identity, a warning for aescbc on a
/// version that reads secretbox's format) and which others still read.
pub(crate) fn check(r: &mut CheckReport, text: &str, version: &str) {
    const E: &str = ENCRYPTION_CONFIG;
    let p = match parse(text) {
        Ok(p) => p,
        Err(e) => {
            let msg = format!(
                "{e}; it is never overwritten (its keys decrypt the Secrets in etcd): restore it \
                 from a backup, or, for a cluster with no Secrets to keep, remove it and run \
                 `imgbuild pki init` for a new key"
            );
            r.push(E, Severity::Error, msg, Some(Fix::Manual));
            return;
        }
    };
    let want_legacy = super::legacy_encryption_config(version);
    let fmt_name = |legacy: bool| {
        if legacy {
            "EncryptionConfig v1"
        } else {
            "EncryptionConfiguration apiserver.config.k8s.io/v1"
        }
    };
    if p.legacy == want_legacy {
        let msg = format!("{}, as {version} reads", fmt_name(p.legacy));
        r.push(E, Severity::Ok, msg, None);
    } else {
        let msg = format!(
            "is {}, but {version} reads {} (--renew rewrites it, keeping the keys)",
            fmt_name(p.legacy),
            fmt_name(want_legacy)
        );
        r.push(E, Severity::Error, msg, Some(Fix::Renew));
    }
    let steps = "in steps that keep every old key for reading (docs/pki.md, \"Changing the encryption provider\")";
    let writer = &p.providers[0];
    match writer {
        Provider::Identity => r.push(
            E,
            Severity::Error,
            format!(
                "lists identity first: Secrets are written to etcd unencrypted; make a cipher the \
                 first provider: imgbuild pki init --encryption secretbox, {steps}"
            ),
            Some(Fix::Manual),
        ),
        Provider::Cipher(Cipher::Aescbc, _) if !want_legacy => r.push(
            E,
            Severity::Warning,
            format!(
                "{writer} encrypts Secrets; upstream no longer recommends aescbc (CBC is open to \
                 padding-oracle attacks): switch to secretbox with \
                 imgbuild pki init --encryption secretbox, {steps}"
            ),
            Some(Fix::Manual),
        ),
        Provider::Cipher(..) => r.push(E, Severity::Ok, format!("{writer} encrypts Secrets"), None),
        Provider::Other(name) => r.push(
            E,
            Severity::Warning,
            format!("{name} encrypts Secrets; imgbuild does not check {name} providers"),
            None,
        ),
    }
    if p.providers.len() > 1 {
        let rest: Vec<String> = p.providers[1..].iter().map(|p| p.to_string()).collect();
        let msg = format!("also reads with {}", rest.join(", "));
        r.push(E, Severity::Ok, msg, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_round_trip_and_keep_keys() {
        for cipher in [Cipher::Aescbc, Cipher::Secretbox] {
            let providers = new_providers(cipher).unwrap();
            for legacy in [true, false] {
                let text = render(legacy, &providers);
                let p = parse(&text).unwrap();
                assert_eq!(p.legacy, legacy);
                assert_eq!(p.providers, providers);
                assert!(p.renderable());
            }
        }
        let seed = render(true, &new_providers(Cipher::Aescbc).unwrap());
        assert!(seed.starts_with("kind: EncryptionConfig\napiVersion: v1\n"));
        assert!(seed.ends_with("      - identity: {}\n"), "{seed}");
        assert_eq!(Cipher::default_for("v1.10.2"), Cipher::Aescbc);
        assert_eq!(Cipher::default_for("v1.36.0"), Cipher::Secretbox);
    }

    #[test]
    fn keys_are_random() {
        assert_ne!(new_key("a").unwrap(), new_key("a").unwrap());
    }

    #[test]
    fn short_key_is_rejected_without_echo() {
        let short = Key {
            name: "key1".into(),
            secret_b64: B64.encode([7u8; 16]),
        };
        let text = render(
            false,
            &[Provider::Cipher(Cipher::Aescbc, vec![short.clone()])],
        );
        let err = parse(&text).err().unwrap();
        assert!(err.contains("16 bytes"), "{err}");
        assert!(!err.contains(&short.secret_b64));
    }

    #[test]
    fn switching_cipher_takes_steps_and_keeps_keys() {
        let mut ps = new_providers(Cipher::Aescbc).unwrap();
        let old = ps[0].clone();
        assert!(switch_to(&mut ps, Cipher::Secretbox, true).is_err());
        assert_eq!(
            switch_to(&mut ps, Cipher::Secretbox, false).unwrap(),
            Step::Added("key2".into())
        );
        assert_eq!(ps[0], old);
        assert!(matches!(ps[1], Provider::Cipher(Cipher::Secretbox, _)));
        assert_eq!(
            switch_to(&mut ps, Cipher::Secretbox, false).unwrap(),
            Step::Promoted
        );
        assert_eq!(ps[1], old);
        assert_eq!(
            switch_to(&mut ps, Cipher::Secretbox, false).unwrap(),
            Step::Nothing
        );
        let Step::Dropped(gone) = switch_to(&mut ps, Cipher::Secretbox, true).unwrap() else {
            panic!()
        };
        assert_eq!(gone, ["aescbc (key1)", "identity"]);
        assert_eq!(ps.len(), 1);
    }

    #[test]
    fn identity_first_and_other_providers_parse() {
        let text = "kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\nresources:\n  - resources: [secrets]\n    providers:\n      - identity: {}\n      - kms: {name: x}\n";
        let p = parse(text).unwrap();
        assert_eq!(p.providers[0], Provider::Identity);
        assert!(!p.renderable());
        assert!(parse(&text.replace("[secrets]", "[configmaps]")).is_err());
    }
}
