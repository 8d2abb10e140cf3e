//! Downloads: bring the artifacts a recipe pins into the cache, verified.
//!
//! # One pass
//! The HTTP body is never written to disk and read again: it is piped straight
//! into [`Cache::ingest`], which hashes it, keeps the original in a temp file
//! inside the cache, and extracts tarball members, all in the same read. The
//! temp files are renamed into place only once the digest matches the pin.
//! Reconnecting, resuming and retrying happen inside that reader (`http::Stream`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use reqwest::blocking::Client;

use super::http::{self, REPORT_EVERY, Stream};
use crate::error::{Error, IoContext, Kind, Result};
use crate::input::Session;
use crate::input::inventory::Inventory;
use crate::input::recipe::{Artifact, Recipe};

use crate::progress::{Event, Progress};
use crate::store::cache::{ArtifactIndex, Cache, Candidate};

pub use crate::input::recipe::DEFAULT_BASE;

/// Largest checksum file read by `lock`.
const TEXT_LIMIT: u64 = 64 * 1024;

/// What to tell a user whose download failed for good.
pub const OFFLINE_HINT: &str = "Without network access: run `imgbuild airgap export` on a connected machine and \
     `imgbuild airgap import BUNDLE` here, or `imgbuild cache import FILE` for files downloaded elsewhere; \
     use `--mirror URL` for an internal mirror (https://, file://; its layout is in docs/fetch.md)";

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Download base replacing https://dl.k8s.io (https://, http:// with
    /// `allow_http`, file:// or a folder).
    pub mirror: Option<String>,
    /// Downloads at once.
    pub jobs: usize,
    /// Extra CA certificates (PEM) to trust, e.g. an internal mirror's.
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http:// for downloads (checked against their pins either
    /// way); never for reading pins (`lock`, see [`Fetcher::for_pins`]).
    pub allow_http: bool,
    pub connect_timeout: Duration,
    /// Longest wait for response headers or for the next bytes of a body.
    pub read_timeout: Duration,
    /// Attempts per file without progress (1 = no retry).
    pub tries: u32,
    /// Longest total wait between attempts without progress.
    pub retry_budget: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            mirror: None,
            jobs: 4,
            ca_cert: None,
            allow_http: false,
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            tries: 5,
            retry_budget: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
enum Base {
    /// http(s) URL without a trailing slash, as given (credentials included),
    /// and as shown (credentials replaced by `***`).
    Http {
        url: String,
        shown: String,
    },
    File(PathBuf),
}

/// One artifact of a recipe, for one arch.
#[derive(Debug, Clone)]
pub struct Job<'a> {
    pub recipe: &'a Recipe,
    pub artifact: &'a Artifact,
    pub arch: String,
}

impl Job<'_> {
    /// The name shown to the user (the file name, with the arch when it lacks one).
    pub fn name(&self) -> String {
        if self.artifact.file.contains("{arch}") {
            self.artifact.file_for(&self.arch)
        } else {
            format!("{} ({})", self.artifact.file, self.arch)
        }
    }
}

/// Every artifact `recipe` pins for `arch` that a node of `inv` needs (an
/// external etcd's is not).
pub fn jobs_for<'a>(recipe: &'a Recipe, inv: &Inventory, arch: &str) -> Vec<Job<'a>> {
    recipe
        .needed(inv)
        .into_iter()
        .map(|artifact| Job {
            recipe,
            artifact,
            arch: arch.to_string(),
        })
        .collect()
}

#[derive(Debug, Default)]
pub struct FetchSummary {
    /// Artifacts downloaded by this call.
    pub downloaded: Vec<ArtifactIndex>,
    /// Artifacts that were in the cache already.
    pub present: Vec<ArtifactIndex>,
}

/// Downloads into one cache, from each artifact's publisher or from one mirror.
pub struct Fetcher<'a> {
    cache: &'a Cache,
    /// `--mirror`: replaces every artifact's base (see [`Fetcher::place`]).
    mirror: Option<Base>,
    opts: FetchOptions,
}

