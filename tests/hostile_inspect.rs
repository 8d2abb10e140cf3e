//! Hostile files given to `imgbuild inspect`: cpio archives the kernel would
//! unpack differently from their listing (shared inodes, hard links), sizes
//! that would allocate gigabytes, truncation, names that are not UTF-8, tar
//! archives with too many members, names leaving the root or going through a
//! symlink, vfat images whose folders loop, user-data and Ignition bombs,
//! and names carrying terminal escapes. Each is refused (or, for escapes,
//! printed escaped) within seconds, naming the problem, without a panic.

mod support;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use support::Workspace;
use support::hostile::{assert_refused, output_within};

const V: &str = "v1.10.2";

// ---------------------------------------------------------------- helpers

/// A workspace for reading files only: no PKI, no binaries.
fn ws() -> Workspace {
    Workspace::builder(V).no_pki().no_binaries().build()
}

/// `imgbuild inspect ARGS` in `ws`, within a minute.
fn inspect(ws: &Workspace, args: &[&Path]) -> Output {
    let mut cmd = ws.cmd();
    cmd.arg("inspect").args(args);
    output_within(cmd, Duration::from_secs(60))
}

/// Write `bytes` as `name` in the workspace; its path.
fn put(ws: &Workspace, name: &str, bytes: &[u8]) -> PathBuf {
    let p = ws.path(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, bytes).unwrap();
    p
}

/// One newc entry: header fields as given (`namesize` and `filesize` too,
/// so they can lie), the name, and the data, padded.
struct Newc<'a> {
    ino: u32,
    mode: u32,
    nlink: u32,
    uid: u32,
    filesize: u32,
    namesize: u32,
    name: &'a [u8],
    data: &'a [u8],
}

impl<'a> Newc<'a> {
    fn file(ino: u32, name: &'a str, data: &'a [u8]) -> Self {
        Newc {
            ino,
            mode: 0o100_644,
            nlink: 1,
            uid: 0,
            filesize: data.len() as u32,
            namesize: name.len() as u32 + 1,
            name: name.as_bytes(),
            data,
        }
    }
    fn dir(ino: u32, name: &'a str) -> Self {
        Newc {
            mode: 0o040_755,
            nlink: 2,
            ..Newc::file(ino, name, b"")
        }
    }
    fn bytes(&self, out: &mut Vec<u8>) {
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            0,
            self.nlink,
            0,
            self.filesize,
            0,
            0,
            0,
            0,
            self.namesize,
            0,
        ];
        out.extend_from_slice(b"070701");
        for f in fields {
            out.extend_from_slice(format!("{f:08X}").as_bytes());
        }
        out.extend_from_slice(self.name);
        out.push(0);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(self.data);
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
    }
}

/// A newc archive of `entries` and a trailer.
fn cpio(entries: &[Newc]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        e.bytes(&mut out);
    }
    Newc {
        ino: 0,
        mode: 0,
        ..Newc::file(0, "TRAILER!!!", b"")
    }
    .bytes(&mut out);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// A raw 512-byte ustar header: name, type flag, size, uid, link name as given.
