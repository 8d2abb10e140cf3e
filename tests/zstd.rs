//! zstd outputs (`--compression zstd`, `tar.zst`, `cpio.zst`) checked by their
//! real consumers: GNU tar (`--zstd`, and `zstd -d | tar -x`), `zstd -d |
//! cpio -idm`, `zstd -t` on every frame and on every file, `sha256sum -c`;
//! split halves that concatenate to the whole archive; the cached shared part
//! (the level in its key); the same bytes for any thread count, umask, clock
//! and folder; `inspect --verify`; and the kernel's rule that a frame ends at
//! a cpio entry. The kernel itself unpacks them in tests/initramfs_boot.rs.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use imgbuild::codec::zstd;
use support::{Workspace, sh, sha256_file, tree_listing, wrapped};

fn mode_of(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `imgbuild controller --node NODE --out OUT ARGS...`; its stderr (progress).
fn build(ws: &Workspace, node: &str, out: &str, args: &[&str]) -> String {
    let mut all = vec!["controller", "--node", node, "--out", out];
    all.extend(args);
    ws.ok_stderr(&all)
}

/// The same tree, files byte for byte (GNU diff) and modes and owners.
fn same_tree(a: &Path, b: &Path) {
    assert_eq!(tree_listing(a), tree_listing(b), "{a:?} vs {b:?}");
    sh(Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(a)
        .arg(b));
}

/// The frames of a file, each cut out on its own and tested by `zstd -t`
/// (checksums included: imgbuild writes them), then each decompressed.
fn frames(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    let sizes = zstd::frame_sizes(&bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut at = 0;
    let mut out = Vec::new();
    for (i, n) in sizes.into_iter().enumerate() {
        let frame = &bytes[at..at + n];
        at += n;
        // Frame header descriptor: the content checksum flag.
        assert_eq!(frame[..4], zstd::MAGIC, "{path:?} frame {i}");
        assert_ne!(frame[4] & 0b100, 0, "{path:?} frame {i} has no checksum");
        let one = dir.path().join(format!("frame-{i}.zst"));
        fs::write(&one, frame).unwrap();
        sh(Command::new("zstd").args(["-q", "-t"]).arg(&one));
        out.push(sh_bytes(
            Command::new("zstd").args(["-q", "-d", "-c"]).arg(&one),
        ));
    }
    sh(Command::new("zstd").args(["-q", "-t"]).arg(path));
    out
}

fn sh_bytes(cmd: &mut Command) -> Vec<u8> {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// tar.zst whole and split: the pair is the whole archive byte for byte, GNU
/// tar extracts both to the `--format dir` tree (with `--zstd`, and through
/// `zstd -d`), every frame passes `zstd -t`, `inspect --verify` and
/// `sha256sum -c` agree, and the shared part comes from the cache, keyed by
/// the level.
#[test]
fn tar_zst_whole_and_split_extract_to_the_tree() {
    // 3 MiB stand-ins: each binary a frame of its own.
    let ws = Workspace::builder("v1.36.0").binaries(3 << 20).build();
    let cold = ws.ok_stderr(&["controller", "--all", "--compression", "zstd"]);
    assert!(cold.contains("compressing the binaries"), "{cold}");
    let stdout = ws.ok(&[
        "controller",
        "--all",
        "--format",
        "tar.zst",
        "--split",
        "--out",
        "split",
    ]);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "split/controller-shared-v1.36.0-amd64.tar.zst",
            "split/controller-1-node.tar.zst",
            "split/controller-2-node.tar.zst",
            "split/controller-3-node.tar.zst"
        ]
    );
    ws.ok(&["controller", "--all", "--format", "dir", "--out", "trees"]);
    let shared = ws.path("split/controller-shared-v1.36.0-amd64.tar.zst");
    assert_eq!(mode_of(&shared), 0o644, "binaries only: no secret inside");
    let shared_frames = frames(&shared);
    // Seven binaries (Kubernetes' four, etcd's three), and the folders before them.
    assert_eq!(shared_frames.len(), 8, "{} frames", shared_frames.len());
    for n in 1..=3 {
        let whole = ws.path(&format!("out/controller-{n}.tar.zst"));
        let node = ws.path(&format!("split/controller-{n}-node.tar.zst"));
        assert_eq!(mode_of(&whole), 0o600, "holds private keys");
        assert_eq!(mode_of(&node), 0o600, "holds private keys");
        let pair = [fs::read(&shared).unwrap(), fs::read(&node).unwrap()].concat();
        assert!(
            pair == fs::read(&whole).unwrap(),
            "node {n}: shared + node is the whole archive"
        );
        // The node's half is one frame: its entries and the end blocks.
        assert_eq!(frames(&node).len(), 1);
        let whole_frames = frames(&whole);
        assert_eq!(
            whole_frames.concat(),
            [shared_frames.concat(), frames(&node).concat()].concat()
        );

        let tree = ws.path(&format!("trees/controller-{n}"));
        let x = ws.path(&format!("x{n}"));
        fs::create_dir(&x).unwrap();
        sh(Command::new("tar")
            .arg("--zstd")
            .arg("-xf")
            .arg(&whole)
            .arg("-C")
            .arg(&x));
        same_tree(&x, &tree);
        // The pair, shared half first, each through zstd -d.
        let y = ws.path(&format!("y{n}"));
        fs::create_dir(&y).unwrap();
        for half in [&shared, &node] {
            sh(Command::new("sh")
                .arg("-c")
                .arg("zstd -q -d -c \"$0\" | tar -x -C \"$1\"")
                .arg(half)
                .arg(&y));
        }
        same_tree(&y, &tree);
    }

    // The manifest records the format and level; inspect --verify takes the
    // whole archive and the pair; SHA256SUMS is what sha256sum reads.
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path("split/controller-2.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["format"], "tar.zst (zstd level 3, split)");
    ws.ok(&["inspect", "--verify", "out/controller-2.tar.zst"]);
    let listed = ws.ok(&[
        "inspect",
        "--verify",
        "split/controller-shared-v1.36.0-amd64.tar.zst",
        "split/controller-2-node.tar.zst",
    ]);
    assert!(listed.contains("/usr/local/bin/kube-apiserver"), "{listed}");
    for dir in ["out", "split"] {
        sh(Command::new("sha256sum")
            .args(["--check", "--strict", "SHA256SUMS"])
            .current_dir(ws.path(dir)));
    }

    // Warm: the shared part comes from the cache, and the bytes are the cold ones.
    let first = sha256_file(&ws.path("out/controller-1.tar.zst"));
    let warm = build(&ws, "1", "warm", &["--compression", "zstd"]);
    assert!(!warm.contains("compressing the binaries"), "{warm}");
    assert_eq!(sha256_file(&ws.path("warm/controller-1.tar.zst")), first);
    // Another level is another segment, and other bytes; the default's is still cached.
    let l1 = build(&ws, "1", "l1", &["--compression", "zstd:1"]);
    assert!(l1.contains("compressing the binaries"), "{l1}");
    assert_ne!(sha256_file(&ws.path("l1/controller-1.tar.zst")), first);
    ws.ok(&["inspect", "--verify", "l1/controller-1.tar.zst"]);
    let again = build(&ws, "1", "again", &["--format", "tar.zst"]);
    assert!(!again.contains("compressing the binaries"), "{again}");
    assert_eq!(sha256_file(&ws.path("again/controller-1.tar.zst")), first);
    // Without the cache, a cold build makes the same bytes.
    fs::remove_dir_all(ws.path("cache/segments")).unwrap();
    build(&ws, "1", "cold", &["--compression", "zstd"]);
    assert_eq!(sha256_file(&ws.path("cold/controller-1.tar.zst")), first);
}

/// cpio.zst: every frame starts with a newc header (the kernel accepts a new
/// frame only between entries), the frames decompress to the uncompressed
/// `--format cpio` archive byte for byte, GNU cpio extracts them to the
/// tree, and inspect --verify takes the whole file and the pair.
#[test]
fn cpio_zst_frames_end_at_entries_and_gnu_cpio_extracts_them() {
    let ws = Workspace::builder("v1.36.0").binaries(1 << 20).build();
    for split in [&[][..], &["--split"][..]] {
        build(&ws, "2", "plain", &[&["--format", "cpio"], split].concat());
        build(
            &ws,
            "2",
            "out",
            &[&["--format", "cpio", "--compression", "zstd"], split].concat(),
        );
    }
    build(&ws, "2", "trees", &["--format", "dir"]);
    let tree = ws.path("trees/controller-2");
    for (zst, plain, at_least) in [
        ("out/controller-2.cpio.zst", "plain/controller-2.cpio", 6),
        (
            "out/controller-shared-v1.36.0-amd64.cpio.zst",
            "plain/controller-shared-v1.36.0-amd64.cpio",
            6,
        ),
        (
            "out/controller-2-node.cpio.zst",
            "plain/controller-2-node.cpio",
            1,
        ),
    ] {
        let frames = frames(&ws.path(zst));
        assert!(frames.len() >= at_least, "{zst}: {} frames", frames.len());
        for (i, f) in frames.iter().enumerate() {
            assert!(
                f.starts_with(b"070701"),
                "{zst}: frame {i} starts mid-entry"
            );
        }
        assert!(
            frames.concat() == fs::read(ws.path(plain)).unwrap(),
            "{zst} decompresses to {plain}"
        );
    }
    assert_eq!(mode_of(&ws.path("out/controller-2.cpio.zst")), 0o600);

    // GNU cpio reads one archive at a time: the whole file, or each half.
    for (name, files) in [
        ("whole", vec!["out/controller-2.cpio.zst"]),
        (
            "pair",
            vec![
                "out/controller-shared-v1.36.0-amd64.cpio.zst",
                "out/controller-2-node.cpio.zst",
            ],
        ),
    ] {
        let dest = ws.path(name);
        fs::create_dir(&dest).unwrap();
        for f in files {
            sh(Command::new("sh")
                .arg("-c")
                .arg("zstd -q -d -c \"$0\" | cpio -idm --quiet --no-absolute-filenames")
                .arg(ws.path(f))
                .current_dir(&dest));
        }
        // cpio does not restore folder mtimes after filling them; compare the rest.
        same_tree(&dest, &tree);
    }

    ws.ok(&["inspect", "--verify", "out/controller-2.cpio.zst"]);
    ws.ok(&[
        "inspect",
        "--verify",
        "out/controller-shared-v1.36.0-amd64.cpio.zst",
        "out/controller-2-node.cpio.zst",
    ]);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path("out/controller-2.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["format"], "cpio.zst (zstd level 3, split)");
    // Both builds' files are in the manifest (whole and split share it).
    let names: Vec<&str> = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "controller-2-node.cpio.zst",
            "controller-2.cpio.zst",
            "controller-shared-v1.36.0-amd64.cpio.zst"
        ]
    );
}

/// Every zstd and gzip output is the same whatever the thread count (each
/// build cold: the shared part compressed anew), umask, time zone, working
/// folder and clock; SOURCE_DATE_EPOCH changes it.
#[test]
fn bytes_do_not_depend_on_threads_umask_or_clock() {
    let ws = Workspace::builder("v1.36.0").binaries(3 << 20).build();
    let builds: [&[&str]; 5] = [
        &["--compression", "zstd"],
        &["--compression", "zstd", "--split"],
        &["--format", "cpio.zst"],
        &["--format", "cpio.zst", "--split"],
        &["--format", "tar.gz"],
    ];
    let digests = |out: &str| -> Vec<(String, String)> {
        let root = ws.path(out);
        support::files_under(&root)
            .into_iter()
            .filter(|f| f != "SHA256SUMS" && !f.ends_with(".json"))
            .map(|f| {
                let d = sha256_file(&root.join(&f));
                (f, d)
            })
            .collect()
    };
    let build = |out: &str, env: &[(&str, &str)], through: Option<&[&str]>| {
        for args in builds {
            fs::remove_dir_all(ws.path("cache/segments")).ok();
            let mut all = vec!["controller", "--all", "--out"];
            let dest = ws.path(out).display().to_string();
            all.push(&dest);
            all.extend(args);
            match through {
                None => {
                    ws.ok_with_env(env, &all);
                }
                Some(prefix) => {
                    let mut cmd = ws.cmd();
                    let inventory = ws.path("cluster.toml");
                    cmd.args(&all).arg("--inventory").arg(inventory);
                    cmd.envs(env.iter().copied());
                    sh(&mut wrapped(prefix, &cmd));
                }
            }
        }
        digests(out)
    };
    let one = build("t1", &[("IMGBUILD_THREADS", "1")], None);
    // Whole and split builds share a folder: 3 + (1 + 3) files of each zstd format, 3 tar.gz.
    assert_eq!(one.len(), 2 * (3 + 1 + 3) + 3, "{one:?}");
    assert_eq!(build("t2", &[("IMGBUILD_THREADS", "2")], None), one);
    assert_eq!(build("t16", &[("IMGBUILD_THREADS", "16")], None), one);
    let elsewhere = build(
        "elsewhere",
        &[("TZ", "Asia/Tokyo")],
        Some(&["sh", "-c", "umask 077; cd / && exec \"$0\" \"$@\""]),
    );
    assert_eq!(elsewhere, one);
    let epoch = build("epoch", &[("SOURCE_DATE_EPOCH", "1700000000")], None);
    for ((name, a), (_, b)) in one.iter().zip(&epoch) {
        assert_ne!(a, b, "{name}: SOURCE_DATE_EPOCH changes the bytes");
    }
}

/// zstd outputs beside gzip ones and cloud-init (`--binaries seed`) in one
/// folder: one manifest per node lists every file with its format, and
/// SHA256SUMS, `inspect --verify` and the seed volume all check.
#[test]
fn manifests_sums_and_cloud_init_seed_beside_zstd_outputs() {
    let ws = Workspace::new("v1.36.0");
    ws.ok(&["controller", "--node", "1"]);
    ws.ok(&[
        "controller",
        "--node",
        "1",
        "--compression",
        "zstd:19",
        "--split",
    ]);
    ws.ok(&["controller", "--node", "1", "--format", "cpio.zst"]);
    ws.ok(&["cloud-init", "--node", "1", "--binaries", "seed"]);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path("out/controller-1.manifest.json")).unwrap())
            .unwrap();
    let outputs: Vec<(String, String)> = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["name"].as_str().unwrap().into(),
                o["format"].as_str().unwrap().into(),
            )
        })
        .collect();
    for (name, format) in [
        ("controller-1.tar.gz", "tar.gz"),
        (
            "controller-1-node.tar.zst",
            "tar.zst (zstd level 19, split)",
        ),
        (
            "controller-shared-v1.36.0-amd64.tar.zst",
            "tar.zst (zstd level 19, split)",
        ),
        ("controller-1.cpio.zst", "cpio.zst (zstd level 3)"),
    ] {
        assert!(
            outputs.contains(&(name.to_string(), format.to_string())),
            "{name} as {format} in {outputs:?}"
        );
        let sums = fs::read_to_string(ws.path("out/SHA256SUMS")).unwrap();
        assert!(
            sums.contains(&format!(
                "{}  {name}\n",
                sha256_file(&ws.path(&format!("out/{name}")))
            )),
            "{sums}"
        );
    }
    sh(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(ws.path("out")));
    for target in [
        vec!["out/controller-1.tar.gz"],
        vec!["out/controller-1.cpio.zst"],
        vec![
            "out/controller-shared-v1.36.0-amd64.tar.zst",
            "out/controller-1-node.tar.zst",
        ],
        vec!["out/controller-1-cloud-init"],
        vec![
            "out/controller-1-cloud-init/seed.img",
            "--manifest",
            "out/controller-1.manifest.json",
        ],
    ] {
        let mut args = vec!["inspect", "--verify"];
        args.extend(&target);
        ws.ok(&args);
    }
}

