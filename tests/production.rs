//! Issue 18, a control plane an expert would ship (v1.34 and later): the
//! audit policy, the inventory's control-plane keys, the lint rules for flags
//! that need another, nginx verifying the API server as the default server,
//! and the RBAC one-shot's bounds. Checked with the real consumers where
//! there is one here (nginx, openssl, dash).

mod support;

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Workspace, untar};

fn build(ws: &Workspace, node: &str) -> PathBuf {
    ws.ok(&["controller", "--node", node]);
    let root = ws.path(&format!("root-{node}"));
    fs::create_dir_all(&root).unwrap();
    untar(&ws.path(&format!("out/controller-{node}.tar.gz")), &root);
    root
}

fn read(root: &Path, rel: &str) -> String {
    fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn with_inventory(ws: &Workspace, extra: &str) {
    let inv = fs::read_to_string(ws.path("cluster.toml")).unwrap();
    fs::write(ws.path("cluster.toml"), format!("{inv}\n{extra}\n")).unwrap();
}

// ---------------------------------------------------------------------------
// The audit policy
// ---------------------------------------------------------------------------

/// One request, as the audit policy's rules see it.
struct Request<'a> {
    user: &'a str,
    groups: &'a [&'a str],
    verb: &'a str,
    /// (group, resource, namespace), or a non-resource path.
    resource: Result<(&'a str, &'a str, &'a str), &'a str>,
}

fn list_has(rule: &Value, key: &str, value: &str) -> bool {
    match rule.get(key) {
        None => true,
        Some(v) => v
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x.as_str() == Some(value)),
    }
}

/// The level of the first rule that matches, as the API server's policy
/// evaluator decides (k8s.io/apiserver/pkg/audit/policy, checker.go).
fn level(policy: &Value, r: &Request) -> String {
    for rule in policy["rules"].as_array().unwrap() {
        if !list_has(rule, "users", r.user) || !list_has(rule, "verbs", r.verb) {
            continue;
        }
        if let Some(g) = rule.get("userGroups")
            && !r
                .groups
                .iter()
                .any(|x| g.as_array().unwrap().iter().any(|y| y.as_str() == Some(x)))
        {
            continue;
        }
        let matched = match r.resource {
            Err(path) => {
                rule.get("resources").is_none()
                    && rule.get("namespaces").is_none()
                    && rule.get("nonResourceURLs").is_none_or(|urls| {
                        urls.as_array().unwrap().iter().any(|u| {
                            let u = u.as_str().unwrap();
                            match u.strip_suffix('*') {
                                Some(prefix) => path.starts_with(prefix),
                                None => path == u,
                            }
                        })
                    })
            }
            Ok((group, resource, ns)) => {
                rule.get("nonResourceURLs").is_none()
                    && list_has(rule, "namespaces", ns)
                    && rule.get("resources").is_none_or(|rs| {
                        rs.as_array().unwrap().iter().any(|g| {
                            g["group"].as_str().unwrap_or("") == group
                                && g.get("resources").is_none_or(|names| {
                                    names
                                        .as_array()
                                        .unwrap()
                                        .iter()
                                        .any(|n| n.as_str() == Some(resource))
                                })
                        })
                    })
            }
        };
        if matched {
            return rule["level"].as_str().unwrap().to_string();
        }
    }
    "None".into()
}

