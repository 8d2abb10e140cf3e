//! `imgbuild controller --format cpio|cpio.gz [--split]`, `imgbuild cloud-init`
//! and `imgbuild inspect`, run as the real binary and checked by the real
//! consumers: GNU cpio, cloud-init's schema validator and YAML loader, mtools,
//! blkid; and against the build manifest.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use support::{Workspace, sh, sha256_file};

fn manifest(ws: &Workspace, node: usize) -> serde_json::Value {
    let p = ws.path(&format!("out/controller-{node}.manifest.json"));
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

fn mode_of(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// `ls -l` type+permission string of a manifest entry.
fn ls_mode(e: &serde_json::Value) -> String {
    let mut s = String::from(match e["type"].as_str().unwrap() {
        "dir" => "d",
        "file" => "-",
        _ => "l",
    });
    let mode = u32::from_str_radix(e["mode"].as_str().unwrap(), 8).unwrap();
    for shift in [6, 3, 0] {
        let b = (mode >> shift) & 7;
        s.push(if b & 4 != 0 { 'r' } else { '-' });
        s.push(if b & 2 != 0 { 'w' } else { '-' });
        s.push(if b & 1 != 0 { 'x' } else { '-' });
    }
    s
}

/// GNU cpio's `-itv` listing of a (possibly gzipped) archive: path → fields.
fn gnu_cpio_list(archive: &Path) -> BTreeMap<String, Vec<String>> {
    let bytes = fs::read(archive).unwrap();
    let plain = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(&bytes[..]), &mut out)
            .unwrap();
        out
    } else {
        bytes
    };
    let tmp = tempfile::NamedTempFile::new().unwrap();
    fs::write(tmp.path(), plain).unwrap();
    let out = sh(Command::new("cpio")
        .args(["-itv", "--quiet", "--numeric-uid-gid", "-F"])
        .arg(tmp.path()));
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<String> = line.split_whitespace().map(String::from).collect();
        let name = if f[0].starts_with('l') {
            f[f.len() - 3].clone()
        } else {
            f[f.len() - 1].clone()
        };
        map.insert(format!("/{name}"), f);
    }
    map
}

#[test]
fn cpio_gz_lists_with_gnu_cpio_verifies_and_is_reproducible() {
    let ws = Workspace::new("v1.10.2");
    ws.ok(&["controller", "--node", "1", "--format", "cpio.gz"]);
    let archive = ws.path("out/controller-1.cpio.gz");
    assert_eq!(mode_of(&archive), 0o600, "the archive holds private keys");
    let m = manifest(&ws, 1);
    assert_eq!(m["format"], "cpio.gz");
    assert_eq!(m["outputs"][0]["sha256"], sha256_file(&archive));
    let listing = gnu_cpio_list(&archive);
    let entries = m["entries"].as_array().unwrap();
    assert_eq!(listing.len(), entries.len());
    for e in entries {
        let path = e["path"].as_str().unwrap();
        let f = listing
            .get(path)
            .unwrap_or_else(|| panic!("{path} not in the archive"));
        assert_eq!(f[0], ls_mode(e), "{path}");
        assert_eq!(f[2], e["uid"].to_string(), "{path}");
        assert_eq!(f[3], e["gid"].to_string(), "{path}");
        if e["type"] == "file" {
            assert_eq!(f[4], e["size"].to_string(), "{path}");
        }
        if e["type"] == "symlink" {
            assert_eq!(f.last().unwrap(), e["target"].as_str().unwrap(), "{path}");
        }
    }
    let listed = ws.ok(&["inspect", "--verify", "out/controller-1.cpio.gz"]);
    assert_eq!(listed.lines().count(), entries.len());
    // Never the bytes of a key: only digests.
    assert!(!listed.contains("PRIVATE KEY"));

    // Same inputs, another umask and time: same bytes. Another epoch: other bytes.
    let first = fs::read(&archive).unwrap();
    let args = ["controller", "--node", "1", "--format", "cpio.gz"];
    ws.ok_with_env(&[("SOURCE_DATE_EPOCH", "0")], &args);
    assert_eq!(fs::read(&archive).unwrap(), first);
    ws.ok_with_env(&[("SOURCE_DATE_EPOCH", "1700000000")], &args);
    assert_ne!(fs::read(&archive).unwrap(), first);
}

