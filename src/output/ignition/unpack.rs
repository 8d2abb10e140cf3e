//! Binaries a publisher serves only inside a release archive (etcd's), with
//! `--binaries mirror=URL`: Ignition cannot unpack an archive, so the config
//! has it fetch the archive itself (its `verification.hash` the recipe's pin,
//! which Ignition checks before it writes a byte) into [`ARCHIVES`], and a
//! one-shot unit, [`UNIT`], ordered before every unit the layout enables,
//! takes each member out, checks it against the sha256 the plan records,
//! installs it with its mode, and removes the archives and itself. It runs
//! while [`ARCHIVES`] exists, so once (and again at the next boot if it failed).
//!
//! `read` turns these three back into the binaries they install, so `inspect
//! --verify` checks them against the manifest like any remote binary.

use std::collections::BTreeMap;

use super::config::{Contents, File, Id, Unit, Verification};
use crate::error::{Error, Result};

/// Where Ignition writes the archives.
pub const ARCHIVES: &str = "/var/lib/imgbuild/archives";
/// The script the unit runs (with /bin/sh: no exec bit needed under /var).
pub const SCRIPT: &str = "/var/lib/imgbuild/unpack";
/// The one-shot unit.
pub const UNIT: &str = "imgbuild-unpack.service";

const SCRIPT_TEXT: &str = r#"#!/bin/sh
# imgbuild: install the binaries this node's Ignition config fetched as release
# archives (Ignition checked each archive against its pin): every member is
# checked against its sha256, then installed; then the archives and this
# script are removed. Arguments: ARCHIVE MEMBER SHA256 DEST MODE, repeated.
# Paths are under $IMGBUILD_ROOT (default /).
set -eu
r=${IMGBUILD_ROOT:-}
while [ "$#" -ge 5 ]; do
  archive=$r$1 member=$2 sha=$3 dest=$r$4 mode=$5
  shift 5
  tmp="$dest.imgbuild-new"
  mkdir -p "$(dirname "$dest")"
  tar -xzOf "$archive" "$member" >"$tmp"
  actual=$(sha256sum "$tmp" | cut -d' ' -f1)
  if [ "$actual" != "$sha" ]; then
    rm -f "$tmp"
    echo "imgbuild: $member of $archive has sha256 $actual, expected $sha: not installed" >&2
    exit 1
  fi
  chmod "$mode" "$tmp"
  mv -f "$tmp" "$dest"
done
rm -rf "$r/var/lib/imgbuild/archives"
rm -f "$0"
"#;

/// One member to install from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub member: String,
    pub sha256: String,
    /// Absolute path.
    pub dest: String,
    pub mode: u32,
}

/// The archives the node fetches (by file name: URL, pin) and what it takes
/// from each.
#[derive(Debug, Default)]
pub struct Unpack {
    archives: BTreeMap<String, (String, String, Vec<Member>)>,
}

impl Unpack {
    /// Take `member` of the archive `file` (fetched from `url`, pinned
    /// `algorithm:hex`) into `dest`.
    pub fn add(&mut self, file: &str, url: &str, pin: &str, member: Member) {
        self.archives
            .entry(file.to_string())
            .or_insert_with(|| (url.to_string(), pin.to_string(), Vec::new()))
            .2
            .push(member);
    }

    pub fn is_empty(&self) -> bool {
        self.archives.is_empty()
    }

    /// The archives, the script, and the unit (enabled, ordered before
    /// every unit of `before`).
    pub fn into_config(self, before: &[String]) -> Result<(Vec<File>, Unit)> {
        let root = Id { id: 0 };
        let mut files = Vec::new();
        let mut args = Vec::new();
        for (file, (url, pin, members)) in self.archives {
            let (alg, hex) = pin
                .split_once(':')
                .ok_or_else(|| Error::input(format!("{file}: pin {pin:?} is not algorithm:hex")))?;
            let path = format!("{ARCHIVES}/{file}");
            files.push(File {
                path: path.clone(),
                overwrite: true,
                contents: Contents {
                    source: url,
                    compression: None,
                    verification: Some(Verification {
                        hash: format!("{alg}-{hex}"),
                    }),
                },
                mode: 0o600,
                user: root,
                group: root,
            });
            for m in members {
                args.extend([
                    path.clone(),
                    m.member,
                    m.sha256,
                    m.dest,
                    format!("{:04o}", m.mode),
                ]);
            }
        }
        files.push(File {
            path: SCRIPT.into(),
            overwrite: true,
            contents: super::config::data_contents(SCRIPT_TEXT.as_bytes()),
            mode: 0o644,
            user: root,
            group: root,
        });
        let unit = format!(
            "# imgbuild: install binaries fetched as release archives, once.\n\
             [Unit]\n\
             Description=Install the binaries Ignition fetched as release archives\n\
             ConditionPathIsDirectory={ARCHIVES}\n\
             Before={}\n\
             \n\
             [Service]\n\
             Type=oneshot\n\
             RemainAfterExit=yes\n\
             ExecStart=/bin/sh {SCRIPT} {}\n\
             \n\
             [Install]\n\
             WantedBy=multi-user.target\n",
            before.join(" "),
            args.join(" ")
        );
        Ok((
            files,
            Unit {
                name: UNIT.into(),
                enabled: Some(true),
                contents: Some(unit),
            },
        ))
    }
}

