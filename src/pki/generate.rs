//! `pki init`: add what is missing to the PKI folder; `--renew` re-issues
//! certificates that no longer fit, from the same CA and for the same keys;
//! `--force` moves the old files aside and starts over.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use super::check::check;
use super::encryption::{Cipher, Step};
use super::files::{ReadError, read_text};
use super::keys::{cert_der, generate_key, key_kind, parse_private_key, random_serial, with_cert};
use super::report::{CheckReport, Fix, Severity};
use super::{
    CA_CERT, CA_KEY, ENCRYPTION_CONFIG, LEAVES, LOCAL_SERVER, Leaf, Role, San, apiserver_sans,
    encryption, kubeconfig, legacy_encryption_config, write_atomic,
};
use crate::error::{Error, IoContext, Result};
use crate::input::inventory::Inventory;
use crate::progress::{Event, Progress};

#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Validity of the certificates `init` issues, in days.
    pub days: u32,
    /// Validity of a new CA, in days. Leaves never outlive their CA.
    pub ca_days: u32,
    /// Re-issue certificates (and rewrite kubeconfigs and the encryption
    /// config's format) that no longer fit the inventory, keeping CA and keys.
    pub renew: bool,
    /// Move every existing PKI file aside and start over with a new CA.
    pub force: bool,
    /// The cipher of a new encryption config (default: [`Cipher::default_for`]
    /// the version). On an existing config whose first provider is another
    /// one: the next step of switching to it (see `encryption::switch_to`).
    pub encryption: Option<Cipher>,
    /// With `encryption`: remove every provider but that one, once it is first.
    pub drop_old_keys: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            days: 365,
            ca_days: 3650,
            renew: false,
            force: false,
            encryption: None,
            drop_old_keys: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct InitReport {
    pub dir: PathBuf,
    /// Files that did not exist before.
    pub created: Vec<String>,
    /// Files rewritten by `--renew` (certificates re-issued for their old key).
    pub renewed: Vec<String>,
    /// Files `--force` moved aside, and where to.
    pub replaced: Vec<String>,
    pub backup: Option<PathBuf>,
    /// The check after the run (it fits the inventory, or `init` failed).
    pub check: CheckReport,
}

impl InitReport {
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.renewed.is_empty() && self.replaced.is_empty())
    }
}

/// Generate what the inventory's PKI folder lacks. See the module comment.
pub fn init(inv: &Inventory, opts: &InitOptions, progress: &dyn Progress) -> Result<InitReport> {
    if opts.days == 0 || opts.ca_days == 0 {
        return Err(Error::input("--days and --ca-days must be at least 1"));
    }
    if opts.drop_old_keys && opts.encryption.is_none() {
        return Err(Error::input(
            "--drop-old-keys needs --encryption CIPHER: the provider to keep",
        ));
    }
    let dir = inv.pki_dir();
    // One `pki init` at a time per folder: two at once would each make a CA.
    // The second waits, then finds the first one's files and only checks them.
    let _lock = with_parent_lock(&dir, || {
        ensure_dir(&dir, progress)?;
        lock_dir(&dir, true)
    })?;
    init_locked(inv, opts, progress)
}

