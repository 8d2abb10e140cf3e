//! The one test workspace: a temporary folder with an inventory, a PKI, the
//! stand-in release tarballs (the server's and etcd's) and a test recipe
//! pinning them, a cache, a recipes folder and, when asked, a loopback mirror
//! serving the tarballs; and the imgbuild command run in it with a scrubbed
//! environment.
//!
//! ```ignore
//! let ws = Workspace::new("v1.10.2"); // the usual: everything, tarball imported
//! let ws = Workspace::builder("v1.36.0").arch("arm64").binaries(4096).build();
//! let ws = Workspace::builder("v1.10.2").not_imported().online().mirror().build();
//! let stdout = ws.ok(&["controller", "--node", "1"]);
//! let stderr = ws.fails(&["controller", "--node", "9"], 2);
//! ```

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::http_mirror::Mirror;
use super::release::{
    BINARIES, etcd_stand_ins, etcd_tarball, etcd_tarball_name, etcd_version, example_inventory,
    server_tarball, stand_in, test_recipe,
};
use super::{BIN, REPO, files_under, text};

/// Cleared for every run, whatever the machine running the tests has set, so
/// that it cannot change what imgbuild does; a test that needs one sets it on
/// [`Workspace::cmd`]. Every other `IMGBUILD_*` variable of the test's own
/// environment is cleared too, and the workspace then sets `IMGBUILD_CACHE`,
/// `IMGBUILD_RECIPES`, `IMGBUILD_OFFLINE` (unless online), `NO_PROXY=*` and
/// `XDG_CACHE_HOME` itself.
const SCRUBBED: &[&str] = &[
    "IMGBUILD_CACHE",
    "IMGBUILD_RECIPES",
    "IMGBUILD_OVERLAYS",
    "IMGBUILD_OFFLINE",
    "IMGBUILD_MIRROR",
    "IMGBUILD_CA_CERT",
    "IMGBUILD_THREADS",
    "SOURCE_DATE_EPOCH",
    "http_proxy",
    "https_proxy",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "all_proxy",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
];

enum Pki {
    /// `imgbuild pki init`: a real CA, so consumers like nginx can load it.
    Fresh,
    /// `tests/fixtures/pki/<version>/`: every output byte known in advance.
    Fixed,
    None,
}

