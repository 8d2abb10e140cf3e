//! Command-line arguments, and turning them into the library's options.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use imgbuild::assets::Assets;
use imgbuild::build::{CloudInitOptions, ControllerOptions, Format, Session};
use imgbuild::cache::Cache;

#[derive(Debug, Parser)]
#[command(
    name = "imgbuild",
    version,
    about = "Build what a Kubernetes control-plane node boots from: rootfs overlays, initramfs, cloud-init",
    long_about = None
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Cluster inventory (relative paths inside resolve against its folder).
    #[arg(
        long,
        global = true,
        default_value = "cluster.toml",
        value_name = "FILE"
    )]
    pub inventory: PathBuf,
    /// Artifact cache [default: $XDG_CACHE_HOME/imgbuild or ~/.cache/imgbuild].
    #[arg(long, global = true, env = "IMGBUILD_CACHE", value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// Extra folder of recipes (and layouts/), searched before the built-in ones.
    #[arg(long, global = true, env = "IMGBUILD_RECIPES", value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    /// Folder of overlays, searched before the built-in ones.
    #[arg(long, global = true, env = "IMGBUILD_OVERLAYS", value_name = "DIR")]
    pub overlays: Option<PathBuf>,
    /// Entry mtimes in outputs (seconds since the epoch) [default: 0].
    #[arg(
        long,
        global = true,
        env = "SOURCE_DATE_EPOCH",
        value_name = "SECONDS",
        hide_env_values = true
    )]
    pub source_date_epoch: Option<u64>,
    /// Print nothing but errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a controller's rootfs overlay (out/controller-N.tar.gz and its manifest).
    Controller(ControllerArgs),
    /// Build a controller's cloud-init (out/controller-N-cloud-init/: user-data,
    /// meta-data, network-config, NoCloud seed.img) and its manifest.
    CloudInit(CloudInitArgs),
    /// List the entries of an output; with --verify, check them against the manifest.
    Inspect(InspectArgs),
    /// Manage the local artifact cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Create or check the cluster's certificates, kubeconfigs and encryption key
    /// (in the inventory's cluster.pki_dir).
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Check the rendered units and manifests against the flag table for the
    /// inventory's Kubernetes version, without building.
    Lint {
        /// Nodes to check (default: all).
        #[arg(long, value_name = "N|NAME")]
        node: Vec<String>,
    },
    /// List the Kubernetes versions and arches there are recipes for, and where each pin came from.
    Recipes,
}

#[derive(Debug, Subcommand)]
pub enum PkiCommand {
    /// Generate what the PKI folder lacks; never overwrites a CA or a key.
    Init(PkiInitArgs),
    /// Report per file whether the PKI folder fits the inventory (exit 2 if not).
    Check,
}

#[derive(Debug, Args)]
pub struct PkiInitArgs {
    /// Validity of the certificates issued now, in days.
    #[arg(long, default_value_t = 365, value_name = "DAYS")]
    pub days: u32,
    /// Validity of a new CA, in days (certificates never outlive their CA).
    #[arg(long, default_value_t = 3650, value_name = "DAYS")]
    pub ca_days: u32,
    /// Re-issue what no longer fits the inventory (e.g. the API server certificate
    /// after a controller was added), from the same CA and for the same keys.
    #[arg(long, conflicts_with = "force")]
    pub renew: bool,
    /// Start over with a new CA; the old files are moved aside. Every node must
    /// then be rebuilt.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Node to build: 1-based index or controller name (repeatable).
    #[arg(long, value_name = "N|NAME", required_unless_present = "all")]
    pub node: Vec<String>,
    /// Build every controller of the inventory.
    #[arg(long, conflicts_with = "node")]
    pub all: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "tar.gz")]
    pub format: FormatArg,
    /// Output folder.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    /// cpio formats: binaries in one archive shared by all nodes
    /// (controller-shared-VERSION-ARCH.cpio[.gz]), configuration in
    /// controller-N-node.cpio[.gz]; concatenate them as the initramfs.
    #[arg(long)]
    pub split: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    #[value(name = "tar.gz")]
    TarGz,
    Dir,
    /// Initramfs (newc cpio).
    Cpio,
    /// Initramfs (newc cpio), gzipped.
    #[value(name = "cpio.gz")]
    CpioGz,
}