/// `init`, for a caller that already holds the folder's exclusive lock.
pub(crate) fn init_locked(
    inv: &Inventory,
    opts: &InitOptions,
    progress: &dyn Progress,
) -> Result<InitReport> {
    let dir = inv.pki_dir();
    let now = OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .expect("0 is valid");
    let mut w = Writer {
        dir: &dir,
        progress,
        created: Vec::new(),
        renewed: Vec::new(),
    };
    let mut replaced = Vec::new();
    let mut backup = None;
    ensure_dir(&dir, progress)?;
    if opts.force
        && let Some((to, names)) = move_aside(&dir, inv, now)?
    {
        let msg = format!(
            "--force replaced {} in {}; the old files are in {} (they hold private keys: delete that folder once no node uses the old PKI). Every node of the cluster must be rebuilt with the new PKI.",
            names.join(", "),
            dir.display(),
            to.display()
        );
        progress.event(Event::Notice { message: &msg });
        replaced = names;
        backup = Some(to);
    }

    // The CA.
    let ca_cert_path = dir.join(CA_CERT);
    let ca_key_path = dir.join(CA_KEY);
    let ca_key = if ca_key_path.exists() {
        read_key(&ca_key_path)?
    } else if ca_cert_path.exists() {
        return Err(Error::input(format!(
            "{} exists but {} is missing: restore the CA key from a backup, or run `imgbuild pki init --force` for a new CA (every node must then be rebuilt)",
            ca_cert_path.display(),
            ca_key_path.display()
        )));
    } else {
        let key = generate_key().map_err(Error::input)?;
        w.write(CA_KEY, key.serialize_pem().as_bytes(), true, false)?;
        key
    };
    let ca_der = if ca_cert_path.exists() {
        let der = read_cert(&ca_cert_path)?;
        let matches = with_cert(&der, |c| {
            c.public_key().subject_public_key.data.as_ref() == ca_key.public_key_raw()
        })
        .unwrap_or(false);
        if !matches {
            return Err(Error::input(format!(
                "{} does not match {}: restore the right pair, or run `imgbuild pki init --force` for a new CA",
                ca_key_path.display(),
                ca_cert_path.display()
            )));
        }
        der
    } else {
        // Also when only the key survived an interrupted run: a CA certificate for
        // the same key and name still verifies everything the old one signed.
        let params = ca_params(inv, now, opts.ca_days)?;
        let cert = params
            .self_signed(&ca_key)
            .map_err(|e| Error::input(format!("cannot sign the CA certificate: {e}")))?;
        w.write(CA_CERT, cert.pem().as_bytes(), false, false)?;
        cert.der().to_vec()
    };
    // Embedded as ca.pem's own bytes, so the kubeconfigs carry exactly that file.
    let ca_pem = read(&dir, CA_CERT)?;
    let ca_not_after = with_cert(&ca_der, |c| c.validity().not_after.timestamp())
        .map_err(|e| Error::input(format!("{}: {e}", ca_cert_path.display())))?;
    let ca_not_after = OffsetDateTime::from_unix_timestamp(ca_not_after)
        .map_err(|_| Error::input(format!("{}: bad notAfter", ca_cert_path.display())))?;
    let issuer = Issuer::from_ca_cert_der(&ca_der.clone().into(), ca_key).map_err(|e| {
        Error::input(format!(
            "{}: cannot use it as an issuer: {e}",
            ca_cert_path.display()
        ))
    })?;

    // What no longer fits, as the check sees it before we touch the leaves.
    let before = check(inv, SystemTime::now());
    let needs_renew = |file: &str| {
        before.findings.iter().any(|f| {
            (f.file == file || f.file.starts_with(&format!("{file} (")))
                && f.severity >= Severity::Warning
                && f.fix == Some(Fix::Renew)
        })
    };

    let sans = apiserver_sans(inv)?;
    let mut not_after = now + Duration::days(opts.days.into());
    if not_after > ca_not_after {
        let msg = format!(
            "certificates are valid only until the CA expires ({ca_not_after}), not {} days",
            opts.days
        );
        progress.event(Event::Warning { message: &msg });
        not_after = ca_not_after;
    }
    let mut issued: BTreeSet<&str> = BTreeSet::new();
    let validity = (now, not_after);
    for leaf in LEAVES {
        let renew = opts.renew && needs_renew(&leaf.cert_file());
        if issue(&mut w, leaf, &sans, validity, &issuer, opts.renew, renew)? {
            issued.insert(leaf.stem);
        }
    }
    if inv.etcd.local() {
        for (i, c) in inv.controllers.iter().enumerate() {
            let stem = super::etcd::stem(&c.name);
            let leaf = super::etcd::leaf(&stem, &c.name);
            let renew = opts.renew && needs_renew(&leaf.cert_file());
            let sans = super::etcd::etcd_sans(inv, i + 1)?;
            issue(&mut w, &leaf, &sans, validity, &issuer, opts.renew, renew)?;
        }
    }

    // Kubeconfigs: from the client certificate and key files.
    for leaf in LEAVES {
        let Role::Client {
            kubeconfig: name,
            user,
        } = leaf.role
        else {
            continue;
        };
        let exists = dir.join(name).exists();
        if exists && !(opts.renew && (issued.contains(leaf.stem) || needs_renew(name))) {
            continue;
        }
        let cert_path = dir.join(leaf.cert_file());
        let key_path = dir.join(leaf.key_file());
        if !cert_path.exists() || !key_path.exists() {
            continue; // reported by the final check
        }
        let cert_pem = read(&dir, &leaf.cert_file())?;
        let key_pem = read(&dir, &leaf.key_file())?;
        let text = kubeconfig::render(
            &inv.cluster.name,
            LOCAL_SERVER,
            &ca_pem,
            user,
            &cert_pem,
            &key_pem,
        );
        w.write(name, text.as_bytes(), true, exists)?;
    }

    // The encryption config: its keys are never replaced but by --force.
    encryption_config(inv, opts, needs_renew(ENCRYPTION_CONFIG), &mut w)?;
    super::front_proxy::init(inv, opts, &mut w, now, &needs_renew)?;

    let report = InitReport {
        dir: dir.clone(),
        created: w.created,
        renewed: w.renewed,
        replaced,
        backup,
        check: check(inv, SystemTime::now()),
    };
    for f in report.check.warnings() {
        let msg = format!("{}: {}", f.file, f.message);
        progress.event(Event::Warning { message: &msg });
    }
    if let Some(err) = report.check.error() {
        return Err(err);
    }
    Ok(report)
}

