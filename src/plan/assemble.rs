//! Inputs → one plan per node: the rendered overlay, the PKI files and the
//! cached binaries, with the symlinks that enable units and every parent folder.
//! No network here: artifacts come from the cache.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::input::Inputs;
use crate::input::inventory::Inventory;
use crate::input::lint::{self, Severity};
use crate::input::network::Network;
use crate::input::profile::Profile;
use crate::input::recipe::Recipe;
use crate::plan::{Content, Entry, EntryKind, Meta, Origin, Plan, Provenance, Source};
use crate::progress::{Event, Progress};
use crate::store::cache::Cache;
use crate::util::digest::sha256_hex;

/// Everything needed to plan any node of the inventory.
pub struct Planner {
    pub inputs: Inputs,
    /// Each node's PKI files (1-based index - 1).
    pki: Vec<Vec<Entry>>,
    binaries: Vec<Entry>,
    sources: Vec<Source>,
}

impl Planner {
    /// Read the PKI folder and resolve the recipe's artifacts in the cache.
    pub fn new(inputs: Inputs, cache: &Cache) -> Result<Planner> {
        let profile = inputs.profile();
        let inv = &inputs.inventory;
        let pki = (1..=inv.controllers.len())
            .map(|i| read_pki(inv, i, &inputs.recipe, profile))
            .collect::<Result<_>>()?;
        let (binaries, sources) = binaries(cache, &inputs.recipe, &inv.cluster.arch, profile)?;
        Ok(Planner {
            inputs,
            pki,
            binaries,
            sources,
        })
    }

    /// The plan for node `index` (1-based), after the version check: its
    /// errors fail the build, its warnings and notices go to `progress`.
    pub fn plan(&self, index: usize, mtime: u64, progress: &dyn Progress) -> Result<Plan> {
        let inputs = &self.inputs;
        let inv = &inputs.inventory;
        let node = &inv.controllers[index - 1];
        let rendered = inputs.render(index)?;
        let findings = inputs.lint(index, &rendered)?;
        lint::fail_on_errors(inputs.version, &findings).map_err(|e| {
            e.context(format!(
                "inventory {}, node {index} ({})",
                inv.path.display(),
                node.name
            ))
        })?;
        for f in &findings {
            let message = format!("/{}: {}", f.file, f.message);
            match f.severity {
                Severity::Warning => progress.event(Event::Warning { message: &message }),
                _ => progress.event(Event::Notice { message: &message }),
            }
        }
        let mut entries: Vec<Entry> = rendered
            .into_iter()
            .map(|r| {
                let origin = Origin::Template {
                    template: r.template,
                };
                file_entry(&r.path, r.mode, r.secret, r.text.into_bytes(), origin)
            })
            .collect();
        entries.extend(self.pki[index - 1].iter().cloned());
        entries.extend(self.binaries.iter().cloned());
        entries.extend(layout_dirs(&inputs.recipe, inputs.profile()));
        entries.extend(enablement(&inputs.recipe, inputs.profile(), &entries)?);
        add_parents(&mut entries);
        let mut plan = Plan {
            meta: Meta {
                made_from: Provenance {
                    imgbuild_version: env!("CARGO_PKG_VERSION").to_string(),
                    recipe: inputs.recipe.name.clone(),
                    kubernetes_version: inputs.recipe.kubernetes_version.clone(),
                    arch: inv.cluster.arch.clone(),
                    cluster: inv.cluster.name.clone(),
                    node_index: index,
                    node_name: node.name.clone(),
                    inventory_sha256: inv.sha256.clone(),
                    mtime,
                },
                unit_order: inputs.unit_order(),
                os: inputs.profile().name.clone(),
                system_dirs: inputs.profile().system_dirs.clone(),
                network: Network::of(node)?,
                sources: self.sources.clone(),
            },
            entries,
        };
        plan.finish()?;
        Ok(plan)
    }
}

fn file_entry(path: &str, mode: u32, secret: bool, bytes: Vec<u8>, origin: Origin) -> Entry {
    Entry {
        path: path.to_string(),
        mode: if secret { 0o600 } else { mode },
        uid: 0,
        gid: 0,
        kind: EntryKind::File {
            size: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            content: Content::Inline(Arc::from(bytes)),
        },
        origin,
        shared: false,
        secret,
    }
}

