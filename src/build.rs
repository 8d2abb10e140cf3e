//! The controller build: inventory + recipe + overlay + PKI + cache → one plan
//! per node → the chosen writer. No network here: artifacts come from the cache.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::util::digest::ResumableSha256;

use crate::error::{Error, IoContext, Result};
use crate::input::assets::Assets;
use crate::input::inventory::Inventory;
use crate::input::lint::{Checked, Finding, FlagTable, Severity};
use crate::input::recipe::{Recipe, Version};
use crate::input::render::{Context, Renderer};
use crate::output::manifest::OutputFile;
use crate::plan::{Content, Entry, EntryKind, Meta, Origin, Plan, sha256_hex};
use crate::progress::{Event, Progress};
use crate::store::cache::Cache;
use crate::util::atomic;
use crate::{codec, output};

/// Where things are, shared by every command.
#[derive(Debug, Clone)]
pub struct Session {
    pub inventory: PathBuf,
    pub cache_dir: PathBuf,
    pub assets: Assets,
    /// Entry mtimes: SOURCE_DATE_EPOCH, or 0.
    pub mtime: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Dir,
    /// Initramfs: newc cpio, uncompressed or gzipped.
    Cpio,
    CpioGz,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::TarGz => "tar.gz",
            Format::Dir => "dir",
            Format::Cpio => "cpio",
            Format::CpioGz => "cpio.gz",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Node selectors (1-based index or name); empty with `all`.
    pub nodes: Vec<String>,
    pub all: bool,
    pub format: Format,
    pub out_dir: PathBuf,
    /// tar.gz and cpio formats: write the node-independent part (binaries)
    /// once, as its own file, and each node's configuration as another. The
    /// two concatenate (shared first): a tar.gz pair into exactly the whole
    /// archive, a cpio pair into an initramfs the kernel unpacks.
    pub split: bool,
}

/// Inputs loaded once and shared by every node of a build.
pub struct Loaded {
    pub inventory: Inventory,
    pub recipe: Recipe,
    pub version: Version,
    pub flags: FlagTable,
    templates: Vec<Template>,
    renderer: Renderer,
    binaries: Vec<Entry>,
    pki: Vec<Entry>,
    no_extra: BTreeMap<String, String>,
}

struct Template {
    name: String,
    path: String,
    mode: u32,
    secret: bool,
    origin: String,
}

impl Loaded {
    /// Load and check everything a build needs that is the same for all nodes.
    pub fn load(session: &Session) -> Result<Loaded> {
        Self::load_with(session, true)
    }

    /// Everything a build needs, once the PKI is known to fit the inventory
    /// (for the bundled example, generated on first use).
    pub fn for_build(session: &Session, progress: &dyn Progress) -> Result<Loaded> {
        progress.event(Event::Step {
            what: "loading inventory, recipe, PKI and cached artifacts",
        });
        let inventory = Inventory::load(&session.inventory)?;
        crate::pki::ensure_for_build(&inventory, progress)?;
        Self::from_inventory(session, inventory, true)
    }

    /// `with_inputs = false` skips the PKI folder and the cache: enough to render and lint.
    pub fn load_with(session: &Session, with_inputs: bool) -> Result<Loaded> {
        Self::from_inventory(session, Inventory::load(&session.inventory)?, with_inputs)
    }

    fn from_inventory(
        session: &Session,
        inventory: Inventory,
        with_inputs: bool,
    ) -> Result<Loaded> {
        let version = Version::parse(&inventory.cluster.kubernetes_version)
            .expect("validated by the inventory");
        let recipe = Recipe::load(&session.assets, &inventory.cluster.kubernetes_version)?;
        let layout = &recipe.layout_def;
        let mut templates = Vec::new();
        let mut sources = Vec::new();
        for f in &layout.files {
            let asset = session
                .assets
                .overlay_file(&layout.overlay, &f.template)?
                .ok_or_else(|| {
                    Error::input(format!(
                        "recipe {}: template {:?} not found in overlay {:?}",
                        recipe.origin, f.template, layout.overlay
                    ))
                })?;
            sources.push((f.template.clone(), asset.text, asset.origin.clone()));
            templates.push(Template {
                name: f.template.clone(),
                path: f.path.clone().unwrap_or_else(|| f.template.clone()),
                mode: f.mode,
                secret: f.secret,
                origin: asset.origin,
            });
        }
        let renderer = Renderer::new(&sources)?;
        let flags = FlagTable::load(&session.assets)?;
        let (pki, binaries) = if with_inputs {
            let pki = read_pki(&inventory, &recipe)?;
            let cache = Cache::open(&session.cache_dir)?;
            (
                pki,
                resolve_artifacts(&cache, &recipe, &inventory.cluster.arch)?,
            )
        } else {
            (Vec::new(), Vec::new())
        };
        Ok(Loaded {
            inventory,
            recipe,
            version,
            flags,
            templates,
            renderer,
            binaries,
            pki,
            no_extra: BTreeMap::new(),
        })
    }

