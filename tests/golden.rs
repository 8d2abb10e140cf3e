//! Golden files: every file the overlay renders for node 2 of the bundled
//! example, for the seed's v1.10.2 and for v1.36.0, compared byte for byte with
//! `tests/golden/<version>/`. Any drift in a template fails here; when a change
//! is meant, `UPDATE_GOLDEN=1 cargo test --test golden` rewrites them, and the
//! diff is reviewed like code.

mod support;

use std::fs;
use std::path::Path;

use support::{REPO, Workspace};

fn check(version: &str) {
    let ws = Workspace::new(version);
    ws.ok(&["controller", "--node", "2", "--format", "dir"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path("out/controller-2.manifest.json")).unwrap())
            .unwrap();
    let golden = Path::new(REPO).join("tests/golden").join(version);
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    if update {
        let _ = fs::remove_dir_all(&golden);
    }
    let mut rendered = Vec::new();
    for e in manifest["entries"].as_array().unwrap() {
        if e["origin"]["kind"] != "template" {
            continue;
        }
        let path = e["path"].as_str().unwrap().trim_start_matches('/');
        let ours = fs::read(ws.path("out/controller-2").join(path)).unwrap();
        let want = golden.join(path);
        if update {
            fs::create_dir_all(want.parent().unwrap()).unwrap();
            fs::write(&want, &ours).unwrap();
        } else {
            let expected = fs::read(&want).unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; a new rendered file? run UPDATE_GOLDEN=1 cargo test --test golden",
                    want.display()
                )
            });
            assert!(
                ours == expected,
                "{version} /{path} differs from {}:\n--- golden\n{}\n--- rendered\n{}\n\
                 (if the change is meant: UPDATE_GOLDEN=1 cargo test --test golden, and review the diff)",
                want.display(),
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(&ours)
            );
        }
        rendered.push(path.to_string());
    }
    assert!(
        rendered.len() >= 8,
        "{version}: only {} rendered files",
        rendered.len()
    );
    // No golden file without a rendered counterpart (a template that went away).
    let ws_files = support::files_under(&golden);
    for f in ws_files {
        assert!(
            rendered.contains(&f),
            "{version}: golden {f} is no longer rendered; UPDATE_GOLDEN=1 to drop it"
        );
    }
}

#[test]
fn v1_10_2_renders_its_golden_files() {
    check("v1.10.2");
}

#[test]
fn v1_36_0_renders_its_golden_files() {
    check("v1.36.0");
}