/// A file under a base: where it is downloaded from.
#[derive(Debug, Clone)]
pub struct Place {
    base: Base,
    path: String,
}

impl Place {
    /// The URL (or path) as shown and recorded (credentials in the base
    /// replaced by `***`).
    pub fn url(&self) -> String {
        match &self.base {
            Base::Http { shown, .. } => format!("{shown}/{}", self.path.trim_start_matches('/')),
            Base::File(dir) => dir
                .join(self.path.trim_start_matches('/'))
                .display()
                .to_string(),
        }
    }

    /// The URL requested for an http(s) base (credentials kept).
    fn request_url(&self) -> String {
        match &self.base {
            Base::Http { url, .. } => format!("{url}/{}", self.path.trim_start_matches('/')),
            Base::File(_) => self.url(),
        }
    }

    /// A path under a folder base, refusing one that leaves it.
    fn file_path(&self) -> Result<Option<PathBuf>> {
        let Base::File(dir) = &self.base else {
            return Ok(None);
        };
        let rel = self.path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return Err(Error::input(format!(
                "url_path {:?} leaves the mirror",
                crate::error::clip(&self.path)
            )));
        }
        Ok(Some(dir.join(rel)))
    }

    /// A sibling file: `name` in the same folder.
    pub fn sibling(&self, name: &str) -> Place {
        let dir = self.path.rsplit_once('/').map_or("", |(d, _)| d);
        Place {
            base: self.base.clone(),
            path: if dir.is_empty() {
                name.to_string()
            } else {
                format!("{dir}/{name}")
            },
        }
    }
}

impl<'a> Fetcher<'a> {
    /// Check the options (mirror URL scheme, CA file); opens no connection.
    pub fn new(cache: &'a Cache, opts: &FetchOptions) -> Result<Fetcher<'a>> {
        // `--mirror https://dl.k8s.io` is no mirror: each publisher's own base.
        let mirror = match opts.mirror.as_deref() {
            Some(raw) if raw.trim_end_matches('/') == DEFAULT_BASE => None,
            Some(raw) => Some(parse_base(raw, opts.allow_http)?),
            None => None,
        };
        if let Some(ca) = &opts.ca_cert
            && !ca.is_file()
        {
            return Err(Error::input(format!(
                "--ca-cert {}: no such file",
                ca.display()
            )));
        }
        let mut opts = opts.clone();
        opts.jobs = opts.jobs.max(1);
        opts.tries = opts.tries.max(1);
        Ok(Fetcher {
            cache,
            mirror,
            opts,
        })
    }

    /// This fetcher for reading pins (`lock`): only over TLS or from a folder.
    /// A checksum file read over plain http could be anyone's, and so would be
    /// the pins written from it; redirects to http are refused too, whatever
    /// `--allow-http` says.
    pub fn for_pins(&self) -> Result<Fetcher<'a>> {
        if let Some(Base::Http { url, shown }) = &self.mirror
            && url.starts_with("http://")
        {
            return Err(Error::input(format!(
                "--mirror {shown}: `lock` reads pins, and pins read over plain http:// could be anyone's \
                 (--allow-http is for downloads, which are checked against pins). Use https:// \
                 (--ca-cert FILE for an internal CA) or file:///DIR"
            )));
        }
        let mut opts = self.opts.clone();
        opts.allow_http = false;
        Ok(Fetcher {
            cache: self.cache,
            mirror: self.mirror.clone(),
            opts,
        })
    }

    /// Where `under_base`, a path under `artifact`'s base, is fetched from:
    /// the mirror (at [`Artifact::mirror_path`]), else the artifact's publisher.
    pub fn place(&self, artifact: &Artifact, under_base: &str) -> Result<Place> {
        Ok(match &self.mirror {
            Some(m) => Place {
                base: m.clone(),
                path: artifact.mirror_path(under_base),
            },
            None => Place {
                base: parse_base(artifact.base(), false)?,
                path: under_base.to_string(),
            },
        })
    }

