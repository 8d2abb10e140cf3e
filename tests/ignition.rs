//! `imgbuild ignition`, checked by the real consumer: Debian's Ignition 2.14
//! (`ignition-validate`, and the full `ignition` binary run as `ignition-apply`
//! on an empty root, fetching the binaries from a loopback mirror and checking
//! their hashes itself), by a small applier of our own (`ignition/applier.rs`)
//! that does what Ignition's files stage does, and against the same node built
//! as a folder (`controller --format dir --os flatcar`).
//!
//! The enablement mechanisms differ, and the tests map one onto the other: the
//! folder enables a unit by a symlink `etc/systemd/system/<target>.wants/<unit>`,
//! Ignition by a line `enable <unit>` in
//! `etc/systemd/system-preset/20-ignition.preset`, which systemd applies on
//! the first boot (following the unit's `[Install] WantedBy=`).

#[path = "ignition/applier.rs"]
mod applier;
mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::http_mirror::Mirror;
use support::{BINARIES, Node, Workspace, sha256_file, stand_in, tree};

const VERSIONS: [&str; 2] = ["v1.10.2", "v1.36.0"];
/// The units the layout enables on Flatcar and Fedora CoreOS, in its order.
const ENABLED: [&str; 5] = [
    "etcd.service",
    "kube-apiserver.service",
    "kube-controller-manager.service",
    "kube-scheduler.service",
    "kube-rbac-bootstrap.service",
];
/// The budget for the bundled example's config (node 1, v1.36.0, binaries from
/// a mirror): 40 KiB, inside the 64 KiB of Azure and OpenStack (AWS's 16 KiB
/// cannot hold the keys and kubeconfigs; Hetzner's 32 KiB no longer holds
/// etcd's certificates and unit with v1.34's audit policy, front-proxy
/// certificates and check script). It was 20 KiB before those. See README,
/// "Flatcar and Fedora CoreOS".
const BUDGET: usize = 40 * 1024;

