//! The cache's locks: the cache-wide flock that keeps `cache verify` and
//! `cache gc` from seeing half an ingest, and the per-artifact lock that makes
//! two processes fetching the same artifact download it once.

use std::fs::{self, File};
use std::path::PathBuf;

use super::cache::Cache;
use crate::error::{Error, IoContext, Result};
use crate::input::recipe::Algorithm;

impl Cache {
    /// Take the cache-wide lock (a lock on the cache folder itself, so no file
    /// is left behind): shared while files enter the cache, exclusive for
    /// `verify` and `gc`. Released when the returned handle is dropped.
    pub fn lock(&self, exclusive: bool) -> Result<File> {
        let root = self.root();
        let file = File::open(root).with_path("cannot open", root)?;
        if exclusive {
            file.lock()
        } else {
            file.lock_shared()
        }
        .with_path("cannot lock", root)?;
        Ok(file)
    }

    /// Take the per-artifact download lock, waiting for another process that
    /// holds it (it is downloading the same artifact). `waiting` is called once
    /// if we have to wait. The lock file is removed when the guard drops.
    pub fn inflight_lock(
        &self,
        algorithm: Algorithm,
        hex: &str,
        waiting: impl FnOnce(),
    ) -> Result<InflightLock> {
        use std::os::unix::fs::MetadataExt;
        let path = self
            .root()
            .join("inflight")
            .join(format!("{}-{hex}", algorithm.name()));
        let mut waiting = Some(waiting);
        loop {
            let file = fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
                .with_path("cannot open", &path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(fs::TryLockError::WouldBlock) => {
                    if let Some(w) = waiting.take() {
                        w();
                    }
                    file.lock().with_path("cannot lock", &path)?;
                }
                Err(fs::TryLockError::Error(e)) => {
                    return Err(Error::io("cannot lock", &path, e));
                }
            }
            // The holder before us removes the file before unlocking: if the
            // name no longer leads to the file we locked, lock the new one.
            let ours = file.metadata().with_path("cannot stat", &path)?.ino();
            if fs::metadata(&path).is_ok_and(|m| m.ino() == ours) {
                return Ok(InflightLock { path, _file: file });
            }
        }
    }
}

/// Held while one process downloads one artifact; see [`Cache::inflight_lock`].
pub struct InflightLock {
    path: PathBuf,
    _file: File,
}

impl Drop for InflightLock {
    fn drop(&mut self) {
        // Removed while still locked, so a waiter notices and starts afresh.
        let _ = fs::remove_file(&self.path);
    }
}
