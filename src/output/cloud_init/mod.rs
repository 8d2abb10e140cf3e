//! cloud-init: the node's configuration as NoCloud/provider user-data.
//!
//! `out/controller-<N>-cloud-init/` holds `user-data` (`#cloud-config`),
//! `meta-data`, `network-config` (when the inventory gives a static address) and
//! `seed.img` (a vfat NoCloud volume labelled `cidata` holding the same files).
//!
//! The files are written in `yaml` (which also reads user-data back, for
//! `inspect`), the seed volume in `seed`.
//!
//! Binaries (hundreds of MB) cannot ride in user-data; `Binaries` decides how
//! they reach the node. With `--payload-url` (`payload`) the node's own files
//! do not either: they go in `controller-N-payload.tar.gz`, and the user-data
//! is a small boot script that fetches and verifies it.

pub mod boot;
pub mod payload;
pub mod seed;
pub mod yaml;

use std::path::Path;

use crate::codec::gz::gzip_bytes;
use crate::error::{Error, Result};
use crate::output::manifest::OutputFile;
use crate::output::{Written, format};
use crate::plan::{Entry, Meta, Plan};
use crate::progress::{Event, Progress};
use crate::util::atomic::{TempFolder, ensure_dir_mode, swap_dir};
use crate::util::digest::{sha256_file, sha256_hex};

/// The filesystem label cloud-init's NoCloud source looks for.
pub const SEED_LABEL: &str = "cidata";
/// Where the `seed` binaries mode mounts the seed volume at boot.
pub const SEED_MOUNT: &str = "/run/imgbuild-seed";

/// How the node gets the binaries (the plan's shared files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Binaries {
    /// The image already has them; user-data carries configuration only.
    Baked,
    /// A boot step downloads `<URL>/<version>/bin/linux/<arch>/<name>` (the
    /// dl.k8s.io layout) and installs it only if its sha256 is the pinned one.
    Mirror(String),
    /// They travel on the seed volume; a boot step copies and verifies them.
    Seed,
}

impl std::str::FromStr for Binaries {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "baked" => Ok(Binaries::Baked),
            "seed" => Ok(Binaries::Seed),
            _ => match s.strip_prefix("mirror=") {
                Some(url)
                    if (url.starts_with("http://") || url.starts_with("https://"))
                        && !url.chars().any(|c| c.is_whitespace() || c.is_control()) =>
                {
                    Ok(Binaries::Mirror(url.trim_end_matches('/').to_string()))
                }
                Some(url) => Err(Error::input(format!(
                    "--binaries mirror={}: the mirror must be an http:// or https:// URL without spaces",
                    crate::error::clip(url)
                ))),
                None => Err(Error::input(format!(
                    "--binaries {}: expected baked, seed or mirror=URL",
                    crate::error::clip(s)
                ))),
            },
        }
    }
}

impl Binaries {
    pub fn name(&self) -> &'static str {
        match self {
            Binaries::Baked => "baked",
            Binaries::Mirror(_) => "mirror",
            Binaries::Seed => "seed",
        }
    }
}

/// Where the user-data goes, which decides how large it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    Aws,
    Azure,
    Gcp,
    Openstack,
    Hetzner,
    Nocloud,
}