#[test]
fn the_audit_policy_is_in_use_and_logs_what_it_should() {
    let ws = Workspace::new("v1.36.0");
    let root = build(&ws, "1");
    let unit = read(&root, "etc/systemd/system/kube-apiserver.service");
    assert!(
        unit.contains("--audit-policy-file=/etc/kubernetes/config/audit-policy.yaml")
            && unit.contains("--audit-log-path=/var/log/audit.log")
            && unit.contains("--audit-log-maxage=30")
            && unit.contains("--audit-log-maxbackup=3")
            && unit.contains("--audit-log-maxsize=100"),
        "{unit}"
    );
    let text = read(&root, "etc/kubernetes/config/audit-policy.yaml");
    let policy: Value = serde_yaml_ng::from_str(&text).unwrap();
    assert_eq!(policy["apiVersion"], "audit.k8s.io/v1");
    assert_eq!(policy["kind"], "Policy");
    // Only fields of audit.k8s.io/v1 PolicyRule (k8s.io/apiserver/pkg/apis/audit/v1).
    let known = [
        "level",
        "users",
        "userGroups",
        "verbs",
        "resources",
        "namespaces",
        "nonResourceURLs",
        "omitStages",
        "omitManagedFields",
    ];
    let rules = policy["rules"].as_array().unwrap();
    assert!(!rules.is_empty(), "a policy without rules is refused");
    for rule in rules {
        for k in rule.as_object().unwrap().keys() {
            assert!(known.contains(&k.as_str()), "unknown rule field {k}");
        }
        assert!(
            ["None", "Metadata", "Request", "RequestResponse"]
                .contains(&rule["level"].as_str().unwrap()),
            "{rule}"
        );
        for g in rule
            .get("resources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for k in g.as_object().unwrap().keys() {
                assert!(["group", "resources", "resourceNames"].contains(&k.as_str()));
            }
        }
    }
    let admin: &[&str] = &["system:masters"];
    let node: &[&str] = &["system:nodes"];
    let cases = [
        // Credentials are never logged with their bodies.
        (
            ("admin", admin, "create", Ok(("", "secrets", "default"))),
            "Metadata",
        ),
        (
            ("admin", admin, "get", Ok(("", "secrets", "default"))),
            "Metadata",
        ),
        (
            (
                "admin",
                admin,
                "update",
                Ok(("", "configmaps", "kube-system")),
            ),
            "Metadata",
        ),
        (
            (
                "system:kube-controller-manager",
                &[][..],
                "create",
                Ok(("authentication.k8s.io", "tokenreviews", "")),
            ),
            "Metadata",
        ),
        (
            (
                "admin",
                admin,
                "create",
                Ok(("", "serviceaccounts/token", "default")),
            ),
            "Metadata",
        ),
        // RBAC changes with request and response; workload changes with the request.
        (
            (
                "admin",
                admin,
                "create",
                Ok(("rbac.authorization.k8s.io", "clusterrolebindings", "")),
            ),
            "RequestResponse",
        ),
        (
            (
                "admin",
                admin,
                "patch",
                Ok(("rbac.authorization.k8s.io", "roles", "default")),
            ),
            "RequestResponse",
        ),
        (
            (
                "admin",
                admin,
                "create",
                Ok(("apps", "deployments", "default")),
            ),
            "Request",
        ),
        (
            ("admin", admin, "delete", Ok(("", "pods", "default"))),
            "Request",
        ),
        (
            ("admin", admin, "create", Ok(("", "pods/exec", "default"))),
            "Request",
        ),
        // Reads by people: who looked at what.
        (
            ("admin", admin, "list", Ok(("", "pods", "default"))),
            "Metadata",
        ),
        // Noisy read-only system traffic: nothing.
        (("system:anonymous", &[][..], "get", Err("/readyz")), "None"),
        (
            ("system:anonymous", &[][..], "get", Err("/healthz/etcd")),
            "None",
        ),
        (
            ("system:anonymous", &[][..], "get", Err("/version")),
            "None",
        ),
        (
            ("system:node:worker-0", node, "get", Ok(("", "nodes", ""))),
            "None",
        ),
        (
            (
                "system:kube-proxy",
                &[][..],
                "watch",
                Ok(("discovery.k8s.io", "endpointslices", "")),
            ),
            "None",
        ),
        (
            (
                "system:kube-scheduler",
                &[][..],
                "update",
                Ok(("coordination.k8s.io", "leases", "kube-system")),
            ),
            "None",
        ),
        (
            (
                "system:kube-controller-manager",
                &[][..],
                "create",
                Ok(("", "events", "default")),
            ),
            "None",
        ),
        // A non-resource request nobody listed: metadata.
        (("admin", admin, "get", Err("/metrics")), "Metadata"),
    ];
    for ((user, groups, verb, resource), want) in cases {
        let r = Request {
            user,
            groups,
            verb,
            resource,
        };
        assert_eq!(level(&policy, &r), want, "{user} {verb} {:?}", r.resource);
    }
    // The seed's version keeps the seed's unit: no policy file.
    let seed = Workspace::new("v1.10.2");
    let root = build(&seed, "1");
    assert!(
        !root
            .join("etc/kubernetes/config/audit-policy.yaml")
            .exists()
    );
}

