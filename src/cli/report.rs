//! The CLI's side of `Progress`: what the user sees on stderr.
//!
//! On a terminal, each download gets a bar (bytes, rate, ETA) above a total bar.
//! When stderr is not a terminal, a line per finished artifact (and per retry),
//! and with `--quiet` nothing but warnings.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use imgbuild::progress::{Event, Progress};

pub struct Reporter {
    quiet: bool,
    bars: Option<Mutex<Bars>>,
    lock: Mutex<()>,
}

struct Bars {
    multi: MultiProgress,
    each: HashMap<String, (ProgressBar, u64)>,
    total: Option<ProgressBar>,
}

impl Bars {
    /// Draw the final state once and stop; later downloads get new bars.
    fn release(&mut self) {
        for (bar, _) in self.each.values() {
            if !bar.is_finished() {
                bar.abandon();
            }
        }
        if let Some(t) = self.total.take() {
            t.finish();
        }
        self.multi.set_draw_target(ProgressDrawTarget::hidden());
        self.multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        self.each.clear();
    }
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:<40!} {bar:25} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} ETA {eta:>3} {msg}",
    )
    .expect("valid template")
    .progress_chars("=> ")
}

fn spinner_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:<40!} {spinner} {bytes:>10} {bytes_per_sec:>12} {msg}")
        .expect("valid template")
}

impl Reporter {
    pub fn new(quiet: bool) -> Reporter {
        let tty = std::io::stderr().is_terminal();
        Reporter {
            quiet,
            bars: (tty && !quiet).then(|| {
                Mutex::new(Bars {
                    multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
                    each: HashMap::new(),
                    total: None,
                })
            }),
            lock: Mutex::new(()),
        }
    }

    /// Stop drawing (after a failure, bars may be unfinished); the last state
    /// of the bars stays on the terminal, above the command's own output.
    pub fn finish(&self) {
        if let Some(bars) = &self.bars {
            bars.lock().unwrap().release();
        }
    }

    fn line(&self, line: &str) {
        if let Some(bars) = &self.bars {
            let bars = bars.lock().unwrap();
            if !bars.each.is_empty() {
                let _ = bars.multi.println(line);
                return;
            }
        }
        let _g = self.lock.lock();
        let _ = writeln!(std::io::stderr(), "{line}");
    }

    /// Terminal only: draw download events as bars. True when handled.
    fn bar_event(&self, event: &Event<'_>) -> bool {
        let Some(bars) = &self.bars else {
            return false;
        };
        let mut b = bars.lock().unwrap();
        let b = &mut *b;
        match *event {
            Event::DownloadStart {
                name,
                total,
                resumed_from,
                ..
            } => {
                if let Some((bar, _)) = b.each.get(name) {
                    if resumed_from > 0 {
                        bar.set_message(format!("resumed at {resumed_from}"));
                    }
                    return true;
                }
                // Hidden until the MultiProgress takes it: a bar drawing itself
                // before that leaves a stray line on the terminal.
                let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden())
                    .with_style(match total {
                        Some(_) => bar_style(),
                        None => spinner_style(),
                    });
                bar.set_prefix(name.to_string());
                let total_bar = b.total.get_or_insert_with(|| {
                    let t = b.multi.add(
                        ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden())
                            .with_style(bar_style()),
                    );
                    t.set_prefix("total");
                    t.enable_steady_tick(Duration::from_millis(200));
                    t
                });
                total_bar.inc_length(total.unwrap_or(0));
                let bar = b.multi.insert_before(total_bar, bar);
                b.each.insert(name.to_string(), (bar, 0));
                true
            }
            Event::DownloadBytes { name, done } => {
                if let Some((bar, seen)) = b.each.get_mut(name) {
                    bar.set_position(done);
                    if let Some(t) = &b.total {
                        t.inc(done.saturating_sub(*seen));
                    }
                    *seen = done.max(*seen);
                }
                true
            }
            Event::DownloadDone { name, bytes } => {
                if let Some((bar, seen)) = b.each.get_mut(name) {
                    if let Some(t) = &b.total {
                        t.inc(bytes.saturating_sub(*seen));
                    }
                    *seen = bytes;
                    bar.set_position(bytes);
                    bar.finish_with_message("verified");
                }
                true
            }
            Event::DownloadsFinished { .. } => {
                // Hand the terminal back, so what the command prints next is
                // not drawn over.
                b.release();
                true
            }
            _ => false,
        }
    }
}

impl Progress for Reporter {
    fn event(&self, event: Event<'_>) {
        if let Event::Warning { message } = event {
            self.line(&format!("warning: {message}"));
            return;
        }
        if self.quiet || self.bar_event(&event) {
            return;
        }
        let line = match event {
            Event::Warning { .. } => unreachable!(),
            Event::Step { what } => what.to_string(),
            Event::Notice { message } => format!("note: {message}"),
            Event::Wrote { path } => format!("wrote {}", path.display()),
            Event::Cached { name, digest } => format!("cached {name} ({digest})"),
            // Without a terminal: a line per finished download, nothing per byte.
            Event::DownloadStart { .. }
            | Event::DownloadBytes { .. }
            | Event::DownloadsFinished { .. } => return,
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
        self.line(&line);
    }
}
