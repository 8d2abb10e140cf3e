//! `imgbuild pki init|check` through the real binary, judged by real consumers:
//! openssl (verify, x509, pkey, s_server) and kubectl.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use support::{Workspace, assert_no_secret, text};

const KUBECTL: &str = "kubectl";

/// The unit tests' two controllers (tests/fixtures/two-controllers.toml),
/// with a cluster name of its own and the PKI in a subfolder.
fn inventory() -> String {
    let text = support::fixture("two-controllers.toml");
    let ours = text
        .replacen("name = \"kubernetes\"", "name = \"test-cluster\"", 1)
        .replacen("pki_dir = \"pki\"", "pki_dir = \"secrets/pki\"", 1);
    assert!(ours.contains("\"test-cluster\"") && ours.contains("\"secrets/pki\""));
    ours
}

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
    let env = workspace(&inventory());
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
    let env = workspace(&inventory());
    env.ok(&["pki", "init"]);
    let before = snapshot(&env.pki_dir());
    std::thread::sleep(std::time::Duration::from_millis(20));
    let stdout = env.ok(&["pki", "init"]);
    assert!(stdout.contains("nothing to do"), "{stdout}");
    assert_eq!(before, snapshot(&env.pki_dir()), "bytes or mtimes changed");
}

#[test]
fn added_controller_fails_check_until_renew() {
    let env = workspace(&inventory());
    env.ok(&["pki", "init"]);
    let pki = env.pki_dir();
    let before = snapshot(&pki);

    let grown = format!(
        "{}\n[[controllers]]\nname = \"controller-3\"\ninternal_ip = \"10.240.0.13\"\n",
        inventory()
    );
    std::fs::write(env.path("cluster.toml"), grown).unwrap();

    let said = fails_saying(&env, &["pki", "check"], 2);
    assert!(
        said.contains("ERROR  kubernetes.pem: SANs do not cover 10.240.0.13"),
        "{said}"
    );
    assert!(said.contains("imgbuild pki init --renew"), "{said}");

    assert!(said.contains("etcd-controller-3.pem: missing"), "{said}");

    // A plain init adds only what is missing (the new controller's etcd
    // certificate and key), changes nothing else, and says what to run.
    let said = fails_saying(&env, &["pki", "init"], 2);
    assert!(said.contains("--renew"), "{said}");
    let added = snapshot(&pki);
    let new: Vec<&String> = added.keys().filter(|k| !before.contains_key(*k)).collect();
    assert_eq!(new, ["etcd-controller-3-key.pem", "etcd-controller-3.pem"]);
    for (name, value) in &before {
        assert!(added.get(name) == Some(value), "plain init changed {name}");
    }

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
    let env = workspace(&inventory());
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
    let env = workspace(&inventory().replace("v1.10.2", "v1.34.7"));
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
    let env = workspace(&inventory());
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
    // The new shape: a CA for leaves only, secretbox for the example's version.
    let ca = cert_text(&pki, "ca.pem");
    assert!(ca.contains("CA:TRUE, pathlen:0"), "{ca}");
    let enc = std::fs::read_to_string(pki.join("encryption-config.yaml")).unwrap();
    assert!(
        enc.contains("      - secretbox:\n"),
        "new config is not secretbox"
    );
    // The second build uses the same PKI and says nothing about a new one.
    let before = snapshot(&pki);
    let out = env.run(&["controller", "--node", "2"]);
    assert!(!text(&out).contains("NEW PKI"), "{}", text(&out));
    assert_eq!(before, snapshot(&pki));

    // Any other inventory without a PKI: no CA appears by itself.
    let other = workspace(&inventory());
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
        let env = workspace(&inventory());
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
    let env = workspace(&inventory());
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

/// The extension `name` of an `openssl x509 -text`: (its header line, its value line).
fn extension(text: &str, name: &str) -> Option<(String, String)> {
    let mut lines = text.lines();
    let header = lines.find(|l| l.trim_start().starts_with(name))?;
    let value = lines.next()?.trim().to_string();
    Some((header.trim().to_string(), value))
}

/// What each certificate allows, as openssl reads it, and openssl using it:
/// the API server certificate for TLS server and client, the clients for
/// client only, and no chain through an intermediate made with the CA's key
/// (pathlen:0).
#[test]
fn openssl_reads_each_certificate_for_what_it_is_used() {
    let env = workspace(&inventory());
    env.ok(&["pki", "init"]);
    let pki = env.pki_dir();
    let critical = |v: &str| format!("X509v3 {v}: critical");

    let ca = cert_text(&pki, "ca.pem");
    let bc = extension(&ca, "X509v3 Basic Constraints").unwrap();
    assert_eq!(
        bc,
        (critical("Basic Constraints"), "CA:TRUE, pathlen:0".into())
    );
    let ku = extension(&ca, "X509v3 Key Usage").unwrap();
    assert_eq!(
        ku,
        (critical("Key Usage"), "Certificate Sign, CRL Sign".into())
    );

    for (cert, eku) in [
        (
            "kubernetes.pem",
            Some("TLS Web Client Authentication, TLS Web Server Authentication"),
        ),
        ("admin.pem", Some("TLS Web Client Authentication")),
        (
            "kube-controller-manager.pem",
            Some("TLS Web Client Authentication"),
        ),
        ("kube-scheduler.pem", Some("TLS Web Client Authentication")),
        // A key holder: no extended key usage at all.
        ("service-account.pem", None),
    ] {
        let t = cert_text(&pki, cert);
        let bc = extension(&t, "X509v3 Basic Constraints").unwrap();
        assert_eq!(
            bc,
            (critical("Basic Constraints"), "CA:FALSE".into()),
            "{cert}"
        );
        let ku = extension(&t, "X509v3 Key Usage").unwrap();
        assert_eq!(
            ku,
            (critical("Key Usage"), "Digital Signature".into()),
            "{cert}"
        );
        let found = extension(&t, "X509v3 Extended Key Usage").map(|(_, v)| v);
        assert_eq!(found.as_deref(), eku, "{cert}:\n{t}");
        assert!(
            t.contains("Signature Algorithm: ecdsa-with-SHA256"),
            "{cert}"
        );
    }

    let purpose = |purpose: &str, cert: &str| {
        tool(
            "openssl",
            &["verify", "-purpose", purpose, "-CAfile", "ca.pem", cert],
            &pki,
        )
    };
    assert!(purpose("sslserver", "kubernetes.pem").status.success());
    for cert in ["kubernetes.pem", "admin.pem", "kube-scheduler.pem"] {
        assert!(purpose("sslclient", cert).status.success(), "{cert}");
    }
    let refused = purpose("sslserver", "admin.pem");
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("unsuitable certificate purpose"),
        "{}",
        text(&refused)
    );

    // An intermediate CA made with ca-key.pem, and a leaf below it: openssl
    // refuses the chain (the CA allows no CA below it).
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    for f in ["ca.pem", "ca-key.pem"] {
        std::fs::copy(pki.join(f), t.join(f)).unwrap();
    }
    std::fs::write(
        t.join("ca.ext"),
        "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign\n",
    )
    .unwrap();
    std::fs::write(
        t.join("leaf.ext"),
        "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    for (name, ca, ca_key, ext) in [
        ("inter", "ca.pem", "ca-key.pem", "ca.ext"),
        ("leaf", "inter.pem", "inter-key.pem", "leaf.ext"),
    ] {
        let key = format!("{name}-key.pem");
        let csr = format!("{name}.csr");
        tool_ok(
            "openssl",
            &[
                "req",
                "-new",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-subj",
                &format!("/CN={name}"),
                "-out",
                &csr,
            ],
            t,
        );
        tool_ok(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                ca,
                "-CAkey",
                ca_key,
                "-set_serial",
                "9",
                "-days",
                "10",
                "-sha256",
                "-extfile",
                ext,
                "-out",
                &format!("{name}.pem"),
            ],
            t,
        );
    }
    let out = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "ca.pem",
            "-untrusted",
            "inter.pem",
            "leaf.pem",
        ],
        t,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("path length constraint exceeded"),
        "{}",
        text(&out)
    );
}

