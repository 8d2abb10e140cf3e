//! `imgbuild cloud-init --payload-url URL`: a small user-data for providers
//! whose limit the node's files do not fit (AWS: 16 KiB raw).
//!
//! The node's own files (configuration, units, PKI, scripts; nothing shared)
//! go in `controller-N-payload.tar.gz`, whose bytes are exactly the node half
//! of a split tar.gz: the same writer (`tar::write_per_node`) over the same
//! entries, one gzip member with the end-of-archive blocks. It is written
//! 0600 whatever it holds, since it is meant to hold keys.
//!
//! The user-data is one `write_files` item: a POSIX sh script in cloud-init's
//! `scripts/per-boot` folder, which cloud-init's final stage (`scripts-per-boot`,
//! where `runcmd` runs too) runs at every boot. The script does nothing once
//! its done-marker holds the payload's digest; until then, at every boot, it
//! downloads the payload (curl, else wget; 60 attempts 5 s apart, each at
//! most 60 s), checks its sha256 against the digest written into it, and only
//! then unpacks it with numeric owners; then installs the binaries as the
//! other modes do (the same verify-then-install script), enables and starts
//! the units in the layout's order, and writes the marker. Any failure stops
//! it with a message in cloud-init's output log and leaves no marker, so the
//! next boot tries again. It is POSIX sh: tested with dash (curl, GNU tar,
//! coreutils) and with busybox sh and nothing but busybox's applets.
//!
//! Why per-boot: `runcmd` runs once per instance, so a failed download would
//! never be retried; `bootcmd` runs at every boot but before `write_files`
//! and while the network may still be coming up, and it holds up the boot; a
//! systemd unit would log to the journal, not to cloud-init's log, and could
//! not start the units the way the other modes do (`systemctl enable --now`
//! from cloud-init's final stage).
//!
//! The script reads one variable, `IMGBUILD_ROOT` (default `/`), the root it
//! unpacks and installs into, so tests can run the shipped script as it is.

use std::fmt::Write as _;

use super::yaml::{self, binary_sources, install_script, seed_mount, units_to_start};
use super::{Binaries, Options, SEED_MOUNT};
use crate::error::{Error, Result};
use crate::output::format::Compression;
use crate::output::manifest::Listed;
use crate::output::tar;
use crate::plan::{Entry, EntryKind, Plan};

/// Where the boot script is written: cloud-init runs this folder at every boot.
pub const SCRIPT_PATH: &str = "/var/lib/cloud/scripts/per-boot/imgbuild-payload";
/// Download attempts, and seconds between them: about 5 minutes of waiting
/// for a server that is down; each attempt takes at most `TIMEOUT_SECONDS`
/// (10 of them to connect), so the step gives up within about an hour even
/// when every attempt stalls. The next boot tries again.
pub const ATTEMPTS: u32 = 60;
pub const DELAY_SECONDS: u32 = 5;
pub const TIMEOUT_SECONDS: u32 = 60;

/// `--payload-url` and its headers, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The URL, with `{node}` (the node's 1-based index) and `{name}` (its name)
    /// still to expand.
    pub url: String,
    /// `Name: value` lines sent with the download (e.g. `Authorization`).
    pub headers: Vec<String>,
}

/// Where a payload user-data fetches the node's files, and the sha256 they must have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetch {
    pub url: String,
    pub sha256: String,
}

