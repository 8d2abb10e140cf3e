//! The HTTP side of downloads: the client (timeouts, redirects, proxies, extra
//! CA), and [`Stream`], a download as one `Read` that retries and resumes
//! behind its reader's back.
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

use std::io::{self, Read};
use std::sync::Once;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, Response};
use reqwest::header;

use super::fetch::{FetchOptions, redact};
use crate::error::{Error, IoContext, Result};
use crate::progress::{Event, Progress};
use crate::store::ingest::Limits;

/// How often (in bytes) a download reports its progress.
pub(super) const REPORT_EVERY: u64 = 256 * 1024;

/// An HTTP client with our timeouts, redirect policy, proxies from the
/// environment (HTTPS_PROXY, NO_PROXY, ...) and the extra CA.
pub(super) fn client(opts: &FetchOptions) -> Result<Client> {
    static PROVIDER: Once = Once::new();
    PROVIDER.call_once(|| {
        // Fails only if a provider is installed already, which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let allow_http = opts.allow_http;
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 10 {
            return attempt.error("too many redirects (10)");
        }
        match attempt.url().scheme() {
            "https" => attempt.follow(),
            "http" if allow_http => attempt.follow(),
            "http" => {
                let to = redact(attempt.url().as_str());
                attempt.error(format!(
                    "redirect to plain http refused ({to}); pass --allow-http to allow it"
                ))
            }
            other => {
                let other = crate::error::clip(other);
                attempt.error(format!("redirect to a {other}: URL refused"))
            }
        }
    });
    let mut builder = Client::builder()
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(opts.connect_timeout)
        // In the blocking client this bounds the wait for headers and each
        // read of the body, not the whole transfer.
        .timeout(opts.read_timeout)
        .redirect(policy);
    if let Some(ca) = &opts.ca_cert {
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

enum Failure {
    Retry(String),
    Final(String),
}

/// An HTTP download as one continuous `Read`, reconnecting (and resuming with a
/// Range request) behind the reader's back; see the module docs.
pub(super) struct Stream<'a> {
    client: &'a Client,
    /// What is requested (credentials included) ...
    url: &'a str,
    /// ... and what is shown (credentials replaced by `***`).
    shown: String,
    /// The cap on what the server may announce.
    limit: Option<Limits>,
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
    pub(super) failure: Option<Error>,
    /// The HTTP status of a final failure, if it was one.
    pub(super) status: Option<StatusCode>,
}

impl<'a> Stream<'a> {
    pub(super) fn new(
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
            shown: redact(url),
            limit: None,
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

    /// Refuse a body the server announces larger than `limits` allow.
    pub(super) fn limit(mut self, limits: Limits) -> Self {
        self.limit = Some(limits);
        self
    }

    /// `text` with the requested URL's credentials replaced by `***`.
    fn scrub(&self, text: &str) -> String {
        match userinfo(self.url) {
            Some(secret) => text.replace(self.url, &self.shown).replace(secret, "***"),
            None => text.to_string(),
        }
    }

    fn give_up(&self, reason: &str) -> Error {
        Error::network(format!(
            "cannot download {}: {}.\n{}",
            self.shown,
            self.scrub(reason),
            self.hint
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
                        self.check_announced(total)?;
                        self.total = total.or(self.total);
                        self.progress.event(Event::DownloadStart {
                            url: &self.shown,
                            name: self.name,
                            total: self.total,
                            resumed_from: self.done,
                        });
                        self.resp = Some(resp);
                        return Ok(());
                    }
                    _ => {
                        // Not the range asked for: never appended. Take the
                        // whole file and skip what was received.
                        self.progress.event(Event::Notice {
                            message: &format!(
                                "{}: asked for bytes {}-, the server sent {}; downloading again from the start",
                                self.name,
                                self.done,
                                content_range_text(&resp)
                            ),
                        });
                        self.no_range = true;
                        continue;
                    }
                }
            }
            if status == StatusCode::OK {
                self.total = resp.content_length();
                self.check_announced(self.total)?;
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
                        url: &self.shown,
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
            if status == StatusCode::PARTIAL_CONTENT {
                return Err(Error::network(format!(
                    "cannot download {}: the server answered 206 Partial Content ({}) to a request \
                     for the whole file",
                    self.shown,
                    content_range_text(&resp)
                )));
            }
            // The network works: the offline hint would mislead.
            return Err(Error::network(format!(
                "cannot download {}: {reason}{hint}",
                self.shown
            )));
        }
    }

    /// A body announced larger than the cap is refused before it is read.
    fn check_announced(&self, total: Option<u64>) -> Result<()> {
        match (total, self.limit) {
            (Some(t), Some(limits)) if t > limits.artifact => {
                Err(limits.too_large(&format!("{} (the server announces {t} bytes)", self.shown)))
            }
            _ => Ok(()),
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

/// The `Content-Range` header as the server sent it, for messages.
fn content_range_text(resp: &Response) -> String {
    match resp.headers().get(header::CONTENT_RANGE) {
        Some(v) => format!(
            "Content-Range: {}",
            crate::error::clip(&String::from_utf8_lossy(v.as_bytes()))
        ),
        None => "no Content-Range".to_string(),
    }
}

/// The `user:password` of a URL, if it has one.
fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    rest[..host_end].rfind('@').map(|at| &rest[..at])
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
