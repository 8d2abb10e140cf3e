//! `encryption-config.yaml`: the aescbc key that encrypts Secrets in etcd.
//!
//! The key must survive every change but `--force`: a new key makes the
//! Secrets already in etcd unreadable. `--renew` only rewrites the wrapper when
//! the target version wants the other format, keeping the keys.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use yaml_rust2::YamlLoader;

/// One aescbc key: its name and base64 secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AesKey {
    pub name: String,
    pub secret_b64: String,
}

pub(crate) struct Parsed {
    pub legacy: bool,
    pub keys: Vec<AesKey>,
}

pub(crate) fn render(legacy: bool, keys: &[AesKey]) -> String {
    let (kind, api) = if legacy {
        ("EncryptionConfig", "v1")
    } else {
        ("EncryptionConfiguration", "apiserver.config.k8s.io/v1")
    };
    let mut out = format!(
        "kind: {kind}\napiVersion: {api}\nresources:\n  - resources:\n      - secrets\n    providers:\n      - aescbc:\n          keys:\n"
    );
    for k in keys {
        let name = serde_json::to_string(&k.name).expect("a string serializes");
        out.push_str(&format!(
            "            - name: {name}\n              secret: {}\n",
            k.secret_b64
        ));
    }
    out.push_str("      - identity: {}\n");
    out
}

/// Read the aescbc keys and the format. Errors never quote a secret.
pub(crate) fn parse(text: &str) -> Result<Parsed, String> {
    let docs = YamlLoader::load_from_str(text)
        .map_err(|e| format!("not valid YAML (line {})", e.marker().line()))?;
    let doc = docs.first().ok_or("is empty")?;
    let kind = doc["kind"].as_str().unwrap_or("");
    let api = doc["apiVersion"].as_str().unwrap_or("");
    let legacy = match (kind, api) {
        ("EncryptionConfig", "v1") => true,
        ("EncryptionConfiguration", "apiserver.config.k8s.io/v1") => false,
        _ => {
            return Err(format!(
                "kind {kind:?} apiVersion {api:?} is neither EncryptionConfig v1 nor EncryptionConfiguration apiserver.config.k8s.io/v1"
            ));
        }
    };
    let mut keys = Vec::new();
    for res in doc["resources"].as_vec().into_iter().flatten() {
        for prov in res["providers"].as_vec().into_iter().flatten() {
            for k in prov["aescbc"]["keys"].as_vec().into_iter().flatten() {
                let name = k["name"].as_str().ok_or("an aescbc key has no name")?;
                let secret = k["secret"]
                    .as_str()
                    .ok_or_else(|| format!("aescbc key {name:?} has no secret"))?;
                let len = B64
                    .decode(secret.trim())
                    .map_err(|_| format!("aescbc key {name:?}: secret is not base64"))?
                    .len();
                if len != 32 {
                    return Err(format!(
                        "aescbc key {name:?} is {len} bytes; aescbc needs 32"
                    ));
                }
                keys.push(AesKey {
                    name: name.to_string(),
                    secret_b64: secret.trim().to_string(),
                });
            }
        }
    }
    if keys.is_empty() {
        return Err("holds no aescbc key".into());
    }
    Ok(Parsed { legacy, keys })
}

/// A fresh 32-byte key from the operating system's random generator.
pub(crate) fn new_key() -> Result<AesKey, String> {
    Ok(AesKey {
        name: "key1".into(),
        secret_b64: B64.encode(super::keys::random_bytes(32)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_formats_round_trip_and_keep_keys() {
        let k = new_key().unwrap();
        for legacy in [true, false] {
            let text = render(legacy, std::slice::from_ref(&k));
            let p = parse(&text).unwrap();
            assert_eq!(p.legacy, legacy);
            assert_eq!(p.keys, vec![k.clone()]);
        }
        assert!(
            render(true, std::slice::from_ref(&k))
                .contains("kind: EncryptionConfig\napiVersion: v1\n")
        );
        assert!(render(false, &[k]).contains("apiVersion: apiserver.config.k8s.io/v1"));
    }

    #[test]
    fn keys_are_random() {
        assert_ne!(new_key().unwrap(), new_key().unwrap());
    }

    #[test]
    fn short_key_is_rejected_without_echo() {
        let short = AesKey {
            name: "key1".into(),
            secret_b64: B64.encode([7u8; 16]),
        };
        let err = parse(&render(false, std::slice::from_ref(&short)))
            .err()
            .unwrap();
        assert!(err.contains("16 bytes"), "{err}");
        assert!(!err.contains(&short.secret_b64));
    }
}
