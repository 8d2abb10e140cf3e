//! Output formats and the names of what they write: the format owns its
//! file names, so building, listing and inspecting agree on them. A format
//! is an archive (tar, newc cpio, or the folder itself) and its compression
//! (gzip, zstd at a level, or none); its name, the extension, says both.

use std::fmt;
use std::str::FromStr;

use crate::codec::zstd;
use crate::error::{Error, Result};

/// What holds a node's entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Archive {
    /// A rootfs overlay (ustar).
    Tar,
    /// An initramfs (newc).
    Cpio,
    /// The tree itself, in a folder.
    Dir,
}

/// How an archive is compressed. Part of every cached segment's key: the
/// bytes depend on it (and on the level).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    /// zlib-rs at `codec::gz::LEVEL`.
    Gzip,
    /// libzstd at this level (`codec::zstd::LEVELS`).
    Zstd(i32),
}

impl Compression {
    /// The names `--compression` takes (zstd also as `zstd:LEVEL`).
    pub const NAMES: [&str; 3] = ["gzip", "zstd", "none"];

    fn same_kind(self, other: Compression) -> bool {
        std::mem::discriminant(&self) == std::mem::discriminant(&other)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Gzip => f.write_str("gzip"),
            Compression::Zstd(level) => write!(f, "zstd:{level}"),
        }
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Compression> {
        let (name, level) = match s.split_once(':') {
            Some((name, level)) => (name, Some(level)),
            None => (s, None),
        };
        let (lo, hi) = (zstd::LEVELS.start(), zstd::LEVELS.end());
        match (name, level) {
            ("none", None) => Ok(Compression::None),
            ("gzip", None) => Ok(Compression::Gzip),
            ("zstd", None) => Ok(Compression::Zstd(zstd::DEFAULT_LEVEL)),
            ("zstd", Some(level)) => level
                .parse::<i32>()
                .ok()
                .filter(|l| zstd::LEVELS.contains(l))
                .map(Compression::Zstd)
                .ok_or_else(|| {
                    Error::input(format!(
                        "--compression {s:?}: the zstd level is a number from {lo} to {hi} (default {})",
                        zstd::DEFAULT_LEVEL
                    ))
                }),
            _ => Err(Error::input(format!(
                "--compression {s:?}: expected gzip, zstd, zstd:LEVEL ({lo} to {hi}) or none"
            ))),
        }
    }
}

/// An output format: an archive and its compression. Its name is the
/// extension of what it writes (`tar.gz`, `cpio.zst`, `cpio`, ..., or `dir`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub archive: Archive,
    /// `None` for a folder.
    pub compression: Compression,
}

impl Format {
    pub const TAR_GZ: Format = Format::new(Archive::Tar, Compression::Gzip);
    pub const DIR: Format = Format::new(Archive::Dir, Compression::None);
    pub const CPIO: Format = Format::new(Archive::Cpio, Compression::None);
    pub const CPIO_GZ: Format = Format::new(Archive::Cpio, Compression::Gzip);

    /// The names `--format` takes. `tar` and `cpio` alone take their
    /// compression from `--compression`; without it, `tar` is gzipped (as the
    /// default `tar.gz`) and `cpio` is not (as `--format cpio` always was).
    pub const NAMES: [&str; 7] = [
        "tar.gz", "tar.zst", "tar", "cpio", "cpio.gz", "cpio.zst", "dir",
    ];

    pub const fn new(archive: Archive, compression: Compression) -> Format {
        Format {
            archive,
            compression,
        }
    }