fn tar_header(name: &[u8], kind: u8, size: u64, uid: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    let octal = |v: u64, len: usize| format!("{v:0w$o}\0", w = len - 1).into_bytes();
    if uid < 1 << 21 {
        h[108..116].copy_from_slice(&octal(uid, 8));
    } else {
        // Too large for octal: GNU's base-256 (the high bit set, big-endian).
        h[108..116].copy_from_slice(&uid.to_be_bytes());
        h[108] |= 0x80;
    }
    h[116..124].copy_from_slice(&octal(0, 8));
    h[124..136].copy_from_slice(&octal(size, 12));
    h[136..148].copy_from_slice(&octal(0, 12));
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of raw members (header fields as given, data padded), with the
/// end-of-archive blocks.
fn tar(members: &[([u8; 512], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (h, data) in members {
        out.extend_from_slice(h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

fn dir_entry(name: &str) -> ([u8; 512], &'static [u8]) {
    (tar_header(name.as_bytes(), b'5', 0, 0, b""), b"")
}

fn file_entry<'a>(name: &str, data: &'a [u8]) -> ([u8; 512], &'a [u8]) {
    (
        tar_header(name.as_bytes(), b'0', data.len() as u64, 0, b""),
        data,
    )
}

// ---------------------------------------------------------------- cpio

#[test]
fn cpio_entries_sharing_an_inode_are_refused() {
    let ws = ws();
    // The kernel would make /etc/b a hard link to /etc/a, whatever b's data.
    let bytes = cpio(&[
        Newc::dir(1, "etc"),
        Newc::file(2, "etc/a", b"a"),
        Newc::file(2, "etc/b", b"something else"),
    ]);
    let p = put(&ws, "shared.cpio", &bytes);
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["etc/b shares inode 2 with etc/a"],
    );
}

#[test]
fn cpio_file_with_nlink_above_one_is_refused() {
    let ws = ws();
    let mut f = Newc::file(2, "etc/a", b"a");
    f.nlink = 2;
    let p = put(&ws, "nlink.cpio", &cpio(&[Newc::dir(1, "etc"), f]));
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["etc/a is a file with nlink 2"],
    );
}

#[test]
fn cpio_symlink_of_4_gib_is_refused_without_allocating_it() {
    let ws = ws();
    let mut link = Newc::file(2, "etc/l", b"");
    link.mode = 0o120_777;
    link.filesize = u32::MAX;
    let mut bytes = Vec::new();
    Newc::dir(1, "etc").bytes(&mut bytes);
    link.bytes(&mut bytes);
    let p = put(&ws, "link.cpio", &bytes);
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["etc/l: a symlink target of 4294967295 bytes (at most 4096)"],
    );
}

#[test]
fn cpio_truncated_is_refused() {
    let ws = ws();
    let bytes = cpio(&[Newc::dir(1, "etc"), Newc::file(2, "etc/a", &[7u8; 5000])]);
    let p = put(&ws, "cut.cpio", &bytes[..2000]);
    assert_refused(&ws, &inspect(&ws, &[&p]), 2, &["etc/a is truncated"]);
    // Gzipped and cut inside the gzip stream too.
    let gz = gzip(&bytes);
    let p = put(&ws, "cut.cpio.gz", &gz[..gz.len() / 2]);
    let out = inspect(&ws, &[&p]);
    assert_ne!(out.status.code(), Some(0));
    assert_refused(&ws, &out, out.status.code().unwrap(), &["cut.cpio.gz"]);
}

#[test]
fn cpio_huge_name_size_is_refused() {
    let ws = ws();
    let mut e = Newc::file(1, "etc", b"");
    e.namesize = u32::MAX;
    let mut bytes = Vec::new();
    e.bytes(&mut bytes);
    let p = put(&ws, "name.cpio", &bytes);
    assert_refused(&ws, &inspect(&ws, &[&p]), 2, &["bad name size 4294967295"]);
}

#[test]
fn cpio_non_utf8_name_is_refused() {
    let ws = ws();
    let mut e = Newc::file(1, "etc", b"");
    e.name = b"etc/\xff\xfe";
    e.namesize = 7;
    let mut bytes = Vec::new();
    e.bytes(&mut bytes);
    let p = put(&ws, "utf8.cpio", &bytes);
    assert_refused(&ws, &inspect(&ws, &[&p]), 2, &["non-UTF-8 name"]);
}

// ---------------------------------------------------------------- tar

#[test]
fn tar_with_too_many_members_is_refused() {
    let ws = ws();
    let mut raw = Vec::new();
    raw.extend_from_slice(&dir_entry("etc/").0);
    for i in 0..70_000u32 {
        raw.extend_from_slice(&tar_header(format!("etc/{i}").as_bytes(), b'0', 0, 0, b""));
    }
    raw.extend_from_slice(&[0u8; 1024]);
    let p = put(&ws, "many.tar.gz", &gzip(&raw));
    assert_refused(&ws, &inspect(&ws, &[&p]), 2, &["more than 65536 entries"]);
}

#[test]
fn tar_absolute_and_dotdot_names_are_refused() {
    let ws = ws();
    let abs = tar(&[dir_entry("etc/"), file_entry("/etc/shadow", b"x")]);
    let p = put(&ws, "abs.tar.gz", &gzip(&abs));
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["/etc/shadow has an absolute name"],
    );
    let up = tar(&[dir_entry("etc/"), file_entry("etc/../../root/.ssh/x", b"x")]);
    let p = put(&ws, "up.tar.gz", &gzip(&up));
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["etc/../../root/.ssh/x: not a plain path below the root"],
    );
}

#[test]
fn tar_member_through_a_symlink_is_refused() {
    let ws = ws();
    let bytes = tar(&[
        dir_entry("etc/"),
        (tar_header(b"etc/up", b'2', 0, 0, b"/"), b""),
        file_entry("etc/up/etc/shadow", b"root::0:0:::::\n"),
    ]);
    let p = put(&ws, "escape.tar.gz", &gzip(&bytes));
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["/etc/up/etc/shadow lies beneath the symlink /etc/up"],
    );
}

