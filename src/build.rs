//! The commands that build: load the inputs once, plan each selected node,
//! hand each plan to its writer. No network here: artifacts come from the
//! cache (the CLI fetches what is missing and asks again).

use crate::error::Result;
use crate::input::inventory::Inventory;
use crate::input::lint::Finding;
use crate::input::{Inputs, Selection, Session, select_nodes};
use crate::output::segment::{Shared, Starts};
use crate::output::{self, Target, Written, cloud_init, format, ignition, sums};
use crate::plan::assemble::Planner;
use crate::progress::{Event, Progress};
use crate::store::cache::Cache;
use crate::util::{atomic, parallel, writeback};
use std::sync::Mutex;

/// `imgbuild controller`.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    pub select: Selection,
    pub target: Target,
}

/// `imgbuild cloud-init`.
#[derive(Debug, Clone)]
pub struct CloudInitOptions {
    pub select: Selection,
    pub cloud_init: cloud_init::Options,
    pub out_dir: std::path::PathBuf,
}

/// `imgbuild ignition`.
#[derive(Debug, Clone)]
pub struct IgnitionOptions {
    pub select: Selection,
    pub ignition: ignition::Options,
    pub out_dir: std::path::PathBuf,
}

/// The inventory, read first so that a wrong node is refused before the PKI,
/// the recipe, the cache or the network are touched; then the recipe, its
/// layout and the OS profile `os` (a profile the layout lacks is refused
/// before the PKI, the cache or the network too); then everything else.
fn load(
    session: &Session,
    select: &Selection,
    progress: &dyn Progress,
) -> Result<(Planner, Vec<usize>, Cache)> {
    progress.event(Event::Step {
        what: "loading inventory, recipe, PKI and cached artifacts",
    });
    let inventory = Inventory::load(&session.inventory)?;
    let indices = select_nodes(&inventory, &select.nodes, select.all)?;
    let inputs = Inputs::load(session, inventory, &select.os)?;
    crate::pki::ensure_for_build(&inputs.inventory, progress)?;
    let cache = Cache::open(&session.cache_dir)?;
    Ok((Planner::new(inputs, &cache)?, indices, cache))
}

