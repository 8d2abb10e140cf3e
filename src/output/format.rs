//! Output formats and the names of what they write: the format owns its
//! file names, so building, listing and inspecting agree on them.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    TarGz,
    Dir,
    /// Initramfs: newc cpio, uncompressed or gzipped.
    Cpio,
    CpioGz,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::TarGz, Format::Dir, Format::Cpio, Format::CpioGz];

    /// The name on the command line, which is also the archive's extension.
    pub fn name(self) -> &'static str {
        match self {
            Format::TarGz => "tar.gz",
            Format::Dir => "dir",
            Format::Cpio => "cpio",
            Format::CpioGz => "cpio.gz",
        }
    }

    /// Whether `--split` applies: archives split into a shared and a node half.
    pub fn splits(self) -> bool {
        self != Format::Dir
    }

    /// What a node's build writes: `controller-N.EXT`, or the folder `controller-N`.
    pub fn whole(self, node: usize) -> String {
        match self {
            Format::Dir => node_stem(node),
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

    /// How the manifest names the format of a build.
    pub fn manifest_label(self, split: bool) -> String {
        if split {
            format!("{} (split)", self.name())
        } else {
            self.name().to_string()
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = Error;
    fn from_str(s: &str) -> Result<Format> {
        Format::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                Error::input(format!(
                    "--format {s:?}: expected one of {}",
                    names.join(", ")
                ))
            })
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
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
            assert_eq!(node_of(&f.whole(12)), Some(12));
        }
        assert_eq!(node_of(&Format::Cpio.node_half(3)), Some(3));
        assert_eq!(node_of(&manifest_name(7)), Some(7));
        assert_eq!(node_of(&cloud_init_dir(2)), Some(2));
        assert_eq!(payload_name(4), "controller-4-payload.tar.gz");
        assert!(is_payload("controller-4-payload.tar.gz"));
        assert!(!is_payload("controller-4-node.tar.gz") && !is_payload("x-payload.tar.gz"));
        let shared = Format::CpioGz.shared_half("v1.36.0", "amd64");
        assert_eq!(shared, "controller-shared-v1.36.0-amd64.cpio.gz");
        assert!(is_shared_half(&shared) && node_of(&shared).is_none());
        assert!("zip".parse::<Format>().is_err());
    }
}