    /// Where `url_path` under dl.k8s.io (or the mirror) is fetched from.
    pub fn default_place(&self, url_path: &str) -> Place {
        Place {
            base: self.mirror.clone().unwrap_or(Base::Http {
                url: DEFAULT_BASE.into(),
                shown: DEFAULT_BASE.into(),
            }),
            path: url_path.to_string(),
        }
    }

    /// Bring every job's artifact into the cache (those missing), `jobs` at once.
    /// Opens no connection when nothing is missing.
    pub fn fetch(&self, jobs: &[Job<'_>], progress: &dyn Progress) -> Result<FetchSummary> {
        let mut summary = FetchSummary::default();
        let mut missing = VecDeque::new();
        for job in jobs {
            let hex = job.artifact.digest_for(&job.recipe.name, &job.arch)?;
            match self.cache.lookup(job.artifact.algorithm, hex)? {
                Some(index) => summary.present.push(index),
                None => missing.push_back(job),
            }
        }
        if missing.is_empty() {
            return Ok(summary);
        }
        let workers = self.opts.jobs.min(missing.len());
        let queue = Mutex::new(missing);
        let results: Mutex<Vec<(usize, Result<Fetched>)>> = Mutex::new(Vec::new());
        let order = |job: &Job<'_>| {
            jobs.iter()
                .position(|j| std::ptr::eq(j, job))
                .unwrap_or(usize::MAX)
        };
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let mut client = None;
                    loop {
                        let Some(job) = queue.lock().unwrap().pop_front() else {
                            break;
                        };
                        let result = self.fetch_one(&mut client, job, progress);
                        results.lock().unwrap().push((order(job), result));
                    }
                });
            }
        });
        let mut results = results.into_inner().unwrap();
        progress.event(Event::DownloadsFinished {
            downloaded: results
                .iter()
                .filter(|(_, r)| matches!(r, Ok(Fetched::Downloaded(_))))
                .count(),
        });
        results.sort_by_key(|(i, _)| *i);
        let mut errors = Vec::new();
        for (_, r) in results {
            match r {
                Ok(Fetched::Downloaded(i)) => summary.downloaded.push(i),
                Ok(Fetched::Present(i)) => summary.present.push(i),
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            return Ok(summary);
        }
        let first = errors.remove(0);
        if errors.is_empty() {
            return Err(first);
        }
        let kind = first.kind;
        // The offline advice once, at the end, not after every failed file.
        let hint = format!("\n{OFFLINE_HINT}");
        let mut offline = false;
        let mut without_hint = |m: &str| match m.strip_suffix(&hint) {
            Some(rest) => {
                offline = true;
                rest.to_string()
            }
            None => m.to_string(),
        };
        let mut msg = without_hint(first.message());
        for e in errors {
            msg.push_str(&format!("\nalso: {}", without_hint(e.message())));
        }
        if offline {
            msg.push_str(&hint);
        }
        Err(Error::new(kind, msg))
    }

    fn fetch_one(
        &self,
        client: &mut Option<Client>,
        job: &Job<'_>,
        progress: &dyn Progress,
    ) -> Result<Fetched> {
        let artifact = job.artifact;
        let alg = artifact.algorithm;
        let hex = artifact.digest_for(&job.recipe.name, &job.arch)?;
        let name = job.name();
        let _inflight = self.cache.inflight_lock(alg, hex, || {
            progress.event(Event::Notice {
                message: &format!("waiting for another imgbuild process that downloads {name}"),
            })
        })?;
        if let Some(index) = self.cache.lookup(alg, hex)? {
            return Ok(Fetched::Present(index));
        }
        let candidates = [Candidate {
            recipe: job.recipe,
            artifact,
            arch: &job.arch,
        }];
        let place = self.place(artifact, &artifact.url_path_for(&job.arch))?;
        let index = match place.file_path()? {
            Some(path) => {
                let file = File::open(&path).map_err(|e| {
                    let kind = if e.kind() == io::ErrorKind::NotFound {
                        Kind::Network
                    } else {
                        Kind::Io
                    };
                    Error::new(
                        kind,
                        format!("cannot read {} from the mirror: {e}", path.display()),
                    )
                })?;
                let total = file.metadata().ok().map(|m| m.len());
                let url = format!("file://{}", path.display());
                progress.event(Event::DownloadStart {
                    url: &url,
                    name: &name,
                    total,
                    resumed_from: 0,
                });
                let reader = Counting {
                    inner: io::BufReader::with_capacity(1 << 20, file),
                    name: &name,
                    progress,
                    done: 0,
                    reported: 0,
                };
                self.cache.ingest(reader, &url, &candidates)?
            }
            None => {
                if client.is_none() {
                    *client = Some(http::client(&self.opts)?);
                }
                let url = place.request_url();
                let mut stream = Stream::new(
                    client.as_ref().unwrap(),
                    &url,
                    &name,
                    &self.opts,
                    progress,
                    OFFLINE_HINT,
                )
                .limit(self.cache.limits());
                match self.cache.ingest(&mut stream, &place.url(), &candidates) {
                    Ok(index) => index,
                    // The reader's own account of a failed transfer beats the
                    // I/O error ingest saw.
                    Err(e) => return Err(stream.failure.take().unwrap_or(e)),
                }
            }
        };
        progress.event(Event::DownloadDone {
            name: &name,
            bytes: index.size,
        });
        Ok(Fetched::Downloaded(index))
    }

    /// A small text file (a checksum file), or None if the server says it
    /// does not exist (404, 410). Retries like any download.
    pub fn get_text(&self, place: &Place, progress: &dyn Progress) -> Result<Option<String>> {
        let bytes = match place.file_path()? {
            Some(path) => match File::open(&path) {
                Ok(f) => {
                    let mut v = Vec::new();
                    f.take(TEXT_LIMIT + 1)
                        .read_to_end(&mut v)
                        .with_path("cannot read", &path)?;
                    v
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io("cannot read", &path, e)),
            },
            None => {
                let client = http::client(&self.opts)?;
                let url = place.request_url();
                let name = place
                    .path
                    .rsplit('/')
                    .next()
                    .unwrap_or(&place.path)
                    .to_string();
                let retries_only = RetriesOnly(progress);
                let mut stream = Stream::new(
                    &client,
                    &url,
                    &name,
                    &self.opts,
                    &retries_only,
                    "check the version and --mirror",
                );
                let mut v = Vec::new();
                match (&mut stream).take(TEXT_LIMIT + 1).read_to_end(&mut v) {
                    Ok(_) => v,
                    Err(e) => {
                        if matches!(stream.status.map(|s| s.as_u16()), Some(404 | 410)) {
                            return Ok(None);
                        }
                        return Err(stream
                            .failure
                            .take()
                            .unwrap_or_else(|| Error::network(format!("{}: {e}", place.url()))));
                    }
                }
            }
        };
        if bytes.len() as u64 > TEXT_LIMIT {
            return Err(Error::integrity(format!(
                "{}: larger than the {} KiB limit for a checksum file (one holds a digest and a \
                 file name per release file): refused",
                place.url(),
                TEXT_LIMIT >> 10
            )));
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::integrity(format!("{}: not text", place.url())))
    }

    /// The mirror as shown, or that each publisher is used.
    pub fn base_description(&self) -> String {
        match &self.mirror {
            Some(Base::Http { shown, .. }) => shown.clone(),
            Some(Base::File(d)) => format!("file://{}", d.display()),
            None => format!("{DEFAULT_BASE} (and each artifact's own publisher)"),
        }
    }
}