/// The API server certificate's SANs for [`inventory`], as openssl's config says them.
const API_SANS: &str = "subjectAltName=IP:10.240.0.11,IP:10.240.0.12,IP:203.0.113.10,IP:10.32.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster,DNS:kubernetes.default.svc.cluster.local";

/// openssl issues `cert` (in the PKI folder) for `key` from the folder's CA,
/// with these extensions and this digest.
fn openssl_issue(pki: &Path, cert: &str, key: &str, subject: &str, ext: &str, digest: &str) {
    std::fs::write(pki.join("t.ext"), ext).unwrap();
    tool_ok(
        "openssl",
        &[
            "req", "-new", "-key", key, "-subj", subject, "-out", "t.csr",
        ],
        pki,
    );
    tool_ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            "t.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-set_serial",
            "7",
            "-days",
            "100",
            digest,
            "-extfile",
            "t.ext",
            "-out",
            cert,
        ],
        pki,
    );
    for f in ["t.ext", "t.csr"] {
        std::fs::remove_file(pki.join(f)).unwrap();
    }
}

/// Certificates made by hand with openssl, each wrong in one way: `pki check`
/// and the build refuse each, naming the file, the problem and the fix; for
/// those a new certificate fixes, `pki init --renew` does.
#[test]
fn hand_made_bad_certificates_are_refused() {
    let api = "/CN=kubernetes/O=Kubernetes";
    let good = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n";
    let cases: &[(&str, String, &str, &str)] = &[
        (
            "leaf marked CA",
            format!("{}\n{API_SANS}\n", good.replace("CA:FALSE", "CA:TRUE")),
            "-sha256",
            "ERROR  kubernetes.pem: is marked as a CA (basicConstraints CA:TRUE); a leaf certificate must be CA:FALSE [fix: imgbuild pki init --renew]",
        ),
        (
            "server certificate without serverAuth",
            format!("{}\n{API_SANS}\n", good.replace("serverAuth,", "")),
            "-sha256",
            "ERROR  kubernetes.pem: has no extendedKeyUsage serverAuth: kube-apiserver serves TLS with it (--tls-cert-file) and clients refuse it [fix: imgbuild pki init --renew]",
        ),
        (
            "API server certificate without clientAuth",
            format!("{}\n{API_SANS}\n", good.replace(",clientAuth", "")),
            "-sha256",
            "ERROR  kubernetes.pem: has no extendedKeyUsage clientAuth: kube-apiserver also presents it to etcd",
        ),
        (
            "SHA-1 signature",
            format!("{good}\n{API_SANS}\n"),
            "-sha1",
            "ERROR  kubernetes.pem: is signed with ecdsa-with-SHA1 (SHA-1); signatures must use SHA-256 or stronger [fix: imgbuild pki init --renew]",
        ),
    ];
    for (what, ext, digest, said) in cases {
        let env = workspace(&inventory());
        env.ok(&["pki", "init"]);
        let pki = env.pki_dir();
        openssl_issue(
            &pki,
            "kubernetes.pem",
            "kubernetes-key.pem",
            api,
            ext,
            digest,
        );
        verify(&pki, "kubernetes.pem"); // openssl itself takes it as issued by the CA
        let out = fails_saying(&env, &["pki", "check"], 2);
        assert!(out.contains(said), "{what}:\n{out}");
        assert!(
            out.contains("run: imgbuild pki init --renew"),
            "{what}:\n{out}"
        );
        let out = fails_saying(&env, &["controller", "--node", "1"], 2);
        assert!(
            out.contains(said.trim_start_matches("ERROR  ")),
            "{what} (build):\n{out}"
        );
        assert!(!env.path("out").exists(), "{what}: the build wrote out/");
        env.ok(&["pki", "init", "--renew"]);
        env.ok(&["pki", "check"]);
    }

    // A 1024-bit RSA key: refused in the key file and in the certificate.
    let env = workspace(&inventory());
    env.ok(&["pki", "init"]);
    let pki = env.pki_dir();
    tool_ok(
        "openssl",
        &["genrsa", "-out", "admin-key.pem", "1024"],
        &pki,
    );
    tool_ok("chmod", &["600", "admin-key.pem"], &pki);
    let client = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n";
    openssl_issue(
        &pki,
        "admin.pem",
        "admin-key.pem",
        "/CN=admin/O=system:masters",
        client,
        "-sha256",
    );
    let out = fails_saying(&env, &["pki", "check"], 2);
    assert!(
        out.contains("ERROR  admin.pem: holds a 1024-bit RSA key; RSA keys need at least 2048 bits; for a new key pair remove admin-key.pem and admin.pem, then run `imgbuild pki init --renew`"),
        "{out}"
    );
    assert!(
        out.contains("ERROR  admin-key.pem: is not a usable RSA (2048 bits or more)"),
        "{out}"
    );
    std::fs::remove_file(pki.join("admin.pem")).unwrap();
    std::fs::remove_file(pki.join("admin-key.pem")).unwrap();
    env.ok(&["pki", "init", "--renew"]);
    env.ok(&["pki", "check"]);
}

