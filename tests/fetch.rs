//! `imgbuild fetch`, `lock`, `airgap`, `cache verify/gc` against a loopback
//! mirror with injected faults. No traffic leaves 127.0.0.1: every test names
//! its mirror by IP, proxies are cleared, and the tests that use the default
//! base (https://dl.k8s.io) run inside a network namespace of their own
//! (`unshare -n`), where only a private loopback exists.

mod support;

use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha512};

use support::http_mirror::{FakeProxy, Fault, Mirror, TlsFront};
use support::{
    BINARIES, Workspace, sha256_bytes as sha256, stand_in, stand_in_tarball, text, wrapped,
};

const VERSION: &str = "v1.10.2";
const TARBALL: &str = "v1.10.2/kubernetes-server-linux-amd64.tar.gz";

// ---------------------------------------------------------------- helpers

/// A workspace pinning stand-in tarballs (the server's and etcd's; not in the
/// cache), online, and a mirror serving them.
fn setup(size: usize) -> (Workspace, Mirror, Vec<u8>) {
    setup_with(Workspace::builder(VERSION).binaries(size))
}

/// The cache is clean (no leftovers) and holds `tarball` and nothing else.
fn assert_stored(ws: &Workspace, tarball: &[u8]) {
    ws.assert_cache_clean(false);
    assert_eq!(ws.cache_files("artifacts/sha256"), vec![sha256(tarball)]);
}

/// The cache is clean (no leftovers) and its index lists `n` artifacts.
fn assert_indexed(ws: &Workspace, n: usize) {
    ws.assert_cache_clean(false);
    assert_eq!(ws.cache_files("index").len(), n);
}

/// [`setup`] for an inventory whose etcd is external: the server tarball is
/// the only artifact (tests of one download's faults).
fn setup_one(size: usize) -> (Workspace, Mirror, Vec<u8>) {
    setup_with(Workspace::builder(VERSION).binaries(size).external_etcd())
}

fn setup_with(builder: support::Builder) -> (Workspace, Mirror, Vec<u8>) {
    let ws = builder.not_imported().online().mirror().build();
    let (mirror, tarball) = (ws.mirror().clone(), ws.tarball().to_vec());
    (ws, mirror, tarball)
}

/// An online workspace with nothing but an inventory and its PKI.
fn bare(version: &str) -> Workspace {
    Workspace::builder(version).no_binaries().online().build()
}

