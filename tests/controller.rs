//! `imgbuild controller`: the overlay tarball, checked against the seed guide and
//! by the real consumers (GNU tar, systemd-analyze, nginx).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{Workspace, sh, sha256_file, untar, wrapped};

fn build_and_extract(ws: &Workspace, node: &str) -> PathBuf {
    ws.ok(&["controller", "--node", node]);
    let root = ws.path(&format!("root-{node}"));
    fs::create_dir_all(&root).unwrap();
    let archive = ws.path(&format!("out/controller-{node}.tar.gz"));
    untar(&archive, &root);
    root
}

#[test]
fn v1_10_2_units_carry_exactly_the_seeds_flags() {
    let ws = Workspace::new("v1.10.2");
    let root = build_and_extract(&ws, "2");
    let etcd = ["10.240.0.11", "10.240.0.12", "10.240.0.13"];
    let seed = support::seed_units();
    for (name, seed_unit) in &seed {
        let ours = fs::read_to_string(root.join(&seed_unit.path[1..])).unwrap();
        let (cmd, flags) = imgbuild::input::unit::exec_start(&ours).unwrap();
        assert_eq!(cmd, seed_unit.command, "{name}: command");
        let seed_flags = seed_unit.flags_for("10.240.0.12", &etcd);
        assert!(seed_flags.len() > 1, "{name}: too few flags in the fixture");
        for (i, (s, o)) in seed_flags.iter().zip(&flags).enumerate() {
            assert_eq!(o, s, "{name}: flag {i}");
        }
        assert_eq!(flags.len(), seed_flags.len(), "{name}: flag count");
        // Everything but ExecStart is the seed's too.
        let rest: Vec<String> = ours
            .replace("\\\n", " ")
            .lines()
            .filter(|l| !l.starts_with("ExecStart=") && !l.trim().is_empty())
            .map(String::from)
            .collect();
        assert_eq!(rest, seed_unit.other_lines, "{name}: other lines");
    }
    // The seed's scheduler config, byte for byte.
    assert_eq!(
        fs::read_to_string(root.join("etc/kubernetes/config/kube-scheduler.yaml")).unwrap(),
        support::fixture("seed/kube-scheduler.yaml")
    );
    // The RBAC manifests, as the seed applies them.
    let [role, binding] = support::seed_rbac();
    assert_eq!(
        fs::read_to_string(root.join("etc/kubernetes/rbac/kube-apiserver-to-kubelet.yaml"))
            .unwrap(),
        role
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/kubernetes/rbac/kube-apiserver-binding.yaml")).unwrap(),
        binding
    );
    // The seed's nginx server block.
    let block = support::fixture("seed/nginx-healthz-server.conf");
    let ours = fs::read_to_string(root.join("etc/nginx/conf.d/kubernetes-healthz.conf")).unwrap();
    assert!(
        ours.contains(block.trim_end()),
        "nginx conf lacks the seed's block:\n{block}\n--- ours:\n{ours}"
    );
}

/// One line of `tar -tvzf`, split into (mode string, owner, path, link target).
fn tar_listing(archive: &Path) -> Vec<(String, String, String, Option<String>)> {
    let out = sh(Command::new("tar")
        .args(["--numeric-owner", "-tvzf"])
        .arg(archive));
    out.lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (path, target) = match f[5..].join(" ").split_once(" -> ") {
                Some((p, t)) => (p.to_string(), Some(t.to_string())),
                None => (f[5..].join(" "), None),
            };
            (f[0].to_string(), f[1].to_string(), path, target)
        })
        .collect()
}

