//! Bad input: a clear message naming the file and field (or line) and what to
//! do, a non-zero exit, and nothing written.

mod support;

use std::fs;

use support::Workspace;

fn edit(ws: &Workspace, from: &str, to: &str) {
    let path = ws.path("cluster.toml");
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains(from), "fixture lacks {from:?}");
    fs::write(&path, text.replacen(from, to, 1)).unwrap();
}

/// Run `controller --node N`, expect `code`, check every `needles` is in the
/// message and that no output was left behind.
fn expect_error(ws: &Workspace, node: &str, code: i32, needles: &[&str]) {
    let err = ws.fails(&["controller", "--node", node], code);
    for n in needles {
        assert!(err.contains(n), "message lacks {n:?}:\n{err}");
    }
    let left = ws.files_under("out");
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn inventory_errors() {
    let ws = Workspace::new("v1.10.2");
    let original = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    let reset = || fs::write(ws.path("cluster.toml"), &original).unwrap();

    // Missing inventory.
    let err = ws.fails(
        &["controller", "--node", "1", "--inventory", "nope.toml"],
        2,
    );
    assert!(
        err.contains("nope.toml") && err.contains("--inventory"),
        "{err}"
    );

    // Syntax error, with its line.
    edit(&ws, "arch = \"amd64\"", "arch = amd64");
    expect_error(&ws, "1", 2, &["cluster.toml", "line 7", "invalid string"]);
    reset();

    // Unknown key.
    edit(&ws, "cluster_cidr", "cluster_cdir");
    expect_error(
        &ws,
        "1",
        2,
        &["cluster.toml", "unknown field `cluster_cdir`"],
    );
    reset();

    // Node selection.
    expect_error(&ws, "0", 2, &["--node 0", "1 to 3"]);
    expect_error(&ws, "4", 2, &["--node 4", "3 controller(s)"]);
    expect_error(
        &ws,
        "controller-9",
        2,
        &["controller-9", "controller-1, controller-2, controller-3"],
    );

    // Duplicates.
    edit(&ws, "name = \"controller-2\"", "name = \"controller-1\"");
    expect_error(&ws, "1", 2, &["controllers[2]", "appears twice"]);
    reset();
    edit(&ws, "10.240.0.12", "10.240.0.11");
    expect_error(
        &ws,
        "1",
        2,
        &[
            "controllers[2] (controller-2).internal_ip",
            "used by another controller",
        ],
    );
    reset();

    // Bad values.
    edit(&ws, "10.240.0.13", "10.240.0.256");
    expect_error(
        &ws,
        "1",
        2,
        &[
            "controllers[3] (controller-3).internal_ip",
            "not an IP address",
        ],
    );
    reset();
    edit(&ws, "10.200.0.0/16", "10.200.0.0");
    expect_error(&ws, "1", 2, &["cluster.cluster_cidr", "not a CIDR"]);
    reset();
    edit(&ws, "30000-32767", "30000-99999");
    expect_error(
        &ws,
        "1",
        2,
        &["cluster.service_node_port_range", "port range"],
    );
    reset();

    // Unknown version: the message lists what exists.
    edit(&ws, "v1.10.2", "v1.9.0");
    expect_error(&ws, "1", 2, &["no recipe for Kubernetes v1.9.0", "v1.10.2"]);
    reset();
}

#[test]
fn missing_pki_file_is_named() {
    let ws = Workspace::new("v1.10.2");
    fs::remove_file(ws.path("pki/service-account-key.pem")).unwrap();
    expect_error(&ws, "1", 2, &["service-account-key.pem", "pki init"]);
}

#[test]
fn cache_miss_says_how_to_import() {
    let ws = Workspace::builder("v1.10.2")
        .binaries(1000)
        .not_imported()
        .build();
    expect_error(
        &ws,
        "1",
        3,
        &[
            "kubernetes-server-linux-amd64.tar.gz",
            "not in the cache",
            "imgbuild cache import",
            "airgap import",
            "https://dl.k8s.io/v1.10.2/kubernetes-server-linux-amd64.tar.gz",
        ],
    );
}

#[test]
fn import_of_a_file_that_does_not_match_its_pin_stores_nothing() {
    let ws = Workspace::builder("v1.10.2")
        .binaries(1000)
        .not_imported()
        .build();
    // Same name, other bytes.
    let mut altered = fs::read(ws.path("kubernetes-server-linux-amd64.tar.gz")).unwrap();
    let n = altered.len();
    altered[n / 2] ^= 1;
    fs::write(ws.path("kubernetes-server-linux-amd64.tar.gz"), &altered).unwrap();
    let err = ws.fails(
        &["cache", "import", "kubernetes-server-linux-amd64.tar.gz"],
        4,
    );
    assert!(
        err.contains("digest mismatch") && err.contains("expected sha256:") && err.contains("got"),
        "{err}"
    );
    let stored: Vec<_> = ws
        .files_under("cache")
        .into_iter()
        .filter(|p| !p.ends_with('/'))
        .collect();
    assert!(stored.is_empty(), "stored after a mismatch: {stored:?}");
    // A file no recipe pins.
    fs::write(ws.path("random.tar.gz"), b"x").unwrap();
    let err = ws.fails(&["cache", "import", "random.tar.gz"], 2);
    assert!(
        err.contains("no recipe pins a file of this name")
            && err.contains("kubernetes-server-linux-amd64.tar.gz"),
        "{err}"
    );
}

#[test]
fn corrupted_cache_blob_fails_the_build() {
    let ws = Workspace::new("v1.10.2");
    let blobs = ws.files_under("cache/blobs/sha256");
    // The server's four binaries, etcd's two (3.3.10 has no etcdutl).
    assert_eq!(blobs.len(), 6);
    let victim = ws.path(&format!("cache/blobs/sha256/{}", blobs[0]));
    let mut bytes = fs::read(&victim).unwrap();
    bytes[100] ^= 0xff;
    fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::write(&victim, &bytes).unwrap();
    expect_error(&ws, "1", 4, &["is corrupt", "cache verify", &blobs[0]]);
    // Every archive writer, split or not: the same error, no output, and
    // nothing derived from the bad bytes kept in the cache.
    for args in [
        &["--split"][..],
        &["--format", "cpio.gz"],
        &["--format", "cpio.gz", "--split"],
        &["--format", "cpio"],
        &["--format", "cpio", "--split"],
    ] {
        let mut cmd = vec!["controller", "--node", "1"];
        cmd.extend(args);
        let err = ws.fails(&cmd, 4);
        assert!(
            err.contains("is corrupt") && err.contains(&blobs[0]),
            "{args:?}: {err}"
        );
        assert!(
            ws.files_under("out").is_empty(),
            "{args:?}: {:?}",
            ws.files_under("out")
        );
        assert!(ws.files_under("cache/segments").is_empty(), "{args:?}");
        assert!(ws.files_under("cache/tmp").is_empty(), "{args:?}");
    }
}

#[test]
fn unwritable_output_folder() {
    let ws = Workspace::new("v1.10.2");
    // A file where a folder should be: even root cannot write there.
    let err = ws.fails(
        &["controller", "--node", "1", "--out", "cluster.toml/out"],
        6,
    );
    assert!(
        err.contains("cluster.toml/out") && err.contains("--out"),
        "{err}"
    );
}

/// A value echoed by an error is cut to a line's length and its control
/// characters escaped, wherever it comes from: the command line, a recipe,
/// a file given to inspect.
#[test]
fn echoed_values_are_cut_and_escaped() {
    let ws = Workspace::new("v1.10.2");
    let long = format!("\u{1b}[2J{}", "x".repeat(100_000));
    let mirror = format!("mirror=ftp://{long}");
    let mirror_url = format!("https://{long}/\u{1b}]0;t\u{7}");
    let layout = format!("layout = \"\\u001b[2J{}\"\n", "y".repeat(50_000));
    let recipe = ws.path("recipes/kubernetes-v1.10.2.toml");
    let original = fs::read_to_string(&recipe).unwrap();
    let check = |args: &[&str], code: i32, option: &str| {
        let err = ws.fails(args, code);
        let shown: String = err.chars().take(3000).collect();
        let cmd = args
            .iter()
            .map(|a| a.chars().take(40).collect::<String>())
            .collect::<Vec<_>>();
        assert!(err.contains(option), "{cmd:?}: {shown}");
        assert!(
            err.contains("u{1b}[2J") || err.contains("yyy"),
            "{cmd:?}: {shown}"
        );
        assert!(err.len() < 2000, "{cmd:?}: {} bytes:\n{shown}", err.len());
        assert!(!err.contains('\u{1b}'), "{cmd:?}: a raw escape: {shown}");
        assert!(ws.files_under("out").is_empty(), "{cmd:?}");
    };
    check(
        &["cloud-init", "--node", "1", "--binaries", &mirror],
        2,
        "--binaries mirror=ftp://",
    );
    // clap's own message: the escape dropped, the value cut in the middle.
    let err = ws.fails(&["cloud-init", "--node", "1", "--provider", &long], 2);
    assert!(err.contains("characters cut") && err.len() < 2000 && !err.contains('\u{1b}'));
    check(&["lint", "--os", &long], 2, "--os ");
    check(&["lock", "--version", &long], 2, "--version ");
    check(
        &["lock", "--version", "v1.2.3", "--arch", &long],
        2,
        "--arch ",
    );
    check(&["fetch", "--mirror", &mirror_url], 2, "--mirror https://");
    // A layout name with an escape, and one only too long for a file name:
    // refused with the name cut and escaped.
    for layout in [
        layout.clone(),
        format!("layout = \"{}\"\n", "y".repeat(50_000)),
    ] {
        let text = original.replacen("layout = \"controller\"\n", &layout, 1);
        fs::write(&recipe, text).unwrap();
        let err = ws.fails(&["controller", "--node", "1"], 2);
        let shown: String = err.chars().take(3000).collect();
        assert!(
            err.contains("layout = \"") && err.contains("yyyy"),
            "{shown}"
        );
        assert!(err.len() < 2000 && !err.contains('\u{1b}'), "{shown}");
    }
    fs::write(&recipe, &original).unwrap();
    // A user-data line of 100 KB.
    let dir = ws.path("ci/controller-1-cloud-init");
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("user-data"),
        format!("#cloud-config\nbogus {long}\n"),
    )
    .unwrap();
    let err = ws.fails(&["inspect", "ci/controller-1-cloud-init"], 2);
    assert!(err.contains("line 2") && err.len() < 2000 && !err.contains('\u{1b}'));
}