#[test]
fn split_writes_one_shared_archive_and_verifies_as_a_pair() {
    let ws = Workspace::new("v1.10.2");
    let stdout = ws.ok(&["controller", "--all", "--format", "cpio", "--split"]);
    // Every file to ship, the shared one first.
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        [
            "out/controller-shared-v1.10.2-amd64.cpio",
            "out/controller-1-node.cpio",
            "out/controller-2-node.cpio",
            "out/controller-3-node.cpio"
        ],
        "{stdout}"
    );
    let mut names: Vec<String> = fs::read_dir(ws.path("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cpio"))
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "controller-1-node.cpio",
            "controller-2-node.cpio",
            "controller-3-node.cpio",
            "controller-shared-v1.10.2-amd64.cpio"
        ]
    );
    let shared = ws.path("out/controller-shared-v1.10.2-amd64.cpio");
    assert_eq!(mode_of(&shared), 0o644, "binaries only: no secret inside");
    assert_eq!(mode_of(&ws.path("out/controller-2-node.cpio")), 0o600);
    // The shared archive holds the binaries and their folders only.
    let shared_list = gnu_cpio_list(&shared);
    let m = manifest(&ws, 2);
    for e in m["entries"].as_array().unwrap() {
        let p = e["path"].as_str().unwrap();
        if e["shared"] == true {
            assert!(
                shared_list.contains_key(p),
                "{p} missing from the shared archive"
            );
        } else if e["type"] != "dir" {
            assert!(
                !shared_list.contains_key(p),
                "{p} is per-node but in the shared archive"
            );
        }
    }
    // etcd's binaries are shared; its unit, certificate and data folder the node's.
    for p in ["/usr/local/bin/etcd", "/usr/local/bin/etcdctl"] {
        assert!(shared_list.contains_key(p), "{p} not in the shared archive");
    }
    for p in [
        "/etc/systemd/system/etcd.service",
        "/etc/etcd/etcd-key.pem",
        "/var/lib/etcd",
    ] {
        assert!(!shared_list.contains_key(p), "{p} in the shared archive");
    }
    let sums = fs::read_to_string(ws.path("out/SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!(
            "{}  controller-shared-v1.10.2-amd64.cpio",
            sha256_file(&shared)
        )),
        "{sums}"
    );
    for n in 1..=3 {
        let node = format!("out/controller-{n}-node.cpio");
        ws.ok(&[
            "inspect",
            "--verify",
            "out/controller-shared-v1.10.2-amd64.cpio",
            &node,
        ]);
        // Alone, the per-node half lacks the binaries: verify says so.
        let err = ws.fails(&["inspect", "--verify", &node], 4);
        assert!(
            err.contains("/usr/local/bin/kube-apiserver: in the manifest, missing"),
            "{err}"
        );
    }
    // GNU cpio extracts the pair into the same tree as the manifest describes.
    let root = ws.path("root");
    fs::create_dir(&root).unwrap();
    for a in [shared.clone(), ws.path("out/controller-1-node.cpio")] {
        sh(Command::new("cpio")
            .args(["-idm", "--quiet", "-F"])
            .arg(&a)
            .current_dir(&root));
    }
    for e in manifest(&ws, 1)["entries"].as_array().unwrap() {
        let p = root.join(e["path"].as_str().unwrap().trim_start_matches('/'));
        if e["type"] == "symlink" {
            assert_eq!(
                fs::read_link(&p).unwrap().to_str().unwrap(),
                e["target"].as_str().unwrap()
            );
            continue;
        }
        assert_eq!(
            format!("{:04o}", mode_of(&p)),
            e["mode"].as_str().unwrap(),
            "{p:?}"
        );
        if e["type"] == "file" {
            assert_eq!(sha256_file(&p), e["sha256"].as_str().unwrap(), "{p:?}");
        }
    }
}

