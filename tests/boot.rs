//! Boots a controller node made by imgbuild on a real Debian userland, under
//! qemu (TCG), and checks the promise: it comes up configured and sets up RBAC
//! by itself, once.
//!
//! How it works (details in tests/boot/README.md):
//! * `tests/boot/rootfs.sh` debootstraps a minimal Debian (systemd, udev, nginx,
//!   curl, python3) once and caches it outside the clone, keyed by its package
//!   list, as an uncompressed newc archive;
//! * `tests/boot/scaffold.sh` adds the test's probe unit, the fstab line of the
//!   state disk and the kernel's virtio modules;
//! * imgbuild itself builds the overlay of a one-controller inventory's node
//!   (at 127.0.0.11: the machine has no network device) as a cpio.gz, with the
//!   test's stand-ins for kube-apiserver / kube-controller-manager /
//!   kube-scheduler and the etcd wrapper (tests/boot/standins/), the machine's
//!   real kubectl and etcdctl in its cache, and Debian's real etcd behind the
//!   wrapper (put in the guest by scaffold.sh);
//! * the three archives are concatenated into one initramfs (the kernel unpacks
//!   them in order, so the overlay lands on top of Debian), and the machine boots
//!   with a small ext4 "state disk" mounted at /var/lib/imgbuild that is kept
//!   between boots;
//! * three boots: the API server stand-in failing (fresh state disk), then
//!   healthy twice on the same state disk. Inside, the probe unit waits for the
//!   boot to finish, collects facts onto a results disk and powers off; every
//!   assertion is made here, on the host.
//!
//! Run it alone: `cargo test --test boot -- --nocapture`.
//! Another version: `IMGBUILD_BOOT_VERSION=v1.10.2 cargo test --test boot`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read};

mod support;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const STATE_DIR: &str = "/var/lib/imgbuild";
const DONE_FILE: &str = "/var/lib/imgbuild/kube-rbac-bootstrap.done";
const ONESHOT: &str = "kube-rbac-bootstrap.service";
const SERVICES: [&str; 4] = [
    "etcd.service",
    "kube-apiserver.service",
    "kube-controller-manager.service",
    "kube-scheduler.service",
];
const WANTS_DIR: &str = "/etc/systemd/system/multi-user.target.wants";
const FAIL_SWITCH: &str = "imgbuild_test.apiserver=fail";

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

/// Prints a step with the time since the test started.
struct Clock(Instant);
impl Clock {
    fn say(&self, what: impl AsRef<str>) {
        eprintln!(
            "[boot {:6.1}s] {}",
            self.0.elapsed().as_secs_f64(),
            what.as_ref()
        );
    }
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{what}: {cmd:?} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Progress from the helper scripts goes to stderr: pass it on.
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

// ---------------------------------------------------------------------------
// Prerequisites
// ---------------------------------------------------------------------------

fn which(cmd: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Fails (never skips) with everything that is missing and how to get it.
fn check_prerequisites(kernel: &Path, kubectl: &Path) {
    let mut missing = Vec::new();
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if uid != "0" {
        missing.push("root (debootstrap, chroot and root-owned archives need it)".to_string());
    }
    for (cmd, pkg) in [
        ("etcd", "etcd-server"),
        ("etcdctl", "etcd-client"),
        ("qemu-system-x86_64", "qemu-system-x86"),
        ("debootstrap", "debootstrap"),
        ("cpio", "cpio"),
        ("mkfs.ext4", "e2fsprogs"),
        ("depmod", "kmod"),
        ("modinfo", "kmod"),
        ("flock", "util-linux"),
        ("tar", "tar"),
    ] {
        if which(cmd).is_none() {
            missing.push(format!("{cmd} (apt-get install {pkg})"));
        }
    }
    if !kernel.is_file() {
        missing.push(format!(
            "a kernel at {} (apt-get install linux-image-cloud-amd64, or set IMGBUILD_BOOT_KERNEL)",
            kernel.display()
        ));
    }
    if !kubectl.is_file() {
        missing.push(format!(
            "a real kubectl at {} (the Debian package kubectl; or set IMGBUILD_BOOT_KUBECTL)",
            kubectl.display()
        ));
    }
    assert!(
        missing.is_empty(),
        "the boot test cannot run; missing:\n  - {}\n(see tests/boot/README.md)",
        missing.join("\n  - ")
    );
}

fn default_kernel() -> PathBuf {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
                })
                .collect()
        })
        .unwrap_or_default();
    kernels.sort();
    kernels
        .pop()
        .unwrap_or_else(|| PathBuf::from("/boot/vmlinuz"))
}

/// The newest real kubectl build on the machine (the `kubectl` Debian package
/// ships kubectl.1.27 ... kubectl.1.33 as static binaries).
fn default_kubectl() -> PathBuf {
    let dir = Path::new("/usr/lib/google-cloud-sdk/bin");
    let mut best: Option<((u32, u32), PathBuf)> = None;
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix("kubectl.") {
                let mut it = rest.split('.').map(|p| p.parse::<u32>());
                if let (Some(Ok(a)), Some(Ok(b)), None) = (it.next(), it.next(), it.next())
                    && best.as_ref().is_none_or(|(v, _)| (a, b) > *v)
                {
                    best = Some(((a, b), e.path()));
                }
            }
        }
    }
    best.map(|(_, p)| p)
        .unwrap_or_else(|| dir.join("kubectl.1.33"))
}

// ---------------------------------------------------------------------------
// newc archives (to check what imgbuild's overlay carries)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct CpioEntry {
    mode: u32,
    uid: u32,
    gid: u32,
    /// Symlink target, for symlinks.
    link: Option<String>,
}

fn read_cpio(path: &Path) -> BTreeMap<String, CpioEntry> {
    fn hex(field: &[u8]) -> u32 {
        u32::from_str_radix(std::str::from_utf8(field).expect("cpio header"), 16)
            .expect("cpio hex field")
    }
    let file = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut r = io::BufReader::with_capacity(1 << 16, file);
    let mut entries = BTreeMap::new();
    let mut pos: i64 = 0;
    let align = |r: &mut io::BufReader<fs::File>, pos: &mut i64| {
        let pad = (4 - *pos % 4) % 4;
        r.seek_relative(pad).unwrap();
        *pos += pad;
    };
    loop {
        let mut hdr = [0u8; 110];
        if r.read_exact(&mut hdr[..1]).is_err() {
            break;
        }
        if hdr[0] == 0 {
            pos += 1; // zero padding between concatenated archives
            continue;
        }
        r.read_exact(&mut hdr[1..]).expect("truncated cpio header");
        pos += 110;
        assert!(
            &hdr[..6] == b"070701" || &hdr[..6] == b"070702",
            "{}: not newc at offset {pos}",
            path.display()
        );
        let mode = hex(&hdr[14..22]);
        let uid = hex(&hdr[22..30]);
        let gid = hex(&hdr[30..38]);
        let size = hex(&hdr[54..62]) as i64;
        let namesize = hex(&hdr[94..102]) as usize;
        let mut name = vec![0u8; namesize];
        r.read_exact(&mut name).expect("cpio name");
        pos += namesize as i64;
        align(&mut r, &mut pos);
        let name = String::from_utf8_lossy(&name[..name.len().saturating_sub(1)]).into_owned();
        let link = if mode & 0o170000 == 0o120000 {
            let mut t = vec![0u8; size as usize];
            r.read_exact(&mut t).expect("cpio symlink");
            Some(String::from_utf8_lossy(&t).into_owned())
        } else {
            r.seek_relative(size).unwrap();
            None
        };
        pos += size;
        align(&mut r, &mut pos);
        if name == "TRAILER!!!" {
            continue;
        }
        let name = name
            .trim_start_matches("./")
            .trim_start_matches('/')
            .to_string();
        entries.insert(
            name,
            CpioEntry {
                mode,
                uid,
                gid,
                link,
            },
        );
    }
    entries
}

/// Lists a newc archive, gzip-compressed or not.
fn read_cpio_file(path: &Path, scratch: &Path) -> BTreeMap<String, CpioEntry> {
    let mut magic = [0u8; 2];
    fs::File::open(path)
        .unwrap()
        .read_exact(&mut magic)
        .expect("archive is empty");
    if magic == [0x1f, 0x8b] {
        let plain = scratch.join("listing.cpio");
        run(
            Command::new("sh")
                .arg("-c")
                .arg("gzip -dc \"$1\" > \"$2\"")
                .arg("sh")
                .arg(path)
                .arg(&plain),
            "gunzip",
        );
        let entries = read_cpio(&plain);
        let _ = fs::remove_file(&plain);
        entries
    } else {
        read_cpio(path)
    }
}

