//! Current Kubernetes releases: the seed's control plane with what each
//! version needs, checked flag by flag against an expectation derived from the
//! seed (tests/fixtures/seed/) and the list of upstream changes since (not from our templates).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use support::{Workspace, untar};

const CURRENT: [&str; 3] = ["v1.34.7", "v1.35.4", "v1.36.0"];

type Flags = Vec<(String, Option<String>)>;

/// The units whose flags follow the seed's, as upstream changed them.
const CONTROL_UNITS: [&str; 3] = [
    "kube-apiserver.service",
    "kube-controller-manager.service",
    "kube-scheduler.service",
];

/// The flags of `unit` (a file name) in the built tree at `root`.
fn unit_flags(root: &Path, unit: &str) -> Flags {
    let text = fs::read_to_string(root.join("etc/systemd/system").join(unit)).unwrap();
    imgbuild::input::unit::exec_start(&text).unwrap().1
}

/// The seed's flags for `unit` turned into what a current release needs, per
/// the upstream changes since v1.10.2 (README, "The version check").
fn expected_current(unit: &str, node_ip: &str) -> Flags {
    let mut out = Flags::new();
    let seed = &support::seed_units()[unit.trim_end_matches(".service")];
    let ips = ["10.240.0.11", "10.240.0.12", "10.240.0.13"];
    for (k, v) in seed.flags_for(node_ip, &ips) {
        match k.as_str() {
            "apiserver-count" | "enable-swagger-ui" | "kubelet-https" => {}
            "experimental-encryption-provider-config" => {
                out.push(("encryption-provider-config".into(), v))
            }
            "enable-admission-plugins" => out.push((k, v.map(|v| v.replace("Initializers,", "")))),
            // No alpha APIs: only what the inventory's runtime_config names (nothing here).
            "runtime-config" => {}
            // Loopback unless the inventory says otherwise.
            "address" => out.push(("bind-address".into(), Some("127.0.0.1".into()))),
            // Without allocate_node_cidrs = true it would be ignored: not passed.
            "cluster-cidr" => {}
            "service-account-key-file" => {
                out.push((
                    "service-account-issuer".into(),
                    Some("https://203.0.113.10:6443".into()),
                ));
                out.push((k, v));
                out.push((
                    "service-account-signing-key-file".into(),
                    Some("/var/lib/kubernetes/service-account-key.pem".into()),
                ));
            }
            _ => out.push((k, v)),
        }
    }
    // Issue 18, per component: the audit policy, the aggregation layer (front
    // proxy), delegated authn/authz and loopback-bound secure ports, the
    // node-CIDR decision made explicit.
    let kc = |c: &str| Some(format!("/var/lib/kubernetes/{c}.kubeconfig"));
    let added: Vec<(&str, Option<String>)> = match unit {
        "kube-apiserver.service" => vec![
            (
                "audit-policy-file",
                Some("/etc/kubernetes/config/audit-policy.yaml".into()),
            ),
            ("enable-aggregator-routing", Some("true".into())),
            (
                "proxy-client-cert-file",
                Some("/var/lib/kubernetes/front-proxy-client.pem".into()),
            ),
            (
                "proxy-client-key-file",
                Some("/var/lib/kubernetes/front-proxy-client-key.pem".into()),
            ),
            (
                "requestheader-allowed-names",
                Some("front-proxy-client".into()),
            ),
            (
                "requestheader-client-ca-file",
                Some("/var/lib/kubernetes/front-proxy-ca.pem".into()),
            ),
            (
                "requestheader-extra-headers-prefix",
                Some("X-Remote-Extra-".into()),
            ),
            ("requestheader-group-headers", Some("X-Remote-Group".into())),
            (
                "requestheader-username-headers",
                Some("X-Remote-User".into()),
            ),
        ],
        "kube-controller-manager.service" => vec![
            ("allocate-node-cidrs", Some("false".into())),
            ("authentication-kubeconfig", kc("kube-controller-manager")),
            ("authorization-kubeconfig", kc("kube-controller-manager")),
        ],
        _ => vec![
            ("authentication-kubeconfig", kc("kube-scheduler")),
            ("authorization-kubeconfig", kc("kube-scheduler")),
            ("bind-address", Some("127.0.0.1".into())),
        ],
    };
    out.extend(added.into_iter().map(|(k, v)| (k.to_string(), v)));
    out.sort();
    out
}