#[test]
fn split_needs_an_archive_format() {
    let ws = Workspace::new("v1.10.2");
    let err = ws.fails(
        &["controller", "--node", "1", "--split", "--format", "dir"],
        2,
    );
    assert!(err.contains("--split applies to archives"), "{err}");
    assert!(!ws.path("out/controller-1").exists());
}

/// The shared cpio is made once and kept in the cache: a second build archives
/// nothing large, leaves the shared file alone, and gives the same bytes as a
/// build from an empty cache.
#[test]
fn split_cpio_shared_archive_comes_from_the_cache() {
    let ws = Workspace::new("v1.36.0");
    let args = ["controller", "--all", "--format", "cpio.gz", "--split"];
    let err = ws.ok_stderr(&args);
    assert!(err.contains("compressing the binaries"), "{err}");
    let shared = ws.path("out/controller-shared-v1.36.0-amd64.cpio.gz");
    let (digest, ino) = (sha256_file(&shared), inode(&shared));

    let err = ws.ok_stderr(&args);
    assert!(!err.contains("compressing the binaries"), "{err}");
    assert!(err.contains("unchanged since the last build"), "{err}");
    assert_eq!(inode(&shared), ino, "the shared file was not rewritten");

    // Another output folder gets a copy; an empty cache gives the same bytes.
    fs::remove_dir_all(ws.path("cache/segments")).unwrap();
    ws.ok(&[
        "controller",
        "--node",
        "2",
        "--format",
        "cpio.gz",
        "--split",
        "--out",
        "b",
    ]);
    assert_eq!(
        sha256_file(&ws.path("b/controller-shared-v1.36.0-amd64.cpio.gz")),
        digest
    );
    assert_eq!(
        sha256_file(&ws.path("b/controller-2-node.cpio.gz")),
        sha256_file(&ws.path("out/controller-2-node.cpio.gz"))
    );
}

fn inode(p: &Path) -> u64 {
    std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap())
}

/// cloud-init's own code reads the user-data (gzipped or not) and its write_files
/// module writes the files under a temporary root: path → [mode, owner, sha256, size].
fn decode_write_files(user_data: &Path) -> BTreeMap<String, serde_json::Value> {
    let root = tempfile::tempdir().unwrap();
    let script = Path::new(support::REPO).join("tests/tools/cloud_init_write_files.py");
    let out = sh(Command::new("/usr/bin/python3")
        .arg(script)
        .arg(user_data)
        .arg(root.path()));
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    serde_json::from_value(doc["files"].clone()).unwrap()
}

