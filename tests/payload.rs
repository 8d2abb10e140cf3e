//! `imgbuild cloud-init --payload-url`: the node's own files in
//! `controller-N-payload.tar.gz`, a small user-data whose boot script fetches,
//! verifies and unpacks it. Checked by the real consumers: `cloud-init schema`,
//! cloud-init's write_files and scripts-per-boot modules, and the boot script
//! itself run by dash and by busybox sh against a loopback HTTP server, in a
//! temporary root; the tree it installs is compared with `--format dir`.

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use support::http_mirror::Mirror;
use support::{REPO, Workspace, sha256_bytes, sha256_file, text, tree};

/// Where the user-data writes the boot script (cloud-init's per-boot folder).
const SCRIPT: &str = "var/lib/cloud/scripts/per-boot/imgbuild-payload";
/// What the script records once it has succeeded.
const MARKER: &str = "var/lib/imgbuild/payload.done";

fn manifest(ws: &Workspace, node: usize) -> serde_json::Value {
    let bytes = fs::read(ws.path(&format!("out/controller-{node}.manifest.json"))).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Path → what is there, for everything under a folder.
type Tree = BTreeMap<String, support::Node>;

/// A boot of the node whose root is `root`: cloud-init's scripts-per-boot
/// module (tests/tools/cloud_init_per_boot.py) with the stand-ins of `stubs`
/// first on the PATH.
fn per_boot(root: &Path, stubs: &Path, tmp: &Path) -> std::process::Output {
    Command::new("/usr/bin/python3")
        .arg(Path::new(REPO).join("tests/tools/cloud_init_per_boot.py"))
        .arg(root.join("var/lib/cloud"))
        .env_clear()
        .env("PATH", format!("{}:/usr/bin:/bin", stubs.display()))
        .env("IMGBUILD_ROOT", root)
        .env("TMPDIR", tmp)
        .output()
        .unwrap()
}

/// The tree `--format dir` writes for node `node`, and the paths of the
/// binaries and their folders in it (the manifest's shared entries).
fn folder_output(ws: &Workspace, node: usize) -> (Tree, Vec<String>) {
    let out = format!("dir-{node}");
    ws.ok_dir(&node.to_string(), &out, &[]);
    let m: serde_json::Value = serde_json::from_slice(
        &fs::read(ws.path(&format!("{out}/controller-{node}.manifest.json"))).unwrap(),
    )
    .unwrap();
    let shared = m["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["shared"] == true)
        .map(|e| {
            e["path"]
                .as_str()
                .unwrap()
                .trim_start_matches('/')
                .to_string()
        })
        .collect();
    (tree(&ws.path(&format!("{out}/controller-{node}"))), shared)
}

/// The units the non-payload user-data of node 1 starts, in order, as the
/// `systemctl` arguments its per-boot script (v1.34 on) passes.
fn units_started_by_runcmd(ws: &Workspace) -> String {
    ws.ok(&["cloud-init", "--node", "1", "--out", "runcmd"]);
    let ud = fs::read_to_string(ws.path("runcmd/controller-1-cloud-init/user-data")).unwrap();
    let mut calls = String::new();
    for line in ud.lines().map(str::trim) {
        if line == "systemctl daemon-reload" {
            calls.push_str("daemon-reload\n");
        } else if let Some(unit) = line.strip_prefix("start ") {
            calls.push_str(&format!("start --no-block {unit}\n"));
        }
    }
    assert!(
        calls.contains("start --no-block kube-apiserver.service"),
        "{ud}"
    );
    calls
}

/// A folder with a `systemctl` that records its arguments in `systemctl.log`
/// beside it, so the script's units are not started on this machine.
fn stubs(dir: &Path) -> PathBuf {
    let bin = dir.join("stubs");
    fs::create_dir_all(&bin).unwrap();
    let log = dir.join("systemctl.log");
    let stub = bin.join("systemctl");
    fs::write(
        &stub,
        format!("#!/bin/sh\necho \"$*\" >>'{}'\n", log.display()),
    )
    .unwrap();
    fs::set_permissions(&stub, fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

fn systemctl_calls(dir: &Path) -> String {
    fs::read_to_string(dir.join("systemctl.log")).unwrap_or_default()
}

/// cloud-init's own write_files module writes the user-data's files under
/// `root`, as a booting node would under `/` (tests/tools/cloud_init_write_files.py).
fn write_files(user_data: &Path, root: &Path) {
    let tool = Path::new(REPO).join("tests/tools/cloud_init_write_files.py");
    let out = Command::new("/usr/bin/python3")
        .arg(tool)
        .arg(user_data)
        .arg(root)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let script = root.join(SCRIPT);
    assert_eq!(
        fs::metadata(&script).unwrap().permissions().mode() & 0o777,
        0o700
    );
}

/// A shell, and the PATH it runs the script with.
#[derive(Clone, Copy, Debug)]
enum Shell {
    /// /bin/sh (dash), with curl, GNU tar and coreutils.
    Dash,
    /// busybox sh with nothing but busybox's applets (wget, tar, sha256sum, ...).
    Busybox,
}

/// The shipped script (`script`, as cloud-init wrote it) run by `shell`
/// with the root `IMGBUILD_ROOT` and temporary files in `tmp`.
fn script_command(shell: Shell, script: &Path, root: &Path, tmp: &Path, stubs: &Path) -> Command {
    let (mut cmd, path) = match shell {
        Shell::Dash => (
            Command::new("/bin/sh"),
            format!("{}:/usr/bin:/bin", stubs.display()),
        ),
        Shell::Busybox => {
            let mut c = Command::new("/usr/bin/busybox");
            c.arg("sh");
            (c, stubs.display().to_string())
        }
    };
    cmd.arg(script)
        .env_clear()
        .env("PATH", path)
        .env("IMGBUILD_ROOT", root)
        .env("TMPDIR", tmp);
    cmd
}

/// A port of 127.0.0.1 that nothing listens on (yet).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The "done when": the bundled example's node 1 for AWS with a
/// payload URL: a small valid user-data naming the payload's digest; the
/// payload is the split node half byte for byte; the manifest lists it, and
/// `inspect --verify` checks the payload, the folder and the seed volume.
#[test]
fn aws_user_data_of_the_example_is_small_and_names_the_payload() {
    let ws = Workspace::builder("v1.36.0").guard_secrets().build();
    let stdout = ws.ok(&[
        "cloud-init",
        "--node",
        "1",
        "--provider",
        "aws",
        "--payload-url",
        "https://example.invalid/{name}.tar.gz",
    ]);
    let ud_path = ws.path("out/controller-1-cloud-init/user-data");
    let ud = fs::read(&ud_path).unwrap();
    println!(
        "user-data for AWS: {} bytes\n{}",
        ud.len(),
        String::from_utf8_lossy(&ud)
    );
    assert!(ud.len() <= 16_384, "{} bytes", ud.len());
    assert!(ud.len() < 4096, "about 2 KB expected, {} bytes", ud.len());
    assert_eq!(
        stdout,
        format!(
            "out/controller-1-cloud-init\tuser-data {} bytes (the aws limit is 16384)\n\
             out/controller-1-payload.tar.gz\tupload to https://example.invalid/controller-1.tar.gz\n",
            ud.len()
        )
    );
    support::cloud_init_schema_ok(&ud_path);

    let payload = ws.path("out/controller-1-payload.tar.gz");
    assert_eq!(
        fs::metadata(&payload).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let digest = sha256_file(&payload);
    let text = String::from_utf8(ud).unwrap();
    assert!(text.contains(&format!("\n    sha256={digest}\n")), "{text}");
    assert!(text.contains("\n    url=https://example.invalid/controller-1.tar.gz\n"));
    assert!(!text.contains("PRIVATE KEY") && !text.contains("client-key-data"));

    let m = manifest(&ws, 1);
    let listed = m["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "controller-1-payload.tar.gz")
        .expect("the payload in the manifest's outputs");
    assert_eq!(listed["sha256"], digest.as_str());
    assert_eq!(listed["format"], "cloud-init (binaries baked, payload)");

    // The payload is the node half of --split, byte for byte.
    ws.ok(&["controller", "--node", "1", "--split", "--out", "split"]);
    assert_eq!(
        fs::read(&payload).unwrap(),
        fs::read(ws.path("split/controller-1-node.tar.gz")).unwrap()
    );

    for target in [
        "out/controller-1-payload.tar.gz",
        "out/controller-1-cloud-init",
        "out/controller-1-cloud-init/seed.img",
    ] {
        let m = "out/controller-1.manifest.json";
        let out = ws.run(&["inspect", "--verify", target, "--manifest", m]);
        assert!(out.status.success(), "{target}: {}", support::text(&out));
    }
    // The folder lists the payload beside it: the node's own entries.
    let listing = ws.ok(&["inspect", "out/controller-1-cloud-init"]);
    assert!(
        listing.contains("/var/lib/kubernetes/ca-key.pem"),
        "{listing}"
    );
    assert!(
        !listing.contains("/usr/local/bin/kube-apiserver"),
        "{listing}"
    );
}

/// The boot script, run for real with dash and with busybox sh: the server is
/// down at first and comes up 2 s later (the script waits for it); the
/// download carries the header file's header as it is; the binaries come from the
/// mirror, verified; the tree it installs equals `--format dir` exactly (the
/// binaries included); the units are enabled and started in the layout's
/// order; and running it again (the next boot) does nothing.
#[test]
fn boot_script_waits_for_the_server_and_installs_the_folder_output() {
    let ws = Workspace::new("v1.36.0");
    let (want, _) = folder_output(&ws, 1);
    let units = units_started_by_runcmd(&ws);
    // Quotes and dollars reach the server as they are: nothing is spliced into shell text.
    let header = "Authorization: Bearer t0k'en$HOME\"`x`";
    fs::write(ws.path("headers.txt"), format!("{header}\n")).unwrap();
    for shell in [Shell::Dash, Shell::Busybox] {
        let port = free_port();
        let base = format!("http://127.0.0.1:{port}");
        ws.ok(&[
            "cloud-init",
            "--node",
            "1",
            "--provider",
            "aws",
            "--payload-url",
            &format!("{base}/nodes/{{name}}.tar.gz"),
            "--allow-http",
            "--payload-header-file",
            "headers.txt",
            "--binaries",
            &format!("mirror={base}/k8s"),
        ]);
        let node = tempfile::tempdir().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let stubs = stubs(work.path());
        let root = node.path().join("root");
        fs::create_dir(&root).unwrap();
        write_files(
            &ws.path("out/controller-1-cloud-init/user-data"),
            node.path(),
        );
        let script = node.path().join(SCRIPT);

        let started = Instant::now();
        let child = script_command(shell, &script, &root, tmp.path(), &stubs)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let mirror = Mirror::start_at(&format!("127.0.0.1:{port}"));
        mirror.put(
            "nodes/controller-1.tar.gz",
            fs::read(ws.path("out/controller-1-payload.tar.gz")).unwrap(),
        );
        for bin in support::BINARIES {
            let name = bin.rsplit('/').next().unwrap();
            let bytes = fs::read(ws.path(&format!("dir-1/controller-1/usr/local/bin/{name}")));
            mirror.put(
                &format!("k8s/v1.36.0/bin/linux/amd64/{name}"),
                bytes.unwrap(),
            );
        }
        // etcd comes only as its release archive: under the mirror's etcd/
        // folder; the script checks it against the pin and unpacks each binary.
        mirror.put(
            &format!("k8s/{}", ws.etcd_mirror_path()),
            ws.etcd_tarball().to_vec(),
        );
        let out = child.wait_with_output().unwrap();
        let said = text(&out);
        assert!(out.status.success(), "{shell:?}: {said}");
        assert!(
            said.contains("failed (attempt 1 of 60), again in 5 s"),
            "{shell:?}: {said}"
        );
        assert!(started.elapsed() < Duration::from_secs(30), "{shell:?}");
        let payload_requests = mirror.requests("nodes/controller-1.tar.gz");
        assert_eq!(payload_requests.len(), 1);
        assert!(
            payload_requests[0].headers.iter().any(|h| h == header),
            "{shell:?}: {:?}",
            payload_requests[0].headers
        );

        let mut got = tree(&root);
        let marker = got.remove(MARKER).expect("the done-marker");
        assert_eq!(marker.mode, 0o644);
        got.remove("var/lib/imgbuild");
        assert_eq!(got, want, "{shell:?}");
        assert_eq!(
            fs::read_to_string(root.join(MARKER)).unwrap(),
            format!(
                "{}\n",
                sha256_file(&ws.path("out/controller-1-payload.tar.gz"))
            )
        );
        assert_eq!(systemctl_calls(work.path()), units, "{shell:?}");
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0, "{shell:?}");

        // The next boot: nothing to do, nothing fetched.
        let requests = mirror.log().len();
        let again = script_command(shell, &script, &root, tmp.path(), &stubs)
            .output()
            .unwrap();
        assert!(again.status.success(), "{}", text(&again));
        assert!(text(&again).contains("already installed"));
        assert_eq!(mirror.log().len(), requests, "{shell:?}");
    }
}

/// Run by cloud-init's own scripts-per-boot module (so by the script's
/// `#!/bin/sh`, dash here), as every boot does: a payload with one flipped
/// byte is refused with a clear message, nothing is unpacked and nothing
/// started, and the stage fails; the next boot, with the right payload
/// served, installs the node's own files exactly as `--format dir` has them.
/// Also with busybox sh: the flipped byte is refused the same way.
#[test]
fn a_flipped_byte_is_refused_and_the_next_boot_installs() {
    let ws = Workspace::new("v1.36.0");
    let (mut want, shared) = folder_output(&ws, 1);
    want.retain(|p, _| !shared.contains(p));
    let mirror = Mirror::start();
    ws.ok(&[
        "cloud-init",
        "--node",
        "1",
        "--payload-url",
        &format!("{}/p/{{node}}.tar.gz", mirror.url()),
        "--allow-http",
    ]);
    let good = fs::read(ws.path("out/controller-1-payload.tar.gz")).unwrap();
    let mut bad = good.clone();
    let at = bad.len() / 2;
    bad[at] ^= 0x01;
    mirror.put("p/1.tar.gz", bad.clone());

    let node = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let stubs = stubs(work.path());
    write_files(
        &ws.path("out/controller-1-cloud-init/user-data"),
        node.path(),
    );
    let written = tree(node.path());
    let boot = || per_boot(node.path(), &stubs, tmp.path());
    let first = boot();
    let said = text(&first);
    assert!(!first.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "has sha256 {}, expected {}: nothing unpacked",
            sha256_bytes(&bad),
            sha256_bytes(&good)
        )),
        "{said}"
    );
    assert!(said.contains("scripts_per_boot"), "{said}");
    assert_eq!(tree(node.path()), written, "something was unpacked");
    assert_eq!(systemctl_calls(work.path()), "");
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 0);

    // busybox sh refuses it the same way.
    let root = tempfile::tempdir().unwrap();
    let out = script_command(
        Shell::Busybox,
        &node.path().join(SCRIPT),
        root.path(),
        tmp.path(),
        &stubs,
    )
    .output()
    .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("nothing unpacked"), "{}", text(&out));
    assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);

    // The next boot, the right bytes.
    mirror.put("p/1.tar.gz", good);
    let second = boot();
    assert!(second.status.success(), "{}", text(&second));
    // What the node holds but cloud-init's files, the marker and the
    // folders tar made for the binaries' folders the image already has.
    let mut got = tree(node.path());
    got.retain(|p, _| !written.contains_key(p) || want.contains_key(p));
    got.retain(|p, _| !shared.contains(p));
    got.remove(MARKER);
    got.remove("var/lib/imgbuild");
    assert_eq!(got, want);
    assert_eq!(systemctl_calls(work.path()), units_started_by_runcmd(&ws));
    let third = boot();
    assert!(third.status.success());
    assert!(text(&third).contains("already installed"));
    // The first boot, busybox's run and the second boot; not the third.
    assert_eq!(mirror.requests("p/1.tar.gz").len(), 3);
}

