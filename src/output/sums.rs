//! `SHA256SUMS` of an output folder, in the format `sha256sum -c` reads.
//!
//! Read, merged and written back under a lock on the output folder
//! ([`atomic::lock_dir`]), so builds writing into one folder at once keep
//! each other's lines. Lines of files that are gone are dropped, and lines a
//! failed build may have made wrong are checked against the file: after any
//! build, `sha256sum -c SHA256SUMS` passes.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::output::manifest::OutputFile;
use crate::util::atomic;
use crate::util::digest::sha256_file;

/// Replace or add the lines `<sha256>  <name>` of `outputs` in `dir`'s
/// SHA256SUMS, kept sorted by name. Every other line whose file is gone (or
/// not a regular file) is dropped, and so is one `recheck` names whose file
/// no longer has that sha256 (a file a failed build replaced). Without any
/// line left, the file is removed.
pub fn update(dir: &Path, outputs: &[OutputFile], recheck: &dyn Fn(&str) -> bool) -> Result<()> {
    let path = dir.join(crate::output::format::SUMS);
    let _lock = atomic::lock_dir(dir)?;
    let mut lines: BTreeMap<String, String> = BTreeMap::new();
    let existed = match std::fs::read_to_string(&path) {
        Ok(text) => {
            for l in text.lines() {
                if let Some((h, n)) = l.split_once("  ") {
                    lines.insert(n.to_string(), h.to_string());
                }
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io("cannot read", &path, e)),
    };
    if !existed && outputs.is_empty() {
        return Ok(());
    }
    lines.retain(|name, sha256| {
        let file = dir.join(name);
        let is_file = std::fs::symlink_metadata(&file).is_ok_and(|m| m.is_file());
        is_file && (!recheck(name) || sha256_file(&file).is_ok_and(|(h, _)| h == *sha256))
    });
    for o in outputs {
        lines.insert(o.name.clone(), o.sha256.clone());
    }
    if lines.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", &path, e))
            }
            _ => Ok(()),
        };
    }
    let text: String = lines.iter().map(|(n, h)| format!("{h}  {n}\n")).collect();
    atomic::write(&path, text.as_bytes(), 0o644).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out(name: &str, bytes: &[u8]) -> OutputFile {
        OutputFile {
            name: name.into(),
            sha256: crate::util::digest::sha256_hex(bytes),
            size: bytes.len() as u64,
        }
    }

    #[test]
    fn gone_and_rechecked_lines_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for (n, b) in [("a", b"a"), ("b", b"b"), ("c", b"c")] {
            std::fs::write(d.join(n), b).unwrap();
        }
        update(
            d,
            &[out("a", b"a"), out("b", b"b"), out("c", b"c")],
            &|_| false,
        )
        .unwrap();
        // b is gone; c changed (a failed build replaced it); a is rewritten.
        std::fs::remove_file(d.join("b")).unwrap();
        std::fs::write(d.join("c"), b"C").unwrap();
        std::fs::write(d.join("a"), b"A").unwrap();
        update(d, &[out("a", b"A")], &|n| n == "c").unwrap();
        let text = std::fs::read_to_string(d.join("SHA256SUMS")).unwrap();
        assert_eq!(
            text,
            format!("{}  a\n", crate::util::digest::sha256_hex(b"A"))
        );
        // Nothing left: no file.
        std::fs::remove_file(d.join("a")).unwrap();
        update(d, &[], &|_| false).unwrap();
        assert!(!d.join("SHA256SUMS").exists());
    }
}