impl std::fmt::Display for InitReport {
    /// What changed, by file name; never content.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for name in &self.replaced {
            writeln!(f, "replaced {name}")?;
        }
        if let Some(b) = &self.backup {
            writeln!(f, "old files moved to {}", b.display())?;
        }
        for name in &self.created {
            writeln!(f, "created  {name}")?;
        }
        for name in &self.renewed {
            writeln!(f, "renewed  {name}")?;
        }
        if !self.changed() {
            writeln!(f, "nothing to do: every file is there and fits")?;
        }
        write!(
            f,
            "PKI folder {} fits {}; build every node of this cluster from it",
            self.dir.display(),
            self.check.inventory.display()
        )
    }
}

/// Writes files and records which were new and which replaced.
pub(super) struct Writer<'a> {
    pub(super) dir: &'a Path,
    progress: &'a dyn Progress,
    created: Vec<String>,
    renewed: Vec<String>,
}

impl Writer<'_> {
    pub(super) fn write(
        &mut self,
        name: &str,
        bytes: &[u8],
        secret: bool,
        replacing: bool,
    ) -> Result<()> {
        let path = write_atomic(self.dir, name, bytes, secret)?;
        self.progress.event(Event::Wrote { path: &path });
        if replacing {
            self.renewed.push(name.to_string());
        } else {
            self.created.push(name.to_string());
        }
        Ok(())
    }
}

/// Issue `leaf` if it is missing (a new key too when that is missing), or
/// for its old key when `reissue` (it no longer fits); with `renew`, a
/// certificate whose key is gone gets a new pair. True when it was issued.
fn issue(
    w: &mut Writer,
    leaf: &Leaf,
    sans: &[(San, String)],
    (now, not_after): (OffsetDateTime, OffsetDateTime),
    issuer: &Issuer<'_, KeyPair>,
    renew: bool,
    reissue: bool,
) -> Result<bool> {
    let dir = w.dir;
    let cert_file = leaf.cert_file();
    let key_file = leaf.key_file();
    let cert_exists = dir.join(&cert_file).exists();
    let key_exists = dir.join(&key_file).exists();
    let key = match (cert_exists, key_exists) {
        (_, true) => {
            let key = read_key(&dir.join(&key_file)).map_err(|e| {
                e.context(format!(
                    "remove {key_file} and {cert_file} and run `imgbuild pki init` for a new pair"
                ))
            })?;
            if cert_exists && !reissue {
                return Ok(false);
            }
            key
        }
        (false, false) => {
            let key = generate_key().map_err(Error::input)?;
            w.write(&key_file, key.serialize_pem().as_bytes(), true, false)?;
            key
        }
        (true, false) => {
            if !renew {
                return Ok(false); // the final check reports it, naming --renew
            }
            let key = generate_key().map_err(Error::input)?;
            w.write(&key_file, key.serialize_pem().as_bytes(), true, false)?;
            key
        }
    };
    let params = leaf_params(leaf, sans, now, not_after, &key)?;
    let cert = params
        .signed_by(&key, issuer)
        .map_err(|e| Error::input(format!("cannot sign {cert_file}: {e}")))?;
    w.write(&cert_file, cert.pem().as_bytes(), false, cert_exists)?;
    Ok(true)
}