impl Provider {
    pub const ALL: [Provider; 6] = [
        Provider::Aws,
        Provider::Azure,
        Provider::Gcp,
        Provider::Openstack,
        Provider::Hetzner,
        Provider::Nocloud,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Provider::Aws => "aws",
            Provider::Azure => "azure",
            Provider::Gcp => "gcp",
            Provider::Openstack => "openstack",
            Provider::Hetzner => "hetzner",
            Provider::Nocloud => "nocloud",
        }
    }

    /// The user-data size limit in bytes (kubernetes-facts.md §3), if any.
    pub fn limit(self) -> Option<usize> {
        match self {
            Provider::Aws => Some(16 * 1024),    // 16 KB raw, before base64
            Provider::Azure => Some(65_535),     // customData
            Provider::Gcp => Some(256 * 1024),   // per metadata value
            Provider::Openstack => Some(65_535), // Nova user_data
            Provider::Hetzner => Some(32 * 1024),
            Provider::Nocloud => None, // a filesystem
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Provider::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                Error::input(format!(
                    "--provider {}: expected one of aws, azure, gcp, openstack, hetzner, nocloud",
                    crate::error::clip(s)
                ))
            })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub binaries: Binaries,
    pub provider: Provider,
    /// `--payload-url`: the node's files in a payload the user-data fetches.
    pub payload: Option<payload::Payload>,
    /// From v1.34, `packages: [nginx]` in the user-data (`--no-packages`: the
    /// image has nginx, e.g. air-gapped nodes without a package mirror).
    pub packages: bool,
}

/// A node's payload: its bytes and where the user-data fetches it from.
#[derive(Debug, Clone)]
pub struct PayloadFile {
    pub bytes: Vec<u8>,
    pub fetch: payload::Fetch,
}

/// The rendered files of one node.
#[derive(Debug, Clone)]
pub struct CloudInit {
    /// `#cloud-config` text, before any compression.
    pub user_data_text: String,
    /// What is written as `user-data`: the text, or its gzip when it had to shrink.
    pub user_data: Vec<u8>,
    pub gzipped: bool,
    pub meta_data: String,
    pub network_config: Option<String>,
    pub instance_id: String,
    /// Binaries to put on the seed volume (`seed` mode): file name and entry.
    pub seed_files: Vec<(String, Entry)>,
    /// With `--payload-url`: the payload the user-data fetches.
    pub payload: Option<PayloadFile>,
}

/// Render user-data, meta-data and network-config for `plan`.
pub fn render(plan: &Plan, opts: &Options) -> Result<CloudInit> {
    let meta = &plan.meta;
    let (y, seed_files, payload) = match &opts.payload {
        None => {
            let (y, seed_files) = yaml::user_data(plan, opts)?;
            (y, seed_files, None)
        }
        Some(p) => {
            let bytes = payload::payload_bytes(plan)?;
            let fetch = payload::Fetch {
                url: p.url_for(meta.made_from.node_index, &meta.made_from.node_name),
                sha256: sha256_hex(&bytes),
            };
            let (y, seed_files) = payload::user_data(plan, opts, &p.headers, &fetch)?;
            (y, seed_files, Some(PayloadFile { bytes, fetch }))
        }
    };
    let network_config = meta.network.as_ref().map(yaml::network_config);
    let instance_id = format!(
        "iid-imgbuild-{}",
        &sha256_hex(
            format!(
                "{y}\0{}\0{}",
                network_config.as_deref().unwrap_or(""),
                meta.made_from.node_name
            )
            .as_bytes()
        )[..20]
    );
    let meta_data = yaml::meta_data(&instance_id, &meta.made_from.node_name);
    let (user_data, gzipped) = match &opts.payload {
        None => fit_budget(&y, opts.provider, plan)?,
        Some(p) => (fit_raw(&y, opts.provider, meta, p)?, false),
    };
    Ok(CloudInit {
        user_data_text: y,
        user_data,
        gzipped,
        meta_data,
        network_config,
        instance_id,
        seed_files,
        payload,
    })
}

/// A payload user-data as it is (it is small, and stays readable), or an
/// error with both sizes.
fn fit_raw(text: &str, provider: Provider, meta: &Meta, p: &payload::Payload) -> Result<Vec<u8>> {
    match provider.limit() {
        Some(limit) if text.len() > limit => {
            let headers: usize = p.headers.iter().map(|h| h.len() + 1).sum();
            let of_which = match headers {
                0 => String::new(),
                n => format!(" (of which {n} bytes of headers from --payload-header-file)"),
            };
            Err(Error::input(format!(
                "user-data for node {} ({}) is {} bytes{of_which}; the {} limit is {limit} bytes",
                meta.made_from.node_index,
                meta.made_from.node_name,
                text.len(),
                provider.name()
            )))
        }
        _ => Ok(text.as_bytes().to_vec()),
    }
}