/// `fetch` from `mirror` over plain http, with `extra` arguments.
fn fetch_args(mirror: &Mirror, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "fetch".into(),
        "--mirror".into(),
        mirror.url(),
        "--allow-http".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// Run the named test again inside a new network namespace (lo up, nothing
/// else). Returns true in the child, where the body should run; false in the
/// parent (which has checked the child passed) or when namespaces are not
/// available (the test is skipped, saying so).
fn in_netns(test: &str) -> bool {
    if std::env::var_os("IMGBUILD_TEST_NETNS").is_some() {
        return true;
    }
    let probe = Command::new("unshare")
        .args(["-n", "ip", "link", "set", "lo", "up"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped {test}: `unshare -n` is not available here");
        return false;
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("IMGBUILD_TEST_NETNS", "1")
        .output()
        .unwrap();
    let text = text(&out);
    assert!(
        out.status.success(),
        "{test} in a network namespace failed:\n{text}"
    );
    assert!(
        text.contains("1 passed"),
        "{test} did not run in the namespace:\n{text}"
    );
    false
}

// ---------------------------------------------------------------- fetch

#[test]
fn fetch_downloads_verifies_and_build_uses_it() {
    let (ws, mirror, tarball) = setup(64 * 1024);
    let stderr = ws.ok_stderr(&fetch_args(&mirror, &[]));
    // Not a terminal: one line per finished artifact.
    assert!(
        stderr.contains("downloaded kubernetes-server-linux-amd64.tar.gz")
            && stderr.contains("downloaded etcd-v3.3.10-linux-amd64.tar.gz"),
        "{stderr}"
    );
    // etcd's tarball from the mirror's etcd/ folder (docs/fetch.md).
    let etcd = "etcd/v3.3.10/etcd-v3.3.10-linux-amd64.tar.gz";
    assert_eq!(mirror.requests(TARBALL).len(), 1);
    assert_eq!(mirror.requests(etcd).len(), 1);
    ws.assert_cache_clean(false);
    let mut both = vec![sha256(&tarball), sha256(ws.etcd_tarball())];
    both.sort();
    assert_eq!(ws.cache_files("artifacts/sha256"), both);
    // The server's four binaries, etcd and etcdctl (3.3 has no etcdutl).
    assert_eq!(ws.cache_files("blobs/sha256").len(), 6);
    let ls = String::from_utf8(ws.run(&["cache", "ls"]).stdout).unwrap();
    assert!(
        ls.contains("kubernetes-server-linux-amd64.tar.gz")
            && ls.contains("etcd-v3.3.10-linux-amd64.tar.gz"),
        "{ls}"
    );
    // A second fetch finds them in the cache and makes no request.
    ws.ok(&fetch_args(&mirror, &[]));
    assert_eq!(mirror.requests(TARBALL).len(), 1);
    assert_eq!(mirror.requests(etcd).len(), 1);
    // The build reads the cache only.
    ws.ok(&["controller", "--node", "1", "--offline"]);
    assert!(ws.path("out/controller-1.tar.gz").is_file());
    let manifest = fs::read_to_string(ws.path("out/controller-1.manifest.json")).unwrap();
    assert!(manifest.contains("\"trust\": \"local\""), "{manifest}");
}

#[test]
fn quiet_fetch_prints_nothing() {
    let (ws, mirror, _) = setup(16 * 1024);
    let args = fetch_args(&mirror, &["--quiet"]);
    let stderr = ws.ok_stderr(&args);
    assert_eq!(stderr, "");
}

#[test]
fn controller_fetches_what_is_missing_before_building() {
    let (ws, mirror, _) = setup(16 * 1024);
    let url = mirror.url();
    ws.ok(&[
        "controller",
        "--node",
        "1",
        "--mirror",
        &url,
        "--allow-http",
    ]);
    assert_eq!(mirror.requests(TARBALL).len(), 1);
    assert!(ws.path("out/controller-1.tar.gz").is_file());
}

#[test]
fn file_mirror() {
    let (ws, _, tarball) = setup(16 * 1024);
    let dir = ws.path("mirror/v1.10.2");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("kubernetes-server-linux-amd64.tar.gz"), &tarball).unwrap();
    // etcd's tarball under etcd/, as docs/fetch.md lays a mirror out.
    let etcd = ws.path(&format!("mirror/{}", ws.etcd_mirror_path()));
    fs::create_dir_all(etcd.parent().unwrap()).unwrap();
    fs::write(&etcd, ws.etcd_tarball()).unwrap();
    let url = format!("file://{}", ws.path("mirror").display());
    ws.ok(&["fetch", "--mirror", &url]);
    assert_indexed(&ws, 2);
}

#[test]
fn plain_http_is_refused_without_allow_http() {
    let (ws, mirror, _) = setup_one(16 * 1024);
    let url = mirror.url();
    let stderr = ws.fails(&["fetch", "--mirror", &url], 2);
    assert!(stderr.contains("--allow-http"), "{stderr}");
    assert!(mirror.log().is_empty());
    ws.assert_cache_clean(true);
}

#[test]
fn not_found_is_final() {
    let (ws, mirror, _) = setup_one(16 * 1024);
    mirror.put(TARBALL, Vec::new());
    let mirror2 = Mirror::start(); // serves nothing
    let stderr = ws.fails(&fetch_args(&mirror2, &[]), 5);
    assert!(stderr.contains("404"), "{stderr}");
    assert!(
        stderr.contains(&format!("{}/{TARBALL}", mirror2.url())),
        "names the URL: {stderr}"
    );
    assert_eq!(mirror2.requests(TARBALL).len(), 1, "a 404 is not retried");
    ws.assert_cache_clean(true);
}

#[test]
fn server_error_then_success() {
    let (ws, mirror, _) = setup_one(16 * 1024);
    mirror.fault(TARBALL, Fault::Status(500, vec![]));
    let stderr = ws.ok_stderr(&fetch_args(&mirror, &[]));
    assert!(
        stderr.contains("retrying") && stderr.contains("500"),
        "{stderr}"
    );
    assert_eq!(mirror.requests(TARBALL).len(), 2);
    assert_indexed(&ws, 1);
}

#[test]
fn server_errors_until_the_last_try() {
    let (ws, mirror, _) = setup_one(16 * 1024);
    mirror.sticky(TARBALL, Fault::Status(503, vec![]));
    let args = fetch_args(&mirror, &["--tries", "3"]);
    let stderr = ws.fails(&args, 5);
    assert!(
        stderr.contains("503") && stderr.contains("3 tries"),
        "{stderr}"
    );
    assert!(stderr.contains(&mirror.url()), "{stderr}");
    assert_eq!(mirror.requests(TARBALL).len(), 3);
    ws.assert_cache_clean(true);
}

#[test]
fn too_many_requests_honours_retry_after() {
    let (ws, mirror, _) = setup_one(16 * 1024);
    mirror.fault(
        TARBALL,
        Fault::Status(429, vec![("Retry-After", "2".into())]),
    );
    let t = Instant::now();
    let stderr = ws.ok_stderr(&fetch_args(&mirror, &[]));
    assert!(
        t.elapsed() >= Duration::from_secs(2),
        "waited {:?}",
        t.elapsed()
    );
    assert!(
        stderr.contains("429") && stderr.contains("in 2.0s"),
        "{stderr}"
    );
    assert_eq!(mirror.requests(TARBALL).len(), 2);
    ws.assert_cache_clean(false);
}

#[test]
fn connection_reset_mid_body_resumes_with_a_range_request() {
    let (ws, mirror, tarball) = setup_one(512 * 1024);
    let half = tarball.len() / 2;
    mirror.fault(TARBALL, Fault::Reset(half));
    let stderr = ws.ok_stderr(&fetch_args(&mirror, &[]));
    let reqs = mirror.requests(TARBALL);
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    let range = reqs[1].range.clone().expect("second request is ranged");
    let from: usize = range
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(from > 0 && from <= half, "resumed from {from}");
    assert!(stderr.contains("retrying"), "{stderr}");
    assert_stored(&ws, &tarball);
}

#[test]
fn truncated_body_resumes() {
    let (ws, mirror, tarball) = setup_one(512 * 1024);
    mirror.fault(TARBALL, Fault::Truncate(tarball.len() / 3));
    ws.ok(&fetch_args(&mirror, &[]));
    let reqs = mirror.requests(TARBALL);
    assert_eq!(reqs.len(), 2);
    assert!(reqs[1].range.is_some(), "{reqs:?}");
    assert_indexed(&ws, 1);
}

#[test]
fn server_without_range_support_restarts_in_the_same_pass() {
    let (ws, mirror, tarball) = setup_one(512 * 1024);
    mirror.fault(TARBALL, Fault::Truncate(tarball.len() / 3));
    mirror.fault(TARBALL, Fault::IgnoreRange);
    let stderr = ws.ok_stderr(&fetch_args(&mirror, &[]));
    assert!(stderr.contains("does not resume"), "{stderr}");
    assert_stored(&ws, &tarball);
}

#[test]
fn truncated_body_of_unknown_length_is_a_digest_mismatch() {
    let (ws, mirror, tarball) = setup_one(256 * 1024);
    mirror.fault(TARBALL, Fault::TruncateUnsized(tarball.len() / 2));
    let stderr = ws.fails(&fetch_args(&mirror, &[]), 4);
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    assert!(stderr.contains("Nothing was stored"), "{stderr}");
    ws.assert_cache_clean(true);
}

#[test]
fn wrong_digest_stores_nothing() {
    let (ws, mirror, tarball) = setup_one(64 * 1024);
    let other = stand_in_tarball("tampered-", 64 * 1024);
    mirror.put(TARBALL, other.clone());
    let stderr = ws.fails(&fetch_args(&mirror, &[]), 4);
    assert!(
        stderr.contains(&format!("expected sha256:{}", sha256(&tarball))),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("got sha256:{}", sha256(&other))),
        "{stderr}"
    );
    ws.assert_cache_clean(true);
}

#[test]
fn server_slower_than_the_read_timeout() {
    let (ws, mirror, _) = setup_one(256 * 1024);
    // Headers, then nothing: no progress, so the tries run out. (A server that
    // trickles bytes makes progress, and progress resets the tries.)
    mirror.sticky(TARBALL, Fault::Stall(0, Duration::from_secs(5)));
    let args = fetch_args(&mirror, &["--read-timeout", "1", "--tries", "2"]);
    let t = Instant::now();
    let stderr = ws.fails(&args, 5);
    assert!(
        t.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t.elapsed()
    );
    assert!(stderr.contains("read timeout"), "{stderr}");
    assert!(stderr.contains(&mirror.url()), "{stderr}");
    ws.assert_cache_clean(true);
}

#[test]
fn a_stall_once_is_survived() {
    let (ws, mirror, _) = setup_one(256 * 1024);
    mirror.fault(TARBALL, Fault::Stall(1000, Duration::from_secs(20)));
    let args = fetch_args(&mirror, &["--read-timeout", "1"]);
    ws.ok(&args);
    let reqs = mirror.requests(TARBALL);
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=1000-"));
    ws.assert_cache_clean(false);
}

#[test]
fn redirect_on_the_same_server() {
    let (ws, mirror, tarball) = setup_one(64 * 1024);
    mirror.put(
        "moved/kubernetes-server-linux-amd64.tar.gz",
        tarball.clone(),
    );
    mirror.fault(
        TARBALL,
        Fault::Redirect("moved/kubernetes-server-linux-amd64.tar.gz".into()),
    );
    ws.ok(&fetch_args(&mirror, &[]));
    assert_eq!(
        mirror
            .requests("moved/kubernetes-server-linux-amd64.tar.gz")
            .len(),
        1
    );
    assert_indexed(&ws, 1);
}

#[test]
fn two_processes_fetching_at_once_download_once() {
    let (ws, mirror, tarball) = setup_one(256 * 1024);
    mirror.fault(TARBALL, Fault::Delay(Duration::from_millis(800)));
    let args = fetch_args(&mirror, &[]);
    let (a, b) = (ws.spawn(&args), ws.spawn(&args));
    for child in [a, b] {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(mirror.requests(TARBALL).len(), 1);
    assert_stored(&ws, &tarball);
}

#[test]
fn https_mirror_needs_its_ca_and_refuses_a_downgrade() {
    let (ws, mirror, tarball) = setup_one(64 * 1024);
    let tls = TlsFront::start(mirror.addr);
    fs::write(ws.path("mirror-ca.pem"), &tls.ca_pem).unwrap();
    let url = tls.url();
    // A CA the system does not trust: refused at once (not retried).
    let stderr = ws.fails(&["fetch", "--mirror", &url], 5);
    assert!(stderr.contains("certificate"), "{stderr}");
    assert!(!stderr.contains("retrying"), "{stderr}");
    assert!(mirror.log().is_empty());
    ws.assert_cache_clean(true);
    // Trusted with --ca-cert.
    ws.ok(&["fetch", "--mirror", &url, "--ca-cert", "mirror-ca.pem"]);
    assert_eq!(ws.cache_files("artifacts/sha256"), vec![sha256(&tarball)]);
    // A redirect from https to plain http is refused without --allow-http.
    let (ws2, _, _) = setup_one(64 * 1024);
    assert_eq!(ws2.tarball(), tarball, "the same pin");
    fs::write(ws2.path("mirror-ca.pem"), &tls.ca_pem).unwrap();
    mirror.fault(
        TARBALL,
        Fault::Redirect(format!("{}/{TARBALL}", mirror.url())),
    );
    let stderr = ws2.fails(
        &["fetch", "--mirror", &url, "--ca-cert", "mirror-ca.pem"],
        5,
    );
    assert!(stderr.contains("--allow-http"), "{stderr}");
    ws2.assert_cache_clean(true);
}

// ---------------------------------------------------------------- offline

#[test]
fn offline_cache_miss_names_the_artifact_and_the_command() {
    let (ws, mirror, _) = setup(16 * 1024);
    let url = mirror.url();
    for env in [false, true] {
        let mut c = ws.cmd();
        c.args([
            "controller",
            "--node",
            "1",
            "--mirror",
            &url,
            "--allow-http",
        ]);
        if env {
            c.env("IMGBUILD_OFFLINE", "1");
        } else {
            c.arg("--offline");
        }
        let out = c.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stderr}");
        // Both tarballs, each with where to get it and how to import it.
        assert!(
            stderr.contains("kubernetes-server-linux-amd64.tar.gz")
                && stderr.contains("etcd-v3.3.10-linux-amd64.tar.gz")
                && stderr.contains("https://github.com/etcd-io/etcd/releases/download/v3.3.10/etcd-v3.3.10-linux-amd64.tar.gz")
                && stderr.contains("imgbuild cache import kubernetes-server-linux-amd64.tar.gz etcd-v3.3.10-linux-amd64.tar.gz")
                && stderr.contains("imgbuild fetch")
                && stderr.contains("imgbuild airgap import"),
            "{stderr}"
        );
    }
    assert!(mirror.log().is_empty(), "offline made requests");
}

#[test]
fn no_network_fails_fast_with_a_way_out() {
    if !in_netns("no_network_fails_fast_with_a_way_out") {
        return;
    }
    // Inside the namespace: no route anywhere, no DNS. The default base is used.
    let (ws, _, _) = setup(16 * 1024);
    let t = Instant::now();
    let stderr = ws.fails(&["controller", "--node", "1"], 5);
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    assert!(stderr.contains("https://dl.k8s.io/v1.10.2/"), "{stderr}");
    // etcd's tarball comes from its own publisher.
    assert!(
        stderr.contains("https://github.com/etcd-io/etcd/releases/download/v3.3.10/"),
        "{stderr}"
    );
    assert!(
        stderr.contains("airgap import") && stderr.contains("--mirror"),
        "{stderr}"
    );
    ws.assert_cache_clean(true);
}

#[test]
fn https_proxy_is_honoured() {
    if !in_netns("https_proxy_is_honoured") {
        return;
    }
    let (ws, _, _) = setup(16 * 1024);
    let proxy = FakeProxy::start();
    let out = ws
        .cmd_with_cache("cache")
        .args(["fetch", "--tries", "1"])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTPS_PROXY", format!("http://{}", proxy.addr))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    let seen = proxy.seen.lock().unwrap().clone();
    // Both publishers, through the proxy: dl.k8s.io and (etcd) github.com.
    let mut seen = seen;
    seen.sort();
    assert_eq!(
        seen,
        vec![
            "CONNECT dl.k8s.io:443 HTTP/1.1".to_string(),
            "CONNECT github.com:443 HTTP/1.1".to_string()
        ]
    );
    // A proxy at a closed loopback port: the connection is refused, retried a
    // bounded number of times, and the message says how to get the files.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let t = Instant::now();
    let out = ws
        .cmd_with_cache("cache")
        .args(["controller", "--node", "1", "--tries", "3"])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env("HTTPS_PROXY", format!("http://127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{stderr}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        stderr.contains("3 tries") && stderr.contains("airgap import"),
        "{stderr}"
    );
}

// ---------------------------------------------------------------- air-gap

fn build_bytes(ws: &Workspace, cache: &str, netns: bool) -> Vec<u8> {
    let _ = fs::remove_dir_all(ws.path("out"));
    let mut c = ws.cmd_with_cache(cache);
    c.args(["controller", "--node", "1", "--offline"]);
    let out = if netns {
        // The build must not need the network: run it where there is none.
        wrapped(&["unshare", "-n"], &c).output().unwrap()
    } else {
        c.output().unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    fs::read(ws.path("out/controller-1.tar.gz")).unwrap()
}

/// `airgap import <bundle>` into another cache of the workspace.
fn airgap_import(ws: &Workspace, cache: &str, bundle: &str) -> std::process::Output {
    ws.cmd_with_cache(cache)
        .args(["airgap", "import", bundle])
        .output()
        .unwrap()
}

fn unshare_works() -> bool {
    Command::new("unshare")
        .args(["-n", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn airgap_round_trip_builds_the_same_bytes_without_network() {
    let (ws, mirror, _) = setup(128 * 1024);
    ws.ok(&fetch_args(&mirror, &[]));
    let fetched = build_bytes(&ws, "cache", false);
    let stdout = String::from_utf8(
        ws.run(&["airgap", "export", "-o", "bundle.tar", "--offline"])
            .stdout,
    )
    .unwrap();
    // The server tarball and etcd's.
    assert!(stdout.contains("2 artifact(s)"), "{stdout}");
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(ws.path("bundle.tar")).unwrap());
    for e in ar.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().display().to_string());
    }
    let etcd = format!("artifacts/sha256/{}", sha256(ws.etcd_tarball()));
    assert!(
        names.contains(&etcd),
        "the bundle lacks etcd's tarball: {names:?}"
    );
    // The other side: a fresh cache, no network.
    let out = airgap_import(&ws, "cache2", "bundle.tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let imported = build_bytes(&ws, "cache2", unshare_works());
    assert!(
        fetched == imported,
        "export → import → build differs from fetch → build"
    );
    // The offline build holds etcd, from the imported tarball.
    let root = ws.path("root");
    fs::create_dir_all(&root).unwrap();
    support::untar(&ws.path("out/controller-1.tar.gz"), &root);
    for b in ["etcd", "etcdctl"] {
        assert!(root.join("usr/local/bin").join(b).is_file(), "{b}");
    }
    assert!(root.join("etc/systemd/system/etcd.service").is_file());
}

/// A tar entry written with raw header fields (the tar crate's builder would
/// refuse some of these names, which is the point).
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    name: &[u8],
    kind: tar::EntryType,
    data: &[u8],
    link: Option<&str>,
) {
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    tar.append(&h, data).unwrap();
}

#[test]
fn airgap_import_refuses_hostile_bundles() {
    let (ws, mirror, tarball) = setup(32 * 1024);
    ws.ok(&fetch_args(&mirror, &[]));
    ws.ok(&["airgap", "export", "-o", "good.tar", "--offline"]);
    // Take the good bundle apart.
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ar = tar::Archive::new(fs::File::open(ws.path("good.tar")).unwrap());
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut data).unwrap();
        entries.push((name, data));
    }
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names[0], "manifest.json", "{names:?}");
    let artifact = format!("artifacts/sha256/{}", sha256(&tarball));
    assert!(names.contains(&artifact.as_str()), "{names:?}");

    type Extra = (
        &'static [u8],
        tar::EntryType,
        &'static [u8],
        Option<&'static str>,
    );
    let cases: Vec<(&str, Extra)> = vec![
        ("absolute path", (b"/etc/passwd", tar::EntryType::Regular, b"x", None)),
        ("`..`", (b"artifacts/../../escape", tar::EntryType::Regular, b"x", None)),
        ("symbolic link", (b"recipes/link.toml", tar::EntryType::Symlink, b"", Some("/etc/shadow"))),
        ("hard link", (b"recipes/hard.toml", tar::EntryType::Link, b"", Some("manifest.json"))),
        ("device file", (b"artifacts/sha256/dev", tar::EntryType::Char, b"", None)),
        ("does not hold", (b"notes.txt", tar::EntryType::Regular, b"hello", None)),
        ("not listed", (b"artifacts/sha256/0000000000000000000000000000000000000000000000000000000000000000", tar::EntryType::Regular, b"x", None)),
    ];
    for (why, (name, kind, data, link)) in cases {
        let mut t = tar::Builder::new(Vec::new());
        for (n, d) in &entries {
            raw_entry(&mut t, n.as_bytes(), tar::EntryType::Regular, d, None);
        }
        // Hostile entries last: everything before them is valid, and still
        // nothing may be written.
        raw_entry(&mut t, name, kind, data, link);
        fs::write(ws.path("bad.tar"), t.into_inner().unwrap()).unwrap();
        let out = airgap_import(&ws, "cache3", "bad.tar");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(4), "{why}: {stderr}");
        assert!(
            stderr.contains("refused") && stderr.contains(why),
            "{why}: {stderr}"
        );
        assert!(
            !ws.path("cache3/index").exists()
                || fs::read_dir(ws.path("cache3/index"))
                    .unwrap()
                    .next()
                    .is_none(),
            "{why}: something was imported"
        );
    }

    // A blob whose bytes differ from its pin: verified, refused, nothing stored.
    let mut t = tar::Builder::new(Vec::new());
    for (n, d) in &entries {
        let mut d = d.clone();
        if *n == artifact {
            let last = d.len() - 1;
            d[last] ^= 0xff;
        }
        raw_entry(&mut t, n.as_bytes(), tar::EntryType::Regular, &d, None);
    }
    fs::write(ws.path("bad.tar"), t.into_inner().unwrap()).unwrap();
    let out = airgap_import(&ws, "cache3", "bad.tar");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("digest mismatch"), "{stderr}");
    for sub in ["index", "blobs/sha256", "artifacts/sha256", "tmp"] {
        let n = fs::read_dir(ws.path("cache3").join(sub))
            .map(|r| r.count())
            .unwrap_or(0);
        assert_eq!(n, 0, "{sub} not empty");
    }
}