/// A damaged zstd archive (one flipped byte, caught by the frame checksum or
/// the frame's structure) or a truncated one is refused by inspect.
#[test]
fn damaged_zstd_archives_are_refused() {
    let ws = Workspace::builder("v1.36.0").binaries(1 << 20).build();
    ws.ok(&["controller", "--node", "1", "--format", "tar.zst"]);
    let good = fs::read(ws.path("out/controller-1.tar.zst")).unwrap();
    let mut flipped = good.clone();
    let mid = good.len() / 2;
    flipped[mid] ^= 0x01;
    fs::create_dir(ws.path("flipped")).unwrap();
    fs::write(ws.path("flipped/controller-1.tar.zst"), &flipped).unwrap();
    fs::copy(
        ws.path("out/controller-1.manifest.json"),
        ws.path("flipped/controller-1.manifest.json"),
    )
    .unwrap();
    let err = ws.fails(&["inspect", "--verify", "flipped/controller-1.tar.zst"], 2);
    assert!(err.contains("flipped/controller-1.tar.zst"), "{err}");
    fs::write(
        ws.path("flipped/controller-1.tar.zst"),
        &good[..good.len() - 7],
    )
    .unwrap();
    ws.fails(&["inspect", "--verify", "flipped/controller-1.tar.zst"], 2);
}