/// With a static network (network-config is a file of its own: the user-data
/// does not grow), every node and every binaries mode fits AWS raw.
#[test]
fn aws_fits_with_a_static_network_in_every_binaries_mode() {
    let ws = Workspace::new("v1.36.0");
    support::add_static_network(&ws);
    for binaries in ["baked", "mirror=https://mirror.example/k8s", "seed"] {
        ws.ok(&[
            "cloud-init",
            "--all",
            "--provider",
            "aws",
            "--binaries",
            binaries,
            "--payload-url",
            "https://example.invalid/{name}.tar.gz?X-Amz-Signature=abc&X-Amz-Expires=3600",
        ]);
        for node in 1..=3 {
            let dir = ws.path(&format!("out/controller-{node}-cloud-init"));
            let ud = dir.join("user-data");
            let size = fs::metadata(&ud).unwrap().len();
            assert!(size <= 16_384, "{binaries} {node}: {size} bytes");
            println!("{binaries} node {node}: user-data {size} bytes");
            support::cloud_init_schema_ok(&ud);
            assert_eq!(dir.join("network-config").exists(), node == 1);
            let out = ws.run(&["inspect", "--verify", &dir.display().to_string()]);
            assert!(out.status.success(), "{binaries} {node}: {}", text(&out));
        }
    }
}

