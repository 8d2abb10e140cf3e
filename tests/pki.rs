//! `imgbuild pki init|check` through the real binary, judged by real consumers:
//! openssl (verify, x509, pkey, s_server) and kubectl.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Workspace, assert_no_secret, text};

const KUBECTL: &str = "kubectl";

const INVENTORY: &str = r#"
[cluster]
name = "test-cluster"
kubernetes_version = "v1.10.2"
arch = "amd64"
public_address = "203.0.113.10"
service_cluster_ip_range = "10.32.0.0/24"
cluster_cidr = "10.200.0.0/16"
service_node_port_range = "30000-32767"
pki_dir = "secrets/pki"

[[controllers]]
name = "controller-1"
internal_ip = "10.240.0.11"

[[controllers]]
name = "controller-2"
internal_ip = "10.240.0.12"
"#;

const CERTS: &[&str] = &[
    "kubernetes",
    "service-account",
    "admin",
    "kube-controller-manager",
    "kube-scheduler",
];

/// (kubeconfig, user, CN, O)
const KUBECONFIGS: &[(&str, &str, &str, &str)] = &[
    ("admin.kubeconfig", "admin", "admin", "system:masters"),
    (
        "kube-controller-manager.kubeconfig",
        "system:kube-controller-manager",
        "system:kube-controller-manager",
        "system:kube-controller-manager",
    ),
    (
        "kube-scheduler.kubeconfig",
        "system:kube-scheduler",
        "system:kube-scheduler",
        "system:kube-scheduler",
    ),
];

/// A workspace with `inventory` and nothing else (no PKI, no release); every
/// run names the inventory by its absolute path and is checked for secrets.
fn workspace(inventory: &str) -> Workspace {
    bare(inventory).guard_secrets().build()
}

/// Run, require exit `code`, return all it printed (`pki check` reports on stdout).
fn fails_saying(ws: &Workspace, args: &[&str], code: i32) -> String {
    let out = ws.run(args);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(code), "{said}");
    said
}

/// The bundled example's inventory, as [`workspace`] but without the secret
/// check (which has always looked at `secrets/pki`, the test inventory's
/// folder, and so never at this one's `pki`).
fn example_workspace() -> Workspace {
    bare(&std::fs::read_to_string(Path::new(support::REPO).join("cluster.toml")).unwrap()).build()
}

fn bare(inventory: &str) -> support::Builder {
    Workspace::builder("v1.10.2")
        .inventory(inventory)
        .no_pki()
        .no_binaries()
        .explicit_inventory()
}

fn tool(cmd: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(cmd)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

fn tool_ok(cmd: &str, args: &[&str], dir: &Path) -> String {
    let out = tool(cmd, args, dir);
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        text(&out)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn snapshot(dir: &Path) -> BTreeMap<String, (Vec<u8>, std::time::SystemTime)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let meta = p.metadata().unwrap();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                (std::fs::read(&p).unwrap(), meta.modified().unwrap()),
            )
        })
        .collect()
}

/// `openssl x509 -text` of `cert` in `dir`.
fn cert_text(dir: &Path, cert: &str) -> String {
    tool_ok("openssl", &["x509", "-in", cert, "-noout", "-text"], dir)
}

/// openssl verifies `cert` in `dir` against the `ca.pem` beside it.
fn verify(dir: &Path, cert: &str) -> String {
    tool_ok("openssl", &["verify", "-CAfile", "ca.pem", cert], dir)
}

/// openssl finds the same public key in `key` and in `cert` (files in `dir`).
fn assert_key_fits(dir: &Path, key: &str, cert: &str) {
    assert_eq!(
        tool_ok("openssl", &["pkey", "-in", key, "-pubout"], dir),
        tool_ok("openssl", &["x509", "-in", cert, "-noout", "-pubkey"], dir),
        "{key} does not fit {cert}"
    );
}