/// The (ARCHIVE MEMBER SHA256 DEST MODE) groups of the unit's ExecStart.
pub fn parse_unit(text: &str) -> Option<Vec<(String, Member)>> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/bin/sh "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let (script, rest) = words.split_first()?;
    if *script != SCRIPT || rest.len() % 5 != 0 {
        return None;
    }
    rest.chunks(5)
        .map(|c| {
            Some((
                c[0].to_string(),
                Member {
                    member: c[1].to_string(),
                    sha256: c[2].to_string(),
                    dest: c[3].to_string(),
                    mode: u32::from_str_radix(c[4], 8).ok()?,
                },
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script, run for real with /bin/sh in a temporary root: the good
    /// member is installed with its mode, archives and script are gone; a
    /// wrong sha256 installs nothing and keeps the archive for the next boot.
    #[test]
    fn the_script_installs_checked_members_and_cleans_up() {
        use std::os::unix::fs::PermissionsExt as _;
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        let body: &[u8] = b"#!/bin/sh\necho etcd\n";
        let archive = crate::plan::fixture::tar_gz(&[("etcd-v3.6.5-linux-amd64/etcd", body)]);
        let run = |sha: &str| {
            std::fs::create_dir_all(r.join("var/lib/imgbuild/archives")).unwrap();
            std::fs::write(r.join("var/lib/imgbuild/archives/e.tar.gz"), &archive).unwrap();
            std::fs::write(r.join("var/lib/imgbuild/unpack"), SCRIPT_TEXT).unwrap();
            std::process::Command::new("sh")
                .arg(r.join("var/lib/imgbuild/unpack"))
                .args([
                    &format!("{ARCHIVES}/e.tar.gz"),
                    "etcd-v3.6.5-linux-amd64/etcd",
                    sha,
                    "/opt/bin/etcd",
                    "0750",
                ])
                .env("IMGBUILD_ROOT", r)
                .output()
                .unwrap()
        };
        let bad = run(&crate::util::digest::sha256_hex(b"other"));
        assert!(!bad.status.success());
        assert!(String::from_utf8_lossy(&bad.stderr).contains("not installed"));
        assert!(!r.join("opt/bin/etcd").exists());
        assert!(r.join("var/lib/imgbuild/archives/e.tar.gz").exists());
        let good = run(&crate::util::digest::sha256_hex(body));
        assert!(
            good.status.success(),
            "{}",
            String::from_utf8_lossy(&good.stderr)
        );
        assert_eq!(std::fs::read(r.join("opt/bin/etcd")).unwrap(), body);
        let mode = std::fs::metadata(r.join("opt/bin/etcd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        assert!(!r.join("var/lib/imgbuild/archives").exists());
        assert!(!r.join("var/lib/imgbuild/unpack").exists());
    }

    #[test]
    fn the_unit_reads_back() {
        let mut u = Unpack::default();
        let m = Member {
            member: "etcd-v3.6.5-linux-amd64/etcd".into(),
            sha256: "ab".repeat(32),
            dest: "/opt/bin/etcd".into(),
            mode: 0o755,
        };
        u.add(
            "etcd-v3.6.5-linux-amd64.tar.gz",
            "https://example/etcd.tar.gz",
            &format!("sha256:{}", "cd".repeat(32)),
            m.clone(),
        );
        let (files, unit) = u.into_config(&["etcd.service".into()]).unwrap();
        assert_eq!(files.len(), 2);
        assert_eq!(
            files[0].contents.verification.as_ref().unwrap().hash,
            format!("sha256-{}", "cd".repeat(32))
        );
        let text = unit.contents.unwrap();
        assert!(text.contains("Before=etcd.service\n"), "{text}");
        let parsed = parse_unit(&text).unwrap();
        assert_eq!(
            parsed,
            [(format!("{ARCHIVES}/etcd-v3.6.5-linux-amd64.tar.gz"), m)]
        );
    }
}
