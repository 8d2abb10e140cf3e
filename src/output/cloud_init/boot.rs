//! The boot step of a v1.34+ node (`Meta::current_control_plane`), for the
//! user-data with the node's files and for the `--payload-url` boot script.
//!
//! `runcmd` runs once per instance and stops at the first failure: a download
//! that failed was never tried again, and `systemctl enable --now` of the RBAC
//! one-shot held everything after it (nginx too) until the API server
//! answered. From v1.34 the user-data writes, besides the node's files, one
//! POSIX sh script in cloud-init's `scripts/per-boot` folder (as the payload
//! mode does), which cloud-init's final stage runs at every boot until it has
//! succeeded once:
//!
//! 1. installs the binaries (`mirror`/`seed`), verify-then-install, keeping a
//!    binary already in place with the pinned sha256; curl retries refused
//!    connections and every error, each attempt bounded;
//! 2. sets numeric owners, makes the enablement symlinks, reloads systemd;
//! 3. starts every unit with `systemctl start --no-block`, nginx (and the rest
//!    of the control plane) before the RBAC one-shot, which waits for the API
//!    server on its own; a unit that cannot be started (nginx not installed)
//!    is named, the others still start;
//! 4. records the node's files digest in `/var/lib/imgbuild/cloud-init.done`.
//!
//! A failed step leaves `/var/lib/imgbuild/cloud-init.failed` (when, which
//! step, exit code), says so in `/var/log/cloud-init-output.log`, fails
//! cloud-init's `scripts_per_boot`, and the next boot tries again.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Binaries;
use super::payload::{sh_quote, sh_words};
use super::yaml::{self, Sources, owner_spec};
use crate::error::{Error, Result};
use crate::output::manifest::Listed;
use crate::plan::{Entry, EntryKind, Plan};
use crate::util::digest::sha256_hex;

/// Where the node's boot script is written: cloud-init runs this folder at every boot.
pub const SCRIPT_PATH: &str = "/var/lib/cloud/scripts/per-boot/imgbuild-node";
pub const DONE: &str = "/var/lib/imgbuild/cloud-init.done";
pub const FAILED: &str = "/var/lib/imgbuild/cloud-init.failed";

/// The RBAC one-shot, started last: it waits for the API server by itself.
const ONESHOT: &str = "kube-rbac-bootstrap.service";

/// Verify-then-install (`yaml::INSTALL_SCRIPT`), keeping a binary that is
/// already in place with the pinned digest (a retried boot downloads only
/// what it lacks).
const KEEP_IF_PINNED: &str = r#"if [ -f "$dest" ] && [ "$(sha256sum "$dest" | cut -d' ' -f1)" = "$sha" ]; then
  chmod "$mode" "$dest"
  chown "$owner" "$dest"
  exit 0
fi
"#;

/// curl's options for every download of a v1.34+ node: retried on refused
/// connections, DNS failures and every other error, each attempt bounded
/// (10 s to connect, `MAX` in all; `--retry-all-errors` needs curl 7.71).
pub(super) fn curl_options(max_time: u32) -> String {
    format!(
        "--retry 10 --retry-delay 5 --retry-connrefused --retry-all-errors --connect-timeout 10 --max-time {max_time}"
    )
}

pub(super) fn install_script(binaries: &Binaries) -> String {
    let fetch = match binaries {
        Binaries::Mirror(_) => yaml::FETCH_MIRROR.replace(
            "GET",
            &format!(
                r#"get() {{
  if command -v curl >/dev/null 2>&1; then
    curl -fsSL {} -o "$2" "$1" || {{ rm -f "$2"; echo "imgbuild: cannot download $1" >&2; exit 1; }}
  else
    # No -T: busybox 1.35's wget crashes with it on a refused connection.
    t=
    if command -v timeout >/dev/null 2>&1; then t="timeout 900"; fi
    $t wget -q -O "$2" "$1" || {{ rm -f "$2"; echo "imgbuild: cannot download $1" >&2; exit 1; }}
  fi
}}"#,
                curl_options(900)
            ),
        ),
        _ => yaml::FETCH_SEED.to_string(),
    };
    let tmp = "tmp=\"$dest.imgbuild-new\"\n";
    yaml::INSTALL_SCRIPT
        .replace(tmp, &format!("{KEEP_IF_PINNED}{tmp}"))
        .replace("FETCH", &fetch)
}

/// The units in the order they are started: the layout's, the RBAC one-shot last.
pub(super) fn start_order(units: Vec<String>) -> Vec<String> {
    let (mut first, last): (Vec<String>, Vec<String>) =
        units.into_iter().partition(|u| u != ONESHOT);
    first.extend(last);
    first
}

/// Start every unit without waiting (`--no-block`), the one-shot last; a unit
/// that cannot be started is named and the others still start; returns
/// non-zero (through the caller's `set -e`) when one could not.
pub(super) fn start_units(s: &mut String, units: Vec<String>) {
    s.push_str(
        r#"not_started=
start() {
  if ! systemctl start --no-block "$1"; then
    not_started="$not_started $1"
    case $1 in
      nginx.service) echo "imgbuild: nginx is not installed: the load balancer's health check (port 80) stays down until it is (user-data packages: [nginx], or nginx in the image)" >&2 ;;
      *) echo "imgbuild: cannot start $1" >&2 ;;
    esac
  fi
}
"#,
    );
    for u in start_order(units) {
        let _ = writeln!(s, "start {}", sh_quote(&u));
    }
    s.push_str("if [ -n \"$not_started\" ]; then\n  step=\"starting$not_started\"\n  exit 1\nfi\n");
}

