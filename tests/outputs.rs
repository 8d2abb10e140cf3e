//! Every output of the bundled example, pinned byte for byte: each format,
//! split or not, cloud-init in every binaries mode and its seed.img, for
//! v1.10.2 and v1.36.0, built from a fixed PKI (`tests/fixtures/pki/`) and the
//! stand-in binaries. A change in any byte fails here. When the change is
//! meant, `UPDATE_GOLDEN=1 cargo test --test outputs` rewrites
//! `tests/fixtures/output-digests/<version>.txt`, and the diff says which
//! outputs moved.

mod support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use support::{REPO, Workspace, files_under, sha256_file};

/// Every build: (output folder, arguments).
const BUILDS: &[(&str, &[&str])] = &[
    ("tar.gz", &["controller", "--all"]),
    ("tar.gz-split", &["controller", "--all", "--split"]),
    ("dir", &["controller", "--all", "--format", "dir"]),
    ("cpio", &["controller", "--all", "--format", "cpio"]),
    (
        "cpio-split",
        &["controller", "--all", "--format", "cpio", "--split"],
    ),
    ("cpio.gz", &["controller", "--all", "--format", "cpio.gz"]),
    (
        "cpio.gz-split",
        &["controller", "--all", "--format", "cpio.gz", "--split"],
    ),
    ("ci-baked", &["cloud-init", "--all"]),
    (
        "ci-mirror",
        &[
            "cloud-init",
            "--all",
            "--binaries",
            "mirror=https://mirror.example/k8s",
        ],
    ),
    ("ci-seed", &["cloud-init", "--all", "--binaries", "seed"]),
    (
        "ci-azure",
        &["cloud-init", "--node", "1", "--provider", "azure"],
    ),
];

/// `folder/path mode sha256` (or `-> target`) for every file and symlink written.
fn listing(ws: &Workspace) -> String {
    let mut out = String::new();
    for (folder, args) in BUILDS {
        let mut args: Vec<&str> = args.to_vec();
        let dest = format!("out-{folder}");
        args.extend(["--out", &dest]);
        ws.ok_with_env(&[("SOURCE_DATE_EPOCH", "1600000000")], &args);
        let root = ws.path(&dest);
        for f in files_under(&root) {
            let p = root.join(&f);
            let meta = fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&p).unwrap().display())
            } else {
                sha256_file(&p)
            };
            out.push_str(&format!(
                "{dest}/{f} {:o} {what}\n",
                meta.permissions().mode() & 0o7777
            ));
        }
    }
    out
}

fn check(version: &str) {
    let ws = Workspace::builder(version).fixed_pki().build();
    let ours = listing(&ws);
    let pinned = Path::new(REPO)
        .join("tests/fixtures/output-digests")
        .join(format!("{version}.txt"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(pinned.parent().unwrap()).unwrap();
        fs::write(&pinned, &ours).unwrap();
        return;
    }
    let want = fs::read_to_string(&pinned).unwrap();
    let (o, w): (Vec<_>, Vec<_>) = (ours.lines().collect(), want.lines().collect());
    let moved: Vec<String> = w
        .iter()
        .filter(|l| !o.contains(l))
        .map(|l| format!("- {l}"))
        .chain(
            o.iter()
                .filter(|l| !w.contains(l))
                .map(|l| format!("+ {l}")),
        )
        .collect();
    assert!(
        moved.is_empty(),
        "{version}: outputs differ from {}:\n{}\n(if meant: UPDATE_GOLDEN=1 cargo test --test outputs)",
        pinned.display(),
        moved.join("\n")
    );
    assert!(w.len() > 50, "{version}: only {} outputs pinned", w.len());
}

#[test]
fn v1_10_2_outputs_are_the_pinned_bytes() {
    check("v1.10.2");
}

#[test]
fn v1_36_0_outputs_are_the_pinned_bytes() {
    check("v1.36.0");
}