#[test]
fn init_output_satisfies_openssl_and_kubectl() {
    use std::os::unix::fs::PermissionsExt;
    let env = workspace(INVENTORY);
    let stdout = env.ok(&["pki", "init", "--days", "100"]);
    assert!(stdout.contains("created  ca.pem"), "{stdout}");
    let pki = env.pki_dir();
    let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pki), 0o700);

    for c in CERTS {
        let cert = format!("{c}.pem");
        let key = format!("{c}-key.pem");
        let out = verify(&pki, &cert);
        assert_eq!(out.trim(), format!("{cert}: OK"));
        assert_key_fits(&pki, &key, &cert);
        assert_eq!(mode(&pki.join(&cert)), 0o644, "{cert}");
        assert_eq!(mode(&pki.join(&key)), 0o600, "{key}");
        // --days is what the certificate says.
        let checkend = |days: u32| {
            let secs = (days * 86_400).to_string();
            tool(
                "openssl",
                &["x509", "-in", &cert, "-noout", "-checkend", &secs],
                &pki,
            )
        };
        let early = checkend(99);
        let dates = String::from_utf8_lossy(&early.stdout);
        assert!(early.status.success(), "{cert}: {}", text(&early));
        assert!(dates.contains("will not expire"), "{cert}: {dates}");
        assert!(
            !checkend(101).status.success(),
            "{cert} outlives --days 100"
        );
    }
    assert_key_fits(&pki, "ca-key.pem", "ca.pem");
    assert_eq!(mode(&pki.join("ca-key.pem")), 0o600);

    let api = cert_text(&pki, "kubernetes.pem");
    for san in [
        "IP Address:10.240.0.11",
        "IP Address:10.240.0.12",
        "IP Address:203.0.113.10",
        "IP Address:10.32.0.1",
        "IP Address:127.0.0.1",
        "DNS:kubernetes,",
        "DNS:kubernetes.default,",
        "DNS:kubernetes.default.svc,",
        "DNS:kubernetes.default.svc.cluster,",
        "DNS:kubernetes.default.svc.cluster.local",
    ] {
        assert!(api.contains(san), "kubernetes.pem lacks {san}:\n{api}");
    }
    assert!(
        api.contains("Subject: CN = kubernetes, O = Kubernetes"),
        "{api}"
    );
    assert!(api.contains("TLS Web Server Authentication"), "{api}");
    let ca = cert_text(&pki, "ca.pem");
    assert!(ca.contains("CA:TRUE"), "{ca}");

    for (file, user, cn, o) in KUBECONFIGS {
        assert_eq!(mode(&pki.join(file)), 0o600, "{file}");
        let view = |path: &str| {
            tool_ok(
                KUBECTL,
                &[
                    "config",
                    "view",
                    "--raw",
                    "--kubeconfig",
                    file,
                    "-o",
                    &format!("jsonpath={path}"),
                ],
                &pki,
            )
        };
        assert_eq!(view("{.current-context}"), "default");
        assert_eq!(
            view("{.clusters[0].cluster.server}"),
            "https://127.0.0.1:6443"
        );
        assert_eq!(view("{.clusters[0].name}"), "test-cluster");
        assert_eq!(view("{.users[0].name}"), *user);
        assert_eq!(view("{.contexts[0].context.user}"), *user);
        // Embedded data: the CA is ca.pem; the client certificate and key are a pair.
        let decode = |b64: String| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        let ca_data = decode(view("{.clusters[0].cluster.certificate-authority-data}"));
        assert_eq!(
            ca_data,
            std::fs::read(pki.join("ca.pem")).unwrap(),
            "{file}"
        );
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(
            tmp.path().join("c.pem"),
            decode(view("{.users[0].user.client-certificate-data}")),
        )
        .unwrap();
        std::fs::write(
            tmp.path().join("k.pem"),
            decode(view("{.users[0].user.client-key-data}")),
        )
        .unwrap();
        std::fs::copy(pki.join("ca.pem"), tmp.path().join("ca.pem")).unwrap();
        verify(tmp.path(), "c.pem");
        assert_key_fits(tmp.path(), "k.pem", "c.pem");
        let subject = tool_ok(
            "openssl",
            &["x509", "-in", "c.pem", "-noout", "-subject"],
            tmp.path(),
        );
        assert_eq!(
            subject.trim(),
            format!("subject=CN = {cn}, O = {o}"),
            "{file}"
        );
    }

    let enc = std::fs::read_to_string(pki.join("encryption-config.yaml")).unwrap();
    assert!(
        enc.starts_with("kind: EncryptionConfig\napiVersion: v1\n"),
        "{enc}"
    );
    assert_eq!(mode(&pki.join("encryption-config.yaml")), 0o600);

    let check = env.ok(&["pki", "check"]);
    assert!(check.contains("the PKI fits"), "{check}");
    assert!(
        check.contains("ok     kubernetes.pem: SANs cover the inventory"),
        "{check}"
    );
    assert!(check.contains("99 days until expiry"), "{check}");
}