    /// The name on the command line, which is also the archive's extension.
    pub fn name(self) -> &'static str {
        use Compression::{Gzip, None, Zstd};
        match (self.archive, self.compression) {
            (Archive::Dir, _) => "dir",
            (Archive::Tar, None) => "tar",
            (Archive::Tar, Gzip) => "tar.gz",
            (Archive::Tar, Zstd(_)) => "tar.zst",
            (Archive::Cpio, None) => "cpio",
            (Archive::Cpio, Gzip) => "cpio.gz",
            (Archive::Cpio, Zstd(_)) => "cpio.zst",
        }
    }

    /// `--format NAME` with `--compression` (if given): the format's own
    /// suffix and `--compression` must agree (a zstd level may be added to
    /// `tar.zst` or `cpio.zst`); a folder is not compressed.
    pub fn parse(name: &str, compression: Option<&str>) -> Result<Format> {
        let named: Format = name.parse()?;
        let Some(c) = compression else {
            return Ok(named);
        };
        let c: Compression = c.parse()?;
        let bare = !name.contains('.');
        match named.archive {
            Archive::Dir if c != Compression::None => Err(Error::input(format!(
                "--format dir writes the tree itself: --compression {c} applies to tar and cpio"
            ))),
            _ if bare || named.compression.same_kind(c) => Ok(Format::new(named.archive, c)),
            archive => Err(Error::input(format!(
                "--format {name} is {} compressed: for --compression {c} give --format {}",
                named.compression,
                if archive == Archive::Tar {
                    "tar"
                } else {
                    "cpio"
                }
            ))),
        }
    }

    /// Whether `--split` applies: archives split into a shared and a node half.
    pub fn splits(self) -> bool {
        self.archive != Archive::Dir
    }

    /// What a node's build writes: `controller-N.EXT`, or the folder `controller-N`.
    pub fn whole(self, node: usize) -> String {
        match self.archive {
            Archive::Dir => node_stem(node),
            _ => format!("{}.{}", node_stem(node), self.name()),
        }
    }

    /// A split build's node half: `controller-N-node.EXT`.
    pub fn node_half(self, node: usize) -> String {
        format!("{}-node.{}", node_stem(node), self.name())
    }

    /// A split build's shared half: `controller-shared-VERSION-ARCH.EXT`.
    pub fn shared_half(self, version: &str, arch: &str) -> String {
        format!("{SHARED_PREFIX}{version}-{arch}.{}", self.name())
    }

    /// How the manifest names the format of a build (with the zstd level,
    /// which the bytes depend on).
    pub fn manifest_label(self, split: bool) -> String {
        let mut notes = Vec::new();
        if let Compression::Zstd(level) = self.compression {
            notes.push(format!("zstd level {level}"));
        }
        if split {
            notes.push("split".to_string());
        }
        if notes.is_empty() {
            self.name().to_string()
        } else {
            format!("{} ({})", self.name(), notes.join(", "))
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `--format` name alone: the compression its suffix says, or for `tar`
/// and `cpio` alone their default (gzip, none).
impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        let (archive, compression) = match s {
            "tar" | "tar.gz" => (Archive::Tar, Compression::Gzip),
            "tar.zst" => (Archive::Tar, Compression::Zstd(zstd::DEFAULT_LEVEL)),
            "cpio" => (Archive::Cpio, Compression::None),
            "cpio.gz" => (Archive::Cpio, Compression::Gzip),
            "cpio.zst" => (Archive::Cpio, Compression::Zstd(zstd::DEFAULT_LEVEL)),
            "dir" => (Archive::Dir, Compression::None),
            _ => {
                return Err(Error::input(format!(
                    "--format {s:?}: expected one of {}",
                    Format::NAMES.join(", ")
                )));
            }
        };
        Ok(Format::new(archive, compression))
    }
}

const SHARED_PREFIX: &str = "controller-shared-";

/// `controller-N`: every output of node N starts so.
pub fn node_stem(node: usize) -> String {
    format!("controller-{node}")
}

/// `controller-N.manifest.json`, shared by every format of node N.
pub fn manifest_name(node: usize) -> String {
    format!("{}.manifest.json", node_stem(node))
}

/// `controller-N-cloud-init`: the folder `imgbuild cloud-init` writes.
pub fn cloud_init_dir(node: usize) -> String {
    format!("{}-cloud-init", node_stem(node))
}

/// `controller-N-payload.tar.gz`: the node's own files that a small user-data
/// fetches (`imgbuild cloud-init --payload-url`).
pub fn payload_name(node: usize) -> String {
    format!("{}{PAYLOAD_SUFFIX}", node_stem(node))
}

const PAYLOAD_SUFFIX: &str = "-payload.tar.gz";

/// Whether a file name is a node's payload (`controller-N-payload.tar.gz`).
pub fn is_payload(file_name: &str) -> bool {
    node_of(file_name).is_some_and(|n| file_name == payload_name(n))
}

/// `controller-N.ign`: the Ignition config `imgbuild ignition` writes.
pub fn ignition_name(node: usize) -> String {
    format!("{}.ign", node_stem(node))
}

/// The checksum file of an output folder.
pub const SUMS: &str = "SHA256SUMS";

