//! `SHA256SUMS` of an output folder, in the format `sha256sum -c` reads.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::output::manifest::OutputFile;
use crate::util::atomic;

/// Replace or add the lines `<sha256>  <name>` of `outputs` in `dir`'s
/// SHA256SUMS, kept sorted by name.
pub fn update(dir: &Path, outputs: &[OutputFile]) -> Result<()> {
    if outputs.is_empty() {
        return Ok(());
    }
    let path = dir.join(crate::output::format::SUMS);
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            for l in text.lines() {
                if let Some((h, n)) = l.split_once("  ") {
                    lines.insert(n.to_string(), h.to_string());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io("cannot read", &path, e)),
    }
    for o in outputs {
        lines.insert(o.name.clone(), o.sha256.clone());
    }
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    atomic::write(&path, text.as_bytes(), 0o644).map(|_| ())
}
