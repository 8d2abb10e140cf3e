//! The NoCloud seed volume: a vfat image labelled `cidata` with the same files
//! as the cloud-init folder, plus the binaries in `seed` mode. Its bytes follow
//! from the inputs alone: the volume id comes from the content, the timestamps
//! from the plan's mtime.

use std::path::Path;

use super::{CloudInit, SEED_LABEL};
use crate::codec::vfat::{self, VfatFile};
use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::util::atomic::AtomicFile;

/// The NoCloud seed volume: same files as the folder, plus binaries in `seed` mode.
pub fn write_seed(plan: &Plan, rendered: &CloudInit, dest: &Path) -> Result<()> {
    let mut files: Vec<VfatFile> = Vec::new();
    let mem = |name: &str, bytes: Vec<u8>| VfatFile {
        path: name.to_string(),
        size: bytes.len() as u64,
        open: Box::new(move || Ok(Box::new(std::io::Cursor::new(bytes.clone())))),
    };
    files.push(mem("meta-data", rendered.meta_data.clone().into_bytes()));
    if let Some(n) = &rendered.network_config {
        files.push(mem("network-config", n.clone().into_bytes()));
    }
    files.push(mem("user-data", rendered.user_data.clone()));
    for (name, e) in &rendered.seed_files {
        files.push(VfatFile {
            path: name.clone(),
            size: e.size(),
            open: Box::new(move || e.open()),
        });
    }
    // A fixed volume id derived from the content: same inputs, same bytes.
    let volume_id =
        u32::from_str_radix(&rendered.instance_id[rendered.instance_id.len() - 8..], 16)
            .expect("instance id ends in hex");
    let mut out = AtomicFile::create(dest, 0o600)?;
    vfat::write_vfat(
        out.file_mut()
            .map_err(|e| Error::io("cannot write", dest, e))?,
        dest,
        SEED_LABEL,
        volume_id,
        plan.meta.made_from.mtime,
        &files,
    )?;
    out.commit().map(drop)
}