fn ignition_validate(path: &Path) -> (bool, String) {
    let out = Command::new("ignition-validate")
        .arg(path)
        .output()
        .expect("ignition-validate must be installed (apt-get install ignition)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn config(ws: &Workspace, node: usize) -> Value {
    serde_json::from_slice(&fs::read(ws.path(&format!("out/controller-{node}.ign"))).unwrap())
        .unwrap()
}

/// The folder form with its `.wants` symlinks (and their folder) taken out:
/// returns the enabled units, checking each link points at the unit the tree holds.
fn take_wants(dir_form: &mut BTreeMap<String, Node>) -> Vec<String> {
    let wants = "etc/systemd/system/multi-user.target.wants";
    assert_eq!(dir_form.remove(wants).map(|n| n.kind), Some("dir"));
    let links: Vec<String> = dir_form
        .keys()
        .filter(|k| k.starts_with(&format!("{wants}/")))
        .cloned()
        .collect();
    let mut units = Vec::new();
    for l in links {
        let node = dir_form.remove(&l).unwrap();
        let unit = l.rsplit('/').next().unwrap().to_string();
        assert_eq!(node.kind, "symlink");
        assert_eq!(node.what, format!("/etc/systemd/system/{unit}"));
        assert!(dir_form.contains_key(&format!("etc/systemd/system/{unit}")));
        units.push(unit);
    }
    units
}

/// Ignition's preset (and its folder) taken out of an applied tree: returns
/// the units it enables, in its order.
fn take_preset(applied: &mut BTreeMap<String, Node>, root: &Path) -> Vec<String> {
    let text = fs::read_to_string(root.join(applier::PRESET)).unwrap();
    let preset = applied.remove(applier::PRESET).unwrap();
    assert_eq!((preset.mode, preset.owner.0), (0o644, 0));
    let folder = applied.remove("etc/systemd/system-preset").unwrap();
    assert_eq!((folder.kind, folder.mode), ("dir", 0o755));
    text.lines()
        .map(|l| l.strip_prefix("enable ").unwrap().to_string())
        .collect()
}

/// Which order the preset's lines come in.
#[derive(Clone, Copy, PartialEq)]
enum Lines {
    /// The config's (our applier): the layout's order.
    Layout,
    /// Any: Ignition writes the preset from a Go map (`createSystemdPresetFile`
    /// ranges over `map[string]*Preset`), so its order changes from run to
    /// run. Harmless: each unit has one line, and systemd orders start-up by
    /// the units' dependencies, not by the preset.
    Any,
}

/// The unit of the one-shot that unpacks binaries fetched as release
/// archives (etcd's) with `--binaries mirror=URL`.
const UNPACK: &str = "imgbuild-unpack.service";

/// Run the unpacking one-shot of an applied mirror config as the node does
/// before its units start: the unit's ExecStart (`/bin/sh SCRIPT ARGS`), with
/// every path under `root`. The script checks each member and removes the
/// archives and itself.
fn run_unpack(root: &Path) {
    let unit = fs::read_to_string(root.join("etc/systemd/system").join(UNPACK)).unwrap();
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    let mut words = line.split_whitespace();
    assert_eq!(words.next(), Some("/bin/sh"), "{unit}");
    let script = words.next().unwrap().trim_start_matches('/');
    let out = Command::new("sh")
        .arg(root.join(script))
        .args(words)
        .env("IMGBUILD_ROOT", root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{UNPACK}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Both trees the same, entry for entry, once the enablement of each is
/// mapped to the other's: `.wants` symlinks to preset lines. `unpacked`: the
/// applied tree is a mirror config's after its unpacking one-shot ran, which
/// leaves its unit (enabled first, before every other) and the folder it
/// worked in, `var/lib/imgbuild`, which the folder form does not have.
fn assert_same_tree(
    mut dir_form: BTreeMap<String, Node>,
    mut applied: BTreeMap<String, Node>,
    root: &Path,
    lines: Lines,
    unpacked: bool,
    what: &str,
) {
    let mut linked = take_wants(&mut dir_form);
    let mut preset = take_preset(&mut applied, root);
    if unpacked {
        if lines == Lines::Layout {
            assert_eq!(preset.first().map(String::as_str), Some(UNPACK), "{what}");
        }
        let at = preset.iter().position(|u| u == UNPACK);
        preset.remove(at.unwrap_or_else(|| panic!("{what}: {UNPACK} not enabled")));
        let unit = applied.remove(&format!("etc/systemd/system/{UNPACK}"));
        assert_eq!(
            unit.map(|u| (u.kind, u.mode)),
            Some(("file", 0o644)),
            "{what}"
        );
        let folder = applied.remove("var/lib/imgbuild");
        assert_eq!(folder.map(|f| f.kind), Some("dir"), "{what}");
    }
    if lines == Lines::Layout {
        assert_eq!(preset, ENABLED, "{what}: preset order is the layout's");
    }
    assert_eq!(preset.len(), ENABLED.len(), "{what}: {preset:?}");
    linked.sort();
    let mut sorted = preset.clone();
    sorted.sort();
    assert_eq!(linked, sorted, "{what}: enabled units");
    for (path, node) in &dir_form {
        assert_eq!(applied.get(path), Some(node), "{what}: /{path}");
    }
    let extra: Vec<_> = applied
        .keys()
        .filter(|k| !dir_form.contains_key(*k))
        .collect();
    assert!(
        extra.is_empty(),
        "{what}: only in the applied tree: {extra:?}"
    );
}

/// The paths in the Flatcar folder form of the binaries dl.k8s.io serves one
/// by one (the config fetches each).
fn binary_paths() -> Vec<String> {
    BINARIES.iter().map(|b| format!("opt/bin/{b}")).collect()
}

/// The paths of etcd's binaries, which come only in etcd's release archive.
fn etcd_paths(ws: &Workspace) -> Vec<String> {
    support::etcd_binaries(ws.etcd())
        .iter()
        .map(|b| format!("opt/bin/{b}"))
        .collect()
}

/// sha256 of every member the cache's verified index records, by member path.
fn cache_members(ws: &Workspace) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(ws.path("cache/index")).unwrap() {
        let index: Value = serde_json::from_slice(&fs::read(e.unwrap().path()).unwrap()).unwrap();
        for (member, blob) in index["members"].as_object().unwrap() {
            out.insert(member.clone(), blob["sha256"].as_str().unwrap().to_string());
        }
    }
    out
}

#[test]
fn ignition_validate_accepts_every_config_imgbuild_writes() {
    for version in VERSIONS {
        let ws = Workspace::new(version);
        for os in ["flatcar", "fcos", "debian"] {
            for binaries in [
                "mirror=https://dl.k8s.io",
                "baked",
                "mirror=http://10.0.0.1:8080/k8s/",
            ] {
                let out = format!("out-{os}-{}", binaries.len());
                ws.ok(&[
                    "ignition",
                    "--all",
                    "--os",
                    os,
                    "--binaries",
                    binaries,
                    "--spec",
                    "3.3.0",
                    "--out",
                    &out,
                ]);
                for node in 1..=3 {
                    let ign = ws.path(&format!("{out}/controller-{node}.ign"));
                    let (ok, said) = ignition_validate(&ign);
                    // Valid, and not even a warning.
                    assert!(ok && said.is_empty(), "{version} {os} {binaries}: {said}");
                    assert_eq!(
                        fs::metadata(&ign).unwrap().permissions().mode() & 0o777,
                        0o600
                    );
                    let sums = fs::read_to_string(ws.path(&format!("{out}/SHA256SUMS"))).unwrap();
                    let line = format!("{}  controller-{node}.ign", sha256_file(&ign));
                    assert!(sums.lines().any(|l| l == line), "{sums}");
                    let manifest: Value = serde_json::from_slice(
                        &fs::read(ws.path(&format!("{out}/controller-{node}.manifest.json")))
                            .unwrap(),
                    )
                    .unwrap();
                    let o = &manifest["outputs"][0];
                    assert_eq!(o["name"], format!("controller-{node}.ign"));
                    assert_eq!(o["sha256"], sha256_file(&ign));
                    let kind = binaries.split('=').next().unwrap();
                    assert_eq!(
                        o["format"],
                        format!("ignition 3.3.0 ({os}, binaries {kind})")
                    );
                }
                // The default is mirror=https://dl.k8s.io.
                if binaries == "mirror=https://dl.k8s.io" && os == "flatcar" {
                    ws.ok(&["ignition", "--all", "--out", "out-default"]);
                    for node in 1..=3 {
                        let name = format!("controller-{node}.ign");
                        assert_eq!(
                            fs::read(ws.path(&format!("out-default/{name}"))).unwrap(),
                            fs::read(ws.path(&format!("{out}/{name}"))).unwrap()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ignition_validate_rejects_a_broken_config() {
    let ws = Workspace::new("v1.36.0");
    ws.ok(&["ignition", "--node", "1"]);
    let good = config(&ws, 1);
    // (what is broken, how, what ignition-validate says)
    type Breakage = (&'static str, fn(&mut Value), &'static str);
    let breakages: Vec<Breakage> = vec![
        (
            "a mode given as an octal string",
            |c| c["storage"]["files"][0]["mode"] = "0644".into(),
            "cannot unmarshal string",
        ),
        (
            "a relative path",
            |c| c["storage"]["directories"][0]["path"] = "etc/kubernetes".into(),
            "path not absolute",
        ),
        (
            "a folder given twice",
            |c| {
                let d = c["storage"]["directories"][0].clone();
                c["storage"]["directories"].as_array_mut().unwrap().push(d);
            },
            "duplicate entry defined",
        ),
        (
            "base64 that is not",
            |c| {
                let f = c["storage"]["files"]
                    .as_array_mut()
                    .unwrap()
                    .iter_mut()
                    .find(|f| {
                        f["contents"]["source"]
                            .as_str()
                            .unwrap()
                            .starts_with("data:")
                    })
                    .unwrap();
                f["contents"]["source"] = "data:;base64,%%%".into();
            },
            "invalid data character",
        ),
        (
            "spec 3.4.0, which this Ignition does not know",
            |c| c["ignition"]["version"] = "3.4.0".into(),
            "unsupported config version",
        ),
    ];
    for (what, breaks, says) in breakages {
        let mut bad = good.clone();
        breaks(&mut bad);
        let path = ws.path("bad.ign");
        fs::write(&path, serde_json::to_vec(&bad).unwrap()).unwrap();
        let (ok, said) = ignition_validate(&path);
        assert!(!ok && said.contains(says), "{what}: {said}");
    }
}

/// Apply node `node`'s config with the applier, build the folder form for the
/// same node, and compare; returns the remote files.
fn applied_equals_folder(
    ws: &Workspace,
    node: usize,
    os: &str,
    baked: bool,
) -> Vec<applier::Remote> {
    let root = ws.path(&format!("applied-{os}-{node}-{baked}"));
    fs::create_dir(&root).unwrap();
    let remote = applier::apply(&config(ws, node), &root);
    ws.ok_dir(&node.to_string(), "dir-out", &["--os", os]);
    let mut dir_form = tree(&ws.path(&format!("dir-out/controller-{node}")));
    // Binaries excepted: the folder holds them, the config fetches them (or,
    // baked, leaves them and their folder to the image). etcd's come in its
    // release archive, which the config fetches (checked against the pin) for
    // the unpacking one-shot: with the archive in place (the pinned bytes),
    // that one-shot installs them.
    if !baked {
        let archive = remote.last().unwrap();
        let file = format!("etcd-{}-linux-amd64.tar.gz", ws.etcd());
        assert_eq!(archive.path, format!("var/lib/imgbuild/archives/{file}"));
        assert_eq!(
            archive.hash.as_deref(),
            Some(format!("sha256-{}", support::sha256_bytes(ws.etcd_tarball())).as_str())
        );
        assert_eq!((archive.mode, archive.owner), (0o600, (0, 0)));
        support::sh(
            Command::new("install")
                .args(["-d", "-m", "0755"])
                .arg(root.join("var/lib/imgbuild/archives")),
        );
        let at = root.join(&archive.path);
        fs::write(&at, ws.etcd_tarball()).unwrap();
        fs::set_permissions(&at, fs::Permissions::from_mode(0o600)).unwrap();
        run_unpack(&root);
    }
    let mut applied = tree(&root);
    for (p, r) in binary_paths().iter().zip(&remote) {
        let file = dir_form.remove(p).unwrap();
        assert_eq!(&r.path, p);
        assert_eq!(
            r.hash.as_deref(),
            Some(format!("sha256-{}", file.what).as_str())
        );
        assert_eq!((r.mode, r.owner), (file.mode, file.owner), "{p}");
    }
    if baked {
        assert!(remote.is_empty());
        for p in binary_paths().iter().chain(&etcd_paths(ws)) {
            assert!(dir_form.remove(p).is_some(), "{p}");
        }
        drop_empty_bin_dir(&mut dir_form);
    } else {
        // Each binary, and etcd's archive.
        assert_eq!(remote.len(), BINARIES.len() + 1);
    }
    // The root folder itself: not an entry of either.
    dir_form.remove("");
    applied.remove("");
    assert_same_tree(
        dir_form,
        applied,
        &root,
        Lines::Layout,
        !baked,
        &format!("{os} node {node} baked={baked}"),
    );
    remote
}

#[test]
fn applied_config_is_the_folder_form_for_flatcar_and_fcos() {
    for version in VERSIONS {
        let ws = Workspace::builder(version).fixed_pki().build();
        for os in ["flatcar", "fcos"] {
            for baked in [false, true] {
                let binaries = if baked {
                    "baked"
                } else {
                    "mirror=https://mirror.example/k8s"
                };
                ws.ok(&["ignition", "--all", "--os", os, "--binaries", binaries]);
                for node in 1..=3 {
                    let remote = applied_equals_folder(&ws, node, os, baked);
                    for (r, b) in remote.iter().zip(BINARIES) {
                        assert_eq!(
                            r.source,
                            format!("https://mirror.example/k8s/{version}/bin/linux/amd64/{b}")
                        );
                    }
                    // etcd's archive from the mirror's etcd/ folder (docs/fetch.md).
                    if let Some(archive) = remote.get(BINARIES.len()) {
                        let etcd = ws.etcd();
                        assert_eq!(
                            archive.source,
                            format!(
                                "https://mirror.example/k8s/etcd/{etcd}/etcd-{etcd}-linux-amd64.tar.gz"
                            )
                        );
                    }
                }
            }
        }
        // Nothing of nginx and nothing under /usr on Flatcar.
        let c = serde_json::to_string(&config(&ws, 1)).unwrap();
        assert!(!c.contains("nginx") && !c.contains("\"/usr"), "{c}");
    }
}

#[test]
fn verification_hashes_are_the_cache_members() {
    let ws = Workspace::builder("v1.36.0").binaries(200_000).build();
    ws.ok(&["ignition", "--node", "2"]);
    let members = cache_members(&ws);
    let files = config(&ws, 2)["storage"]["files"]
        .as_array()
        .unwrap()
        .clone();
    let mut seen = 0;
    for f in files {
        let Some(source) = f["contents"]["source"]
            .as_str()
            .filter(|s| !s.starts_with("data:"))
        else {
            continue;
        };
        let name = source.rsplit('/').next().unwrap();
        if name.starts_with("etcd-") {
            // etcd's archive, from its publisher (the default mirror is
            // upstream), checked against the recipe's pin of the archive.
            assert_eq!(
                source,
                "https://github.com/etcd-io/etcd/releases/download/v3.6.5/etcd-v3.6.5-linux-amd64.tar.gz"
            );
            assert_eq!(
                f["contents"]["verification"]["hash"],
                format!("sha256-{}", support::sha256_bytes(ws.etcd_tarball()))
            );
            seen += 1;
            continue;
        }
        let member = format!("kubernetes/server/bin/{name}");
        assert_eq!(
            f["contents"]["verification"]["hash"],
            format!("sha256-{}", members[&member]),
            "{source}"
        );
        assert_eq!(
            members[&member],
            support::sha256_bytes(&stand_in(name, 200_000))
        );
        seen += 1;
    }
    assert_eq!(seen, BINARIES.len() + 1);
}

fn ignition_apply() -> PathBuf {
    let bin = Path::new("/usr/lib/dracut/modules.d/30ignition/ignition");
    assert!(
        bin.exists(),
        "Debian's ignition package must be installed (apt-get install ignition)"
    );
    bin.to_path_buf()
}

/// Run Debian's Ignition, as `ignition-apply`, on the empty folder `root`.
fn run_ignition_apply(ws: &Workspace, config: &Path, root: &Path, offline: bool) -> (bool, String) {
    let link = ws.path("ignition-apply");
    if !link.exists() {
        std::os::unix::fs::symlink(ignition_apply(), &link).unwrap();
    }
    // Ignition makes the parents it is not given with 0755 less the umask:
    // 022 on a booting system.
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("umask 022; exec \"$@\"")
        .arg("sh")
        .arg(&link)
        .arg("--root")
        .arg(root)
        .arg(config)
        .env("NO_PROXY", "*")
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY");
    if offline {
        cmd.arg("--offline");
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A v1.36.0 workspace whose loopback mirror serves each stand-in binary
/// where dl.k8s.io serves the release's.
fn with_mirrored_binaries() -> (Workspace, Mirror) {
    let ws = Workspace::builder("v1.36.0").fixed_pki().mirror().build();
    let mirror = ws.mirror().clone();
    for b in BINARIES {
        mirror.put(
            &format!("v1.36.0/bin/linux/amd64/{b}"),
            stand_in(b, 64 * 1024),
        );
    }
    (ws, mirror)
}

#[test]
fn ignition_apply_lays_the_folder_form_and_checks_every_binary() {
    let (ws, mirror) = with_mirrored_binaries();
    let url = format!("mirror={}/", mirror.url());
    ws.ok_dir("1", "dir-out", &["--os", "flatcar"]);
    let mut dir_form = tree(&ws.path("dir-out/controller-1"));
    dir_form.remove("");

    // Fetched from the mirror and checked against the pinned sha256 by Ignition itself.
    ws.ok(&["ignition", "--node", "1", "--binaries", &url]);
    let root = ws.path("ignition-root");
    fs::create_dir(&root).unwrap();
    let (ok, log) = run_ignition_apply(&ws, &ws.path("out/controller-1.ign"), &root, false);
    assert!(ok, "{log}");
    // Ignition says so for each file it checked against a hash: every
    // binary, and etcd's archive.
    assert_eq!(
        log.matches("file matches expected sum of: ").count(),
        BINARIES.len() + 1,
        "{log}"
    );
    assert_eq!(mirror.requests(&ws.etcd_mirror_path()).len(), 1);
    // At boot, before etcd starts, the one-shot unpacks etcd's binaries.
    run_unpack(&root);
    for b in BINARIES {
        assert_eq!(
            mirror
                .requests(&format!("v1.36.0/bin/linux/amd64/{b}"))
                .len(),
            1
        );
    }
    let mut applied = tree(&root);
    applied.remove("");
    assert_same_tree(
        dir_form.clone(),
        applied,
        &root,
        Lines::Any,
        true,
        "ignition-apply, mirror",
    );

    // Baked: offline, and nothing of the binaries.
    ws.ok(&["ignition", "--node", "1", "--binaries", "baked"]);
    let root = ws.path("ignition-root-baked");
    fs::create_dir(&root).unwrap();
    let (ok, log) = run_ignition_apply(&ws, &ws.path("out/controller-1.ign"), &root, true);
    assert!(ok, "{log}");
    let mut applied = tree(&root);
    applied.remove("");
    let mut baked_form = dir_form.clone();
    // /opt/bin stays only for what is not a binary of the release (the check
    // script).
    for p in binary_paths().iter().chain(&etcd_paths(&ws)) {
        baked_form.remove(p).unwrap();
    }
    drop_empty_bin_dir(&mut baked_form);
    assert_same_tree(
        baked_form,
        applied,
        &root,
        Lines::Any,
        false,
        "ignition-apply, baked",
    );

    // One wrong byte on the mirror: Ignition refuses it and the apply fails.
    let mut bad = stand_in("kubectl", 64 * 1024);
    bad[100] ^= 1;
    mirror.put("v1.36.0/bin/linux/amd64/kubectl", bad);
    ws.ok(&["ignition", "--node", "1", "--binaries", &url]);
    let root = ws.path("ignition-root-bad");
    fs::create_dir(&root).unwrap();
    let (ok, log) = run_ignition_apply(&ws, &ws.path("out/controller-1.ign"), &root, false);
    assert!(!ok && log.contains("hash verification failed"), "{log}");
    assert!(!root.join("opt/bin/kubectl").exists());

    // One wrong byte in etcd's archive: refused the same way.
    mirror.put(
        "v1.36.0/bin/linux/amd64/kubectl",
        stand_in("kubectl", 64 * 1024),
    );
    let mut bad = ws.etcd_tarball().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    mirror.put(&ws.etcd_mirror_path(), bad);
    let root = ws.path("ignition-root-bad-etcd");
    fs::create_dir(&root).unwrap();
    let (ok, log) = run_ignition_apply(&ws, &ws.path("out/controller-1.ign"), &root, false);
    assert!(!ok && log.contains("hash verification failed"), "{log}");
    assert!(
        !root
            .join("var/lib/imgbuild/archives")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_some())
    );
}

/// `systemctl --root R preset UNIT...`, as systemd does for every unit on
/// the first boot; the system's own preset (like Fedora's and Flatcar's)
/// disables whatever no earlier preset file enables.
fn systemctl_preset(root: &Path, units: &[String]) {
    let presets = root.join("usr/lib/systemd/system-preset");
    fs::create_dir_all(&presets).unwrap();
    fs::write(presets.join("99-default-disable.preset"), "disable *\n").unwrap();
    let out = Command::new("systemctl")
        .arg(format!("--root={}", root.display()))
        .arg("preset")
        .args(units)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "systemctl preset: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_enables_from_ignitions_preset_what_the_folder_form_links() {
    let (ws, mirror) = with_mirrored_binaries();
    ws.ok_dir("3", "dir-out", &["--os", "fcos"]);
    let folder = tree(&ws.path("dir-out/controller-3"));
    ws.ok(&[
        "ignition",
        "--node",
        "3",
        "--os",
        "fcos",
        "--binaries",
        &format!("mirror={}", mirror.url()),
    ]);
    for drop_one in [false, true] {
        // A root with the host's systemd (units, generators, presets), the config applied.
        let root = ws.path(&format!("sysroot-{drop_one}"));
        fs::create_dir_all(root.join("usr/lib")).unwrap();
        support::sh(
            Command::new("cp")
                .args(["-a", "/usr/lib/systemd"])
                .arg(root.join("usr/lib/")),
        );
        std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
        // A shell, where Flatcar and Fedora CoreOS have one (/bin is usr/bin),
        // for the unpacking one-shot.
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        fs::copy("/bin/sh", root.join("usr/bin/sh")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        let (ok, log) = run_ignition_apply(&ws, &ws.path("out/controller-3.ign"), &root, false);
        assert!(ok, "{log}");
        let preset = root.join(applier::PRESET);
        let mut lines: Vec<String> = fs::read_to_string(&preset)
            .unwrap()
            .lines()
            .map(String::from)
            .collect();
        if drop_one {
            // The check has teeth: a unit the preset does not enable gets no link.
            lines.retain(|l| l != "enable kube-scheduler.service");
            fs::write(
                &preset,
                lines.iter().map(|l| format!("{l}\n")).collect::<String>(),
            )
            .unwrap();
        }
        let mut units: Vec<String> = ENABLED.map(String::from).to_vec();
        units.push(UNPACK.into());
        systemctl_preset(&root, &units);
        let wants = "etc/systemd/system/multi-user.target.wants";
        let mut linked: BTreeMap<String, Node> = tree(&root)
            .into_iter()
            .filter(|(p, _)| p.starts_with(wants))
            .collect();
        // The unpacking one-shot is enabled too (the folder form has no need of it).
        let unpack = linked.remove(&format!("{wants}/{UNPACK}")).unwrap();
        assert_eq!(unpack.what, format!("/etc/systemd/system/{UNPACK}"));
        let mut want: BTreeMap<String, Node> = folder
            .clone()
            .into_iter()
            .filter(|(p, _)| p.starts_with(wants))
            .collect();
        if drop_one {
            want.remove(&format!("{wants}/kube-scheduler.service"));
        }
        assert_eq!(linked, want, "drop_one={drop_one}");

        // systemd accepts the units as Ignition wrote them, binaries in
        // /opt/bin included (etcd's once the one-shot has unpacked them).
        if !drop_one {
            run_unpack(&root);
        } else {
            let first = ws.path("sysroot-false/opt/bin");
            for b in etcd_paths(&ws) {
                let name = b.rsplit('/').next().unwrap();
                fs::copy(first.join(name), root.join(&b)).unwrap();
            }
        }
        let units: Vec<PathBuf> = ENABLED
            .iter()
            .chain([&UNPACK])
            .map(|u| root.join("etc/systemd/system").join(u))
            .collect();
        support::assert_systemd_verifies(&root, &units, "");
    }
}

/// Without the binaries, the image's folder for them stays the image's: the
/// config leaves it alone unless a node file of its own lives there (from
/// v1.34, kube-control-plane-check), when Ignition makes it as a parent.
fn drop_empty_bin_dir<V>(tree: &mut BTreeMap<String, V>) {
    if !tree.keys().any(|k| k.starts_with("opt/bin/")) {
        assert!(tree.remove("opt/bin").is_some());
    }
}

#[test]
fn the_example_config_stays_within_its_budget() {
    let ws = Workspace::builder("v1.36.0").fixed_pki().build();
    let said = ws.ok_stderr(&["ignition", "--node", "1"]);
    let size = fs::metadata(ws.path("out/controller-1.ign")).unwrap().len() as usize;
    eprintln!("controller-1.ign: {size} bytes");
    assert!(size <= BUDGET, "{size} bytes, over the budget of {BUDGET}");
    assert!(
        said.contains(&format!("controller-1.ign is {size} bytes")),
        "{said}"
    );
    // The keys alone do not fit AWS's 16 KiB, and the notice says what to do.
    assert!(said.contains("serve it over HTTPS"), "{said}");
    ws.ok(&["ignition", "--node", "1", "--binaries", "baked"]);
    let baked = fs::metadata(ws.path("out/controller-1.ign")).unwrap().len() as usize;
    assert!(baked < size, "{baked} {size}");
    eprintln!("controller-1.ign, baked: {baked} bytes");
}

#[test]
fn inspect_verifies_the_config_and_finds_changes() {
    let ws = Workspace::new("v1.36.0");
    for binaries in ["baked", "mirror=https://dl.k8s.io"] {
        ws.ok(&["ignition", "--node", "1", "--binaries", binaries]);
        let listing = ws.ok(&["inspect", "--verify", "out/controller-1.ign"]);
        assert!(
            listing.contains("/etc/systemd/system/kube-apiserver.service"),
            "{listing}"
        );
        assert!(
            listing.contains("enabled kube-apiserver.service"),
            "{listing}"
        );
        assert_eq!(
            listing.contains("(from https://dl.k8s.io/v1.36.0/bin/linux/amd64/kubectl)"),
            binaries != "baked",
            "{listing}"
        );
        // etcd's binaries: from its archive, on its publisher (dl.k8s.io means upstream).
        assert_eq!(
            listing.contains("(from https://github.com/etcd-io/etcd/releases/download/v3.6.5/etcd-v3.6.5-linux-amd64.tar.gz (etcd-v3.6.5-linux-amd64/etcd))"),
            binaries != "baked",
            "{listing}"
        );
    }
    let ign = ws.path("out/controller-1.ign");
    let good = config(&ws, 1);
    let write = |c: &Value| fs::write(&ign, serde_json::to_vec(c).unwrap()).unwrap();

    // Another mode; another hash for a binary; a unit no longer enabled.
    let mut c = good.clone();
    let dir = c["storage"]["directories"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|d| d["path"] == "/var/lib/kubernetes")
        .unwrap();
    dir["mode"] = 0o700.into();
    let kubectl = c["storage"]["files"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["path"] == "/opt/bin/kubectl")
        .unwrap();
    kubectl["contents"]["verification"]["hash"] = format!("sha256-{}", "0".repeat(64)).into();
    let scheduler = c["systemd"]["units"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|u| u["name"] == "kube-scheduler.service")
        .unwrap();
    scheduler.as_object_mut().unwrap().remove("enabled");
    write(&c);
    let err = ws.fails(&["inspect", "--verify", "out/controller-1.ign"], 4);
    for says in [
        "/var/lib/kubernetes: mode is 0700, the manifest says 0755",
        "/opt/bin/kubectl: sha256 is 0000",
        "/etc/systemd/system/multi-user.target.wants/kube-scheduler.service: kube-scheduler.service is not enabled",
    ] {
        assert!(err.contains(says), "{says}: {err}");
    }

    // A changed byte in a file carried as data.
    let mut c = good.clone();
    let apiserver = c["systemd"]["units"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|u| u["name"] == "kube-apiserver.service")
        .unwrap();
    let unit = apiserver["contents"]
        .as_str()
        .unwrap()
        .replace("--v=2", "--v=3");
    apiserver["contents"] = unit.into();
    write(&c);
    let err = ws.fails(&["inspect", "--verify", "out/controller-1.ign"], 4);
    assert!(
        err.contains("/etc/systemd/system/kube-apiserver.service: sha256 is"),
        "{err}"
    );

    // A changed configuration: a new config, a new hash in the manifest and SHA256SUMS.
    write(&good);
    let before = sha256_file(&ign);
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    fs::write(
        ws.path("cluster.toml"),
        format!("{inv}\n[apiserver.extra_args]\nprofiling = \"false\"\n"),
    )
    .unwrap();
    ws.ok(&["ignition", "--node", "1"]);
    let after = sha256_file(&ign);
    assert_ne!(before, after);
    let manifest = fs::read_to_string(ws.path("out/controller-1.manifest.json")).unwrap();
    assert!(manifest.contains(&after) && !manifest.contains(&before));
    let sums = fs::read_to_string(ws.path("out/SHA256SUMS")).unwrap();
    assert!(sums.contains(&after) && !sums.contains(&before));
    ws.ok(&["inspect", "--verify", "out/controller-1.ign"]);
}

#[test]
fn flatcar_leaves_nginx_out_and_says_where_to_point_the_load_balancer() {
    for (version, path) in [("v1.36.0", "/readyz"), ("v1.10.2", "/healthz")] {
        let ws = Workspace::new(version);
        let lint = ws.ok(&["lint", "--node", "2", "--os", "flatcar"]);
        let says = format!("https://10.240.0.12:6443{path}");
        assert!(
            lint.contains(&says)
                && lint.lines().any(|l| l.starts_with(
                    "note: node 2: /etc/nginx/conf.d/kubernetes-healthz.conf: left out on flatcar"
                )),
            "{lint}"
        );
        assert!(!ws.ok(&["lint", "--node", "2"]).contains("left out"));
        let built = ws.ok_stderr(&["ignition", "--node", "2", "--os", "fcos"]);
        assert!(built.contains(&says), "{built}");
        let c = fs::read_to_string(ws.path("out/controller-2.ign")).unwrap();
        assert!(!c.contains("nginx"));
        // The units run the binaries from /opt/bin and the one-shot from /opt/lib/imgbuild.
        let cfg = config(&ws, 2);
        let units = cfg["systemd"]["units"].as_array().unwrap();
        let names: Vec<&str> = units.iter().map(|u| u["name"].as_str().unwrap()).collect();
        // The default mirror (dl.k8s.io): etcd's archive is unpacked by a
        // one-shot before every other unit.
        assert_eq!(names[0], UNPACK);
        assert_eq!(names[1..], ENABLED);
        for u in units {
            assert_eq!(u["enabled"], true);
            let text = u["contents"].as_str().unwrap();
            assert!(!text.contains("/usr/local"), "{text}");
            if u["name"] == UNPACK {
                assert!(
                    text.contains("ExecStart=/bin/sh /var/lib/imgbuild/unpack "),
                    "{text}"
                );
            } else {
                assert!(text.contains("ExecStart=/opt/"), "{text}");
            }
        }
    }
}

#[test]
fn bad_arguments_are_refused_before_anything_is_read() {
    let ws = Workspace::builder("v1.36.0")
        .no_pki()
        .not_imported()
        .build();
    for (args, says) in [
        (vec!["--spec", "3.4.0"], "not offered"),
        (
            vec!["--spec", "2.2.0"],
            "imgbuild writes Ignition spec 3.3.0",
        ),
        (vec!["--binaries", "seed"], "expected baked or mirror=URL"),
        (vec!["--binaries", "mirror=ftp://x"], "http:// or https://"),
        (vec!["--os", "Flat car"], "--os"),
        (vec!["--os", "plan9"], "--os plan9: no such profile"),
    ] {
        let mut all = vec!["ignition", "--node", "1"];
        all.extend(args);
        let err = ws.fails(&all, 2);
        assert!(err.contains(says), "{all:?}: {err}");
    }
    let err = ws.fails(&["controller", "--node", "1", "--os", "plan9"], 2);
    assert!(err.contains("debian, fcos, flatcar"), "{err}");
    assert!(!ws.path("pki").exists() && !ws.path("out").exists());
}