/// A payload that is not the one the user-data names fails `inspect
/// --verify` (exit 4), for the folder and for the payload itself.
#[test]
fn verify_finds_a_payload_that_is_not_the_one_named() {
    let ws = Workspace::new("v1.36.0");
    let url = "https://example.invalid/{node}.tar.gz";
    ws.ok(&[
        "cloud-init",
        "--node",
        "1",
        "--node",
        "2",
        "--payload-url",
        url,
    ]);
    fs::copy(
        ws.path("out/controller-2-payload.tar.gz"),
        ws.path("out/controller-1-payload.tar.gz"),
    )
    .unwrap();
    let err = ws.fails(&["inspect", "--verify", "out/controller-1-cloud-init"], 4);
    assert!(
        err.contains("controller-1-payload.tar.gz: sha256 is"),
        "{err}"
    );
    assert!(err.contains("the user-data requires"), "{err}");
    let err = ws.fails(
        &["inspect", "--verify", "out/controller-1-payload.tar.gz"],
        4,
    );
    assert!(
        err.contains("the manifest's controller-1-payload.tar.gz has"),
        "{err}"
    );
    assert!(err.contains("kube-apiserver.service: sha256 is"), "{err}");

    // Without the payload beside it, the folder's user-data is checked against the manifest.
    fs::remove_file(ws.path("out/controller-1-payload.tar.gz")).unwrap();
    ws.ok(&["inspect", "--verify", "out/controller-1-cloud-init"]);
    let other = ws.path("other.json");
    fs::copy(ws.path("out/controller-2.manifest.json"), &other).unwrap();
    let err = ws.fails(
        &[
            "inspect",
            "--verify",
            "out/controller-1-cloud-init",
            "--manifest",
            "other.json",
        ],
        4,
    );
    assert!(err.contains("the payload's sha256 is"), "{err}");
}

