//! The binaries' part of every node's archive is compressed once and reused:
//! warm builds are byte-identical to cold ones, and GNU tools read the result.

mod support;

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Workspace, sh, sha256_file, tree_listing, untar};

#[test]
fn warm_builds_are_byte_identical_to_cold_ones() {
    // Large enough for several parallel gzip members (1 MiB chunks).
    let ws = Workspace::builder("v1.36.0").binaries(3 << 20).build();
    let cold = ws.ok_stderr(&["controller", "--node", "1"]);
    assert!(cold.contains("compressing the binaries"), "{cold}");
    let first = sha256_file(&ws.path("out/controller-1.tar.gz"));
    fs::remove_dir_all(ws.path("out")).unwrap();

    let warm = ws.ok_stderr(&["controller", "--node", "1"]);
    assert!(
        !warm.contains("compressing the binaries"),
        "the cached part is reused: {warm}"
    );
    assert_eq!(sha256_file(&ws.path("out/controller-1.tar.gz")), first);

    // Other nodes reuse it too, and differ only in their own part.
    let all = ws.ok_stderr(&["controller", "--all"]);
    assert!(!all.contains("compressing the binaries"), "{all}");
    assert_ne!(sha256_file(&ws.path("out/controller-2.tar.gz")), first);

    // With the cache's segments gone, a cold build gives the same bytes again.
    fs::remove_dir_all(ws.path("cache/segments")).unwrap();
    ws.ok(&["controller", "--node", "1", "--out", "again"]);
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
    let rebuilt = ws.ok_stderr(&["controller", "--node", "1", "--out", "third"]);
    assert!(rebuilt.contains("compressing the binaries"), "{rebuilt}");
    assert_eq!(sha256_file(&ws.path("third/controller-1.tar.gz")), first);

    // GNU gzip sees valid concatenated members; GNU tar extracts the binaries intact.
    let archive = ws.path("out/controller-1.tar.gz");
    sh(Command::new("gzip").arg("-t").arg(&archive));
    let root = ws.path("x");
    fs::create_dir(&root).unwrap();
    untar(&archive, &root);
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

fn ino_mtime(p: &Path) -> (u64, i64, i64) {
    let m = fs::metadata(p).unwrap();
    (m.ino(), m.mtime(), m.mtime_nsec())
}

fn gnu_extract(archives: &[PathBuf], root: &Path) {
    fs::create_dir_all(root).unwrap();
    for a in archives {
        untar(a, root);
    }
}

/// tar.gz `--split`: the shared half (binaries) plus a node's half are, end to
/// end, exactly that node's whole archive; GNU tar extracts the pair to the
/// same tree; a warm build rewrites nothing large; a changed copy is replaced.
#[test]
fn split_tar_gz_halves_concatenate_to_the_whole_archive() {
    let ws = Workspace::builder("v1.36.0").binaries(3 << 20).build();
    ws.ok(&["controller", "--all"]);
    ws.ok(&["controller", "--all", "--split", "--out", "split"]);
    let shared = ws.path("split/controller-shared-v1.36.0-amd64.tar.gz");
    let node = |n: u32| ws.path(&format!("split/controller-{n}-node.tar.gz"));
    assert_eq!(mode_of(&shared), 0o644, "binaries only: no secret inside");
    for n in 1..=3 {
        assert_eq!(mode_of(&node(n)), 0o600, "holds private keys");
        let mut joined = fs::read(&shared).unwrap();
        joined.extend(fs::read(node(n)).unwrap());
        assert_eq!(
            support::sha256_bytes(&joined),
            sha256_file(&ws.path(&format!("out/controller-{n}.tar.gz"))),
            "node {n}: shared + node is the whole archive"
        );
        sh(Command::new("gzip").arg("-t").arg(node(n)));
    }
    sh(Command::new("gzip").arg("-t").arg(&shared));

    // GNU tar: the pair extracts to the tree the whole archive gives.
    gnu_extract(&[ws.path("out/controller-2.tar.gz")], &ws.path("whole"));
    gnu_extract(&[shared.clone(), node(2)], &ws.path("pair"));
    assert_eq!(
        tree_listing(&ws.path("pair")),
        tree_listing(&ws.path("whole"))
    );
    sh(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(ws.path("pair"))
        .arg(ws.path("whole")));
    // The node half alone is a valid archive without the binaries.
    let listed = sh(Command::new("tar").arg("-tzf").arg(node(2)));
    assert!(
        listed.contains("etc/systemd/system/kube-apiserver.service"),
        "{listed}"
    );
    assert!(!listed.contains("usr/local/bin/kube-apiserver"), "{listed}");
    // The shared half lists the binaries (GNU tar accepts its missing end blocks).
    let listed = sh(Command::new("tar").arg("-tzf").arg(&shared));
    assert!(listed.contains("usr/local/bin/kube-apiserver"), "{listed}");
    assert!(!listed.contains("etc/"), "{listed}");
    // So does busybox tar (what an initramfs or rescue shell has).
    let listed = sh(Command::new("busybox").args(["tar", "-tzf"]).arg(&shared));
    assert!(listed.contains("usr/local/bin/kube-apiserver"), "{listed}");

    // inspect --verify takes the pair; the node half alone lacks the binaries.
    ws.ok(&[
        "inspect",
        "--verify",
        "split/controller-shared-v1.36.0-amd64.tar.gz",
        "split/controller-2-node.tar.gz",
    ]);
    let err = ws.fails(
        &["inspect", "--verify", "split/controller-2-node.tar.gz"],
        4,
    );
    assert!(
        err.contains("/usr/local/bin/kube-apiserver: in the manifest, missing"),
        "{err}"
    );
    let sums = fs::read_to_string(ws.path("split/SHA256SUMS")).unwrap();
    for (name, p) in [
        ("controller-shared-v1.36.0-amd64.tar.gz", shared.clone()),
        ("controller-3-node.tar.gz", node(3)),
    ] {
        assert!(
            sums.contains(&format!("{}  {name}\n", sha256_file(&p))),
            "{sums}"
        );
    }

    // The consumer of SHA256SUMS agrees with it.
    sh(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(ws.path("split")));

    // Warm, after a configuration change: the shared file stays as it is (same
    // inode, same mtime), only the node's half is new, and the pair is still
    // the whole archive of the new configuration.
    let before = ino_mtime(&shared);
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    let changed = inv.replace("30000-32767", "30000-32000");
    assert_ne!(inv, changed);
    fs::write(ws.path("cluster.toml"), changed).unwrap();
    let warm = ws.ok_stderr(&["controller", "--node", "1", "--split", "--out", "split"]);
    assert!(warm.contains("unchanged since the last build"), "{warm}");
    assert!(!warm.contains("compressing the binaries"), "{warm}");
    assert_eq!(
        ino_mtime(&shared),
        before,
        "the shared file was not rewritten"
    );
    ws.ok(&["controller", "--node", "1", "--out", "whole2"]);
    let mut joined = fs::read(&shared).unwrap();
    joined.extend(fs::read(node(1)).unwrap());
    assert_eq!(
        support::sha256_bytes(&joined),
        sha256_file(&ws.path("whole2/controller-1.tar.gz"))
    );
    let good = sha256_file(&shared);

    // A shared file changed in place (same size) is noticed and written again.
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&shared).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::OpenOptions::new()
        .write(true)
        .open(&shared)
        .unwrap()
        .write_all(&bytes)
        .unwrap();
    assert_ne!(sha256_file(&shared), good);
    let again = ws.ok_stderr(&["controller", "--node", "1", "--split", "--out", "split"]);
    assert!(!again.contains("unchanged since the last build"), "{again}");
    assert_eq!(sha256_file(&shared), good);

    // So is one put in its place.
    fs::write(ws.path("other"), &bytes).unwrap();
    fs::rename(ws.path("other"), &shared).unwrap();
    ws.ok(&["controller", "--node", "1", "--split", "--out", "split"]);
    assert_eq!(sha256_file(&shared), good);
    assert_eq!(mode_of(&shared), 0o644);
}