/// `--format` and `--compression` that contradict each other, an unknown
/// compression or level, and a compressed folder are refused before anything
/// is read; `--format cpio` alone is still the uncompressed archive.
#[test]
fn contradictory_or_unknown_compressions_are_refused() {
    let ws = Workspace::new("v1.36.0");
    for (args, says) in [
        (
            &["--format", "tar.gz", "--compression", "zstd"][..],
            "give --format tar",
        ),
        (
            &["--format", "cpio.zst", "--compression", "gzip"][..],
            "give --format cpio",
        ),
        (&["--compression", "zstd:0"][..], "a number from 1 to 19"),
        (&["--compression", "zstd:22"][..], "a number from 1 to 19"),
        (
            &["--compression", "xz"][..],
            "expected gzip, zstd, zstd:LEVEL",
        ),
        (
            &["--format", "dir", "--compression", "zstd"][..],
            "applies to tar and cpio",
        ),
    ] {
        let mut all = vec!["controller", "--node", "1"];
        all.extend(args);
        let err = ws.fails(&all, 2);
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert!(!ws.path("out").exists(), "nothing was written");
    let stdout = ws.ok(&["controller", "--node", "1", "--format", "cpio"]);
    assert_eq!(stdout.trim(), "out/controller-1.cpio");
    let stdout = ws.ok(&[
        "controller",
        "--node",
        "1",
        "--format",
        "tar",
        "--compression",
        "none",
    ]);
    assert_eq!(stdout.trim(), "out/controller-1.tar");
    ws.ok(&["inspect", "--verify", "out/controller-1.tar"]);
    sh(Command::new("tar")
        .arg("-tf")
        .arg(ws.path("out/controller-1.tar")));
}