/// The per-boot script for `plan` (see the module's documentation).
pub(super) fn script(plan: &Plan, binaries: &Binaries, sources: &Sources) -> String {
    let (sources, _) = sources;
    let wanted = |e: &Entry| !e.shared || *binaries != Binaries::Baked;
    // What this script configures: a new configuration is configured again.
    let mut what = String::new();
    for e in plan.entries.iter().filter(|e| wanted(e)) {
        let _ = writeln!(what, "{} {:o} {}", e.path, e.mode, owner_spec(e));
        match &e.kind {
            EntryKind::File { sha256, .. } => what.push_str(sha256.as_str()),
            EntryKind::Symlink { target } => what.push_str(target),
            EntryKind::Dir => {}
        }
    }
    let mut s = format!(
        r#"#!/bin/sh
# imgbuild: install this node's binaries (when cloud-init brings them), set owners,
# enable its units and start them without waiting, nginx before the RBAC one-shot.
# cloud-init runs this at every boot until it has succeeded once; a failed step is
# recorded in {FAILED} and tried again at the next boot.
set -eu
# IMGBUILD_ROOT (default /): the root it installs into, for tests.
r=${{IMGBUILD_ROOT:-/}}
r=${{r%/}}
config={config}
if [ "$(cat "$r"{DONE} 2>/dev/null)" = "$config" ]; then
  echo "imgbuild: node configured already ($config)"
  exit 0
fi
mkdir -p "$r"/var/lib/imgbuild
step=starting
finish() {{
  rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) $step failed (exit $rc); cloud-init tries again at the next boot (/var/log/cloud-init-output.log)" >"$r"{FAILED}
    echo "imgbuild: $step failed (exit $rc): recorded in {FAILED}; tried again at the next boot" >&2
  fi
}}
trap finish EXIT
"#,
        config = sha256_hex(what.as_bytes()),
    );
    if !sources.is_empty() {
        s.push_str("step=\"installing the binaries\"\n");
        let _ = writeln!(s, "install_binary() (\n{}\n)", install_script(binaries));
        super::payload::install_lines(&mut s, binaries, sources);
    }
    s.push_str("step=\"setting owners and enabling the units\"\n");
    for e in plan.per_node().filter(|e| e.uid != 0 || e.gid != 0) {
        if matches!(e.kind, EntryKind::File { .. }) {
            let _ = writeln!(
                s,
                "chown {} \"$r\"{}",
                owner_spec(e),
                sh_quote(&format!("/{}", e.path))
            );
        }
    }
    for e in plan.entries.iter().filter(|e| wanted(e)) {
        if let EntryKind::Symlink { target } = &e.kind {
            let _ = writeln!(
                s,
                "ln -sfnT {} \"$r\"{}",
                sh_quote(target),
                sh_quote(&format!("/{}", e.path))
            );
        }
    }
    s.push_str("systemctl daemon-reload\nstep=\"starting the units\"\n");
    start_units(
        &mut s,
        yaml::units_to_start(plan, *binaries != Binaries::Baked),
    );
    let _ = write!(
        s,
        "echo \"$config\" >\"$r\"{DONE}\nrm -f \"$r\"{FAILED}\necho \"imgbuild: node configured; units started (the RBAC one-shot retries until the API server takes it)\"\n"
    );
    s
}

/// The entries a boot script installs or links, and the owners it sets by path.
type ReadBack = (Vec<Listed>, BTreeMap<String, (u32, u32)>);

/// What the node's boot script installs, links and chowns, read back
/// (`inspect`): binaries (their `target` says where they come from) and
/// symlinks, and the numeric owners it sets by path.
pub(super) fn read_script(script: &str, what: &str) -> Result<ReadBack> {
    let bad = |why: &str| Error::input(format!("{what}: {SCRIPT_PATH}: {why}"));
    let mut entries = Vec::new();
    let mut owners = BTreeMap::new();
    let ids = |owner: &str| -> Result<(u32, u32)> {
        let (u, g) = owner.split_once(':').ok_or_else(|| bad("bad owner"))?;
        let id = |n: &str| n.parse::<u32>().map_err(|_| bad("an owner is not numeric"));
        Ok((id(u)?, id(g)?))
    };
    let mut in_function = false;
    for line in script.lines() {
        // The verify-then-install function's own lines are not the node's.
        if line.ends_with("() (") {
            in_function = true;
        }
        if in_function {
            in_function = line != ")";
            continue;
        }
        if !["install_binary ", "chown ", "ln "]
            .iter()
            .any(|p| line.starts_with(p))
        {
            continue;
        }
        let unreadable = || {
            bad(&format!(
                "cannot read the line {:?}",
                crate::error::clip(line)
            ))
        };
        let words = sh_words(line).ok_or_else(unreadable)?;
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        match w.as_slice() {
            ["install_binary", src, sha, dest, m, owner, ..] => {
                let (uid, gid) = ids(owner)?;
                entries.push(Listed {
                    path: dest.to_string(),
                    kind: "file",
                    mode: u32::from_str_radix(m, 8).map_err(|_| bad("a mode is not octal"))?,
                    uid,
                    gid,
                    size: None,
                    sha256: Some(sha.to_string()),
                    target: Some(src.to_string()),
                });
            }
            ["chown", owner, path] => {
                owners.insert(path.to_string(), ids(owner)?);
            }
            ["ln", "-sfnT", target, path] => entries.push(Listed::symlink(path, target, 0, 0)),
            _ => return Err(unreadable()),
        }
    }
    Ok((entries, owners))
}