/// What is refused, before anything is built, and never quoting a header.
#[test]
fn bad_urls_headers_and_sizes_are_refused() {
    let ws = Workspace::new("v1.36.0");
    // `imgbuild cloud-init` with these arguments fails with exit 2; its stderr.
    let refused = |args: &str| {
        let args: Vec<&str> = args.split(' ').collect();
        ws.fails(&[&["cloud-init"], &args[..]].concat(), 2)
    };
    let err = refused("--node 1 --payload-url http://h/{name}");
    assert!(err.contains("https:// only"), "{err}");
    let err = refused("--all --payload-url https://h/one.tar.gz");
    assert!(err.contains("{node} or {name}"), "{err}");
    let err = refused("--node 1 --payload-header-file h.txt");
    assert!(err.contains("--payload-url"), "{err}");
    fs::write(ws.path("h.txt"), "Authorization Bearer s3cr3t\n").unwrap();
    let with_headers =
        "--node 1 --provider aws --payload-url https://h/{name} --payload-header-file h.txt";
    let err = refused(with_headers);
    assert!(
        err.contains("h.txt line 1") && !err.contains("s3cr3t"),
        "{err}"
    );

    // Headers too large for AWS: refused with the sizes, nothing written.
    fs::write(ws.path("h.txt"), format!("X-Big: {}\n", "t".repeat(16_000))).unwrap();
    let err = refused(with_headers);
    assert!(
        err.contains("bytes (of which 16008 bytes of headers")
            && err.contains("the aws limit is 16384 bytes"),
        "{err}"
    );
    assert!(!ws.path("out/controller-1-payload.tar.gz").exists());
}

