//! Parsed arguments turned into the library's options, validated before any
//! file is read or any network is touched: everything that needs no file is
//! checked here (format × split, thread count, mtime, binaries mode).

use std::time::Duration;

use imgbuild::Error;
use imgbuild::acquire::fetch::FetchOptions;
use imgbuild::build::{CloudInitOptions, ControllerOptions, IgnitionOptions};
use imgbuild::input::assets::Assets;
use imgbuild::input::profile::DEFAULT_OS;
use imgbuild::input::{Selection, Session};
use imgbuild::output::cloud_init::payload::{self, Payload};
use imgbuild::output::format::Format;
use imgbuild::output::{Target, cloud_init, ignition};
use imgbuild::store::cache::Cache;

use crate::cli::args::{
    CloudInitArgs, ControllerArgs, FetchArgs, Global, IgnitionArgs, NodeArgs, PkiInitArgs,
};

/// `--os NAME`: a profile of the layout, which says whether it exists once it
/// is read; here only that it is a plain name.
pub fn os_name(name: &str) -> imgbuild::Result<String> {
    let plain = !name.is_empty()
        && name.len() <= 32
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if plain {
        Ok(name.to_string())
    } else {
        Err(Error::input(format!(
            "--os {:?}: expected the name of an OS profile of the layout (debian, flatcar, fcos)",
            imgbuild::error::clip(name)
        )))
    }
}

/// `SOURCE_DATE_EPOCH` (flag or environment), validated; 0 when unset.
fn mtime(flag: Option<&str>) -> imgbuild::Result<u64> {
    let (value, from) = match flag {
        Some(v) => (v.to_string(), "--source-date-epoch"),
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) if !v.is_empty() => (v, "the environment variable SOURCE_DATE_EPOCH"),
            _ => return Ok(0),
        },
    };
    value.trim().parse::<u64>().map_err(|_| {
        Error::input(format!(
            "{from} = {:?}: expected whole seconds since 1970-01-01 UTC (e.g. 1700000000); \
             unset it for the default (0)",
            imgbuild::error::clip(&value)
        ))
    })
}

/// Threads that compress and write: `IMGBUILD_THREADS`, or every core.
fn threads() -> imgbuild::Result<usize> {
    match std::env::var("IMGBUILD_THREADS") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=1024).contains(n))
            .ok_or_else(|| {
                Error::input(format!(
                    "IMGBUILD_THREADS = {:?}: expected a number of threads from 1 to 1024 (unset it to use every core)",
                    imgbuild::error::clip(&v)
                ))
            }),
        _ => Ok(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)),
    }
}

impl Global {
    pub fn session(&self) -> imgbuild::Result<Session> {
        let cache_dir = self.cache.clone().unwrap_or_else(Cache::default_root);
        Ok(Session {
            inventory: self.inventory.clone(),
            // Locks (`imgbuild lock`, `airgap import`) come after --recipes.
            assets: Assets {
                recipe_dirs: self.recipes.iter().cloned().collect(),
                lock_dirs: vec![cache_dir.join("locks")],
                overlay_dir: self.overlays.clone(),
            },
            cache_dir,
            mtime: mtime(self.source_date_epoch.as_deref())?,
        })
    }
}

impl PkiInitArgs {
    pub fn options(&self) -> imgbuild::pki::InitOptions {
        imgbuild::pki::InitOptions {
            days: self.days,
            ca_days: self.ca_days,
            renew: self.renew,
            force: self.force,
            // clap admits only the two names.
            encryption: self.encryption.as_deref().and_then(|c| c.parse().ok()),
            drop_old_keys: self.drop_old_keys,
        }
    }
}

impl NodeArgs {
    /// The selected nodes, built with OS profile `os`.
    pub fn select(&self, os: &str) -> imgbuild::Result<Selection> {
        Ok(Selection {
            nodes: self.node.clone(),
            all: self.all,
            os: os_name(os)?,
        })
    }
}

impl ControllerArgs {
    pub fn options(&self) -> imgbuild::Result<ControllerOptions> {
        let format = Format::parse(
            self.format.as_deref().unwrap_or("tar"),
            self.compression.as_deref(),
        )?;
        if self.split && !format.splits() {
            return Err(Error::input(format!(
                "--split applies to archives (--format tar.gz, tar.zst, cpio, cpio.gz, ...), not to --format {format}"
            )));
        }
        Ok(ControllerOptions {
            select: self.nodes.select(&self.os)?,
            target: Target {
                format,
                split: self.split,
                out_dir: self.out.clone(),
                threads: threads()?,
            },
        })
    }
}

impl FetchArgs {
    pub fn options(&self) -> FetchOptions {
        FetchOptions {
            mirror: self.mirror.clone().filter(|m| !m.is_empty()),
            jobs: self.jobs,
            ca_cert: self.ca_cert.clone(),
            allow_http: self.allow_http,
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            read_timeout: Duration::from_secs(self.read_timeout.max(1)),
            tries: self.tries,
            ..FetchOptions::default()
        }
    }
}

impl CloudInitArgs {
    pub fn options(&self) -> imgbuild::Result<CloudInitOptions> {
        Ok(CloudInitOptions {
            select: self.nodes.select(DEFAULT_OS)?,
            cloud_init: cloud_init::Options {
                binaries: self.binaries.parse()?,
                provider: self.provider,
                payload: self.payload()?,
                packages: !self.no_packages,
            },
            out_dir: self.out.clone(),
        })
    }

    /// `--payload-url` and `--payload-header-file`, checked before the
    /// inventory is read (the header file is the one file read here).
    fn payload(&self) -> imgbuild::Result<Option<Payload>> {
        let Some(url) = &self.payload_url else {
            return Ok(None);
        };
        let headers = match &self.payload_header_file {
            Some(file) => {
                let text = std::fs::read_to_string(file)
                    .map_err(|e| Error::io("cannot read the header file", file, e))?;
                payload::parse_headers(&text, &file.display().to_string())?
            }
            None => Vec::new(),
        };
        let p = Payload::new(url, self.allow_http, headers)?;
        if !p.per_node() && (self.nodes.all || self.nodes.node.len() > 1) {
            return Err(Error::input(format!(
                "--payload-url {}: one URL for several nodes; name each node's payload with {{node}} or {{name}}",
                imgbuild::error::clip(url)
            )));
        }
        Ok(Some(p))
    }
}

impl IgnitionArgs {
    pub fn options(&self) -> imgbuild::Result<IgnitionOptions> {
        let binaries = match &self.binaries {
            Some(b) => b.parse()?,
            None => ignition::Binaries::Mirror(ignition::DEFAULT_MIRROR.to_string()),
        };
        Ok(IgnitionOptions {
            select: self.nodes.select(&self.os)?,
            ignition: ignition::Options {
                spec: self.spec.parse()?,
                binaries,
            },
            out_dir: self.out.clone(),
        })
    }
}