// ---------------------------------------------------------------- lock

const NEW: &str = "v1.33.0";

fn serve_release(mirror: &Mirror, version: &str, arch: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (i, bin) in BINARIES.iter().enumerate() {
        let bytes = stand_in(&format!("{version}{arch}{bin}"), 100_000 + i * 1000);
        let path = format!("{version}/bin/linux/{arch}/{bin}");
        // kubectl: only a .sha256 (the lock falls back to it).
        if *bin == "kubectl" {
            mirror.put(
                &format!("{path}.sha256"),
                format!("{}\n", sha256(&bytes)).into_bytes(),
            );
        } else {
            mirror.put(
                &format!("{path}.sha512"),
                hex::encode(Sha512::digest(&bytes)).into_bytes(),
            );
        }
        mirror.put(&path, bytes.clone());
        out.push((bin.to_string(), bytes));
    }
    // etcd, which `lock` picks for the version, with its SHA256SUMS (the other
    // arch's line too, as the release's file has every arch).
    let etcd = support::etcd_version(version);
    let name = support::etcd_tarball_name(&etcd, arch);
    let bins = support::etcd_stand_ins(&etcd, &format!("{version}{arch}"), 50_000);
    let tarball = support::etcd_tarball(&etcd, arch, &bins);
    let other = support::etcd_tarball_name(&etcd, "s390x");
    let sums = format!(
        "{}  {other}\n{}  {name}\n",
        sha256(b"another arch"),
        sha256(&tarball)
    );
    mirror.put(&format!("etcd/{etcd}/SHA256SUMS"), sums.into_bytes());
    mirror.put(&format!("etcd/{etcd}/{name}"), tarball.clone());
    out.push((name, tarball));
    out
}