enum Binaries {
    /// Stand-ins of this many bytes each.
    StandIns(usize),
    /// These bytes (the boot test's executable stand-ins).
    Given(Vec<(&'static str, Vec<u8>)>),
    /// No tarball and no test recipe: the built-in recipes only.
    None,
}

/// How to make a [`Workspace`]; [`Workspace::builder`] starts from the usual one.
pub struct Builder {
    version: String,
    arch: String,
    inventory: Option<String>,
    pki: Pki,
    binaries: Binaries,
    /// etcd's binaries, when not stand-ins of the server binaries' size.
    etcd: Option<Vec<(&'static str, Vec<u8>)>>,
    import: bool,
    mirror: bool,
    offline: bool,
    explicit_inventory: bool,
    guard_secrets: bool,
    external_etcd: bool,
}

impl Builder {
    /// The inventory's arch and the tarball's (default `amd64`).
    pub fn arch(mut self, arch: &str) -> Builder {
        self.arch = arch.into();
        self
    }

    /// Stand-ins of `size` bytes each (default 64 KiB).
    pub fn binaries(mut self, size: usize) -> Builder {
        self.binaries = Binaries::StandIns(size);
        self
    }

    /// These binaries in the tarball instead of stand-ins.
    pub fn binary_contents(mut self, bins: Vec<(&'static str, Vec<u8>)>) -> Builder {
        self.binaries = Binaries::Given(bins);
        self
    }

    /// These binaries in etcd's tarball instead of stand-ins.
    pub fn etcd_contents(mut self, bins: Vec<(&'static str, Vec<u8>)>) -> Builder {
        self.etcd = Some(bins);
        self
    }

    /// No tarball and no test recipe (the recipes folder is empty).
    pub fn no_binaries(mut self) -> Builder {
        self.binaries = Binaries::None;
        self
    }

    /// The tarballs and their recipe, but not imported: the cache is empty.
    pub fn not_imported(mut self) -> Builder {
        self.import = false;
        self
    }

    /// This inventory instead of the bundled example's (at the version and arch).
    pub fn inventory(mut self, text: &str) -> Builder {
        self.inventory = Some(text.into());
        self
    }

    /// `[etcd] mode = "external"` in the inventory: the image holds no etcd,
    /// and nothing fetches, imports or pins etcd's tarball for it (tests about
    /// one artifact's download).
    pub fn external_etcd(mut self) -> Builder {
        self.external_etcd = true;
        self
    }

    /// The fixed PKI of `tests/fixtures/pki/<version>/` instead of a fresh one.
    pub fn fixed_pki(mut self) -> Builder {
        self.pki = Pki::Fixed;
        self
    }

    /// No PKI folder at all.
    pub fn no_pki(mut self) -> Builder {
        self.pki = Pki::None;
        self
    }

    /// Runs may use the network: `IMGBUILD_OFFLINE` is not set (proxies stay
    /// cleared and `NO_PROXY=*`; tests that want a proxy set it themselves).
    pub fn online(mut self) -> Builder {
        self.offline = false;
        self
    }

    /// A loopback [`Mirror`], serving the server tarball (if any) where
    /// dl.k8s.io would, and etcd's under `etcd/` (docs/fetch.md).
    pub fn mirror(mut self) -> Builder {
        self.mirror = true;
        self
    }

    /// Every run names the inventory by its absolute path (`--inventory`), so
    /// the paths imgbuild prints are absolute too.
    pub fn explicit_inventory(mut self) -> Builder {
        self.explicit_inventory = true;
        self
    }

    /// Every [`Workspace::run`] checks that nothing printed quotes secret data
    /// of the PKI folder.
    pub fn guard_secrets(mut self) -> Builder {
        self.guard_secrets = true;
        self
    }

    pub fn build(self) -> Workspace {
        let mut inventory = self
            .inventory
            .unwrap_or_else(|| example_inventory(&self.version, &self.arch));
        if self.external_etcd {
            inventory.push_str("\n[etcd]\nmode = \"external\"\n");
        }
        let etcd = etcd_version(&self.version);
        let mut ws = Workspace {
            tmp: tempfile::tempdir().unwrap(),
            version: self.version,
            arch: self.arch,
            etcd,
            tarball: None,
            etcd_tarball: None,
            mirror: None,
            offline: self.offline,
            explicit_inventory: self.explicit_inventory,
            guard_secrets: self.guard_secrets,
        };
        fs::write(ws.path("cluster.toml"), inventory).unwrap();
        fs::create_dir_all(ws.path("recipes")).unwrap();
        match self.pki {
            Pki::Fresh => {
                ws.ok(&["pki", "init"]);
            }
            Pki::Fixed => ws.copy_fixed_pki(),
            Pki::None => {}
        }
        let bins = match self.binaries {
            Binaries::StandIns(size) => Some((
                BINARIES.iter().map(|n| (*n, stand_in(n, size))).collect(),
                size,
            )),
            Binaries::Given(bins) => Some((bins, 64 * 1024)),
            Binaries::None => None,
        };
        if let Some((bins, size)) = bins {
            let etcd_bins = self
                .etcd
                .unwrap_or_else(|| etcd_stand_ins(&ws.etcd, "", size));
            ws.add_tarballs(&bins, &etcd_bins);
            if self.import && self.external_etcd {
                ws.ok(&["cache", "import", &ws.tarball_name()]);
            } else if self.import {
                ws.ok(&[
                    "cache",
                    "import",
                    &ws.tarball_name(),
                    &ws.etcd_tarball_name(),
                ]);
            }
        }
        if self.mirror {
            let mirror = Mirror::start();
            if let Some(tarball) = &ws.tarball {
                mirror.put(
                    &format!("{}/{}", ws.version, ws.tarball_name()),
                    tarball.clone(),
                );
            }
            if let Some(tarball) = &ws.etcd_tarball {
                mirror.put(&ws.etcd_mirror_path(), tarball.clone());
            }
            ws.mirror = Some(mirror);
        }
        ws
    }
}

pub struct Workspace {
    tmp: tempfile::TempDir,
    version: String,
    arch: String,
    /// The etcd release the version's recipe carries (`v3.6.5`).
    etcd: String,
    tarball: Option<Vec<u8>>,
    etcd_tarball: Option<Vec<u8>>,
    mirror: Option<Mirror>,
    offline: bool,
    explicit_inventory: bool,
    guard_secrets: bool,
}

impl Workspace {
    /// The usual workspace for `version`: the bundled example's inventory, a
    /// fresh PKI, 64 KiB stand-ins for amd64 imported into the cache, offline.
    pub fn new(version: &str) -> Workspace {
        Workspace::builder(version).build()
    }

    /// Starts from what [`Workspace::new`] makes.
    pub fn builder(version: &str) -> Builder {
        Builder {
            version: version.into(),
            arch: "amd64".into(),
            inventory: None,
            pki: Pki::Fresh,
            binaries: Binaries::StandIns(64 * 1024),
            etcd: None,
            import: true,
            mirror: false,
            offline: true,
            explicit_inventory: false,
            guard_secrets: false,
            external_etcd: false,
        }
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// The PKI folder the inventory names (`cluster.pki_dir`).
    pub fn pki_dir(&self) -> PathBuf {
        let inventory: toml::Value =
            toml::from_str(&fs::read_to_string(self.path("cluster.toml")).unwrap()).unwrap();
        let dir = inventory
            .get("cluster")
            .and_then(|c| c.get("pki_dir"))
            .and_then(|d| d.as_str())
            .expect("the inventory names its PKI folder");
        self.path(dir)
    }

    /// `kubernetes-server-linux-<arch>.tar.gz`
    pub fn tarball_name(&self) -> String {
        format!("kubernetes-server-linux-{}.tar.gz", self.arch)
    }

    /// The bytes of the workspace's server tarball (the recipe pins them).
    pub fn tarball(&self) -> &[u8] {
        self.tarball.as_deref().expect("a workspace with binaries")
    }

    /// The etcd release of the workspace's recipe (`v3.6.5`).
    pub fn etcd(&self) -> &str {
        &self.etcd
    }

    /// `etcd-<etcd>-linux-<arch>.tar.gz`
    pub fn etcd_tarball_name(&self) -> String {
        etcd_tarball_name(&self.etcd, &self.arch)
    }

    /// Where a mirror holds etcd's tarball: `etcd/<etcd>/<file>`.
    pub fn etcd_mirror_path(&self) -> String {
        format!("etcd/{}/{}", self.etcd, self.etcd_tarball_name())
    }

    /// The bytes of the workspace's etcd tarball (the recipe pins them).
    pub fn etcd_tarball(&self) -> &[u8] {
        self.etcd_tarball
            .as_deref()
            .expect("a workspace with binaries")
    }

    /// The mirror made by [`Builder::mirror`].
    pub fn mirror(&self) -> &Mirror {
        self.mirror.as_ref().expect("a workspace with a mirror")
    }

    /// The imgbuild command, run in the workspace with its cache and recipes
    /// and the scrubbed environment (see [`SCRUBBED`]).
    pub fn cmd(&self) -> Command {
        self.cmd_with_cache("cache")
    }

    /// [`Workspace::cmd`] with another cache folder of the workspace.
    pub fn cmd_with_cache(&self, cache: &str) -> Command {
        let mut c = Command::new(BIN);
        c.current_dir(self.dir()).stdin(Stdio::null());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("IMGBUILD_") {
                c.env_remove(name);
            }
        }
        for name in SCRUBBED {
            c.env_remove(name);
        }
        c.env("IMGBUILD_CACHE", self.path(cache))
            .env("IMGBUILD_RECIPES", self.path("recipes"))
            .env("XDG_CACHE_HOME", self.path("xdg-cache"))
            // The ledger of what this user verified (outside the cache).
            .env("XDG_STATE_HOME", self.path("xdg-state"))
            .env("NO_PROXY", "*")
            .env("no_proxy", "*");
        if self.offline {
            // `controller` fetches what the cache lacks unless offline: these
            // workspaces never reach for dl.k8s.io.
            c.env("IMGBUILD_OFFLINE", "1");
        }
        if self.explicit_inventory {
            c.arg("--inventory").arg(self.path("cluster.toml"));
        }
        c
    }

    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.run_with_env(&[], args)
    }

    /// [`Workspace::run`] with these variables set (e.g. `SOURCE_DATE_EPOCH`).
    pub fn run_with_env<S: AsRef<OsStr>>(&self, env: &[(&str, &str)], args: &[S]) -> Output {
        let out = self
            .cmd()
            .args(args)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        if self.guard_secrets {
            // Whatever a command says, it never says a secret.
            assert_no_secret(&self.pki_dir(), &text(&out));
        }
        out
    }

    /// Run and require success; returns stdout.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        self.ok_with_env(&[], args)
    }

    /// [`Workspace::ok`] with these variables set.
    pub fn ok_with_env<S: AsRef<OsStr>>(&self, env: &[(&str, &str)], args: &[S]) -> String {
        String::from_utf8(self.succeeds(env, args).stdout).unwrap()
    }

    /// `controller --node NODE --format dir` with `more` arguments, into the
    /// folder `out` (the node's tree is `out/controller-N`); returns stdout.
    pub fn ok_dir(&self, node: &str, out: &str, more: &[&str]) -> String {
        let mut args = vec!["controller", "--node", node, "--format", "dir"];
        args.extend(more);
        args.extend(["--out", out]);
        self.ok(&args)
    }

    /// Run and require success; returns stderr (progress and warnings).
    pub fn ok_stderr<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        String::from_utf8(self.succeeds(&[], args).stderr).unwrap()
    }

    /// Run and require failure with `code`; returns stderr.
    pub fn fails<S: AsRef<OsStr>>(&self, args: &[S], code: i32) -> String {
        let out = self.run(args);
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(code),
            "imgbuild {:?}: expected exit {code}; stderr:\n{stderr}",
            show(args)
        );
        stderr
    }

    /// Start imgbuild with stdout and stderr piped (`wait_with_output` them).
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn succeeds<S: AsRef<OsStr>>(&self, env: &[(&str, &str)], args: &[S]) -> Output {
        let out = self.run_with_env(env, args);
        assert!(
            out.status.success(),
            "imgbuild {:?} failed ({}):\n{}",
            show(args),
            out.status,
            text(&out)
        );
        out
    }

    /// Files (relative paths) under `rel`, recursively, sorted.
    pub fn files_under(&self, rel: &str) -> Vec<String> {
        files_under(&self.path(rel))
    }

    /// Names in `cache/<sub>` (files and folders, not recursive), sorted.
    pub fn cache_files(&self, sub: &str) -> Vec<String> {
        let mut out: Vec<String> = fs::read_dir(self.path("cache").join(sub))
            .map(|rd| {
                rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Nothing unverified (and, when `empty`, nothing at all) in the cache.
    pub fn assert_cache_clean(&self, empty: bool) {
        let mut subs = vec!["tmp"];
        if empty {
            subs.extend([
                "index",
                "blobs/sha256",
                "artifacts/sha256",
                "artifacts/sha512",
            ]);
        }
        for sub in subs {
            assert_eq!(
                self.cache_files(sub),
                Vec::<String>::new(),
                "{sub} not empty"
            );
        }
    }

    /// Write the server and etcd tarballs and a recipe pinning them.
    fn add_tarballs(&mut self, bins: &[(&str, Vec<u8>)], etcd_bins: &[(&str, Vec<u8>)]) {
        let tarball = server_tarball(bins);
        let etcd = etcd_tarball(&self.etcd, &self.arch, etcd_bins);
        fs::write(self.path(&self.tarball_name()), &tarball).unwrap();
        fs::write(self.path(&self.etcd_tarball_name()), &etcd).unwrap();
        fs::write(
            self.path(&format!("recipes/kubernetes-{}.toml", self.version)),
            test_recipe(&self.version, &self.arch, &tarball, &etcd),
        )
        .unwrap();
        self.tarball = Some(tarball);
        self.etcd_tarball = Some(etcd);
    }

    fn copy_fixed_pki(&self) {
        use std::os::unix::fs::PermissionsExt;
        let src = Path::new(REPO)
            .join("tests/fixtures/pki")
            .join(&self.version);
        let pki = self.pki_dir();
        fs::create_dir_all(&pki).unwrap();
        for f in files_under(&src) {
            let to = pki.join(&f);
            fs::copy(src.join(&f), &to).unwrap();
            if !f.ends_with(".pem") || f.ends_with("-key.pem") {
                fs::set_permissions(&to, fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
}

fn show<S: AsRef<OsStr>>(args: &[S]) -> Vec<String> {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect()
}

/// No line of base64 from any key, kubeconfig or encryption config in `pki`
/// appears in `said`.
pub fn assert_no_secret(pki: &Path, said: &str) {
    let Ok(entries) = fs::read_dir(pki) else {
        return;
    };
    for e in entries {
        let path = e.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let secret = name.ends_with("-key.pem")
            || name.ends_with(".kubeconfig")
            || name == "encryption-config.yaml";
        if !secret || !path.is_file() {
            continue;
        }
        // Lossy: a hostile test may leave a file that is not UTF-8.
        let content = String::from_utf8_lossy(&fs::read(&path).unwrap()).into_owned();
        // Key material is base64; words like `apiserver.config.k8s.io/v1` are not.
        let base64 = |t: &&str| {
            t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        };
        for token in content
            .split_whitespace()
            .filter(|t| t.len() >= 24)
            .filter(base64)
        {
            assert!(
                !said.contains(token),
                "output quotes secret data of {name}:\n{said}"
            );
        }
    }
}