#[test]
fn second_init_changes_nothing() {
    let env = workspace(INVENTORY);
    env.ok(&["pki", "init"]);
    let before = snapshot(&env.pki_dir());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let stdout = env.ok(&["pki", "init"]);
    assert!(stdout.contains("nothing to do"), "{stdout}");
    assert_eq!(before, snapshot(&env.pki_dir()), "bytes or mtimes changed");
}

#[test]
fn added_controller_fails_check_until_renew() {
    let env = workspace(INVENTORY);
    env.ok(&["pki", "init"]);
    let pki = env.pki_dir();
    let before = snapshot(&pki);

    let grown = format!(
        "{INVENTORY}\n[[controllers]]\nname = \"controller-3\"\ninternal_ip = \"10.240.0.13\"\n"
    );
    std::fs::write(env.path("cluster.toml"), grown).unwrap();

    let said = fails_saying(&env, &["pki", "check"], 2);
    assert!(
        said.contains("ERROR  kubernetes.pem: SANs do not cover 10.240.0.13"),
        "{said}"
    );
    assert!(said.contains("imgbuild pki init --renew"), "{said}");

    // A plain init adds nothing and says what to run.
    let said = fails_saying(&env, &["pki", "init"], 2);
    assert!(said.contains("--renew"), "{said}");
    assert_eq!(before, snapshot(&pki));

    // The build refuses it too, naming the command.
    let said = fails_saying(&env, &["controller", "--node", "1"], 2);
    assert!(said.contains("imgbuild pki init --renew"), "{said}");

    let stdout = env.ok(&["pki", "init", "--renew"]);
    assert!(stdout.contains("renewed  kubernetes.pem"), "{stdout}");
    let after = snapshot(&pki);
    for (name, (bytes, _)) in &before {
        if name != "kubernetes.pem" {
            assert_eq!(bytes, &after[name].0, "{name} changed");
        }
    }
    let api = cert_text(&pki, "kubernetes.pem");
    assert!(api.contains("IP Address:10.240.0.13"), "{api}");
    verify(&pki, "kubernetes.pem");
    assert_key_fits(&pki, "kubernetes-key.pem", "kubernetes.pem");
    env.ok(&["pki", "check"]);
}