// ---------------------------------------------------------------------------
// The overlay, built by imgbuild
// ---------------------------------------------------------------------------

/// The test's stand-ins (version baked in) and the machine's real kubectl: the
/// members of the release-shaped tarball imgbuild's cache gets.
fn standin_binaries(version: &str, kubectl: &Path) -> Vec<(&'static str, Vec<u8>)> {
    let src = manifest_dir().join("tests/boot/standins");
    let api = fs::read_to_string(src.join("kube-apiserver")).unwrap();
    assert!(api.contains("@KUBE_VERSION@"));
    let component = fs::read(src.join("kube-component")).unwrap();
    vec![
        (
            "kube-apiserver",
            api.replace("@KUBE_VERSION@", version).into_bytes(),
        ),
        ("kube-controller-manager", component.clone()),
        ("kube-scheduler", component),
        (
            "kubectl",
            fs::read(kubectl).unwrap_or_else(|e| panic!("read {}: {e}", kubectl.display())),
        ),
    ]
}

/// etcd's archive for the test recipe: `etcd` the stand-in wrapper
/// (tests/boot/standins/etcd), which execs the real etcd that scaffold.sh
/// puts in the guest; `etcdctl` this machine's real one (Debian's
/// etcd-client); `etcdutl`, for the releases that have it, a stand-in nothing runs.
fn etcd_binaries(version: &str) -> Vec<(&'static str, Vec<u8>)> {
    let etcd = support::etcd_version(version);
    support::etcd_binaries(&etcd)
        .into_iter()
        .map(|name| {
            let bytes = match name {
                "etcd" => fs::read(manifest_dir().join("tests/boot/standins/etcd")).unwrap(),
                "etcdctl" => fs::read(which("etcdctl").expect("etcdctl")).unwrap(),
                other => support::stand_in(other, 4096),
            };
            (name, bytes)
        })
        .collect()
}

/// The one controller the boot test's inventory holds: the bundled example's
/// first, at a loopback address (the machine has no network device, and the
/// kernel serves all of 127.0.0.0/8 on lo), so its etcd can bind its
/// internal_ip and form a cluster of one.
const NODE_IP: &str = "127.0.0.11";

fn one_controller_inventory(version: &str) -> String {
    let full = support::example_inventory(version, "amd64");
    let first = full
        .split("[[controllers]]")
        .take(2)
        .collect::<Vec<_>>()
        .join("[[controllers]]");
    first.replace("\"10.240.0.11\"", &format!("\"{NODE_IP}\""))
}

/// Packs a folder into a newc archive, every entry root-owned.
fn cpio_of_dir(dir: &Path, out: &Path) {
    run(
        Command::new("sh")
            .arg("-c")
            .arg("cd \"$1\" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet > \"$2\"")
            .arg("sh")
            .arg(dir)
            .arg(out),
        "cpio",
    );
}

/// Node 1's overlay, built by the real imgbuild binary from a workspace (the
/// bundled example inventory at `version`, imgbuild's PKI, and a cache holding
/// the stand-ins through a test recipe), as an initramfs segment.
///
/// `format` is the imgbuild output used: `cpio.gz` is appended as it is;
/// `tar.gz` is laid onto an empty folder with GNU tar (as onto a disk) and that
/// folder is packed with GNU cpio. IMGBUILD_BOOT_OVERLAY skips the build and
/// uses a ready archive (for debugging the harness).
fn build_overlay(
    clock: &Clock,
    work: &Path,
    version: &str,
    kubectl: &Path,
    format: &str,
) -> PathBuf {
    if let Ok(prebuilt) = std::env::var("IMGBUILD_BOOT_OVERLAY") {
        clock.say(format!(
            "using the prebuilt overlay {prebuilt} (IMGBUILD_BOOT_OVERLAY)"
        ));
        return PathBuf::from(prebuilt);
    }
    // The PKI is imgbuild's own (`imgbuild pki init`, made by the workspace): the
    // API server stand-in serves its kubernetes.pem, the one-shot's kubectl uses
    // its admin.kubeconfig. The stand-ins are imported into the cache.
    let ws = support::Workspace::builder(version)
        .inventory(&one_controller_inventory(version))
        .binary_contents(standin_binaries(version, kubectl))
        .etcd_contents(etcd_binaries(version))
        .build();
    let out = work.join("out");
    // `tar.gz-split`: the --split pair (shared binaries, then the node's files).
    let split = format == "tar.gz-split";
    let ext = if split { "tar.gz" } else { format };
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "controller".as_ref(),
        "--node".as_ref(),
        "1".as_ref(),
        "--format".as_ref(),
        ext.as_ref(),
        "--out".as_ref(),
        out.as_os_str(),
    ];
    if split {
        args.push("--split".as_ref());
    }
    ws.ok(&args);
    let artifacts = if split {
        vec![
            out.join(format!("controller-shared-{version}-amd64.tar.gz")),
            out.join("controller-1-node.tar.gz"),
        ]
    } else {
        vec![out.join(format!("controller-1.{format}"))]
    };
    for artifact in &artifacts {
        assert!(
            artifact.is_file(),
            "imgbuild did not write {}",
            artifact.display()
        );
        clock.say(format!(
            "imgbuild wrote {} ({} bytes)",
            artifact.display(),
            fs::metadata(artifact).unwrap().len()
        ));
    }
    match format {
        "cpio.gz" => artifacts[0].clone(),
        "tar.gz" | "tar.gz-split" => {
            let root = work.join("overlay-root");
            fs::create_dir_all(&root).unwrap();
            for artifact in &artifacts {
                run(
                    Command::new("tar")
                        .arg("-xzpf")
                        .arg(artifact)
                        .arg("--numeric-owner")
                        .arg("-C")
                        .arg(&root),
                    "laying the overlay",
                );
            }
            let cpio = work.join("overlay.cpio");
            run(
                Command::new("sh")
                    .arg("-c")
                    .arg("cd \"$1\" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet > \"$2\"")
                    .arg("sh")
                    .arg(&root)
                    .arg(&cpio),
                "packing the laid overlay",
            );
            cpio
        }
        other => {
            panic!("IMGBUILD_BOOT_FORMAT={other}: expected cpio.gz, tar.gz or tar.gz-split")
        }
    }
}

/// The newest Kubernetes version there is a shipped recipe for.
fn newest_pinned_version() -> String {
    let mut versions: Vec<(Vec<u32>, String)> = fs::read_dir(manifest_dir().join("recipes"))
        .expect("recipes/")
        .filter_map(|e| {
            let name = e.ok()?.file_name().to_string_lossy().into_owned();
            let v = name
                .strip_prefix("kubernetes-")?
                .strip_suffix(".toml")?
                .to_string();
            let key = v
                .trim_start_matches('v')
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((key, v))
        })
        .collect();
    versions.sort();
    versions.pop().expect("no recipes/kubernetes-v*.toml").1
}

// ---------------------------------------------------------------------------
// Booting
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct Machine {
    kernel: PathBuf,
    initrd: PathBuf,
    state_disk: PathBuf,
    memory_mib: u32,
    cpus: u32,
    timeout: Duration,
    /// Return the facts an earlier run left instead of booting (IMGBUILD_BOOT_RECHECK).
    reuse: bool,
}

struct Facts {
    name: String,
    dir: PathBuf,
    console: PathBuf,
    wall: Duration,
}

