//! What each certificate must allow, and nothing more: basic constraints, key
//! usage, extended key usage, signature algorithm and key strength. `check`
//! turns the problems found here into findings.
//!
//! Who uses which certificate (see `overlays/controller/`):
//!
//! - `ca.pem` signs every other certificate, and the controller manager's
//!   CSR signer (`--cluster-signing-cert-file`) signs the kubelets' with it:
//!   CA:TRUE, keyCertSign. `pathlen:0` (only leaves below it) is what `init`
//!   issues; an older CA without it gets a warning, since replacing a CA means
//!   rebuilding every node.
//! - `kubernetes.pem` is kube-apiserver's serving certificate
//!   (`--tls-cert-file`: serverAuth) and its client certificate towards etcd
//!   (`--etcd-certfile`) and the kubelets (`--kubelet-client-certificate`):
//!   clientAuth too.
//! - `etcd-<name>.pem`, one per controller: its etcd's serving certificate
//!   towards clients and peers (serverAuth), and its client certificate
//!   towards its peers (clientAuth); see `etcd`.
//! - `admin.pem`, `kube-controller-manager.pem`, `kube-scheduler.pem` (and the
//!   copies in their kubeconfigs) are client certificates: clientAuth.
//! - `service-account.pem` only carries the public key the API server checks
//!   tokens with (`--service-account-key-file`); nobody presents it in TLS, so
//!   it needs no extended key usage at all. One with clientAuth would log in to
//!   the API server as `CN=service-accounts`: a warning, `--renew` re-issues it.
//!
//! Everywhere: no leaf is a CA, signatures use SHA-256 or stronger, RSA keys
//! have at least 2048 bits, EC keys are on P-256 or P-384, Ed25519 is accepted
//! for TLS but not for the service-account key (kube-apiserver signs tokens
//! with RSA or ECDSA only).

use x509_parser::certificate::X509Certificate;
use x509_parser::public_key::PublicKey;

use super::Role;
use super::report::Severity;

/// What the certificate in a file is meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expect {
    Ca,
    Leaf(Role),
}

/// What repairs a problem: a new certificate for the same key (from the same
/// CA), a new key, or (for the CA itself) a new CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Remedy {
    Reissue,
    NewKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Problem {
    pub severity: Severity,
    pub message: String,
    pub remedy: Remedy,
}