#[test]
fn tar_pax_header_bomb_is_refused_unread() {
    let ws = ws();
    // A PAX header claiming 1 GiB of zeros: the tar crate would read it all
    // into memory; imgbuild never writes one.
    let mut raw = tar_header(b"././@PaxHeader", b'x', 1 << 30, 0, b"").to_vec();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&raw).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        gz.write_all(&zeros).unwrap();
    }
    raw.clear();
    let p = put(&ws, "pax.tar.gz", &gz.finish().unwrap());
    let out = inspect(&ws, &[&p]);
    assert_refused(&ws, &out, 2, &["pax.tar.gz", "which imgbuild never writes"]);
}

#[test]
fn tar_uid_over_32_bits_and_member_over_the_cap_are_refused() {
    let ws = ws();
    let big_uid = tar(&[(tar_header(b"etc/", b'5', 0, 1 << 33, b""), b"")]);
    let p = put(&ws, "uid.tar.gz", &gzip(&big_uid));
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["uid 8589934592 does not fit 32 bits"],
    );
    // A header saying 5 GiB: refused before a byte of it is read.
    let mut raw = tar_header(b"etc/big", b'0', 5 << 30, 0, b"").to_vec();
    raw.extend_from_slice(&[0u8; 4096]);
    let p = put(&ws, "big.tar.gz", &gzip(&raw));
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["etc/big is 5368709120 bytes: over the cap"],
    );
}

// ---------------------------------------------------------------- vfat

/// A seed image of a real cloud-init build, as bytes.
fn seed_image() -> Vec<u8> {
    let ws = Workspace::new(V);
    ws.ok(&["cloud-init", "--node", "1"]);
    fs::read(ws.path("out/controller-1-cloud-init/seed.img")).unwrap()
}

/// The offset of the 32-byte root folder entry whose 8.3 name is `name83`.
fn entry_at(img: &[u8], name83: &[u8; 11]) -> usize {
    img.windows(11)
        .position(|w| w == name83)
        .unwrap_or_else(|| panic!("{:?} not in the image", String::from_utf8_lossy(name83)))
}

#[test]
fn vfat_folder_that_contains_itself_is_refused() {
    let ws = ws();
    let mut img = seed_image();
    let p = put(&ws, "loop.img", &img);
    // A folder D made by mtools, then pointed at cluster 0: the root folder,
    // so D holds D holds D...
    support::sh(
        std::process::Command::new("mmd")
            .arg("-i")
            .arg(&p)
            .arg("::/D"),
    );
    img = fs::read(&p).unwrap();
    let at = entry_at(&img, b"D          ");
    img[at + 20..at + 22].fill(0);
    img[at + 26..at + 28].fill(0);
    let p = put(&ws, "loop.img", &img);
    assert_refused(&ws, &inspect(&ws, &[&p]), 2, &["levels deep"]);
}

#[test]
fn vfat_file_claiming_4_gib_is_refused() {
    let ws = ws();
    let mut img = seed_image();
    let at = entry_at(&img, b"USER-D~1   ");
    img[at + 28..at + 32].copy_from_slice(&u32::MAX.to_le_bytes());
    let p = put(&ws, "huge.img", &img);
    assert_refused(&ws, &inspect(&ws, &[&p]), 2, &["claims 4294967295 bytes"]);
}

// ---------------------------------------------------------------- user-data, Ignition

/// A cloud-init folder holding this user-data (and nothing else).
fn cloud_init_dir(ws: &Workspace, user_data: &[u8]) -> PathBuf {
    put(ws, "ci/controller-1-cloud-init/user-data", user_data);
    ws.path("ci/controller-1-cloud-init")
}

#[test]
fn user_data_gzip_bomb_is_refused() {
    let ws = ws();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(b"#cloud-config\n").unwrap();
    let zeros = vec![b'#'; 1 << 20];
    for _ in 0..256 {
        gz.write_all(&zeros).unwrap();
    }
    let dir = cloud_init_dir(&ws, &gz.finish().unwrap());
    assert_refused(
        &ws,
        &inspect(&ws, &[&dir]),
        2,
        &["gunzips to more than 16777216 bytes"],
    );
}

#[test]
fn user_data_base64_bomb_is_refused() {
    let ws = ws();
    let mut text = b"#cloud-config\nwrite_files:\n- path: \"/x\"\n  owner: \"root:root\"\n  encoding: \"b64\"\n  content: \"".to_vec();
    text.resize(text.len() + (24 << 20), b'A');
    text.extend_from_slice(b"\"\n");
    let dir = cloud_init_dir(&ws, &text);
    assert_refused(&ws, &inspect(&ws, &[&dir]), 2, &["over 16777216 bytes"]);
}