impl Machine {
    fn boot(&self, clock: &Clock, dir: &Path, name: &str, extra_cmdline: &str) -> Facts {
        let bdir = dir.join(name);
        if self.reuse {
            let facts = bdir.join("facts");
            assert!(
                facts.join("complete").is_file(),
                "RECHECK: no facts in {}",
                facts.display()
            );
            return Facts {
                name: name.to_string(),
                dir: facts,
                console: bdir.join("console.log"),
                wall: Duration::ZERO,
            };
        }
        fs::create_dir_all(&bdir).unwrap();
        let results = bdir.join("results.img");
        let console = bdir.join("console.log");
        // A fresh, empty results disk: the probe writes a tar onto it.
        fs::write(&results, b"").unwrap();
        fs::File::options()
            .write(true)
            .open(&results)
            .unwrap()
            .set_len(64 << 20)
            .unwrap();
        let cmdline = format!(
            "console=ttyS0 rdinit=/sbin/init panic=-1 systemd.show_status=1 {extra_cmdline}"
        );
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", "tcg", "-m"])
            .arg(self.memory_mib.to_string())
            .arg("-smp")
            .arg(self.cpus.to_string())
            // No network device at all: nothing can leave the machine.
            .args([
                "-nic",
                "none",
                "-display",
                "none",
                "-monitor",
                "none",
                "-no-reboot",
            ])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initrd)
            .arg("-append")
            .arg(&cmdline)
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=state",
                self.state_disk.display()
            ))
            .args([
                "-device",
                "virtio-blk-pci,drive=state,serial=imgbuild-state",
            ])
            .arg("-drive")
            .arg(format!(
                "file={},format=raw,if=none,id=results",
                results.display()
            ))
            .args([
                "-device",
                "virtio-blk-pci,drive=results,serial=imgbuild-results",
            ])
            .stdin(Stdio::null())
            .stdout(fs::File::create(bdir.join("qemu.out")).unwrap())
            .stderr(fs::File::create(bdir.join("qemu.err")).unwrap());
        clock.say(format!(
            "boot {name}: qemu (tcg, {} MiB, {} cpu) `{cmdline}`",
            self.memory_mib, self.cpus
        ));
        let start = Instant::now();
        let mut child = cmd.spawn().expect("cannot start qemu-system-x86_64");
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            // The whole initramfs (Debian, scaffolding, overlay) must unpack; the
            // kernel goes on booting with what it got so far if it does not.
            let unpack_failed = fs::read(&console)
                .is_ok_and(|b| String::from_utf8_lossy(&b).contains("Initramfs unpacking failed"));
            if unpack_failed {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "boot {name}: the kernel could not unpack the initramfs; console:\n{}",
                    tail(&console, 40)
                );
            }
            if start.elapsed() > self.timeout {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "boot {name}: the machine did not power off within {:?}; last console lines:\n{}",
                    self.timeout,
                    tail(&console, 60)
                );
            }
            std::thread::sleep(Duration::from_millis(1000));
        };
        let wall = start.elapsed();
        assert!(
            status.success(),
            "boot {name}: qemu exited with {status}: {}\nconsole:\n{}",
            fs::read_to_string(bdir.join("qemu.err")).unwrap_or_default(),
            tail(&console, 60)
        );
        let facts = bdir.join("facts");
        fs::create_dir_all(&facts).unwrap();
        let untar = Command::new("tar")
            .arg("-xf")
            .arg(&results)
            .arg("-C")
            .arg(&facts)
            .output()
            .unwrap();
        assert!(
            untar.status.success() && facts.join("complete").is_file(),
            "boot {name}: the probe left no facts on the results disk ({}); last console lines:\n{}",
            String::from_utf8_lossy(&untar.stderr).trim(),
            tail(&console, 80)
        );
        clock.say(format!(
            "boot {name}: powered off after {:.1}s",
            wall.as_secs_f64()
        ));
        Facts {
            name: name.to_string(),
            dir: facts,
            console,
            wall,
        }
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------
// Facts
// ---------------------------------------------------------------------------

impl Facts {
    fn text(&self, rel: &str) -> String {
        fs::read(self.dir.join(rel))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn unit(&self, unit: &str) -> BTreeMap<String, String> {
        self.text(&format!("units/{unit}.show"))
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn prop(&self, unit: &str, key: &str) -> String {
        self.unit(unit).get(key).cloned().unwrap_or_default()
    }

    fn mono(&self, unit: &str, key: &str) -> f64 {
        self.prop(unit, key).parse::<f64>().unwrap_or(0.0) / 1e6
    }

    fn jsonl(&self, rel: &str) -> Vec<Value> {
        self.text(rel)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn api_requests(&self) -> Vec<Value> {
        self.jsonl("standin/kube-apiserver.requests.jsonl")
    }

    fn api_events(&self) -> Vec<Value> {
        self.jsonl("standin/kube-apiserver.events.jsonl")
    }

    fn wants(&self) -> BTreeMap<String, String> {
        self.text("wants.txt")
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.rsplit('/').next().unwrap().to_string(), v.to_string()))
            .collect()
    }

    /// The one-shot's run, in CLOCK_MONOTONIC seconds (same clock as the stand-in's log).
    fn oneshot_window(&self) -> (f64, f64) {
        (
            self.mono(ONESHOT, "InactiveExitTimestampMonotonic"),
            self.mono(ONESHOT, "StateChangeTimestampMonotonic"),
        )
    }
}

fn is_health(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz"]
        .iter()
        .any(|h| path == *h || path.starts_with(&format!("{h}/")))
}

/// Collects failed checks instead of stopping at the first one.
#[derive(Default)]
struct Checks {
    failed: Vec<String>,
    passed: usize,
}

impl Checks {
    fn check(&mut self, boot: &Facts, ok: bool, what: impl AsRef<str>) {
        if ok {
            self.passed += 1;
        } else {
            self.failed
                .push(format!("[{}] {}", boot.name, what.as_ref()));
        }
    }
}

// ---------------------------------------------------------------------------
// What the seed applies (transcribed from the seed's two `kubectl apply`s).
// ---------------------------------------------------------------------------

fn seed_clusterrole() -> Value {
    json!({
        "kind": "ClusterRole",
        "metadata": {
            "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
            "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"},
            "name": "system:kube-apiserver-to-kubelet"
        },
        "rules": [{
            "apiGroups": [""],
            "resources": ["nodes/proxy", "nodes/stats", "nodes/log", "nodes/spec", "nodes/metrics"],
            "verbs": ["*"]
        }]
    })
}

fn seed_clusterrolebinding() -> Value {
    json!({
        "kind": "ClusterRoleBinding",
        "metadata": {"name": "system:kube-apiserver"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:kube-apiserver-to-kubelet"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "kubernetes"}]
    })
}

/// The received object without what the client adds by itself (apiVersion is
/// checked separately; kubectl adds its last-applied annotation; an empty
/// namespace on a cluster-scoped object means none).
fn normalize(body: &Value) -> Value {
    let mut v = body.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("apiVersion");
    }
    if let Some(md) = v.get_mut("metadata").and_then(|m| m.as_object_mut()) {
        if md.get("namespace").is_some_and(|n| n == "") {
            md.remove("namespace");
        }
        if let Some(ann) = md.get_mut("annotations").and_then(|a| a.as_object_mut()) {
            ann.remove("kubectl.kubernetes.io/last-applied-configuration");
        }
        if md
            .get("annotations")
            .is_some_and(|a| a.as_object().is_some_and(|a| a.is_empty()))
        {
            md.remove("annotations");
        }
    }
    v
}

// ---------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq)]
enum Expect {
    /// The API server stand-in never becomes healthy: the one-shot must retry,
    /// give up, fail visibly, and not hold up the boot.
    ApiServerFailing,
    /// First healthy boot on this state disk: the one-shot applies RBAC.
    Applies,
    /// Same state disk again: the one-shot must not run.
    Skips,
    /// v1.34 on, fresh state disk: the API server comes up LATE seconds
    /// late; the one-shot retries with growing waits and applies RBAC once.
    HealsAfterOutage,
    /// v1.34 on, same state disk again: the one-shot runs, applies nothing,
    /// removes admin.kubeconfig again (the initramfs brings it back).
    AlreadyDone,
}