/// A summary for the report ("ECDSA P-256, ecdsa-with-SHA256, serverAuth
/// clientAuth") and every problem found.
pub(crate) fn inspect(c: &X509Certificate, expect: Expect) -> (String, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut error = |message: String, remedy: Remedy| {
        problems.push(Problem {
            severity: Severity::Error,
            message,
            remedy,
        })
    };
    let sig = signature(c);
    if let Err(weak) = &sig {
        error(
            format!("is signed with {weak}; signatures must use SHA-256 or stronger"),
            Remedy::Reissue,
        );
    }
    let key = key_strength(c, expect);
    if let Err(weak) = &key {
        error(weak.clone(), Remedy::NewKey);
    }

    let bc = c
        .basic_constraints()
        .ok()
        .flatten()
        .map(|e| e.value.clone());
    let ku = c.key_usage().ok().flatten().map(|e| *e.value);
    let eku = c
        .extended_key_usage()
        .ok()
        .flatten()
        .map(|e| e.value.clone());
    let mut usages = Vec::new();
    match expect {
        Expect::Ca => {
            // CA:TRUE itself is checked with the self-signature, in `check`.
            if let Some(ku) = &ku
                && !ku.key_cert_sign()
            {
                error(
                    "keyUsage lacks keyCertSign: verifiers refuse what it signs".into(),
                    Remedy::Reissue,
                );
            }
            match bc.as_ref().and_then(|b| b.path_len_constraint) {
                Some(0) => usages.push("pathlen:0".to_string()),
                other => {
                    let what = match other {
                        Some(n) => format!("allows {n} intermediate CA(s) below it (pathlen:{n})"),
                        None => "has no pathLenConstraint".into(),
                    };
                    problems.push(Problem {
                        severity: Severity::Warning,
                        message: format!(
                            "{what}: a certificate it signed with CA:TRUE would be trusted as an \
                             intermediate CA; `pki init` issues CAs with pathlen:0. Replace it at \
                             the next CA rotation (every node must then be rebuilt)"
                        ),
                        remedy: Remedy::Reissue,
                    });
                }
            }
        }
        Expect::Leaf(role) => {
            if bc.as_ref().is_some_and(|b| b.ca) {
                error(
                    "is marked as a CA (basicConstraints CA:TRUE); a leaf certificate must be CA:FALSE"
                        .into(),
                    Remedy::Reissue,
                );
            }
            if let Some(ku) = &ku {
                if ku.key_cert_sign() || ku.crl_sign() {
                    error(
                        "keyUsage allows signing certificates (keyCertSign/cRLSign); a leaf must not"
                            .into(),
                        Remedy::Reissue,
                    );
                }
                if !ku.digital_signature() {
                    error(
                        "keyUsage lacks digitalSignature: TLS handshakes and token signatures with it fail"
                            .into(),
                        Remedy::Reissue,
                    );
                }
            }
            let (server, client) = eku
                .as_ref()
                .map_or((false, false), |e| (e.server_auth, e.client_auth));
            if server {
                usages.push("serverAuth".into());
            }
            if client {
                usages.push("clientAuth".into());
            }
            match role {
                Role::ApiServer => {
                    if !server {
                        error(
                            "has no extendedKeyUsage serverAuth: kube-apiserver serves TLS with it \
                             (--tls-cert-file) and clients refuse it"
                                .into(),
                            Remedy::Reissue,
                        );
                    }
                    if !client {
                        error(
                            "has no extendedKeyUsage clientAuth: kube-apiserver also presents it \
                             to etcd (--etcd-certfile) and to the kubelets \
                             (--kubelet-client-certificate)"
                                .into(),
                            Remedy::Reissue,
                        );
                    }
                }
                Role::Etcd => {
                    if !server {
                        error(
                            "has no extendedKeyUsage serverAuth: etcd serves its clients \
                             (--cert-file) and peers (--peer-cert-file) with it"
                                .into(),
                            Remedy::Reissue,
                        );
                    }
                    if !client {
                        error(
                            "has no extendedKeyUsage clientAuth: etcd presents it to its peers \
                             (--peer-client-cert-auth refuses it otherwise)"
                                .into(),
                            Remedy::Reissue,
                        );
                    }
                }
                Role::Client { .. } => {
                    if !client {
                        error(
                            "has no extendedKeyUsage clientAuth: the API server refuses it as a \
                             client certificate"
                                .into(),
                            Remedy::Reissue,
                        );
                    }
                }
                Role::ServiceAccount => {
                    if server || client {
                        problems.push(Problem {
                            severity: Severity::Warning,
                            message: format!(
                                "carries extendedKeyUsage {}: only its public key is used \
                                 (--service-account-key-file), and as a TLS certificate it would \
                                 log in to the API server as CN=service-accounts",
                                usages.join(" ")
                            ),
                            remedy: Remedy::Reissue,
                        });
                    } else {
                        usages.push("no extendedKeyUsage (a key holder)".into());
                    }
                }
            }
        }
    }
    let mut summary = vec![
        key.unwrap_or_else(|_| "weak key".into()),
        sig.unwrap_or_else(|weak| weak),
    ];
    summary.extend(usages);
    (summary.join(", "), problems)
}