/// The sha256 the manifest records for the binary `name` in /usr/local/bin.
fn imgbuild_member_sha(m: &serde_json::Value, name: &str) -> String {
    m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == format!("/usr/local/bin/{name}"))
        .unwrap()["sha256"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn cloud_init_folder_for_every_binaries_mode() {
    let ws = Workspace::new("v1.10.2");
    support::add_static_network(&ws);
    for mode in ["baked", "mirror=http://127.0.0.1:9/k8s", "seed"] {
        ws.ok(&["cloud-init", "--node", "1", "--binaries", mode]);
        let dir = ws.path("out/controller-1-cloud-init");
        assert_eq!(mode_of(&dir), 0o700);
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["meta-data", "network-config", "seed.img", "user-data"],
            "{mode}"
        );
        for n in &names {
            assert_eq!(mode_of(&dir.join(n)), 0o600, "{mode}: {n}");
        }
        let ud = dir.join("user-data");
        support::cloud_init_schema_ok(&ud);
        let m = manifest(&ws, 1);
        let files = decode_write_files(&ud);
        let want: Vec<&serde_json::Value> = m["entries"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "file" && e["shared"] == false)
            .collect();
        assert_eq!(files.len(), want.len(), "{mode}");
        for e in want {
            let f = &files[e["path"].as_str().unwrap()];
            assert_eq!(f[0], e["mode"], "{mode} {}", e["path"]);
            assert_eq!(f[1], "root:root");
            assert_eq!(f[2], e["sha256"], "{mode} {}", e["path"]);
            assert_eq!(f[3], e["size"], "{mode} {}", e["path"]);
        }
        let text = fs::read_to_string(&ud).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "a key in clear text");
        let installs = text.matches("\"imgbuild-install\"").count();
        // The server's four binaries, etcd and etcdctl (3.3 has no etcdutl).
        assert_eq!(installs, if mode == "baked" { 0 } else { 6 }, "{mode}");
        if mode.starts_with("mirror=") {
            // etcd's binaries come only in its release archive: the node
            // fetches it from the mirror's etcd/ folder, checks it against the
            // pin, and takes each member out of it.
            let archive = "http://127.0.0.1:9/k8s/etcd/v3.3.10/etcd-v3.3.10-linux-amd64.tar.gz";
            let pin = format!("sha256:{}", support::sha256_bytes(ws.etcd_tarball()));
            for b in ["etcd", "etcdctl"] {
                let step = format!(
                    "\"{archive}\", \"{}\", \"/usr/local/bin/{b}\", \"0755\", \"0:0\", \"etcd-v3.3.10-linux-amd64/{b}\", \"{pin}\"]",
                    imgbuild_member_sha(&m, b)
                );
                assert!(text.contains(&step), "{step}\n{text}");
            }
            assert!(
                text.contains("\"http://127.0.0.1:9/k8s/v1.10.2/bin/linux/amd64/kube-apiserver\"")
            );
        }

        let meta = fs::read_to_string(dir.join("meta-data")).unwrap();
        assert!(meta.contains("local-hostname: \"controller-1\""), "{meta}");
        let net = fs::read_to_string(dir.join("network-config")).unwrap();
        assert!(
            net.contains("\"10.240.0.11/24\"") && net.contains("\"10.240.0.3\""),
            "{net}"
        );

        // The seed volume: label and files, read by mtools and blkid.
        let img = dir.join("seed.img");
        let label = sh(Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&img)
            .arg("::"));
        assert!(label.contains("cidata"), "{label}");
        let blkid = sh(Command::new("blkid").args(["-p", "-o", "export"]).arg(&img));
        assert!(
            blkid.contains("LABEL=cidata") && blkid.contains("TYPE=vfat"),
            "{blkid}"
        );
        let listing = sh(Command::new("mdir").args(["-b", "-i"]).arg(&img).arg("::"));
        for f in ["::/user-data", "::/meta-data", "::/network-config"] {
            assert!(listing.lines().any(|l| l == f), "{f}: {listing}");
        }
        let bins_on_seed = listing
            .lines()
            .filter(|l| l.starts_with("::/kube") || l.starts_with("::/etcd"))
            .count();
        assert_eq!(
            bins_on_seed,
            if mode == "seed" { 6 } else { 0 },
            "{listing}"
        );
        let copy = sh(Command::new("mtype")
            .arg("-i")
            .arg(&img)
            .arg("::/user-data"));
        assert_eq!(copy.as_bytes(), fs::read(&ud).unwrap());

        for target in [
            "out/controller-1-cloud-init",
            "out/controller-1-cloud-init/seed.img",
        ] {
            let out = ws.run(&[
                "inspect",
                "--verify",
                target,
                "--manifest",
                "out/controller-1.manifest.json",
            ]);
            assert!(
                out.status.success(),
                "{mode} {target}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // Node 2 has no network settings: no network-config.
    ws.ok(&["cloud-init", "--node", "2"]);
    assert!(
        !ws.path("out/controller-2-cloud-init/network-config")
            .exists()
    );
    // Same inputs, same seed bytes; a changed config is a new instance.
    let seed = sha256_file(&ws.path("out/controller-2-cloud-init/seed.img"));
    let iid = fs::read_to_string(ws.path("out/controller-2-cloud-init/meta-data")).unwrap();
    ws.ok(&["cloud-init", "--node", "2"]);
    assert_eq!(
        sha256_file(&ws.path("out/controller-2-cloud-init/seed.img")),
        seed
    );
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    fs::write(
        ws.path("cluster.toml"),
        inv.replace(
            "service_node_port_range = \"30000-32767\"",
            "service_node_port_range = \"30000-32000\"",
        ),
    )
    .unwrap();
    ws.ok(&["cloud-init", "--node", "2"]);
    assert_ne!(
        fs::read_to_string(ws.path("out/controller-2-cloud-init/meta-data")).unwrap(),
        iid
    );
}

#[test]
fn provider_budgets_gzip_or_fail_with_sizes() {
    let ws = Workspace::new("v1.10.2");
    ws.ok(&["cloud-init", "--node", "1", "--provider", "aws"]);
    let ud = ws.path("out/controller-1-cloud-init/user-data");
    let bytes = fs::read(&ud).unwrap();
    assert!(bytes.len() <= 16 * 1024, "{} bytes", bytes.len());
    // Whatever form it took, cloud-init's loader reads it and the files are all there.
    let files = decode_write_files(&ud);
    assert!(files.contains_key("/var/lib/kubernetes/ca-key.pem"));
    if bytes.starts_with(&[0x1f, 0x8b]) {
        // cloud-init's schema check reads plain YAML: check the gunzipped text.
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
            .unwrap();
        let plain = ws.path("user-data.plain");
        fs::write(&plain, text).unwrap();
        support::cloud_init_schema_ok(&plain);
    }
    ws.ok(&["inspect", "--verify", "out/controller-1-cloud-init"]);

    // 40 KB of key material cannot fit AWS's 16 KB even gzipped.
    // (hex of sha256 chains: text, as a kubeconfig must be, but incompressible past 2:1)
    let mut kubeconfig = fs::read_to_string(ws.path("pki/admin.kubeconfig")).unwrap();
    for chunk in support::stand_in("admin.kubeconfig", 30_000).chunks(32) {
        kubeconfig.push_str(&format!("# {}\n", hex::encode(chunk)));
    }
    fs::write(ws.path("pki/admin.kubeconfig"), kubeconfig).unwrap();
    let before = fs::read(&ud).unwrap();
    let err = ws.fails(&["cloud-init", "--node", "1", "--provider", "aws"], 2);
    assert!(
        err.contains("bytes raw")
            && err.contains("bytes gzipped")
            && err.contains("aws limit is 16384"),
        "{err}"
    );
    assert_eq!(
        fs::read(&ud).unwrap(),
        before,
        "a failed build must leave the previous output alone"
    );
    ws.ok(&["cloud-init", "--node", "1", "--provider", "gcp"]);
}

#[test]
fn inspect_finds_tampering_and_bad_inputs() {
    let ws = Workspace::new("v1.10.2");
    ws.ok(&["controller", "--node", "1"]);
    ws.ok(&["inspect", "--verify", "out/controller-1.tar.gz"]);
    // Rebuild with another config, keep the old manifest: verify fails (exit 4).
    let old_manifest = fs::read(ws.path("out/controller-1.manifest.json")).unwrap();
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    fs::write(
        ws.path("cluster.toml"),
        inv.replace("30000-32767", "30000-32000"),
    )
    .unwrap();
    ws.ok(&["controller", "--node", "1", "--format", "cpio"]);
    fs::write(ws.path("out/controller-1.manifest.json"), old_manifest).unwrap();
    let err = ws.fails(&["inspect", "--verify", "out/controller-1.cpio"], 4);
    assert!(err.contains("kube-apiserver.service: sha256 is"), "{err}");
    fs::write(ws.path("junk.bin"), b"hello").unwrap();
    let err = ws.fails(&["inspect", "junk.bin"], 2);
    assert!(err.contains("not an imgbuild output"), "{err}");
}

/// The gzip members of a file, each decompressed on its own.
fn gzip_members(path: &Path) -> Vec<Vec<u8>> {
    let bytes = fs::read(path).unwrap();
    let mut cur = std::io::Cursor::new(&bytes[..]);
    let mut members = Vec::new();
    while (cur.position() as usize) < bytes.len() {
        let mut one = Vec::new();
        let mut dec = flate2::bufread::GzDecoder::new(&mut cur);
        std::io::Read::read_to_end(&mut dec, &mut one).unwrap();
        members.push(one);
    }
    members
}

/// cpio.gz is compressed on every core as members that each end at an entry
/// boundary (the kernel accepts a new member only there): decompressed, the
/// whole and the split shared archive are byte for byte the uncompressed
/// ones; every member starts with a newc header; a warm build (shared part
/// from the cache) gives the same bytes as a cold one.
#[test]
fn cpio_gz_members_end_at_entries_and_decompress_to_the_plain_archive() {
    // 1 MiB stand-ins: each binary is a member of its own.
    let ws = Workspace::builder("v1.36.0").binaries(1 << 20).build();
    ws.ok(&[
        "controller",
        "--node",
        "2",
        "--format",
        "cpio",
        "--out",
        "plain",
    ]);
    ws.ok(&[
        "controller",
        "--node",
        "2",
        "--format",
        "cpio",
        "--split",
        "--out",
        "plain",
    ]);
    let cold = ws.ok_stderr(&["controller", "--node", "2", "--format", "cpio.gz"]);
    assert!(cold.contains("compressing the binaries"));
    ws.ok(&[
        "controller",
        "--node",
        "2",
        "--format",
        "cpio.gz",
        "--split",
        "--out",
        "split",
    ]);

    for (gz, plain) in [
        ("out/controller-2.cpio.gz", "plain/controller-2.cpio"),
        (
            "split/controller-shared-v1.36.0-amd64.cpio.gz",
            "plain/controller-shared-v1.36.0-amd64.cpio",
        ),
    ] {
        let members = gzip_members(&ws.path(gz));
        assert!(members.len() >= 5, "{gz}: {} members", members.len());
        for (i, m) in members.iter().enumerate() {
            assert!(
                m.starts_with(b"070701"),
                "{gz}: member {i} starts mid-entry"
            );
        }
        assert_eq!(
            members.concat(),
            fs::read(ws.path(plain)).unwrap(),
            "{gz} decompresses to {plain}"
        );
        // GNU gzip agrees that the members form one valid stream.
        sh(Command::new("gzip").arg("-t").arg(ws.path(gz)));
    }

    // Warm: nothing large is compressed and the bytes are the cold ones.
    let first = sha256_file(&ws.path("out/controller-2.cpio.gz"));
    let warm = ws.ok_stderr(&[
        "controller",
        "--node",
        "2",
        "--format",
        "cpio.gz",
        "--out",
        "warm",
    ]);
    assert!(!warm.contains("compressing the binaries"));
    assert_eq!(sha256_file(&ws.path("warm/controller-2.cpio.gz")), first);
    assert_eq!(mode_of(&ws.path("warm/controller-2.cpio.gz")), 0o600);
    let sums = fs::read_to_string(ws.path("warm/SHA256SUMS")).unwrap();
    assert!(
        sums.contains(&format!("{first}  controller-2.cpio.gz")),
        "{sums}"
    );
    ws.ok(&["inspect", "--verify", "warm/controller-2.cpio.gz"]);
}