fn check_common(
    c: &mut Checks,
    f: &Facts,
    version: &str,
    overlay: &BTreeMap<String, CpioEntry>,
    expect: Expect,
) {
    // The boot finished (not stuck in "starting") and reached multi-user.target.
    let state = f.text("system-state.txt").trim().to_string();
    let want_state = if expect == Expect::ApiServerFailing {
        "degraded"
    } else {
        "running"
    };
    c.check(
        f,
        state == want_state,
        format!("system state is {state:?}, expected {want_state:?}"),
    );
    c.check(
        f,
        f.prop("multi-user.target", "ActiveState") == "active",
        format!(
            "multi-user.target is {:?}, expected active",
            f.prop("multi-user.target", "ActiveState")
        ),
    );
    let failed: Vec<String> = f
        .text("failed-units.txt")
        .lines()
        .filter(|l| l.contains(".service") || l.contains(".mount") || l.contains(".target"))
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    let want_failed: Vec<String> = if expect == Expect::ApiServerFailing {
        vec![ONESHOT.to_string()]
    } else {
        vec![]
    };
    c.check(
        f,
        failed == want_failed,
        format!("failed units are {failed:?}, expected {want_failed:?}"),
    );

    // The state disk is what /var/lib/imgbuild is.
    let mount = f.text("state-mount.txt");
    c.check(
        f,
        mount.contains("ext4"),
        format!("{STATE_DIR} is not the state disk: {mount:?}"),
    );

    // Enabled through the overlay's symlinks, and running.
    let wants = f.wants();
    for unit in SERVICES.iter().chain(["nginx.service", ONESHOT].iter()) {
        let rel = format!("etc/systemd/system/multi-user.target.wants/{unit}");
        let in_overlay = overlay.get(&rel);
        c.check(
            f,
            in_overlay.is_some_and(|e| e.link.is_some()),
            format!("imgbuild's overlay has no symlink {rel}"),
        );
        let seen = wants.get(*unit);
        c.check(
            f,
            seen.is_some() && seen == in_overlay.and_then(|e| e.link.as_ref()),
            format!(
                "{WANTS_DIR}/{unit} on the booted system is {seen:?}, the overlay's is {:?}",
                in_overlay.and_then(|e| e.link.clone())
            ),
        );
        let enabled = f
            .text(&format!("units/{unit}.is-enabled"))
            .trim()
            .to_string();
        c.check(
            f,
            enabled == "enabled",
            format!("{unit} is-enabled says {enabled:?}"),
        );
        if *unit == "nginx.service" {
            c.check(
                f,
                seen.is_some_and(|t| {
                    t == "/usr/lib/systemd/system/nginx.service"
                        || t == "/lib/systemd/system/nginx.service"
                }),
                format!("nginx.service is enabled with {seen:?}, not Debian's unit"),
            );
        } else if *unit != ONESHOT || expect != Expect::Skips {
            // The link must point at the unit systemd loaded.
            let fragment = f.prop(unit, "FragmentPath");
            let target = seen.cloned().unwrap_or_default();
            let resolved = if target.starts_with('/') {
                target.clone()
            } else {
                format!("/etc/systemd/system/{}", target.trim_start_matches("../"))
            };
            c.check(
                f,
                resolved == fragment,
                format!("{unit}: symlink {target:?} vs loaded unit {fragment:?}"),
            );
        }
    }
    for unit in SERVICES.iter().chain(["nginx.service"].iter()) {
        let (active, sub) = (f.prop(unit, "ActiveState"), f.prop(unit, "SubState"));
        c.check(
            f,
            active == "active" && sub == "running",
            format!("{unit} is {active}/{sub}, expected active/running"),
        );
        let restarts = f.prop(unit, "NRestarts");
        c.check(
            f,
            restarts == "0",
            format!("{unit} restarted {restarts} times"),
        );
    }

    // The stand-ins were started as the overlay's units say, with every input file present.
    let events = f.api_events();
    let start = events.iter().find(|e| e["event"] == "start");
    c.check(
        f,
        start.is_some(),
        "the kube-apiserver stand-in never started",
    );
    if let Some(start) = start {
        c.check(
            f,
            start["version"] == version,
            format!("stand-in version {} != {version}", start["version"]),
        );
        let flags = &start["flags"];
        c.check(
            f,
            flags["tls-cert-file"] == "/var/lib/kubernetes/kubernetes.pem"
                && flags["tls-private-key-file"] == "/var/lib/kubernetes/kubernetes-key.pem",
            format!(
                "kube-apiserver TLS flags: {} {}",
                flags["tls-cert-file"], flags["tls-private-key-file"]
            ),
        );
        c.check(
            f,
            flags["client-ca-file"] == "/var/lib/kubernetes/ca.pem",
            format!(
                "kube-apiserver --client-ca-file is {}",
                flags["client-ca-file"]
            ),
        );
        c.check(
            f,
            flags.get("secure-port").is_none_or(|p| p == "6443"),
            format!("kube-apiserver --secure-port is {}", flags["secure-port"]),
        );
        c.check(
            f,
            start["missing_files"]
                .as_array()
                .is_some_and(|m| m.is_empty()),
            format!(
                "kube-apiserver names missing files: {}",
                start["missing_files"]
            ),
        );
        c.check(
            f,
            events
                .iter()
                .any(|e| e["event"] == "listening" && e["port"] == 6443),
            "the kube-apiserver stand-in is not listening on 6443",
        );
    }
    check_etcd(c, f, version);
    for name in ["kube-controller-manager", "kube-scheduler"] {
        let ev = f.jsonl(&format!("standin/{name}.events.jsonl"));
        let start = ev.iter().find(|e| e["event"] == "start");
        c.check(
            f,
            start.is_some(),
            format!("the {name} stand-in never started"),
        );
        if let Some(s) = start {
            c.check(
                f,
                s["missing_files"].as_array().is_some_and(|m| m.is_empty()),
                format!("{name} names missing files: {}", s["missing_files"]),
            );
            c.check(
                f,
                s["inputs"].as_object().is_some_and(|i| {
                    i.values()
                        .any(|v| v.as_str().is_some_and(|v| v.ends_with(".kubeconfig")))
                }),
                format!(
                    "{name} is not given a kubeconfig (flags or --config): {}",
                    s["inputs"]
                ),
            );
        }
    }

    // What the overlay installed is root's; secrets are 0600.
    for line in f.text("stat.txt").lines() {
        if line.contains("cannot stat") {
            continue;
        }
        let mut it = line.splitn(4, ' ');
        let (owner, mode, rest) = (
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
            it.next().unwrap_or(""),
        );
        let path = line.rsplit(' ').next().unwrap_or("");
        c.check(
            f,
            owner == "root:root",
            format!("{path} is owned by {owner} ({rest})"),
        );
        let secret = path.ends_with("-key.pem")
            || path.ends_with(".kubeconfig")
            || path.ends_with("encryption-config.yaml");
        if secret && (path.starts_with("/var/lib/kubernetes/") || path.starts_with("/etc/etcd/")) {
            c.check(
                f,
                mode == "600",
                format!("{path} has mode {mode}, expected 600"),
            );
        }
    }

    // The seed's check through nginx.
    let curl = f.text("curl-healthz.txt");
    let status_line = curl.lines().next().unwrap_or("").trim().to_string();
    let body = curl
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    if expect == Expect::ApiServerFailing {
        c.check(
            f,
            status_line.starts_with("HTTP/1.1 500"),
            format!("nginx health check with a failing API server answered {status_line:?}, expected 500"),
        );
    } else {
        c.check(
            f,
            f.text("curl-healthz.rc").trim() == "0" && status_line == "HTTP/1.1 200 OK" && body == "ok",
            format!("`curl -H \"Host: kubernetes.default.svc.cluster.local\" -i http://127.0.0.1/healthz` gave {status_line:?} / {body:?} (rc {}, {})",
                f.text("curl-healthz.rc").trim(), f.text("curl-healthz.err").trim().rsplit(['\r', '\n']).next().unwrap_or("")),
        );
        c.check(
            f,
            curl.to_ascii_lowercase().contains("server: nginx"),
            "the health check did not go through nginx",
        );
        // And nginx did reach the API server over TLS for it.
        let after = f.oneshot_window().1;
        c.check(
            f,
            f.api_requests().iter().any(|r| {
                r["path"] == "/healthz"
                    && r["status"] == 200
                    && r["user_agent"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("curl/"))
                    && r["mono"].as_f64().unwrap_or(0.0) >= after
            }),
            "the API server stand-in saw no /healthz from nginx",
        );
    }
}

/// etcd ran as a real systemd service from the overlay's unit, was ready
/// before the API server started, and the API server reached it over TLS.
fn check_etcd(c: &mut Checks, f: &Facts, version: &str) {
    const ETCD: &str = "etcd.service";
    // Ready (Type=notify: the real etcd said so) before the API server started.
    let ready = f.mono(ETCD, "ActiveEnterTimestampMonotonic");
    let api_started = f.mono("kube-apiserver.service", "ExecMainStartTimestampMonotonic");
    c.check(
        f,
        f.prop(ETCD, "Type") == "notify" && ready > 0.0 && ready <= api_started,
        format!(
            "etcd.service ({}) was ready at {ready:.2}s, kube-apiserver started at {api_started:.2}s: not ordered after it",
            f.prop(ETCD, "Type")
        ),
    );
    // The API server's own first look at etcd (its --etcd-* flags): healthy.
    let seen: Vec<Value> = f
        .api_events()
        .into_iter()
        .filter(|e| e["event"] == "etcd")
        .collect();
    let want = format!("https://{NODE_IP}:2379");
    c.check(
        f,
        seen.len() == 1
            && seen[0]["server"] == want.as_str()
            && seen[0]["status"] == 200
            && seen[0]["body"]
                .as_str()
                .is_some_and(|b| b.contains("\"health\":\"true\"")),
        format!("the API server's look at etcd ({want}/health over TLS) when it started: {seen:?}"),
    );
    // Still healthy when the boot was over, through the node's own 127.0.0.1.
    let health = f.text("etcd-health.txt");
    c.check(
        f,
        f.text("etcd-health.rc").trim() == "0"
            && health.contains("https://127.0.0.1:2379 is healthy"),
        format!("etcdctl endpoint health (API server's certificate): {health:?}"),
    );
    let members = f.text("etcd-members.txt");
    c.check(
        f,
        members.contains(&format!(
            "started, controller-1, https://{NODE_IP}:2380, https://{NODE_IP}:2379"
        )),
        format!("etcd member list: {members:?}"),
    );
    // The data folder as the overlay made it.
    c.check(
        f,
        f.text("stat.txt")
            .contains("root:root 700 directory /var/lib/etcd"),
        format!(
            "/var/lib/etcd: {:?}",
            f.text("stat.txt")
                .lines()
                .find(|l| l.ends_with("/var/lib/etcd"))
        ),
    );
    // The stand-in wrapper dropped only what etcd 3.4 does not know (3.6's flags).
    let wrapper = f.text("standin/etcd.events.txt");
    let dropped = wrapper
        .lines()
        .find_map(|l| l.strip_prefix("dropped:"))
        .unwrap_or("(never ran)")
        .trim()
        .to_string();
    let minor: u32 = support::etcd_version(version)
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    let want_dropped = if minor >= 6 {
        "--feature-gates=InitialCorruptCheck=true --watch-progress-notify-interval=5s"
    } else {
        ""
    };
    c.check(
        f,
        dropped == want_dropped,
        format!("the etcd stand-in dropped {dropped:?}, expected {want_dropped:?}"),
    );
}