/// The signature algorithm's name, or Err(name) when it is weaker than SHA-256.
fn signature(c: &X509Certificate) -> Result<String, String> {
    const SHA2_OIDS: [&[u8]; 3] = [
        &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01],
        &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02],
        &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03],
    ];
    let alg = &c.signature_algorithm;
    let oid = alg.algorithm.to_id_string();
    let (name, strong) = match oid.as_str() {
        "1.2.840.113549.1.1.11" => ("sha256WithRSAEncryption", true),
        "1.2.840.113549.1.1.12" => ("sha384WithRSAEncryption", true),
        "1.2.840.113549.1.1.13" => ("sha512WithRSAEncryption", true),
        "1.2.840.10045.4.3.2" => ("ecdsa-with-SHA256", true),
        "1.2.840.10045.4.3.3" => ("ecdsa-with-SHA384", true),
        "1.2.840.10045.4.3.4" => ("ecdsa-with-SHA512", true),
        "1.3.101.112" => ("Ed25519", true),
        "1.2.840.113549.1.1.10" => {
            // RSASSA-PSS: the hash is in the parameters (SHA-1 when absent).
            let params = alg.parameters.as_ref().map(|p| p.data).unwrap_or(&[]);
            let sha2 = SHA2_OIDS
                .iter()
                .any(|o| params.windows(o.len()).any(|w| w == *o));
            if sha2 {
                ("RSASSA-PSS (SHA-2)", true)
            } else {
                ("RSASSA-PSS with SHA-1", false)
            }
        }
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => ("sha1WithRSAEncryption (SHA-1)", false),
        "1.2.840.113549.1.1.4" => ("md5WithRSAEncryption (MD5)", false),
        "1.2.840.113549.1.1.2" => ("md2WithRSAEncryption (MD2)", false),
        "1.2.840.113549.1.1.14" => ("sha224WithRSAEncryption (SHA-224)", false),
        "1.2.840.10045.4.1" => ("ecdsa-with-SHA1 (SHA-1)", false),
        "1.2.840.10045.4.3.1" => ("ecdsa-with-SHA224 (SHA-224)", false),
        "1.2.840.10040.4.3" => ("dsa-with-sha1 (SHA-1)", false),
        _ => return Err(format!("an algorithm imgbuild does not accept (OID {oid})")),
    };
    if strong {
        Ok(name.into())
    } else {
        Err(name.into())
    }
}

/// "RSA 2048", "ECDSA P-256", ... or why the key is too weak.
fn key_strength(c: &X509Certificate, expect: Expect) -> Result<String, String> {
    const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    let spki = c.public_key();
    let alg = spki.algorithm.algorithm.to_id_string();
    match alg.as_str() {
        "1.2.840.113549.1.1.1" => {
            let bits = match spki.parsed() {
                Ok(PublicKey::RSA(rsa)) => {
                    let m = rsa.modulus;
                    let start = m.iter().position(|b| *b != 0).unwrap_or(m.len());
                    let m = &m[start..];
                    m.first()
                        .map_or(0, |b| 8 * m.len() - b.leading_zeros() as usize)
                }
                _ => return Err("holds an RSA public key that does not parse".into()),
            };
            if bits < 2048 {
                Err(format!(
                    "holds a {bits}-bit RSA key; RSA keys need at least 2048 bits"
                ))
            } else {
                Ok(format!("RSA {bits}"))
            }
        }
        "1.2.840.10045.2.1" => {
            let curve = spki.algorithm.parameters.as_ref().map(|p| p.data);
            match curve {
                Some(P256) => Ok("ECDSA P-256".into()),
                Some(P384) => Ok("ECDSA P-384".into()),
                _ => Err("holds an EC key on a curve other than P-256 or P-384".into()),
            }
        }
        "1.3.101.112" if expect == Expect::Leaf(Role::ServiceAccount) => Err(
            "holds an Ed25519 key, which kube-apiserver cannot sign service-account tokens with (RSA or ECDSA only)"
                .into(),
        ),
        "1.3.101.112" => Ok("Ed25519".into()),
        other => Err(format!(
            "holds a public key of an algorithm imgbuild does not accept (OID {other}); use RSA (2048 bits or more), ECDSA P-256/P-384 or Ed25519"
        )),
    }
}
