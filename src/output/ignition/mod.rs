//! Ignition: the node's configuration as an Ignition config, for systems
//! configured at first boot by Ignition (Flatcar Container Linux, Fedora
//! CoreOS). `out/controller-<N>.ign` (0600: it holds private keys), the node's
//! manifest, and its line in SHA256SUMS.
//!
//! The config is made in `config` (which also holds the spec's types) and read
//! back for `imgbuild inspect` in `read`.

pub mod config;
pub mod read;
pub mod unpack;

use std::path::Path;

use crate::error::{Error, Result};
use crate::output::cloud_init::Provider;
use crate::output::manifest::OutputFile;
use crate::output::{Written, format, sums};
use crate::plan::Plan;
use crate::progress::{Event, Progress};
use crate::util::atomic;
use crate::util::digest::sha256_hex;

/// Where `--binaries mirror` downloads from unless told otherwise.
pub const DEFAULT_MIRROR: &str = "https://dl.k8s.io";

/// The config spec version written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// 3.3.0: read by every Ignition from 2.11 on (Flatcar, Fedora CoreOS).
    V3_3_0,
}

impl Spec {
    /// Every spec imgbuild writes: those the validator the tests run
    /// (Debian's `ignition-validate` 2.14) accepts.
    pub const ALL: [Spec; 1] = [Spec::V3_3_0];

    pub fn version(self) -> &'static str {
        match self {
            Spec::V3_3_0 => "3.3.0",
        }
    }
}

impl std::str::FromStr for Spec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Spec> {
        if let Some(spec) = Spec::ALL.into_iter().find(|v| v.version() == s) {
            return Ok(spec);
        }
        let why = if s.starts_with("3.4") || s.starts_with("3.5") {
            " (not offered: the Ignition the tests validate with, Debian's 2.14, does not accept it, so what imgbuild would write could not be checked; \
             nothing imgbuild writes needs more than 3.3.0, which Ignition 2.11 and later, those that read 3.4.0 and 3.5.0 included, accept)"
        } else {
            ""
        };
        let have: Vec<_> = Spec::ALL.iter().map(|v| v.version()).collect();
        Err(Error::input(format!(
            "--spec {s}: imgbuild writes Ignition spec {}{why}",
            have.join(", ")
        )))
    }
}

/// How the node gets the binaries (the plan's artifact files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binaries {
    /// The image already has them: the config carries none.
    Baked,
    /// Ignition downloads `<URL>/<version>/bin/linux/<arch>/<name>` and writes
    /// it only if its sha256 is the pinned one (`verification.hash`).
    Mirror(String),
}

impl std::str::FromStr for Binaries {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if s == "baked" {
            return Ok(Binaries::Baked);
        }
        match s.strip_prefix("mirror=") {
            Some(url)
                if (url.starts_with("http://") || url.starts_with("https://"))
                    && url.len() > "https://".len()
                    && !url.chars().any(|c| {
                        c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\')
                    }) =>
            {
                Ok(Binaries::Mirror(url.trim_end_matches('/').to_string()))
            }
            Some(url) => Err(Error::input(format!(
                "--binaries mirror={url}: the mirror must be an http:// or https:// URL without spaces or quotes \
                 (Ignition checks every download against its pinned sha256, so http:// is safe)"
            ))),
            None => Err(Error::input(format!(
                "--binaries {s}: expected baked or mirror=URL"
            ))),
        }
    }
}

