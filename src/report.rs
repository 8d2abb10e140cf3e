//! The CLI's side of `Progress`: what the user sees on stderr.

use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use imgbuild::progress::{Event, Progress};

pub struct Reporter {
    quiet: bool,
    tty: bool,
    lock: Mutex<()>,
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        Reporter {
            quiet,
            tty: std::io::stderr().is_terminal(),
            lock: Mutex::new(()),
        }
    }
}

impl Progress for Reporter {
    fn event(&self, event: Event<'_>) {
        let line = match event {
            Event::Warning { message } => format!("warning: {message}"),
            _ if self.quiet => return,
            Event::Step { what } => what.to_string(),
            Event::Notice { message } => format!("note: {message}"),
            Event::Wrote { path } => format!("wrote {}", path.display()),
            Event::Cached { name, digest } => format!("cached {name} ({digest})"),
            Event::DownloadStart {
                url, resumed_from, ..
            } => {
                if resumed_from > 0 {
                    format!("resuming {url} at byte {resumed_from}")
                } else {
                    format!("downloading {url}")
                }
            }
            Event::DownloadBytes { .. } => return,
            Event::DownloadRetry {
                name,
                attempt,
                reason,
                wait_ms,
            } => format!(
                "retrying {name} in {:.1}s (attempt {attempt}): {reason}",
                wait_ms as f64 / 1000.0
            ),
            Event::DownloadDone { name, bytes } => {
                format!("downloaded {name} ({bytes} bytes, verified)")
            }
        };
        let _g = self.lock.lock();
        let _ = self.tty;
        let _ = writeln!(std::io::stderr(), "{line}");
    }
}