fn check_oneshot(
    c: &mut Checks,
    f: &Facts,
    expect: Expect,
    rbac_versions: &[&str],
) -> Option<String> {
    let u = |k: &str| f.prop(ONESHOT, k);
    let requests = f.api_requests();
    let (t0, t1) = f.oneshot_window();
    let creates: Vec<&Value> = requests
        .iter()
        .filter(|r| r["method"] == "POST" && r["status"] == 201)
        .collect();
    let journal = f.jsonl("journal-rbac.jsonl");
    let done = f.text("state-ls.txt").contains("kube-rbac-bootstrap.done");

    match expect {
        Expect::ApiServerFailing => {
            c.check(
                f,
                u("ConditionResult") == "yes",
                format!(
                    "{ONESHOT} condition result {:?} on a fresh state disk",
                    u("ConditionResult")
                ),
            );
            c.check(
                f,
                u("ActiveState") == "failed" && u("Result") != "success",
                format!(
                    "{ONESHOT} ended {}/{} with result {}, expected failed",
                    u("ActiveState"),
                    u("SubState"),
                    u("Result")
                ),
            );
            let health: Vec<&Value> = requests
                .iter()
                .filter(|r| is_health(r["path"].as_str().unwrap_or("")))
                .filter(|r| (t0..=t1).contains(&r["mono"].as_f64().unwrap_or(-1.0)))
                .collect();
            // It retried (at least two attempts reached the stand-in; an early one may
            // find nothing listening yet) and gave up within the narrowed bound.
            let attempts = narrowed_attempts();
            c.check(
                f,
                health.len() >= 2 && health.len() <= attempts,
                format!(
                    "{ONESHOT} asked for health {} times while it ran, expected 2 to {attempts}",
                    health.len()
                ),
            );
            c.check(
                f,
                f.prop(ONESHOT, "Environment")
                    .contains(&format!("ATTEMPTS={attempts}")),
                format!(
                    "the narrowing drop-in did not apply: Environment={}",
                    f.prop(ONESHOT, "Environment")
                ),
            );
            // Not blocking boot: multi-user.target was reached while the one-shot still waited.
            let reached = f.mono("multi-user.target", "ActiveEnterTimestampMonotonic");
            c.check(
                f,
                reached > 0.0 && reached < t1,
                format!("multi-user.target was reached at {reached:.1}s, after {ONESHOT} gave up at {t1:.1}s: the boot waited for it"),
            );
            c.check(
                f,
                health.iter().all(|r| r["status"] == 500),
                "the failing stand-in answered a health check with something other than 500",
            );
            c.check(
                f,
                creates.is_empty(),
                format!("objects were created although the API server was failing: {creates:?}"),
            );
            c.check(
                f,
                !done,
                format!("{DONE_FILE} was recorded although the bootstrap failed"),
            );
            let visible = journal.iter().any(|e| {
                e["PRIORITY"]
                    .as_str()
                    .and_then(|p| p.parse::<u8>().ok())
                    .is_some_and(|p| p <= 3)
                    && e["MESSAGE"]
                        .as_str()
                        .is_some_and(|m| m.contains("Failed") || m.contains("failed"))
            });
            c.check(
                f,
                visible,
                format!("no error-level failure of {ONESHOT} in the journal"),
            );
            eprintln!(
                "  [{}] {ONESHOT}: {} health checks in {:.1}s, then {} ({})",
                f.name,
                health.len(),
                t1 - t0,
                u("Result"),
                u("ActiveState")
            );
            None
        }
        Expect::HealsAfterOutage => check_healed(c, f, rbac_versions),
        Expect::AlreadyDone => check_already_done(c, f),
        Expect::Applies => {
            c.check(
                f,
                u("ConditionResult") == "yes",
                format!("{ONESHOT} condition result {:?}", u("ConditionResult")),
            );
            // The shipped unit (no drop-in here) bounds its wait.
            c.check(
                f,
                u("TimeoutStartUSec") != "infinity" && !u("TimeoutStartUSec").is_empty(),
                format!(
                    "{ONESHOT} has no start timeout (TimeoutStartUSec={})",
                    u("TimeoutStartUSec")
                ),
            );
            c.check(
                f,
                u("Result") == "success"
                    && u("ExecMainStatus") == "0"
                    && u("ActiveState") != "failed",
                format!(
                    "{ONESHOT} ended {} with result {} status {}",
                    u("ActiveState"),
                    u("Result"),
                    u("ExecMainStatus")
                ),
            );
            let (healthy, first_api) = check_rbac_applied(c, f, rbac_versions);
            let done_text = f.text("state-done.txt");
            eprintln!(
                "  [{}] {ONESHOT}: ran {:.1}s; API healthy at {:.1}s, first API request at {:.1}s (monotonic); {} objects created",
                f.name,
                t1 - t0,
                healthy,
                first_api,
                creates.len()
            );
            Some(done_text)
        }
        Expect::Skips => {
            c.check(
                f,
                u("ConditionResult") == "no",
                format!(
                    "{ONESHOT} condition result {:?}, expected no (skipped)",
                    u("ConditionResult")
                ),
            );
            c.check(
                f,
                u("ExecMainStartTimestampMonotonic") == "0" && u("ActiveState") == "inactive",
                format!(
                    "{ONESHOT} ran on the second boot: {} start at {}",
                    u("ActiveState"),
                    u("ExecMainStartTimestampMonotonic")
                ),
            );
            let kubectl: Vec<&Value> = requests
                .iter()
                .filter(|r| {
                    r["user_agent"]
                        .as_str()
                        .is_some_and(|a| a.starts_with("kubectl"))
                })
                .collect();
            c.check(
                f,
                kubectl.is_empty(),
                format!(
                    "kubectl talked to the API server on the second boot: {} requests",
                    kubectl.len()
                ),
            );
            c.check(
                f,
                creates.is_empty(),
                "objects were created again on the second boot",
            );
            c.check(f, done, format!("{DONE_FILE} is gone on the second boot"));
            c.check(
                f,
                journal.iter().any(|e| {
                    e["MESSAGE"]
                        .as_str()
                        .is_some_and(|m| m.contains("skipped") || m.contains("condition"))
                }),
                format!("the journal does not say {ONESHOT} was skipped"),
            );
            Some(f.text("state-done.txt"))
        }
    }
}