/// `lock --version NEW` in `ws` against `mirror` through a TLS front (`lock`
/// reads pins only over TLS, never plain http); returns its stdout.
fn lock_over_tls(ws: &Workspace, mirror: &Mirror) -> String {
    let (tls, ca) = mirror.tls(ws.dir());
    let ca = ca.to_str().unwrap();
    ws.ok(&["lock", "--version", NEW, "--mirror", &tls, "--ca-cert", ca])
}

/// A bare workspace for NEW, a mirror serving its release (amd64), and the
/// release locked from the mirror ([`lock_over_tls`], whose stdout is third).
fn locked_release() -> (Workspace, Mirror, String) {
    let ws = bare(NEW);
    let mirror = Mirror::start();
    serve_release(&mirror, NEW, "amd64");
    let stdout = lock_over_tls(&ws, &mirror);
    (ws, mirror, stdout)
}

#[test]
fn lock_then_fetch_then_build_records_publisher_checksum_trust() {
    let (ws, mirror, stdout) = locked_release();
    let url = mirror.url();
    assert!(stdout.contains("kubectl\tamd64\tsha256:"), "{stdout}");
    assert!(
        stdout.contains("kube-apiserver\tamd64\tsha512:"),
        "{stdout}"
    );
    // etcd from its SHA256SUMS, the one the nearest shipped recipe (v1.34.7) carries.
    assert!(
        stdout.contains("etcd-v3.6.5-linux-amd64.tar.gz\tamd64\tsha256:"),
        "{stdout}"
    );
    let lock = fs::read_to_string(ws.path("cache/locks/kubernetes-v1.33.0.toml")).unwrap();
    assert!(lock.contains("trust = \"publisher-checksum\""), "{lock}");
    assert!(lock.contains("kind = \"file\""), "{lock}");
    assert!(lock.contains("etcd_version = \"v3.6.5\""), "{lock}");
    assert!(lock.contains("/etcd/v3.6.5/SHA256SUMS"), "{lock}");
    // Four files and etcd's tarball, two at a time.
    ws.ok(&["fetch", "--mirror", &url, "--allow-http", "--jobs", "2"]);
    assert_eq!(ws.cache_files("index").len(), 5);
    ws.assert_cache_clean(false);
    ws.ok(&["controller", "--node", "1", "--offline"]);
    let manifest = fs::read_to_string(ws.path("out/controller-1.manifest.json")).unwrap();
    assert!(manifest.contains("publisher-checksum"), "{manifest}");
    // A binary that does not match its checksum file.
    let mirror2 = Mirror::start();
    serve_release(&mirror2, NEW, "amd64");
    mirror2.put(
        &format!("{NEW}/bin/linux/amd64/kube-scheduler"),
        b"not it".to_vec(),
    );
    let ws2 = bare(NEW);
    let url2 = mirror2.url();
    lock_over_tls(&ws2, &mirror2);
    let stderr = ws2.fails(&["fetch", "--mirror", &url2, "--allow-http"], 4);
    assert!(
        stderr.contains("kube-scheduler") && stderr.contains("digest mismatch"),
        "{stderr}"
    );
    ws2.assert_cache_clean(false);
    assert_eq!(ws2.cache_files("index").len(), 4);
}