#[derive(Debug, Args)]
pub struct CloudInitArgs {
    /// Node to build: 1-based index or controller name (repeatable).
    #[arg(long, value_name = "N|NAME", required_unless_present = "all")]
    pub node: Vec<String>,
    /// Build every controller of the inventory.
    #[arg(long, conflicts_with = "node")]
    pub all: bool,
    /// How binaries reach the node: baked (already in the image), mirror=URL
    /// (downloaded at boot from URL/VERSION/bin/linux/ARCH/NAME and checked
    /// against the pinned sha256), seed (on the seed volume, checked at boot).
    #[arg(long, default_value = "baked", value_name = "baked|mirror=URL|seed")]
    pub binaries: String,
    /// Where the user-data goes; decides its size limit (gzipped when needed).
    #[arg(long, value_enum, default_value = "nocloud")]
    pub provider: ProviderArg,
    /// Output folder.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ProviderArg {
    Aws,
    Azure,
    Gcp,
    Openstack,
    Hetzner,
    Nocloud,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// An output: tar.gz, cpio, cpio.gz, a cloud-init folder or seed.img; several
    /// cpio files are read in order as one initramfs (a split pair).
    #[arg(required = true, value_name = "ARTIFACT")]
    pub artifacts: Vec<PathBuf>,
    /// Check every entry against the build manifest; exit 4 on any difference.
    #[arg(long)]
    pub verify: bool,
    /// The manifest [default: controller-N.manifest.json beside the artifact].
    #[arg(long, value_name = "FILE", requires = "verify")]
    pub manifest: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Verify release tarballs or binaries against the recipes' pins and store them.
    Import {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List the verified artifacts in the cache.
    Ls,
}

impl Global {
    pub fn session(&self) -> Session {
        Session {
            inventory: self.inventory.clone(),
            cache_dir: self.cache.clone().unwrap_or_else(Cache::default_root),
            assets: Assets {
                recipe_dirs: self.recipes.iter().cloned().collect(),
                overlay_dir: self.overlays.clone(),
            },
            mtime: self.source_date_epoch.unwrap_or(0),
        }
    }
}

impl PkiInitArgs {
    pub fn options(&self) -> imgbuild::pki::InitOptions {
        imgbuild::pki::InitOptions {
            days: self.days,
            ca_days: self.ca_days,
            renew: self.renew,
            force: self.force,
        }
    }
}

impl ControllerArgs {
    pub fn options(&self) -> ControllerOptions {
        ControllerOptions {
            nodes: self.node.clone(),
            all: self.all,
            format: match self.format {
                FormatArg::TarGz => Format::TarGz,
                FormatArg::Dir => Format::Dir,
                FormatArg::Cpio => Format::Cpio,
                FormatArg::CpioGz => Format::CpioGz,
            },
            out_dir: self.out.clone(),
            split: self.split,
        }
    }
}

impl CloudInitArgs {
    pub fn options(&self) -> imgbuild::Result<CloudInitOptions> {
        use imgbuild::write::cloud_init::Provider;
        Ok(CloudInitOptions {
            nodes: self.node.clone(),
            all: self.all,
            binaries: self.binaries.parse()?,
            provider: match self.provider {
                ProviderArg::Aws => Provider::Aws,
                ProviderArg::Azure => Provider::Azure,
                ProviderArg::Gcp => Provider::Gcp,
                ProviderArg::Openstack => Provider::Openstack,
                ProviderArg::Hetzner => Provider::Hetzner,
                ProviderArg::Nocloud => Provider::Nocloud,
            },
            out_dir: self.out.clone(),
        })
    }
}