#[test]
fn gnu_tar_lists_modes_owners_types_and_links() {
    let ws = Workspace::new("v1.10.2");
    ws.ok(&["controller", "--node", "1"]);
    let archive = ws.path("out/controller-1.tar.gz");
    assert_eq!(
        fs::metadata(&archive).unwrap().permissions().mode() & 0o777,
        0o600,
        "archive holds keys"
    );
    let list = tar_listing(&archive);
    let by_path: BTreeMap<&str, &(String, String, String, Option<String>)> = list
        .iter()
        .map(|e| (e.2.trim_end_matches('/'), e))
        .collect();
    for (mode, owner, _, _) in &list {
        assert_eq!(owner, "0/0");
        assert!(!mode.is_empty());
    }
    let expect = [
        ("usr/local/bin/kube-apiserver", "-rwxr-xr-x"),
        ("usr/local/bin/kubectl", "-rwxr-xr-x"),
        ("var/lib/kubernetes/ca.pem", "-rw-r--r--"),
        ("var/lib/kubernetes/ca-key.pem", "-rw-------"),
        ("var/lib/kubernetes/kubernetes-key.pem", "-rw-------"),
        ("var/lib/kubernetes/service-account-key.pem", "-rw-------"),
        ("var/lib/kubernetes/encryption-config.yaml", "-rw-------"),
        ("var/lib/kubernetes/admin.kubeconfig", "-rw-------"),
        ("var/lib/kubernetes/kube-scheduler.kubeconfig", "-rw-------"),
        (
            "var/lib/kubernetes/kube-controller-manager.kubeconfig",
            "-rw-------",
        ),
        ("var/lib/kubernetes/kubernetes.pem", "-rw-r--r--"),
        ("etc/systemd/system/kube-apiserver.service", "-rw-r--r--"),
        ("etc/kubernetes/config/kube-scheduler.yaml", "-rw-r--r--"),
        ("etc/nginx/conf.d/kubernetes-healthz.conf", "-rw-r--r--"),
        ("usr/local/lib/imgbuild/kube-rbac-bootstrap", "-rwxr-xr-x"),
        ("var/lib/kubernetes", "drwxr-xr-x"),
        ("etc", "drwxr-xr-x"),
        ("etc/systemd/system/multi-user.target.wants", "drwxr-xr-x"),
    ];
    for (path, mode) in expect {
        let e = by_path
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the archive"));
        assert_eq!(e.0, mode, "{path}");
    }
    for unit in [
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
        "kube-rbac-bootstrap.service",
        "nginx-selinux-network.service",
    ] {
        let e = by_path[format!("etc/systemd/system/multi-user.target.wants/{unit}").as_str()];
        assert!(e.0.starts_with('l'), "{unit} enablement is a symlink");
        assert_eq!(
            e.3.as_deref(),
            Some(format!("/etc/systemd/system/{unit}").as_str())
        );
    }
    let nginx = by_path["etc/systemd/system/multi-user.target.wants/nginx.service"];
    assert_eq!(
        nginx.3.as_deref(),
        Some("/usr/lib/systemd/system/nginx.service")
    );
    // Parents precede children, so extraction never creates a folder implicitly.
    let mut seen = std::collections::BTreeSet::new();
    for (_, _, path, _) in &list {
        let p = path.trim_end_matches('/');
        if let Some((parent, _)) = p.rsplit_once('/') {
            assert!(
                seen.contains(parent),
                "{p} comes before its folder {parent}"
            );
        }
        seen.insert(p.to_string());
    }
    // And it extracts, with the content the manifest records.
    let root = ws.path("x");
    fs::create_dir(&root).unwrap();
    untar(&archive, &root);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path("out/controller-1.manifest.json")).unwrap())
            .unwrap();
    let mut files = 0;
    for e in manifest["entries"].as_array().unwrap() {
        if e["type"] == "file" {
            let p = root.join(e["path"].as_str().unwrap().trim_start_matches('/'));
            assert_eq!(
                sha256_file(&p),
                e["sha256"].as_str().unwrap(),
                "{}",
                p.display()
            );
            files += 1;
        }
    }
    assert!(files >= 24, "only {files} files in the manifest");
    let sums = fs::read_to_string(ws.path("out/SHA256SUMS")).unwrap();
    assert_eq!(
        sums,
        format!("{}  controller-1.tar.gz\n", sha256_file(&archive))
    );
}