/// A cached segment changed in place without changing its size is found by its
/// stamp, hashed, dropped and rebuilt: it never reaches an output.
#[test]
fn a_segment_changed_in_place_is_rebuilt() {
    let ws = Workspace::builder("v1.36.0").binaries(1 << 20).build();
    ws.ok(&["controller", "--node", "1"]);
    let good = sha256_file(&ws.path("out/controller-1.tar.gz"));
    let seg = fs::read_dir(ws.path("cache/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .unwrap();
    fs::set_permissions(&seg, fs::Permissions::from_mode(0o644)).unwrap();
    let mut bytes = fs::read(&seg).unwrap();
    bytes[100] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let err = ws.ok_stderr(&["controller", "--node", "1", "--out", "again"]);
    assert!(err.contains("compressing the binaries"), "{err}");
    assert_eq!(sha256_file(&ws.path("again/controller-1.tar.gz")), good);
    // And `cache verify` checks segments too.
    let mut bytes = fs::read(&seg).unwrap();
    fs::set_permissions(&seg, fs::Permissions::from_mode(0o644)).unwrap();
    bytes[100] ^= 1;
    fs::write(&seg, &bytes).unwrap();
    let out = ws.run(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(4));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("removed segments/"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the next build makes them again"),
        "{stderr}"
    );
    assert!(!seg.exists());
    // A clean cache verifies, segments included.
    ws.ok(&["controller", "--node", "1", "--out", "third"]);
    let stdout = ws.ok(&["cache", "verify"]);
    assert!(stdout.contains("; 0 removed"), "{stdout}");

    // gc keeps whole segments, removes a segment that lost its record, and
    // with --unused every segment (derived data; builds make them again).
    let segments = |ws: &Workspace| fs::read_dir(ws.path("cache/segments")).unwrap().count();
    assert_eq!(segments(&ws), 2);
    ws.ok(&["cache", "gc"]);
    assert_eq!(segments(&ws), 2);
    ws.ok(&[
        "controller",
        "--node",
        "1",
        "--split",
        "--format",
        "cpio",
        "--out",
        "c",
    ]);
    assert_eq!(segments(&ws), 4);
    let mut record = seg.clone().into_os_string();
    record.push(".json");
    fs::remove_file(record).unwrap();
    let stdout = ws.ok(&["cache", "gc"]);
    assert!(stdout.contains("segments/"), "{stdout}");
    assert_eq!(segments(&ws), 2);
    ws.ok(&["cache", "gc", "--unused"]);
    assert_eq!(segments(&ws), 0);
    ws.ok(&["controller", "--node", "1", "--out", "fourth"]);
    assert_eq!(sha256_file(&ws.path("fourth/controller-1.tar.gz")), good);
    // `cache ls` keeps its one line per artifact on stdout and says what
    // segments take on stderr.
    let out = ws.run(&["cache", "ls"]);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success());
    // The server tarball and etcd's.
    assert_eq!(stdout.lines().count(), 2, "{stdout}");
    assert!(stderr.contains("1 derived segment(s)"), "{stderr}");
}

/// `--split` on the cache's filesystem: the shared half is the cached
/// segment itself (a hard link, mode 0644), placed again in an empty folder
/// without being written. On another filesystem, or from a segment another
/// user owns, it is a copy. Each time `sha256sum -c` holds.
#[test]
fn split_shared_half_is_the_segment_linked_where_it_can_be() {
    let ws = Workspace::builder("v1.36.0").binaries(1 << 20).build();
    let split = |out: &str| {
        let stderr = ws.ok_stderr(&["controller", "--node", "1", "--split", "--out", out]);
        let dir = if Path::new(out).is_absolute() {
            PathBuf::from(out)
        } else {
            ws.path(out)
        };
        sh(Command::new("sha256sum")
            .arg("-c")
            .arg("SHA256SUMS")
            .current_dir(&dir));
        (dir.join("controller-shared-v1.36.0-amd64.tar.gz"), stderr)
    };
    let (a, cold) = split("a");
    assert!(cold.contains("compressing the binaries"), "{cold}");
    let seg = fs::read_dir(ws.path("cache/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_none())
        .unwrap();
    let id = |p: &Path| {
        let m = fs::metadata(p).unwrap();
        (m.dev(), m.ino(), m.nlink())
    };
    assert_eq!(id(&a), id(&seg), "the shared half is the segment");
    assert_eq!(id(&a).2, 2);
    assert_eq!(mode_of(&a), 0o644);

    // Into an empty folder again, and into another: linked, nothing compressed.
    fs::remove_dir_all(ws.path("a")).unwrap();
    let (a, warm) = split("a");
    assert!(!warm.contains("compressing the binaries"), "{warm}");
    let (b, _) = split("b");
    assert_eq!(id(&a), id(&seg));
    assert_eq!(id(&b), id(&seg));
    assert_eq!(id(&seg).2, 3);
    let bytes = fs::read(&seg).unwrap();

    // Another filesystem (tmpfs): a copy, made while the segment is made
    // on a cold build, copied from the cache on a warm one.
    let shm = tempfile::tempdir_in("/dev/shm").expect("/dev/shm (tmpfs) for another filesystem");
    assert_ne!(fs::metadata(shm.path()).unwrap().dev(), id(&seg).0);
    for (out, cold) in [("cold", true), ("warm", false)] {
        if cold {
            fs::remove_dir_all(ws.path("cache/segments")).unwrap();
        }
        let dir = shm.path().join(out);
        let (c, stderr) = split(dir.to_str().unwrap());
        assert_eq!(
            stderr.contains("compressing the binaries"),
            cold,
            "{stderr}"
        );
        assert_eq!(id(&c).2, 1, "{out}: a copy");
        assert!(fs::read(&c).unwrap() == bytes, "{out}");
        assert_eq!(mode_of(&c), 0o644);
    }

    // A segment another user owns is copied, not linked: that user could
    // change the output through it.
    if is_root() {
        let seg = fs::read_dir(ws.path("cache/segments"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_none())
            .unwrap();
        std::os::unix::fs::chown(&seg, Some(65534), None).unwrap();
        let (d, _) = split("d");
        assert_ne!(id(&d).1, id(&seg).1);
        assert!(fs::read(&d).unwrap() == bytes);
    }
}

fn is_root() -> bool {
    fs::metadata("/proc/self").unwrap().uid() == 0
}

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}