/// `imgbuild controller`: build the selected nodes, then SHA256SUMS.
pub fn controller(
    session: &Session,
    opts: &ControllerOptions,
    progress: &dyn Progress,
) -> Result<Vec<Written>> {
    let (planner, indices, cache) = load(session, &opts.select, progress)?;
    let target = &opts.target;
    if !target.split && target.format.splits() && indices.len() >= 10 {
        progress.event(Event::Notice {
            message: &format!(
                "{} whole archives each repeat the binaries; --split writes them once, in a shared file, plus a small archive per node",
                indices.len()
            ),
        });
    }
    atomic::ensure_dir(&target.out_dir)?;
    // Whole archives begin with the binaries' segment, a split's shared half
    // is it: if this build makes the segment, they are written while it is
    // made (see `segment::Starts`). A shared half on the cache's filesystem
    // is linked to the segment instead.
    let wanted = match (target.format.splits(), target.split) {
        (false, _) => Vec::new(),
        (true, false) => indices
            .iter()
            .map(|i| target.out_dir.join(target.format.whole(*i)))
            .collect(),
        (true, true) if writeback::same_filesystem(&target.out_dir, cache.root()) => Vec::new(),
        (true, true) => vec![target.out_dir.join(target.format.shared_half(
            &planner.inputs.recipe.kubernetes_version,
            &planner.inputs.inventory.cluster.arch,
        ))],
    };
    let shared = Shared {
        half: Default::default(),
        starts: Starts::new(wanted),
    };
    // Every node written, as it is: on a failure, SHA256SUMS still gets their lines.
    let done = Mutex::new(Vec::new());
    let one = |index: &usize| -> Result<Written> {
        let plan = planner.plan(*index, session.mtime, progress)?;
        progress.event(Event::Step {
            what: &format!(
                "writing {} for node {index} ({})",
                target.format, plan.meta.made_from.node_name
            ),
        });
        let w = output::write_node(&plan, target, &shared, &cache, progress)?;
        lock(&done).push(w.clone());
        Ok(w)
    };
    let built = (|| {
        let mut written = Vec::with_capacity(indices.len());
        if target.format.splits() && indices.len() > 2 {
            // The first node makes (or finds) the cached shared part; the others
            // only copy or reuse it and add their own part, on every core at once
            // (capped: each writer holds buffers, and the disk is the limit anyway).
            written.push(one(&indices[0])?);
            written.extend(parallel::map(&indices[1..], target.threads.min(8), one)?);
        } else {
            for index in &indices {
                written.push(one(index)?);
            }
        }
        Ok(written)
    })();
    let done = std::mem::take(&mut *lock(&done));
    let outputs: Vec<_> = done.iter().flat_map(|w| w.outputs.clone()).collect();
    match built {
        Ok(written) => {
            sums::update(&target.out_dir, &outputs, &|_| false)?;
            Ok(written)
        }
        Err(e) => {
            // The nodes written get their lines; a node that failed may have
            // replaced a file (an archive before its manifest, the shared
            // half before its own half), so its lines are checked again.
            let ok: Vec<usize> = done.iter().map(|w| w.node_index).collect();
            let failed = |name: &str| {
                format::is_shared_half(name)
                    || format::node_of(name)
                        .is_some_and(|n| indices.contains(&n) && !ok.contains(&n))
            };
            match sums::update(&target.out_dir, &outputs, &failed) {
                Ok(()) => Err(e),
                Err(sums) => Err(crate::Error::new(e.kind, format!("{e}; and {sums}"))),
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `imgbuild cloud-init`: `controller-N-cloud-init/` and the manifest of every selected node.
pub fn cloud_init(
    session: &Session,
    opts: &CloudInitOptions,
    progress: &dyn Progress,
) -> Result<Vec<Written>> {
    let (select, out_dir) = (&opts.select, &opts.out_dir);
    each_node(session, select, out_dir, progress, |plan| {
        cloud_init::write_node(plan, &opts.cloud_init, out_dir, progress)
    })
}

/// `imgbuild ignition`: `controller-N.ign` and the manifest of every selected
/// node, and their lines in SHA256SUMS.
pub fn ignition(
    session: &Session,
    opts: &IgnitionOptions,
    progress: &dyn Progress,
) -> Result<Vec<Written>> {
    let (select, out_dir) = (&opts.select, &opts.out_dir);
    each_node(session, select, out_dir, progress, |plan| {
        ignition::write_node(plan, &opts.ignition, out_dir, progress)
    })
}

/// Load for the selected nodes and OS profile, then plan each node in turn
/// and hand the plan to `write`, which writes into `out_dir`.
fn each_node(
    session: &Session,
    select: &Selection,
    out_dir: &std::path::Path,
    progress: &dyn Progress,
    write: impl Fn(&crate::plan::Plan) -> Result<Written>,
) -> Result<Vec<Written>> {
    let (planner, indices, _) = load(session, select, progress)?;
    atomic::ensure_dir(out_dir)?;
    indices
        .iter()
        .map(|&index| write(&planner.plan(index, session.mtime, progress)?))
        .collect()
}

/// `imgbuild lint`: findings for the selected nodes (all when none is named),
/// built for the OS profile `os`.
pub fn lint(session: &Session, nodes: &[String], os: &str) -> Result<Vec<(usize, Finding)>> {
    let inventory = Inventory::load(&session.inventory)?;
    let indices = select_nodes(&inventory, nodes, nodes.is_empty())?;
    let inputs = Inputs::load(session, inventory, os)?;
    let mut out = Vec::new();
    for index in indices {
        let rendered = inputs.render(index)?;
        out.extend(
            inputs
                .lint(index, &rendered)?
                .into_iter()
                .map(|f| (index, f)),
        );
    }
    Ok(out)
}
