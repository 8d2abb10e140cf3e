//! What this user has verified in a cache, kept outside it.
//!
//! A cache may be shared (`IMGBUILD_CACHE` on a team's disk), and then anyone
//! who can write it can rewrite an index so that it names another blob, and
//! the blob's own digest still checks out. What binds an index to the pinned
//! artifact is re-deriving its members from the kept original (which must
//! match the recipe's pin), and that costs a pass over a large tarball. So the
//! result is recorded here, in the user's own state folder
//! (`$XDG_STATE_HOME/imgbuild/verified/`, else `~/.local/state/imgbuild/verified/`),
//! which a writer of the cache cannot change: an index whose bytes are the ones
//! this user verified is trusted without the pass; any other index (changed,
//! or never verified here) is verified again first. Derived segments are
//! recorded the same way, and so are the stamps of the blobs this user
//! verified (a build reads such a blob without hashing it while it stays so). Without a state folder nothing is recorded, and
//! everything is verified every time.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use crate::util::atomic;
use crate::util::digest::sha256_hex;

#[derive(Debug, Clone)]
pub struct Ledger {
    /// This cache's folder in the state folder, if there is a state folder.
    dir: Option<PathBuf>,
}

impl Ledger {
    /// The ledger of the cache at `root`.
    pub fn for_cache(root: &Path) -> Ledger {
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|x| !x.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|x| !x.is_empty())
                    .map(|h| PathBuf::from(h).join(".local/state"))
            });
        let abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let id = sha256_hex(abs.as_os_str().as_bytes());
        Ledger {
            dir: state.map(|s| s.join("imgbuild/verified").join(&id[..32])),
        }
    }

    /// What was recorded under `key`.
    pub fn get(&self, key: &str) -> Option<String> {
        let path = self.dir.as_ref()?.join(key);
        let text = fs::read_to_string(path).ok()?;
        Some(text.trim().to_string())
    }

    /// Record `value` under `key`. Best effort: without the record, the next
    /// use verifies again.
    pub fn put(&self, key: &str, value: &str) {
        let Some(dir) = &self.dir else { return };
        if fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .is_ok()
        {
            let _ = atomic::write(&dir.join(key), value.as_bytes(), 0o600);
        }
    }

    /// Forget `key`.
    pub fn forget(&self, key: &str) {
        if let Some(dir) = &self.dir {
            let _ = fs::remove_file(dir.join(key));
        }
    }
}