/// The node an output's file name belongs to (`controller-N...`), if any.
pub fn node_of(file_name: &str) -> Option<usize> {
    let rest = file_name.strip_prefix("controller-")?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok().filter(|n| *n > 0)
}

/// Whether a file name is a split build's shared half.
pub fn is_shared_half(file_name: &str) -> bool {
    file_name.starts_with(SHARED_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back() {
        for name in Format::NAMES {
            let f: Format = name.parse().unwrap();
            assert_eq!(node_of(&f.whole(12)), Some(12));
            if name != "tar" {
                assert_eq!(f.name(), name);
            }
        }
        assert_eq!(node_of(&Format::CPIO.node_half(3)), Some(3));
        assert_eq!(node_of(&manifest_name(7)), Some(7));
        assert_eq!(node_of(&cloud_init_dir(2)), Some(2));
        assert_eq!(payload_name(4), "controller-4-payload.tar.gz");
        assert!(is_payload("controller-4-payload.tar.gz"));
        assert!(!is_payload("controller-4-node.tar.gz") && !is_payload("x-payload.tar.gz"));
        assert_eq!(node_of(&ignition_name(4)), Some(4));
        let shared = Format::CPIO_GZ.shared_half("v1.36.0", "amd64");
        assert_eq!(shared, "controller-shared-v1.36.0-amd64.cpio.gz");
        assert!(is_shared_half(&shared) && node_of(&shared).is_none());
        assert!("zip".parse::<Format>().is_err());
    }

    /// `--format` and `--compression` together: the names and labels of
    /// every combination, and the ones refused.
    #[test]
    fn formats_and_compressions_combine() {
        let ok = |f: &str, c: Option<&str>| Format::parse(f, c).unwrap();
        // Today's names, unchanged.
        assert_eq!(ok("tar.gz", None), Format::TAR_GZ);
        assert_eq!(ok("cpio", None), Format::CPIO);
        assert_eq!(ok("cpio.gz", None), Format::CPIO_GZ);
        assert_eq!(ok("dir", None), Format::DIR);
        assert_eq!(ok("tar", None).whole(1), "controller-1.tar.gz");
        assert_eq!(ok("tar.gz", None).manifest_label(true), "tar.gz (split)");
        // zstd: the extension, the default level and an explicit one.
        let zst = ok("tar", Some("zstd"));
        assert_eq!(zst, ok("tar.zst", None));
        assert_eq!(zst.compression, Compression::Zstd(zstd::DEFAULT_LEVEL));
        assert_eq!(zst.whole(2), "controller-2.tar.zst");
        assert_eq!(zst.manifest_label(false), "tar.zst (zstd level 3)");
        let c19 = ok("cpio", Some("zstd:19"));
        assert_eq!(c19, ok("cpio.zst", Some("zstd:19")));
        assert_eq!(c19.node_half(4), "controller-4-node.cpio.zst");
        assert_eq!(
            c19.shared_half("v1.36.0", "arm64"),
            "controller-shared-v1.36.0-arm64.cpio.zst"
        );
        assert_eq!(c19.manifest_label(true), "cpio.zst (zstd level 19, split)");
        assert_eq!(ok("tar", Some("none")).whole(1), "controller-1.tar");
        assert_eq!(ok("cpio", Some("gzip")), Format::CPIO_GZ);
        assert_eq!(ok("tar.gz", Some("gzip")), Format::TAR_GZ);
        assert_eq!(ok("dir", Some("none")), Format::DIR);
        for (f, c, says) in [
            (
                "tar.gz",
                "zstd",
                "--format tar.gz is gzip compressed: for --compression zstd:3 give --format tar",
            ),
            ("cpio.zst", "gzip", "give --format cpio"),
            ("cpio", "zstd:0", "a number from 1 to 19"),
            ("cpio", "zstd:20", "a number from 1 to 19"),
            ("tar", "zstd:x", "a number from 1 to 19"),
            ("tar", "xz", "expected gzip, zstd, zstd:LEVEL"),
            ("tar", "gzip:9", "expected gzip, zstd, zstd:LEVEL"),
            ("dir", "zstd", "applies to tar and cpio"),
        ] {
            let err = Format::parse(f, Some(c)).unwrap_err().to_string();
            assert!(err.contains(says), "{f} {c}: {err}");
        }
        for c in Compression::NAMES {
            assert_eq!(
                c.parse::<Compression>()
                    .unwrap()
                    .to_string()
                    .split(':')
                    .next(),
                Some(c)
            );
        }
    }
}
