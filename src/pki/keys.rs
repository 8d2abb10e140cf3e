//! Reading keys and certificates: private keys and certificates from PEM, and
//! the facts `check` and `init` ask of a certificate (subject, chain, SANs).
//! Error texts name what is wrong with a file, never its content.

use rcgen::KeyPair;
use ring::rand::{SecureRandom, SystemRandom};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::San;

/// A private key from PEM: PKCS#8 ("PRIVATE KEY"), PKCS#1 ("RSA PRIVATE KEY") or
/// SEC1 ("EC PRIVATE KEY"). ring checks on loading that the private and the
/// public halves belong together.
pub(crate) fn parse_private_key(text: &str) -> Result<KeyPair, String> {
    let blocks = pem_blocks(text)?;
    let block = blocks
        .iter()
        .find(|b| b.tag().ends_with("PRIVATE KEY"))
        .ok_or_else(|| match blocks.first() {
            Some(b) => format!(
                "holds a {} block where a private key is expected",
                tag_shown(b.tag())
            ),
            None => "holds no PEM private key block".into(),
        })?;
    let der = block.contents();
    let pkcs8 = match block.tag() {
        "PRIVATE KEY" => der.to_vec(),
        "RSA PRIVATE KEY" => wrap_pkcs8(&RSA_ALGORITHM, der),
        "EC PRIVATE KEY" => {
            let curve = if contains(der, P256_OID) {
                P256_OID
            } else if contains(der, P384_OID) {
                P384_OID
            } else {
                return Err("EC key on a curve other than P-256 or P-384".into());
            };
            let mut alg = der_tlv(0x06, EC_PUBLIC_KEY_OID);
            alg.extend(der_tlv(0x06, curve));
            wrap_pkcs8(&der_tlv(0x30, &alg), der)
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err("is encrypted; imgbuild needs an unencrypted key".into());
        }
        other => {
            return Err(format!(
                "holds a {} block, not a supported key",
                tag_shown(other)
            ));
        }
    };
    KeyPair::try_from(pkcs8.as_slice())
        .map_err(|_| "is not a usable RSA (2048 bits or more) or ECDSA P-256/P-384 key".into())
}

/// A fresh ECDSA P-256 key (see the module comment of `pki` for why).
pub(crate) fn generate_key() -> Result<KeyPair, String> {
    KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())
}

/// A random positive 128-bit certificate serial. rcgen's default derives the
/// serial from the public key, which would repeat it when `--renew` re-issues a
/// certificate for the same key.
pub(crate) fn random_serial() -> Result<rcgen::SerialNumber, String> {
    let mut bytes = [0u8; 16];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the operating system's random generator failed")?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(rcgen::SerialNumber::from_slice(&bytes))
}

/// `n` random bytes from the operating system.
pub(crate) fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; n];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| "the operating system's random generator failed")?;
    Ok(bytes)
}

/// The DER of the first CERTIFICATE block of a PEM text.
pub(crate) fn cert_der(text: &str) -> Result<Vec<u8>, String> {
    let blocks = pem_blocks(text)?;
    let first = blocks.first().map(|b| tag_shown(b.tag()));
    blocks
        .into_iter()
        .find(|b| b.tag() == "CERTIFICATE")
        .map(|b| b.into_contents())
        .ok_or_else(|| match first {
            Some(tag) => format!("holds a {tag} block where a certificate is expected"),
            None => "holds no PEM CERTIFICATE block".into(),
        })
}

/// Every PEM block of `text`; a BEGIN line without its END is an error of its
/// own (a truncated file), which the PEM parser would pass over.
fn pem_blocks(text: &str) -> Result<Vec<pem::Pem>, String> {
    let blocks = pem::parse_many(text).map_err(|_| "is not valid PEM (damaged)".to_string())?;
    if text.matches("-----BEGIN ").count() > blocks.len() {
        return Err("is truncated: a PEM BEGIN line has no END line".into());
    }
    Ok(blocks)
}

/// A PEM tag for a message: only the characters a tag has, at most 40.
fn tag_shown(tag: &str) -> String {
    let clean: String = tag
        .chars()
        .filter(|c| c.is_ascii_uppercase() || *c == ' ' || c.is_ascii_digit())
        .take(40)
        .collect();
    format!("PEM {clean}")
}

/// Human name of a key's algorithm, for reports.
pub(crate) fn key_kind(key: &KeyPair) -> &'static str {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else {
        "RSA"
    }
}

pub(crate) fn with_cert<T>(der: &[u8], f: impl FnOnce(&X509Certificate) -> T) -> Result<T, String> {
    let (_, c) =
        X509Certificate::from_der(der).map_err(|_| "is not a parseable X.509 certificate")?;
    Ok(f(&c))
}

pub(crate) fn subject_cn(der: &[u8]) -> String {
    with_cert(der, |c| first_attr(c.subject().iter_common_name()))
        .ok()
        .flatten()
        .unwrap_or_default()
}

