//! Command-line arguments as clap parses them. Values with a library type
//! (formats, providers) are parsed by the library's own names, so the two
//! cannot drift apart; `config` turns the rest into validated options.

use std::path::PathBuf;

use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use imgbuild::output::cloud_init::Provider;
use imgbuild::output::format::Format;

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
    /// Extra folder of recipes (and layouts/), searched before the cache's locks
    /// (<cache>/locks, written by `imgbuild lock`) and the built-in recipes.
    #[arg(long, global = true, env = "IMGBUILD_RECIPES", value_name = "DIR")]
    pub recipes: Option<PathBuf>,
    /// Folder of overlays, searched before the built-in ones.
    #[arg(long, global = true, env = "IMGBUILD_OVERLAYS", value_name = "DIR")]
    pub overlays: Option<PathBuf>,
    /// Entry mtimes in outputs (seconds since the epoch) [default: $SOURCE_DATE_EPOCH, else 0].
    #[arg(long, global = true, value_name = "SECONDS")]
    pub source_date_epoch: Option<String>,
    /// Print nothing but errors.
    #[arg(long, short, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build a controller's rootfs overlay (out/controller-N.tar.gz and its manifest).
    Controller(ControllerArgs),
    /// Download every artifact the inventory's recipe needs into the cache, verified.
    Fetch(FetchArgs),
    /// Write a recipe lock for a version from the publishers' checksum files
    /// (Kubernetes' and etcd's).
    Lock(LockArgs),
    /// Carry artifacts to an air-gapped site in one bundle file.
    #[command(subcommand)]
    Airgap(AirgapCommand),
    /// Build a controller's cloud-init (out/controller-N-cloud-init/: user-data,
    /// meta-data, network-config, NoCloud seed.img) and its manifest.
    CloudInit(CloudInitArgs),
    /// Build a controller's Ignition config (out/controller-N.ign) for Flatcar or
    /// Fedora CoreOS, its manifest and its line in SHA256SUMS.
    Ignition(IgnitionArgs),
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
        /// OS profile of the layout (debian, flatcar, fcos): says what it leaves out.
        #[arg(long, default_value = "debian", value_name = "NAME")]
        os: String,
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
    /// Cipher of a new encryption config (default: secretbox from v1.13, aescbc
    /// before). On an existing one that encrypts with another: the next step of
    /// switching to this one, keeping every old key (docs/pki.md).
    #[arg(long, value_name = "CIPHER", value_parser = ["secretbox", "aescbc"])]
    pub encryption: Option<String>,
    /// With --encryption, once that cipher encrypts: remove every other
    /// provider (Secrets not rewritten since become unreadable).
    #[arg(long, requires = "encryption")]
    pub drop_old_keys: bool,
}

/// How downloads are made (fetch, controller, lock, airgap export).
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Download options")]
pub struct FetchArgs {
    /// Download base laid out like https://dl.k8s.io (https://, file:///DIR, or http:// with --allow-http).
    #[arg(long, env = "IMGBUILD_MIRROR", value_name = "URL")]
    pub mirror: Option<String>,
    /// Downloads at once.
    #[arg(long, short, default_value_t = 4, value_name = "N")]
    pub jobs: usize,
    /// Also trust this CA (PEM), e.g. an internal mirror's.
    #[arg(long, env = "IMGBUILD_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http:// for downloads, which are checked against pinned
    /// digests. Never for `lock`: pins read over plain http could be anyone's.
    #[arg(long)]
    pub allow_http: bool,
    /// Seconds to wait for a connection.
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
    /// Seconds to wait for a response or for the next bytes of a body (no limit on the whole download).
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub read_timeout: u64,
    /// Attempts per file in a row without progress (connection errors, 5xx, 429).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub tries: u32,
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// Kubernetes version, e.g. v1.33.0.
    #[arg(long, value_name = "vX.Y.Z")]
    pub version: String,
    /// etcd release to pin from its SHA256SUMS, e.g. 3.6.5 [default: the one of
    /// the built-in recipe nearest --version].
    #[arg(long, value_name = "X.Y.Z")]
    pub etcd_version: Option<String>,
    /// Arches to pin, comma-separated [default: the inventory's arch, else amd64].
    #[arg(long, value_delimiter = ',', value_name = "ARCH,...")]
    pub arch: Vec<String>,
    /// Folder to write the lock to [default: <cache>/locks].
    #[arg(long, short, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Write a lock even where a recipe pins the version from the changelog.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Subcommand)]
pub enum AirgapCommand {
    /// Write one bundle with every artifact the inventory's recipe needs, the recipe and a manifest.
    Export {
        /// Bundle file to write.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
        /// Do not download what is missing from the cache: fail instead.
        #[arg(long, env = "IMGBUILD_OFFLINE", value_parser = clap::builder::BoolishValueParser::new(), default_missing_value = "true", num_args = 0, default_value = "false")]
        offline: bool,
        #[command(flatten)]
        fetch: FetchArgs,
    },
    /// Verify a bundle's artifacts into the cache (and install the locks it carries).
    Import {
        #[arg(value_name = "BUNDLE")]
        bundle: PathBuf,
        /// Also install layouts this machine lacks from the bundle (a layout
        /// decides which files go where in the image); refused otherwise.
        #[arg(long)]
        allow_layouts: bool,
    },
}

/// Which nodes a building command builds.
#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Node to build: 1-based index or controller name (repeatable).
    #[arg(long, value_name = "N|NAME", required_unless_present = "all")]
    pub node: Vec<String>,
    /// Build every controller of the inventory.
    #[arg(long, conflicts_with = "node")]
    pub all: bool,
}