/// The one-shot applied the seed's RBAC: only after the API server was healthy
/// (and a health check said so), authenticated as admin, each object once,
/// through a served rbac version; the done file is on the state disk.
/// Returns when the stand-in became healthy and the first API request came.
fn check_rbac_applied(c: &mut Checks, f: &Facts, rbac_versions: &[&str]) -> (f64, f64) {
    let requests = f.api_requests();
    let (t0, _) = f.oneshot_window();
    let creates: Vec<&Value> = requests
        .iter()
        .filter(|r| r["method"] == "POST" && r["status"] == 201)
        .collect();
    let done = f.text("state-ls.txt").contains("kube-rbac-bootstrap.done");
    // Ordering: nothing but health checks before the API server was healthy.
    let healthy = f
        .api_events()
        .iter()
        .find(|e| e["event"] == "healthy")
        .and_then(|e| e["mono"].as_f64());
    c.check(f, healthy.is_some(), "the stand-in never became healthy");
    let healthy = healthy.unwrap_or(f64::MAX);
    let api: Vec<&Value> = requests
        .iter()
        .filter(|r| !is_health(r["path"].as_str().unwrap_or("")) && r["path"] != "/version")
        .filter(|r| r["method"].is_string())
        .collect();
    let first_api = api
        .iter()
        .filter_map(|r| r["mono"].as_f64())
        .fold(f64::MAX, f64::min);
    c.check(f, !api.is_empty(), "kubectl never reached the API server");
    c.check(
        f,
        first_api >= healthy,
        format!(
            "the first API request came {:.2}s before the API server was healthy",
            healthy - first_api
        ),
    );
    c.check(
        f,
        api.iter().all(|r| r["status"] != 503),
        "an API request was turned away as not ready",
    );
    c.check(
        f,
        requests.iter().any(|r| {
            is_health(r["path"].as_str().unwrap_or(""))
                && r["status"] == 200
                && r["mono"]
                    .as_f64()
                    .is_some_and(|m| m >= t0 && m <= first_api)
        }),
        format!("{ONESHOT} did not see a healthy API server before applying"),
    );
    c.check(
        f,
        api.iter().all(|r| r["client"]["user"] == "admin" && r["client"]["groups"].as_array().is_some_and(|g| g.iter().any(|g| g == "system:masters"))),
        "kubectl did not authenticate as admin (system:masters) with admin.kubeconfig's client certificate",
    );
    // The two objects, with the seed's content, created once each.
    for (resource, want) in [
        ("clusterroles", seed_clusterrole()),
        ("clusterrolebindings", seed_clusterrolebinding()),
    ] {
        let got: Vec<&&Value> = creates
            .iter()
            .filter(|r| {
                r["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&format!("/{resource}")))
            })
            .collect();
        c.check(
            f,
            got.len() == 1,
            format!("{} {resource} created, expected 1", got.len()),
        );
        if let Some(r) = got.first() {
            let path = r["path"].as_str().unwrap_or("");
            let served = rbac_versions
                .iter()
                .any(|v| path == format!("/apis/rbac.authorization.k8s.io/{v}/{resource}"));
            c.check(f, served, format!("{resource} created through {path}, not a served rbac version ({rbac_versions:?})"));
            let api_version = r["body"]["apiVersion"].as_str().unwrap_or("");
            c.check(
                f,
                path.contains(&format!("/{api_version}/")),
                format!("body apiVersion {api_version} does not match {path}"),
            );
            let norm = normalize(&r["body"]);
            c.check(
                f,
                norm == want,
                format!(
                    "{resource}: received\n{}\nexpected the seed's\n{}",
                    serde_json::to_string_pretty(&norm).unwrap(),
                    serde_json::to_string_pretty(&want).unwrap()
                ),
            );
        }
    }
    c.check(
        f,
        done,
        format!("{DONE_FILE} was not recorded on the state disk"),
    );
    (healthy, first_api)
}

/// LATE seconds of API server outage in the v1.34+ boot (IMGBUILD_BOOT_LATE;
/// the 12 minutes by default).
fn late_seconds() -> u64 {
    env_or("IMGBUILD_BOOT_LATE", "720")
        .parse()
        .expect("IMGBUILD_BOOT_LATE: seconds")
}

/// The shipped one-shot's knobs, read from the unit as the boot loaded it.
fn oneshot_env(f: &Facts) -> BTreeMap<String, u64> {
    f.prop(ONESHOT, "Environment")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(k, v)| Some((k.to_string(), v.trim_end_matches('s').parse().ok()?)))
        .collect()
}

/// The journal lines of the one-shot's own script (not systemd's).
fn oneshot_messages(f: &Facts) -> Vec<String> {
    f.jsonl("journal-rbac.jsonl")
        .iter()
        .filter(|e| e["SYSLOG_IDENTIFIER"] != "systemd")
        .filter_map(|e| e["MESSAGE"].as_str().map(String::from))
        .collect()
}

