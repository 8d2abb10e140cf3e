//! Recipes: per Kubernetes version, which artifacts (pinned by digest) and which
//! overlay layout make a controller.
//!
//! `recipes/kubernetes-vX.Y.Z.toml` holds the artifacts and their pins;
//! `recipes/layouts/<name>.toml` holds which overlay files go where, with which
//! modes, and which units are enabled (shared by every version: the templates
//! themselves branch on the version).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, clip, clip_lines};
use crate::input::assets::Assets;

/// How much to trust an artifact's pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Trust {
    /// Pinned in this repository from a second, independent upstream source
    /// (a release changelog or Kubernetes' own build files), not the server
    /// the file comes from.
    Changelog,
    /// Pinned in this repository from unrelated third-party projects that
    /// each quote the publisher's checksum file (the `source` names them):
    /// weaker than `changelog`; `imgbuild lock` re-pins from the publisher.
    ThirdParty,
    /// Taken from the publisher's checksum file next to the artifact (same source).
    PublisherChecksum,
    /// Pinned by the user in a local recipe or lock.
    Local,
}

impl Trust {
    /// Pins only this repository's own recipes may claim: a lock or a bundle
    /// cannot vouch for them.
    pub fn repository_only(self) -> bool {
        matches!(self, Trust::Changelog | Trust::ThirdParty)
    }

