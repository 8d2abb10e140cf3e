//! What a build leaves in its output folder when things go wrong around it:
//! a tree built as another user than root (and how it reaches a root with
//! root as owner), builds running at once into one `out/`, a node of `--all`
//! that fails, a rebuild racing a reader, an old folder that cannot be
//! removed, a full disk, and Ctrl-C in the middle of a build.

mod support;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::hostile::assert_refused;
use support::{Workspace, files_under, sh, sha256_file, text, wrapped};

const V: &str = "v1.10.2";

// ---------------------------------------------------------------- helpers

/// `sha256sum -c SHA256SUMS` in `dir` passes; the lines, by name.
fn sums_check(dir: &Path) -> Vec<(String, String)> {
    let out = Command::new("sha256sum")
        .args(["-c", "--strict", "SHA256SUMS"])
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "sha256sum -c: {}", text(&out));
    fs::read_to_string(dir.join("SHA256SUMS"))
        .unwrap()
        .lines()
        .map(|l| {
            let (h, n) = l.split_once("  ").unwrap();
            (n.to_string(), h.to_string())
        })
        .collect()
}

/// A tmpfs mounted at `path` for the life of the value (root only).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (with the reason) when this machine does not let us mount;
    /// CI runs as root, where that is a failure.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .unwrap();
        if out.status.success() {
            return Some(Tmpfs(path.to_path_buf()));
        }
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to mount a tmpfs: {}",
            text(&out)
        );
        eprintln!(
            "skipped: cannot mount a tmpfs here (not root?): {}",
            text(&out)
        );
        None
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Temp files and folders (hidden names) left in `dir`.
fn temps(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.'))
                .collect()
        })
        .unwrap_or_default()
}

// ---------------------------------------------------------------- --format dir as another user

/// Built as uid 65534, the tree is 65534's: the build says so and prints the
/// command that copies it with root as owner. That command, run as root into
/// a folder standing for a mounted image, gives exactly the manifest's tree
/// (inspect --verify checks owner, mode, type and sha256 of every entry) and
/// leaves the image's own root folder as it was; `cp -a` would not.
#[test]
fn dir_built_as_another_user_says_how_to_copy_it_as_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("skipped: needs root (to build as uid 65534 and copy as root)");
        return;
    }
    let ws = Workspace::new(V);
    // From here on the workspace (cache, PKI, ledger) is uid 65534's.
    sh(Command::new("chown")
        .arg("-R")
        .arg("65534:65534")
        .arg(ws.dir()));
    let mut build = ws.cmd();
    build.args(["controller", "--node", "1", "--format", "dir"]);
    let out = wrapped(
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
        ],
        &build,
    )
    .output()
    .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("was built as uid 65534, not root"), "{said}");
    assert!(said.contains("Do not `cp -a` it"), "{said}");
    let tree = ws.path("out/controller-1");
    assert_eq!(fs::metadata(tree.join("etc")).unwrap().uid(), 65534);

    // inspect reads the folder and finds the owner is not the manifest's.
    let verify = ws.run(&["inspect", "--verify", "out/controller-1"]);
    let stderr = String::from_utf8_lossy(&verify.stderr);
    assert_eq!(verify.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains(
            "/var/lib/kubernetes/ca-key.pem: owner is 65534:65534, the manifest says 0:0"
        ),
        "{stderr}"
    );

    // The printed command, as root (`sudo` is root's own shell here).
    let line = said
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("sudo tar -C out/controller-1 "))
        .unwrap_or_else(|| panic!("no copy command in:\n{said}"));
    let image = ws.path("image");
    fs::create_dir(&image).unwrap();
    fs::set_permissions(&image, fs::Permissions::from_mode(0o750)).unwrap();
    sh(Command::new("chown").arg("1234:1234").arg(&image));
    let script = format!(
        "sudo() {{ \"$@\"; }}; set -e -o pipefail 2>/dev/null || set -e; {}",
        line.replace("/mnt", &image.display().to_string())
    );
    sh(Command::new("bash")
        .args(["-c", &script])
        .current_dir(ws.dir()));
    let root = fs::metadata(&image).unwrap();
    assert_eq!(
        (root.uid(), root.gid()),
        (1234, 1234),
        "the image's root changed owner"
    );
    assert_eq!(
        root.permissions().mode() & 0o7777,
        0o750,
        "the image's root changed mode"
    );
    let image_arg = image.display().to_string();
    let verified = ws.ok_stderr(&[
        "inspect",
        "--verify",
        &image_arg,
        "--manifest",
        "out/controller-1.manifest.json",
    ]);
    assert!(verified.contains("verified:"), "{verified}");

    // What the README said before: `cp -a tree/. /mnt/` hands the image's
    // root and every file to uid 65534.
    let copied = ws.path("image-cp");
    fs::create_dir(&copied).unwrap();
    sh(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", tree.display()))
        .arg(&copied));
    assert_eq!(fs::metadata(&copied).unwrap().uid(), 65534);
}