/// The largest of the node's files in a user-data (bytes as written there:
/// keys and anything not plain text as base64), largest first.
fn biggest_parts(plan: &Plan, n: usize) -> String {
    let mut parts: Vec<(u64, &str)> = plan
        .per_node()
        .filter(|e| matches!(e.kind, crate::plan::EntryKind::File { .. }))
        .map(|e| {
            let size = if e.secret {
                e.size().div_ceil(3) * 4
            } else {
                e.size()
            };
            (size, e.path.as_str())
        })
        .collect();
    parts.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(b.1)));
    parts
        .iter()
        .take(n)
        .map(|(size, path)| format!("/{path} ({size} bytes)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Raw when it fits the provider's limit, else gzipped; else an error with
/// both sizes, the biggest parts and the ways to make it fit.
fn fit_budget(text: &str, provider: Provider, plan: &Plan) -> Result<(Vec<u8>, bool)> {
    let meta = &plan.meta;
    let Some(limit) = provider.limit() else {
        return Ok((text.as_bytes().to_vec(), false));
    };
    if text.len() <= limit {
        return Ok((text.as_bytes().to_vec(), false));
    }
    let gz = gzip_bytes(text.as_bytes());
    if gz.len() <= limit {
        return Ok((gz, true));
    }
    Err(Error::input(format!(
        "user-data for node {} ({}) is {} bytes raw and {} bytes gzipped; the {} limit is {limit} bytes. \
         The biggest parts: {}. To fit: --payload-url URL moves the node's files, keys included, into \
         a payload the node downloads at boot (the user-data shrinks to a few KB; see README, \
         \"EC2 and other small user-data limits\"); or --provider nocloud --binaries seed puts \
         everything on the seed volume instead; or split the secrets out of the user-data (deliver \
         the keys and kubeconfigs another way, e.g. a secrets manager or the payload)",
        meta.made_from.node_index,
        meta.made_from.node_name,
        text.len(),
        gz.len(),
        provider.name(),
        biggest_parts(plan, 5)
    )))
}

/// The files of a cloud-init folder as written: names (relative to the
/// folder), digests and sizes; and what the swap left behind, if anything.
#[derive(Debug)]
pub struct Folder {
    pub files: Vec<OutputFile>,
    pub warning: Option<String>,
}

/// Write `<dest>` (a folder, 0700) with user-data, meta-data, network-config
/// and seed.img, all 0600 (they hold private keys). The folder appears whole:
/// it is built and hashed beside `dest`, then swapped into place; nothing
/// that can fail is left for after the swap but removing the old folder,
/// which is a warning (`Folder::warning`), not an error.
pub fn write_folder(plan: &Plan, rendered: &CloudInit, dest: &Path) -> Result<Folder> {
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::util::atomic::ensure_dir(parent)?;
    }
    let tmp = TempFolder::beside(dest)?;
    ensure_dir_mode(tmp.path(), 0o700)?;
    let mut files = Vec::new();
    let mut put = |file: &str, bytes: &[u8]| -> Result<()> {
        crate::util::atomic::write(&tmp.path().join(file), bytes, 0o600)?;
        files.push(OutputFile {
            name: file.to_string(),
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
        });
        Ok(())
    };
    put("user-data", &rendered.user_data)?;
    put("meta-data", rendered.meta_data.as_bytes())?;
    if let Some(n) = &rendered.network_config {
        put("network-config", n.as_bytes())?;
    }
    let seed = tmp.path().join("seed.img");
    seed::write_seed(plan, rendered, &seed)?;
    let (sha256, size) = sha256_file(&seed)?;
    files.push(OutputFile {
        name: "seed.img".into(),
        sha256,
        size,
    });
    // Swap the new folder in; an older one is moved aside and then removed.
    let warning = swap_dir(tmp, dest)?;
    Ok(Folder { files, warning })
}

/// `imgbuild cloud-init` for one node: `controller-N-cloud-init/` in
/// `out_dir`, and the node's manifest listing every file of the folder.
/// Success means all of it is written; a failure once the folder is in
/// place says so.
pub fn write_node(
    plan: &Plan,
    opts: &Options,
    out_dir: &Path,
    progress: &dyn Progress,
) -> Result<Written> {
    let m = &plan.meta;
    let mode = match opts.payload {
        Some(_) => format!("binaries {}, payload", opts.binaries.name()),
        None => format!("binaries {}", opts.binaries.name()),
    };
    progress.event(Event::Step {
        what: &format!(
            "writing cloud-init for node {} ({}), {mode}",
            m.made_from.node_index, m.made_from.node_name
        ),
    });
    let rendered = render(plan, opts)?;
    let mut outputs = Vec::new();
    if let Some(p) = &rendered.payload {
        // The payload first: a user-data never names a digest no file has.
        let name = format::payload_name(m.made_from.node_index);
        let path = out_dir.join(&name);
        crate::util::atomic::write(&path, &p.bytes, 0o600)?;
        progress.event(Event::Wrote { path: &path });
        outputs.push(OutputFile {
            name,
            sha256: p.fetch.sha256.clone(),
            size: p.bytes.len() as u64,
        });
    }
    if rendered.gzipped {
        progress.event(Event::Notice {
            message: &format!(
                "user-data of node {} is {} bytes, over the {} limit of {} bytes: written gzipped ({} bytes)",
                m.made_from.node_index,
                rendered.user_data_text.len(),
                opts.provider.name(),
                opts.provider.limit().unwrap_or_default(),
                rendered.user_data.len()
            ),
        });
    }
    let folder = format::cloud_init_dir(m.made_from.node_index);
    let dest = out_dir.join(&folder);
    let written = write_folder(plan, &rendered, &dest)?;
    progress.event(Event::Wrote { path: &dest });
    if let Some(message) = &written.warning {
        progress.event(Event::Warning { message });
    }
    outputs.extend(written.files.into_iter().map(|f| OutputFile {
        name: format!("{folder}/{}", f.name),
        ..f
    }));
    let label = format!("cloud-init ({mode})");
    crate::output::finish_node(plan, out_dir, &label, dest.clone(), outputs, progress).map_err(
        |e| {
            e.context(format!(
                "{} is in place, but its manifest is not written",
                dest.display()
            ))
        },
    )
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::path::PathBuf;

    use super::*;
    use crate::codec::vfat;
    use crate::plan::fixture::{run_ok, sample_plan};
    use crate::plan::{EntryKind, Network};

    fn opts(binaries: Binaries) -> Options {
        Options {
            binaries,
            provider: Provider::Nocloud,
            payload: None,
            packages: true,
        }
    }

    #[test]
    fn secrets_are_base64_and_modes_kept() {
        let plan = sample_plan();
        let r = render(&plan, &opts(Binaries::Baked)).unwrap();
        let y = &r.user_data_text;
        assert!(y.starts_with("#cloud-config\n"));
        assert!(
            !y.contains("secret"),
            "a private key is in clear text:\n{y}"
        );
        assert!(y.contains("\"/var/lib/kubernetes/ca-key.pem\"\n  owner: \"root:root\"\n  permissions: \"0600\"\n  encoding: \"b64\""));
        assert!(
            !y.contains("kube-apiserver\"\n  owner"),
            "baked binaries must not be in user-data"
        );
        // v1.34+: the units start from the per-boot script, without waiting.
        assert!(y.contains("start kube-apiserver.service\n"), "{y}");
        assert!(y.contains("packages:\n- \"nginx\"\n") == plan_enables_nginx(&plan));
        assert_eq!(r.user_data, y.as_bytes());
        assert!(r.seed_files.is_empty());
    }

    fn plan_enables_nginx(plan: &Plan) -> bool {
        plan.entries
            .iter()
            .any(|e| e.path.ends_with(".wants/nginx.service"))
    }

    #[test]
    fn instance_id_follows_content() {
        let plan = sample_plan();
        let a = render(&plan, &opts(Binaries::Baked)).unwrap();
        assert_eq!(
            a.instance_id,
            render(&plan, &opts(Binaries::Baked)).unwrap().instance_id
        );
        let mut changed = plan.clone();
        let e = changed
            .entries
            .iter_mut()
            .find(|e| e.path == "etc/systemd/system/kube-apiserver.service")
            .unwrap();
        *e = crate::plan::fixture::file(&e.path, 0o644, b"[Unit]\nDescription=changed\n", false);
        let b = render(&changed, &opts(Binaries::Baked)).unwrap();
        assert_ne!(a.instance_id, b.instance_id);
        assert!(a.meta_data.contains("local-hostname: \"controller-1\""));
    }

    #[test]
    fn budgets_gzip_then_fail_with_both_sizes() {
        let mut plan = sample_plan();
        // ~40 KB of compressible text: too big raw for AWS, fits gzipped.
        let text = "Environment=KUBE_FLAG=value-that-repeats\n".repeat(1000);
        plan.entries.push(crate::plan::fixture::file(
            "etc/big.conf",
            0o644,
            text.as_bytes(),
            false,
        ));
        plan.finish().unwrap();
        let mut o = opts(Binaries::Baked);
        o.provider = Provider::Aws;
        let r = render(&plan, &o).unwrap();
        assert!(r.gzipped && r.user_data.len() <= 16384 && r.user_data_text.len() > 16384);
        o.provider = Provider::Gcp;
        assert!(!render(&plan, &o).unwrap().gzipped);

        // 40 KB of incompressible secret: no provider but nocloud takes it.
        let mut plan = sample_plan();
        let noise: Vec<u8> = (0..40_000u32)
            .map(|i| sha256_hex(&i.to_le_bytes()).as_bytes()[0] ^ (i as u8))
            .collect();
        let mut key = crate::plan::fixture::file("etc/noise.key", 0o600, &noise, false);
        key.secret = true;
        plan.entries.push(key);
        plan.finish().unwrap();
        o.provider = Provider::Aws;
        let err = render(&plan, &o).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bytes raw")
                && msg.contains("bytes gzipped")
                && msg.contains("aws limit is 16384")
                && msg.contains("The biggest parts: /etc/noise.key (53336 bytes), ")
                && msg.contains("--payload-url URL")
                && msg.contains("--binaries seed")
                && msg.contains("split the secrets out"),
            "{msg}"
        );
        o.provider = Provider::Nocloud;
        assert!(!render(&plan, &o).unwrap().gzipped);
    }

    #[test]
    fn binaries_modes_parse() {
        assert_eq!("baked".parse::<Binaries>().unwrap(), Binaries::Baked);
        assert_eq!(
            "mirror=https://mirror.internal/k8s/"
                .parse::<Binaries>()
                .unwrap(),
            Binaries::Mirror("https://mirror.internal/k8s".into())
        );
        assert!("mirror=ftp://x".parse::<Binaries>().is_err());
        assert!("mirror=https://a b".parse::<Binaries>().is_err());
        assert!("sideload".parse::<Binaries>().is_err());
        assert_eq!("hetzner".parse::<Provider>().unwrap().limit(), Some(32768));
    }

    /// A static network: 10.240.0.11/24 via 10.240.0.1.
    fn network(interface: &str, dns: &str) -> Network {
        Network {
            interface: interface.into(),
            address: "10.240.0.11".parse().unwrap(),
            prefix: 24,
            gateway: "10.240.0.1".parse().unwrap(),
            dns: vec![dns.parse().unwrap()],
        }
    }

    #[test]
    fn network_config_gives_address_route_and_dns() {
        let text = yaml::network_config(&network("eth0", "10.240.0.2"));
        assert!(
            text.contains("- \"10.240.0.11/24\"") && text.contains("via: \"10.240.0.1\""),
            "{text}"
        );
    }

    /// cloud-init's own code reads the user-data and its write_files module
    /// writes the files under `root` (tests/tools/cloud_init_write_files.py);
    /// returns {"files": {path: [mode, owner, sha256, size]}, "runcmd", "bootcmd"}.
    pub(super) fn write_files_with_cloud_init(user_data: &Path, root: &Path) -> serde_json::Value {
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tools/cloud_init_write_files.py");
        let stdout = run_ok(
            std::process::Command::new("/usr/bin/python3")
                .arg(script)
                .arg(user_data)
                .arg(root),
            "Debian's python3 with cloud-init must be installed (apt-get install cloud-init)",
        );
        serde_json::from_slice(&stdout).unwrap()
    }

    pub(super) fn cloud_init_schema(user_data: &Path) {
        // `cloud-init schema` reads plain YAML: check the uncompressed text.
        let out = std::process::Command::new("cloud-init")
            .args(["schema", "--config-file"])
            .arg(user_data)
            .output()
            .expect("cloud-init must be installed (apt-get install cloud-init)");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && all.contains("Valid cloud-config"),
            "{all}"
        );
    }

    #[test]
    fn cloud_init_accepts_every_mode_and_write_files_decode_to_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let mut plan = sample_plan();
        // A non-root file and a binary-looking per-node file exercise chown and b64.
        let mut owned = crate::plan::fixture::file(
            "var/lib/kubernetes/etcd.conf",
            0o640,
            b"name: one\n",
            false,
        );
        owned.uid = 1234;
        owned.gid = 4321;
        plan.entries.push(owned);
        plan.entries.push(crate::plan::fixture::file(
            "etc/blob.bin",
            0o644,
            &[0, 1, 2, 255, b'\n'],
            false,
        ));
        plan.finish().unwrap();
        let modes = [
            Binaries::Baked,
            Binaries::Mirror("http://127.0.0.1:8080/k8s".into()),
            Binaries::Seed,
        ];
        // v1.36.0: the per-boot script (boot.rs); the seed's v1.10.2: runcmd.
        for (version, mode) in ["v1.36.0", "v1.10.2"]
            .into_iter()
            .flat_map(|v| modes.clone().map(|m| (v, m)))
        {
            plan.meta.made_from.kubernetes_version = version.into();
            let r = render(&plan, &opts(mode.clone())).unwrap();
            let ud = dir
                .path()
                .join(format!("user-data-{}-{version}", mode.name()));
            fs::write(&ud, &r.user_data).unwrap();
            cloud_init_schema(&ud);
            let root = tempfile::tempdir().unwrap();
            let doc = write_files_with_cloud_init(&ud, root.path());
            let mut files = doc["files"].as_object().unwrap().clone();
            if version != "v1.10.2" {
                let script = files
                    .remove(boot::SCRIPT_PATH)
                    .expect("the per-boot script");
                assert_eq!(script[0], "0700");
                let text =
                    fs::read_to_string(root.path().join(boot::SCRIPT_PATH.trim_start_matches('/')))
                        .unwrap();
                current_script_checks(&text, &mode, &plan);
                assert!(
                    doc["runcmd"].as_array().is_none_or(|a| a.is_empty()),
                    "{}",
                    doc["runcmd"]
                );
            }
            let expected: Vec<&Entry> = plan
                .per_node()
                .filter(|e| matches!(e.kind, EntryKind::File { .. }))
                .collect();
            assert_eq!(files.len(), expected.len(), "{files:?}");
            for e in expected {
                let EntryKind::File { sha256, size, .. } = &e.kind else {
                    unreachable!()
                };
                let f = &files[&format!("/{}", e.path)];
                assert_eq!(f[0], format!("{:04o}", e.mode), "{}", e.path);
                assert_eq!(f[1], "root:root");
                assert_eq!(f[2], sha256.as_str(), "{}", e.path);
                assert_eq!(f[3], *size, "{}", e.path);
            }
            if version != "v1.10.2" {
                continue;
            }
            let runcmd = doc["runcmd"].to_string();
            assert!(
                runcmd.contains(r#"["chown","1234:4321","/var/lib/kubernetes/etcd.conf"]"#),
                "{runcmd}"
            );
            assert!(runcmd.contains(r#"["ln","-sfnT","/etc/systemd/system/kube-apiserver.service","/etc/systemd/system/multi-user.target.wants/kube-apiserver.service"]"#), "{runcmd}");
            let bootcmd = doc["bootcmd"].to_string();
            assert!(
                bootcmd.contains(
                    r#"["install","-d","-m","0700","-o","0","-g","0","/var/lib/kubernetes"]"#
                ),
                "{bootcmd}"
            );
            let installs = doc["runcmd"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c[3] == "imgbuild-install")
                .count();
            match &mode {
                Binaries::Baked => {
                    assert_eq!(installs, 0);
                    assert!(!bootcmd.contains("/usr/local/bin"), "{bootcmd}");
                }
                Binaries::Mirror(_) => {
                    assert_eq!(installs, 2);
                    let apiserver = plan
                        .entries
                        .iter()
                        .find(|e| e.path == "usr/local/bin/kube-apiserver")
                        .unwrap();
                    let EntryKind::File { sha256, .. } = &apiserver.kind else {
                        unreachable!()
                    };
                    assert!(runcmd.contains(&format!(
                        r#""imgbuild-install","http://127.0.0.1:8080/k8s/{version}/bin/linux/amd64/kube-apiserver","{sha256}","/usr/local/bin/kube-apiserver","0755","0:0"]"#
                    )), "{runcmd}");
                }
                Binaries::Seed => {
                    assert_eq!(installs, 2);
                    assert_eq!(r.seed_files.len(), 2);
                    assert!(
                        runcmd.contains("mount -o ro LABEL=cidata /run/imgbuild-seed"),
                        "{runcmd}"
                    );
                }
            }
        }
    }

    /// What the v1.34+ per-boot script does, in its order: binaries (by mode),
    /// owners, links, then the units without waiting, the RBAC one-shot last.
    fn current_script_checks(text: &str, mode: &Binaries, plan: &Plan) {
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} missing in\n{text}"))
        };
        let chown = at("chown 1234:4321 \"$r\"/var/lib/kubernetes/etcd.conf\n");
        let link = at(
            "ln -sfnT /etc/systemd/system/kube-apiserver.service \"$r\"/etc/systemd/system/multi-user.target.wants/kube-apiserver.service\n",
        );
        let start = at("start kube-apiserver.service\n");
        assert!(chown < link && link < start);
        let installs = text.matches("\ninstall_binary ").count();
        match mode {
            Binaries::Baked => assert_eq!(installs, 0),
            Binaries::Mirror(_) => {
                assert_eq!(installs, 2);
                assert!(text.contains(
                    "--retry-connrefused --retry-all-errors --connect-timeout 10 --max-time 900"
                ));
                assert!(text.contains("install_binary http://127.0.0.1:8080/k8s/v1.36.0/bin/linux/amd64/kube-apiserver "));
            }
            Binaries::Seed => {
                assert_eq!(installs, 2);
                assert!(text.contains("mount -o ro LABEL=cidata /run/imgbuild-seed"));
            }
        }
        let (read, owners) = boot::read_script(text, "user-data").unwrap();
        assert_eq!(owners["/var/lib/kubernetes/etcd.conf"], (1234, 4321));
        assert_eq!(read.iter().filter(|e| e.kind == "file").count(), installs);
        let links = plan
            .entries
            .iter()
            .filter(|e| matches!(e.kind, EntryKind::Symlink { .. }))
            .filter(|e| !e.shared || *mode != Binaries::Baked)
            .count();
        assert_eq!(read.iter().filter(|e| e.kind == "symlink").count(), links);
        assert!(text.contains(boot::FAILED) && text.contains(boot::DONE));
    }

    #[test]
    fn network_config_converts_with_cloud_init() {
        let n = network("ens3", "10.240.0.2");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("network-config");
        fs::write(&p, yaml::network_config(&n)).unwrap();
        let out_dir = dir.path().join("out");
        run_ok(
            std::process::Command::new("cloud-init")
                .args(["devel", "net-convert", "-k", "yaml", "-D", "debian"])
                .args(["-O", "networkd", "-p"])
                .arg(&p)
                .arg("-d")
                .arg(&out_dir),
            "cloud-init must be installed (apt-get install cloud-init)",
        );
        let mut text = String::new();
        for e in walk(&out_dir) {
            text.push_str(&fs::read_to_string(e).unwrap());
        }
        for want in [
            "Name=ens3",
            "Address=10.240.0.11/24",
            "Gateway=10.240.0.1",
            "DNS=10.240.0.2",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn folder_is_private_and_seed_lists_with_mtools() {
        use std::os::unix::fs::PermissionsExt as _;
        let mut plan = sample_plan();
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("controller-1-cloud-init");
        let o = opts(Binaries::Seed);
        plan.meta.network = Some(network("eth0", "1.1.1.1"));
        let r = render(&plan, &o).unwrap();
        write_folder(&plan, &r, &dest).unwrap();
        // Twice: replaces the folder, same bytes.
        let first = fs::read(dest.join("seed.img")).unwrap();
        write_folder(&plan, &r, &dest).unwrap();
        assert_eq!(first, fs::read(dest.join("seed.img")).unwrap());
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "leftovers beside the folder"
        );
        assert_eq!(
            fs::metadata(&dest).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let mut names: Vec<String> = fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["meta-data", "network-config", "seed.img", "user-data"]
        );
        for n in &names {
            assert_eq!(
                fs::metadata(dest.join(n)).unwrap().permissions().mode() & 0o777,
                0o600,
                "{n}"
            );
        }
        let img = dest.join("seed.img");
        let label = std::process::Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&label.stdout).contains("cidata"));
        let listing = std::process::Command::new("mdir")
            .args(["-b", "-i"])
            .arg(&img)
            .arg("::")
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        for f in [
            "::/user-data",
            "::/meta-data",
            "::/network-config",
            "::/kube-apiserver",
            "::/kubectl",
        ] {
            assert!(listing.lines().any(|l| l == f), "{f} missing:\n{listing}");
        }
        for f in ["user-data", "meta-data", "network-config"] {
            let cat = std::process::Command::new("mtype")
                .arg("-i")
                .arg(&img)
                .arg(format!("::/{f}"))
                .output()
                .unwrap();
            assert_eq!(cat.stdout, fs::read(dest.join(f)).unwrap(), "{f}");
        }
        let (_, entries) = vfat::read_vfat(&img).unwrap();
        let k = entries.iter().find(|e| e.path == "kubectl").unwrap();
        let kubectl = plan
            .entries
            .iter()
            .find(|e| e.path == "usr/local/bin/kubectl")
            .unwrap();
        let EntryKind::File { sha256, .. } = &kubectl.kind else {
            unreachable!()
        };
        assert_eq!(k.sha256.as_ref(), Some(sha256));
    }
}
