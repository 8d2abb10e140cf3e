//! The core never prints: it tells a `Progress` what happens, and the CLI decides
//! how (bars on a terminal, one line per event otherwise, nothing with --quiet).

/// Something worth telling the user while work goes on.
#[derive(Debug, Clone)]
pub enum Event<'a> {
    /// A step of the build starts (rendering, writing an archive, ...).
    Step { what: &'a str },
    /// A download starts; `total` when the server said how large it is.
    DownloadStart {
        url: &'a str,
        name: &'a str,
        total: Option<u64>,
        resumed_from: u64,
    },
    /// Bytes of a download arrived (cumulative count for this download).
    DownloadBytes { name: &'a str, done: u64 },
    /// A download retries after a failure.
    DownloadRetry {
        name: &'a str,
        attempt: u32,
        reason: &'a str,
        wait_ms: u64,
    },
    /// A download ended, verified.
    DownloadDone { name: &'a str, bytes: u64 },
    /// A batch of downloads (`imgbuild fetch`, the fetch before a build) ended.
    DownloadsFinished { downloaded: usize },
    /// An artifact entered the cache, verified.
    Cached { name: &'a str, digest: &'a str },
    /// An output file was written and renamed into place.
    Wrote { path: &'a std::path::Path },
    /// Something the user should know but that does not stop the build.
    Notice { message: &'a str },
    /// Something that is probably wrong but does not stop the build.
    Warning { message: &'a str },
}

pub trait Progress: Sync {
    fn event(&self, event: Event<'_>);
}

/// Drops every event: for tests and library users who do not care.
pub struct Silent;

impl Progress for Silent {
    fn event(&self, _: Event<'_>) {}
}