// ---------------------------------------------------------------------------
// Lint: flags that need another
// ---------------------------------------------------------------------------

#[test]
fn lint_warns_when_a_flag_lacks_what_it_needs() {
    // The seed's own units log audit events to a file without a policy: warned.
    let seed = Workspace::builder("v1.10.2").no_binaries().build();
    let out = seed.run(&["lint"]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("kube-apiserver --audit-log-path has no effect without --audit-policy-file")
            && said.contains("If the flag is omitted, no events are logged"),
        "{said}"
    );
    // Current versions ship the policy: no such warning; nor for cluster-cidr.
    let ws = Workspace::builder("v1.36.0").no_binaries().build();
    let said = ws.ok(&["lint"]);
    assert!(!said.contains("has no effect"), "{said}");
    // --cluster-cidr through extra_args while node CIDRs are not allocated.
    with_inventory(
        &ws,
        "[controller_manager.extra_args]\ncluster-cidr = \"10.200.0.0/16\"",
    );
    let said = ws.ok(&["lint"]);
    assert!(
        said.contains("--cluster-cidr (from [controller_manager.extra_args] in the inventory) has no effect without --allocate-node-cidrs=true"),
        "{said}"
    );
    // A webhook audit backend without a policy: the same rule (here the policy is set).
    let ws = Workspace::builder("v1.36.0").no_binaries().build();
    with_inventory(
        &ws,
        "[apiserver.extra_args]\naudit-webhook-config-file = \"/etc/kubernetes/audit-webhook.yaml\"",
    );
    assert!(!ws.ok(&["lint"]).contains("has no effect"));
}

// ---------------------------------------------------------------------------
// The inventory's control-plane keys
// ---------------------------------------------------------------------------

fn flags(unit: &str) -> Vec<(String, Option<String>)> {
    imgbuild::input::unit::exec_start(unit).unwrap().1
}