#[test]
fn user_data_deep_yaml_is_refused() {
    let ws = ws();
    let mut text = String::from("#cloud-config\nwrite_files:\n");
    for depth in 0..100_000 {
        text.push_str(&" ".repeat(depth % 200));
        text.push_str("- [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n");
    }
    let dir = cloud_init_dir(&ws, text.as_bytes());
    assert_refused(&ws, &inspect(&ws, &[&dir]), 2, &["user-data: line 3"]);
    // The same nesting as JSON lists in runcmd.
    let deep = format!(
        "#cloud-config\nruncmd:\n- {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let dir = cloud_init_dir(&ws, deep.as_bytes());
    assert_refused(&ws, &inspect(&ws, &[&dir]), 2, &["user-data: line 3"]);
}

#[test]
fn ignition_gzip_bomb_in_a_data_url_is_refused() {
    use base64::Engine as _;
    let ws = ws();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..128 {
        gz.write_all(&zeros).unwrap();
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
    let config = serde_json::json!({
        "ignition": {"version": "3.3.0"},
        "storage": {"files": [{
            "path": "/etc/bomb", "mode": 420, "overwrite": true,
            "user": {"id": 0}, "group": {"id": 0},
            "contents": {"source": format!("data:;base64,{b64}"), "compression": "gzip"}
        }]}
    });
    let p = put(&ws, "controller-1.ign", config.to_string().as_bytes());
    assert_refused(
        &ws,
        &inspect(&ws, &[&p]),
        2,
        &["/etc/bomb", "decode to more than"],
    );
}

// ---------------------------------------------------------------- printing

#[test]
fn names_with_terminal_escapes_are_printed_escaped() {
    let ws = ws();
    let bytes = tar(&[
        dir_entry("etc/"),
        file_entry("etc/\x1b[2J\x1b]0;owned\x07red", b"x"),
        (tar_header(b"etc/l", b'2', 0, 0, b"\x1b[31mtarget"), b""),
    ]);
    let p = put(&ws, "controller-1.tar.gz", &gzip(&bytes));
    put(&ws, "controller-1.manifest.json", br#"{"arch":"amd64","cluster":"c","entries":[],"format":"tar.gz","imgbuild_version":"0","inventory_sha256":"0","kubernetes_version":"v1.10.2","mtime":0,"node_index":1,"node_name":"controller-1","outputs":[],"recipe":"r"}"#);
    let mut cmd = ws.cmd();
    cmd.args(["inspect", "--verify"]).arg(&p);
    let out = output_within(cmd, Duration::from_secs(60));
    assert_eq!(out.status.code(), Some(4), "{}", support::text(&out));
    for stream in [&out.stdout, &out.stderr] {
        assert!(
            !stream.contains(&0x1b) && !stream.contains(&0x07),
            "a raw escape: {stream:?}"
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("/etc/\\u{1b}[2J\\u{1b}]0;owned\\u{7}red"),
        "{stdout}"
    );
    assert!(stdout.contains("-> \\u{1b}[31mtarget"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("differs: /etc/\\u{1b}[2J"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // An error quoting such a name escapes it too.
    let bad = tar(&[dir_entry("etc/"), file_entry("/etc/\x1b[31mx", b"x")]);
    let p = put(&ws, "bad.tar.gz", &gzip(&bad));
    let out = inspect(&ws, &[&p]);
    assert!(!out.stderr.contains(&0x1b), "{:?}", out.stderr);
    assert_refused(&ws, &out, 2, &["/etc/\\u{1b}[31mx has an absolute name"]);
}

#[test]
fn folder_holding_a_fifo_is_refused() {
    let ws = Workspace::new(V);
    ws.ok_dir("1", "tree", &[]);
    let fifo = ws.path("tree/controller-1/etc/fifo");
    support::sh(std::process::Command::new("mkfifo").arg(&fifo));
    let out = inspect(&ws, &[&ws.path("tree/controller-1")]);
    assert_refused(
        &ws,
        &out,
        2,
        &["etc/fifo: a FIFO, which imgbuild never writes"],
    );
}

#[test]
fn a_fifo_or_a_device_given_to_inspect_is_refused_without_blocking() {
    let ws = ws();
    let fifo = ws.path("controller-1.cpio");
    support::sh(std::process::Command::new("mkfifo").arg(&fifo));
    assert_refused(&ws, &inspect(&ws, &[&fifo]), 2, &["not a regular file"]);
    assert_refused(
        &ws,
        &inspect(&ws, &[Path::new("/dev/zero")]),
        2,
        &["/dev/zero: not a regular file"],
    );
}