/// inspect --verify of a folder finds a changed mode, byte, link and an
/// extra file, as it does in an archive.
#[test]
fn inspect_verify_checks_a_dir_folder() {
    let ws = Workspace::new(V);
    ws.ok(&["controller", "--node", "1", "--format", "dir"]);
    let ok = ws.ok_stderr(&["inspect", "--verify", "out/controller-1"]);
    assert!(ok.contains("verified:"), "{ok}");
    let tree = ws.path("out/controller-1");
    fs::set_permissions(
        tree.join("var/lib/kubernetes/ca-key.pem"),
        fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    fs::write(tree.join("etc/systemd/system/kube-scheduler.service"), "x").unwrap();
    fs::write(tree.join("etc/extra"), "x").unwrap();
    let wants = tree.join("etc/systemd/system/multi-user.target.wants/kube-scheduler.service");
    fs::remove_file(&wants).unwrap();
    std::os::unix::fs::symlink("/bin/sh", &wants).unwrap();
    let stderr = ws.fails(&["inspect", "--verify", "out/controller-1"], 4);
    for want in [
        "/var/lib/kubernetes/ca-key.pem: mode is 0644, the manifest says 0600",
        "/etc/systemd/system/kube-scheduler.service: sha256 is",
        "/etc/extra: in the output, not in the manifest",
        "kube-scheduler.service: link target is /bin/sh",
    ] {
        assert!(stderr.contains(want), "{want} not in:\n{stderr}");
    }
}

// ---------------------------------------------------------------- out/ bookkeeping

/// Six builds at once into one out/ (three nodes, two formats each): every
/// line is in SHA256SUMS and every format in each node's manifest.
#[test]
fn concurrent_builds_into_one_out_keep_every_line() {
    let ws = Workspace::new(V);
    for round in 0..3 {
        let _ = fs::remove_dir_all(ws.path("out"));
        let children: Vec<_> = (1..=3)
            .flat_map(|n| {
                ["tar.gz", "cpio"]
                    .map(|f| ws.spawn(&["controller", "--node", &n.to_string(), "--format", f]))
            })
            .collect();
        for c in children {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success(), "round {round}: {}", text(&out));
        }
        let lines = sums_check(&ws.path("out"));
        let names: Vec<&str> = lines.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "controller-1.cpio",
                "controller-1.tar.gz",
                "controller-2.cpio",
                "controller-2.tar.gz",
                "controller-3.cpio",
                "controller-3.tar.gz"
            ],
            "round {round}"
        );
        for n in 1..=3 {
            let m: serde_json::Value = serde_json::from_slice(
                &fs::read(ws.path(&format!("out/controller-{n}.manifest.json"))).unwrap(),
            )
            .unwrap();
            assert_eq!(
                m["outputs"].as_array().unwrap().len(),
                2,
                "round {round}: {m}"
            );
        }
    }
}

/// When a node of `--all` fails, SHA256SUMS still holds true lines: the
/// nodes written before it get theirs, a file the failed node replaced is no
/// longer listed with its old digest, and `sha256sum -c` passes.
#[test]
fn a_node_that_fails_leaves_sha256sums_true() {
    let ws = Workspace::new(V);
    ws.ok_with_env(&[("SOURCE_DATE_EPOCH", "1000")], &["controller", "--all"]);
    assert_eq!(sums_check(&ws.path("out")).len(), 3);
    // Node 2's manifest cannot be replaced (a folder holding a file is in its
    // place): node 2 fails after its archive is written.
    let manifest = ws.path("out/controller-2.manifest.json");
    fs::remove_file(&manifest).unwrap();
    fs::create_dir_all(manifest.join("x")).unwrap();
    let stderr = {
        let out = ws.run_with_env(&[("SOURCE_DATE_EPOCH", "2000")], &["controller", "--all"]);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(6), "{stderr}");
        stderr
    };
    assert!(stderr.contains("controller-2.manifest.json"), "{stderr}");
    let lines = sums_check(&ws.path("out"));
    let digest = |n: &str| {
        lines
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, h)| h.clone())
    };
    // Node 1 was rebuilt (another epoch, other bytes) and its line follows.
    assert_eq!(
        digest("controller-1.tar.gz"),
        Some(sha256_file(&ws.path("out/controller-1.tar.gz")))
    );
    // Node 2's archive was replaced but has no manifest: not listed.
    assert_eq!(digest("controller-2.tar.gz"), None, "{lines:?}");
    // Node 3 was not rebuilt: its line stays, still true.
    assert!(digest("controller-3.tar.gz").is_some(), "{lines:?}");

    // Node 1 failing on a cold build, where every node's archive is begun
    // while the binaries compress: those of nodes 2 and 3, never finished,
    // leave no temp file.
    fs::remove_dir_all(ws.path("cache/segments")).unwrap();
    let manifest = ws.path("out/controller-1.manifest.json");
    fs::remove_file(&manifest).unwrap();
    fs::create_dir_all(manifest.join("x")).unwrap();
    let out = ws.run_with_env(&[("SOURCE_DATE_EPOCH", "3000")], &["controller", "--all"]);
    assert_eq!(out.status.code(), Some(6), "{}", text(&out));
    assert!(
        text(&out).contains("controller-1.manifest.json"),
        "{}",
        text(&out)
    );
    assert_eq!(temps(&ws.path("out")), Vec::<String>::new());
    sums_check(&ws.path("out"));
}