/// Whether and how a building command downloads what the cache lacks.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Never download: a missing artifact is an error that says how to bring it.
    #[arg(long, env = "IMGBUILD_OFFLINE", value_parser = clap::builder::BoolishValueParser::new(), default_missing_value = "true", num_args = 0, default_value = "false")]
    pub offline: bool,
    #[command(flatten)]
    pub fetch: FetchArgs,
}

#[derive(Debug, Args)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Output format: tar.gz (a rootfs overlay), dir (the tree itself), cpio
    /// or cpio.gz (an initramfs, newc); tar.zst and cpio.zst with zstd; tar or
    /// cpio compressed as --compression says [default: tar.gz].
    #[arg(long, value_name = "FORMAT", value_parser = PossibleValuesParser::new(Format::NAMES))]
    pub format: Option<String>,
    /// Compression of tar and cpio: gzip, zstd (level 3), zstd:LEVEL (1-19) or
    /// none [default: the format's own (tar.gz, cpio.zst, ...); gzip for tar,
    /// none for cpio].
    #[arg(long, value_name = "gzip|zstd[:LEVEL]|none")]
    pub compression: Option<String>,
    /// Output folder.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub download: DownloadArgs,
    /// Binaries once, in controller-shared-VERSION-ARCH.{tar.gz,cpio[.gz]}, shared by
    /// all nodes (kept as is when unchanged); each node's configuration in
    /// controller-N-node.EXT. Extract both (shared first); concatenated they
    /// are the whole tar.gz byte for byte, or the initramfs.
    #[arg(long)]
    pub split: bool,
    /// OS profile of the layout: debian, or flatcar / fcos (binaries in /opt/bin,
    /// no nginx health-check proxy).
    #[arg(long, default_value = "debian", value_name = "NAME")]
    pub os: String,
}

#[derive(Debug, Args)]
pub struct IgnitionArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Ignition config spec version (3.3.0, read by every Ignition from 2.11 on).
    #[arg(long, default_value = "3.3.0", value_name = "VERSION")]
    pub spec: String,
    /// How binaries reach the node: mirror=URL (Ignition downloads
    /// URL/VERSION/bin/linux/ARCH/NAME and writes it only if its sha256 is the
    /// pinned one) or baked (already in the image) [default: mirror=https://dl.k8s.io].
    #[arg(long, value_name = "mirror=URL|baked")]
    pub binaries: Option<String>,
    /// OS profile of the layout: flatcar, fcos (or debian).
    #[arg(long, default_value = "flatcar", value_name = "NAME")]
    pub os: String,
    /// Output folder.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
    #[command(flatten)]
    pub download: DownloadArgs,
}

#[derive(Debug, Args)]
pub struct CloudInitArgs {
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// How binaries reach the node: baked (already in the image), mirror=URL
    /// (downloaded at boot from URL/VERSION/bin/linux/ARCH/NAME and checked
    /// against the pinned sha256), seed (on the seed volume, checked at boot).
    #[arg(long, default_value = "baked", value_name = "baked|mirror=URL|seed")]
    pub binaries: String,
    /// Where the user-data goes; decides its size limit (gzipped when needed).
    #[arg(long, default_value = "nocloud", value_parser = provider_parser())]
    pub provider: Provider,
    /// Put the node's own files in controller-N-payload.tar.gz (0600) and make the
    /// user-data a small boot script that downloads it from URL, checks its
    /// sha256 and unpacks it. {node} and {name} expand to the node's index and
    /// name. Upload the payload there: whoever can read it gets the node's keys.
    #[arg(long, value_name = "URL")]
    pub payload_url: Option<String>,
    /// Headers for the payload download (e.g. `Authorization: Bearer ...`), one
    /// `Name: value` per line, read from FILE so they are not on the command
    /// line. They are written into the user-data, like the URL.
    #[arg(long, value_name = "FILE", requires = "payload_url")]
    pub payload_header_file: Option<PathBuf>,
    /// Allow an http:// payload URL (for tests: the payload holds keys).
    #[arg(long, requires = "payload_url")]
    pub allow_http: bool,
    /// v1.34 and later: no `packages: [nginx]` in the user-data, for images
    /// that have nginx already (air-gapped nodes without a package mirror).
    #[arg(long)]
    pub no_packages: bool,
    /// Output folder.
    #[arg(long, default_value = "out", value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// An output: tar.gz, cpio, cpio.gz, a cloud-init folder or seed.img; or
    /// both files of a split pair (tar.gz, or cpio read in order as one initramfs).
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
    /// Re-hash everything in the cache; report and remove what is corrupt.
    Verify,
    /// Remove leftovers of interrupted downloads and files no artifact refers to.
    Gc {
        /// Also remove artifacts that no known recipe (built-in, --recipes, locks)
        /// pins, and every derived segment (compressed binaries; the next build
        /// makes what it needs again).
        #[arg(long)]
        unused: bool,
    },
}

fn provider_parser() -> impl TypedValueParser<Value = Provider> {
    PossibleValuesParser::new(Provider::ALL.map(Provider::name))
        .map(|s| s.parse::<Provider>().expect("one of the listed names"))
}