/// `--etcd-version` picks etcd's release: pinned from that release's
/// SHA256SUMS (a missing file or line is an error naming it), and only etcd
/// releases are taken.
#[test]
fn lock_pins_the_etcd_release_asked_for() {
    let ws = bare(NEW);
    let mirror = Mirror::start();
    let served = serve_release(&mirror, NEW, "amd64");
    let (tls, ca) = mirror.tls(ws.dir());
    let ca = ca.to_str().unwrap();
    let lock = |etcd: &str| {
        ws.run(&[
            "lock",
            "--version",
            NEW,
            "--etcd-version",
            etcd,
            "--mirror",
            &tls,
            "--ca-cert",
            ca,
        ])
    };
    let out = lock("3.5.99");
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    assert!(
        text(&out).contains("/etcd/v3.5.99/SHA256SUMS does not exist"),
        "{}",
        text(&out)
    );
    let out = lock("4.0.0");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("--etcd-version 4.0.0"),
        "{}",
        text(&out)
    );
    assert!(!ws.path("cache/locks/kubernetes-v1.33.0.toml").exists());
    // The release the mirror has: its SHA256SUMS line for the arch.
    let out = lock("v3.6.5");
    assert!(out.status.success(), "{}", text(&out));
    let lock = fs::read_to_string(ws.path("cache/locks/kubernetes-v1.33.0.toml")).unwrap();
    let name = support::etcd_tarball_name("v3.6.5", "amd64");
    let (_, tarball) = served.iter().find(|(n, _)| *n == name).unwrap();
    assert!(
        lock.contains(&format!("amd64 = \"{}\"", sha256(tarball))),
        "{lock}"
    );
    assert!(lock.contains("etcd-v3.6.5-linux-{arch}/etcdutl"), "{lock}");
}