    /// The name recorded in manifests and printed (`publisher-checksum`).
    pub fn name(self) -> &'static str {
        match self {
            Trust::Changelog => "changelog",
            Trust::ThirdParty => "third-party",
            Trust::PublisherChecksum => "publisher-checksum",
            Trust::Local => "local",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactKind {
    /// A gzipped tar (a release tarball); `members` name what to take from it.
    Tarball,
    /// A single file (a binary); it is its own only member.
    File,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub kubernetes_version: String,
    /// The etcd release of the artifact named [`ETCD`] (`v3.6.5`); templates
    /// and the flag table branch on it. None: the recipe carries no etcd
    /// (only `[etcd] mode = "external"` inventories can use it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd_version: Option<String>,
    /// Layout file under `recipes/layouts/` (without `.toml`).
    pub layout: String,
    pub artifacts: Vec<Artifact>,

    /// Recipe file name, e.g. `kubernetes-v1.10.2.toml`.
    #[serde(skip)]
    pub name: String,
    /// Where the recipe was read from.
    #[serde(skip)]
    pub origin: String,
    #[serde(skip)]
    pub layout_def: Layout,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    pub name: String,
    pub kind: ArtifactKind,
    /// File name, `{arch}` expanded.
    pub file: String,
    /// Where the publisher serves it (an `https://` URL); absent: [`DEFAULT_BASE`].
    /// A `--mirror` replaces every base: see [`Artifact::mirror_path_for`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
    /// Path under the download base; `{arch}` expanded.
    pub url_path: String,
    /// Where the publisher also serves each member on its own, under the same
    /// base (`{arch}` and `{name}`, the member's file name, expanded): what a
    /// node fetches at boot (`--binaries mirror=URL`). Absent: the members come
    /// only in the artifact, which the node then fetches and unpacks itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members_url_path: Option<String>,
    pub algorithm: Algorithm,
    pub trust: Trust,
    /// Where the pins come from (a changelog section, a checksum URL, a lock).
    pub source: String,
    /// Pinned digest per arch, plain lowercase hex.
    pub digests: BTreeMap<String, String>,
    /// For tarballs: the members to install. For files: where the file goes.
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Path inside the tarball (for `kind = "file"`, the file name); `{arch}`
    /// expanded (`etcd-v3.6.5-linux-{arch}/etcd`).
    pub path: String,
    /// Where it goes in the rootfs (no leading `/`).
    pub install: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Overlay folder name under `overlays/`.
    pub overlay: String,
    #[serde(default)]
    pub files: Vec<LayoutFile>,
    #[serde(default)]
    pub pki: Vec<PkiFile>,
    /// Folders made with a mode of their own (`var/lib/etcd`, 0700); every
    /// other folder is a parent, 0755.
    #[serde(default)]
    pub dirs: Vec<LayoutDir>,
    /// `target = ["unit", ...]`: units enabled into `<target>.wants/`.
    #[serde(default)]
    pub enable: BTreeMap<String, Vec<String>>,
    /// Units enabled but not shipped by the overlay: where the distribution installs them.
    #[serde(default)]
    pub unit_paths: BTreeMap<String, String>,
    /// The OS profile the paths of this layout and of the recipes are written
    /// for (see `input::profile`).
    #[serde(default)]
    pub base_os: Option<String>,
    /// OS profiles (`--os NAME`), by name.
    #[serde(default)]
    pub os: BTreeMap<String, crate::input::profile::OsProfile>,
    /// Parts of the node a profile may leave out, by name.
    #[serde(default)]
    pub parts: BTreeMap<String, crate::input::profile::Part>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutFile {
    /// Template path under the overlay; also the rootfs path unless `path` is given.
    pub template: String,
    #[serde(default)]
    pub path: Option<String>,
    pub mode: u32,
    #[serde(default)]
    pub secret: bool,
    /// The first Kubernetes version (`v1.34`) whose nodes get this file; every
    /// version when absent.
    #[serde(default)]
    pub since: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayoutDir {
    /// Rootfs path (relative).
    pub path: String,
    pub mode: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PkiFile {
    /// File name in the inventory's `pki_dir`; `{node}` stands for the
    /// controller's name in the per-node files (`etcd-{node}.pem`).
    pub file: String,
    /// Where it goes in the rootfs.
    pub path: String,
    pub mode: u32,
    #[serde(default)]
    pub secret: bool,
    /// As [`LayoutFile::since`].
    #[serde(default)]
    pub since: Option<String>,
}

/// Whether a layout entry with `since` belongs on a node of `version`; a
/// bound that does not parse was refused by [`Layout::check`].
pub fn since_applies(since: &Option<String>, version: Version) -> bool {
    since
        .as_deref()
        .and_then(Version::parse_loose)
        .is_none_or(|first| version >= first)
}

fn check_since(since: &Option<String>, what: &str) -> Result<()> {
    match since {
        Some(s) if Version::parse_loose(s).is_none() => Err(Error::input(format!(
            "{what}: since = {:?}: expected a Kubernetes version such as \"v1.34\"",
            clip(s)
        ))),
        _ => Ok(()),
    }
}

impl Member {
    pub fn path_for(&self, arch: &str) -> String {
        self.path.replace("{arch}", arch)
    }
}

/// The download base of an artifact that names none: where Kubernetes
/// publishes its releases (the seed's storage.googleapis.com host is legacy).
pub const DEFAULT_BASE: &str = "https://dl.k8s.io";

/// The name of the artifact that holds etcd (`etcd_version` is its release).
pub const ETCD: &str = "etcd";

impl Artifact {
    pub fn file_for(&self, arch: &str) -> String {
        self.file.replace("{arch}", arch)
    }
    pub fn url_path_for(&self, arch: &str) -> String {
        self.url_path.replace("{arch}", arch)
    }
    /// The publisher's base URL (no trailing `/`).
    pub fn base(&self) -> &str {
        self.base
            .as_deref()
            .unwrap_or(DEFAULT_BASE)
            .trim_end_matches('/')
    }
    /// Whether the artifact has a base of its own (not [`DEFAULT_BASE`]).
    pub fn own_base(&self) -> bool {
        self.base() != DEFAULT_BASE
    }
    /// The publisher's URL of the artifact for `arch`.
    pub fn upstream_url(&self, arch: &str) -> String {
        format!("{}/{}", self.base(), self.url_path_for(arch))
    }
    /// Where a mirror holds a path under this artifact's base: as it is under
    /// the base for artifacts on [`DEFAULT_BASE`] (a mirror is laid out like
    /// dl.k8s.io), under `<name>/` for an artifact with a base of its own
    /// (`etcd/v3.6.5/etcd-v3.6.5-linux-amd64.tar.gz`).
    pub fn mirror_path(&self, under_base: &str) -> String {
        if self.own_base() {
            format!("{}/{under_base}", self.name)
        } else {
            under_base.to_string()
        }
    }
    /// [`Artifact::mirror_path`] of the artifact itself, for `arch`.
    pub fn mirror_path_for(&self, arch: &str) -> String {
        self.mirror_path(&self.url_path_for(arch))
    }
    /// A member published on its own (see `members_url_path`), as a path
    /// under the base, for `arch`: None when the node must unpack the artifact.
    pub fn member_url_path(&self, arch: &str, member: &str) -> Option<String> {
        let name = member.rsplit('/').next().unwrap_or(member);
        match self.kind {
            ArtifactKind::File => Some(self.url_path_for(arch)),
            ArtifactKind::Tarball => self
                .members_url_path
                .as_ref()
                .map(|p| p.replace("{arch}", arch).replace("{name}", name)),
        }
    }
    /// The pinned digest for `arch`, or an error naming the recipe and what exists.
    pub fn digest_for(&self, recipe: &str, arch: &str) -> Result<&str> {
        self.digests.get(arch).map(String::as_str).ok_or_else(|| {
            let have: Vec<_> = self.digests.keys().map(String::as_str).collect();
            Error::input(format!(
                "recipe {recipe} pins artifact {} only for {}; no pin for arch {}",
                clip(&self.name),
                clip(&have.join(", ")),
                clip(arch)
            ))
        })
    }
    /// `algorithm:hex`, as recorded in manifests.
    pub fn pin_for(&self, recipe: &str, arch: &str) -> Result<String> {
        Ok(format!(
            "{}:{}",
            self.algorithm.name(),
            self.digest_for(recipe, arch)?
        ))
    }
}

impl Layout {
    /// Every path a layout names stays inside what it is relative to, PKI
    /// files come from the fixed set `pki init` creates (names, never paths),
    /// and `secret` follows the file: keys, kubeconfigs and the encryption
    /// config are secret (so 0600) whatever the layout says. Applies to every
    /// layout, built-in, from `--recipes`, from a lock or from a bundle.
    pub fn check(&mut self) -> Result<()> {
        if !is_plain(&self.overlay) {
            return Err(Error::input(format!(
                "overlay = {:?}: expected the name of a folder of overlays/ (no `/`, no leading `.`)",
                clip(&self.overlay)
            )));
        }
        let path = |table: &str, what: &str, value: &str| {
            Error::input(format!(
                "[[{table}]] {what} = {:?}: expected a relative path without empty, `.` or `..` parts",
                clip(value)
            ))
        };
        for f in &self.files {
            if !is_rel_path(&f.template) {
                return Err(path("files", "template", &f.template));
            }
            if let Some(p) = &f.path
                && !is_rel_path(p)
            {
                return Err(path("files", "path", p));
            }
            check_mode(f.mode)
                .map_err(|e| e.context(format!("[[files]] {}", clip(&f.template))))?;
            check_since(&f.since, &format!("[[files]] {}", clip(&f.template)))?;
        }
        for d in &self.dirs {
            if !is_rel_path(&d.path) {
                return Err(path("dirs", "path", &d.path));
            }
            check_mode(d.mode).map_err(|e| e.context(format!("[[dirs]] {}", clip(&d.path))))?;
        }
        // The fixed names, and the per-node patterns whose `{node}` becomes a
        // controller's name (a DNS label): neither can name a path.
        let known: Vec<crate::pki::PkiFile> = crate::pki::files()
            .into_iter()
            .chain(crate::pki::node_file_patterns())
            .collect();
        for p in &mut self.pki {
            let Some(file) = known.iter().find(|k| k.name == p.file) else {
                let names: Vec<&str> = known.iter().map(|k| k.name.as_str()).collect();
                return Err(Error::input(format!(
                    "[[pki]] file = {:?}: not a PKI file; a layout names one of the files `imgbuild pki init` \
                     creates in pki_dir ({}), never a path",
                    clip(&p.file),
                    names.join(", ")
                )));
            };
            if !is_rel_path(&p.path) {
                return Err(path("pki", "path", &p.path));
            }
            check_mode(p.mode).map_err(|e| e.context(format!("[[pki]] {}", p.file)))?;
            check_since(&p.since, &format!("[[pki]] {}", p.file))?;
            p.secret = file.secret;
        }
        for (target, units) in &self.enable {
            for name in std::iter::once(target).chain(units) {
                if !is_plain(name) {
                    return Err(Error::input(format!(
                        "[enable]: {:?} is not a unit name",
                        clip(name)
                    )));
                }
            }
        }
        for (unit, target) in &self.unit_paths {
            let rel = target.strip_prefix('/').unwrap_or("");
            if !is_plain(unit) || !is_rel_path(rel) {
                return Err(Error::input(format!(
                    "[unit_paths] {:?} = {:?}: expected a unit name and an absolute path without `..`",
                    clip(unit),
                    clip(target)
                )));
            }
        }
        Ok(())
    }
}

/// A name for one path component: letters, digits, `.`, `_`, `-`, `@`, `:`,
/// not starting with `.`, at most 200 bytes.
pub fn is_plain(s: &str) -> bool {
    // At most 200 bytes: names become file names (NAME_MAX is 255).
    !s.is_empty()
        && s.len() <= 200
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b':'))
}

/// A relative `/`-separated path without empty, `.` or `..` parts, backslashes
/// or control characters.
pub fn is_rel_path(p: &str) -> bool {
    !p.is_empty()
        && !p.starts_with('/')
        && !p.chars().any(|c| c.is_control() || c == '\\')
        && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..")
}

/// An `https://` download base: a host and maybe a path, nothing a URL
/// could hide (credentials, a query, a fragment, spaces or quotes).
fn is_base_url(s: &str) -> bool {
    s.strip_prefix("https://").is_some_and(|rest| {
        !rest.is_empty()
            && !rest.starts_with('/')
            && rest
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~/:".contains(&b))
    })
}

/// Permission bits only: no setuid, setgid or sticky bit from a recipe or layout.
fn check_mode(mode: u32) -> Result<()> {
    if mode & !0o777 != 0 {
        return Err(Error::input(format!(
            "mode = 0o{mode:o}: expected permission bits only (at most 0o777)"
        )));
    }
    Ok(())
}

/// The recipe file name for a Kubernetes version.
pub fn file_name(version: &str) -> String {
    format!("kubernetes-{version}.toml")
}

impl Recipe {
    /// Load the recipe for `version` (and its layout) from `assets`.
    pub fn load(assets: &Assets, version: &str) -> Result<Recipe> {
        let name = file_name(version);
        let Some(asset) = assets.recipe_file(&name)? else {
            let have = assets.recipe_names()?;
            let versions: Vec<_> = have
                .iter()
                .map(|n| {
                    n.trim_start_matches("kubernetes-")
                        .trim_end_matches(".toml")
                })
                .collect();
            return Err(Error::input(format!(
                "no recipe for Kubernetes {version} (looked for {name}); recipes exist for: {}. \
                 Pick one of those in cluster.kubernetes_version, or write a lock with `imgbuild lock --version {version}`",
                versions.join(", ")
            )));
        };
        let recipe = Self::parse(assets, &name, &asset.text, &asset.origin)?;
        if asset.lock && recipe.artifacts.iter().any(|a| a.trust == Trust::Changelog) {
            return Err(Error::input(format!(
                "lock {}: claims trust \"changelog\", which only recipes built in or passed with --recipes may; \
                 a lock's pins come from checksum files (\"publisher-checksum\") or from you (\"local\"): \
                 remove the file, or pass its folder with --recipes if you vouch for it",
                asset.origin
            )));
        }
        Ok(recipe)
    }

    pub fn parse(assets: &Assets, name: &str, text: &str, origin: &str) -> Result<Recipe> {
        let mut recipe: Recipe = toml::from_str(text).map_err(|e| {
            Error::input(format!("recipe {origin}: {}", clip_lines(&e.to_string())))
        })?;
        recipe.name = name.to_string();
        recipe.origin = origin.to_string();
        recipe
            .validate()
            .map_err(|e| e.context(format!("recipe {origin}")))?;
        let layout_name = format!("layouts/{}.toml", recipe.layout);
        let layout = assets.recipe_file(&layout_name)?.ok_or_else(|| {
            Error::input(format!(
                "recipe {origin}: layout {:?} not found (looked for {})",
                clip(&recipe.layout),
                clip(&layout_name)
            ))
        })?;
        recipe.layout_def = toml::from_str(&layout.text).map_err(|e| {
            Error::input(format!(
                "layout {}: {}",
                layout.origin,
                clip_lines(&e.to_string())
            ))
        })?;
        recipe
            .layout_def
            .check()
            .map_err(|e| e.context(format!("layout {}", layout.origin)))?;
        Ok(recipe)
    }

    fn validate(&self) -> Result<()> {
        if self.artifacts.is_empty() {
            return Err(Error::input("no [[artifacts]]"));
        }
        let has_etcd = self.artifacts.iter().any(|a| a.name == ETCD);
        match &self.etcd_version {
            Some(v) if Version::parse(v).is_none_or(|v| v.major != 3) => {
                return Err(Error::input(format!(
                    "etcd_version = {:?}: expected an etcd release, e.g. \"v3.6.5\"",
                    clip(v)
                )));
            }
            Some(_) if !has_etcd => {
                return Err(Error::input(format!(
                    "etcd_version is set but no artifact is named {ETCD:?}"
                )));
            }
            None if has_etcd => {
                return Err(Error::input(format!(
                    "artifact {ETCD:?} needs etcd_version (its release, e.g. \"v3.6.5\")"
                )));
            }
            _ => {}
        }
        if !is_plain(&self.layout) {
            return Err(Error::input(format!(
                "layout = {:?}: expected the name of a file in layouts/ (no `/`, no leading `.`)",
                clip(&self.layout)
            )));
        }
        if !self.name.is_empty()
            && Some(self.name.as_str())
                != Version::parse(&self.kubernetes_version)
                    .map(|v| file_name(&v.to_string()))
                    .as_deref()
        {
            return Err(Error::input(format!(
                "kubernetes_version = {:?} is not the version its file name {} gives",
                clip(&self.kubernetes_version),
                self.name
            )));
        }
        for a in &self.artifacts {
            let field = |what: &str, value: &str| {
                Error::input(format!(
                    "artifact {} {what} = {:?}: {}",
                    clip(&a.name),
                    clip(value),
                    if what == "file" {
                        "expected a file name (no `/`)"
                    } else {
                        "expected a relative path without empty, `.` or `..` parts"
                    }
                ))
            };
            if !is_plain(&a.file.replace("{arch}", "arch")) {
                return Err(field("file", &a.file));
            }
            let url = a.url_path.replace("{arch}", "arch");
            if !is_rel_path(&url) || url.contains(['?', '#', '%']) {
                return Err(field("url_path", &a.url_path));
            }
            if let Some(p) = &a.members_url_path {
                let url = p.replace("{arch}", "arch").replace("{name}", "name");
                if !is_rel_path(&url) || url.contains(['?', '#', '%']) || !p.contains("{name}") {
                    return Err(Error::input(format!(
                        "artifact {} members_url_path = {:?}: expected a relative path holding {{name}}",
                        clip(&a.name),
                        clip(p)
                    )));
                }
            }
            if let Some(base) = &a.base
                && !is_base_url(base)
            {
                return Err(Error::input(format!(
                    "artifact {} base = {:?}: expected an https:// URL without credentials, query or fragment",
                    clip(&a.name),
                    clip(base)
                )));
            }
            if a.own_base() && !is_plain(&a.name) {
                return Err(Error::input(format!(
                    "artifact {:?} has a base of its own, so a mirror holds it under its name: \
                     the name must be one path component",
                    clip(&a.name)
                )));
            }
            for m in &a.members {
                if !is_rel_path(&m.path) {
                    return Err(field("members.path", &m.path));
                }
                if !is_rel_path(&m.install) {
                    return Err(field("members.install", &m.install));
                }
                check_mode(m.mode).map_err(|e| {
                    e.context(format!(
                        "artifact {} member {}",
                        clip(&a.name),
                        clip(&m.path)
                    ))
                })?;
            }
            for (arch, digest) in &a.digests {
                if arch.is_empty()
                    || !arch
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(Error::input(format!(
                        "artifact {} digests: {:?} is not an arch name (e.g. amd64)",
                        clip(&a.name),
                        clip(arch)
                    )));
                }
                let ok = digest.len() == a.algorithm.hex_len()
                    && digest
                        .bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                if !ok {
                    return Err(Error::input(format!(
                        "artifact {} digests.{}: expected {} lowercase hex characters of {}",
                        clip(&a.name),
                        clip(arch),
                        a.algorithm.hex_len(),
                        a.algorithm.name()
                    )));
                }
            }
            if a.members.is_empty() {
                return Err(Error::input(format!("artifact {} has no members", a.name)));
            }
            if a.kind == ArtifactKind::File && a.members.len() != 1 {
                return Err(Error::input(format!(
                    "artifact {} is a single file: it needs exactly one member",
                    a.name
                )));
            }
        }
        Ok(())
    }

    /// The etcd release the recipe carries, if any.
    pub fn etcd(&self) -> Option<Version> {
        self.etcd_version.as_deref().and_then(Version::parse)
    }

    /// The artifacts a node of `inv` needs: all, less those only a part the
    /// inventory leaves out uses (an external etcd's).
    pub fn needed(&self, inv: &crate::input::inventory::Inventory) -> Vec<&Artifact> {
        let left_out: Vec<&String> = inv
            .etcd
            .left_out()
            .and_then(|(part, _)| self.layout_def.parts.get(part))
            .map(|p| p.artifacts.iter().collect())
            .unwrap_or_default();
        self.artifacts
            .iter()
            .filter(|a| !left_out.contains(&&a.name))
            .collect()
    }

    /// The artifact pinned with `algorithm:hex` for some arch, if any.
    pub fn artifact_by_digest(&self, algorithm: Algorithm, hex: &str) -> Option<(&Artifact, &str)> {
        self.artifacts.iter().find_map(|a| {
            (a.algorithm == algorithm)
                .then(|| a.digests.iter().find(|(_, d)| d.as_str() == hex))
                .flatten()
                .map(|(arch, _)| (a, arch.as_str()))
        })
    }
}

/// A parsed `vMAJOR.MINOR.PATCH`, for templates and version ranges.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub fn parse(v: &str) -> Option<Version> {
        let mut it = v
            .strip_prefix('v')?
            .split('.')
            .map(|p| p.parse::<u32>().ok());
        let v = Version {
            major: it.next()??,
            minor: it.next()??,
            patch: it.next()??,
        };
        it.next().is_none().then_some(v)
    }
}

impl Version {
    /// `v1.24` or `v1.24.0`: bounds in the flag table name minor releases.
    pub fn parse_loose(v: &str) -> Option<Version> {
        Version::parse(v).or_else(|| Version::parse(&format!("{v}.0")))
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}