pub(crate) fn first_attr<'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'a>>,
) -> Option<String> {
    it.next()
        .and_then(|a| a.as_str().ok())
        .map(|s| s.to_string())
}

/// Whether `der` was issued and signed by the CA certificate `ca_der`.
pub(crate) fn chains_to(der: &[u8], ca_der: &[u8]) -> bool {
    let Ok((_, ca)) = X509Certificate::from_der(ca_der) else {
        return false;
    };
    with_cert(der, |c| {
        c.issuer().as_raw() == ca.subject().as_raw()
            && c.verify_signature(Some(ca.public_key())).is_ok()
    })
    .unwrap_or(false)
}

/// The required names a certificate lacks.
pub(crate) fn missing_sans(der: &[u8], sans: &[(San, String)]) -> Vec<(San, String)> {
    let present = with_cert(der, |c| {
        let mut ips = Vec::new();
        let mut dns = Vec::new();
        if let Ok(Some(ext)) = c.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::IPAddress(b) => ips.push(b.to_vec()),
                    GeneralName::DNSName(d) => dns.push(d.to_ascii_lowercase()),
                    _ => {}
                }
            }
        }
        (ips, dns)
    });
    let Ok((ips, dns)) = present else {
        return sans.to_vec();
    };
    sans.iter()
        .filter(|(san, _)| match san {
            San::Ip(std::net::IpAddr::V4(v4)) => !ips.iter().any(|b| b[..] == v4.octets()),
            San::Ip(std::net::IpAddr::V6(v6)) => !ips.iter().any(|b| b[..] == v6.octets()),
            San::Dns(d) => !dns.contains(&d.to_ascii_lowercase()),
        })
        .cloned()
        .collect()
}

// DER of AlgorithmIdentifier { rsaEncryption, NULL }.
const RSA_ALGORITHM: [u8; 15] = [
    0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
];
const EC_PUBLIC_KEY_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const P256_OID: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const P384_OID: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn der_tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// PrivateKeyInfo { version 0, algorithm, OCTET STRING inner }.
fn wrap_pkcs8(algorithm: &[u8], inner: &[u8]) -> Vec<u8> {
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(algorithm);
    body.extend(der_tlv(0x04, inner));
    der_tlv(0x30, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::PublicKeyData;

    #[test]
    fn generated_key_round_trips_through_pem() {
        let key = generate_key().unwrap();
        let pem = key.serialize_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let back = parse_private_key(&pem).unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());
        assert_eq!(key_kind(&back), "ECDSA P-256");
    }

    #[test]
    fn sec1_ec_key_is_wrapped() {
        // Strip the PKCS#8 wrapper of a generated key to get its SEC1 form, the
        // way `openssl ec` would write it (ring's inner key lacks the curve
        // parameters, so add them as openssl does).
        let key = generate_key().unwrap();
        let der = key.serialized_der();
        // Outer SEQUENCE, version, AlgorithmIdentifier, then OCTET STRING.
        let at = der
            .windows(P256_OID.len())
            .position(|w| w == P256_OID)
            .unwrap()
            + P256_OID.len();
        assert_eq!(der[at], 0x04);
        let (len, hdr) = if der[at + 1] < 0x80 {
            (der[at + 1] as usize, 2)
        } else {
            (der[at + 2] as usize, 3)
        };
        let sec1 = &der[at + hdr..at + hdr + len];
        let pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", sec1.to_vec()));
        // Without the curve inside, the key cannot be read: say so.
        assert!(parse_private_key(&pem).is_err());
        // With openssl's layout ([0] namedCurve), it loads and matches.
        let mut seq = sec1[2..].to_vec();
        let priv_end = 3 + 2 + 32; // version(3) + OCTET STRING(2+32)
        let mut params = der_tlv(0x06, P256_OID);
        params = der_tlv(0xa0, &params);
        seq.splice(priv_end..priv_end, params);
        let full = der_tlv(0x30, &seq);
        let pem = pem::encode(&pem::Pem::new("EC PRIVATE KEY", full));
        let back = parse_private_key(&pem).unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());
    }

    #[test]
    fn errors_do_not_echo_content() {
        let secret = "c2VjcmV0LXNob3VsZC1uZXZlci1hcHBlYXI=";
        let text = format!("-----BEGIN PRIVATE KEY-----\n{secret}\n-----END PRIVATE KEY-----\n");
        let err = parse_private_key(&text).unwrap_err();
        assert!(!err.contains(secret), "{err}");
        assert!(parse_private_key("garbage").is_err());
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED PRIVATE KEY-----\n";
        assert!(parse_private_key(enc).unwrap_err().contains("encrypted"));
    }

    #[test]
    fn serials_are_positive_and_differ() {
        let a = random_serial().unwrap().to_bytes();
        let b = random_serial().unwrap().to_bytes();
        assert_ne!(a, b);
        assert!(a[0] & 0x80 == 0 && a[0] != 0);
        let _ = generate_key().unwrap().subject_public_key_info();
    }
}