impl Payload {
    /// Check `url`: https (http only with `allow_http`, for tests), a host,
    /// printable ASCII without spaces, and no `{...}` but `{node}` and `{name}`.
    pub fn new(url: &str, allow_http: bool, headers: Vec<String>) -> Result<Payload> {
        let bad =
            |why: &str| Error::input(format!("--payload-url {}: {why}", crate::error::clip(url)));
        let rest = match (url.strip_prefix("https://"), url.strip_prefix("http://")) {
            (Some(rest), _) => rest,
            (_, Some(rest)) if allow_http => rest,
            (_, Some(_)) => {
                return Err(bad(
                    "the payload holds the node's keys: https:// only (--allow-http is for tests)",
                ));
            }
            _ => return Err(bad("expected an https:// URL")),
        };
        if !url.bytes().all(|b| (0x21..0x7f).contains(&b)) {
            return Err(bad(
                "spaces, control and non-ASCII characters must be percent-encoded",
            ));
        }
        if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() {
            return Err(bad("no host"));
        }
        if url
            .replace("{node}", "")
            .replace("{name}", "")
            .contains(['{', '}'])
        {
            return Err(bad("the only placeholders are {node} and {name}"));
        }
        Ok(Payload {
            url: url.to_string(),
            headers,
        })
    }

    /// Whether the URL differs per node (names `{node}` or `{name}`).
    pub fn per_node(&self) -> bool {
        self.url.contains("{node}") || self.url.contains("{name}")
    }

    /// The URL of node `index` (1-based) named `name`.
    pub fn url_for(&self, index: usize, name: &str) -> String {
        self.url
            .replace("{node}", &index.to_string())
            .replace("{name}", name)
    }
}

/// `Name: value` lines of a header file (blank lines and `#` comments
/// skipped). Errors never quote a value: it is usually a token.
pub fn parse_headers(text: &str, file: &str) -> Result<Vec<String>> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| {
            Error::input(format!(
                "{file} line {}: {why} (the line is not shown: it may hold a token)",
                i + 1
            ))
        };
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("expected a header, `Name: value`"))?;
        if name.is_empty() || !name.bytes().all(token) {
            return Err(bad(
                "a header name is letters, digits and !#$%&'*+-.^_`|~ only",
            ));
        }
        let value = value.trim_matches([' ', '\t']);
        if value.is_empty() || !value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(bad("a header value is printable ASCII, not empty"));
        }
        out.push(format!("{name}: {value}"));
    }
    if out.is_empty() {
        return Err(Error::input(format!(
            "{file}: no header (one `Name: value` per line)"
        )));
    }
    Ok(out)
}

/// The payload's bytes: exactly the node half of a split tar.gz.
pub fn payload_bytes(plan: &Plan) -> Result<Vec<u8>> {
    tar::write_per_node(
        plan.per_node(),
        plan.meta.made_from.mtime,
        Compression::Gzip,
        Vec::new(),
    )
}

/// The small `#cloud-config`: the boot script that fetches `fetch`, and the
/// binaries the seed volume must carry (`seed` mode).
pub(super) fn user_data(
    plan: &Plan,
    opts: &Options,
    headers: &[String],
    fetch: &Fetch,
) -> Result<(String, Vec<(String, Entry)>)> {
    let (script, seed_files) = script(plan, &opts.binaries, headers, fetch)?;
    let mut y = yaml::header(plan, &opts.binaries, " | payload");
    let _ = writeln!(
        y,
        "# The node's files are fetched from the URL below and unpacked only if their\n\
         # sha256 is the one below; cloud-init runs this at every boot until it has succeeded."
    );
    y.push_str("write_files:\n");
    yaml::write_files_item(&mut y, SCRIPT_PATH, 0o700, script.as_bytes(), false);
    Ok((y, seed_files))
}

/// Declarations, fetch, check and unpack: the part that is the same for every node.
const FETCH_CHECK_UNPACK: &str = r#"r=${IMGBUILD_ROOT:-/}
r=${r%/}
where=${url%%\?*}
marker="$r/var/lib/imgbuild/payload.done"
if [ "$(cat "$marker" 2>/dev/null)" = "$sha256" ]; then
  echo "imgbuild: payload $sha256 already installed"
  exit 0
