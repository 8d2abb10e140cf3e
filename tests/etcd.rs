//! etcd, checked by the real consumer: Debian's etcd (the `etcd-server` and
//! `etcd-client` packages, 3.4.23 on bookworm) runs our own rendered units.
//!
//! * A real 3-member cluster: `imgbuild controller --all` for an inventory
//!   whose controllers are 127.0.0.11, .12 and .13 (loopback only), each
//!   member started from the ExecStart line of its node's rendered
//!   `etcd.service`, with the node's own certificate, key, CA and data folder
//!   as its overlay lays them out (under a temporary root). Then `etcdctl
//!   endpoint health --cluster` reports three healthy members over TLS, a key
//!   written through member 1 is read through member 3, and a client without
//!   a certificate is refused. The same again for the bundled example
//!   itself (10.240.0.11 to .13, unchanged), each member in a network
//!   namespace of its own (its own loopback, its address on a link to a
//!   bridge), as on three machines.
//! * Seed fidelity: v1.10.2's etcd.service carries the flags of the 1.10-era
//!   hard-way guide's etcd unit, and `--initial-cluster` names the hosts the
//!   API server's `--etcd-servers` names.
//!
//! What is rewritten to run the units here, and nothing else:
//! * paths, into the node's folder: the binary (`/usr/local/bin/etcd`, Debian's
//!   etcd 3.4.23 standing in for the pinned 3.6.5 in the test recipe), the
//!   certificate files and the data folder;
//! * the flags etcd 3.4 does not know: `--feature-gates` and
//!   `--watch-progress-notify-interval` (etcd 3.6's names; 3.4 has neither);
//! * in the loopback cluster only, `https://127.0.0.1:2379` in
//!   `--listen-client-urls` of members 2 and 3: every node has a loopback of
//!   its own, but these three members share one, where only one process can
//!   listen on 127.0.0.1:2379 (member 1 keeps it, and a client reaches it
//!   there). The bundled example's members each have their own, and keep it.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::{Workspace, example_inventory, stand_in, text};

/// Debian's etcd and etcdctl (`apt-get install etcd-server etcd-client`).
const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";

/// The flags etcd 3.4 does not know that the v1.36.0 unit (etcd 3.6) sets.
const NOT_IN_3_4: [&str; 2] = ["feature-gates", "watch-progress-notify-interval"];

fn prerequisites() {
    for p in [ETCD, ETCDCTL] {
        assert!(
            Path::new(p).is_file(),
            "{p} is missing: apt-get install etcd-server etcd-client (scripts/test does)"
        );
    }
}

/// A v1.36.0 workspace for `inventory` whose recipe pins, as etcd's tarball,
/// one holding Debian's etcd and etcdctl (and a stand-in etcdutl, which
/// Debian's 3.4 does not have and nothing here runs).
fn workspace(inventory: &str) -> Workspace {
    prerequisites();
    let etcd = vec![
        ("etcd", fs::read(ETCD).unwrap()),
        ("etcdctl", fs::read(ETCDCTL).unwrap()),
        ("etcdutl", stand_in("etcdutl", 4096)),
    ];
    Workspace::builder("v1.36.0")
        .inventory(inventory)
        .binaries(4096)
        .etcd_contents(etcd)
        .build()
}

/// The example inventory with these controller addresses.
fn with_ips(ips: [&str; 3]) -> String {
    let mut inv = example_inventory("v1.36.0", "amd64");
    for (i, ip) in ips.iter().enumerate() {
        inv = inv.replace(&format!("\"10.240.0.1{}\"", i + 1), &format!("\"{ip}\""));
    }
    inv
}

/// Where the members run.
#[derive(Clone, Copy, PartialEq)]
enum Net {
    /// All on this machine's loopback.
    SharedLoopback,
    /// Each in a network namespace of its own, its address on a veth link to
    /// a bridge in the test's namespace (where the test's clients are).
    OwnNamespaces,
}

