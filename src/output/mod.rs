//! Output formats: each is a writer over a `Plan` (archives, a folder,
//! cloud-init, Ignition), plus what every output shares: names (`format`), the
//! manifest, SHA256SUMS, and the cached shared part of archives (`segment`).

pub mod cloud_init;
pub mod cpio;
pub mod dir;
pub mod format;
pub mod frames;
pub mod ignition;
pub mod manifest;
pub mod segment;
pub mod sums;
pub mod tar;

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::plan::Plan;
use crate::progress::{Event, Progress};
use crate::store::cache::Cache;
use cpio::Part;
use format::{Archive, Compression, Format};
use manifest::OutputFile;
use segment::Shared;

/// Where and how `controller` writes, validated before anything is loaded.
#[derive(Debug, Clone)]
pub struct Target {
    pub format: Format,
    /// Archives only: the node-independent part (binaries) once, as its own
    /// file, and each node's configuration as another. The two concatenate
    /// (shared first): a tar.gz pair into exactly the whole archive, a cpio
    /// pair into an initramfs the kernel unpacks.
    pub split: bool,
    pub out_dir: PathBuf,
    /// Threads that compress (bounded further by the compressors).
    pub threads: usize,
}

/// What one node's build wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub node_index: usize,
    pub node_name: String,
    /// The node's output: its archive, node half, or folder.
    pub artifact: PathBuf,
    pub manifest: PathBuf,
    /// Every file written (a split build writes two), for SHA256SUMS.
    pub outputs: Vec<OutputFile>,
}

/// Write node `plan` as `target` says, then its manifest.
pub fn write_node(
    plan: &Plan,
    target: &Target,
    shared: &Shared,
    cache: &Cache,
    progress: &dyn Progress,
) -> Result<Written> {
    let (format, dir, threads) = (target.format, target.out_dir.as_path(), target.threads);
    let compression = format.compression;
    let node = plan.meta.made_from.node_index;
    let (artifact, outputs) = match (format.archive, target.split) {
        (Archive::Dir, _) => {
            let dest = dir.join(format.whole(node));
            if let Some(message) = dir::write_dir(plan, &dest)? {
                progress.event(Event::Warning { message: &message });
            }
            if let Some(message) = dir::not_root_warning(plan, &dest) {
                progress.event(Event::Warning { message: &message });
            }
            (dest, vec![])
        }
        (Archive::Tar, false) => {
            let dest = dir.join(format.whole(node));
            let seg = tar::segment(plan, compression, cache, threads, &shared.starts, progress)?;
            let o = tar::write_whole(plan, compression, &seg, &shared.starts, &dest)?;
            (dest, vec![o])
        }
        (Archive::Cpio, false) if compression != Compression::None => {
            let dest = dir.join(format.whole(node));
            let o = cpio::write_whole(
                plan,
                compression,
                cache,
                threads,
                &shared.starts,
                &dest,
                progress,
            )?;
            (dest, vec![o])
        }
        (Archive::Cpio, false) => {
            let dest = dir.join(format.whole(node));
            let (dest, o) = cpio::write_file(plan, Part::Whole, compression, &dest)?;
            (dest, vec![o])
        }
        (Archive::Tar, true) => {
            // The shared part first: if its inputs are bad, nothing is written.
            // It is placed before the node's half too: it is the large one (a
            // full disk fails there, with nothing written), and one left by a
            // failure of the node's half is whole and reused.
            let seg = tar::segment(plan, compression, cache, threads, &shared.starts, progress)?;
            let dest = dir.join(format.shared_half(
                &plan.meta.made_from.kubernetes_version,
                &plan.meta.made_from.arch,
            ));
            let shared_out = shared.place(plan, cache, seg, &dest, 0o644, progress)?;
            let half = dir.join(format.node_half(node));
            let node_out = tar::write_node_half(plan, compression, &half)?;
            (half, vec![node_out, shared_out])
        }
        (Archive::Cpio, true) => {
            // The shared part first, as above.
            let seg =
                cpio::shared_segment(plan, compression, cache, threads, &shared.starts, progress)?;
            let dest = dir.join(format.shared_half(
                &plan.meta.made_from.kubernetes_version,
                &plan.meta.made_from.arch,
            ));
            let mode = cpio::part_mode(plan, Part::Shared);
            let shared_out = shared.place(plan, cache, seg, &dest, mode, progress)?;
            let half = dir.join(format.node_half(node));
            let (half, node_out) = cpio::write_file(plan, Part::PerNode, compression, &half)?;
            (half, vec![node_out, shared_out])
        }
    };
    progress.event(Event::Wrote { path: &artifact });
    let label = format.manifest_label(target.split);
    finish_node(plan, dir, &label, artifact, outputs, progress)
}

/// The end of every node's build: its manifest, listing `outputs` and labelled
/// with how they were made, beside them in `out_dir`.
pub fn finish_node(
    plan: &Plan,
    out_dir: &Path,
    label: &str,
    artifact: PathBuf,
    outputs: Vec<OutputFile>,
    progress: &dyn Progress,
) -> Result<Written> {
    let manifest = out_dir.join(format::manifest_name(plan.meta.made_from.node_index));
    manifest::write(&manifest, plan, label, outputs.clone())?;
    progress.event(Event::Wrote { path: &manifest });
    Ok(Written {
        node_index: plan.meta.made_from.node_index,
        node_name: plan.meta.made_from.node_name.clone(),
        artifact,
        manifest,
        outputs,
    })
}