    /// The overlay's templates rendered for node `index` (1-based): (template, text).
    pub fn render(&self, index: usize) -> Result<Vec<(&str, String)>> {
        let ctx = Context::new(&self.inventory, index, self.version);
        self.templates
            .iter()
            .map(|t| {
                Ok((
                    t.path.as_str(),
                    self.renderer.render(&t.name, &t.origin, &ctx)?,
                ))
            })
            .collect()
    }

    /// Check node `index`'s rendered files against the flag table. Duplicate
    /// flags are errors here; the table's errors are returned as findings.
    pub fn lint(&self, index: usize) -> Result<Vec<Finding>> {
        let rendered = self.render(index)?;
        self.lint_rendered(&rendered)
    }

    fn lint_rendered(&self, rendered: &[(&str, String)]) -> Result<Vec<Finding>> {
        let inv = &self.inventory;
        let mut checked = Vec::new();
        for (path, text) in rendered {
            check_unit_flags(inv, path, text)?;
            let (extra, section) = match crate::input::unit::exec_start(text).map(|(c, _)| c) {
                Some(c) if c.ends_with("/kube-apiserver") => {
                    (&inv.apiserver.extra_args, "[apiserver.extra_args]")
                }
                Some(c) if c.ends_with("/kube-controller-manager") => (
                    &inv.controller_manager.extra_args,
                    "[controller_manager.extra_args]",
                ),
                Some(c) if c.ends_with("/kube-scheduler") => {
                    (&inv.scheduler.extra_args, "[scheduler.extra_args]")
                }
                _ => (&self.no_extra, ""),
            };
            checked.push(Checked {
                path,
                text,
                extra,
                extra_section: section,
            });
        }
        Ok(self.flags.check(self.version, &checked))
    }

