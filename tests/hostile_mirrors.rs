//! Hostile mirrors: each case makes the loopback mirror misbehave and checks
//! that `fetch` or `lock` stops with a message naming the problem, without a
//! panic or an unbounded run, leaving nothing unverified in the cache; and
//! that credentials in a mirror URL are never shown or recorded.

mod support;

use std::time::Duration;

use sha2::{Digest, Sha512};

use support::hostile::{assert_refused, gzip_bomb, output_within, peak_tmp};
use support::http_mirror::{Fault, Mirror};
use support::{BINARIES, Workspace, stand_in, stand_in_tarball};

const V: &str = "v1.10.2";
const TARBALL: &str = "v1.10.2/kubernetes-server-linux-amd64.tar.gz";
/// A version only a lock pins.
const NEW: &str = "v1.33.0";

// ---------------------------------------------------------------- helpers

/// A workspace pinning a 64 KiB stand-in tarball, not in the cache, online,
/// with a mirror serving it.
fn setup() -> (Workspace, Mirror) {
    // etcd external: the server tarball is the one artifact to fetch.
    let ws = Workspace::builder(V)
        .binaries(64 * 1024)
        .not_imported()
        .online()
        .mirror()
        .external_etcd()
        .build();
    let mirror = ws.mirror().clone();
    (ws, mirror)
}

/// `fetch` from the mirror over plain http, with these variables set;
/// killed (and the test failed) after 60 s.
fn fetch(ws: &Workspace, mirror: &Mirror, env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = ws.cmd();
    cmd.args([
        "fetch",
        "--mirror",
        &mirror.url(),
        "--allow-http",
        "--tries",
        "3",
    ])
    .envs(env.iter().copied());
    output_within(cmd, Duration::from_secs(60))
}

/// A fetch refused with `code`, saying `says`; nothing entered the cache.
fn fetch_refused(ws: &Workspace, mirror: &Mirror, env: &[(&str, &str)], code: i32, says: &[&str]) {
    let out = fetch(ws, mirror, env);
    assert_refused(ws, &out, code, says);
    ws.assert_cache_clean(true);
}

/// A workspace for `lock` (no recipe for NEW), and a mirror serving NEW's
/// binaries with their .sha512 files, and the SHA256SUMS of the etcd `lock`
/// picks for NEW.
fn lock_setup() -> (Workspace, Mirror) {
    let ws = Workspace::builder(NEW).no_binaries().online().build();
    let mirror = Mirror::start();
    for bin in BINARIES {
        let bytes = stand_in(&format!("{NEW}{bin}"), 20_000);
        let path = format!("{NEW}/bin/linux/amd64/{bin}");
        mirror.put(
            &format!("{path}.sha512"),
            hex::encode(Sha512::digest(&bytes)).into_bytes(),
        );
        mirror.put(&path, bytes);
    }
    let etcd = support::etcd_version(NEW);
    let name = support::etcd_tarball_name(&etcd, "amd64");
    let bins = support::etcd_stand_ins(&etcd, NEW, 20_000);
    let tarball = support::etcd_tarball(&etcd, "amd64", &bins);
    mirror.put(
        &format!("etcd/{etcd}/SHA256SUMS"),
        format!("{}  {name}\n", support::sha256_bytes(&tarball)).into_bytes(),
    );
    mirror.put(&format!("etcd/{etcd}/{name}"), tarball);
    (ws, mirror)
}

/// `lock --version NEW` with these arguments.
fn lock(ws: &Workspace, args: &[&str]) -> std::process::Output {
    let mut cmd = ws.cmd();
    cmd.args(["lock", "--version", NEW]).args(args);
    output_within(cmd, Duration::from_secs(60))
}

// ---------------------------------------------------------------- bodies

/// A gzip bomb with a wanted member: its digest cannot match, and it is never
/// unpacked to find that out (the temp folder holds only the compressed copy).
#[test]
fn gzip_bomb_is_never_unpacked() {
    let (ws, mirror) = setup();
    mirror.put(
        TARBALL,
        gzip_bomb("kubernetes/server/bin/kube-apiserver", 256 << 20),
    );
    let mut cmd = ws.cmd();
    cmd.args(["fetch", "--mirror", &mirror.url(), "--allow-http"]);
    let (out, peak) = peak_tmp(cmd, &ws.path("cache/tmp"));
    assert_refused(&ws, &out, 4, &["digest mismatch"]);
    assert!(peak < 4 << 20, "{peak} bytes in tmp at once");
    ws.assert_cache_clean(true);
}

