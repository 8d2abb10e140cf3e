//! What each fuzz target does with its input. Shared by the fuzz targets
//! (`fuzz/fuzz_targets/*.rs`, through `imgbuild_fuzz::harness`) and by the
//! main crate's regression test (`tests/fuzz_regressions.rs` includes this
//! file), so a reproducer runs through exactly the code that found it. It
//! uses nothing but `imgbuild` and the main crate's own dependencies.
//!
//! Every target calls the real entry point (a file is written where the entry
//! point reads one) and checks:
//! - no panic (libFuzzer turns one into a crash);
//! - no allocation over [`ALLOC_CAP`] ([`CappedAlloc`] aborts: a length field
//!   must not decide how much memory is taken before the bytes are there);
//! - an error is at most [`ERROR_MAX`] bytes and quotes no more than
//!   [`ECHO_MAX`] consecutive bytes of the input (`imgbuild::error::clip`
//!   cuts echoed values to 120 characters, at most 480 bytes);
//! - where cheap, a property of what was read (given per target).

use std::alloc::{GlobalAlloc, Layout, System};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use imgbuild::Error;
use imgbuild::acquire::lock::parse_checksum;
use imgbuild::codec::{cpio, vfat, zstd};
use imgbuild::input::assets::Assets;
use imgbuild::input::inventory::Inventory;
use imgbuild::input::profile::Profile;
use imgbuild::input::recipe::{self, Algorithm, Recipe, Version};
use imgbuild::inspect::MAX_USER_DATA;
use imgbuild::output::cloud_init::yaml;
use imgbuild::output::manifest::Listed;
use imgbuild::store::cache::parse_pin;
use sha2::Digest as _;

/// A target's body: one input, checked; a panic is a finding.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file and of its folder
/// under `tests/fuzz_regressions/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("inventory", inventory),
    ("recipe", recipe),
    ("layout", layout),
    ("checksum", checksum),
    ("user_data", user_data),
    ("cpio", cpio),
    ("tar", tar),
    ("vfat", vfat),
];

/// The most one allocation may take. Inputs are at most a few MiB; nothing
/// imgbuild reads should need more than a few pieces of 1 MiB at once.
pub const ALLOC_CAP: usize = 64 << 20;

/// The longest run of input bytes an error may quote verbatim.
pub const ECHO_MAX: usize = 480;

/// The longest error message.
pub const ERROR_MAX: usize = 8 << 10;

/// The system allocator, aborting (a crash to libFuzzer) on an allocation
/// over [`ALLOC_CAP`]. `vec![0; n]` of a huge `n` is otherwise cheap (the
/// pages are never touched), so no RSS limit would notice it.
pub struct CappedAlloc;

fn over_cap(size: usize) {
    if size > ALLOC_CAP {
        // No allocation here: format straight into stderr.
        let _ = writeln!(
            io::stderr(),
            "imgbuild-fuzz: an allocation of {size} bytes, over the {ALLOC_CAP}-byte cap"
        );
        std::process::abort();
    }
}

// SAFETY: every call goes to `System` unchanged; the cap only aborts before.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        over_cap(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        over_cap(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        over_cap(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// The start of a long text, for assertion messages.
fn head(s: &str) -> String {
    let h: String = s.chars().take(300).collect();
    if h.len() < s.len() {
        format!("{h}… ({} bytes in all)", s.len())
    } else {
        h
    }
}

/// Where `message` quotes more than [`ECHO_MAX`] consecutive bytes of
/// `input`: windows of `ECHO_MAX + 1` bytes are tried every 32 bytes, so any
/// run of 512 bytes or more is found, and none of [`ECHO_MAX`] or fewer.
fn echoed(message: &[u8], input: &[u8]) -> Option<usize> {
    let w = ECHO_MAX + 1;
    if message.len() < w || input.len() < w {
        return None;
    }
    (0..=message.len() - w).step_by(32).find(|&start| {
        let needle = &message[start..start + w];
        input.windows(w).any(|h| h == needle)
    })
}