/// Write a new encryption config, or change an existing one as `opts` asks:
/// its format after a version change (`--renew`), or one step towards another
/// cipher (`--encryption`). What to do next is said as a notice.
fn encryption_config(
    inv: &Inventory,
    opts: &InitOptions,
    renew_format: bool,
    w: &mut Writer,
) -> Result<()> {
    const E: &str = ENCRYPTION_CONFIG;
    let version = &inv.cluster.kubernetes_version;
    let legacy = legacy_encryption_config(version);
    let path = w.dir.join(E);
    if !path.exists() {
        let cipher = opts.encryption.unwrap_or(Cipher::default_for(version));
        let providers = encryption::new_providers(cipher).map_err(Error::input)?;
        return w.write(
            E,
            encryption::render(legacy, &providers).as_bytes(),
            true,
            false,
        );
    }
    let rewrite_format = opts.renew && renew_format;
    if opts.encryption.is_none() && !rewrite_format {
        return Ok(());
    }
    let text = read(w.dir, E)?;
    let bad = |e: String| Error::input(format!("{}: {e}", path.display()));
    let mut parsed = encryption::parse(&text).map_err(bad)?;
    if !parsed.renderable() {
        return Err(bad(
            "holds providers or resources imgbuild does not write (kms, aesgcm, or entries for other resources than secrets); change it by hand".into(),
        ));
    }
    let step = match opts.encryption {
        Some(to) => {
            encryption::switch_to(&mut parsed.providers, to, opts.drop_old_keys).map_err(bad)?
        }
        None => Step::Nothing,
    };
    if step == Step::Nothing && !(rewrite_format && parsed.legacy != legacy) {
        return Ok(());
    }
    w.write(
        E,
        encryption::render(legacy, &parsed.providers).as_bytes(),
        true,
        true,
    )?;
    let to = opts.encryption.map(Cipher::name).unwrap_or_default();
    let first = parsed.providers[0].to_string();
    let msg = match step {
        Step::Nothing => return Ok(()),
        Step::Added(key) => format!(
            "{E}: added a {to} key ({key}) after {first}: every API server can now read with it, \
             none writes with it yet. Step 1 of 3: rebuild and roll out EVERY controller, then run \
             `imgbuild pki init --encryption {to}` again to make it the one that encrypts"
        ),
        Step::Promoted => format!(
            "{E}: {first} now encrypts what is written; the other providers still read. Step 2 \
             of 3: rebuild and roll out every controller, then rewrite every Secret with it: \
             kubectl get secrets --all-namespaces -o json | kubectl replace -f - ; then \
             `imgbuild pki init --encryption {to} --drop-old-keys` (step 3) removes the old keys"
        ),
        Step::Dropped(gone) => format!(
            "{E}: removed {}; only {first} remains. Secrets not rewritten since {to} became first \
             can no longer be read. Rebuild and roll out every controller",
            gone.join(", ")
        ),
    };
    w.progress.event(Event::Notice { message: &msg });
    Ok(())
}

/// A PKI file's text, by the rules of `files` (size, symlinks, UTF-8).
fn read(dir: &Path, name: &str) -> Result<String> {
    let path = dir.join(name);
    read_text(dir, name).map_err(|e| match e {
        ReadError::Missing => Error::input(format!("{} is missing", path.display())),
        ReadError::Outside(m) | ReadError::Refused(m) | ReadError::Io(m) => {
            Error::input(format!("{}: {m}", path.display()))
        }
    })
}

pub(super) fn read_key(path: &Path) -> Result<KeyPair> {
    let text = read_path(path)?;
    parse_private_key(&text).map_err(|e| Error::input(format!("{}: {e}", path.display())))
}

fn read_path(path: &Path) -> Result<String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    read(dir, name)
}

pub(super) fn read_cert(path: &Path) -> Result<Vec<u8>> {
    let text = read_path(path)?;
    let der = cert_der(&text).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    with_cert(&der, |_| ()).map_err(|e| Error::input(format!("{}: {e}", path.display())))?;
    Ok(der)
}

/// The folder must be 0700: it holds private keys.
/// Run `f` holding the PKI folder's parent's lock (when that folder exists):
/// whoever creates the PKI folder locks it inside `f`, so nobody else can lock
/// it between its creation and its creator's lock.
pub(crate) fn with_parent_lock<T>(dir: &Path, f: impl FnOnce() -> Result<T>) -> Result<T> {
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let _parent = if parent.is_dir() {
        Some(lock_dir(parent, true)?)
    } else {
        None
    };
    f()
}