impl Binaries {
    pub fn name(&self) -> &'static str {
        match self {
            Binaries::Baked => "baked",
            Binaries::Mirror(_) => "mirror",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub spec: Spec,
    pub binaries: Binaries,
}

/// The config's bytes for `plan`.
pub fn render(plan: &Plan, opts: &Options) -> Result<Vec<u8>> {
    Ok(config::to_bytes(&config::config(plan, opts)?))
}

/// Where an Ignition config of `size` bytes can be given as instance user
/// data (the providers' limits are cloud-init's: the same metadata services).
pub fn where_it_fits(size: usize) -> String {
    let (mut fits, mut over) = (Vec::new(), Vec::new());
    for p in Provider::ALL {
        if let Some(limit) = p.limit() {
            let says = format!("{} ({limit} B)", p.name());
            if size <= limit {
                fits.push(says);
            } else {
                over.push(says);
            }
        }
    }
    let serve = "serve it over HTTPS and give the machine a small config that replaces itself with it (ignition.config.replace, with the file's hash)";
    match (fits.is_empty(), over.is_empty()) {
        (_, true) => format!("fits the user data of {}", fits.join(", ")),
        (true, _) => format!(
            "too large for the user data of {}: {serve}",
            over.join(", ")
        ),
        _ => format!(
            "fits the user data of {}; for {}, {serve}",
            fits.join(", "),
            over.join(", ")
        ),
    }
}

/// `imgbuild ignition` for one node: `controller-N.ign` in `out_dir` (0600),
/// the node's manifest, and its line in SHA256SUMS.
pub fn write_node(
    plan: &Plan,
    opts: &Options,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Written> {
    let m = &plan.meta;
    progress.event(Event::Step {
        what: &format!(
            "writing Ignition {} for node {} ({}), {}, binaries {}",
            opts.spec.version(),
            m.made_from.node_index,
            m.made_from.node_name,
            m.os,
            opts.binaries.name()
        ),
    });
    let bytes = render(plan, opts)?;
    let name = format::ignition_name(m.made_from.node_index);
    let dest = out_dir.join(&name);
    atomic::write(&dest, &bytes, 0o600)?;
    progress.event(Event::Wrote { path: &dest });
    progress.event(Event::Notice {
        message: &format!(
            "{name} is {} bytes: {}",
            bytes.len(),
            where_it_fits(bytes.len())
        ),
    });
    let outputs = vec![OutputFile {
        name,
        sha256: sha256_hex(&bytes),
        size: bytes.len() as u64,
    }];
    let label = format!(
        "ignition {} ({}, binaries {})",
        opts.spec.version(),
        m.os,
        opts.binaries.name()
    );
    sums::update(out_dir, &outputs, &|_| false)?;
    crate::output::finish_node(plan, out_dir, &label, dest, outputs, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::fixture::{entry, file, sample_plan};
    use crate::plan::{EntryKind, Origin};

    const UNIT: &[u8] = b"[Unit]\nDescription=Kubernetes API Server\n\n[Service]\nExecStart=/usr/local/bin/kube-apiserver\n\n[Install]\nWantedBy=multi-user.target\n";

    /// The sample plan with an enabled unit, binaries from an artifact, a
    /// plain symlink, and folders the system has.
    fn plan() -> Plan {
        let mut plan = sample_plan();
        plan.meta.unit_order = vec!["kube-apiserver.service".into()];
        plan.meta.system_dirs = vec!["etc".into(), "var".into(), "var/lib".into()];
        for e in &mut plan.entries {
            if e.path == "etc/systemd/system/kube-apiserver.service" {
                *e = file(&e.path, 0o644, UNIT, false);
            }
            if e.shared && matches!(e.kind, EntryKind::File { .. }) {
                e.origin = Origin::Artifact {
                    artifact: "kubernetes-server-linux-amd64.tar.gz".into(),
                    member: format!(
                        "kubernetes/server/bin/{}",
                        e.path.rsplit('/').next().unwrap()
                    ),
                    pinned: "sha512:00".into(),
                    trust: crate::plan::Trust::Local,
                    source: "test".into(),
                };
            }
        }
        plan.entries.push(entry(
            "etc/kubernetes-pki",
            0o777,
            EntryKind::Symlink {
                target: "/var/lib/kubernetes".into(),
            },
            false,
        ));
        plan.finish().unwrap();
        plan
    }

    fn opts(binaries: Binaries) -> Options {
        Options {
            spec: Spec::V3_3_0,
            binaries,
        }
    }

    fn validate(path: &Path) -> String {
        let out = std::process::Command::new("ignition-validate")
            .arg(path)
            .output()
            .expect("ignition-validate must be installed (apt-get install ignition)");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{said}");
        said
    }

    #[test]
    fn configs_validate_and_read_back_to_the_plan() {
        let plan = plan();
        let manifest = crate::output::manifest::Manifest::new(&plan, "test", vec![]);
        let dir = tempfile::tempdir().unwrap();
        for binaries in [
            Binaries::Baked,
            Binaries::Mirror("http://10.0.0.1/k8s".into()),
        ] {
            let c = config::config(&plan, &opts(binaries.clone())).unwrap();
            let bytes = config::to_bytes(&c);
            let path = dir
                .path()
                .join(format!("controller-1-{}.ign", binaries.name()));
            std::fs::write(&path, &bytes).unwrap();
            assert_eq!(validate(&path), "", "no warning either");

            // Folders: not the system's, not `.wants`; modes as they are.
            let dirs: Vec<(&str, u32)> = c
                .storage
                .directories
                .iter()
                .map(|d| (d.path.as_str(), d.mode))
                .collect();
            // The binaries' folders first (shared entries come first), and not
            // at all when the image has the binaries.
            let mut want = vec![
                ("/usr", 0o755),
                ("/usr/local", 0o755),
                ("/usr/local/bin", 0o755),
                ("/etc/systemd", 0o755),
                ("/etc/systemd/system", 0o755),
                ("/var/lib/kubernetes", 0o700),
            ];
            if binaries == Binaries::Baked {
                want.retain(|(p, _)| !p.starts_with("/usr"));
            }
            assert_eq!(dirs, want);
            // The enabled unit with its contents; no `.wants` link but the plain one.
            assert_eq!(c.systemd.units.len(), 1);
            assert_eq!(c.systemd.units[0].enabled, Some(true));
            assert_eq!(
                c.systemd.units[0].contents.as_deref(),
                Some(std::str::from_utf8(UNIT).unwrap())
            );
            assert_eq!(c.storage.links.len(), 1);
            assert_eq!(c.storage.links[0].target, "/var/lib/kubernetes");
            let remote: Vec<&config::File> = c
                .storage
                .files
                .iter()
                .filter(|f| f.contents.source.starts_with("http"))
                .collect();
            if let Binaries::Mirror(_) = binaries {
                assert_eq!(remote.len(), 2);
                assert_eq!(
                    remote[1].contents.source,
                    "http://10.0.0.1/k8s/v1.36.0/bin/linux/amd64/kubectl"
                );
                let EntryKind::File { sha256, .. } = &plan
                    .entries
                    .iter()
                    .find(|e| e.path == "usr/local/bin/kubectl")
                    .unwrap()
                    .kind
                else {
                    unreachable!()
                };
                assert_eq!(
                    remote[1].contents.verification.as_ref().unwrap().hash,
                    format!("sha256-{sha256}")
                );
            } else {
                assert!(
                    remote.is_empty()
                        && !String::from_utf8_lossy(&bytes).contains("\"path\":\"/usr/local/bin")
                );
            }
            // The key is not in clear text, and every file is owned by id.
            let text = String::from_utf8_lossy(&bytes);
            assert!(!text.contains("secret"), "{text}");
            assert!(
                c.storage
                    .files
                    .iter()
                    .all(|f| f.user.id == 0 && f.group.id == 0 && f.overwrite)
            );

            // Read back, it is the plan (enablement mapped, binaries by hash).
            let found = crate::inspect::inspect(std::slice::from_ref(&path)).unwrap();
            assert_eq!(found.enabled, ["kube-apiserver.service"]);
            assert_eq!(
                crate::inspect::verify(&found, &manifest),
                Vec::<String>::new()
            );
        }
    }

    #[test]
    fn an_install_section_that_disagrees_is_refused() {
        let mut plan = plan();
        for e in &mut plan.entries {
            if e.path == "etc/systemd/system/kube-apiserver.service" {
                *e = file(
                    &e.path,
                    0o644,
                    b"[Unit]\n[Install]\nWantedBy=graphical.target\n",
                    false,
                );
            }
        }
        let err = render(&plan, &opts(Binaries::Baked))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("WantedBy=multi-user.target") && err.contains("preset"),
            "{err}"
        );
    }

    #[test]
    fn specs_and_binaries_parse() {
        assert_eq!("3.3.0".parse::<Spec>().unwrap(), Spec::V3_3_0);
        let e = "3.4.0".parse::<Spec>().unwrap_err().to_string();
        assert!(e.contains("not offered") && e.contains("2.14"), "{e}");
        assert!("3.2.0".parse::<Spec>().is_err());
        assert_eq!(
            "mirror=https://m.example/k8s/".parse::<Binaries>().unwrap(),
            Binaries::Mirror("https://m.example/k8s".into())
        );
        for bad in [
            "seed",
            "mirror=https://",
            "mirror=https://a\"b",
            "mirror=file:///x",
        ] {
            assert!(bad.parse::<Binaries>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes_say_where_they_fit() {
        assert!(where_it_fits(10_000).starts_with("fits the user data of aws"));
        let s = where_it_fits(20_000);
        assert!(
            s.contains("hetzner") && s.contains("for aws (16384 B), serve it"),
            "{s}"
        );
        assert!(where_it_fits(300_000).starts_with("too large"));
    }
}