#[test]
fn lock_refuses_to_shadow_a_changelog_pin_and_needs_checksum_files() {
    let ws = bare(VERSION);
    fs::remove_dir_all(ws.path("recipes")).unwrap(); // the built-in recipe counts
    let mirror = Mirror::start();
    let (url, ca) = mirror.tls(ws.dir());
    let ca = ca.to_str().unwrap();
    let stderr = ws.fails(
        &[
            "lock",
            "--version",
            VERSION,
            "--mirror",
            &url,
            "--ca-cert",
            ca,
        ],
        2,
    );
    assert!(
        stderr.contains("changelog") && stderr.contains("--force"),
        "{stderr}"
    );
    let stderr = ws.fails(
        &[
            "lock",
            "--version",
            "v1.11.0",
            "--mirror",
            &url,
            "--ca-cert",
            ca,
        ],
        3,
    );
    assert!(stderr.contains(".sha512 or .sha256"), "{stderr}");
    assert!(!ws.path("cache/locks/kubernetes-v1.11.0.toml").exists());
}

#[test]
fn airgap_carries_a_lock() {
    let (ws, mirror, _) = locked_release();
    let url = mirror.url();
    ws.ok(&[
        "airgap",
        "export",
        "-o",
        "b.tar",
        "--mirror",
        &url,
        "--allow-http",
    ]);
    let out = airgap_import(&ws, "cache2", "b.tar");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(ws.path("cache2/locks/kubernetes-v1.33.0.toml").is_file());
    let a = build_bytes(&ws, "cache", false);
    let b = build_bytes(&ws, "cache2", unshare_works());
    assert!(a == b);
}