/// v1.34+, the user-data with the node's files: its per-boot script, run by
/// cloud-init's own scripts-per-boot module. A failed step (a binary with a
/// wrong byte on the mirror) records which step in cloud-init.failed, starts
/// nothing and marks nothing done; the next boot installs, starts every unit
/// without waiting (the RBAC one-shot last), names a unit it could not start
/// (nginx not installed) and tries again at the boot after, which finishes;
/// the one after that does nothing.
#[test]
fn the_node_boot_step_leaves_a_marker_and_is_retried_at_the_next_boot() {
    let ws = Workspace::new("v1.36.0");
    ws.ok_dir("1", "dir-1", &[]);
    let bin = |name: &str| {
        fs::read(ws.path(&format!("dir-1/controller-1/usr/local/bin/{name}"))).unwrap()
    };
    let mirror = Mirror::start();
    let put_all = |flip: bool| {
        for b in support::BINARIES {
            let name = b.rsplit('/').next().unwrap();
            let mut bytes = bin(name);
            if flip && name == "kube-apiserver" {
                let at = bytes.len() / 2;
                bytes[at] ^= 1;
            }
            mirror.put(&format!("k8s/v1.36.0/bin/linux/amd64/{name}"), bytes);
        }
        // etcd's binaries come out of its pinned release archive.
        mirror.put(
            &format!("k8s/{}", ws.etcd_mirror_path()),
            ws.etcd_tarball().to_vec(),
        );
    };
    put_all(true);
    ws.ok(&[
        "cloud-init",
        "--node",
        "1",
        "--binaries",
        &format!("mirror={}/k8s", mirror.url()),
    ]);
    let ud_path = ws.path("out/controller-1-cloud-init/user-data");
    let ud = fs::read_to_string(&ud_path).unwrap();
    assert!(ud.contains("packages:\n- \"nginx\"\n"), "{ud}");
    assert!(!ud.contains("runcmd:"), "{ud}");
    let node = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // bootcmd's folders, then cloud-init's write_files.
    for line in ud
        .lines()
        .filter(|l| l.starts_with("- [\"install\", \"-d\""))
    {
        let argv: Vec<String> = serde_json::from_str(&line[2..]).unwrap();
        fs::create_dir_all(
            node.path()
                .join(argv.last().unwrap().trim_start_matches('/')),
        )
        .unwrap();
    }
    let tool = Path::new(REPO).join("tests/tools/cloud_init_write_files.py");
    let out = Command::new("/usr/bin/python3")
        .arg(tool)
        .arg(&ud_path)
        .arg(node.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let script = node
        .path()
        .join("var/lib/cloud/scripts/per-boot/imgbuild-node");
    assert_eq!(
        fs::metadata(&script).unwrap().permissions().mode() & 0o777,
        0o700
    );
    // systemctl: logs its calls; nginx.service is not installed at first.
    let stubs = work.path().join("stubs");
    fs::create_dir_all(&stubs).unwrap();
    let log = work.path().join("systemctl.log");
    let no_nginx = work.path().join("no-nginx");
    fs::write(&no_nginx, "").unwrap();
    fs::write(
        stubs.join("systemctl"),
        format!(
            "#!/bin/sh\necho \"$*\" >>'{}'\ncase \"$*\" in *nginx.service) if [ -e '{}' ]; then echo 'Failed to start nginx.service: Unit nginx.service not found.' >&2; exit 5; fi ;; esac\n",
            log.display(),
            no_nginx.display()
        ),
    )
    .unwrap();
    fs::set_permissions(stubs.join("systemctl"), fs::Permissions::from_mode(0o755)).unwrap();
    let boot = || {
        let _ = fs::remove_file(&log);
        per_boot(node.path(), &stubs, tmp.path())
    };
    let marker =
        |name: &str| fs::read_to_string(node.path().join("var/lib/imgbuild").join(name)).ok();

    // Boot 1: the mirror serves a wrong kube-apiserver.
    let first = boot();
    let said = text(&first);
    assert!(
        !first.status.success() && said.contains("scripts_per_boot"),
        "{said}"
    );
    assert!(
        said.contains("kube-apiserver") && said.contains("not installed"),
        "{said}"
    );
    let failed = marker("cloud-init.failed").expect("no failure marker");
    assert!(
        failed.contains("installing the binaries failed (exit 1)"),
        "{failed}"
    );
    assert!(marker("cloud-init.done").is_none());
    assert!(!node.path().join("usr/local/bin/kube-apiserver").exists());
    assert_eq!(
        fs::read_to_string(&log).unwrap_or_default(),
        "",
        "units were started"
    );

    // Boot 2: the mirror is fixed; nginx is still missing.
    put_all(false);
    let second = boot();
    let said = text(&second);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains("imgbuild: nginx is not installed"), "{said}");
    let calls = fs::read_to_string(&log).unwrap();
    let starts: Vec<&str> = calls
        .lines()
        .filter_map(|l| l.strip_prefix("start --no-block "))
        .collect();
    assert_eq!(
        starts.last(),
        Some(&"kube-rbac-bootstrap.service"),
        "{calls}"
    );
    let pos = |u: &str| {
        starts
            .iter()
            .position(|s| *s == u)
            .unwrap_or_else(|| panic!("{u} not started: {calls}"))
    };
    assert!(pos("nginx.service") < pos("kube-rbac-bootstrap.service"));
    for u in [
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
    ] {
        pos(u);
    }
    assert!(calls.starts_with("daemon-reload\n"), "{calls}");
    let failed = marker("cloud-init.failed").unwrap();
    assert!(failed.contains("starting nginx.service failed"), "{failed}");
    assert!(marker("cloud-init.done").is_none());
    assert!(pos("etcd.service") < pos("kube-apiserver.service"));
    for name in support::BINARIES
        .iter()
        .map(|b| b.rsplit('/').next().unwrap())
        .chain(["etcd", "etcdctl", "etcdutl"])
    {
        assert_eq!(
            fs::read(node.path().join("usr/local/bin").join(name)).unwrap(),
            bin(name),
            "{name}"
        );
    }
    assert!(
        fs::symlink_metadata(
            node.path()
                .join("etc/systemd/system/multi-user.target.wants/kube-apiserver.service")
        )
        .unwrap()
        .file_type()
        .is_symlink()
    );

    // Boot 3: nginx installed; the binaries in place are kept (not downloaded again).
    fs::remove_file(&no_nginx).unwrap();
    let etcd_archive = format!("k8s/{}", ws.etcd_mirror_path());
    let fetched = mirror.requests("k8s/v1.36.0/bin/linux/amd64/kubectl").len();
    let fetched_etcd = mirror.requests(&etcd_archive).len();
    let third = boot();
    assert!(third.status.success(), "{}", text(&third));
    assert_eq!(
        mirror.requests("k8s/v1.36.0/bin/linux/amd64/kubectl").len(),
        fetched
    );
    assert_eq!(mirror.requests(&etcd_archive).len(), fetched_etcd);
    assert!(marker("cloud-init.failed").is_none());
    assert!(marker("cloud-init.done").is_some());

    // Boot 4: nothing to do.
    let fourth = boot();
    assert!(fourth.status.success());
    assert!(
        text(&fourth).contains("node configured already"),
        "{}",
        text(&fourth)
    );
    assert_eq!(fs::read_to_string(&log).unwrap_or_default(), "");
}