/// A root with the host's systemd units, the overlay on top, and stand-ins for
/// the tools the overlay's units call on other distributions.
fn systemd_root(ws: &Workspace, node: &str) -> PathBuf {
    let root = ws.path(&format!("sysroot-{node}"));
    fs::create_dir_all(root.join("usr/lib")).unwrap();
    sh(Command::new("cp")
        .args(["-a", "/usr/lib/systemd"])
        .arg(root.join("usr/lib/")));
    std::os::unix::fs::symlink("usr/lib", root.join("lib")).unwrap();
    let archive = ws.path(&format!("out/controller-{node}.tar.gz"));
    untar(&archive, &root);
    // setsebool exists only where SELinux does (the unit has ConditionSecurity=selinux),
    // but verify checks every ExecStart path regardless of conditions.
    fs::create_dir_all(root.join("usr/sbin")).unwrap();
    fs::write(root.join("usr/sbin/setsebool"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(
        root.join("usr/sbin/setsebool"),
        fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    root
}

#[test]
fn systemd_analyze_verify_accepts_the_units() {
    for version in ["v1.36.0", "v1.10.2"] {
        verify_units(version);
    }
}

fn verify_units(version: &str) {
    let ws = Workspace::new(version);
    ws.ok(&["controller", "--node", "1"]);
    let root = systemd_root(&ws, "1");
    let units: Vec<PathBuf> = fs::read_dir(root.join("etc/systemd/system"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    // etcd, the API server (with its drop-in ordering it after etcd), the
    // controller manager, the scheduler and the two one-shots.
    assert_eq!(units.len(), 6, "{units:?}");
    support::assert_systemd_verifies(&root, &units, &format!("{version}: "));
    // The check has teeth: a missing binary is reported.
    fs::remove_file(root.join("usr/local/bin/kube-scheduler")).unwrap();
    let out = support::systemd_verify(
        &root,
        &[root.join("etc/systemd/system/kube-scheduler.service")],
    );
    assert!(!out.status.success());
}

#[test]
fn nginx_accepts_the_health_check_config() {
    let ws = Workspace::new("v1.10.2");
    let root = build_and_extract(&ws, "1");
    let conf = fs::read_to_string(root.join("etc/nginx/conf.d/kubernetes-healthz.conf")).unwrap();
    // Point the CA path into the extracted tree: nginx -t loads the certificate.
    let conf = conf.replace(
        "/var/lib/kubernetes/",
        &format!("{}/var/lib/kubernetes/", root.display()),
    );
    let prefix = ws.path("nginx");
    fs::create_dir_all(prefix.join("logs")).unwrap();
    fs::write(prefix.join("healthz.conf"), conf).unwrap();
    let main = format!(
        "error_log {p}/logs/error.log;\npid {p}/nginx.pid;\nevents {{}}\nhttp {{\n  access_log off;\n  include {p}/healthz.conf;\n}}\n",
        p = prefix.display()
    );
    fs::write(prefix.join("nginx.conf"), main).unwrap();
    let test = |conf: &Path| {
        Command::new("nginx")
            .arg("-t")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(conf)
            .output()
            .expect("nginx is installed (.ci/run installs nginx-light)")
    };
    let out = test(&prefix.join("nginx.conf"));
    assert!(
        out.status.success(),
        "nginx -t: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The check has teeth: the same file outside the http context is refused,
    // which is why it goes to conf.d (included by nginx.conf's http block).
    let wrong = format!(
        "error_log {p}/logs/error.log;\npid {p}/nginx.pid;\nevents {{}}\ninclude {p}/healthz.conf;\n",
        p = prefix.display()
    );
    fs::write(prefix.join("wrong.conf"), wrong).unwrap();
    assert!(!test(&prefix.join("wrong.conf")).status.success());
}

#[test]
fn builds_are_byte_identical_across_folders_times_umasks_and_mtimes() {
    let a = Workspace::new("v1.10.2");
    a.ok(&["controller", "--node", "1"]);
    // A second workspace with the same inputs, other mtimes, another umask and cwd.
    let b = Workspace::builder("v1.10.2")
        .no_pki()
        .no_binaries()
        .explicit_inventory()
        .build();
    for f in [
        "cluster.toml",
        "pki",
        "recipes",
        "kubernetes-server-linux-amd64.tar.gz",
        "etcd-v3.3.10-linux-amd64.tar.gz",
    ] {
        sh(Command::new("cp").arg("-r").arg(a.path(f)).arg(b.dir()));
    }
    sh(Command::new("touch")
        .args(["-d", "2031-02-03 04:05"])
        .arg(b.path("pki/ca.pem"))
        .arg(b.path("cluster.toml")));
    sh(Command::new("chmod")
        .arg("0640")
        .arg(b.path("pki/kubernetes.pem")));
    let run_b = |args: &[&str]| {
        let mut imgbuild = b.cmd();
        imgbuild.args(args).env("TZ", "Asia/Tokyo");
        sh(&mut wrapped(
            &["sh", "-c", "umask 077; cd / && exec \"$0\" \"$@\""],
            &imgbuild,
        ))
    };
    let tarball = b.path("kubernetes-server-linux-amd64.tar.gz");
    let etcd = b.path("etcd-v3.3.10-linux-amd64.tar.gz");
    run_b(&[
        "cache",
        "import",
        &tarball.display().to_string(),
        &etcd.display().to_string(),
    ]);
    let elsewhere = b.path("elsewhere");
    run_b(&[
        "controller",
        "--node",
        "1",
        "--out",
        &elsewhere.display().to_string(),
    ]);
    assert_eq!(
        sha256_file(&a.path("out/controller-1.tar.gz")),
        sha256_file(&b.path("elsewhere/controller-1.tar.gz"))
    );
    assert_eq!(
        fs::read(a.path("out/controller-1.manifest.json")).unwrap(),
        fs::read(b.path("elsewhere/controller-1.manifest.json")).unwrap()
    );
    // SOURCE_DATE_EPOCH sets the mtimes, and so changes the bytes.
    a.ok_with_env(
        &[("SOURCE_DATE_EPOCH", "1700000000")],
        &["controller", "--node", "1", "--out", "sde"],
    );
    let listing = sh(Command::new("tar")
        .args(["--full-time", "-tvzf"])
        .arg(a.path("sde/controller-1.tar.gz"))
        .env("TZ", "UTC"));
    assert!(
        listing.lines().all(|l| l.contains("2023-11-14 22:13:20")),
        "{listing}"
    );
    assert_ne!(
        sha256_file(&a.path("sde/controller-1.tar.gz")),
        sha256_file(&a.path("out/controller-1.tar.gz"))
    );
}

#[test]
fn all_nodes_and_dir_format() {
    let ws = Workspace::new("v1.10.2");
    let out = ws.ok(&["controller", "--all"]);
    assert_eq!(out.lines().count(), 3);
    for n in 1..=3 {
        assert!(ws.path(&format!("out/controller-{n}.tar.gz")).exists());
        assert!(
            ws.path(&format!("out/controller-{n}.manifest.json"))
                .exists()
        );
    }
    assert_eq!(
        fs::read_to_string(ws.path("out/SHA256SUMS"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    // By name, as a folder.
    ws.ok_dir("controller-3", "tree", &[]);
    let unit =
        fs::read_to_string(ws.path("tree/controller-3/etc/systemd/system/kube-apiserver.service"))
            .unwrap();
    assert!(unit.contains("--advertise-address=10.240.0.13 "));
    let key = ws.path("tree/controller-3/var/lib/kubernetes/ca-key.pem");
    assert_eq!(
        fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let link = fs::read_link(ws.path(
        "tree/controller-3/etc/systemd/system/multi-user.target.wants/kube-scheduler.service",
    ))
    .unwrap();
    assert_eq!(
        link,
        Path::new("/etc/systemd/system/kube-scheduler.service")
    );
    // The folder and the tarball hold the same files.
    let root = ws.path("x");
    fs::create_dir(&root).unwrap();
    ws.ok(&["controller", "--node", "3"]);
    untar(&ws.path("out/controller-3.tar.gz"), &root);
    let diff = Command::new("diff")
        .arg("-r")
        .arg("--no-dereference")
        .arg(&root)
        .arg(ws.path("tree/controller-3"))
        .output()
        .unwrap();
    assert!(
        diff.status.success(),
        "{}",
        String::from_utf8_lossy(&diff.stdout)
    );
}

#[test]
fn etcd_servers_and_extra_args_from_the_inventory() {
    let ws = Workspace::new("v1.10.2");
    let local = fs::read_to_string(ws.path("cluster.toml")).unwrap().replace(
        "pki_dir = \"pki\"",
        "pki_dir = \"pki\"\netcd_servers = [\"https://10.0.0.5:2379\", \"https://etcd-b.internal:2379\"]",
    ) + "\n[apiserver.extra_args]\nfeature-gates = \"A=true,B=false\"\n\n[scheduler.extra_args]\nleader-elect-lease-duration = \"30s\"\n";
    // Other endpoints than the controllers' own with etcd on the controllers: refused.
    fs::write(ws.path("cluster.toml"), &local).unwrap();
    let err = ws.fails(&["controller", "--node", "1"], 2);
    assert!(
        err.contains("cluster.etcd_servers") && err.contains("mode = \"external\""),
        "{err}"
    );
    let inv = local + "\n[etcd]\nmode = \"external\"\n";
    fs::write(ws.path("cluster.toml"), inv).unwrap();
    let root = build_and_extract(&ws, "1");
    // An external etcd: no etcd in the image at all.
    for gone in [
        "etc/systemd/system/etcd.service",
        "etc/systemd/system/kube-apiserver.service.d/10-etcd.conf",
        "etc/systemd/system/multi-user.target.wants/etcd.service",
        "etc/etcd",
        "var/lib/etcd",
        "usr/local/bin/etcd",
        "usr/local/bin/etcdctl",
    ] {
        assert!(!root.join(gone).exists(), "{gone} is in the image");
    }
    let unit = fs::read_to_string(root.join("etc/systemd/system/kube-apiserver.service")).unwrap();
    let (_, flags) = imgbuild::input::unit::exec_start(&unit).unwrap();
    let get = |k: &str| {
        flags
            .iter()
            .find(|(f, _)| f == k)
            .and_then(|(_, v)| v.clone())
    };
    assert_eq!(
        get("etcd-servers").unwrap(),
        "https://10.0.0.5:2379,https://etcd-b.internal:2379"
    );
    assert_eq!(get("feature-gates").unwrap(), "A=true,B=false");
    assert_eq!(flags.last().unwrap().0, "v", "--v stays last");
    let unit = fs::read_to_string(root.join("etc/systemd/system/kube-scheduler.service")).unwrap();
    assert!(unit.contains("  --leader-elect-lease-duration=30s \\\n"));
    // A flag the recipe already sets is refused.
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap()
        + "\n[controller_manager.extra_args]\ncluster-cidr = \"10.9.0.0/16\"\n";
    fs::write(ws.path("cluster.toml"), inv).unwrap();
    let err = ws.fails(&["controller", "--node", "1", "--out", "o2"], 2);
    assert!(
        err.contains("--cluster-cidr is set twice") && err.contains("extra_args"),
        "{err}"
    );
    assert!(!ws.path("o2/controller-1.tar.gz").exists());
}

#[test]
fn formats_of_one_node_share_its_manifest() {
    let ws = Workspace::new("v1.36.0");
    ws.ok(&["controller", "--node", "1"]);
    ws.ok(&["controller", "--node", "1", "--format", "cpio.gz"]);
    let read = || -> serde_json::Value {
        serde_json::from_slice(&fs::read(ws.path("out/controller-1.manifest.json")).unwrap())
            .unwrap()
    };
    let names = |m: &serde_json::Value| -> Vec<String> {
        m["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap().to_string())
            .collect()
    };
    let m = read();
    assert_eq!(names(&m), ["controller-1.cpio.gz", "controller-1.tar.gz"]);
    for o in m["outputs"].as_array().unwrap() {
        assert_eq!(
            o["sha256"].as_str().unwrap(),
            sha256_file(&ws.path(&format!("out/{}", o["name"].as_str().unwrap())))
        );
    }
    // Other inputs: the manifest describes only what was built from them.
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap()
        + "\n[scheduler.extra_args]\nkube-api-qps = \"100\"\n";
    fs::write(ws.path("cluster.toml"), inv).unwrap();
    ws.ok(&["controller", "--node", "1"]);
    assert_eq!(names(&read()), ["controller-1.tar.gz"]);
}