    /// The plan for node `index` (1-based), after the version check: its
    /// errors fail the build, its warnings and notices go to `progress`.
    pub fn plan(&self, index: usize, mtime: u64, progress: &dyn Progress) -> Result<Plan> {
        let inv = &self.inventory;
        let node = &inv.controllers[index - 1];
        let rendered = self.render(index)?;
        let findings = self.lint_rendered(&rendered)?;
        crate::input::lint::fail_on_errors(self.version, &findings).map_err(|e| {
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
        let mut entries: Vec<Entry> = Vec::new();
        for (t, (_, text)) in self.templates.iter().zip(rendered) {
            entries.push(file_entry(
                &t.path,
                t.mode,
                t.secret,
                text.into_bytes(),
                Origin::Template {
                    template: t.name.clone(),
                },
            ));
        }
        entries.extend(self.pki.iter().cloned());
        entries.extend(self.binaries.iter().cloned());
        entries.extend(enablement(&self.recipe, &entries)?);
        add_parents(&mut entries);
        let mut plan = Plan {
            meta: Meta {
                imgbuild_version: env!("CARGO_PKG_VERSION").to_string(),
                recipe: self.recipe.name.clone(),
                kubernetes_version: self.recipe.kubernetes_version.clone(),
                arch: inv.cluster.arch.clone(),
                cluster: inv.cluster.name.clone(),
                node_index: index,
                node_name: node.name.clone(),
                inventory_sha256: inv.sha256.clone(),
                mtime,
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

/// An inventory `extra_args` flag that the recipe already sets would appear twice.
fn check_unit_flags(inv: &Inventory, path: &str, text: &str) -> Result<()> {
    if !path.starts_with("etc/systemd/system/") {
        return Ok(());
    }
    let Some((_, flags)) = crate::input::unit::exec_start(text) else {
        return Ok(());
    };
    let mut seen = BTreeSet::new();
    for (flag, _) in &flags {
        if !seen.insert(flag) {
            return Err(Error::input(format!(
                "inventory {}: --{flag} is set twice in /{path}: the recipe already sets it, so remove it from the component's extra_args",
                inv.path.display()
            )));
        }
    }
    Ok(())
}

fn read_pki(inv: &Inventory, recipe: &Recipe) -> Result<Vec<Entry>> {
    let dir = inv.pki_dir();
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for p in &recipe.layout_def.pki {
        let path = dir.join(&p.file);
        match std::fs::read(&path) {
            Ok(bytes) => out.push(file_entry(
                &p.path,
                p.mode,
                p.secret,
                bytes,
                Origin::Pki {
                    file: p.file.clone(),
                },
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => missing.push(p.file.as_str()),
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

/// Every member every artifact of the recipe installs, from the cache.
pub fn resolve_artifacts(cache: &Cache, recipe: &Recipe, arch: &str) -> Result<Vec<Entry>> {
    let mut out = Vec::new();
    for a in &recipe.artifacts {
        let hex = a.digest_for(&recipe.name, arch)?;
        let pin = a.pin_for(&recipe.name, arch)?;
        let Some(index) = cache.lookup(a.algorithm, hex)? else {
            return Err(Error::missing(format!(
                "artifact {} ({pin}) of recipe {} is not in the cache {}.\n\
                 On a connected machine: `imgbuild fetch` (or `--mirror URL` for an internal mirror laid out like https://dl.k8s.io).\n\
                 Offline: download https://dl.k8s.io/{} elsewhere and run `imgbuild cache import {}`, \
                 or carry a bundle made by `imgbuild airgap export` and run `imgbuild airgap import BUNDLE`",
                a.file_for(arch),
                recipe.name,
                cache.root().display(),
                a.url_path_for(arch),
                a.file_for(arch),
            )));
        };
        for m in &a.members {
            let blob = &index.members[&m.path];
            out.push(Entry {
                path: m.install.clone(),
                mode: m.mode,
                uid: 0,
                gid: 0,
                kind: EntryKind::File {
                    size: blob.size,
                    sha256: blob.sha256.clone(),
                    content: Content::Blob(cache.blob_path(&blob.sha256)),
                },
                origin: Origin::Artifact {
                    artifact: a.file_for(arch),
                    member: m.path.clone(),
                    pinned: pin.clone(),
                    trust: a.trust,
                    source: a.source.clone(),
                },
                shared: true,
                secret: false,
            });
        }
    }
    Ok(out)
}

/// `systemctl enable`, offline: `<target>.wants/<unit>` symlinks.
fn enablement(recipe: &Recipe, files: &[Entry]) -> Result<Vec<Entry>> {
    let layout = &recipe.layout_def;
    let mut out = Vec::new();
    for (target, units) in &layout.enable {
        for unit in units {
            let shipped = format!("etc/systemd/system/{unit}");
            let dest = if files.iter().any(|e| e.path == shipped) {
                format!("/{shipped}")
            } else if let Some(p) = layout.unit_paths.get(unit) {
                p.clone()
            } else {
                return Err(Error::input(format!(
                    "layout {}: unit {unit} is enabled but neither shipped by the overlay nor listed in [unit_paths]",
                    layout.overlay
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

/// Every parent folder as an entry (0755, root), shared when a shared entry needs it.
fn add_parents(entries: &mut Vec<Entry>) {
    let mut dirs: BTreeMap<String, bool> = BTreeMap::new();
    for e in entries.iter() {
        let mut p = e.path.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            let shared = dirs.entry(parent.to_string()).or_insert(false);
            *shared |= e.shared;
            p = parent;
        }
    }
    for (path, shared) in dirs {
        entries.push(Entry {
            path,
            mode: 0o755,
            uid: 0,
            gid: 0,
            kind: EntryKind::Dir,
            origin: Origin::Generated {
                what: "parent folder".into(),
            },
            shared,
            secret: false,
        });
    }
}

/// What one node's build wrote.
#[derive(Debug, Clone)]
pub struct Built {
    pub node_index: usize,
    pub node_name: String,
    pub artifact: PathBuf,
    pub manifest: PathBuf,
    pub sha256: Option<String>,
    /// Every file written (a split cpio writes two), for SHA256SUMS.
    pub outputs: Vec<OutputFile>,
}

/// `imgbuild controller`: build the selected nodes.
pub fn controller(
    session: &Session,
    opts: &ControllerOptions,
    progress: &dyn Progress,
) -> Result<Vec<Built>> {
    let loaded = Loaded::for_build(session, progress)?;
    let indices = select_nodes(&loaded.inventory, &opts.nodes, opts.all)?;
    if opts.split && opts.format == Format::Dir {
        return Err(Error::input(
            "--split applies to archives (--format tar.gz, cpio or cpio.gz), not to --format dir",
        ));
    }
    if !opts.split && opts.format != Format::Dir && indices.len() >= 10 {
        progress.event(Event::Notice {
            message: &format!(
                "{} whole archives each repeat the binaries; --split writes them once, in a shared file, plus a small archive per node",
                indices.len()
            ),
        });
    }
    atomic::ensure_dir(&opts.out_dir)?;
    let cache = Cache::open(&session.cache_dir)?;
    let mut built = Vec::new();
    // Split: the shared file is the same for every node; written (at most) once.
    let mut shared_written: Option<SharedWritten> = None;
    let one = |index: usize, shared: &mut Option<SharedWritten>| -> Result<Built> {
        let plan = loaded.plan(index, session.mtime, progress)?;
        progress.event(Event::Step {
            what: &format!(
                "writing {} for node {index} ({})",
                opts.format.name(),
                plan.meta.node_name
            ),
        });
        write_node(&plan, opts, shared, &cache, progress)
    };
    if opts.format != Format::Dir && indices.len() > 2 {
        // The first node makes (or finds) the cached shared part; the others only
        // copy or reuse it and add their own part, on every core at once.
        built.push(one(indices[0], &mut shared_written)?);
        let rest = &indices[1..];
        let next = std::sync::atomic::AtomicUsize::new(0);
        let results = std::sync::Mutex::new(Vec::with_capacity(rest.len()));
        let first_shared = &shared_written;
        std::thread::scope(|scope| {
            // Capped: each writer holds buffers, and the disk is the limit anyway.
            for _ in 0..threads().min(8).min(rest.len()) {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(&index) = rest.get(i) else { break };
                        let r = one(index, &mut first_shared.clone());
                        let failed = r.is_err();
                        results.lock().expect("results").push((i, r));
                        if failed {
                            // Stop handing out work; nodes already written stay whole.
                            next.store(rest.len(), std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        let mut results = results.into_inner().expect("results");
        results.sort_by_key(|(i, _)| *i);
        for (_, r) in results {
            built.push(r?);
        }
    } else {
        for index in indices {
            built.push(one(index, &mut shared_written)?);
        }
    }
    let sums: Vec<(String, String)> = built
        .iter()
        .flat_map(|b| b.outputs.iter().map(|o| (o.name.clone(), o.sha256.clone())))
        .collect();
    if !sums.is_empty() {
        update_sums(&opts.out_dir.join("SHA256SUMS"), &sums)?;
    }
    Ok(built)
}

/// `imgbuild lint`: findings for the selected nodes (all when none is named).
pub fn lint(session: &Session, nodes: &[String]) -> Result<Vec<(usize, Finding)>> {
    let loaded = Loaded::load_with(session, false)?;
    let all = nodes.is_empty();
    let mut out = Vec::new();
    for index in select_nodes(&loaded.inventory, nodes, all)? {
        out.extend(loaded.lint(index)?.into_iter().map(|f| (index, f)));
    }
    Ok(out)
}

pub fn select_nodes(inv: &Inventory, nodes: &[String], all: bool) -> Result<Vec<usize>> {
    if all {
        return Ok((1..=inv.controllers.len()).collect());
    }
    if nodes.is_empty() {
        return Err(Error::input(
            "say which node to build: --node N (1-based index or name), or --all",
        ));
    }
    let mut out = Vec::new();
    for n in nodes {
        let (i, _) = inv.node(n)?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}

/// The shared file of a split build: the key of what it holds, and the file.
type SharedWritten = (String, OutputFile);

fn write_node(
    plan: &Plan,
    opts: &ControllerOptions,
    shared_written: &mut Option<SharedWritten>,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<Built> {
    let (format, out_dir) = (opts.format, opts.out_dir.as_path());
    let stem = format!("controller-{}", plan.meta.node_index);
    let manifest_path = out_dir.join(format!("{stem}.manifest.json"));
    let ext = format.name();
    let (artifact, outputs) = match format {
        Format::Dir => {
            let dest = out_dir.join(&stem);
            output::dir::write_dir(plan, &dest)?;
            (dest, vec![])
        }
        Format::TarGz if !opts.split => {
            let dest = out_dir.join(format!("{stem}.tar.gz"));
            let o = write_tar_gz(plan, cache, &dest, progress)?;
            (dest, vec![o])
        }
        Format::CpioGz if !opts.split => {
            let dest = out_dir.join(format!("{stem}.cpio.gz"));
            let o = write_cpio_gz(plan, cache, &dest, progress)?;
            (dest, vec![o])
        }
        Format::Cpio if !opts.split => {
            let dest = out_dir.join(format!("{stem}.cpio"));
            let (dest, o) = codec::cpio::write_file(plan, codec::cpio::Part::Whole, false, &dest)?;
            (dest, vec![o])
        }
        Format::TarGz => {
            // The shared part first: if its inputs are bad, nothing is written.
            let (key, seg_path, seg) = tar_gz_segment(plan, cache, progress)?;
            let node = out_dir.join(format!("{stem}-node.tar.gz"));
            let node_out = write_tar_gz_node(plan, &node)?;
            let shared_out = shared_file(
                plan,
                out_dir,
                shared_written,
                cache,
                (key, seg_path, seg),
                "tar.gz",
                0o644,
                progress,
            )?;
            (node, vec![node_out, shared_out])
        }
        Format::Cpio | Format::CpioGz => {
            use codec::cpio::{Part, part_mode, write_file};
            let gzip = format == Format::CpioGz;
            // The shared part first: if its inputs are bad, nothing is written.
            let segment = cpio_segment(plan, gzip, cache, progress)?;
            let node = out_dir.join(format!("{stem}-node.{ext}"));
            let (node, node_out) = write_file(plan, Part::PerNode, gzip, &node)?;
            let mode = part_mode(plan, Part::Shared);
            let shared_out = shared_file(
                plan,
                out_dir,
                shared_written,
                cache,
                segment,
                ext,
                mode,
                progress,
            )?;
            (node, vec![node_out, shared_out])
        }
    };
    progress.event(Event::Wrote { path: &artifact });
    let sha256 = outputs.first().map(|o| o.sha256.clone());
    let format_name = if opts.split {
        format!("{} (split)", format.name())
    } else {
        format.name().to_string()
    };
    output::manifest::write(&manifest_path, plan, &format_name, outputs.clone())?;
    progress.event(Event::Wrote {
        path: &manifest_path,
    });
    Ok(Built {
        node_index: plan.meta.node_index,
        node_name: plan.meta.node_name.clone(),
        artifact,
        manifest: manifest_path,
        sha256,
        outputs,
    })
}

/// A split build's `controller-shared-VERSION-ARCH.EXT`: a copy of the cached
/// segment, written by the first node (and only if the copy already there is
/// not the one a previous build wrote); every other node must need the same.
#[allow(clippy::too_many_arguments)]
fn shared_file(
    plan: &Plan,
    out_dir: &Path,
    shared_written: &mut Option<SharedWritten>,
    cache: &Cache,
    (key, seg_path, mut seg): (String, PathBuf, crate::store::cache::Segment),
    ext: &str,
    mode: u32,
    progress: &dyn Progress,
) -> Result<OutputFile> {
    match shared_written {
        Some((seen, o)) if *seen == key => return Ok(o.clone()),
        Some(_) => {
            return Err(Error::input(format!(
                "node {}: its binaries differ from the previous node's, so they cannot share one archive; build it without --split",
                plan.meta.node_index
            )));
        }
        None => {}
    }
    let m = &plan.meta;
    let name = format!(
        "controller-shared-{}-{}.{ext}",
        m.kubernetes_version, m.arch
    );
    let dest = out_dir.join(&name);
    if cache.place_segment(&key, &mut seg, &seg_path, &dest, mode)? {
        progress.event(Event::Wrote { path: &dest });
    } else {
        progress.event(Event::Step {
            what: &format!("{} is unchanged since the last build; kept", dest.display()),
        });
    }
    let out = OutputFile {
        name,
        sha256: seg.sha256,
        size: seg.size,
    };
    *shared_written = Some((key, out.clone()));
    Ok(out)
}
/// How many threads work: every core, or IMGBUILD_THREADS (compression caps
/// it at `gz::MAX_THREADS` to bound memory).
fn threads() -> usize {
    if let Some(n) = std::env::var("IMGBUILD_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A segment being written: a temp file in the cache, hashed as it fills.
type SegmentWriter = codec::tar::HashingWriter<std::io::BufWriter<tempfile::NamedTempFile>>;

/// Segment `key` from the cache, or made now by `make` (which gets a temp
/// file in the cache and returns it written) and stored; `step` says what a
/// cache miss costs.
fn cached_segment(
    cache: &Cache,
    key: String,
    step: Option<&str>,
    progress: &dyn Progress,
    make: impl FnOnce(tempfile::NamedTempFile) -> Result<SegmentWriter>,
) -> Result<(String, PathBuf, crate::store::cache::Segment)> {
    if let Some((path, seg)) = cache.segment(&key)? {
        return Ok((key, path, seg));
    }
    if let Some(what) = step {
        progress.event(Event::Step { what });
    }
    let w = make(cache.temp_file()?)?;
    let (path, seg) = store_segment(cache, &key, w)?;
    Ok((key, path, seg))
}

fn segment_writer(tmp: tempfile::NamedTempFile) -> SegmentWriter {
    codec::tar::HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, tmp))
}

const COMPRESSING: &str = "compressing the binaries (once for every node of this recipe and arch)";

/// The shared part of every node's tar.gz (the binaries' tar entries as
/// parallel gzip members, no end blocks), from the cache or made now and cached.
/// Keyed by everything its bytes depend on (entries, mtime, deflate settings).
fn tar_gz_segment(
    plan: &Plan,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<(String, PathBuf, crate::store::cache::Segment)> {
    let shared: Vec<&Entry> = plan.shared().collect();
    let key = format!(
        "tar-gz-{}",
        codec::tar::shared_key(&shared, plan.meta.mtime)?
    );
    cached_segment(cache, key, Some(COMPRESSING), progress, |tmp| {
        let mut w = segment_writer(tmp);
        codec::tar::write_shared(shared, plan.meta.mtime, &mut w, threads())?;
        Ok(w)
    })
}

/// A split cpio's shared archive, from the cache or made now and cached:
/// uncompressed, one archive; gzipped, the cached shared entries' members
/// (see `cpio_gz_entries_segment`) and a member with the trailer.
fn cpio_segment(
    plan: &Plan,
    gzip: bool,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<(String, PathBuf, crate::store::cache::Segment)> {
    let key = format!(
        "cpio{}-{}",
        if gzip { "-gz" } else { "" },
        codec::cpio::shared_key(plan, gzip)
    );
    if !gzip {
        let step = "archiving the binaries (once for every node of this recipe and arch)";
        return cached_segment(cache, key, Some(step), progress, |tmp| {
            codec::cpio::write_part_to(plan, codec::cpio::Part::Shared, false, segment_writer(tmp))
        });
    }
    // The entries' segment says so itself if it must be compressed.
    cached_segment(cache, key, None, progress, |mut tmp| {
        let (_, entries_path, entries) = cpio_gz_entries_segment(plan, cache, progress)?;
        let hasher = copy_segment(&entries_path, &entries, tmp.as_file_mut())?;
        let mut w = codec::tar::HashingWriter::resume(std::io::BufWriter::new(tmp), hasher);
        let trailer = codec::cpio::trailer_gz(plan.meta.mtime)?;
        std::io::Write::write_all(&mut w, &trailer)
            .map_err(|e| Error::io("cannot write", &cache.tmp_dir(), e))?;
        Ok(w)
    })
}

/// The shared entries of every cpio.gz (binaries and their folders, no
/// trailer) as gzip members that end at entry boundaries, compressed on every
/// core once and cached. A whole cpio.gz is this plus the node's member; a
/// split's shared archive is this plus a trailer member.
fn cpio_gz_entries_segment(
    plan: &Plan,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<(String, PathBuf, crate::store::cache::Segment)> {
    let key = format!("cpio-gz-entries-{}", codec::cpio::shared_key(plan, true));
    cached_segment(cache, key, Some(COMPRESSING), progress, |tmp| {
        let mut w = segment_writer(tmp);
        let part = codec::cpio::Part::Shared;
        codec::cpio::write_entries_gz(plan, part, threads(), &cache.tmp_dir(), &mut w)?;
        Ok(w)
    })
}

/// A whole cpio.gz: the cached shared entries, then the node's entries and
/// the trailer as one member. Only the node's part is compressed and hashed.
fn write_cpio_gz(
    plan: &Plan,
    cache: &Cache,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<OutputFile> {
    use codec::cpio::Part;
    let (_, seg_path, seg) = cpio_gz_entries_segment(plan, cache, progress)?;
    let mut file = atomic::AtomicFile::create(dest, codec::cpio::part_mode(plan, Part::Whole))?;
    let hasher = copy_segment(
        &seg_path,
        &seg,
        file.file_mut().with_path("cannot write", dest)?,
    )?;
    let shared = codec::cpio::select(plan, Part::Shared).len() as u32;
    let out = codec::cpio::write_rest_gz(
        plan,
        Part::Shared.first_ino() + shared,
        codec::tar::HashingWriter::resume(file, hasher),
    )?;
    commit_hashed(out)
}

/// Copy a cached segment to the start of `out` and return the hash state
/// after its bytes, so the output's digest costs only what follows.
fn copy_segment(
    seg_path: &Path,
    seg: &crate::store::cache::Segment,
    out: &mut std::fs::File,
) -> Result<ResumableSha256> {
    let hasher = ResumableSha256::resume(&seg.state)
        .filter(|h| h.len() == seg.size)
        .ok_or_else(|| {
            Error::integrity(format!(
                "cached segment {} has a damaged record",
                seg_path.display()
            ))
        })?;
    crate::store::cache::copy_segment(seg_path, seg, out)?;
    Ok(hasher)
}

fn store_segment(
    cache: &Cache,
    key: &str,
    w: SegmentWriter,
) -> Result<(PathBuf, crate::store::cache::Segment)> {
    let state = w.hasher.save();
    let (buf, sha256, size) = w.finish();
    let tmp = buf
        .into_inner()
        .map_err(|e| Error::io("cannot write", Path::new("segment"), e.into_error()))?;
    let seg = crate::store::cache::Segment {
        sha256,
        size,
        state,
        stamp: None,
        placed: Vec::new(),
    };
    cache.store_segment(key, tmp, &seg)
}

/// The node's tar.gz: the cached shared part, then the node's own member.
/// A warm build copies the shared part and compresses only the node's files.
fn write_tar_gz(
    plan: &Plan,
    cache: &Cache,
    dest: &Path,
    progress: &dyn Progress,
) -> Result<OutputFile> {
    let (_, seg_path, seg) = tar_gz_segment(plan, cache, progress)?;
    let mut file = atomic::AtomicFile::create(dest, 0o600)?;
    let hasher = copy_segment(
        &seg_path,
        &seg,
        file.file_mut().with_path("cannot write", dest)?,
    )?;
    let out = codec::tar::write_per_node(
        plan.per_node(),
        plan.meta.mtime,
        codec::tar::HashingWriter::resume(file, hasher),
    )?;
    commit_hashed(out)
}

/// A split tar.gz's node half: the node's entries and the end-of-archive
/// blocks as one gzip member, which appended to the shared half gives exactly
/// the whole archive (and alone is a valid archive of the node's files).
fn write_tar_gz_node(plan: &Plan, dest: &Path) -> Result<OutputFile> {
    let mode = if plan.per_node().any(|e| e.secret) {
        0o600
    } else {
        0o644
    };
    let file = atomic::AtomicFile::create(dest, mode)?;
    let out = codec::tar::write_per_node(
        plan.per_node(),
        plan.meta.mtime,
        codec::tar::HashingWriter::new(file),
    )?;
    commit_hashed(out)
}

/// Put a hashed output file in place; its name, digest and size for the manifest.
fn commit_hashed(out: codec::tar::HashingWriter<atomic::AtomicFile>) -> Result<OutputFile> {
    let (file, sha256, size) = out.finish();
    let path = file.commit()?;
    let name = path
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    Ok(OutputFile { name, sha256, size })
}

/// Replace or add lines `<sha256>  <name>` in a SHA256SUMS file, kept sorted by name.
pub fn update_sums(path: &Path, sums: &[(String, String)]) -> Result<()> {
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            for l in text.lines() {
                if let Some((h, n)) = l.split_once("  ") {
                    lines.insert(n.to_string(), h.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read", path, e)),
    }
    for (name, sha) in sums {
        lines.insert(name.clone(), sha.clone());
    }
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    atomic::write(path, text.as_bytes(), 0o644).map(|_| ())
}

#[derive(Debug, Clone)]
pub struct CloudInitOptions {
    /// Node selectors (1-based index or name); empty with `all`.
    pub nodes: Vec<String>,
    pub all: bool,
    pub binaries: output::cloud_init::Binaries,
    pub provider: output::cloud_init::Provider,
    pub out_dir: PathBuf,
}

/// `imgbuild cloud-init`: `out/controller-<N>-cloud-init/` per selected node,
/// and the node's manifest.
pub fn cloud_init(
    session: &Session,
    opts: &CloudInitOptions,
    progress: &dyn Progress,
) -> Result<Vec<Built>> {
    use output::cloud_init::{self as ci, Network};
    let loaded = Loaded::for_build(session, progress)?;
    let indices = select_nodes(&loaded.inventory, &opts.nodes, opts.all)?;
    atomic::ensure_dir(&opts.out_dir)?;
    // Units start in the layout's order (dependencies first).
    let unit_order: Vec<String> = loaded
        .recipe
        .layout_def
        .enable
        .values()
        .flatten()
        .cloned()
        .collect();
    let mut built = Vec::new();
    for index in indices {
        let plan = loaded.plan(index, session.mtime, progress)?;
        let node = &loaded.inventory.controllers[index - 1];
        let options = ci::Options {
            binaries: opts.binaries.clone(),
            provider: opts.provider,
            network: Network::from_controller(node)
                .map_err(|e| e.context(format!("inventory {}", loaded.inventory.path.display())))?,
            unit_order: unit_order.clone(),
        };
        progress.event(Event::Step {
            what: &format!(
                "writing cloud-init for node {index} ({}), binaries {}",
                plan.meta.node_name,
                opts.binaries.name()
            ),
        });
        let rendered = ci::render(&plan, &options)?;
        if rendered.gzipped {
            progress.event(Event::Notice {
                message: &format!(
                    "user-data of node {index} is {} bytes, over the {} limit of {} bytes: written gzipped ({} bytes)",
                    rendered.user_data_text.len(),
                    opts.provider.name(),
                    opts.provider.limit().unwrap_or_default(),
                    rendered.user_data.len()
                ),
            });
        }
        let stem = format!("controller-{index}");
        let dest = opts.out_dir.join(format!("{stem}-cloud-init"));
        ci::write_folder(&plan, &rendered, &dest)?;
        progress.event(Event::Wrote { path: &dest });
        let mut outputs = Vec::new();
        for f in ["user-data", "meta-data", "network-config", "seed.img"] {
            let p = dest.join(f);
            if p.exists() {
                let bytes_sha = file_sha256(&p)?;
                outputs.push(OutputFile {
                    name: format!("{stem}-cloud-init/{f}"),
                    sha256: bytes_sha.0,
                    size: bytes_sha.1,
                });
            }
        }
        let manifest_path = opts.out_dir.join(format!("{stem}.manifest.json"));
        let format = format!("cloud-init (binaries {})", opts.binaries.name());
        output::manifest::write(&manifest_path, &plan, &format, outputs.clone())?;
        progress.event(Event::Wrote {
            path: &manifest_path,
        });
        built.push(Built {
            node_index: index,
            node_name: plan.meta.node_name.clone(),
            artifact: dest,
            manifest: manifest_path,
            sha256: None,
            outputs,
        });
    }
    Ok(built)
}

/// sha256 and size of a file, streamed.
fn file_sha256(path: &Path) -> Result<(String, u64)> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io("cannot read", path, e))?;
    let mut h = codec::tar::HashingWriter::new(std::io::sink());
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io("cannot read", path, e))?;
    let (_, sha, size) = h.finish();
    Ok((sha, size))
}