/// An error's message is bounded, whatever the input.
pub fn check_error(e: &Error, input: &[u8]) {
    let m = e.message();
    assert!(
        m.len() <= ERROR_MAX,
        "a {}-byte error message (at most {ERROR_MAX}): {}",
        m.len(),
        head(m)
    );
    if let Some(at) = echoed(m.as_bytes(), input) {
        panic!(
            "the error quotes more than {ECHO_MAX} bytes of the input (from its byte {at}): {}",
            head(m)
        );
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

fn write(path: &Path, bytes: &[u8]) {
    fs::write(path, bytes).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

// ------------------------------------------------------------ inventory

/// `Inventory::load` on the input as `cluster.toml`. Property: a loaded
/// inventory, written back as TOML, loads again to the same values, and the
/// accessors the commands use next (service IP, etcd servers, `--node` by
/// index and by name) answer.
pub fn inventory(data: &[u8]) {
    let dir = tempdir();
    let path = dir.path().join("cluster.toml");
    write(&path, data);
    let inv = match Inventory::load(&path) {
        Ok(inv) => inv,
        Err(e) => return check_error(&e, data),
    };
    let text = toml::to_string(&inv)
        .unwrap_or_else(|e| panic!("a loaded inventory does not serialize: {e}"));
    write(&path, text.as_bytes());
    let again = Inventory::load(&path).unwrap_or_else(|e| {
        panic!(
            "a loaded inventory, written back, is refused: {e}\n{}",
            head(&text)
        )
    });
    assert_eq!(
        toml::to_string(&again).unwrap(),
        text,
        "written back and loaded again, the inventory changed"
    );
    inv.service_ip()
        .unwrap_or_else(|e| panic!("validated, yet no service IP: {e}"));
    let _ = inv.etcd_servers();
    for (i, c) in inv.controllers.iter().enumerate() {
        let by_index = inv.node(&(i + 1).to_string()).map(|(n, _)| n);
        assert_eq!(by_index.ok(), Some(i + 1), "--node {}", i + 1);
        // A name of digits only reads as an index.
        if c.name.parse::<usize>().is_err() {
            let by_name = inv.node(&c.name).map(|(n, _)| n);
            assert_eq!(by_name.ok(), Some(i + 1), "--node {}", c.name);
        }
    }
}

// ------------------------------------------------------------ recipe

/// `Recipe::parse` of the input as a recipe (its layout from the built-in
/// ones). Properties: written back as TOML it parses to the same recipe; under
/// the file name its version gives it parses too; every pin reads back (`digest_for`, `pin_for`,
/// `artifact_by_digest`, the cache's `parse_pin`); `{arch}` expands to a file
/// name and a relative URL path for every pinned arch.
pub fn recipe(data: &[u8]) {
    // The loader reads a recipe with `read_to_string`: only text gets this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let assets = Assets::default();
    let r = match Recipe::parse(&assets, "", text, "fuzz/recipe.toml") {
        Ok(r) => r,
        Err(e) => return check_error(&e, data),
    };
    let written =
        toml::to_string(&r).unwrap_or_else(|e| panic!("a recipe does not serialize: {e}"));
    let again = Recipe::parse(&assets, "", &written, "written back")
        .unwrap_or_else(|e| panic!("a parsed recipe, written back, is refused: {e}"));
    assert_eq!(toml::to_string(&again).unwrap(), written);
    if let Some(v) = Version::parse(&r.kubernetes_version) {
        let name = recipe::file_name(&v.to_string());
        // Versions are compared parsed: `v1.01.2` is the version of
        // kubernetes-v1.1.2.toml.
        if let Err(e) = Recipe::parse(&assets, &name, text, "fuzz/recipe.toml") {
            panic!(
                "{name} refused for kubernetes_version {:?}: {e}",
                r.kubernetes_version
            );
        }
    }
    for a in &r.artifacts {
        for (arch, hex) in &a.digests {
            assert_eq!(a.digest_for(&r.name, arch).ok(), Some(hex.as_str()));
            let pin = a.pin_for(&r.name, arch).expect("a pin");
            assert_eq!(parse_pin(&pin), Some((a.algorithm, hex.as_str())), "{pin}");
            assert!(r.artifact_by_digest(a.algorithm, hex).is_some());
            let file = a.file_for(arch);
            assert!(recipe::is_plain(&file), "file {file:?}");
            let url = a.url_path_for(arch);
            assert!(recipe::is_rel_path(&url), "url_path {url:?}");
        }
    }
}

// ------------------------------------------------------------ layout

/// A recipe naming the layout `fuzz`, which the layout target writes.
const LAYOUT_RECIPE: &str = r#"kubernetes_version = "v1.36.0"
layout = "fuzz"

[[artifacts]]
name = "kube-apiserver"
kind = "file"
file = "kube-apiserver"
url_path = "v1.36.0/bin/linux/{arch}/kube-apiserver"
algorithm = "sha256"
trust = "local"
source = "fuzz"

[artifacts.digests]
amd64 = "0000000000000000000000000000000000000000000000000000000000000000"

[[artifacts.members]]
path = "kube-apiserver"
install = "usr/local/bin/kube-apiserver"
mode = 0o755
"#;

/// The input as `layouts/fuzz.toml` of a `--recipes` folder, read by
/// `Recipe::parse` of a recipe naming it, then every OS profile resolved
/// (`Profile::resolve`: the built-in names and the layout's own). Properties:
/// written back as TOML the layout parses to the same; a resolved profile
/// relocates every path of the layout and of the recipe to a relative path.
pub fn layout(data: &[u8]) {
    let dir = tempdir();
    fs::create_dir(dir.path().join("layouts")).unwrap();
    let file = dir.path().join("layouts/fuzz.toml");
    write(&file, data);
    let assets = Assets {
        recipe_dirs: vec![dir.path().to_path_buf()],
        lock_dirs: Vec::new(),
        overlay_dir: None,
    };
    let r = match Recipe::parse(&assets, "", LAYOUT_RECIPE, "fuzz-recipe") {
        Ok(r) => r,
        Err(e) => return check_error(&e, data),
    };
    let written = toml::to_string(&r.layout_def)
        .unwrap_or_else(|e| panic!("a layout does not serialize: {e}"));
    write(&file, written.as_bytes());
    let again = Recipe::parse(&assets, "", LAYOUT_RECIPE, "fuzz-recipe")
        .unwrap_or_else(|e| panic!("a parsed layout, written back, is refused: {e}"));
    assert_eq!(toml::to_string(&again.layout_def).unwrap(), written);

    let l = &r.layout_def;
    let mut names: Vec<&str> = vec!["debian", "flatcar", "fcos"];
    names.extend(l.os.keys().map(String::as_str));
    for name in names {
        let p = match Profile::resolve(l, "fuzz", name) {
            Ok(p) => p,
            Err(e) => {
                check_error(&e, data);
                continue;
            }
        };
        let paths = l
            .files
            .iter()
            .map(|f| f.path.as_deref().unwrap_or(&f.template))
            .chain(l.pki.iter().map(|f| f.path.as_str()))
            .chain(
                r.artifacts
                    .iter()
                    .flat_map(|a| &a.members)
                    .map(|m| m.install.as_str()),
            );
        for path in paths {
            let moved = p.relocate(path);
            assert!(
                recipe::is_rel_path(&moved),
                "--os {name}: {path:?} relocates to {moved:?}"
            );
        }
        for f in &l.files {
            p.keeps_file(&f.template);
        }
        for u in l.enable.values().flatten() {
            p.keeps_unit(u);
        }
    }
}

// ------------------------------------------------------------ checksum

/// `parse_checksum` of `imgbuild lock`, on what `Fetcher::get_text` hands it
/// (at most 64 KiB of UTF-8). The first byte picks the algorithm. Property: a
/// digest read is the file's first word in lower case, of the algorithm's
/// length, and a pin the cache reads back.
pub fn checksum(data: &[u8]) {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    let alg = if which & 1 == 0 {
        Algorithm::Sha256
    } else {
        Algorithm::Sha512
    };
    if body.len() > 64 << 10 {
        return;
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return;
    };
    let url = "https://mirror.invalid/v1.36.0/bin/linux/amd64/kubectl.sha256";
    match parse_checksum(text, alg, url) {
        Ok(hex) => {
            let first = text.split_whitespace().next().map(str::to_ascii_lowercase);
            assert_eq!(first.as_deref(), Some(hex.as_str()));
            let pin = format!("{}:{hex}", alg.name());
            assert_eq!(parse_pin(&pin), Some((alg, hex.as_str())), "{pin}");
        }
        Err(e) => {
            check_error(&e, body);
            assert!(e.message().contains(url), "{}", head(e.message()));
        }
    }
}

// ------------------------------------------------------------ user-data

/// `parse_user_data`, as `inspect` reads a cloud-init folder's user-data.
pub fn user_data(data: &[u8]) {
    if let Err(e) = yaml::parse_user_data(data, "user-data") {
        check_error(&e, data);
    }
}

// ------------------------------------------------------------ cpio

/// Files of at most this many bytes in all are written back by the cpio
/// target's round trip.
const ROUND_TRIP_DATA: u64 = 1 << 20;

/// `cpio::read_members` of the input, and `inspect` of it as a `.cpio` and
/// as a `.cpio.zst` (two zstd frames, as the split writer makes). Properties:
/// both `inspect`s list the same entries, or both refuse; what the reader
/// reads, written again with `CpioWriter` (files with zero bytes of their
/// size), reads back with the same names, types, permissions, owners, sizes
/// and link targets.
pub fn cpio(data: &[u8]) {
    // Only a plain cpio reads as one: other first bytes sniff as gzip, an
    // Ignition config or a seed image, which a zstd stream never holds.
    if data.starts_with(b"070701") {
        let plain = inspect_as(data, "controller-1.cpio", Packing::Plain);
        let zstd = inspect_as(data, "controller-1.cpio.zst", Packing::Zstd);
        same_listing(plain, zstd, "cpio", "cpio.zst");
    }
    let members = match cpio::read_members(data) {
        Ok(m) => m,
        Err(e) => return check_error(&e, data),
    };
    let total: u64 = members
        .iter()
        .filter(|m| m.type_name() == "file")
        .map(|m| m.size)
        .sum();
    if total > ROUND_TRIP_DATA {
        return;
    }
    let mut w = cpio::CpioWriter::new(Vec::new(), 0, 1).unwrap();
    let mut expected = Vec::new();
    for m in &members {
        let (perm, uid, gid) = (m.perm(), m.uid, m.gid);
        match m.type_name() {
            "dir" => w.dir(&m.path, perm, uid, gid),
            "file" => w.file(
                &m.path,
                perm,
                uid,
                gid,
                m.size,
                &mut io::repeat(0).take(m.size),
            ),
            "symlink" => {
                let target = m.target.as_deref().expect("a symlink has a target");
                w.symlink(&m.path, perm, uid, gid, target)
            }
            _ => continue,
        }
        .unwrap_or_else(|e| panic!("the writer refuses {:?} read by the reader: {e}", m.path));
        expected.push(m);
    }
    let bytes = w.finish().unwrap();
    let back = cpio::read_members(&bytes[..])
        .unwrap_or_else(|e| panic!("the reader refuses what the writer wrote: {e}"));
    let key = |m: &cpio::Member| {
        let size = if m.type_name() == "dir" { 0 } else { m.size };
        (
            m.path.clone(),
            m.type_name(),
            m.perm(),
            m.uid,
            m.gid,
            size,
            m.target.clone(),
        )
    };
    let want: Vec<_> = expected.iter().map(|m| key(m)).collect();
    let got: Vec<_> = back.iter().map(key).collect();
    assert_eq!(got, want, "the cpio round trip changed the members");
}

// ------------------------------------------------------------ tar

/// How the tar and cpio targets wrap their input before `inspect` reads it
/// (the mutations are in the archive, not in the compressed stream).
#[derive(Clone, Copy)]
enum Packing {
    Plain,
    Gzip,
    /// Two frames, cut at a 4-byte boundary half-way (the writers end a frame
    /// at a cpio entry; the readers take frames one after the other).
    Zstd,
}

/// `inspect` of `data`, packed, in a file named `name`. Errors are checked.
fn inspect_as(data: &[u8], name: &str, packing: Packing) -> Option<Vec<Listed>> {
    let dir = tempdir();
    let path = dir.path().join(name);
    let bytes = match packing {
        Packing::Plain => data.to_vec(),
        Packing::Gzip => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).unwrap();
            gz.finish().unwrap()
        }
        Packing::Zstd => {
            let cut = (data.len() / 2) & !3;
            let mut out = zstd::frame(&data[..cut], 1).unwrap();
            out.extend(zstd::frame(&data[cut..], 1).unwrap());
            out
        }
    };
    write(&path, &bytes);
    match imgbuild::inspect::inspect(&[path]) {
        Ok(found) => {
            for e in &found.entries {
                assert!(e.path.starts_with('/'), "entry {:?}", e.path);
            }
            Some(found.entries)
        }
        Err(e) => {
            check_error(&e, data);
            None
        }
    }
}

/// The same archive, packed two ways, lists the same or is refused both times.
fn same_listing(a: Option<Vec<Listed>>, b: Option<Vec<Listed>>, an: &str, bn: &str) {
    match (&a, &b) {
        (Some(x), Some(y)) => assert_eq!(x, y, "{an} and {bn} list different entries"),
        (None, None) => {}
        _ => panic!(
            "{an} {} and {bn} {}",
            if a.is_some() { "reads" } else { "is refused" },
            if b.is_some() { "reads" } else { "is refused" }
        ),
    }
}

/// `inspect` of the input as a `.tar.gz` and as a `.tar.zst` (two frames).
/// Properties: every entry listed has an absolute path; both list the same
/// entries, or both refuse.
pub fn tar(data: &[u8]) {
    let gz = inspect_as(data, "controller-1.tar.gz", Packing::Gzip);
    let zst = inspect_as(data, "controller-1.tar.zst", Packing::Zstd);
    same_listing(gz, zst, "tar.gz", "tar.zst");
}

// ------------------------------------------------------------ vfat

/// An image shorter than this is padded with zeros to it (a seed volume is at
/// least 1 MiB, mostly zeros: the seeds are real images with the zeros at the
/// end cut off).
pub const VFAT_SIZE: u64 = 1 << 20;

/// `vfat::read_vfat` and `vfat::read_vfat_file(.., "user-data")` (what
/// `inspect` does with a seed image) of the input as an image. Property: each
/// file of the root folder reads the same through both (when no other name
/// there differs from it only in case).
pub fn vfat(data: &[u8]) {
    let dir = tempdir();
    let path = dir.path().join("seed.img");
    let mut f = File::create(&path).unwrap();
    f.write_all(data).unwrap();
    if (data.len() as u64) < VFAT_SIZE {
        f.set_len(VFAT_SIZE).unwrap();
    }
    drop(f);
    match vfat::read_vfat(&path) {
        Ok((_label, entries)) => {
            let root: Vec<_> = entries.iter().filter(|e| !e.path.contains('/')).collect();
            for e in root.iter().filter(|e| !e.is_dir) {
                let lower = e.path.to_lowercase();
                if root
                    .iter()
                    .filter(|o| o.path.to_lowercase() == lower)
                    .count()
                    > 1
                {
                    continue;
                }
                let bytes = match vfat::read_vfat_file(&path, &e.path, MAX_USER_DATA) {
                    Ok(Some(b)) => b,
                    other => panic!(
                        "{:?} is listed, yet reads as {:?}",
                        e.path,
                        other.map(|o| o.map(|b| b.len()))
                    ),
                };
                assert_eq!(bytes.len() as u64, e.size, "{:?}", e.path);
                let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
                assert_eq!(Some(&sha256), e.sha256.as_ref(), "{:?}", e.path);
            }
        }
        Err(e) => check_error(&e, data),
    }
    if let Err(e) = vfat::read_vfat_file(&path, "user-data", MAX_USER_DATA) {
        check_error(&e, data);
    }
}

/// Run target `name` on `data` (the regression test's entry point).
pub fn run(name: &str, data: &[u8]) {
    let (_, f) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"));
    f(data)
}

/// The reproducers of `tests/fuzz_regressions/<target>/`, by target.
pub fn reproducers(root: &Path) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    for (name, _) in TARGETS {
        let Ok(rd) = fs::read_dir(root.join(name)) else {
            continue;
        };
        let mut files: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        out.extend(files.into_iter().map(|p| (*name, p)));
    }
    out
}