// ---------------------------------------------------------------- folders swapped in

/// A folder being rebuilt is never missing, not even for a moment: a reader
/// polling it all along always finds it whole.
#[test]
fn a_rebuilt_folder_is_never_missing() {
    let ws = Workspace::new(V);
    ws.ok(&["controller", "--node", "1", "--format", "dir"]);
    ws.ok(&["cloud-init", "--node", "1"]);
    let watched = [
        ws.path("out/controller-1/etc/systemd/system/kube-apiserver.service"),
        ws.path("out/controller-1-cloud-init/user-data"),
    ];
    let stop = AtomicBool::new(false);
    let missing = AtomicUsize::new(0);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                for p in &watched {
                    if !p.exists() {
                        missing.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
        for _ in 0..4 {
            ws.ok(&["controller", "--node", "1", "--format", "dir"]);
            ws.ok(&["cloud-init", "--node", "1"]);
        }
        stop.store(true, Ordering::Relaxed);
    });
    assert_eq!(
        missing.load(Ordering::Relaxed),
        0,
        "a folder was missing while rebuilt"
    );
    assert_eq!(temps(&ws.path("out")), Vec::<String>::new());
}

/// The old folder cannot be removed (a mount inside it): the new folder is
/// in place, so the build succeeds with a warning naming what is left, and
/// the manifest lists the new files. Before, it failed after the swap and
/// wrote no manifest.
#[test]
fn an_old_folder_that_cannot_be_removed_is_a_warning_after_a_complete_build() {
    let ws = Workspace::new(V);
    for (args, folder) in [
        (
            &["cloud-init", "--node", "1"][..],
            "out/controller-1-cloud-init",
        ),
        (
            &["controller", "--node", "1", "--format", "dir"][..],
            "out/controller-1",
        ),
    ] {
        ws.ok(args);
        let Some(mount) = Tmpfs::mount(&ws.path(&format!("{folder}/pinned")), "64k") else {
            return;
        };
        let out = ws.run_with_env(&[("SOURCE_DATE_EPOCH", "5000")], args);
        let said = text(&out);
        assert!(out.status.success(), "{said}");
        assert!(said.contains("cannot remove the previous folder"), "{said}");
        assert!(said.contains("is in place, but"), "{said}");
        assert!(!ws.path(&format!("{folder}/pinned")).exists());
        let verified = ws.ok_stderr(&["inspect", "--verify", folder]);
        assert!(verified.contains("verified:"), "{verified}");
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(ws.path("out/controller-1.manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["mtime"], 5000, "the manifest is the new build's");
        drop(mount);
    }
}

// ---------------------------------------------------------------- ENOSPC

/// Every format into a full filesystem: exit 6 naming the path and the
/// cause, nothing partial left in the folder, nothing in the cache's tmp.
#[test]
fn a_full_disk_leaves_nothing_partial() {
    let ws = Workspace::new(V);
    let Some(_mount) = Tmpfs::mount(&ws.path("small"), "160k") else {
        return;
    };
    for args in [
        &["controller", "--node", "1"][..],
        &["controller", "--node", "1", "--split"],
        &["controller", "--node", "1", "--format", "dir"],
        &["controller", "--node", "1", "--format", "cpio"],
        &["controller", "--node", "1", "--format", "cpio.gz"],
        &["cloud-init", "--node", "1", "--binaries", "seed"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--out", "small"]);
        let out = ws.run(&args);
        let stderr = assert_refused(&ws, &out, 6, &["No space left on device"]);
        assert!(
            stderr.contains(&ws.path("small").display().to_string()) || stderr.contains("small/"),
            "{args:?}: the path is not named:\n{stderr}"
        );
        assert_eq!(
            files_under(&ws.path("small")),
            Vec::<String>::new(),
            "{args:?}"
        );
    }
}

// ---------------------------------------------------------------- fsync

/// Under strace: every output file is synced under its temp name before it
/// is renamed to its name, and its folder is synced after the rename (so a
/// crash right after the build leaves the old file or the new one). A split's
/// shared half linked to the cached segment (synced when it was stored) is
/// renamed into place and its folder synced the same way.
#[test]
fn outputs_are_synced_before_and_after_their_rename() {
    if Command::new("strace").arg("-V").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "scripts/test installs strace"
        );
        eprintln!("skipped: strace is not installed");
        return;
    }
    let ws = Workspace::new(V);
    let traced = |args: &[&str], log: &str| -> Vec<String> {
        let mut build = ws.cmd();
        build.args(args);
        let log = ws.path(log);
        let log_arg = log.display().to_string();
        let run = wrapped(
            &[
                "strace",
                "-f",
                "-y",
                "-e",
                "trace=fsync,fdatasync,rename,renameat,renameat2",
                "-o",
                &log_arg,
            ],
            &build,
        )
        .output()
        .unwrap();
        assert!(run.status.success(), "{}", text(&run));
        fs::read_to_string(&log)
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    // Where `name` (in `out`) was renamed into place, after its folder was synced.
    let placed = |lines: &[String], out: &str, name: &str| -> usize {
        let temp = format!("{out}/.{name}.");
        let renamed = lines
            .iter()
            .position(|l| {
                l.contains("rename")
                    && l.contains(&temp)
                    && l.trim_end().ends_with(&format!("/{name}\") = 0"))
            })
            .unwrap_or_else(|| panic!("{name}: no rename in:\n{}", lines.join("\n")));
        let dir_synced = lines
            .iter()
            .skip(renamed)
            .any(|l| l.contains("fsync(") && l.contains(&format!("<{out}>)")));
        assert!(
            dir_synced,
            "{name}: the folder is not synced after the rename"
        );
        renamed
    };
    let lines = traced(&["controller", "--node", "1"], "strace.log");
    let out = ws.path("out").canonicalize().unwrap().display().to_string();
    for name in [
        "controller-1.tar.gz",
        "controller-1.manifest.json",
        "SHA256SUMS",
    ] {
        let temp = format!("{out}/.{name}.");
        let synced = lines
            .iter()
            .position(|l| l.contains("fsync(") && l.contains(&temp))
            .unwrap_or_else(|| panic!("{name}: no fsync of the temp file"));
        assert!(
            synced < placed(&lines, &out, name),
            "{name}: renamed before it was synced"
        );
    }
    let lines = traced(
        &["controller", "--node", "1", "--split", "--out", "split"],
        "split.log",
    );
    let out = ws
        .path("split")
        .canonicalize()
        .unwrap()
        .display()
        .to_string();
    placed(&lines, &out, &format!("controller-shared-{V}-amd64.tar.gz"));
    placed(&lines, &out, "controller-1-node.tar.gz");
}

// ---------------------------------------------------------------- SIGINT

/// Start `args`, wait until `started` sees it writing, send SIGINT: exit
/// 130, and no temp file left in `out/` nor in the cache's tmp.
fn interrupt(ws: &Workspace, args: &[&str], started: impl Fn() -> bool) {
    let mut child = ws.spawn(args);
    let t0 = Instant::now();
    while !started() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{args:?} ended ({status}) before it could be interrupted");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "{args:?} never started writing"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert_eq!(out.status.code(), Some(130), "{args:?}: {said}");
    assert!(said.contains("interrupted (SIGINT)"), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert_eq!(temps(&ws.path("out")), Vec::<String>::new(), "{args:?}");
    ws.assert_cache_clean(false);
}

#[test]
fn sigint_in_the_middle_of_a_build_leaves_no_temp_file() {
    // Large stand-ins: compressing and writing them takes seconds.
    let ws = Workspace::builder(V).binaries(48 << 20).build();
    let cache_tmp = ws.path("cache/tmp");
    let out = ws.path("out");
    // While the binaries' segment is compressed into the cache's tmp.
    interrupt(&ws, &["controller", "--node", "1"], || {
        !temps(&cache_tmp).is_empty()
    });
    // While an archive is written into out/.
    interrupt(
        &ws,
        &["controller", "--node", "1", "--format", "cpio"],
        || !temps(&out).is_empty(),
    );
    // While a tree is filled beside its place.
    interrupt(
        &ws,
        &["controller", "--node", "1", "--format", "dir"],
        || {
            temps(&out)
                .iter()
                .any(|t| ws.path("out").join(t).join("usr/local/bin").exists())
        },
    );
}