/// An advisory lock (flock) on the PKI folder itself: exclusive while `pki
/// init` writes, shared while a build checks, so a build never reads a PKI
/// half made. Released when the handle drops.
pub(crate) fn lock_dir(dir: &Path, exclusive: bool) -> Result<std::fs::File> {
    let f = std::fs::File::open(dir).with_path("open", dir)?;
    if exclusive { f.lock() } else { f.lock_shared() }.with_path("lock", dir)?;
    Ok(f)
}

fn ensure_dir(dir: &Path, progress: &dyn Progress) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_path("create", dir)?;
    }
    let mode = std::fs::metadata(dir)
        .with_path("inspect", dir)?
        .permissions()
        .mode()
        & 0o777;
    if mode != 0o700 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_path("chmod 700", dir)?;
        if mode & 0o077 != 0 {
            let msg = format!(
                "{} was mode {mode:o}; set it to 700 (it holds private keys)",
                dir.display()
            );
            progress.event(Event::Notice { message: &msg });
        }
    }
    Ok(())
}

/// `--force`: move every PKI file into `replaced-<UTC time>/` inside the folder;
/// returns that folder and the names moved, or None when there was nothing.
fn move_aside(
    dir: &Path,
    inv: &Inventory,
    now: OffsetDateTime,
) -> Result<Option<(PathBuf, Vec<String>)>> {
    use std::os::unix::fs::DirBuilderExt;
    let present: Vec<String> = super::files_for(inv)
        .into_iter()
        .map(|f| f.name)
        .filter(|n| dir.join(n).exists())
        .collect();
    if present.is_empty() {
        return Ok(None);
    }
    let stamp = format!(
        "replaced-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let mut backup = dir.join(&stamp);
    let mut n = 1;
    while backup.exists() {
        n += 1;
        backup = dir.join(format!("{stamp}-{n}"));
    }
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&backup)
        .with_path("create", &backup)?;
    for name in &present {
        let from = dir.join(name);
        std::fs::rename(&from, backup.join(name)).with_path("move aside", &from)?;
    }
    Ok(Some((backup, present)))
}

fn dn(cn: &str, org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn.push(DnType::OrganizationName, org);
    dn
}

fn ca_params(inv: &Inventory, now: OffsetDateTime, days: u32) -> Result<CertificateParams> {
    ca_params_named(&format!("{} CA", inv.cluster.name), now, days)
}

/// A CA named `common_name` (O=Kubernetes), valid `days` from `now`.
pub(super) fn ca_params_named(
    common_name: &str,
    now: OffsetDateTime,
    days: u32,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(common_name, "Kubernetes");
    // Only leaves below it (pathlen:0): a certificate it signed with CA:TRUE
    // is no intermediate CA to any verifier. basicConstraints and keyUsage
    // are critical (rcgen marks both so).
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    p.not_before = now - Duration::minutes(5);
    p.not_after = now + Duration::days(days.into());
    p.serial_number = Some(random_serial().map_err(Error::input)?);
    Ok(p)
}