/// v1.34+, API server LATE seconds late on a fresh state disk: the one-shot
/// failed attempt after attempt, each bounded, waiting longer each time up to
/// its cap, never gave up, applied RBAC once soon after the API server came
/// up, and removed admin.kubeconfig; the boot did not wait for it.
fn check_healed(c: &mut Checks, f: &Facts, rbac_versions: &[&str]) -> Option<String> {
    let u = |k: &str| f.prop(ONESHOT, k);
    let late = late_seconds() as f64;
    c.check(
        f,
        u("Result") == "success" && u("ExecMainStatus") == "0" && u("ActiveState") == "inactive",
        format!(
            "{ONESHOT} ended {}/{} with result {} status {}, expected success",
            u("ActiveState"),
            u("SubState"),
            u("Result"),
            u("ExecMainStatus")
        ),
    );
    c.check(
        f,
        u("Restart") == "on-failure" && u("StartLimitIntervalUSec") == "0",
        format!(
            "{ONESHOT}: Restart={} StartLimitIntervalUSec={}",
            u("Restart"),
            u("StartLimitIntervalUSec")
        ),
    );
    let events = f.api_events();
    let mono = |name: &str| {
        events
            .iter()
            .find(|e| e["event"] == name)
            .and_then(|e| e["mono"].as_f64())
    };
    let (started, listening) = (mono("start"), mono("listening"));
    c.check(
        f,
        started
            .zip(listening)
            .is_some_and(|(s, l)| l - s >= late - 1.0),
        format!(
            "the stand-in was not down for {late}s: started {started:?}, listening {listening:?}"
        ),
    );
    // Many attempts, each failed one waiting longer: 5, 10, 20, ... up to BACKOFF_MAX.
    let env = oneshot_env(f);
    let (first, cap) = (env["BACKOFF_FIRST"], env["BACKOFF_MAX"]);
    let messages = oneshot_messages(f);
    let waits: Vec<u64> = messages
        .iter()
        .filter(|m| m.contains(" failed: "))
        .filter_map(|m| {
            m.split("starts in ")
                .nth(1)?
                .split('s')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let expected: Vec<u64> = (0..waits.len() as u32)
        .map(|n| (first << n.min(20)).min(cap))
        .collect();
    c.check(
        f,
        waits.len() >= 3 && waits == expected,
        format!("waits between attempts {waits:?}, expected {expected:?} (at least 3)"),
    );
    let restarts: usize = u("NRestarts").parse().unwrap_or(0);
    c.check(
        f,
        restarts == waits.len(),
        format!(
            "{ONESHOT} restarted {restarts} times for {} failed attempts",
            waits.len()
        ),
    );
    let journal = f.text("journal-rbac.txt");
    c.check(
        f,
        !journal.contains("timed out") && !journal.contains("'timeout'"),
        format!("an attempt of {ONESHOT} overran its TimeoutStartSec:\n{journal}"),
    );
    let (healthy, first_api) = check_rbac_applied(c, f, rbac_versions);
    // Healed soon after the API server came up: within one wait, one
    // RestartSec and one attempt (two bounded kubectl calls).
    let bound = (cap + 5 + 2 * env["CALL_TIMEOUT"]) as f64;
    c.check(
        f,
        first_api - healthy <= bound,
        format!(
            "RBAC applied {:.0}s after the API server became healthy, over {bound}s",
            first_api - healthy
        ),
    );
    let reached = f.mono("multi-user.target", "ActiveEnterTimestampMonotonic");
    c.check(
        f,
        reached > 0.0 && listening.is_some_and(|l| reached < l),
        format!("multi-user.target was reached at {reached:.1}s, after the API server came up: the boot waited"),
    );
    check_admin_kubeconfig_removed(c, f, &messages);
    // The check during the outage: the node does not serve.
    let outage = f.text("check-outage.txt");
    c.check(
        f,
        f.text("check-outage.rc").trim() == "2"
            && outage.contains("CRITICAL API server https://127.0.0.1:6443/readyz")
            && outage.ends_with("kube-control-plane-check: CRITICAL\n"),
        format!(
            "kube-control-plane-check during the outage: rc {} (expected 2, CRITICAL)\n{outage}",
            f.text("check-outage.rc").trim()
        ),
    );
    eprintln!(
        "  [{}] {ONESHOT}: API server down {late}s, {} failed attempts (waits {waits:?}), RBAC applied {:.1}s after it became healthy",
        f.name,
        waits.len(),
        first_api - healthy
    );
    Some(f.text("state-done.txt"))
}

/// v1.34+, a later boot: the one-shot ran, applied nothing, and removed the
/// admin.kubeconfig the initramfs brought back.
fn check_already_done(c: &mut Checks, f: &Facts) -> Option<String> {
    let u = |k: &str| f.prop(ONESHOT, k);
    c.check(
        f,
        u("Result") == "success" && u("ExecMainStatus") == "0" && u("NRestarts") == "0",
        format!(
            "{ONESHOT}: result {} status {} restarts {}",
            u("Result"),
            u("ExecMainStatus"),
            u("NRestarts")
        ),
    );
    let messages = oneshot_messages(f);
    c.check(
        f,
        messages
            .iter()
            .any(|m| m.starts_with("RBAC already applied")),
        format!("{ONESHOT} does not say RBAC was applied before: {messages:?}"),
    );
    let requests = f.api_requests();
    let kubectl = requests
        .iter()
        .filter(|r| {
            r["user_agent"]
                .as_str()
                .is_some_and(|a| a.starts_with("kubectl"))
        })
        .count();
    c.check(
        f,
        kubectl == 0,
        format!("kubectl talked to the API server on a later boot: {kubectl} requests"),
    );
    c.check(
        f,
        !requests.iter().any(|r| r["method"] == "POST"),
        "objects were created again on a later boot",
    );
    check_admin_kubeconfig_removed(c, f, &messages);
    Some(f.text("state-done.txt"))
}

fn check_admin_kubeconfig_removed(c: &mut Checks, f: &Facts, messages: &[String]) {
    let ls = f.text("kubernetes-ls.txt");
    c.check(
        f,
        !ls.contains("admin.kubeconfig") && ls.contains("kube-scheduler.kubeconfig"),
        format!("admin.kubeconfig is still on the node (remove_admin_kubeconfig):\n{ls}"),
    );
    c.check(
        f,
        messages
            .iter()
            .any(|m| m.starts_with("removed /var/lib/kubernetes/admin.kubeconfig")),
        format!("{ONESHOT} does not say it removed admin.kubeconfig: {messages:?}"),
    );
}

/// v1.34+, once the API server serves: kube-control-plane-check passes
/// everything on the node (0 with --local, also through the one-shot's
/// --check) and warns (1) about the unreachable load balancer.
fn check_control_plane_check(c: &mut Checks, f: &Facts) {
    let all = f.text("check.txt");
    for line in [
        "OK       API server https://127.0.0.1:6443/livez: live",
        "OK       API server https://127.0.0.1:6443/readyz: ready (3 checks passed)",
        "OK       nginx http://127.0.0.1/healthz (Host: kubernetes.default.svc.cluster.local): ok",
        "OK       nginx http://127.0.0.1/readyz (the load balancer's check): ok",
        "WARNING  load balancer https://203.0.113.10:6443/version: HTTP 000",
        "OK       RBAC for kube-apiserver to kubelet: applied",
    ] {
        c.check(
            f,
            all.lines().any(|l| l.starts_with(line)),
            format!("kube-control-plane-check lacks {line:?}:\n{all}"),
        );
    }
    c.check(
        f,
        all.lines()
            .any(|l| l.starts_with("OK       API server https://127.0.0.1:6443/version: v1.")),
        format!("kube-control-plane-check did not see the version:\n{all}"),
    );
    for (file, rc) in [("check", "1"), ("check-local", "0"), ("check-oneshot", "0")] {
        c.check(
            f,
            f.text(&format!("{file}.rc")).trim() == rc,
            format!(
                "{file}: exit {} expected {rc}:\n{}",
                f.text(&format!("{file}.rc")).trim(),
                f.text(&format!("{file}.txt"))
            ),
        );
    }
    c.check(
        f,
        f.text("check-local.txt")
            .ends_with("kube-control-plane-check: OK\n"),
        format!("--local:\n{}", f.text("check-local.txt")),
    );
}

/// ATTEMPTS in the failing boot's drop-in (tests/boot/failing/...), read once,
/// when the test packs the drop-in.
fn narrowed_attempts() -> usize {
    static ATTEMPTS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *ATTEMPTS.get_or_init(|| {
        let text = fs::read_to_string(manifest_dir().join(
            "tests/boot/failing/etc/systemd/system/kube-rbac-bootstrap.service.d/boot-test-bound.conf",
        ))
        .unwrap();
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Environment="))
            .flat_map(|l| l.split_whitespace())
            .find_map(|w| w.strip_prefix("ATTEMPTS=").and_then(|n| n.parse().ok()))
            .expect("ATTEMPTS= in the drop-in")
    })
}

/// Whether `version` gets the v1.34+ control plane (input::control_plane).
fn is_current(version: &str) -> bool {
    imgbuild::input::recipe::Version::parse(version)
        .is_some_and(imgbuild::input::control_plane::is_current)
}

/// Which rbac.authorization.k8s.io versions a server of `version` serves.
fn rbac_versions(version: &str) -> Vec<&'static str> {
    let minor: u32 = version
        .trim_start_matches('v')
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(99);
    if minor < 22 {
        vec!["v1", "v1beta1"]
    } else {
        vec!["v1"]
    }
}

// ---------------------------------------------------------------------------
// The test
// ---------------------------------------------------------------------------

#[test]
fn controller_boots_configured_and_bootstraps_rbac_once() {
    let clock = Clock(Instant::now());
    // Both the newest shipped release and the seed's by default.
    let versions: Vec<String> = match std::env::var("IMGBUILD_BOOT_VERSION") {
        Ok(v) if !v.is_empty() => v.split(',').map(|v| v.trim().to_string()).collect(),
        _ => vec![newest_pinned_version(), "v1.10.2".to_string()],
    };
    // Which imgbuild output each version boots: IMGBUILD_BOOT_FORMAT for all, or
    // imgbuild's own initramfs (cpio.gz) for the first version when this imgbuild
    // writes it, and the rootfs tarball laid onto a folder otherwise: its --split
    // pair (whose concatenation tests/reuse.rs shows is the whole archive).
    let forced_format = std::env::var("IMGBUILD_BOOT_FORMAT")
        .ok()
        .filter(|f| !f.is_empty());
    let writes_cpio = {
        let help = Command::new(support::BIN)
            .args(["controller", "--help"])
            .output()
            .expect("imgbuild --help");
        String::from_utf8_lossy(&help.stdout).contains("cpio.gz")
    };
    let format_for = |i: usize| -> String {
        forced_format.clone().unwrap_or_else(|| {
            if i == 0 && writes_cpio {
                "cpio.gz".into()
            } else {
                "tar.gz-split".into()
            }
        })
    };
    let cache = PathBuf::from(env_or(
        "IMGBUILD_BOOT_CACHE",
        "/var/cache/imgbuild-boot-test",
    ));
    let kernel = std::env::var_os("IMGBUILD_BOOT_KERNEL")
        .map(PathBuf::from)
        .unwrap_or_else(default_kernel);
    let kubectl = std::env::var_os("IMGBUILD_BOOT_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(default_kubectl);
    let timeout = Duration::from_secs(
        env_or("IMGBUILD_BOOT_TIMEOUT", "600")
            .parse()
            .expect("IMGBUILD_BOOT_TIMEOUT"),
    );
    check_prerequisites(&kernel, &kubectl);
    let kver = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .expect("the kernel's file name must be vmlinuz-<release>")
        .to_string();
    clock.say(format!(
        "versions {versions:?} (formats {:?}); kernel {}; kubectl {}",
        (0..versions.len()).map(format_for).collect::<Vec<_>>(),
        kernel.display(),
        kubectl.display()
    ));

    // IMGBUILD_BOOT_RECHECK=<work folder of an earlier run>: for working on the
    // assertions only, takes the boots' facts from there instead of booting again.
    let recheck = std::env::var_os("IMGBUILD_BOOT_RECHECK").map(PathBuf::from);
    let work = match &recheck {
        Some(dir) => {
            clock.say(format!(
                "RECHECK: reusing the boots of {} (no boot in this run)",
                dir.display()
            ));
            dir.clone()
        }
        None => {
            let work = std::env::temp_dir().join(format!("imgbuild-boot-{}", std::process::id()));
            let _ = fs::remove_dir_all(&work);
            work
        }
    };
    fs::create_dir_all(&work).unwrap();
    clock.say(format!("work folder {}", work.display()));

    // 1. Debian userland (cached outside the clone, keyed by its package list).
    let t = Instant::now();
    let base = PathBuf::from(
        run(
            Command::new("sh")
                .arg(manifest_dir().join("tests/boot/rootfs.sh"))
                .arg(&cache),
            "Debian rootfs",
        )
        .trim(),
    );
    let rootfs_time = t.elapsed();
    clock.say(format!(
        "Debian base archive {} ready in {:.1}s",
        base.display(),
        rootfs_time.as_secs_f64()
    ));

    // 2. The test's scaffolding (probe, state disk mount, virtio modules).
    let scaffold = work.join("scaffold.cpio");
    run(
        Command::new("sh")
            .arg(manifest_dir().join("tests/boot/scaffold.sh"))
            .arg(&scaffold)
            .arg(&kver),
        "scaffolding",
    );

    // 3.-6. Per version: overlay, three boots, assertions.
    let base_entries = read_cpio_file(&base, &work);
    let narrow = work.join("narrow-bound.cpio");
    let _ = narrowed_attempts();
    cpio_of_dir(&manifest_dir().join("tests/boot/failing"), &narrow);
    let mut outcomes = Vec::new();
    for (i, version) in versions.iter().enumerate() {
        let format = format_for(i);
        let vwork = work.join(version);
        fs::create_dir_all(&vwork).unwrap();
        let outcome = boot_version(&Run {
            clock: &clock,
            work: &vwork,
            version,
            format: &format,
            kernel: &kernel,
            kubectl: &kubectl,
            base: &base,
            base_entries: &base_entries,
            scaffold: &scaffold,
            narrow: &narrow,
            timeout,
            reuse: recheck.is_some(),
        });
        outcomes.push(outcome);
    }
    eprintln!("boot test timings:");
    eprintln!(
        "  Debian rootfs (debootstrap or cache): {:6.1}s",
        rootfs_time.as_secs_f64()
    );
    for (summary, _) in &outcomes {
        eprint!("{summary}");
    }
    eprintln!("  total: {:.1}s", clock.0.elapsed().as_secs_f64());
    let failed: Vec<&String> = outcomes.iter().flat_map(|(_, c)| c.failed.iter()).collect();
    let passed: usize = outcomes.iter().map(|(_, c)| c.passed).sum();
    if failed.is_empty() {
        if std::env::var_os("IMGBUILD_BOOT_KEEP").is_none() && recheck.is_none() {
            let _ = fs::remove_dir_all(&work);
        }
        eprintln!("boot test: {passed} checks passed for {versions:?}");
    } else {
        panic!(
            "{} of {} boot checks failed (facts and consoles kept in {}):\n  - {}",
            failed.len(),
            failed.len() + passed,
            work.display(),
            failed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n  - ")
        );
    }
}

struct Run<'a> {
    clock: &'a Clock,
    work: &'a Path,
    version: &'a str,
    format: &'a str,
    kernel: &'a Path,
    kubectl: &'a Path,
    base: &'a Path,
    base_entries: &'a BTreeMap<String, CpioEntry>,
    scaffold: &'a Path,
    narrow: &'a Path,
    timeout: Duration,
    reuse: bool,
}

/// Builds `version`'s overlay, boots it three times and checks; returns the
/// timing summary and the checks.
fn boot_version(r: &Run) -> (String, Checks) {
    let Run {
        clock,
        version,
        format,
        kernel,
        kubectl,
        base,
        base_entries,
        scaffold,
        narrow,
        timeout,
        ..
    } = *r;
    let work = r.work;
    let version = version.to_string();
    clock.say(format!("=== {version} ==="));
    // 3. Node 1's overlay, by imgbuild.
    let t = Instant::now();
    let overlay_path = build_overlay(clock, work, &version, kubectl, format);
    let overlay = read_cpio_file(&overlay_path, work);
    clock.say(format!(
        "overlay {} ({} entries) built in {:.1}s",
        overlay_path.display(),
        overlay.len(),
        t.elapsed().as_secs_f64()
    ));
    for unit in SERVICES.iter().chain(["nginx.service", ONESHOT].iter()) {
        let rel = format!("etc/systemd/system/multi-user.target.wants/{unit}");
        assert!(
            !base_entries.contains_key(&rel),
            "the Debian base already enables {unit}: the test would prove nothing"
        );
    }
    for (path, e) in &overlay {
        assert!(
            e.uid == 0 && e.gid == 0,
            "overlay entry {path} is owned by {}:{}",
            e.uid,
            e.gid
        );
    }
    let _ = overlay.values().map(|e| e.mode);

    // 4. One initramfs: Debian, then the scaffolding, then imgbuild's overlay on
    // top. The failing boot's also gets the drop-in that narrows the one-shot's bound.
    let concat = |name: &str, parts: &[&Path]| {
        let initrd = work.join(name);
        let mut out = fs::File::create(&initrd).unwrap();
        let mut len = 0u64;
        for part in parts {
            len += io::copy(&mut fs::File::open(part).unwrap(), &mut out).unwrap();
            // The kernel takes an uncompressed archive only at a 4-byte boundary
            // ("invalid magic at start of compressed archive" otherwise); it skips
            // zeros between archives. A gzip stream may end anywhere.
            let pad = (4 - len % 4) % 4;
            io::Write::write_all(&mut out, &vec![0u8; pad as usize]).unwrap();
            len += pad;
        }
        initrd
    };
    let initrd = concat("initrd.img", &[base, scaffold, &overlay_path]);
    let initrd_failing = concat(
        "initrd-failing.img",
        &[base, scaffold, &overlay_path, narrow],
    );
    let state_disk = work.join("state.img");
    let fresh_state_disk = || {
        fs::write(&state_disk, b"").unwrap();
        fs::File::options()
            .write(true)
            .open(&state_disk)
            .unwrap()
            .set_len(32 << 20)
            .unwrap();
        run(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-L", "imgbuild-state"])
                .arg(&state_disk),
            "mkfs.ext4",
        );
    };
    let machine = Machine {
        kernel: kernel.to_path_buf(),
        initrd,
        state_disk: state_disk.clone(),
        memory_mib: 2048,
        cpus: env_or("IMGBUILD_BOOT_CPUS", "2")
            .parse()
            .expect("IMGBUILD_BOOT_CPUS"),
        timeout,
        reuse: r.reuse,
    };

    // 5. The boots, and 6. the assertions. From v1.34 the one-shot retries
    // until it succeeds: the API server comes up LATE seconds late on a fresh
    // state disk, then a later boot. Before, the seed's bounded one-shot:
    // failing, first healthy boot, a later one.
    let mut c = Checks::default();
    let served = rbac_versions(&version);
    fresh_state_disk();
    let boots = if is_current(&version) {
        let late = late_seconds();
        let healed = Machine {
            timeout: timeout + Duration::from_secs(late),
            ..machine.clone()
        }
        .boot(
            clock,
            work,
            &format!("1-apiserver-{late}s-late"),
            &format!("imgbuild_test.apiserver=late:{late}"),
        );
        let again = machine.boot(clock, work, "2-later-same-disk", "");
        for (f, expect) in [
            (&healed, Expect::HealsAfterOutage),
            (&again, Expect::AlreadyDone),
        ] {
            check_common(&mut c, f, &version, &overlay, expect);
            check_control_plane_check(&mut c, f);
        }
        let done_first = check_oneshot(&mut c, &healed, Expect::HealsAfterOutage, &served);
        let done_again = check_oneshot(&mut c, &again, Expect::AlreadyDone, &served);
        c.check(
            &again,
            done_first == done_again && done_first.as_ref().is_some_and(|d| !d.is_empty()),
            format!("the done file changed: {done_first:?} -> {done_again:?}"),
        );
        c.check(
            &again,
            healed.text("boot-id.txt") != again.text("boot-id.txt"),
            "the later boot has the first boot's boot id",
        );
        vec![healed, again]
    } else {
        let failing = Machine {
            initrd: initrd_failing,
            ..machine.clone()
        }
        .boot(clock, work, "1-apiserver-failing", FAIL_SWITCH);
        let first = machine.boot(clock, work, "2-first-healthy", "");
        let second = machine.boot(clock, work, "3-second-same-disk", "");
        for (f, expect) in [
            (&failing, Expect::ApiServerFailing),
            (&first, Expect::Applies),
            (&second, Expect::Skips),
        ] {
            check_common(&mut c, f, &version, &overlay, expect);
        }
        check_oneshot(&mut c, &failing, Expect::ApiServerFailing, &served);
        let done_first = check_oneshot(&mut c, &first, Expect::Applies, &served);
        let done_second = check_oneshot(&mut c, &second, Expect::Skips, &served);
        c.check(
            &second,
            done_first == done_second,
            format!("the done file changed: {done_first:?} -> {done_second:?}"),
        );
        c.check(
            &second,
            first.text("boot-id.txt") != second.text("boot-id.txt"),
            "the second boot has the first boot's boot id",
        );
        c.check(
            &failing,
            failing.text("cmdline.txt").contains(FAIL_SWITCH)
                && !first.text("cmdline.txt").contains(FAIL_SWITCH),
            "the failure switch is not where it should be on the kernel command lines",
        );
        vec![failing, first, second]
    };

    let mut summary = String::new();
    writeln!(summary, "  {version} (imgbuild output {format}):").unwrap();
    for f in &boots {
        writeln!(
            summary,
            "    boot {:<22} {:6.1}s wall, boot finished at {}s uptime ({})",
            f.name,
            f.wall.as_secs_f64(),
            f.text("uptime.txt")
                .split_whitespace()
                .next()
                .unwrap_or("?"),
            f.text("system-state.txt").trim()
        )
        .unwrap();
    }
    if !c.failed.is_empty() {
        for f in &boots {
            eprintln!(
                "--- {version} {}: console {}; journal of {ONESHOT}:\n{}",
                f.name,
                f.console.display(),
                f.text("journal-rbac.txt")
            );
        }
    }
    (summary, c)
}