fi
umask 022
tmp=$(mktemp -d "${TMPDIR:-/run}/imgbuild-payload.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
get() {
  if command -v curl >/dev/null 2>&1; then
    set -- curl -fsSL --connect-timeout 10 --max-time TIMEOUT -o "$tmp/payload"
    h=-H
  else
    set -- wget -q -O "$tmp/payload"
    if command -v timeout >/dev/null 2>&1; then set -- timeout TIMEOUT "$@"; fi
    h=--header
  fi
  while IFS= read -r line; do
    if [ -n "$line" ]; then set -- "$@" "$h" "$line"; fi
  done <<EOF
$headers
EOF
  "$@" "$url"
}
n=1
until get; do
  if [ "$n" -ge ATTEMPTS ]; then
    echo "imgbuild: cannot download the payload from $where ($n attempts)" >&2
    exit 1
  fi
  echo "imgbuild: downloading $where failed (attempt $n of ATTEMPTS), again in DELAY s" >&2
  n=$((n + 1))
  sleep DELAY
done
actual=$(sha256sum "$tmp/payload" | cut -d' ' -f1)
if [ "$actual" != "$sha256" ]; then
  echo "imgbuild: the payload from $where has sha256 $actual, expected $sha256: nothing unpacked" >&2
  exit 1
fi
tar --numeric-owner -xzf "$tmp/payload" -C "$r/"
"#;

const DONE: &str = r#"mkdir -p "$r/var/lib/imgbuild"
echo "$sha256" >"$marker"
echo "imgbuild: payload $sha256 installed"
"#;

/// The boot script (see the module's documentation).
fn script(
    plan: &Plan,
    binaries: &Binaries,
    headers: &[String],
    fetch: &Fetch,
) -> Result<(String, Vec<(String, Entry)>)> {
    let (sources, seed_files) = binary_sources(plan, binaries)?;
    let mut s = String::from(
        "#!/bin/sh\n\
         # imgbuild: fetch this node's files, check their sha256, unpack them; then the\n\
         # binaries and the units. Run at every boot until it has succeeded once.\n\
         set -eu\n",
    );
    let _ = writeln!(s, "url={}", sh_quote(&fetch.url));
    let _ = writeln!(s, "sha256={}", sh_quote(&fetch.sha256));
    let _ = writeln!(s, "headers={}", sh_quote(&headers.join("\n")));
    s.push_str(
        &FETCH_CHECK_UNPACK
            .replace("ATTEMPTS", &ATTEMPTS.to_string())
            .replace("DELAY", &DELAY_SECONDS.to_string())
            .replace("TIMEOUT", &TIMEOUT_SECONDS.to_string()),
    );
    if !sources.is_empty() {
        // The other modes' verify-then-install script, as a function; the
        // binaries' folders as they make them, without `install -d`, which
        // some busybox builds (Debian's) do not have.
        let install = if plan.meta.current_control_plane() {
            super::boot::install_script(binaries)
        } else {
            install_script(binaries)
        };
        let _ = writeln!(s, "install_binary() (\n{install}\n)");
        s.push_str("folder() { mkdir -p \"$4\"; chown \"$2:$3\" \"$4\"; chmod \"$1\" \"$4\"; }\n");
        for d in plan.shared().filter(|e| matches!(e.kind, EntryKind::Dir)) {
            let _ = writeln!(
                s,
                "folder {} {} {} \"$r\"{}",
                yaml::mode_str(d.mode),
                d.uid,
                d.gid,
                sh_quote(&format!("/{}", d.path))
            );
        }
        install_lines(&mut s, binaries, &sources);
    }
    s.push_str("systemctl daemon-reload\n");
    let units = units_to_start(plan, *binaries != Binaries::Baked);
    if plan.meta.current_control_plane() {
        // From v1.34: started without waiting, the RBAC one-shot last.
        super::boot::start_units(&mut s, units);
    } else {
        for u in units {
            let _ = writeln!(s, "systemctl enable --now {}", sh_quote(&u));
        }
    }
    s.push_str(DONE);
    Ok((s, seed_files))
}

/// One `install_binary SRC SHA "$r"DEST MODE OWNER` line per binary (between
/// mounting and unmounting the seed volume in `seed` mode).
pub(super) fn install_lines(s: &mut String, binaries: &Binaries, sources: &[yaml::Source]) {
    if *binaries == Binaries::Seed {
        let _ = writeln!(s, "{}", seed_mount());
    }
    for src in sources {
        let b = src.entry;
        let EntryKind::File { sha256, .. } = &b.kind else {
            unreachable!()
        };
        // A member of a release archive (etcd's): the archive's member and pin follow.
        let more: String = src
            .unpack_args()
            .iter()
            .map(|a| format!(" {}", sh_quote(a)))
            .collect();
        let _ = writeln!(
            s,
            "install_binary {} {sha256} \"$r\"{} {} {}{more}",
            sh_quote(&src.src),
            sh_quote(&format!("/{}", b.path)),
            yaml::mode_str(b.mode),
            yaml::owner_spec(b)
        );
    }
    if *binaries == Binaries::Seed {
        let _ = writeln!(s, "umount {SEED_MOUNT}");
    }
}

/// A shell word for `s`: as it is when plain, else single-quoted.
pub(super) fn sh_quote(s: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._/:@%+=,-".contains(c);
    if !s.is_empty() && s.chars().all(plain) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The words of a line of the script as the shell reads them, for what this
/// module writes: plain characters, single quotes, backslashes, and `"$r"`
/// (the root, which reads as nothing).
pub(super) fn sh_words(line: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            ' ' => words.extend(cur.take()),
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).push(chars.next()?),
            '"' => {
                let inner: String = chars.by_ref().take_while(|c| *c != '"').collect();
                if inner != "$r" {
                    return None;
                }
                cur.get_or_insert_with(String::new);
            }
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Some(words)
}

/// Read a boot script back (`inspect`): what it fetches, and the folders and
/// binaries it installs (a binary's `target` says where it comes from).
pub(super) fn read_script(script: &str, what: &str) -> Result<(Fetch, Vec<Listed>)> {
    let bad = |why: &str| Error::input(format!("{what}: {SCRIPT_PATH}: {why}"));
    let (mut url, mut sha256) = (None, None);
    let mut entries = Vec::new();
    for line in script.lines() {
        let ours = ["url=", "sha256=", "folder ", "install_binary "];
        if !ours.iter().any(|p| line.starts_with(p)) {
            continue;
        }
        let words = sh_words(line).ok_or_else(|| {
            bad(&format!(
                "cannot read the line {:?}",
                crate::error::clip(line)
            ))
        })?;
        let w: Vec<&str> = words.iter().map(String::as_str).collect();
        let mode = |m: &str| u32::from_str_radix(m, 8).map_err(|_| bad("a mode is not octal"));
        let id = |n: &str| n.parse::<u32>().map_err(|_| bad("an owner is not numeric"));
        match w.as_slice() {
            [v] if v.starts_with("url=") => url = Some(v["url=".len()..].to_string()),
            [v] if v.starts_with("sha256=") => sha256 = Some(v["sha256=".len()..].to_string()),
            ["folder", m, uid, gid, path] => entries.push(Listed {
                path: path.to_string(),
                kind: "dir",
                mode: mode(m)?,
                uid: id(uid)?,
                gid: id(gid)?,
                size: Some(0),
                sha256: None,
                target: None,
            }),
            ["install_binary", src, sha, dest, m, owner, ..] => {
                let (uid, gid) = owner.split_once(':').ok_or_else(|| bad("bad owner"))?;
                entries.push(Listed {
                    path: dest.to_string(),
                    kind: "file",
                    mode: mode(m)?,
                    uid: id(uid)?,
                    gid: id(gid)?,
                    size: None,
                    sha256: Some(sha.to_string()),
                    target: Some(src.to_string()),
                });
            }
            _ => {
                return Err(bad(&format!(
                    "cannot read the line {:?}",
                    crate::error::clip(line)
                )));
            }
        }
    }
    match (url, sha256) {
        (Some(url), Some(sha256)) => Ok((Fetch { url, sha256 }, entries)),
        _ => Err(bad("no url= or sha256= line")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::fs;
    use std::io::{Read as _, Write as _};
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
    use std::path::Path;
    use std::process::Command;

    use crate::output::cloud_init::tests::{cloud_init_schema, write_files_with_cloud_init};
    use crate::output::cloud_init::{Provider, render, yaml};
    use crate::plan::fixture::{file, sample_plan};
    use crate::util::digest::sha256_hex;

    fn opts(binaries: Binaries, url: &str) -> Options {
        Options {
            binaries,
            provider: Provider::Aws,
            payload: Some(Payload::new(url, true, vec!["X-Token: t0ken".into()]).unwrap()),
            packages: true,
        }
    }

    /// A plan with a file owned by 1234:4321, mode 0640: numeric owners matter.
    fn owned_plan() -> Plan {
        let mut plan = sample_plan();
        let mut owned = file("var/lib/kubernetes/etcd.conf", 0o640, b"name: one\n", false);
        owned.uid = 1234;
        owned.gid = 4321;
        plan.entries.push(owned);
        plan.finish().unwrap();
        plan
    }

    #[test]
    fn user_data_is_small_valid_and_reads_back() {
        let plan = owned_plan();
        let dir = tempfile::tempdir().unwrap();
        for binaries in [
            Binaries::Baked,
            Binaries::Mirror("http://127.0.0.1:9/k8s".into()),
            Binaries::Seed,
        ] {
            let o = opts(
                binaries.clone(),
                "https://b.example/{name}.tar.gz?sig=a&b='c'",
            );
            let r = render(&plan, &o).unwrap();
            let p = r.payload.as_ref().unwrap();
            assert_eq!(p.fetch.sha256, sha256_hex(&p.bytes));
            assert_eq!(
                p.fetch.url,
                "https://b.example/controller-1.tar.gz?sig=a&b='c'"
            );
            // Byte for byte the node half of a split tar.gz.
            let half = tempfile::NamedTempFile::new().unwrap();
            tar::write_node_half(&plan, Compression::Gzip, half.path()).unwrap();
            assert_eq!(p.bytes, fs::read(half.path()).unwrap());
            assert!(!r.gzipped && r.user_data == r.user_data_text.as_bytes());
            assert!(r.user_data.len() < 6144, "{}", r.user_data_text);
            assert!(
                !r.user_data_text.contains("secret"),
                "a key in the user-data"
            );
            let ud = dir.path().join(format!("user-data-{}", binaries.name()));
            fs::write(&ud, &r.user_data).unwrap();
            cloud_init_schema(&ud);

            let back = yaml::parse_user_data(&r.user_data, "u").unwrap();
            assert_eq!(back.payload.as_ref(), Some(&p.fetch));
            assert_eq!(back.binaries, binaries.name());
            let bins: Vec<_> = back.entries.iter().filter(|e| e.kind == "file").collect();
            assert_eq!(back.carries_binaries, binaries != Binaries::Baked);
            if binaries == Binaries::Baked {
                assert!(back.entries.is_empty(), "{:?}", back.entries);
            } else {
                assert_eq!(bins.len(), 2);
                assert_eq!(back.entries.len(), 5, "{:?}", back.entries);
                assert_eq!(
                    r.seed_files.len(),
                    usize::from(binaries == Binaries::Seed) * 2
                );
            }
        }
    }

    #[test]
    fn too_large_for_the_provider_is_refused_with_sizes() {
        let plan = sample_plan();
        let mut o = opts(Binaries::Baked, "https://b.example/p");
        o.payload.as_mut().unwrap().headers = vec![format!("X-Big: {}", "a".repeat(20_000))];
        let err = render(&plan, &o).unwrap_err().to_string();
        assert!(
            err.contains("bytes (of which 20008 bytes of headers")
                && err.contains("the aws limit is 16384 bytes"),
            "{err}"
        );
        o.provider = Provider::Gcp;
        assert!(render(&plan, &o).is_ok());
    }

    /// Serve `body` to every request on 127.0.0.1; returns the URL and the
    /// request heads received.
    fn serve(body: Vec<u8>) -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/p.tar.gz", listener.local_addr().unwrap());
        let heads = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = heads.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                seen.lock()
                    .unwrap()
                    .push(String::from_utf8_lossy(&head).into_owned());
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(&body);
            }
        });
        (url, heads)
    }

    /// The script as cloud-init's own write_files module writes it from the
    /// user-data (tests/tools/cloud_init_write_files.py), under `root`.
    fn script_from_user_data(user_data: &[u8], root: &Path) -> std::path::PathBuf {
        let ud = root.join("user-data");
        fs::write(&ud, user_data).unwrap();
        write_files_with_cloud_init(&ud, root);
        let script = root.join(SCRIPT_PATH.trim_start_matches('/'));
        assert_eq!(
            fs::metadata(&script).unwrap().permissions().mode() & 0o777,
            0o700
        );
        script
    }

    /// The boot script, run for real by dash and by busybox sh (with only
    /// busybox's applets: its wget, tar, sha256sum), unpacks the payload with
    /// numeric owners and modes, sends the headers, starts the units, and the
    /// next run does nothing.
    #[test]
    fn script_unpacks_with_numeric_owners_in_dash_and_busybox() {
        let plan = owned_plan();
        let probe = render(&plan, &opts(Binaries::Baked, "http://127.0.0.1:9/p")).unwrap();
        let (url, heads) = serve(probe.payload.unwrap().bytes);
        let r = render(&plan, &opts(Binaries::Baked, &url)).unwrap();
        let work = tempfile::tempdir().unwrap();
        let script = script_from_user_data(&r.user_data, work.path());
        let stubs = work.path().join("stubs");
        fs::create_dir(&stubs).unwrap();
        let log = work.path().join("systemctl.log");
        fs::write(
            stubs.join("systemctl"),
            format!("#!/bin/sh\necho \"$*\" >>{}\n", log.display()),
        )
        .unwrap();
        fs::set_permissions(stubs.join("systemctl"), fs::Permissions::from_mode(0o755)).unwrap();
        for (shell, path) in [
            (
                vec!["/bin/sh"],
                format!("{}:/usr/bin:/bin", stubs.display()),
            ),
            (vec!["/usr/bin/busybox", "sh"], stubs.display().to_string()),
        ] {
            let root = tempfile::tempdir().unwrap();
            let tmp = tempfile::tempdir().unwrap();
            let _ = fs::remove_file(&log);
            let run = || {
                Command::new(shell[0])
                    .args(&shell[1..])
                    .arg(&script)
                    .env_clear()
                    .env("PATH", &path)
                    .env("IMGBUILD_ROOT", root.path())
                    .env("TMPDIR", tmp.path())
                    .output()
                    .unwrap()
            };
            let out = run();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.status.success(), "{shell:?}: {said}");
            let f = root.path().join("var/lib/kubernetes/etcd.conf");
            let md = fs::metadata(&f).unwrap();
            assert_eq!(
                (md.uid(), md.gid(), md.mode() & 0o7777),
                (1234, 4321, 0o640),
                "{shell:?}"
            );
            let md = fs::metadata(root.path().join("var/lib/kubernetes")).unwrap();
            assert_eq!(md.mode() & 0o7777, 0o700, "{shell:?}");
            let key = root.path().join("var/lib/kubernetes/ca-key.pem");
            assert_eq!(fs::metadata(&key).unwrap().mode() & 0o7777, 0o600);
            assert!(fs::read_to_string(&key).unwrap().contains("secret"));
            assert!(
                fs::symlink_metadata(
                    root.path()
                        .join("etc/systemd/system/multi-user.target.wants/kube-apiserver.service")
                )
                .unwrap()
                .file_type()
                .is_symlink()
            );
            assert_eq!(
                fs::read_to_string(&log).unwrap(),
                "daemon-reload\nstart --no-block kube-apiserver.service\n",
                "{shell:?}"
            );
            assert!(
                heads
                    .lock()
                    .unwrap()
                    .last()
                    .unwrap()
                    .contains("X-Token: t0ken\r\n")
            );
            assert_eq!(
                fs::read_dir(tmp.path()).unwrap().count(),
                0,
                "download left behind"
            );
            let requests = heads.lock().unwrap().len();
            let again = run();
            assert!(again.status.success());
            assert!(String::from_utf8_lossy(&again.stdout).contains("already installed"));
            assert_eq!(
                heads.lock().unwrap().len(),
                requests,
                "{shell:?}: fetched again"
            );
        }
    }

    #[test]
    fn urls_are_https_with_known_placeholders() {
        let p = Payload::new(
            "https://b.example/{name}-{node}.tar.gz?X-Amz=1&y=%2F",
            false,
            vec![],
        )
        .unwrap();
        assert!(p.per_node());
        assert_eq!(
            p.url_for(3, "controller-3"),
            "https://b.example/controller-3-3.tar.gz?X-Amz=1&y=%2F"
        );
        for (bad, why) in [
            ("http://b.example/x", "https:// only"),
            ("ftp://b.example/x", "expected an https:// URL"),
            ("https:///x", "no host"),
            ("https://b.example/a b", "percent-encoded"),
            ("https://b.example/é", "percent-encoded"),
            ("https://b.example/{nodes}", "placeholders"),
            ("https://b.example/{node", "placeholders"),
        ] {
            let err = Payload::new(bad, false, vec![]).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let p = Payload::new("http://127.0.0.1:8080/p", true, vec![]).unwrap();
        assert!(!p.per_node());
    }

    #[test]
    fn headers_are_name_value_lines_and_errors_never_quote_them() {
        let h = parse_headers(
            "# a token\nAuthorization: Bearer abc'def\r\n\nX-Trace:\t1 \n",
            "h.txt",
        )
        .unwrap();
        assert_eq!(h, ["Authorization: Bearer abc'def", "X-Trace: 1"]);
        for bad in [
            "Authorization Bearer sekrit",
            "Bad Name: sekrit",
            "X:",
            "X: sek\u{7}rit",
            "X: sékrit",
        ] {
            let err = parse_headers(bad, "h.txt").unwrap_err().to_string();
            assert!(
                err.contains("h.txt line 1") && !err.contains("sek"),
                "{err}"
            );
        }
        assert!(parse_headers("# nothing\n", "h.txt").is_err());
    }

    #[test]
    fn words_read_back_as_quoted() {
        for s in ["plain/x-1.2", "", "it's", "a b&c?d=%2F", "'", "$r \\"] {
            let line = format!("x {} \"$r\"{}", sh_quote(s), sh_quote(s));
            assert_eq!(
                sh_words(&line).unwrap(),
                ["x".to_string(), s.to_string(), s.to_string()],
                "{line}"
            );
            // dash reads them the same way.
            let out = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(format!(
                    "r=; printf '%s\\n' {} \"$r\"{}",
                    sh_quote(s),
                    sh_quote(s)
                ))
                .output()
                .unwrap();
            assert_eq!(
                String::from_utf8(out.stdout).unwrap(),
                format!("{s}\n{s}\n")
            );
        }
        assert_eq!(sh_words("a \"$x\""), None);
    }
}