pub(super) fn leaf_params(
    leaf: &Leaf,
    sans: &[(San, String)],
    now: OffsetDateTime,
    not_after: OffsetDateTime,
    key: &KeyPair,
) -> Result<CertificateParams> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(leaf.common_name, leaf.organization);
    // Backdated a little, for nodes whose clock is slightly behind.
    p.not_before = now - Duration::minutes(5);
    p.not_after = not_after;
    p.serial_number = Some(random_serial().map_err(Error::input)?);
    p.use_authority_key_identifier_extension = true;
    // basicConstraints CA:FALSE, written out.
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    if leaf.role == Role::ServiceAccount {
        // Only a key holder: the API server reads the public key from it
        // (--service-account-key-file) and nobody presents it in TLS, so no
        // extended key usage (the seed's source issued it as a TLS client and
        // server certificate, which let it log in as CN=service-accounts).
        return Ok(p);
    }
    if key_kind(key) == "RSA" {
        p.key_usages.push(KeyUsagePurpose::KeyEncipherment);
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    if matches!(leaf.role, Role::ApiServer | Role::Etcd) {
        // It serves the API and is also the API server's client certificate
        // towards etcd and the kubelets (as in the seed); or it serves etcd's
        // clients and peers, and is its peers' client.
        p.extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        for (san, _) in sans {
            p.subject_alt_names.push(match san {
                San::Ip(ip) => SanType::IpAddress(*ip),
                San::Dns(name) => SanType::DnsName(name.clone().try_into().map_err(|_| {
                    Error::input(format!(
                        "{:?} cannot be a DNS name in a certificate",
                        crate::error::clip(name)
                    ))
                })?),
            });
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::inventory::tests::GOOD as INVENTORY;
    use crate::pki::files_for;
    use crate::progress::Silent;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    /// The files of the test inventory's v1.10.2 PKI: the seed's, no front proxy.
    fn files() -> Vec<super::super::PkiFile> {
        crate::pki::files()
            .into_iter()
            .filter(|f| !f.name.starts_with("front-proxy"))
            .collect()
    }

    #[derive(Default)]
    struct Collect(Mutex<Vec<String>>);
    impl Progress for Collect {
        fn event(&self, e: Event<'_>) {
            self.0.lock().unwrap().push(format!("{e:?}"));
        }
    }

    fn inventory(dir: &Path, text: &str) -> Inventory {
        let path = dir.join("cluster.toml");
        std::fs::write(&path, text).unwrap();
        Inventory::load(&path).unwrap()
    }

    /// Every file of the folder (not its subfolders) by name.
    fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_file())
            .map(|p| {
                let name = p.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&p).unwrap())
            })
            .collect()
    }

    #[test]
    fn fresh_init_fits_and_second_run_changes_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        let events = Collect::default();
        let r = init(&inv, &InitOptions::default(), &events).unwrap();
        assert_eq!(r.created.len(), files_for(&inv).len(), "{:?}", r.created);
        assert_eq!(files_for(&inv).len(), files().len() + 4);
        assert!(r.check.fits_inventory(), "{}", r.check);
        assert_eq!(r.check.warnings().count(), 0, "{}", r.check);
        let dir = inv.pki_dir();
        let mode = |p: &Path| p.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700);
        for f in files_for(&inv) {
            let want = if f.secret { 0o600 } else { 0o644 };
            assert_eq!(mode(&dir.join(&f.name)), want, "{}", f.name);
        }
        let enc = std::fs::read_to_string(dir.join(ENCRYPTION_CONFIG)).unwrap();
        assert!(enc.starts_with("kind: EncryptionConfig\napiVersion: v1\n"));

        // Nothing secret in what was reported.
        let said = events.0.lock().unwrap().join("\n");
        for f in files_for(&inv).iter().filter(|f| f.secret) {
            let text = std::fs::read_to_string(dir.join(&f.name)).unwrap();
            for line in text.lines().filter(|l| l.len() > 20) {
                let probe = line.trim().rsplit(' ').next().unwrap();
                assert!(!said.contains(probe), "{} leaked into events", f.name);
            }
        }

        let before = snapshot(&dir);
        let again = init(&inv, &InitOptions::default(), &Collect::default()).unwrap();
        assert!(!again.changed(), "{:?} {:?}", again.created, again.renewed);
        assert_eq!(before, snapshot(&dir));
        // --renew on a fitting PKI changes nothing either.
        let renew = InitOptions {
            renew: true,
            ..Default::default()
        };
        assert!(!init(&inv, &renew, &Collect::default()).unwrap().changed());
        assert_eq!(before, snapshot(&dir));
    }

    #[test]
    fn new_controller_needs_renew_which_keeps_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        init(&inv, &InitOptions::default(), &Collect::default()).unwrap();
        let dir = inv.pki_dir();
        let before = snapshot(&dir);

        let grown = format!(
            "{INVENTORY}\n[[controllers]]\nname = \"controller-3\"\ninternal_ip = \"10.240.0.13\"\n"
        );
        let inv = inventory(tmp.path(), &grown);
        let report = check(&inv, SystemTime::now());
        assert!(!report.fits_inventory());
        assert_eq!(report.needed_fix(), Some(Fix::Renew));
        let err = report.error().unwrap().to_string();
        assert!(
            err.contains("kubernetes.pem: SANs do not cover 10.240.0.13"),
            "{err}"
        );
        assert!(err.contains("imgbuild pki init --renew"), "{err}");

        assert!(err.contains("etcd-controller-3.pem: missing"), "{err}");

        // Plain init adds what is missing (the new controller's etcd pair)
        // and changes nothing that exists.
        let err = init(&inv, &InitOptions::default(), &Collect::default()).unwrap_err();
        assert!(err.to_string().contains("--renew"), "{err}");
        let added = snapshot(&dir);
        let new: Vec<&String> = added.keys().filter(|k| !before.contains_key(*k)).collect();
        assert_eq!(new, ["etcd-controller-3-key.pem", "etcd-controller-3.pem"]);
        for (name, bytes) in &before {
            assert!(added.get(name) == Some(bytes), "plain init changed {name}");
        }

        let renew = InitOptions {
            renew: true,
            ..Default::default()
        };
        let r = init(&inv, &renew, &Collect::default()).unwrap();
        assert_eq!(r.renewed, ["kubernetes.pem"]);
        assert!(r.created.is_empty());
        let after = snapshot(&dir);
        for (name, bytes) in &before {
            if name != "kubernetes.pem" {
                assert_eq!(Some(bytes), after.get(name), "{name} changed");
            }
        }
        assert!(check(&inv, SystemTime::now()).fits_inventory());
    }

    /// A controller's new address: its etcd certificate (and the API
    /// server's) no longer cover it; --renew re-issues both for their keys;
    /// an external etcd needs no etcd certificates at all.
    #[test]
    fn etcd_certificates_follow_their_controller() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        init(&inv, &InitOptions::default(), &Collect::default()).unwrap();
        let report = check(&inv, SystemTime::now()).to_string();
        assert!(
            report.contains("etcd-controller-2.pem: SANs cover the inventory (4 names)"),
            "{report}"
        );
        let before = snapshot(&inv.pki_dir());
        let moved = inventory(tmp.path(), &INVENTORY.replace("10.240.0.12", "10.240.0.22"));
        let err = check(&moved, SystemTime::now())
            .error()
            .unwrap()
            .to_string();
        assert!(
            err.contains("etcd-controller-2.pem: SANs do not cover 10.240.0.22 (controllers[2] (controller-2).internal_ip)"),
            "{err}"
        );
        let renew = InitOptions {
            renew: true,
            ..Default::default()
        };
        let r = init(&moved, &renew, &Collect::default()).unwrap();
        assert_eq!(r.renewed, ["kubernetes.pem", "etcd-controller-2.pem"]);
        let after = snapshot(&inv.pki_dir());
        assert_eq!(
            before["etcd-controller-2-key.pem"],
            after["etcd-controller-2-key.pem"]
        );
        assert_eq!(
            before["etcd-controller-1.pem"],
            after["etcd-controller-1.pem"]
        );

        let external = inventory(
            tmp.path(),
            &format!(
                "{}\n[etcd]\nmode = \"external\"\n",
                INVENTORY.replace("10.240.0.12", "10.240.0.22")
            ),
        );
        std::fs::remove_file(external.pki_dir().join("etcd-controller-1.pem")).unwrap();
        let report = check(&external, SystemTime::now());
        assert!(report.fits_inventory(), "{report}");
        assert!(!report.to_string().contains("etcd-"), "{report}");
    }

    #[test]
    fn version_change_rewrites_encryption_format_keeping_key() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        init(&inv, &InitOptions::default(), &Collect::default()).unwrap();
        let path = inv.pki_dir().join(ENCRYPTION_CONFIG);
        let old = encryption::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let inv = inventory(tmp.path(), &INVENTORY.replace("v1.10.2", "v1.34.7"));
        assert_eq!(
            check(&inv, SystemTime::now()).needed_fix(),
            Some(Fix::Renew)
        );
        let renew = InitOptions {
            renew: true,
            ..Default::default()
        };
        let r = init(&inv, &renew, &Collect::default()).unwrap();
        assert_eq!(r.renewed, [ENCRYPTION_CONFIG]);
        let new = encryption::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(!new.legacy);
        assert_eq!(new.providers, old.providers);
    }

    #[test]
    fn force_moves_old_files_aside_and_makes_a_new_ca() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        init(&inv, &InitOptions::default(), &Collect::default()).unwrap();
        let dir = inv.pki_dir();
        let old = snapshot(&dir);
        let events = Collect::default();
        let force = InitOptions {
            force: true,
            ..Default::default()
        };
        let r = init(&inv, &force, &events).unwrap();
        assert_eq!(r.replaced.len(), files_for(&inv).len());
        let backup = r.backup.unwrap();
        assert_eq!(snapshot(&backup), old);
        assert_ne!(old[CA_KEY], snapshot(&dir)[CA_KEY]);
        let said = events.0.lock().unwrap().join("\n");
        assert!(
            said.contains("--force replaced ca.pem, ca-key.pem"),
            "{said}"
        );
    }

    #[test]
    fn half_a_ca_is_refused_and_missing_leaf_key_needs_renew() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        init(&inv, &InitOptions::default(), &Collect::default()).unwrap();
        let dir = inv.pki_dir();

        std::fs::remove_file(dir.join("admin-key.pem")).unwrap();
        let report = check(&inv, SystemTime::now());
        assert_eq!(report.needed_fix(), Some(Fix::Renew), "{report}");
        let renew = InitOptions {
            renew: true,
            ..Default::default()
        };
        let r = init(&inv, &renew, &Collect::default()).unwrap();
        assert_eq!(r.created, ["admin-key.pem"]);
        assert_eq!(r.renewed, ["admin.pem", "admin.kubeconfig"]);

        std::fs::remove_file(dir.join(CA_KEY)).unwrap();
        assert_eq!(
            check(&inv, SystemTime::now()).needed_fix(),
            Some(Fix::Force)
        );
        let err = init(&inv, &renew, &Collect::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("ca-key.pem is missing") && err.contains("--force"),
            "{err}"
        );
    }

    #[test]
    fn short_validity_warns_and_expired_fails() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        let events = Collect::default();
        let opts = InitOptions {
            days: 10,
            ..Default::default()
        };
        let r = init(&inv, &opts, &events).unwrap();
        let warned: Vec<_> = r.check.warnings().map(|f| f.file.clone()).collect();
        assert!(warned.contains(&"kubernetes.pem".to_string()), "{warned:?}");
        assert!(warned.contains(&"admin.kubeconfig (client certificate)".to_string()));
        assert!(!warned.contains(&CA_CERT.to_string()));
        let days: BTreeMap<_, _> = r.check.expiry_days.iter().cloned().collect();
        // 10 when checked within the second of issue, 9 after.
        assert!((9..=10).contains(&days["kubernetes.pem"]), "{days:?}");
        assert!(
            events
                .0
                .lock()
                .unwrap()
                .iter()
                .any(|e| e.contains("Warning"))
        );

        let later = SystemTime::now() + std::time::Duration::from_secs(11 * 86_400);
        let report = check(&inv, later);
        assert!(!report.fits_inventory());
        assert!(
            report
                .to_string()
                .contains("ERROR  kubernetes.pem: expired"),
            "{report}"
        );
    }

    #[test]
    fn renew_reissues_expiring_certificates_for_the_same_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        let short = InitOptions {
            days: 10,
            ..Default::default()
        };
        init(&inv, &short, &Collect::default()).unwrap();
        let before = snapshot(&inv.pki_dir());
        let renew = InitOptions {
            renew: true,
            ..Default::default()
        };
        let r = init(&inv, &renew, &Collect::default()).unwrap();
        assert!(r.created.is_empty(), "{:?}", r.created);
        let mut want: Vec<String> = LEAVES.iter().map(|l| l.cert_file()).collect();
        want.extend(["etcd-controller-1.pem", "etcd-controller-2.pem"].map(String::from));
        want.extend(
            ["admin", "kube-controller-manager", "kube-scheduler"]
                .map(|s| format!("{s}.kubeconfig")),
        );
        assert_eq!(r.renewed, want);
        assert_eq!(r.check.warnings().count(), 0, "{}", r.check);
        let after = snapshot(&inv.pki_dir());
        for f in files_for(&inv)
            .iter()
            .filter(|f| f.name.ends_with("-key.pem"))
        {
            assert_eq!(before[&f.name], after[&f.name], "{} changed", f.name);
        }
        assert_eq!(before[CA_CERT], after[CA_CERT]);
        assert_eq!(before[ENCRYPTION_CONFIG], after[ENCRYPTION_CONFIG]);
        assert!(
            init(
                &inv,
                &InitOptions {
                    days: 0,
                    ..Default::default()
                },
                &Silent
            )
            .is_err()
        );
    }

    #[test]
    fn missing_folder_says_init() {
        let tmp = tempfile::tempdir().unwrap();
        let inv = inventory(tmp.path(), INVENTORY);
        let report = check(&inv, SystemTime::now());
        assert_eq!(report.needed_fix(), Some(Fix::Init));
        assert!(
            report
                .error()
                .unwrap()
                .to_string()
                .contains("imgbuild pki init --inventory")
        );
    }
}
