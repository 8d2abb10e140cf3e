//! Downloads: bring the artifacts a recipe pins into the cache, verified.
//!
//! # One pass
//! The HTTP body is never written to disk and read again: it is piped straight
//! into [`Cache::ingest`], which hashes it, keeps the original in a temp file
//! inside the cache, and extracts tarball members, all in the same read. The
//! temp files are renamed into place only once the digest matches the pin.
//!
//! # Resume without a second pass
//! [`Stream`] is a `Read` over the HTTP response that hides reconnects from
//! `ingest`: when a read fails (connection reset, read timeout, body cut short)
//! it reconnects with `Range: bytes=<done>-` (plus `If-Range` when the server
//! gave a validator) and, on `206` with a matching `Content-Range`, carries on
//! feeding the same consumer. If the server answers `200` instead (no range
//! support, or the file changed), the first `<done>` bytes of the new body are
//! skipped: the consumer still sees one continuous stream, and if the bytes
//! differ from the first attempt's, the digest no longer matches and nothing is
//! stored. So resuming never weakens verification.
//!
//! # Failure policy
//! Connect errors, read errors and timeouts, 408, 429 and 5xx are retried with
//! exponential backoff (0.5 s, 1 s, 2 s, ... capped at 8 s, each taken between
//! half and all of it at random; `Retry-After` in seconds wins), at most `tries` attempts and `retry_budget` of waiting in a
//! row without progress, so a machine without network fails in seconds, not
//! minutes. A DNS failure and any other 4xx are final at once. There is a
//! connect timeout and a per-read timeout, but no total timeout: a 300 MB
//! download may take as long as it needs while bytes keep arriving.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header;

use crate::error::{Error, IoContext, Kind, Result};
use crate::input::Session;
use crate::input::inventory::Inventory;
use crate::input::recipe::{Artifact, Recipe};
use crate::progress::{Event, Progress};
use crate::store::cache::{ArtifactIndex, Cache, Candidate};

/// Where release files are published (the seed's storage.googleapis.com host is legacy).
pub const DEFAULT_BASE: &str = "https://dl.k8s.io";

/// What to tell a user whose download failed for good.
pub const OFFLINE_HINT: &str = "Without network access: run `imgbuild airgap export` on a connected machine and \
     `imgbuild airgap import BUNDLE` here, or `imgbuild cache import FILE` for files downloaded elsewhere; \
     use `--mirror URL` for an internal mirror laid out like https://dl.k8s.io (https://, file://)";

#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Download base replacing https://dl.k8s.io (https://, http:// with
    /// `allow_http`, file:// or a folder).
    pub mirror: Option<String>,
    /// Downloads at once.
    pub jobs: usize,
    /// Extra CA certificates (PEM) to trust, e.g. an internal mirror's.
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http:// (digests are checked either way).
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
    /// http(s) URL without a trailing slash.
    Http(String),
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

/// Every artifact `recipe` pins for `arch`.
pub fn jobs_for<'a>(recipe: &'a Recipe, arch: &str) -> Vec<Job<'a>> {
    recipe
        .artifacts
        .iter()
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

/// Downloads from one base into one cache.
pub struct Fetcher<'a> {
    cache: &'a Cache,
    base: Base,
    opts: FetchOptions,
}

impl<'a> Fetcher<'a> {
    /// Check the options (mirror URL scheme, CA file); opens no connection.
    pub fn new(cache: &'a Cache, opts: &FetchOptions) -> Result<Fetcher<'a>> {
        let raw = opts.mirror.as_deref().unwrap_or(DEFAULT_BASE);
        let base = parse_base(raw, opts.allow_http)?;
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
        Ok(Fetcher { cache, base, opts })
    }

    /// The URL (or path) a file under the base has.
    pub fn url(&self, url_path: &str) -> String {
        match &self.base {
            Base::Http(b) => format!("{b}/{}", url_path.trim_start_matches('/')),
            Base::File(dir) => dir
                .join(url_path.trim_start_matches('/'))
                .display()
                .to_string(),
        }
    }

    fn file_path(dir: &Path, url_path: &str) -> Result<PathBuf> {
        let rel = url_path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return Err(Error::input(format!(
                "url_path {url_path:?} leaves the mirror"
            )));
        }
        Ok(dir.join(rel))
    }

