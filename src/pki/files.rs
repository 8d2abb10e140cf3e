//! Reading a file of the PKI folder, whoever wrote it: what `check` and `init`
//! accept before they look inside.
//!
//! - At most [`MAX_BYTES`]: a certificate is about 1 KiB, a kubeconfig with
//!   RSA 4096 keys under 16 KiB; anything near 1 MiB is not a PKI file.
//! - A regular file, or a symlink to one *inside* the folder (`ca.pem ->
//!   ca-2025.pem`). A symlink that leads out of the folder is refused: the
//!   build would copy whatever it points at into every image, and whoever can
//!   write there could swap a key without touching the folder.
//! - UTF-8 text (every file imgbuild reads here is PEM or YAML).
//!
//! Messages name the file and the problem, never the content.

use std::io::Read;
use std::path::Path;

/// The largest PKI file read: 1 MiB.
pub(crate) const MAX_BYTES: u64 = 1 << 20;

/// Why a PKI file could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReadError {
    Missing,
    /// A symlink out of the folder; the text says why and what to run.
    Outside(String),
    /// Too big, not a regular file, not UTF-8: the text says which.
    Refused(String),
    /// The operating system's error (permissions, I/O).
    Io(String),
}

/// The text of `dir/name`, by the rules of the module comment.
pub(crate) fn read_text(dir: &Path, name: &str) -> Result<String, ReadError> {
    let path = dir.join(name);
    let link = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ReadError::Missing),
        Err(e) => return Err(ReadError::Io(e.to_string())),
    };
    if link.file_type().is_symlink() {
        let target = match path.canonicalize() {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::Refused(
                    "is a symlink to nothing (dangling)".into(),
                ));
            }
            Err(e) => return Err(ReadError::Io(e.to_string())),
        };
        let inside = dir.canonicalize().is_ok_and(|d| target.starts_with(d));
        if !inside {
            return Err(ReadError::Outside(outside_message(&path, &target)));
        }
    }
    let meta = std::fs::metadata(&path).map_err(|e| ReadError::Io(e.to_string()))?;
    if !meta.is_file() {
        return Err(ReadError::Refused(
            "is not a regular file (a folder, device or pipe)".into(),
        ));
    }
    if meta.len() > MAX_BYTES {
        return Err(ReadError::Refused(too_big(meta.len())));
    }
    let file = std::fs::File::open(&path).map_err(|e| ReadError::Io(e.to_string()))?;
    let mut bytes = Vec::new();
    // Also bounded while reading: the file may grow after the stat.
    file.take(MAX_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Io(e.to_string()))?;
    if bytes.len() as u64 > MAX_BYTES {
        return Err(ReadError::Refused(too_big(bytes.len() as u64)));
    }
    String::from_utf8(bytes).map_err(|_| ReadError::Refused("is not UTF-8 text".into()))
}

/// The file's permission bits, following a symlink inside the folder.
pub(crate) fn mode(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o777)
}

fn too_big(len: u64) -> String {
    format!("is {len} bytes; a PKI file is at most {MAX_BYTES} bytes (1 MiB)")
}

fn outside_message(path: &Path, target: &Path) -> String {
    let p = path.display();
    let t = super::report::shown(&target.display().to_string());
    format!(
        "is a symlink to {t}, outside the PKI folder: the build would copy it into every image; \
         put the file itself in the folder: cp --remove-destination {t} {p} && chmod 600 {p}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_inside_pass_outside_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("ca-2025.pem"), "x").unwrap();
        symlink("ca-2025.pem", dir.join("ca.pem")).unwrap();
        assert_eq!(read_text(&dir, "ca.pem").unwrap(), "x");
        std::fs::write(tmp.path().join("elsewhere"), "y").unwrap();
        symlink("../elsewhere", dir.join("ca-key.pem")).unwrap();
        match read_text(&dir, "ca-key.pem") {
            Err(ReadError::Outside(m)) => assert!(m.contains("outside the PKI folder"), "{m}"),
            other => panic!("{other:?}"),
        }
        symlink("nowhere", dir.join("a.pem")).unwrap();
        assert!(matches!(
            read_text(&dir, "a.pem"),
            Err(ReadError::Refused(_))
        ));
        assert_eq!(read_text(&dir, "b.pem"), Err(ReadError::Missing));
    }

    #[test]
    fn size_type_and_encoding_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        std::fs::write(dir.join("big"), vec![b'a'; MAX_BYTES as usize + 1]).unwrap();
        let Err(ReadError::Refused(m)) = read_text(dir, "big") else {
            panic!()
        };
        assert!(m.contains("at most 1048576 bytes"), "{m}");
        std::fs::create_dir(dir.join("sub")).unwrap();
        assert!(matches!(read_text(dir, "sub"), Err(ReadError::Refused(_))));
        std::fs::write(dir.join("latin1"), b"caf\xe9").unwrap();
        assert_eq!(
            read_text(dir, "latin1"),
            Err(ReadError::Refused("is not UTF-8 text".into()))
        );
    }
}