/// A chunked body that never ends stops at the artifact cap.
#[test]
fn endless_chunked_body() {
    let (ws, mirror) = setup();
    mirror.sticky(TARBALL, Fault::Endless);
    let env = [("IMGBUILD_MAX_ARTIFACT_SIZE", "8M")];
    fetch_refused(&ws, &mirror, &env, 4, &["cap of 8 MiB", TARBALL]);
}

/// A body announced larger than the cap is refused before it is read.
#[test]
fn announced_length_over_the_cap() {
    let (ws, mirror) = setup();
    let env = [("IMGBUILD_MAX_ARTIFACT_SIZE", "16K")];
    fetch_refused(&ws, &mirror, &env, 4, &["announces", "cap of 16 KiB"]);
    assert_eq!(mirror.requests(TARBALL).len(), 1);
}

/// A resume answered with another range than the one asked for: never
/// appended; the whole file is asked for, and a server that still answers
/// with a part is refused, naming its Content-Range.
#[test]
fn wrong_content_range_on_resume() {
    let (ws, mirror) = setup();
    mirror.fault(TARBALL, Fault::Reset(8 * 1024));
    mirror.sticky(TARBALL, Fault::Partial(0));
    fetch_refused(
        &ws,
        &mirror,
        &[],
        5,
        &["206 Partial Content", "Content-Range: bytes 0-"],
    );
    let requests = mirror.requests(TARBALL);
    assert_eq!(requests[1].range.as_deref(), Some("bytes=8192-"));
    assert_eq!(requests.last().unwrap().range, None);
}

/// The file changed upstream between two attempts: the resume carries
/// If-Range, the mirror sends the new file whole, and the mix of old and new
/// bytes cannot match the pin.
#[test]
fn file_changed_between_attempts() {
    let (ws, mirror) = setup();
    let changed = stand_in_tarball("changed", 64 * 1024);
    mirror.fault(TARBALL, Fault::ResetAndReplace(8 * 1024, changed));
    fetch_refused(&ws, &mirror, &[], 4, &["digest mismatch"]);
    let requests = mirror.requests(TARBALL);
    assert!(requests[1].if_range.is_some(), "{requests:?}");
}

/// A redirect to itself, forever.
#[test]
fn redirect_loop() {
    let (ws, mirror) = setup();
    mirror.sticky(TARBALL, Fault::Redirect(TARBALL.into()));
    fetch_refused(&ws, &mirror, &[], 5, &["too many redirects"]);
}

/// An https mirror redirecting to plain http.
#[test]
fn redirect_from_https_to_http() {
    let (ws, mirror) = setup();
    let (url, ca) = mirror.tls(ws.dir());
    mirror.fault(
        TARBALL,
        Fault::Redirect(format!("{}/{TARBALL}", mirror.url())),
    );
    let mut cmd = ws.cmd();
    cmd.args(["fetch", "--mirror", &url, "--ca-cert"]).arg(&ca);
    let out = output_within(cmd, Duration::from_secs(60));
    assert_refused(&ws, &out, 5, &["redirect to plain http refused"]);
    ws.assert_cache_clean(true);
}

// ---------------------------------------------------------------- lock

/// `lock` over plain http is refused, --allow-http or not, before any request.
#[test]
fn lock_over_plain_http() {
    let (ws, mirror) = lock_setup();
    let out = lock(&ws, &["--mirror", &mirror.url(), "--allow-http"]);
    assert_refused(&ws, &out, 2, &["plain http://", "pins"]);
    assert!(mirror.log().is_empty());
    assert!(ws.cache_files("locks").is_empty());
}