/// Largest PKI file read (certificates, keys and kubeconfigs are a few KiB).
const PKI_FILE_LIMIT: u64 = 1 << 20;

/// The PKI files the layout names for node `index` (1-based), read from
/// `pki_dir`. The layout names them from the fixed set `pki init` creates, or
/// its per-node patterns whose `{node}` becomes the controller's name, a DNS
/// label (checked when it is loaded), so no name leaves the folder; and each
/// must be a regular file in it: a symbolic link is refused (it could bring
/// any file the builder can read into the image), as is anything but a
/// regular file or a file over 1 MiB.
fn read_pki(
    inv: &Inventory,
    index: usize,
    recipe: &Recipe,
    profile: &Profile,
) -> Result<Vec<Entry>> {
    let dir = inv.pki_dir();
    let node = &inv.controllers[index - 1].name;
    let mut out = Vec::new();
    let mut missing = Vec::new();
    let version = crate::input::recipe::Version::parse(&recipe.kubernetes_version);
    for p in recipe
        .layout_def
        .pki
        .iter()
        .filter(|p| profile.keeps_pki(&p.path))
        .filter(|p| version.is_none_or(|v| crate::input::recipe::since_applies(&p.since, v)))
    {
        let fixed = crate::pki::files().iter().any(|f| f.name == p.file);
        let per_node = crate::pki::node_file_patterns()
            .iter()
            .any(|f| f.name == p.file);
        if !fixed && !per_node {
            return Err(Error::input(format!(
                "layout: [[pki]] file {:?} is not a PKI file",
                crate::error::clip(&p.file)
            )));
        }
        let file = p.file.replace(crate::pki::NODE, node);
        let path = dir.join(&file);
        match read_regular(&path) {
            Ok(bytes) => out.push(file_entry(
                &profile.relocate(&p.path),
                p.mode,
                p.secret,
                bytes,
                Origin::Pki { file },
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
                return Err(Error::input(format!(
                    "PKI file {}: {e}: refused; put the file itself in the PKI folder",
                    path.display()
                )));
            }
            Err(e) => return Err(Error::io("cannot read PKI file", &path, e)),
        }
    }
    if !missing.is_empty() {
        return Err(Error::input(format!(
            "PKI folder {} (cluster.pki_dir of {}) lacks {}; create them with `imgbuild pki init --inventory {}` or copy them there",
            dir.display(),
            inv.path.display(),
            missing.join(", "),
            inv.path.display()
        )));
    }
    Ok(out)
}

/// The bytes of the regular file at `path`, not following a symbolic link;
/// InvalidInput (saying why) for a link, anything else than a regular file,
/// or a file over [`PKI_FILE_LIMIT`].
fn read_regular(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::{Error as IoError, ErrorKind, Read};
    use std::os::unix::fs::MetadataExt;
    let refuse = |why: &str| IoError::new(ErrorKind::InvalidInput, why.to_string());
    let before = std::fs::symlink_metadata(path)?;
    if before.file_type().is_symlink() {
        return Err(refuse("a symlink"));
    }
    if !before.file_type().is_file() {
        return Err(refuse("not a regular file"));
    }
    let file = std::fs::File::open(path)?;
    let meta = file.metadata()?;
    // The name still leads to the file we looked at (not swapped for a link).
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) || !meta.is_file() {
        return Err(refuse("changed while it was read"));
    }
    if meta.len() > PKI_FILE_LIMIT {
        return Err(refuse("larger than 1 MiB, not a PKI file"));
    }
    let mut bytes = Vec::new();
    file.take(PKI_FILE_LIMIT + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > PKI_FILE_LIMIT {
        return Err(refuse("larger than 1 MiB, not a PKI file"));
    }
    Ok(bytes)
}

/// Every member every artifact of the recipe installs (those the OS profile
/// and the inventory keep), from the cache, where the OS profile puts it; and
/// where a node can fetch each artifact itself.
fn binaries(
    cache: &Cache,
    recipe: &Recipe,
    arch: &str,
    profile: &Profile,
) -> Result<(Vec<Entry>, Vec<Source>)> {
    let mut out = Vec::new();
    let mut sources = Vec::new();
    let kept: Vec<_> = recipe
        .artifacts
        .iter()
        .filter(|a| profile.keeps_artifact(&a.name))
        .collect();
    for (a, index) in cache.resolve(recipe, &kept, arch)? {
        let pin = a.pin_for(&recipe.name, arch)?;
        sources.push(Source::of(a, arch, &pin));
        for m in &a.members {
            let member = m.path_for(arch);
            let blob = index.members.get(&member).ok_or_else(|| {
                Error::integrity(format!(
                    "the cache's index of {} lacks member {}; run `imgbuild cache verify` and import or fetch it again",
                    a.file_for(arch),
                    member
                ))
            })?;
            out.push(Entry {
                path: profile.relocate(&m.install),
                mode: m.mode,
                uid: 0,
                gid: 0,
                kind: EntryKind::File {
                    size: blob.size,
                    sha256: blob.sha256.clone(),
                    content: match cache.verified_blob(&blob.sha256) {
                        Some(stamp) => Content::Verified(cache.blob_path(&blob.sha256), stamp),
                        None => Content::Blob(cache.blob_path(&blob.sha256)),
                    },
                },
                origin: Origin::Artifact {
                    artifact: a.file_for(arch),
                    member: member.clone(),
                    pinned: pin.clone(),
                    trust: a.trust,
                    source: a.source.clone(),
                },
                shared: true,
                secret: false,
            });
        }
    }
    Ok((out, sources))
}

/// The layout's folders with modes of their own, where the OS profile puts them.
fn layout_dirs(recipe: &Recipe, profile: &Profile) -> Vec<Entry> {
    recipe
        .layout_def
        .dirs
        .iter()
        .filter(|d| profile.keeps_dir(&d.path))
        .map(|d| Entry::folder(&profile.relocate(&d.path), d.mode, "folder", false))
        .collect()
}

/// `systemctl enable`, offline: `<target>.wants/<unit>` symlinks, for the
/// units the OS profile keeps.
fn enablement(recipe: &Recipe, profile: &Profile, files: &[Entry]) -> Result<Vec<Entry>> {
    let layout = &recipe.layout_def;
    let mut out = Vec::new();
    for (target, units) in &layout.enable {
        for unit in units.iter().filter(|u| profile.keeps_unit(u)) {
            let shipped = format!("etc/systemd/system/{unit}");
            let dest = if files.iter().any(|e| e.path == shipped) {
                format!("/{shipped}")
            } else if let Some(p) = layout.unit_paths.get(unit) {
                p.clone()
            } else {
                return Err(Error::input(format!(
                    "layout {}: unit {} is enabled but neither shipped by the overlay nor listed in [unit_paths]",
                    crate::error::clip(&layout.overlay),
                    crate::error::clip(unit)
                )));
            };
            out.push(Entry {
                path: format!("etc/systemd/system/{target}.wants/{unit}"),
                mode: 0o777,
                uid: 0,
                gid: 0,
                kind: EntryKind::Symlink { target: dest },
                origin: Origin::Generated {
                    what: format!("systemctl enable {unit}"),
                },
                shared: false,
                secret: false,
            });
        }
    }
    Ok(out)
}

/// Every parent folder as an entry (0755, root), shared when a shared entry
/// needs it; a folder already in `entries` (the layout's own) is kept as it is.
fn add_parents(entries: &mut Vec<Entry>) {
    let mut dirs: BTreeMap<String, bool> = BTreeMap::new();
    let given: std::collections::BTreeSet<String> = entries
        .iter()
        .filter(|e| matches!(e.kind, EntryKind::Dir))
        .map(|e| e.path.clone())
        .collect();
    for e in entries.iter() {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            let shared = dirs.entry(parent.to_string()).or_insert(false);
            *shared |= e.shared;
            p = parent;
        }
    }
    for (path, shared) in dirs.into_iter().filter(|(p, _)| !given.contains(p)) {
        entries.push(Entry::folder(&path, 0o755, "parent folder", shared));
    }
}
