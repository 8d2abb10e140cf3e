//! SIGINT (Ctrl-C) and SIGTERM: remove the temp files and folders being
//! written (`util::atomic`'s registry of live temp paths: outputs in `out/`,
//! folders being filled, this process's files in the cache's `tmp/`), then
//! exit 130 (143 for SIGTERM), as a shell reports a process ended by the signal.
//!
//! signal-hook's iterator: the handler itself only writes to a pipe, and the
//! work happens on an ordinary thread, where taking a lock and removing
//! files are safe (neither is async-signal-safe inside a real handler).

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

/// Install the handler; without it (signals cannot be caught) the defaults stay.
pub fn install() {
    let Ok(mut signals) = Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(signal) = signals.forever().next() {
            let removed = imgbuild::util::atomic::remove_live();
            let name = if signal == SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            eprintln!(
                "\nerror: interrupted ({name}); removed {} temporary file(s) and folder(s), nothing half-written is left",
                removed.len()
            );
            std::process::exit(128 + signal);
        }
    });
}
