//! Plans for tests: a small control-plane-like plan, its meta and entry
//! makers, and [`run_ok`] for the real tools that judge outputs. The unit
//! tests use it, and so do the integration tests that write archives of plans
//! of their own (tests/initramfs_boot.rs); the CLI never does.

use std::process::Command;
use std::sync::Arc;

use crate::plan::{Content, Entry, EntryKind, Meta, Origin, Plan, Provenance};
use crate::util::digest::sha256_hex;

pub fn entry(path: &str, mode: u32, kind: EntryKind, shared: bool) -> Entry {
    Entry {
        path: path.into(),
        mode,
        uid: 0,
        gid: 0,
        kind,
        origin: Origin::Generated {
            what: "test".into(),
        },
        shared,
        secret: false,
    }
}

pub fn file(path: &str, mode: u32, bytes: &[u8], shared: bool) -> Entry {
    entry(
        path,
        mode,
        EntryKind::File {
            size: bytes.len() as u64,
            sha256: sha256_hex(bytes),
            content: Content::Inline(Arc::from(bytes)),
        },
        shared,
    )
}

pub fn dir(path: &str, mode: u32, shared: bool) -> Entry {
    entry(path, mode, EntryKind::Dir, shared)
}

/// `etc/systemd/system` (its folders per node, 0755) holding the unit `name`
/// (0644, `text`), enabled: linked from `multi-user.target.wants`.
pub fn enabled_unit(name: &str, text: &[u8]) -> Vec<Entry> {
    vec![
        dir("etc", 0o755, false),
        dir("etc/systemd", 0o755, false),
        dir("etc/systemd/system", 0o755, false),
        file(&format!("etc/systemd/system/{name}"), 0o644, text, false),
        dir("etc/systemd/system/multi-user.target.wants", 0o755, false),
        entry(
            &format!("etc/systemd/system/multi-user.target.wants/{name}"),
            0o777,
            EntryKind::Symlink {
                target: format!("/etc/systemd/system/{name}"),
            },
            false,
        ),
    ]
}

/// The meta of [`sample_plan`]: node 1 (`controller-1`) of v1.36.0 on amd64
/// and Debian, entries dated 2023-11-14.
pub fn meta() -> Meta {
    Meta {
        made_from: Provenance {
            imgbuild_version: "0".into(),
            recipe: "test".into(),
            kubernetes_version: "v1.36.0".into(),
            arch: "amd64".into(),
            cluster: "c".into(),
            node_index: 1,
            node_name: "controller-1".into(),
            inventory_sha256: String::new(),
            mtime: 1_700_000_000,
        },
        unit_order: Vec::new(),
        network: None,
        os: "debian".into(),
        system_dirs: Vec::new(),
        sources: Vec::new(),
    }
}

/// A small control-plane-like plan: binaries shared, configuration per node.
pub fn sample_plan() -> Plan {
    let mut key = file(
        "var/lib/kubernetes/ca-key.pem",
        0o600,
        b"-----BEGIN KEY-----\nsecret\n",
        false,
    );
    key.secret = true;
    let mut entries = vec![
        dir("usr", 0o755, true),
        dir("usr/local", 0o755, true),
        dir("usr/local/bin", 0o755, true),
        file(
            "usr/local/bin/kube-apiserver",
            0o755,
            &[0x7f, b'E', b'L', b'F', 1, 2, 3],
            true,
        ),
        file("usr/local/bin/kubectl", 0o755, &vec![0xAB; 70_001], true),
        dir("var", 0o755, false),
        dir("var/lib", 0o755, false),
        dir("var/lib/kubernetes", 0o700, false),
        key,
        file("var/lib/kubernetes/empty", 0o644, b"", false),
        // Per-node file in a folder the binaries also need: the folder goes in both halves.
        file("usr/local/node.conf", 0o644, b"per node\n", false),
    ];
    let unit = b"[Unit]\nDescription=Kubernetes API Server\n\n[Service]\nExecStart=/usr/local/bin/kube-apiserver\n";
    entries.extend(enabled_unit("kube-apiserver.service", unit));
    entries.reverse();
    let mut plan = Plan {
        meta: meta(),
        entries,
    };
    plan.finish().unwrap();
    plan
}

/// A gzipped tar holding `members` (path, bytes), each 0755: a release
/// archive for tests of what unpacks one.
pub fn tar_gz(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::fast(),
    ));
    for (path, bytes) in members {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        tar.append_data(&mut h, path, *bytes).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// Runs `cmd` (a tool that `install` says how to get), requires success and
/// returns its stdout; a failure shows the tool's stderr.
pub fn run_ok(cmd: &mut Command, install: &str) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}: {install}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}
