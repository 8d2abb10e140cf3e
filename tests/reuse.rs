//! The binaries' part of every node's archive is compressed once and reused:
//! warm builds are byte-identical to cold ones, and GNU tools read the result.

mod support;

use std::fs;
use std::process::Command;

use support::{Workspace, sh, sha256_file};

fn stderr_of(ws: &Workspace, args: &[&str]) -> String {
    let out = ws.run(args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn warm_builds_are_byte_identical_to_cold_ones() {
    // Large enough for several parallel gzip members (4 MiB chunks).
    let ws = Workspace::with_binaries("v1.36.0", "amd64", 3 << 20);
    let cold = stderr_of(&ws, &["controller", "--node", "1"]);
    assert!(cold.contains("compressing the binaries"), "{cold}");
    let first = sha256_file(&ws.path("out/controller-1.tar.gz"));
    fs::remove_dir_all(ws.path("out")).unwrap();

    let warm = stderr_of(&ws, &["controller", "--node", "1"]);
    assert!(
        !warm.contains("compressing the binaries"),
        "the cached part is reused: {warm}"
    );
    assert_eq!(sha256_file(&ws.path("out/controller-1.tar.gz")), first);

    // Other nodes reuse it too, and differ only in their own part.
    let all = stderr_of(&ws, &["controller", "--all"]);
    assert!(!all.contains("compressing the binaries"), "{all}");
    assert_ne!(sha256_file(&ws.path("out/controller-2.tar.gz")), first);

    // With the cache's segments gone, a cold build gives the same bytes again.
    fs::remove_dir_all(ws.path("cache/segments")).unwrap();
    stderr_of(&ws, &["controller", "--node", "1", "--out", "again"]);
    assert_eq!(sha256_file(&ws.path("again/controller-1.tar.gz")), first);

    // A damaged segment (other size) is rebuilt, not shipped.
    let seg = fs::read_dir(ws.path("cache/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .unwrap();
    fs::set_permissions(&seg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .set_len(1000)
        .unwrap();
    let rebuilt = stderr_of(&ws, &["controller", "--node", "1", "--out", "third"]);
    assert!(rebuilt.contains("compressing the binaries"), "{rebuilt}");
    assert_eq!(sha256_file(&ws.path("third/controller-1.tar.gz")), first);

    // GNU gzip sees valid concatenated members; GNU tar extracts the binaries intact.
    let archive = ws.path("out/controller-1.tar.gz");
    sh(Command::new("gzip").arg("-t").arg(&archive));
    let root = ws.path("x");
    fs::create_dir(&root).unwrap();
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&root));
    for b in support::BINARIES {
        assert_eq!(
            fs::read(root.join("usr/local/bin").join(b)).unwrap(),
            support::stand_in(b, 3 << 20),
            "{b}"
        );
    }
    // The SHA256SUMS line is the file's real digest (computed from a resumed hash state).
    let sums = fs::read_to_string(ws.path("out/SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{}  controller-1.tar.gz", sha256_file(&archive))),
        "{sums}"
    );
    assert!(sums.contains(&format!(
        "{}  controller-3.tar.gz",
        sha256_file(&ws.path("out/controller-3.tar.gz"))
    )));
}