    /// An HTTP client with our timeouts, redirect policy, proxies from the
    /// environment (HTTPS_PROXY, NO_PROXY, ...) and the extra CA.
    fn client(&self) -> Result<Client> {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            // Fails only if a provider is installed already, which is fine.
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let allow_http = self.opts.allow_http;
        let policy = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 10 {
                return attempt.error("too many redirects (10)");
            }
            match attempt.url().scheme() {
                "https" => attempt.follow(),
                "http" if allow_http => attempt.follow(),
                "http" => {
                    let to = attempt.url().to_string();
                    attempt.error(format!(
                        "redirect to plain http refused ({to}); pass --allow-http to allow it"
                    ))
                }
                other => {
                    let other = other.to_string();
                    attempt.error(format!("redirect to a {other}: URL refused"))
                }
            }
        });
        let mut builder = Client::builder()
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.opts.connect_timeout)
            // In the blocking client this bounds the wait for headers and each
            // read of the body, not the whole transfer.
            .timeout(self.opts.read_timeout)
            .redirect(policy);
        if let Some(ca) = &self.opts.ca_cert {
            let pem = std::fs::read(ca).with_path("cannot read CA certificate", ca)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| Error::input(format!("--ca-cert {}: {}", ca.display(), chain(&e))))?;
            if certs.is_empty() {
                return Err(Error::input(format!(
                    "--ca-cert {}: no PEM certificate in it",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_merge(certs);
        }
        builder
            .build()
            .map_err(|e| Error::input(format!("cannot set up the HTTP client: {}", chain(&e))))
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
        let mut msg = first.message().to_string();
        for e in errors {
            msg.push_str(&format!("\nalso: {e}"));
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
        let url_path = artifact.url_path_for(&job.arch);
        let index = match &self.base {
            Base::File(dir) => {
                let path = Self::file_path(dir, &url_path)?;
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
            Base::Http(_) => {
                if client.is_none() {
                    *client = Some(self.client()?);
                }
                let url = self.url(&url_path);
                let mut stream = Stream::new(
                    client.as_ref().unwrap(),
                    &url,
                    &name,
                    &self.opts,
                    progress,
                    OFFLINE_HINT,
                );
                match self.cache.ingest(&mut stream, &url, &candidates) {
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

    /// A small text file under the base (a checksum file), or None if the
    /// server says it does not exist (404, 410). Retries like any download.
    pub fn get_text(&self, url_path: &str, progress: &dyn Progress) -> Result<Option<String>> {
        const LIMIT: u64 = 64 * 1024;
        let bytes = match &self.base {
            Base::File(dir) => {
                let path = Self::file_path(dir, url_path)?;
                match File::open(&path) {
                    Ok(f) => {
                        let mut v = Vec::new();
                        f.take(LIMIT)
                            .read_to_end(&mut v)
                            .with_path("cannot read", &path)?;
                        v
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(Error::io("cannot read", &path, e)),
                }
            }
            Base::Http(_) => {
                let client = self.client()?;
                let url = self.url(url_path);
                let name = url_path.rsplit('/').next().unwrap_or(url_path).to_string();
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
                match (&mut stream).take(LIMIT).read_to_end(&mut v) {
                    Ok(_) => v,
                    Err(e) => {
                        if matches!(stream.status.map(|s| s.as_u16()), Some(404 | 410)) {
                            return Ok(None);
                        }
                        return Err(stream
                            .failure
                            .take()
                            .unwrap_or_else(|| Error::network(format!("{url}: {e}"))));
                    }
                }
            }
        };
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| Error::integrity(format!("{}: not text", self.url(url_path))))
    }

    pub fn base_description(&self) -> String {
        match &self.base {
            Base::Http(b) => b.clone(),
            Base::File(d) => format!("file://{}", d.display()),
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
    fetcher.fetch(&jobs_for(&recipe, &inventory.cluster.arch), progress)
}

fn parse_base(raw: &str, allow_http: bool) -> Result<Base> {
    let trimmed = raw.trim_end_matches('/');
    if let Some(rest) = raw.strip_prefix("file://") {
        if !rest.starts_with('/') {
            return Err(Error::input(format!(
                "--mirror {raw}: a file:// URL needs an absolute path (file:///srv/mirror)"
            )));
        }
        return Ok(Base::File(PathBuf::from(rest)));
    }
    if let Some((scheme, _)) = raw.split_once("://") {
        let url = reqwest::Url::parse(raw)
            .map_err(|e| Error::input(format!("--mirror {raw}: not a URL ({e})")))?;
        return match scheme {
            "https" => Ok(Base::Http(trimmed.to_string())),
            "http" if allow_http => Ok(Base::Http(trimmed.to_string())),
            "http" => Err(Error::input(format!(
                "--mirror {url}: plain http:// is refused (anyone on the path could change or \
                 watch what you download); use https://, or pass --allow-http for a trusted \
                 internal network (digests are checked either way)"
            ))),
            other => Err(Error::input(format!(
                "--mirror {raw}: unsupported scheme {other}:// (use https://, http:// with --allow-http, or file://)"
            ))),
        };
    }
    let path = Path::new(raw);
    if path.is_dir() {
        let abs = std::path::absolute(path).with_path("cannot resolve", path)?;
        return Ok(Base::File(abs));
    }
    Err(Error::input(format!(
        "--mirror {raw}: neither a URL (https://, file://) nor an existing folder"
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

const REPORT_EVERY: u64 = 256 * 1024;

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

enum Failure {
    Retry(String),
    Final(String),
}

/// An HTTP download as one continuous `Read`, reconnecting (and resuming with a
/// Range request) behind the reader's back; see the module docs.
struct Stream<'a> {
    client: &'a Client,
    url: &'a str,
    name: &'a str,
    opts: &'a FetchOptions,
    progress: &'a dyn Progress,
    hint: &'a str,
    resp: Option<Response>,
    /// Bytes handed to the reader so far.
    done: u64,
    /// Full length, when the server said.
    total: Option<u64>,
    /// ETag (strong) or Last-Modified of the first response, for If-Range.
    validator: Option<String>,
    /// Bytes of the current response to drop (a 200 answering a resume).
    skip: u64,
    /// The server cannot do ranges (a bad 206): ask for the whole file.
    no_range: bool,
    failed_tries: u32,
    waited: Duration,
    done_at_failure: u64,
    started: bool,
    reported: u64,
    /// Why the download failed for good; reads return an error from then on.
    failure: Option<Error>,
    /// The HTTP status of a final failure, if it was one.
    status: Option<StatusCode>,
}

impl<'a> Stream<'a> {
    fn new(
        client: &'a Client,
        url: &'a str,
        name: &'a str,
        opts: &'a FetchOptions,
        progress: &'a dyn Progress,
        hint: &'a str,
    ) -> Self {
        Stream {
            client,
            url,
            name,
            opts,
            progress,
            hint,
            resp: None,
            done: 0,
            total: None,
            validator: None,
            skip: 0,
            no_range: false,
            failed_tries: 0,
            waited: Duration::ZERO,
            done_at_failure: 0,
            started: false,
            reported: 0,
            failure: None,
            status: None,
        }
    }

    fn give_up(&self, reason: &str) -> Error {
        Error::network(format!(
            "cannot download {}: {reason}.\n{}",
            self.url, self.hint
        ))
    }

    /// Count a failed attempt and wait before the next, or give up.
    fn retry(&mut self, reason: String, retry_after: Option<Duration>) -> Result<()> {
        if self.done > self.done_at_failure {
            // Bytes arrived since the last failure: the connection works.
            self.failed_tries = 0;
            self.waited = Duration::ZERO;
        }
        self.done_at_failure = self.done;
        self.failed_tries += 1;
        let tries = self.failed_tries;
        if tries >= self.opts.tries {
            return Err(self.give_up(&format!(
                "{reason} (gave up after {tries} {})",
                if tries == 1 { "try" } else { "tries" }
            )));
        }
        let backoff = Duration::from_millis(500 << (tries - 1).min(4)).min(Duration::from_secs(8));
        // Half fixed, half random: builds started together (CI fan-out, many
        // sites behind one mirror) do not retry in lockstep.
        let backoff = backoff.mul_f64(0.5 + 0.5 * jitter(self.url, tries));
        let wait = retry_after.unwrap_or(backoff);
        if self.waited + wait > self.opts.retry_budget {
            let why = match retry_after {
                Some(ra) => format!(
                    "{reason}; the server asks to retry after {}s, beyond the retry budget of {}s",
                    ra.as_secs(),
                    self.opts.retry_budget.as_secs()
                ),
                None => format!(
                    "{reason} (gave up after {tries} tries and {}s of waiting)",
                    self.waited.as_secs()
                ),
            };
            return Err(self.give_up(&why));
        }
        self.progress.event(Event::DownloadRetry {
            name: self.name,
            attempt: tries + 1,
            reason: &reason,
            wait_ms: wait.as_millis() as u64,
        });
        std::thread::sleep(wait);
        self.waited += wait;
        Ok(())
    }

    /// Send the request (ranged when resuming) until a usable response arrives.
    fn open(&mut self) -> Result<()> {
        loop {
            let ranged = self.done > 0 && !self.no_range;
            let mut req = self.client.get(self.url);
            if ranged {
                req = req.header(header::RANGE, format!("bytes={}-", self.done));
                if let Some(v) = &self.validator {
                    req = req.header(header::IF_RANGE, v);
                }
            }
            let resp = match req.send() {
                Ok(r) => r,
                Err(e) => match classify(&e) {
                    Failure::Final(reason) => return Err(self.give_up(&reason)),
                    Failure::Retry(reason) => {
                        self.retry(reason, None)?;
                        continue;
                    }
                },
            };
            let status = resp.status();
            if status == StatusCode::PARTIAL_CONTENT && ranged {
                match content_range(&resp) {
                    Some((start, total)) if start == self.done => {
                        self.total = total.or(self.total);
                        self.progress.event(Event::DownloadStart {
                            url: self.url,
                            name: self.name,
                            total: self.total,
                            resumed_from: self.done,
                        });
                        self.resp = Some(resp);
                        return Ok(());
                    }
                    _ => {
                        // Not the range asked for: take the whole file and skip.
                        self.no_range = true;
                        continue;
                    }
                }
            }
            if status == StatusCode::OK {
                self.total = resp.content_length();
                if self.done > 0 {
                    // The server ignored the range (or the file changed): read it
                    // again from the start, dropping what the consumer has seen.
                    self.skip = self.done;
                    self.progress.event(Event::Notice {
                        message: &format!(
                            "{}: the server does not resume; downloading again from the start",
                            self.name
                        ),
                    });
                } else {
                    self.validator = validator(&resp);
                }
                if !self.started {
                    self.started = true;
                    self.progress.event(Event::DownloadStart {
                        url: self.url,
                        name: self.name,
                        total: self.total,
                        resumed_from: 0,
                    });
                }
                self.resp = Some(resp);
                return Ok(());
            }
            let retryable = status == StatusCode::TOO_MANY_REQUESTS
                || status == StatusCode::REQUEST_TIMEOUT
                || status.is_server_error();
            let reason = format!("HTTP {status}");
            if retryable {
                let retry_after = retry_after(&resp);
                drop(resp);
                self.retry(reason, retry_after)?;
                continue;
            }
            self.status = Some(status);
            let hint = match status.as_u16() {
                404 | 410 => " (the server does not have this file)",
                401 | 403 => " (the server refuses access)",
                416 => " (the file is shorter than what was already received)",
                _ => "",
            };
            // The network works: the offline hint would mislead.
            return Err(Error::network(format!(
                "cannot download {}: {reason}{hint}",
                self.url
            )));
        }
    }

    fn fail(&mut self, e: Error) -> io::Error {
        let err = io::Error::other(e.message().to_string());
        self.failure = Some(e);
        err
    }
}

impl Read for Stream<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(io::Error::other(f.message().to_string()));
        }
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.resp.is_none()
                && let Err(e) = self.open()
            {
                return Err(self.fail(e));
            }
            let resp = self.resp.as_mut().expect("opened");
            let failure = match resp.read(buf) {
                Ok(0) => match self.total {
                    Some(total) if self.done < total => {
                        format!("connection closed after {} of {total} bytes", self.done)
                    }
                    _ => {
                        self.progress.event(Event::DownloadBytes {
                            name: self.name,
                            done: self.done,
                        });
                        return Ok(0);
                    }
                },
                Ok(mut n) => {
                    if self.skip > 0 {
                        let k = (self.skip as usize).min(n);
                        self.skip -= k as u64;
                        if k == n {
                            continue;
                        }
                        buf.copy_within(k..n, 0);
                        n -= k;
                    }
                    self.done += n as u64;
                    if self.done - self.reported >= REPORT_EVERY {
                        self.reported = self.done;
                        self.progress.event(Event::DownloadBytes {
                            name: self.name,
                            done: self.done,
                        });
                    }
                    return Ok(n);
                }
                Err(e) => describe_io(&e),
            };
            self.resp = None;
            if let Err(e) = self.retry(failure, None) {
                return Err(self.fail(e));
            }
        }
    }
}

/// `Content-Range: bytes START-END/TOTAL` → (START, TOTAL).
fn content_range(resp: &Response) -> Option<(u64, Option<u64>)> {
    let v = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn validator(resp: &Response) -> Option<String> {
    let h = resp.headers();
    if let Some(etag) = h.get(header::ETAG).and_then(|v| v.to_str().ok())
        && !etag.starts_with("W/")
    {
        return Some(etag.to_string());
    }
    h.get(header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// A number in [0, 1) that differs between processes (std's randomly keyed hasher).
fn jitter(url: &str, attempt: u32) -> f64 {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one((url, attempt));
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` in seconds (the HTTP-date form falls back to our backoff).
fn retry_after(resp: &Response) -> Option<Duration> {
    let v = resp.headers().get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The error and its causes, without repeating one that the last already says.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(s) = cur {
        let t = s.to_string();
        // hyper-util's wrapper says nothing the causes below do not.
        let noise = t.starts_with("client error (");
        if !noise && !parts.last().is_some_and(|p| p.contains(&t)) {
            parts.push(t);
        }
        cur = s.source();
    }
    if parts.is_empty() {
        parts.push(e.to_string());
    }
    parts.join(": ")
}

/// reqwest's own top message names the URL, which our message already does.
fn causes(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(s) => chain(s),
        None => e.to_string(),
    }
}

fn is_dns(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("dns error")
        || t.contains("failed to lookup address")
        || t.contains("name or service not known")
        || t.contains("temporary failure in name resolution")
        || t.contains("no address associated")
}

fn classify(e: &reqwest::Error) -> Failure {
    let text = causes(e);
    if e.is_redirect() || e.is_builder() {
        return Failure::Final(text);
    }
    if is_dns(&text) {
        return Failure::Final(format!("cannot resolve the host name ({text})"));
    }
    if text.contains("certificate") {
        // Trying again will not make the server's certificate trusted.
        return Failure::Final(format!(
            "TLS certificate not accepted ({text}); for an internal mirror's CA use --ca-cert FILE"
        ));
    }
    if e.is_timeout() {
        return Failure::Retry(if e.is_connect() {
            format!("connect timed out ({text})")
        } else {
            format!("no response within the read timeout ({text})")
        });
    }
    if e.is_connect() {
        return Failure::Retry(format!("cannot connect ({text})"));
    }
    Failure::Retry(text)
}

fn describe_io(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::TimedOut {
        return "no data within the read timeout".to_string();
    }
    match e.get_ref() {
        Some(inner) => {
            let text = chain(inner);
            if text.to_ascii_lowercase().contains("timed out") {
                format!("no data within the read timeout ({text})")
            } else {
                format!("connection broken ({text})")
            }
        }
        None => format!("connection broken ({e})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_in_range_and_varies() {
        let xs: Vec<f64> = (0..64).map(|i| jitter("https://x/y", i)).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)), "{xs:?}");
        assert!(xs.windows(2).any(|w| w[0] != w[1]), "{xs:?}");
    }
}