fn build(ws: &Workspace, node: &str) -> PathBuf {
    ws.ok(&["controller", "--node", node]);
    let root = ws.path("root");
    fs::create_dir_all(&root).unwrap();
    untar(&ws.path(&format!("out/controller-{node}.tar.gz")), &root);
    root
}

fn yaml(path: &Path) -> serde_json::Value {
    serde_yaml_ng::from_str(&fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn seed_manifests() -> Vec<serde_json::Value> {
    support::seed_rbac()
        .iter()
        .map(|body| serde_yaml_ng::from_str(body).unwrap())
        .collect()
}

#[test]
fn current_releases_render_what_each_version_needs() {
    for version in CURRENT {
        let ws = Workspace::new(version);
        let root = build(&ws, "1");
        for unit in CONTROL_UNITS {
            let mut ours = unit_flags(&root, unit);
            ours.sort();
            assert_eq!(
                ours,
                expected_current(unit, "10.240.0.11"),
                "{version} {unit}"
            );
        }
        let apiserver =
            fs::read_to_string(root.join("etc/systemd/system/kube-apiserver.service")).unwrap();
        for gone in [
            "--apiserver-count",
            "Initializers",
            "--enable-swagger-ui",
            "--kubelet-https",
            "--experimental-",
        ] {
            assert!(!apiserver.contains(gone), "{version}: {gone} still present");
        }
        let cm =
            fs::read_to_string(root.join("etc/systemd/system/kube-controller-manager.service"))
                .unwrap();
        assert!(!cm.contains("--address=") && cm.contains("--bind-address=127.0.0.1"));
        assert!(
            !apiserver.contains("--runtime-config"),
            "{version}: no alpha APIs"
        );

        let sched = yaml(&root.join("etc/kubernetes/config/kube-scheduler.yaml"));
        assert_eq!(
            sched["apiVersion"], "kubescheduler.config.k8s.io/v1",
            "{version}"
        );
        assert_eq!(sched["kind"], "KubeSchedulerConfiguration");
        assert_eq!(
            sched["clientConnection"]["kubeconfig"],
            "/var/lib/kubernetes/kube-scheduler.kubeconfig"
        );
        assert_eq!(sched["leaderElection"]["leaderElect"], true);

        // RBAC: the seed's objects, served apiVersion.
        let seed = seed_manifests();
        for (file, mut expected) in [
            "etc/kubernetes/rbac/kube-apiserver-to-kubelet.yaml",
            "etc/kubernetes/rbac/kube-apiserver-binding.yaml",
        ]
        .into_iter()
        .zip(seed)
        {
            expected["apiVersion"] = "rbac.authorization.k8s.io/v1".into();
            assert_eq!(yaml(&root.join(file)), expected, "{version} {file}");
        }
        let script =
            fs::read_to_string(root.join("usr/local/lib/imgbuild/kube-rbac-bootstrap")).unwrap();
        assert!(
            script.contains("get --raw /readyz"),
            "{version}: the one-shot waits on /readyz"
        );

        // The manifest names the version and where the pin came from.
        let m: serde_json::Value =
            serde_json::from_slice(&fs::read(ws.path("out/controller-1.manifest.json")).unwrap())
                .unwrap();
        assert_eq!(m["kubernetes_version"], version);
        assert_eq!(m["recipe"], format!("kubernetes-{version}.toml"));
        let bin = m["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["path"] == "/usr/local/bin/kube-apiserver")
            .unwrap();
        assert_eq!(bin["origin"]["kind"], "artifact");
        assert!(
            bin["origin"]["pinned"]
                .as_str()
                .unwrap()
                .starts_with("sha512:")
        );
        assert_eq!(
            bin["origin"]["trust"], "local",
            "the test recipe's own pins are marked local"
        );
        let minor = &version[3..5];
        assert!(
            bin["origin"]["source"]
                .as_str()
                .unwrap()
                .contains(&format!("CHANGELOG-1.{minor}.md"))
        );
    }
}

#[test]
fn seed_version_keeps_the_seeds_choices() {
    let ws = Workspace::new("v1.10.2");
    let root = build(&ws, "1");
    let sched = yaml(&root.join("etc/kubernetes/config/kube-scheduler.yaml"));
    assert_eq!(sched["apiVersion"], "componentconfig/v1alpha1");
    let rbac = yaml(&root.join("etc/kubernetes/rbac/kube-apiserver-to-kubelet.yaml"));
    assert_eq!(rbac["apiVersion"], "rbac.authorization.k8s.io/v1beta1");
    let script =
        fs::read_to_string(root.join("usr/local/lib/imgbuild/kube-rbac-bootstrap")).unwrap();
    assert!(script.contains("HEALTH=/healthz"));
}

#[derive(serde::Deserialize)]
struct Table {
    flags: Vec<Row>,
}
#[derive(serde::Deserialize)]
struct Row {
    component: String,
    flag: String,
    removed: Option<String>,
    deprecated: Option<String>,
    replacement: String,
}

fn table() -> Table {
    toml::from_str(
        &fs::read_to_string(Path::new(support::REPO).join("recipes/flags.toml")).unwrap(),
    )
    .unwrap()
}

fn minor(v: &str) -> u32 {
    v.trim_start_matches("v1.")
        .split('.')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

fn section(component: &str) -> &'static str {
    match component {
        "kube-apiserver" => "apiserver",
        "kube-controller-manager" => "controller_manager",
        "kube-scheduler" => "scheduler",
        c => panic!("component {c}"),
    }
}

/// etcd.service goes by the recipe's etcd release, not Kubernetes': a flag
/// etcd 3.6 removed fails the build and `lint` of v1.36.0 (etcd 3.6.5) naming
/// etcd's version, while v1.10.2's etcd 3.3.10 takes it; a flag 3.3 does not
/// know yet (`--logger`, from 3.4) fails v1.10.2; a renamed one warns.
#[test]
fn etcd_flags_are_checked_against_etcds_release() {
    let ws = Workspace::new("v1.36.0");
    let original = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    let set = |ws: &Workspace, base: &str, flag: &str, value: &str| {
        fs::write(
            ws.path("cluster.toml"),
            format!("{base}\n[etcd.extra_args]\n{flag} = \"{value}\"\n"),
        )
        .unwrap();
    };
    let rows = table().flags;
    let removed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.component == "etcd" && r.removed.is_some())
        .collect();
    assert!(removed.len() >= 6, "the table lists etcd's removed flags");
    for r in removed {
        set(&ws, &original, &r.flag, "x");
        for cmd in [&["controller", "--node", "1"][..], &["lint"][..]] {
            let out = ws.run(cmd);
            assert_eq!(out.status.code(), Some(2), "{cmd:?} {}", r.flag);
            let said = support::text(&out);
            assert!(
                said.contains(&format!("etcd --{}", r.flag))
                    && said.contains(&format!("was removed in {}", r.removed.as_deref().unwrap()))
                    && said.contains("etcd v3.6.5 refuses to start")
                    && said.contains(&r.replacement)
                    && said.contains("[etcd.extra_args]"),
                "{cmd:?} with {}: {said}",
                r.flag
            );
        }
        assert!(ws.files_under("out").is_empty());
    }
    // Renamed in 3.6: accepted with a warning naming the new name.
    set(&ws, &original, "experimental-corrupt-check-time", "5m");
    let err = ws.ok_stderr(&["controller", "--node", "1"]);
    assert!(
        err.contains("warning:")
            && err.contains("etcd --experimental-corrupt-check-time")
            && err.contains("--corrupt-check-time"),
        "{err}"
    );
    // A flag etcd 3.6 does not know at all (its flag set is in recipes/flagsets/).
    set(&ws, &original, "made-up-flag", "1");
    let err = ws.fails(&["lint"], 2);
    let out = String::from_utf8_lossy(&ws.run(&["lint"]).stdout).into_owned();
    assert!(
        out.contains("etcd --made-up-flag") && out.contains("unknown to etcd v3.6"),
        "{err}{out}"
    );
    // A flag the unit already sets.
    set(&ws, &original, "data-dir", "/elsewhere");
    let err = ws.fails(&["controller", "--node", "1"], 2);
    assert!(err.contains("--data-dir is set twice"), "{err}");

    // v1.10.2 carries etcd 3.3.10: --enable-v2 is still a flag there, --logger not yet.
    let old = Workspace::new("v1.10.2");
    let original = fs::read_to_string(old.path("cluster.toml")).unwrap();
    set(&old, &original, "enable-v2", "true");
    old.ok(&["lint"]);
    old.ok(&["controller", "--node", "1"]);
    set(&old, &original, "logger", "zap");
    let err = old.fails(&["controller", "--node", "1"], 2);
    assert!(
        err.contains("etcd --logger") && err.contains("unknown to etcd v3.3"),
        "{err}"
    );
}

#[test]
fn removed_flags_fail_the_build_and_lint_deprecated_ones_warn() {
    let ws = Workspace::new("v1.36.0");
    let original = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    let rows = table().flags;
    let removed: Vec<&Row> = rows
        .iter()
        .filter(|r| r.component != "etcd")
        .filter(|r| r.removed.as_deref().is_some_and(|v| minor(v) <= 36))
        .collect();
    assert!(
        removed.len() >= 4,
        "the table lists the seed's removed flags"
    );
    for r in removed {
        fs::write(
            ws.path("cluster.toml"),
            format!(
                "{original}\n[{}.extra_args]\n{} = \"x\"\n",
                section(&r.component),
                r.flag
            ),
        )
        .unwrap();
        for cmd in [&["controller", "--node", "1"][..], &["lint"][..]] {
            let mut err = ws.fails(cmd, 2);
            if cmd[0] == "lint" {
                // lint lists its findings on stdout
                err = String::from_utf8_lossy(&ws.run(cmd).stdout).into_owned();
            }
            assert!(
                err.contains(&format!("--{}", r.flag))
                    && err.contains(r.removed.as_deref().unwrap())
                    && err.contains("v1.36.0")
                    && err.contains(&r.replacement),
                "{cmd:?} with {}: {err}",
                r.flag
            );
        }
        assert!(ws.files_under("out").is_empty());
    }
    // Deprecated but accepted: the build goes on and says so.
    let dep = rows.iter().find(|r| r.flag == "apiserver-count").unwrap();
    assert!(dep.removed.is_none() && dep.deprecated.is_some());
    fs::write(
        ws.path("cluster.toml"),
        format!("{original}\n[apiserver.extra_args]\napiserver-count = \"3\"\n"),
    )
    .unwrap();
    let err = ws.ok_stderr(&["controller", "--node", "1"]);
    assert!(
        err.contains("warning:") && err.contains("--apiserver-count") && err.contains("deprecated"),
        "{err}"
    );
    // A flag the version does not know (its complete flag set is in recipes/flagsets/).
    fs::write(
        ws.path("cluster.toml"),
        format!("{original}\n[scheduler.extra_args]\nmade-up-flag = \"1\"\n"),
    )
    .unwrap();
    let err = ws.fails(&["controller", "--node", "1"], 2);
    assert!(
        err.contains("--made-up-flag") && err.contains("unknown to Kubernetes v1.36"),
        "{err}"
    );
    // ... while a real one passes.
    fs::write(
        ws.path("cluster.toml"),
        format!("{original}\n[scheduler.extra_args]\nkube-api-qps = \"100\"\n"),
    )
    .unwrap();
    ws.ok(&["controller", "--node", "1"]);
    // Where no complete set is known (v1.10), unknown flags pass with a notice.
    let old = Workspace::builder("v1.10.2").no_binaries().build();
    let inv = fs::read_to_string(old.path("cluster.toml")).unwrap();
    fs::write(
        old.path("cluster.toml"),
        format!("{inv}\n[scheduler.extra_args]\nmade-up-flag = \"1\"\n"),
    )
    .unwrap();
    let out = old.run(&["lint"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && stdout.contains("note:")
            && stdout.contains("passed through unchecked"),
        "{stdout}"
    );
}

#[test]
fn the_seed_version_lints_clean_and_current_versions_refuse_seed_flags() {
    // The seed's own flags on v1.10.2: no errors.
    let ws = Workspace::builder("v1.10.2").no_binaries().build();
    let out = ws.run(&["lint"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // v1.10.2's scheduler config on a current version would be refused.
    let table: imgbuild::input::lint::FlagTable = {
        let assets = imgbuild::input::assets::Assets::default();
        imgbuild::input::lint::FlagTable::load(&assets).unwrap()
    };
    let text = "apiVersion: componentconfig/v1alpha1\nkind: KubeSchedulerConfiguration\n";
    let extra = BTreeMap::new();
    let findings = table.check(
        imgbuild::input::Versions {
            k8s: imgbuild::input::recipe::Version::parse("v1.36.0").unwrap(),
            etcd: None,
        },
        &[imgbuild::input::lint::Checked {
            path: "etc/kubernetes/config/kube-scheduler.yaml",
            text,
            extra: &extra,
            extra_section: "",
        }],
    );
    assert_eq!(findings.len(), 1);
    assert!(
        findings[0]
            .message
            .contains("kubescheduler.config.k8s.io/v1"),
        "{:?}",
        findings[0]
    );
}

#[test]
fn arm64_uses_the_arm64_pin() {
    let ws = Workspace::builder("v1.36.0")
        .arch("arm64")
        .binaries(4096)
        .build();
    ws.ok(&["controller", "--node", "1"]);
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(ws.path("out/controller-1.manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["arch"], "arm64");
    let bin = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "/usr/local/bin/kubectl")
        .unwrap();
    assert_eq!(
        bin["origin"]["artifact"],
        "kubernetes-server-linux-arm64.tar.gz"
    );
}

/// The shipped pins are the changelogs' (and, for etcd, the sources each
/// recipe names), digit for digit (tests/fixtures/release-pins.toml); and
/// every pin of every shipped recipe is in that table.
#[test]
fn shipped_pins_match_the_changelogs() {
    #[derive(serde::Deserialize)]
    struct Pins {
        pin: Vec<Pin>,
    }
    #[derive(serde::Deserialize)]
    struct Pin {
        version: String,
        file: String,
        algorithm: String,
        digest: String,
        #[serde(default = "changelog")]
        trust: String,
        source: String,
    }
    fn changelog() -> String {
        "changelog".into()
    }
    let pins: Pins = toml::from_str(&support::fixture("release-pins.toml")).unwrap();
    let mut checked = std::collections::BTreeSet::new();
    for p in &pins.pin {
        let recipe: toml::Value = toml::from_str(
            &fs::read_to_string(
                Path::new(support::REPO).join(format!("recipes/kubernetes-{}.toml", p.version)),
            )
            .unwrap(),
        )
        .unwrap();
        let (a, arch) = recipe["artifacts"]
            .as_array()
            .unwrap()
            .iter()
            .find_map(|a| {
                ["amd64", "arm64"]
                    .into_iter()
                    .find(|arch| a["file"].as_str().unwrap().replace("{arch}", arch) == p.file)
                    .map(|arch| (a, arch))
            })
            .unwrap_or_else(|| panic!("{}: no artifact {}", p.version, p.file));
        let v = &p.version;
        assert_eq!(a["algorithm"].as_str(), Some(p.algorithm.as_str()), "{v}");
        assert_eq!(
            a["digests"][arch].as_str(),
            Some(p.digest.as_str()),
            "{v} {}",
            p.file
        );
        assert_eq!(
            a["trust"].as_str(),
            Some(p.trust.as_str()),
            "{v} {}",
            p.file
        );
        assert_eq!(a["source"].as_str(), Some(p.source.as_str()), "{v}");
        checked.insert((v.clone(), p.file.clone()));
    }
    // Every shipped recipe's every pin is in the table.
    for (v, recipe) in support::shipped_recipes() {
        let name = format!("kubernetes-{v}.toml");
        for a in recipe["artifacts"].as_array().unwrap() {
            for arch in a["digests"].as_table().unwrap().keys() {
                let file = a["file"].as_str().unwrap().replace("{arch}", arch);
                assert!(
                    checked.contains(&(v.clone(), file.clone())),
                    "{name}: {file} is pinned but not in release-pins.toml"
                );
            }
        }
    }
    assert_eq!(checked.len(), 16);
}

/// Every flag the current units carry beyond the seed's is a row of the flag
/// table with its source: an `[[added]]` row (issue 18), a `[[required]]` one,
/// or the replacement of a seed flag; and each is in the version's complete
/// flag set (recipes/flagsets/, from the reference pages).
#[test]
fn every_flag_added_since_the_seed_has_a_row_with_its_source() {
    #[derive(serde::Deserialize)]
    struct Rows {
        added: Vec<Added>,
        required: Vec<Req>,
    }
    #[derive(serde::Deserialize)]
    struct Added {
        component: String,
        flag: String,
        source: String,
        why: String,
    }
    #[derive(serde::Deserialize)]
    struct Req {
        component: String,
        flag: String,
    }
    let rows: Rows = toml::from_str(
        &fs::read_to_string(Path::new(support::REPO).join("recipes/flags.toml")).unwrap(),
    )
    .unwrap();
    let seed = support::seed_units();
    // Seed flags that current versions carry under another name.
    let renamed = ["encryption-provider-config", "bind-address"];
    for version in CURRENT {
        let ws = Workspace::new(version);
        let root = build(&ws, "1");
        for unit in CONTROL_UNITS {
            let component = unit.trim_end_matches(".service");
            let ours = unit_flags(&root, unit);
            let theirs: Vec<String> = seed[component]
                .flags_for(
                    "10.240.0.11",
                    &["10.240.0.11", "10.240.0.12", "10.240.0.13"],
                )
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            let set = fs::read_to_string(Path::new(support::REPO).join(format!(
                "recipes/flagsets/{component}-v1.{}.txt",
                minor(version)
            )))
            .unwrap();
            for (flag, _) in ours {
                assert!(
                    set.lines().any(|l| l == flag),
                    "{version} {component} --{flag} is not in its flag set"
                );
                if theirs.contains(&flag) || renamed.contains(&flag.as_str()) {
                    continue;
                }
                let added = rows
                    .added
                    .iter()
                    .find(|r| r.component == component && r.flag == flag);
                let required = rows
                    .required
                    .iter()
                    .any(|r| r.component == component && r.flag == flag);
                assert!(
                    required || added.is_some_and(|r| !r.source.is_empty() && !r.why.is_empty()),
                    "{version} {component} --{flag}: no [[added]] row with its source in recipes/flags.toml"
                );
            }
        }
    }
}