/// `lock` refuses a redirect to plain http even with --allow-http.
#[test]
fn lock_redirect_to_http() {
    let (ws, mirror) = lock_setup();
    let (url, ca) = mirror.tls(ws.dir());
    let sum = format!("{NEW}/bin/linux/amd64/kube-apiserver.sha512");
    mirror.fault(&sum, Fault::Redirect(format!("{}/{sum}", mirror.url())));
    let ca = ca.to_str().unwrap();
    let out = lock(&ws, &["--mirror", &url, "--ca-cert", ca, "--allow-http"]);
    assert_refused(&ws, &out, 5, &["redirect to plain http refused"]);
    assert!(ws.cache_files("locks").is_empty());
}

/// A checksum file of a megabyte is refused, not cut at 64 KiB.
#[test]
fn lock_huge_checksum_file() {
    let (ws, mirror) = lock_setup();
    let (url, ca) = mirror.tls(ws.dir());
    let mut huge = hex::encode([0xab; 64]).into_bytes();
    huge.resize(1 << 20, b' ');
    mirror.put(
        &format!("{NEW}/bin/linux/amd64/kube-apiserver.sha512"),
        huge,
    );
    let out = lock(&ws, &["--mirror", &url, "--ca-cert", ca.to_str().unwrap()]);
    assert_refused(&ws, &out, 4, &["kube-apiserver.sha512", "64 KiB"]);
    assert!(ws.cache_files("locks").is_empty());
}

// ---------------------------------------------------------------- credentials

/// `http://user:token@host` as it is typed, and the token alone.
fn with_credentials(url: &str) -> (String, &'static str) {
    let token = "s3cr3t-t0ken";
    (
        url.replacen("://", &format!("://ci-bot:{token}@"), 1),
        token,
    )
}

/// A failed download's message shows the mirror without its credentials.
#[test]
fn credentials_never_in_messages() {
    let (ws, mirror) = setup();
    mirror.sticky(TARBALL, Fault::Status(404, vec![]));
    let (url, token) = with_credentials(&mirror.url());
    let out = ws
        .cmd()
        .args(["fetch", "--mirror", &url, "--allow-http"])
        .output()
        .unwrap();
    let stderr = assert_refused(&ws, &out, 5, &["404", "***@127.0.0.1"]);
    assert!(!stderr.contains(token), "{stderr}");
    // The same for a URL refused outright.
    let out = ws.cmd().args(["fetch", "--mirror", &url]).output().unwrap();
    let stderr = assert_refused(&ws, &out, 2, &["--allow-http"]);
    assert!(!stderr.contains(token), "{stderr}");
}

/// A mirror URL with a query is refused (a base has none), and the query is
/// not echoed.
#[test]
fn mirror_with_a_query() {
    let (ws, mirror) = setup();
    let url = format!("{}/?token=s3cr3t", mirror.url());
    let out = ws
        .cmd()
        .args(["fetch", "--allow-http", "--mirror", &url])
        .output()
        .unwrap();
    let stderr = assert_refused(&ws, &out, 2, &["query"]);
    assert!(!stderr.contains("s3cr3t"), "{stderr}");
}

/// Credentials given with `--mirror` reach neither the lock's `source`, nor
/// what lock, fetch and the build print, nor the build manifest.
#[test]
fn credentials_never_recorded() {
    let (ws, mirror) = lock_setup();
    let (tls, ca) = mirror.tls(ws.dir());
    let (url, token) = with_credentials(&tls);
    let ca = ca.to_str().unwrap();
    let mut said = String::new();
    for args in [
        vec!["lock", "--version", NEW, "--mirror", &url, "--ca-cert", ca],
        vec!["fetch", "--mirror", &url, "--ca-cert", ca],
        vec!["controller", "--node", "1", "--offline"],
    ] {
        let out = ws.run(&args);
        assert!(out.status.success(), "{}", support::text(&out));
        said.push_str(&support::text(&out));
    }
    let lock = std::fs::read_to_string(ws.path("cache/locks/kubernetes-v1.33.0.toml")).unwrap();
    let manifest = std::fs::read_to_string(ws.path("out/controller-1.manifest.json")).unwrap();
    for (what, text) in [("output", &said), ("lock", &lock), ("manifest", &manifest)] {
        assert!(!text.contains(token), "{what} holds the token:\n{text}");
    }
    assert!(lock.contains("https://***@127.0.0.1:"), "{lock}");
}