/// A private key, a kubeconfig or the encryption config that others may read
/// is an error for `pki check` and the build, naming the file and the chmod.
#[test]
fn readable_secrets_are_errors_naming_chmod() {
    use std::os::unix::fs::PermissionsExt;
    for (file, mode) in [
        ("kubernetes-key.pem", 0o644),
        ("admin.kubeconfig", 0o640),
        ("encryption-config.yaml", 0o604),
        ("ca-key.pem", 0o620),
    ] {
        let env = workspace(&inventory());
        env.ok(&["pki", "init"]);
        let path = env.pki_dir().join(file);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let want = format!(
            "{file}: mode {mode:03o} lets other users read or change it (it holds secret keys): chmod 600 {}",
            path.display()
        );
        let out = fails_saying(&env, &["pki", "check"], 2);
        assert!(out.contains(&format!("ERROR  {want}")), "{out}");
        let out = fails_saying(&env, &["controller", "--node", "1"], 2);
        assert!(out.contains(&want), "{out}");
        assert!(!env.path("out").exists());
        tool_ok("chmod", &["600", &path.display().to_string()], env.dir());
        env.ok(&["pki", "check"]);
    }
}

/// The encryption config's cipher: aescbc for v1.10.2 (as the seed), secretbox
/// from v1.13; `pki check` says which one encrypts; an aescbc config on a
/// current version warns, and `--encryption secretbox` switches in steps that
/// never lose a key; plain `pki init` never touches it.
#[test]
fn encryption_cipher_defaults_and_switch_in_steps() {
    let enc = |env: &Workspace| {
        std::fs::read_to_string(env.pki_dir().join("encryption-config.yaml")).unwrap()
    };
    let seed = workspace(&inventory());
    seed.ok(&["pki", "init"]);
    assert!(enc(&seed).contains("      - aescbc:\n"));
    let out = seed.ok(&["pki", "check"]);
    assert!(
        out.contains("ok     encryption-config.yaml: aescbc (key1) encrypts Secrets"),
        "{out}"
    );
    assert!(out.contains("(0 warning(s))"), "{out}");

    let env = workspace(&inventory().replace("v1.10.2", "v1.34.7"));
    env.ok(&["pki", "init", "--encryption", "aescbc"]);
    let aescbc = enc(&env);
    let out = env.ok(&["pki", "check"]);
    assert!(
        out.contains("WARN   encryption-config.yaml: aescbc (key1) encrypts Secrets; upstream no longer recommends aescbc (CBC is open to padding-oracle attacks): switch to secretbox with imgbuild pki init --encryption secretbox"),
        "{out}"
    );
    // Plain init and --renew leave it alone.
    env.ok(&["pki", "init"]);
    env.ok(&["pki", "init", "--renew"]);
    assert_eq!(enc(&env), aescbc);
    // --drop-old-keys before the new cipher encrypts: refused, nothing changed.
    let said = fails_saying(
        &env,
        &[
            "pki",
            "init",
            "--encryption",
            "secretbox",
            "--drop-old-keys",
        ],
        2,
    );
    assert!(said.contains("secretbox does not encrypt yet"), "{said}");
    assert_eq!(enc(&env), aescbc);

    // Step 1: a secretbox key that reads, second; aescbc still writes.
    let out = env.run(&["pki", "init", "--encryption", "secretbox"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Step 1 of 3"), "{}", text(&out));
    let step1 = enc(&env);
    assert!(
        step1.starts_with(aescbc.trim_end_matches("      - identity: {}\n")),
        "the aescbc key moved:\n{step1}"
    );
    let check = env.ok(&["pki", "check"]);
    assert!(
        check.contains("also reads with secretbox (key2), identity"),
        "{check}"
    );
    // Step 2: secretbox first; the aescbc key still reads.
    let out = env.run(&["pki", "init", "--encryption", "secretbox"]);
    assert!(text(&out).contains("Step 2 of 3"), "{}", text(&out));
    assert!(
        text(&out).contains("kubectl get secrets --all-namespaces -o json | kubectl replace -f -")
    );
    let check = env.ok(&["pki", "check"]);
    assert!(
        check.contains("ok     encryption-config.yaml: secretbox (key2) encrypts Secrets"),
        "{check}"
    );
    assert!(
        check.contains("also reads with aescbc (key1), identity"),
        "{check}"
    );
    assert!(check.contains("(0 warning(s))"), "{check}");
    let aescbc_secret = aescbc.lines().find(|l| l.contains("secret:")).unwrap();
    assert!(enc(&env).contains(aescbc_secret), "the aescbc key was lost");
    // Again: nothing to do.
    let step2 = enc(&env);
    env.ok(&["pki", "init", "--encryption", "secretbox"]);
    assert_eq!(enc(&env), step2);
    // Step 3: only secretbox.
    env.ok(&[
        "pki",
        "init",
        "--encryption",
        "secretbox",
        "--drop-old-keys",
    ]);
    assert!(!enc(&env).contains("aescbc") && !enc(&env).contains("identity"));
    let check = env.ok(&["pki", "check"]);
    assert!(!check.contains("also reads"), "{check}");
    // clap: --drop-old-keys alone names what it needs.
    let said = fails_saying(&env, &["pki", "init", "--drop-old-keys"], 2);
    assert!(said.contains("--encryption"), "{said}");
}

/// From v1.34 `pki init` adds the aggregation layer's PKI: a front-proxy CA of
/// its own (not the cluster CA) and the client certificate the API server
/// presents to extension API servers. openssl checks the chain, the purpose
/// and that the cluster CA does not vouch for it; `pki check` knows the files.
#[test]
fn front_proxy_chain_is_its_own_and_satisfies_openssl() {
    let env = workspace(&inventory().replace("v1.10.2", "v1.36.0"));
    let stdout = env.ok(&["pki", "init"]);
    for f in [
        "front-proxy-ca.pem",
        "front-proxy-ca-key.pem",
        "front-proxy-client.pem",
        "front-proxy-client-key.pem",
    ] {
        assert!(stdout.contains(&format!("created  {f}")), "{stdout}");
    }
    let pki = env.pki_dir();
    let verified = tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "front-proxy-ca.pem",
            "-purpose",
            "sslclient",
            "front-proxy-client.pem",
        ],
        &pki,
    );
    assert_eq!(verified.trim(), "front-proxy-client.pem: OK");
    assert_key_fits(&pki, "front-proxy-client-key.pem", "front-proxy-client.pem");
    assert_key_fits(&pki, "front-proxy-ca-key.pem", "front-proxy-ca.pem");
    // Its own CA: the cluster CA does not verify it, nor it the cluster's leaves.
    let cross = tool(
        "openssl",
        &["verify", "-CAfile", "ca.pem", "front-proxy-client.pem"],
        &pki,
    );
    assert!(!cross.status.success(), "{}", text(&cross));
    let cross = tool(
        "openssl",
        &["verify", "-CAfile", "front-proxy-ca.pem", "admin.pem"],
        &pki,
    );
    assert!(!cross.status.success(), "{}", text(&cross));
    let client = cert_text(&pki, "front-proxy-client.pem");
    assert!(
        client.contains("Subject: CN = front-proxy-client"),
        "{client}"
    );
    assert!(client.contains("TLS Web Client Authentication"), "{client}");
    assert!(
        !client.contains("TLS Web Server Authentication"),
        "{client}"
    );
    assert!(client.contains("CA:FALSE"), "{client}");
    let ca = cert_text(&pki, "front-proxy-ca.pem");
    assert!(ca.contains("CA:TRUE, pathlen:0"), "{ca}");
    assert!(ca.contains("front-proxy CA"), "{ca}");
    assert_ne!(
        tool_ok(
            "openssl",
            &["x509", "-in", "ca.pem", "-noout", "-pubkey"],
            &pki
        ),
        tool_ok(
            "openssl",
            &["x509", "-in", "front-proxy-ca.pem", "-noout", "-pubkey"],
            &pki
        )
    );
    let check = env.ok(&["pki", "check"]);
    assert!(
        check.contains("ok     front-proxy-client.pem: chains to front-proxy-ca.pem"),
        "{check}"
    );

    // A front-proxy CA that is the cluster CA is refused; a missing client
    // certificate is what `pki init` adds.
    std::fs::copy(pki.join("ca.pem"), pki.join("front-proxy-ca.pem")).unwrap();
    std::fs::copy(pki.join("ca-key.pem"), pki.join("front-proxy-ca-key.pem")).unwrap();
    let err = env.fails(&["pki", "check"], 2);
    let out = String::from_utf8_lossy(&env.run(&["pki", "check"]).stdout).into_owned();
    assert!(
        out.contains("front-proxy-ca.pem: is the cluster CA"),
        "{out}{err}"
    );
    for f in ["front-proxy-ca.pem", "front-proxy-ca-key.pem"] {
        std::fs::remove_file(pki.join(f)).unwrap();
    }
    std::fs::remove_file(pki.join("front-proxy-client.pem")).unwrap();
    let out = String::from_utf8_lossy(&env.run(&["pki", "check"]).stdout).into_owned();
    assert!(
        out.contains("ERROR  front-proxy-ca.pem: missing") && out.contains("imgbuild pki init"),
        "{out}"
    );
    env.ok(&["pki", "init"]);
    tool_ok(
        "openssl",
        &[
            "verify",
            "-CAfile",
            "front-proxy-ca.pem",
            "front-proxy-client.pem",
        ],
        &pki,
    );
    // The seed's version has no aggregation layer: nothing of it.
    let seed = workspace(&inventory());
    let stdout = seed.ok(&["pki", "init"]);
    assert!(!stdout.contains("front-proxy"), "{stdout}");
}