#[test]
fn force_says_what_it_replaced() {
    let env = workspace(INVENTORY);
    env.ok(&["pki", "init"]);
    let old_ca = std::fs::read(env.pki_dir().join("ca.pem")).unwrap();
    let out = env.run(&["pki", "init", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("replaced ca-key.pem"), "{said}");
    assert!(
        said.contains("--force replaced ca.pem, ca-key.pem"),
        "{said}"
    );
    assert_ne!(old_ca, std::fs::read(env.pki_dir().join("ca.pem")).unwrap());
    let backup = std::fs::read_dir(env.pki_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .expect("a folder with the old files");
    assert_eq!(old_ca, std::fs::read(backup.join("ca.pem")).unwrap());
}

#[test]
fn current_versions_get_encryption_configuration() {
    let env = workspace(&INVENTORY.replace("v1.10.2", "v1.34.7"));
    env.ok(&["pki", "init"]);
    let enc = std::fs::read_to_string(env.pki_dir().join("encryption-config.yaml")).unwrap();
    assert!(
        enc.starts_with("kind: EncryptionConfiguration\napiVersion: apiserver.config.k8s.io/v1\n"),
        "{enc}"
    );
}

/// A TLS handshake both ways: kubectl trusts the API server certificate for
/// 127.0.0.1 through the kubeconfig's CA, and openssl's server accepts the
/// kubeconfig's client certificate (it echoes the subject back).
#[test]
fn kubectl_and_openssl_complete_mutual_tls() {
    let env = workspace(INVENTORY);
    env.ok(&["pki", "init"]);
    let pki = env.pki_dir();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Killed on drop, also when an assertion fails first.
    struct Server(std::process::Child);
    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Server(
        Command::new("openssl")
            .args(["s_server", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .args([
                "-cert",
                "kubernetes.pem",
                "-key",
                "kubernetes-key.pem",
                "-CAfile",
                "ca.pem",
                "-Verify",
                "1",
                "-verify_return_error",
                "-www",
            ])
            .current_dir(&pki)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Wait (bounded) until it listens; s_server shrugs off the probe.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200))
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "openssl s_server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = tool(
        KUBECTL,
        &[
            "--kubeconfig",
            "admin.kubeconfig",
            "--server",
            &format!("https://127.0.0.1:{port}"),
            "--request-timeout",
            "10s",
            "get",
            "--raw",
            "/",
        ],
        &pki,
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("Client certificate"), "{said}");
    assert!(
        said.contains("Subject: CN=admin, O=system:masters"),
        "{said}"
    );
}

#[test]
fn bundled_example_gets_its_pki_on_first_build_others_do_not() {
    let env = example_workspace();
    let pki = env.path("pki");
    // No release artifacts in the empty cache: the build stops there (exit 3),
    // after the PKI step.
    let said = fails_saying(&env, &["controller", "--node", "1"], 3);
    assert!(said.contains("NEW PKI for the bundled example"), "{said}");
    assert!(said.contains(&pki.display().to_string()), "{said}");
    assert!(
        said.contains("Every node of one cluster must be built from this"),
        "{said}"
    );
    env.ok(&["pki", "check"]);
    // The second build uses the same PKI and says nothing about a new one.
    let before = snapshot(&pki);
    let out = env.run(&["controller", "--node", "2"]);
    assert!(!text(&out).contains("NEW PKI"), "{}", text(&out));
    assert_eq!(before, snapshot(&pki));

    // Any other inventory without a PKI: no CA appears by itself.
    let other = workspace(INVENTORY);
    let said = fails_saying(&other, &["controller", "--node", "1"], 2);
    assert!(said.contains("imgbuild pki init --inventory"), "{said}");
    assert!(!other.pki_dir().exists());
}

/// Two `pki init` at once make one PKI (the second waits for the folder's
/// lock and finds the first one's files); two first builds of the bundled
/// example at once: one generates, the other waits and uses that PKI.
#[test]
fn concurrent_inits_and_first_builds_make_one_pki() {
    for _ in 0..3 {
        let env = workspace(INVENTORY);
        let (a, b) = (env.spawn(&["pki", "init"]), env.spawn(&["pki", "init"]));
        for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
            assert!(out.status.success(), "{}", text(&out));
        }
        env.ok(&["pki", "check"]);
    }
    for _ in 0..3 {
        let env = example_workspace();
        let (a, b) = (
            env.spawn(&["controller", "--node", "1"]),
            env.spawn(&["controller", "--node", "2"]),
        );
        let outs = [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()];
        // Both pass the PKI step and stop at the empty cache (exit 3), not at
        // a PKI half made by the other (exit 2).
        for out in &outs {
            assert_eq!(out.status.code(), Some(3), "{}", text(out));
        }
        let new = outs
            .iter()
            .filter(|o| text(o).contains("NEW PKI for the bundled example"))
            .count();
        assert_eq!(new, 1, "exactly one build makes the PKI");
        env.ok(&["pki", "check"]);
    }
}

/// A PKI begun elsewhere: an RSA CA with a PKCS#1 key (as cfssl, which the
/// seed's source used, writes it) signs everything `init` adds; keys in SEC1
/// form (`openssl ec`) are read; a key swapped for another one is caught and
/// `--renew` issues a certificate for the key in place.
#[test]
fn foreign_rsa_ca_and_key_formats() {
    use std::os::unix::fs::PermissionsExt;
    let env = workspace(INVENTORY);
    let pki = env.pki_dir();
    std::fs::create_dir_all(&pki).unwrap();
    std::fs::set_permissions(&pki, std::fs::Permissions::from_mode(0o700)).unwrap();
    tool_ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca8.pem",
            "-out",
            "ca.pem",
            "-days",
            "3650",
            "-subj",
            "/CN=Kubernetes/O=Kubernetes",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        &pki,
    );
    tool_ok(
        "openssl",
        &[
            "rsa",
            "-in",
            "ca8.pem",
            "-out",
            "ca-key.pem",
            "-traditional",
        ],
        &pki,
    );
    std::fs::remove_file(pki.join("ca8.pem")).unwrap();
    std::fs::set_permissions(
        pki.join("ca-key.pem"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let ca_key = std::fs::read_to_string(pki.join("ca-key.pem")).unwrap();
    assert!(ca_key.starts_with("-----BEGIN RSA PRIVATE KEY-----"));

    let stdout = env.ok(&["pki", "init"]);
    assert!(!stdout.contains("created  ca"), "{stdout}");
    assert_eq!(
        ca_key,
        std::fs::read_to_string(pki.join("ca-key.pem")).unwrap()
    );
    for c in CERTS {
        verify(&pki, &format!("{c}.pem"));
    }
    let api = cert_text(&pki, "kubernetes.pem");
    assert!(api.contains("sha256WithRSAEncryption"), "{api}");

    tool_ok(
        "openssl",
        &[
            "ec",
            "-in",
            "kubernetes-key.pem",
            "-out",
            "kubernetes-key.pem",
        ],
        &pki,
    );
    let sec1 = std::fs::read_to_string(pki.join("kubernetes-key.pem")).unwrap();
    assert!(
        sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"),
        "{sec1:.40}"
    );
    let check = env.ok(&["pki", "check"]);
    assert!(
        check.contains("ok     kubernetes.pem: key kubernetes-key.pem matches"),
        "{check}"
    );

    std::fs::copy(
        pki.join("admin-key.pem"),
        pki.join("kube-scheduler-key.pem"),
    )
    .unwrap();
    let said = fails_saying(&env, &["pki", "check"], 2);
    assert!(
        said.contains("ERROR  kube-scheduler.pem: key kube-scheduler-key.pem does not match"),
        "{said}"
    );
    let stdout = env.ok(&["pki", "init", "--renew"]);
    assert!(stdout.contains("renewed  kube-scheduler.pem"), "{stdout}");
    assert!(
        stdout.contains("renewed  kube-scheduler.kubeconfig"),
        "{stdout}"
    );
    assert_key_fits(&pki, "kube-scheduler-key.pem", "kube-scheduler.pem");
    env.ok(&["pki", "check"]);
}

/// A whole build with a real PKI: the keys travel into the overlay with mode
/// 0600, and neither the manifest nor anything printed quotes them.
#[test]
fn build_carries_keys_but_never_prints_them() {
    let ws = Workspace::new("v1.10.2");
    let out = ws.run(&["controller", "--node", "1", "--format", "dir"]);
    assert!(out.status.success(), "{}", text(&out));
    let pki = ws.path("pki");
    assert_no_secret(&pki, &text(&out));
    let manifest = std::fs::read(ws.path("out/controller-1.manifest.json")).unwrap();
    assert_no_secret(&pki, &String::from_utf8_lossy(&manifest));
    let tree = ws.path("out/controller-1/var/lib/kubernetes");
    for name in [
        "ca-key.pem",
        "kubernetes-key.pem",
        "service-account-key.pem",
    ] {
        assert_eq!(
            std::fs::read(tree.join(name)).unwrap(),
            std::fs::read(pki.join(name)).unwrap(),
            "{name}"
        );
        let mode = {
            use std::os::unix::fs::PermissionsExt;
            tree.join(name).metadata().unwrap().permissions().mode() & 0o777
        };
        assert_eq!(mode, 0o600, "{name}");
    }
    // The overlay's API server certificate verifies against its CA.
    verify(&tree, "kubernetes.pem");
}