// ---------------------------------------------------------------- cache

#[test]
fn cache_verify_drops_what_is_corrupt_and_gc_cleans_up() {
    let (ws, mirror, _) = setup_one(64 * 1024);
    ws.ok(&fetch_args(&mirror, &[]));
    ws.ok(&["cache", "verify"]);
    // Leftovers of a killed process and an orphan blob.
    // (gc leaves temp files touched within the hour: a build may be writing them.)
    fs::write(ws.path("cache/tmp/.part-fresh"), b"busy").unwrap();
    fs::write(ws.path("cache/tmp/.part-leftover"), b"half").unwrap();
    fs::File::options()
        .write(true)
        .open(ws.path("cache/tmp/.part-leftover"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(7200))
        .unwrap();
    let orphan = sha256(b"orphan");
    fs::write(ws.path("cache/blobs/sha256").join(&orphan), b"orphan").unwrap();
    let out = ws.run(&["cache", "gc"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        stdout.contains(".part-leftover") && stdout.contains(&orphan),
        "{stdout}"
    );
    assert_eq!(ws.cache_files("tmp"), vec![".part-fresh".to_string()]);
    fs::remove_file(ws.path("cache/tmp/.part-fresh")).unwrap();
    ws.assert_cache_clean(false);
    assert_eq!(ws.cache_files("blobs/sha256").len(), 4);
    ws.ok(&["controller", "--node", "1", "--offline"]);
    // Corrupt one member blob.
    let blob = ws
        .path("cache/blobs/sha256")
        .join(&ws.cache_files("blobs/sha256")[0]);
    fs::remove_file(&blob).unwrap();
    fs::write(&blob, b"bit rot").unwrap();
    let out = ws.run(&["cache", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("corrupt") && stdout.contains("lost a file"),
        "{stdout}"
    );
    assert!(ws.cache_files("index").is_empty());
    ws.fails(&["controller", "--node", "1", "--offline"], 3);
    // Fetching again repairs it.
    ws.ok(&fetch_args(&mirror, &[]));
    ws.ok(&["cache", "verify"]);
    ws.ok(&["controller", "--node", "1", "--offline"]);
}

#[test]
fn several_failed_downloads_name_each_file_and_advise_once() {
    let ws = Workspace::builder("v1.36.0")
        .binaries(1000)
        .not_imported()
        .build();
    // Nothing listens on the discard port: every connection is refused.
    let err = ws.fails(
        &["fetch", "--mirror", "http://127.0.0.1:9", "--allow-http"],
        5,
    );
    assert!(
        err.contains("kubernetes-server-linux-amd64.tar.gz") && err.contains("also: "),
        "{err}"
    );
    assert!(err.contains(&ws.etcd_tarball_name()), "{err}");
    assert_eq!(err.matches("Without network access").count(), 1, "{err}");
    assert!(err.trim_end().ends_with("docs/fetch.md)"), "{err}");
}