/// The command line of node `node`'s rendered etcd.service, run from its
/// folder `root` (see the module comment for what is rewritten), prefixed by
/// `prefix` (a program and its arguments).
fn command_of(root: &Path, node: usize, net: Net, prefix: &[String]) -> Command {
    let unit = fs::read_to_string(root.join("etc/systemd/system/etcd.service")).unwrap();
    let (cmd, flags) = imgbuild::input::unit::exec_start(&unit).unwrap();
    assert_eq!(cmd, "/usr/local/bin/etcd");
    let bin = root.join(cmd.trim_start_matches('/'));
    let mut c = match prefix.split_first() {
        Some((p, rest)) => {
            let mut c = Command::new(p);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    let mut dropped = Vec::new();
    for (flag, value) in flags {
        if NOT_IN_3_4.contains(&flag.as_str()) {
            dropped.push(flag);
            continue;
        }
        let value = value.map(|v| match v.strip_prefix('/') {
            Some(rel) => root.join(rel).display().to_string(),
            None if flag == "listen-client-urls" && node > 1 && net == Net::SharedLoopback => v
                .split(',')
                .filter(|u| *u != "https://127.0.0.1:2379")
                .collect::<Vec<_>>()
                .join(","),
            None => v,
        });
        match value {
            Some(v) => c.arg(format!("--{flag}={v}")),
            None => c.arg(format!("--{flag}")),
        };
    }
    assert_eq!(dropped, NOT_IN_3_4, "the unit's 3.6-only flags");
    c
}

/// The running members; killed (each by its own id) when dropped.
struct Members(Vec<Child>);

impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// etcdctl over TLS as the API server is etcd's client: with its
/// certificate (`kubernetes.pem`) and the cluster's CA, from node 1's folder.
fn etcdctl(root: &Path, endpoints: &str, args: &[&str]) -> std::process::Output {
    let pki = root.join("var/lib/kubernetes");
    Command::new(ETCDCTL)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", pki.join("ca.pem").display()))
        .arg(format!("--cert={}", pki.join("kubernetes.pem").display()))
        .arg(format!(
            "--key={}",
            pki.join("kubernetes-key.pem").display()
        ))
        .arg("--dial-timeout=3s")
        .args(args)
        .output()
        .unwrap()
}

/// What a member in a namespace of its own runs first: wait for the link the
/// test gives it, put the member's address on it, then become the member.
const IN_NAMESPACE: &str = r#"ip=$1; shift
i=0
until ip link show eth0 >/dev/null 2>&1; do
  i=$((i + 1)); [ "$i" -lt 100 ] || { echo "no eth0" >&2; exit 1; }; sleep 0.1
done
ip link set lo up && ip addr add "$ip/24" dev eth0 && ip link set eth0 up && exec "$@""#;

fn ip(args: &[&str]) {
    support::sh(Command::new("ip").args(args));
}

/// Build every node as a folder, start the three members from their units,
/// and check the cluster (see the module comment).
fn cluster_from_our_units(ws: &Workspace, ips: [&str; 3], net: Net) {
    if net == Net::OwnNamespaces {
        ip(&["link", "add", "br0", "type", "bridge"]);
        ip(&["addr", "add", "10.240.0.1/24", "dev", "br0"]);
        ip(&["link", "set", "br0", "up"]);
    }
    ws.ok(&["controller", "--all", "--format", "dir", "--out", "nodes"]);
    let roots: Vec<PathBuf> = (1..=3)
        .map(|n| ws.path(&format!("nodes/controller-{n}")))
        .collect();
    let logs = ws.path("logs");
    fs::create_dir_all(&logs).unwrap();
    let mut members = Members(Vec::new());
    for (i, root) in roots.iter().enumerate() {
        // The data folder the unit names, as the overlay lays it out.
        let data = root.join("var/lib/etcd");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&data).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let log = fs::File::create(logs.join(format!("etcd-{}.log", i + 1))).unwrap();
        let prefix: Vec<String> = match net {
            Net::SharedLoopback => vec![],
            Net::OwnNamespaces => ["unshare", "-n", "sh", "-c", IN_NAMESPACE, "sh", ips[i]]
                .map(String::from)
                .to_vec(),
        };
        let child = command_of(root, i + 1, net, &prefix)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        if net == Net::OwnNamespaces {
            // The member's link: eth0 in its namespace, veth<n> on the bridge.
            let veth = format!("veth{}", i + 1);
            let pid = child.id().to_string();
            // Once `unshare` has made the member's namespace.
            let ours = fs::read_link("/proc/self/ns/net").unwrap();
            let t = Instant::now();
            while fs::read_link(format!("/proc/{pid}/ns/net")).ok().as_ref() == Some(&ours) {
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "no namespace for member {}",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pid,
            ]);
            ip(&["link", "set", &veth, "master", "br0"]);
            ip(&["link", "set", &veth, "up"]);
        }
        members.0.push(child);
    }
    let all: Vec<String> = ips.iter().map(|ip| format!("https://{ip}:2379")).collect();
    let all = all.join(",");
    let say_logs = || {
        (1..=3)
            .map(|n| {
                let log = fs::read_to_string(logs.join(format!("etcd-{n}.log"))).unwrap();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                format!(
                    "--- member {n}:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    };

    // Three healthy members, over TLS.
    let t = Instant::now();
    let health = loop {
        let out = etcdctl(&roots[0], &all, &["endpoint", "health", "--cluster"]);
        let said = text(&out);
        if out.status.success() && said.matches("is healthy").count() == 3 {
            break said;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "no healthy 3-member cluster after 60 s:\n{said}\n{}",
            say_logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    for ip in ips {
        assert!(
            health.contains(&format!("https://{ip}:2379 is healthy")),
            "{health}"
        );
    }
    let members_list = etcdctl(&roots[0], &all, &["member", "list"]);
    let said = text(&members_list);
    for (n, ip) in ips.iter().enumerate() {
        assert!(
            said.contains(&format!(
                "controller-{}, https://{ip}:2380, https://{ip}:2379",
                n + 1
            )),
            "{said}"
        );
    }

    // Written through member 1, read through member 3.
    let one = format!("https://{}:2379", ips[0]);
    let three = format!("https://{}:2379", ips[2]);
    let put = etcdctl(&roots[0], &one, &["put", "/imgbuild/test", "from-member-1"]);
    assert!(put.status.success(), "{}", text(&put));
    let get = etcdctl(
        &roots[2],
        &three,
        &["get", "--print-value-only", "/imgbuild/test"],
    );
    assert!(get.status.success(), "{}", text(&get));
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "from-member-1");
    // Member 1 also serves this node's own clients on 127.0.0.1 (in its own
    // namespace, where the bundled example's runs).
    if net == Net::SharedLoopback {
        let local = etcdctl(
            &roots[0],
            "https://127.0.0.1:2379",
            &["get", "--print-value-only", "/imgbuild/test"],
        );
        assert!(local.status.success(), "{}", text(&local));
    } else {
        let pid = members.0[0].id().to_string();
        let pki = roots[0].join("var/lib/kubernetes");
        let out = Command::new("nsenter")
            .args([
                "-t",
                &pid,
                "-n",
                ETCDCTL,
                "--endpoints=https://127.0.0.1:2379",
            ])
            .arg(format!("--cacert={}", pki.join("ca.pem").display()))
            .arg(format!("--cert={}", pki.join("kubernetes.pem").display()))
            .arg(format!(
                "--key={}",
                pki.join("kubernetes-key.pem").display()
            ))
            .args(["get", "--print-value-only", "/imgbuild/test"])
            .env("ETCDCTL_API", "3")
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "from-member-1",
            "{}",
            text(&out)
        );
    }

    // A client without a certificate is refused (client-cert auth), whatever
    // it asks; nor does plain HTTP get anywhere.
    let ca = roots[0].join("var/lib/kubernetes/ca.pem");
    let plain = format!("http://{}:2379", ips[0]);
    for (endpoint, cacert, what) in [
        (&one, Some(&ca), "a client without a certificate"),
        (&plain, None, "plain HTTP"),
    ] {
        let mut c = Command::new(ETCDCTL);
        c.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"))
            .args(["--dial-timeout=3s", "--command-timeout=5s"]);
        if let Some(ca) = cacert {
            c.arg(format!("--cacert={}", ca.display()));
        }
        let out = c.args(["get", "/imgbuild/test"]).output().unwrap();
        assert!(!out.status.success(), "{what} got in: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("from-member-1"));
    }
    // The members are still all up (none exited).
    for (n, c) in members.0.iter_mut().enumerate() {
        assert!(
            c.try_wait().unwrap().is_none(),
            "member {} exited:\n{}",
            n + 1,
            say_logs()
        );
    }
}

#[test]
fn a_three_member_cluster_runs_from_our_own_units() {
    let ips = ["127.0.0.11", "127.0.0.12", "127.0.0.13"];
    let ws = workspace(&with_ips(ips));
    cluster_from_our_units(&ws, ips, Net::SharedLoopback);
}

/// The bundled example itself, unchanged: each member in a network
/// namespace of its own with its controller's address, all inside one of the
/// test's own (nothing of this machine's network is touched).
#[test]
fn the_bundled_examples_units_form_a_cluster() {
    let ips = ["10.240.0.11", "10.240.0.12", "10.240.0.13"];
    if std::env::var_os("IMGBUILD_TEST_NETNS").is_none() {
        let exe = std::env::current_exe().unwrap();
        let out = Command::new("unshare")
            .args(["-n", "sh", "-c"])
            .arg("ip link set lo up && exec \"$0\" \"$@\"")
            .arg(exe)
            .args([
                "--exact",
                "the_bundled_examples_units_form_a_cluster",
                "--nocapture",
            ])
            .env("IMGBUILD_TEST_NETNS", "1")
            .output()
            .unwrap();
        let said = text(&out);
        assert!(out.status.success(), "in a network namespace:\n{said}");
        assert!(
            said.contains("1 passed"),
            "did not run in the namespace:\n{said}"
        );
        return;
    }
    let example = fs::read_to_string(Path::new(support::REPO).join("cluster.toml")).unwrap();
    let ws = workspace(&example);
    cluster_from_our_units(&ws, ips, Net::OwnNamespaces);
}

/// v1.10.2's etcd.service against the etcd unit of the 1.10-era hard-way
/// guide (tests/fixtures/seed/etcd-kthw-1.10.toml): the same flags, with this
/// image's certificate files and token; and `--initial-cluster` names the
/// hosts the API server's `--etcd-servers` names, in the same order, on
/// every version.
#[test]
fn seed_fidelity_of_the_etcd_unit() {
    #[derive(serde::Deserialize)]
    struct Guide {
        flags: Vec<String>,
        differ: std::collections::BTreeMap<String, String>,
    }
    let guide: Guide = toml::from_str(&support::fixture("seed/etcd-kthw-1.10.toml")).unwrap();
    for version in ["v1.10.2", "v1.36.0"] {
        let ws = Workspace::builder(version).binaries(4096).build();
        ws.ok(&["controller", "--node", "2", "--format", "dir"]);
        let root = ws.path("out/controller-2");
        let unit = fs::read_to_string(root.join("etc/systemd/system/etcd.service")).unwrap();
        let (_, flags) = imgbuild::input::unit::exec_start(&unit).unwrap();
        let value = |k: &str| {
            flags
                .iter()
                .find(|(f, _)| f == k)
                .and_then(|(_, v)| v.clone())
        };
        let api =
            fs::read_to_string(root.join("etc/systemd/system/kube-apiserver.service")).unwrap();
        let (_, api_flags) = imgbuild::input::unit::exec_start(&api).unwrap();
        let servers = api_flags
            .iter()
            .find(|(f, _)| f == "etcd-servers")
            .and_then(|(_, v)| v.clone())
            .unwrap();
        let api_hosts: Vec<&str> = servers
            .split(',')
            .map(|u| {
                u.strip_prefix("https://")
                    .unwrap()
                    .strip_suffix(":2379")
                    .unwrap()
            })
            .collect();
        let initial = value("initial-cluster").unwrap();
        let peers: Vec<(&str, &str)> = initial
            .split(',')
            .map(|m| {
                let (name, url) = m.split_once('=').unwrap();
                (
                    name,
                    url.strip_prefix("https://")
                        .unwrap()
                        .strip_suffix(":2380")
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(
            peers.iter().map(|(_, h)| *h).collect::<Vec<_>>(),
            api_hosts,
            "{version}: --initial-cluster and --etcd-servers"
        );
        assert_eq!(api_hosts, ["10.240.0.11", "10.240.0.12", "10.240.0.13"]);
        assert_eq!(
            peers.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["controller-1", "controller-2", "controller-3"]
        );
        if version != "v1.10.2" {
            continue;
        }
        // The guide's flags, in its order, each with the guide's value but
        // where this image differs on purpose (its own certificate per node,
        // the cluster's name in the token).
        let names: Vec<&str> = flags.iter().map(|(f, _)| f.as_str()).collect();
        let mut want: Vec<&str> = guide
            .flags
            .iter()
            .map(|f| f.split('=').next().unwrap())
            .collect();
        let mut ours = names.clone();
        want.sort();
        ours.sort();
        assert_eq!(ours, want, "v1.10.2 etcd.service flags against the guide's");
        for f in &guide.flags {
            let (k, v) = f
                .split_once('=')
                .map_or((f.as_str(), None), |(k, v)| (k, Some(v)));
            let v = v.map(|v| {
                v.replace("${ETCD_NAME}", "controller-2")
                    .replace("${INTERNAL_IP}", "10.240.0.12")
                    .replace("${NODE1_INTERNAL_IP}", "10.240.0.11")
                    .replace("${NODE2_INTERNAL_IP}", "10.240.0.12")
                    .replace("${NODE3_INTERNAL_IP}", "10.240.0.13")
            });
            let v = guide.differ.get(k).cloned().or(v);
            assert_eq!(value(k), v, "--{k}");
        }
    }
}

/// Upstream etcd builds before 3.5 refuse to start on arm64 unless told to:
/// v1.10.2's etcd 3.3.10 unit says so on arm64, and only there.
#[test]
fn etcd_before_3_5_on_arm64_is_told_it_may_run() {
    let line = "Environment=ETCD_UNSUPPORTED_ARCH=arm64\n";
    for (version, arch, want) in [
        ("v1.10.2", "arm64", true),
        ("v1.10.2", "amd64", false),
        ("v1.36.0", "arm64", false),
    ] {
        let ws = Workspace::builder(version)
            .arch(arch)
            .binaries(4096)
            .build();
        ws.ok(&["controller", "--node", "1", "--format", "dir"]);
        let unit = fs::read_to_string(ws.path("out/controller-1/etc/systemd/system/etcd.service"))
            .unwrap();
        assert_eq!(unit.contains(line), want, "{version} {arch}:\n{unit}");
    }
}