enum Fetched {
    Downloaded(ArtifactIndex),
    Present(ArtifactIndex),
}

/// `imgbuild fetch` / the fetch before `imgbuild controller`: every artifact the
/// inventory's recipe pins for its arch.
pub fn fetch_inventory(
    session: &Session,
    opts: &FetchOptions,
    progress: &dyn Progress,
) -> Result<FetchSummary> {
    let inventory = Inventory::load(&session.inventory)?;
    let recipe = Recipe::load(&session.assets, &inventory.cluster.kubernetes_version)?;
    let cache = Cache::open(&session.cache_dir)?;
    let fetcher = Fetcher::new(&cache, opts)?;
    fetcher.fetch(
        &jobs_for(&recipe, &inventory, &inventory.cluster.arch),
        progress,
    )
}

/// `url` with its user name and password (if any) replaced by `***`: what
/// is shown in messages and recorded in locks, manifests and bundles. A query
/// (which may hold a token too) is replaced the same way.
pub fn redact(url: &str) -> String {
    let (head, query) = match url.split_once(['?', '#']) {
        Some((head, _)) => (head, "?***"),
        None => (url, ""),
    };
    let Some((scheme, rest)) = head.split_once("://") else {
        return format!("{head}{query}");
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}{query}", &rest[at + 1..]),
        None => format!("{head}{query}"),
    }
}

