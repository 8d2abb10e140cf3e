//! Arguments that can be refused without reading anything are refused before
//! anything is read, generated or downloaded: a wrong node, `--split` with a
//! folder, a bad thread count or SOURCE_DATE_EPOCH. Checked on the bundled
//! example (which generates its PKI on first use) with a mirror that counts
//! requests.

mod support;

use support::Workspace;

/// The bundled example, unchanged, with no PKI yet, nothing cached, online.
fn fresh_example() -> Workspace {
    let ws = Workspace::builder("v1.36.0")
        .inventory(&std::fs::read_to_string(format!("{}/cluster.toml", support::REPO)).unwrap())
        .no_pki()
        .not_imported()
        .online()
        .mirror()
        .build();
    assert!(!ws.path("pki").exists());
    ws
}

/// Nothing was touched: no request, no PKI, no cache, no output folder.
fn untouched(ws: &Workspace) {
    assert!(
        ws.mirror().log().is_empty(),
        "requests: {:?}",
        ws.mirror().log()
    );
    for dir in ["pki", "cache", "out"] {
        assert!(!ws.path(dir).exists(), "{dir}/ was created");
    }
}

#[test]
fn a_wrong_node_is_refused_before_the_pki_the_cache_or_the_network() {
    let ws = fresh_example();
    let mirror = ws.mirror().url();
    for node in ["9", "0", "no-such-controller"] {
        let err = ws.fails(
            &[
                "controller",
                "--node",
                node,
                "--mirror",
                &mirror,
                "--allow-http",
            ],
            2,
        );
        assert!(
            err.contains(&format!("--node {node}")) || err.contains(node),
            "{err}"
        );
        let err = ws.fails(&["cloud-init", "--node", node], 2);
        assert!(err.contains(node), "{err}");
    }
    untouched(&ws);
    // The same build with a good node goes on to generate the PKI and download.
    ws.ok(&[
        "controller",
        "--node",
        "1",
        "--mirror",
        &mirror,
        "--allow-http",
    ]);
    assert!(ws.path("pki/ca.pem").exists());
    assert!(!ws.mirror().log().is_empty());
}

#[test]
fn split_with_a_folder_is_refused_before_anything_is_read() {
    let ws = fresh_example();
    let mirror = ws.mirror().url();
    let err = ws.fails(
        &[
            "controller",
            "--all",
            "--split",
            "--format",
            "dir",
            "--mirror",
            &mirror,
            "--allow-http",
        ],
        2,
    );
    assert!(
        err.contains("--split") && err.contains("--format dir"),
        "{err}"
    );
    untouched(&ws);
}

#[test]
fn bad_environment_values_are_refused_by_name() {
    let ws = fresh_example();
    let mirror = ws.mirror().url();
    let args = [
        "controller",
        "--node",
        "1",
        "--mirror",
        mirror.as_str(),
        "--allow-http",
    ];
    let out = ws.run_with_env(&[("IMGBUILD_THREADS", "many")], &args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("IMGBUILD_THREADS") && err.contains("many"),
        "{err}"
    );
    let out = ws.run_with_env(&[("SOURCE_DATE_EPOCH", "yesterday")], &args);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("environment variable SOURCE_DATE_EPOCH") && err.contains("yesterday"),
        "{err}"
    );
    // The flag is named as the flag.
    let err = ws.fails(&["controller", "--node", "1", "--source-date-epoch=-1"], 2);
    assert!(err.contains("--source-date-epoch"), "{err}");
    untouched(&ws);
}