fn flag(unit: &str, name: &str) -> Option<Option<String>> {
    flags(unit)
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[test]
fn control_plane_keys_render_and_are_validated() {
    // Defaults: no alpha APIs, loopback secure ports, no node CIDRs.
    let ws = Workspace::new("v1.36.0");
    let root = build(&ws, "1");
    let api = read(&root, "etc/systemd/system/kube-apiserver.service");
    let cm = read(&root, "etc/systemd/system/kube-controller-manager.service");
    let sched = read(&root, "etc/systemd/system/kube-scheduler.service");
    assert_eq!(flag(&api, "runtime-config"), None);
    assert_eq!(flag(&cm, "bind-address"), Some(Some("127.0.0.1".into())));
    assert_eq!(flag(&sched, "bind-address"), Some(Some("127.0.0.1".into())));
    assert_eq!(flag(&cm, "allocate-node-cidrs"), Some(Some("false".into())));
    assert_eq!(flag(&cm, "cluster-cidr"), None);
    assert_eq!(
        flag(&cm, "use-service-account-credentials"),
        Some(Some("true".into()))
    );
    for (unit, kc) in [(&cm, "kube-controller-manager"), (&sched, "kube-scheduler")] {
        for f in ["authentication-kubeconfig", "authorization-kubeconfig"] {
            assert_eq!(
                flag(unit, f),
                Some(Some(format!("/var/lib/kubernetes/{kc}.kubeconfig"))),
                "{f}"
            );
        }
    }
    for (f, v) in [
        ("enable-aggregator-routing", "true"),
        ("requestheader-allowed-names", "front-proxy-client"),
        (
            "requestheader-client-ca-file",
            "/var/lib/kubernetes/front-proxy-ca.pem",
        ),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-"),
        ("requestheader-group-headers", "X-Remote-Group"),
        ("requestheader-username-headers", "X-Remote-User"),
        (
            "proxy-client-cert-file",
            "/var/lib/kubernetes/front-proxy-client.pem",
        ),
        (
            "proxy-client-key-file",
            "/var/lib/kubernetes/front-proxy-client-key.pem",
        ),
    ] {
        assert_eq!(flag(&api, f), Some(Some(v.into())), "{f}");
        let file = v.strip_prefix('/').map(|p| root.join(p));
        if let Some(file) = file {
            assert!(file.is_file(), "{} is not in the overlay", file.display());
        }
    }

    // Asked for: API groups, node CIDRs, another bind address.
    let ws = Workspace::new("v1.36.0");
    with_inventory(
        &ws,
        "[apiserver]\nruntime_config = [\"resource.k8s.io/v1beta2\", \"storage.k8s.io/v1alpha1/volumeattributesclasses=false\"]\n\
         [controller_manager]\nallocate_node_cidrs = true\nbind_address = \"0.0.0.0\"\n\
         [scheduler]\nbind_address = \"10.240.0.11\"\n",
    );
    let root = build(&ws, "1");
    let api = read(&root, "etc/systemd/system/kube-apiserver.service");
    let cm = read(&root, "etc/systemd/system/kube-controller-manager.service");
    let sched = read(&root, "etc/systemd/system/kube-scheduler.service");
    assert_eq!(
        flag(&api, "runtime-config"),
        Some(Some(
            "resource.k8s.io/v1beta2=true,storage.k8s.io/v1alpha1/volumeattributesclasses=false"
                .into()
        ))
    );
    assert_eq!(flag(&cm, "allocate-node-cidrs"), Some(Some("true".into())));
    assert_eq!(
        flag(&cm, "cluster-cidr"),
        Some(Some("10.200.0.0/16".into()))
    );
    assert_eq!(flag(&cm, "bind-address"), Some(Some("0.0.0.0".into())));
    assert_eq!(
        flag(&sched, "bind-address"),
        Some(Some("10.240.0.11".into()))
    );
    assert!(!ws.ok(&["lint"]).contains("has no effect"));

    // Refused, naming the key and why.
    for (extra, want) in [
        (
            "[apiserver]\nruntime_config = [\"api/all=true\"]",
            "every alpha API",
        ),
        (
            "[apiserver]\nruntime_config = [\"resource.k8s.io/v1beta2=on\"]",
            "true or false",
        ),
        (
            "[apiserver]\nruntime_config = [\"a.io/v1\", \"a.io/v1=false\"]",
            "appears twice",
        ),
        (
            "[apiserver.extra_args]\nruntime-config = \"api/all=true\"",
            "set it with `runtime_config` in [apiserver]",
        ),
        (
            "[scheduler.extra_args]\nbind-address = \"0.0.0.0\"",
            "set it with `bind_address` in [scheduler]",
        ),
        (
            "[controller_manager]\nbind_address = \"everywhere\"",
            "controller_manager.bind_address",
        ),
        (
            "[controller_manager]\nallocate_node_cidrs = \"yes\"",
            "allocate_node_cidrs",
        ),
        ("[rbac_bootstrap]\nremove_admin = true", "unknown field"),
    ] {
        let ws = Workspace::builder("v1.36.0").no_binaries().build();
        with_inventory(&ws, extra);
        let err = ws.fails(&["lint"], 2);
        assert!(err.contains(want), "{extra}: {err}");
    }
    // The seed's version keeps the seed's units: the keys are refused there.
    for extra in [
        "[apiserver]\nruntime_config = [\"resource.k8s.io/v1beta2\"]",
        "[rbac_bootstrap]\nremove_admin_kubeconfig = false",
        "[controller_manager]\nallocate_node_cidrs = true",
    ] {
        let ws = Workspace::builder("v1.10.2").no_binaries().build();
        with_inventory(&ws, extra);
        let err = ws.fails(&["lint"], 2);
        assert!(
            err.contains("needs cluster.kubernetes_version v1.34"),
            "{err}"
        );
    }
}

// ---------------------------------------------------------------------------
// The RBAC one-shot
// ---------------------------------------------------------------------------

fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in\n{unit}"))
}