fn parse_base(raw: &str, allow_http: bool) -> Result<Base> {
    let trimmed = raw.trim_end_matches('/');
    let shown = redact(trimmed);
    // As messages echo it: cut, controls escaped.
    let said = crate::error::clip(&shown);
    if let Some(rest) = raw.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(Error::input(format!(
                "--mirror {said}: a file:// URL needs an absolute path (file:///srv/mirror)"
            )));
        }
        return Ok(Base::File(PathBuf::from(rest)));
    }
    if let Some((scheme, _)) = raw.split_once("://") {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| Error::input(format!("--mirror {said}: not a URL ({e})")))?;
        if url.query().is_some() || url.fragment().is_some() {
            return Err(Error::input(format!(
                "--mirror {said}: a download base cannot carry a query or a fragment \
                 (file paths are appended to it)"
            )));
        }
        let base = Base::Http {
            url: trimmed.to_string(),
            shown: shown.clone(),
        };
        return match scheme {
            "https" => Ok(base),
            "http" if allow_http => Ok(base),
            "http" => Err(Error::input(format!(
                "--mirror {said}: plain http:// is refused (anyone on the path could change or \
                 watch what you download); use https://, or pass --allow-http for a trusted \
                 internal network (downloads are checked against their pins either way)"
            ))),
            other => Err(Error::input(format!(
                "--mirror {said}: unsupported scheme {}:// (use https://, http:// with --allow-http, or file://)",
                crate::error::clip(other)
            ))),
        };
    }
    let path = Path::new(raw);
    if path.is_dir() {
        let abs = std::path::absolute(path).with_path("cannot resolve", path)?;
        return Ok(Base::File(abs));
    }
    Err(Error::input(format!(
        "--mirror {said}: neither a URL (https://, file://) nor an existing folder"
    )))
}

/// Counts bytes for progress events.
struct Counting<'p, R> {
    inner: R,
    name: &'p str,
    progress: &'p dyn Progress,
    done: u64,
    reported: u64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.done += n as u64;
        if n == 0 || self.done - self.reported >= REPORT_EVERY {
            self.reported = self.done;
            self.progress.event(Event::DownloadBytes {
                name: self.name,
                done: self.done,
            });
        }
        Ok(n)
    }
}

/// Forwards only retries (for small side files such as checksums).
struct RetriesOnly<'p>(&'p dyn Progress);

impl Progress for RetriesOnly<'_> {
    fn event(&self, event: Event<'_>) {
        if let Event::DownloadRetry { .. } = event {
            self.0.event(event)
        }
    }
}