#[test]
fn the_rbac_oneshot_retries_forever_with_bounded_attempts() {
    for (remove, want) in [
        ("", "true"),
        ("[rbac_bootstrap]\nremove_admin_kubeconfig = false", "false"),
    ] {
        let ws = Workspace::new("v1.36.0");
        with_inventory(&ws, remove);
        let root = build(&ws, "1");
        let unit = read(&root, "etc/systemd/system/kube-rbac-bootstrap.service");
        assert_eq!(unit_value(&unit, "Restart"), "on-failure");
        assert_eq!(unit_value(&unit, "StartLimitIntervalSec"), "0");
        assert_eq!(unit_value(&unit, "Type"), "oneshot");
        assert!(!unit.contains("ConditionPathExists"), "{unit}");
        let env: std::collections::BTreeMap<&str, &str> = unit_value(&unit, "Environment")
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let secs = |v: &str| -> u64 {
            let v = v.trim_end_matches('s');
            match v.strip_suffix("min") {
                Some(m) => m.parse::<u64>().unwrap() * 60,
                None => v.parse().unwrap(),
            }
        };
        // The worst attempt: two kubectl calls cut by timeout(1), then the longest wait.
        let worst = 2 * secs(env["CALL_TIMEOUT"]) + secs(env["BACKOFF_MAX"]);
        let timeout = secs(unit_value(&unit, "TimeoutStartSec"));
        assert!(
            worst < timeout,
            "an attempt may take {worst}s, TimeoutStartSec is {timeout}s"
        );
        // Each request is bounded too, well inside the call's bound.
        assert!(secs(env["REQUEST_TIMEOUT"]) * 3 <= secs(env["CALL_TIMEOUT"]));
        let script = read(&root, "usr/local/lib/imgbuild/kube-rbac-bootstrap");
        assert!(script.contains(&format!("REMOVE_ADMIN_KUBECONFIG={want}\n")));
        assert!(script.contains("timeout \"$CALL_TIMEOUT\""));
        assert!(script.contains("--request-timeout=\"$REQUEST_TIMEOUT\""));
        for shell in ["/bin/sh", "/bin/bash"] {
            for s in [
                "usr/local/lib/imgbuild/kube-rbac-bootstrap",
                "usr/local/bin/kube-control-plane-check",
            ] {
                let out = Command::new(shell)
                    .arg("-n")
                    .arg(root.join(s))
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{shell} -n {s}: {}",
                    support::text(&out)
                );
            }
        }
    }
}

/// The growing wait: the script's arithmetic, run by dash with the shipped
/// knobs (a stand-in `sleep` records instead of waiting).
#[test]
fn the_wait_between_attempts_doubles_up_to_its_cap() {
    let ws = Workspace::new("v1.36.0");
    let root = build(&ws, "1");
    let script = read(&root, "usr/local/lib/imgbuild/kube-rbac-bootstrap");
    let start = script.find("delay=$BACKOFF_FIRST").unwrap();
    let end = script.find("sleep \"$delay\"").unwrap();
    let body = &script[start..end];
    let mut waits = Vec::new();
    for attempt in 1..=9 {
        let out = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "BACKOFF_FIRST=5 BACKOFF_MAX=120 attempt={attempt} why=x\n{body}\necho \"$delay\""
            ))
            .stderr(Stdio::null())
            .output()
            .unwrap();
        waits.push(
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u32>()
                .unwrap(),
        );
    }
    assert_eq!(waits, [5, 10, 20, 40, 80, 120, 120, 120, 120]);
}

// ---------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nginx(prefix: &Path, args: &[&str]) -> std::process::Output {
    Command::new("nginx")
        .arg("-p")
        .arg(prefix)
        .arg("-c")
        .arg(prefix.join("nginx.conf"))
        .args(args)
        .output()
        .expect("nginx is installed (.ci/run installs nginx-light)")
}

/// nginx -t accepts the v1.36.0 server block next to Debian's default site
/// (which claims `listen 80 default_server` itself); then nginx runs it, as a
/// load balancer calls it without a Host header, against a TLS server with
/// the node's kubernetes.pem: 200 when the certificate verifies for the name
/// `kubernetes`, 502 when the name or the CA is not the API server's.
#[test]
fn nginx_verifies_the_api_server_and_is_this_nodes_default_server() {
    let ws = Workspace::new("v1.36.0");
    let root = build(&ws, "1");
    let conf = read(&root, "etc/nginx/conf.d/kubernetes-healthz.conf");
    for want in [
        "proxy_ssl_verify              on;",
        "proxy_ssl_name                kubernetes;",
        "listen      10.240.0.11:80 default_server;",
        "listen      127.0.0.1:80 default_server;",
        "location /readyz",
        "location /livez",
        "location /healthz",
    ] {
        assert!(conf.contains(want), "{want} missing:\n{conf}");
    }
    let api_cert = support::sh(
        Command::new("openssl")
            .args(["x509", "-noout", "-ext", "subjectAltName", "-in"])
            .arg(root.join("var/lib/kubernetes/kubernetes.pem")),
    );
    assert!(api_cert.contains("DNS:kubernetes,"), "{api_cert}");
    let conf = conf.replace(
        "/var/lib/kubernetes/",
        &format!("{}/var/lib/kubernetes/", root.display()),
    );
    let prefix = ws.path("nginx");
    fs::create_dir_all(prefix.join("logs")).unwrap();
    let debian_default = "server {\n  listen 80 default_server;\n  listen [::]:80 default_server;\n  root /var/www/html;\n  server_name _;\n}\n";
    let main = |site: &str, body: &str| {
        fs::write(prefix.join("site.conf"), site).unwrap();
        fs::write(prefix.join("default.conf"), debian_default).unwrap();
        fs::write(
            prefix.join("nginx.conf"),
            format!(
                "error_log {p}/logs/error.log;\npid {p}/nginx.pid;\n{body}events {{}}\nhttp {{\n  access_log off;\n  include {p}/default.conf;\n  include {p}/site.conf;\n}}\n",
                p = prefix.display()
            ),
        )
        .unwrap();
    };
    main(&conf, "");
    let out = nginx(&prefix, &["-t"]);
    assert!(out.status.success(), "nginx -t: {}", support::text(&out));
    // The check has teeth: `listen 80 default_server` beside Debian's site fails.
    main(
        &conf.replace("listen      80;", "listen      80 default_server;"),
        "",
    );
    let out = nginx(&prefix, &["-t"]);
    assert!(
        !out.status.success() && support::text(&out).contains("duplicate default server"),
        "{}",
        support::text(&out)
    );

    // Running it: nginx on a free port in front of openssl s_server with the node's certificate.
    let (port, upstream) = (free_port(), free_port());
    let keys = root.join("var/lib/kubernetes");
    let mut server = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-accept"])
        .arg(format!("127.0.0.1:{upstream}"))
        .arg("-cert")
        .arg(keys.join("kubernetes.pem"))
        .arg("-key")
        .arg(keys.join("kubernetes-key.pem"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // s_server listens once it has read its key: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", upstream)).is_err() {
        assert!(Instant::now() < deadline, "openssl s_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let local = |c: &str| {
        c.replace(
            "https://127.0.0.1:6443",
            &format!("https://127.0.0.1:{upstream}"),
        )
        .replace("listen      80;", &format!("listen      {port};"))
        .replace(":80 default_server", &format!(":{port} default_server"))
    };
    let get = |path: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!("http://127.0.0.1:{port}{path}"))
                .output()
                .unwrap();
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code != "000" || Instant::now() > deadline {
                return code;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let debian_here = format!(
        "server {{\n  listen {} default_server;\n  server_name _;\n  return 404;\n}}\n",
        free_port()
    );
    for (variant, path, want) in [
        (local(&conf), "/readyz", "200"),
        (local(&conf), "/livez", "200"),
        (local(&conf), "/healthz", "200"),
        (
            local(&conf).replace(
                "proxy_ssl_name                kubernetes;",
                "proxy_ssl_name                not-the-api-server;",
            ),
            "/readyz",
            "502",
        ),
        (
            local(&conf).replace(
                &format!("{}/var/lib/kubernetes/ca.pem", root.display()),
                &format!("{}/var/lib/kubernetes/front-proxy-ca.pem", root.display()),
            ),
            "/readyz",
            "502",
        ),
    ] {
        fs::write(prefix.join("default.conf"), &debian_here).unwrap();
        fs::write(prefix.join("site.conf"), &variant).unwrap();
        fs::write(
            prefix.join("nginx.conf"),
            format!(
                "error_log {p}/logs/error.log;\npid {p}/nginx.pid;\ndaemon off;\nmaster_process off;\nevents {{}}\nhttp {{\n  access_log off;\n  include {p}/default.conf;\n  include {p}/site.conf;\n}}\n",
                p = prefix.display()
            ),
        )
        .unwrap();
        let mut n = Command::new("nginx")
            .arg("-p")
            .arg(&prefix)
            .arg("-c")
            .arg(prefix.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let code = get(path);
        let _ = n.kill();
        let _ = n.wait();
        assert_eq!(code, want, "{path}:\n{variant}");
    }
    let _ = server.kill();
    let _ = server.wait();
}

// ---------------------------------------------------------------------------
// cloud-init
// ---------------------------------------------------------------------------

/// `packages: [nginx]` unless `--no-packages` (nginx already in the image, as
/// on an air-gapped node), and `cloud-init schema` accepts both; the seed's
/// version keeps its user-data (runcmd, no packages).
#[test]
fn cloud_init_installs_nginx_unless_told_not_to() {
    let schema = |ud: &Path| {
        let out = Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(ud)
            .output()
            .expect("cloud-init must be installed");
        assert!(
            out.status.success() && support::text(&out).contains("Valid cloud-config"),
            "{}",
            support::text(&out)
        );
    };
    let ws = Workspace::new("v1.36.0");
    ws.ok(&["cloud-init", "--node", "1", "--out", "with"]);
    ws.ok(&[
        "cloud-init",
        "--node",
        "1",
        "--no-packages",
        "--out",
        "without",
    ]);
    let with = ws.path("with/controller-1-cloud-init/user-data");
    let without = ws.path("without/controller-1-cloud-init/user-data");
    schema(&with);
    schema(&without);
    let (with, without) = (
        fs::read_to_string(&with).unwrap(),
        fs::read_to_string(&without).unwrap(),
    );
    assert!(with.contains("\npackages:\n- \"nginx\"\n"), "{with}");
    assert!(!without.contains("\npackages:"), "{without}");
    assert!(with.contains("/var/lib/cloud/scripts/per-boot/imgbuild-node"));
    ws.ok(&["inspect", "--verify", "with/controller-1-cloud-init"]);
    let seed = Workspace::new("v1.10.2");
    seed.ok(&["cloud-init", "--node", "1"]);
    let ud = fs::read_to_string(seed.path("out/controller-1-cloud-init/user-data")).unwrap();
    assert!(
        !ud.contains("\npackages:") && ud.contains("runcmd:"),
        "{ud}"
    );
}
