//! Reproducible vfat images (the NoCloud seed volume).
//!
//! `fatfs` formats and fills the image; every timestamp comes from our own
//! `TimeProvider` (the plan's mtime), the volume id is given by the caller, and
//! the label is written both in the boot sector and as the root folder's volume
//! entry (blkid, which cloud-init uses to find `cidata`, prefers the latter).
//! File bytes stream from their readers, so a seed carrying 300 MB of binaries
//! does not sit in memory.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use fatfs::{Date, DateTime, FileSystem, FormatVolumeOptions, FsOptions, Time, TimeProvider};

use crate::codec::{copy_exact, sha256_of};
use crate::error::{Error, IoContext, Result};

/// Cluster size: fixed so the image size computed here is the one fatfs lays out.
const CLUSTER: u64 = 4096;

/// A file to put in the image's root folder.
pub struct VfatFile<'a> {
    pub path: String,
    pub size: u64,
    pub open: Box<dyn Fn() -> Result<Box<dyn Read + Send>> + 'a>,
}

/// A DOS timestamp for the whole image (2-second resolution, 1980..=2107).
#[derive(Debug, Clone, Copy)]
struct FixedTime(DateTime);

impl TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// Civil date and time (UTC) of a Unix time, clamped to what FAT can hold.
fn dos_time(unix: u64) -> DateTime {
    const MIN: u64 = 315_532_800; // 1980-01-01
    const MAX: u64 = 4_354_819_198; // 2107-12-31 23:59:58
    let t = unix.clamp(MIN, MAX);
    let (days, secs) = ((t / 86_400) as i64, t % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u16;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u16;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
    DateTime {
        date: Date { year, month, day },
        time: Time {
            hour: (secs / 3600) as u16,
            min: (secs / 60 % 60) as u16,
            sec: (secs % 60) as u16 & !1,
            millis: 0,
        },
    }
}

fn encode_dos(dt: &DateTime) -> (u16, u16) {
    let date = ((dt.date.year - 1980) << 9) | (dt.date.month << 5) | dt.date.day;
    let time = (dt.time.hour << 11) | (dt.time.min << 5) | (dt.time.sec / 2);
    (date, time)
}

/// Bytes the files need on the image, rounded generously.
fn image_size(files: &[VfatFile]) -> u64 {
    let data: u64 = files
        .iter()
        .map(|f| f.size.div_ceil(CLUSTER) * CLUSTER)
        .sum::<u64>()
        + 4 * CLUSTER;
    // FATs (2 x 4 bytes per cluster), boot sectors and slack, rounded to a MiB.
    let fats = 2 * 4 * (data / CLUSTER) + 64 * 1024;
    let total = data + fats + data / 50 + (1 << 20);
    total.div_ceil(1 << 20) * (1 << 20)
}

fn fat_err(dest: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |e| Error::io("cannot write the vfat image", dest, e)
}

/// Write a vfat image holding `files` to `out` (an empty file, e.g. the
/// temporary file of an atomic output). Identical inputs give identical bytes.
pub fn write_vfat(
    out: &mut File,
    dest: &Path,
    label: &str,
    volume_id: u32,
    mtime: u64,
    files: &[VfatFile],
) -> Result<()> {
    if label.is_empty() || label.len() > 11 || !label.is_ascii() {
        return Err(Error::input(format!(
            "vfat label {label:?} must be 1-11 ASCII characters"
        )));
    }
    // fatfs 0.3 writes long-name entries even for "." and "..", which fsck.vfat
    // rejects: keep every file in the root folder.
    for f in files {
        if f.path.is_empty() || f.path.contains('/') {
            return Err(Error::input(format!(
                "{:?}: files on the seed volume live in its root folder",
                f.path
            )));
        }
    }
    let mut label11 = [b' '; 11];
    label11[..label.len()].copy_from_slice(label.as_bytes());
    // 'static is what fatfs asks of a time provider; one small value per image.
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(dos_time(mtime))));

    let mut size = image_size(files);
    // fatfs refuses sizes where the cluster count sits on a FAT12/16/32 boundary.
    let mut tries = 0;
    loop {
        out.set_len(0).with_path("cannot truncate", dest)?;
        out.set_len(size).with_path("cannot size", dest)?;
        out.seek(SeekFrom::Start(0))
            .with_path("cannot seek in", dest)?;
        let opts = FormatVolumeOptions::new()
            .bytes_per_cluster(CLUSTER as u32)
            .volume_id(volume_id)
            .volume_label(label11);
        match fatfs::format_volume(&mut *out, opts) {
            Ok(()) => break,
            Err(_) if tries < 8 => {
                tries += 1;
                size += 8 << 20;
            }
            Err(e) => return Err(fat_err(dest)(e)),
        }
    }
    write_label_entry(out, &label11, time.0).map_err(fat_err(dest))?;

    out.seek(SeekFrom::Start(0))
        .with_path("cannot seek in", dest)?;
    let fs = FileSystem::new(
        &mut *out,
        FsOptions::new()
            .time_provider(time)
            .update_accessed_date(false),
    )
    .map_err(fat_err(dest))?;
    {
        let root = fs.root_dir();
        for f in files {
            let mut file = root.create_file(&f.path).map_err(fat_err(dest))?;
            copy_exact(&mut *(f.open)()?, &mut file, f.size, &f.path, 1 << 20)
                .map_err(|e| e.context(dest.display()))?;
            file.flush().map_err(fat_err(dest))?;
        }
    }
    fs.unmount().map_err(fat_err(dest))?;
    Ok(())
}

/// Put the volume label entry first in the root folder (fatfs formats without it).
fn write_label_entry(disk: &mut File, label: &[u8; 11], time: DateTime) -> io::Result<()> {
    let mut bs = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut bs)?;
    let bytes_per_sector = u64::from(u16::from_le_bytes([bs[11], bs[12]]));
    let reserved = u64::from(u16::from_le_bytes([bs[14], bs[15]]));
    let fats = u64::from(bs[16]);
    let spf16 = u64::from(u16::from_le_bytes([bs[22], bs[23]]));
    let spf = if spf16 != 0 {
        spf16
    } else {
        u64::from(u32::from_le_bytes([bs[36], bs[37], bs[38], bs[39]]))
    };
    // FAT12/16: the fixed root region; FAT32: cluster 2, the first data cluster.
    // Both start right after the FATs.
    let root = (reserved + fats * spf) * bytes_per_sector;
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(label);
    entry[11] = 0x08; // ATTR_VOLUME_ID
    let (date, t) = encode_dos(&time);
    entry[22..24].copy_from_slice(&t.to_le_bytes());
    entry[24..26].copy_from_slice(&date.to_le_bytes());
    disk.seek(SeekFrom::Start(root))?;
    disk.write_all(&entry)
}

/// A read-only view for `fatfs`, which wants `Write` even to read. It reads
/// at most `left` bytes in all: a walk over a hostile image whose cluster
/// chains loop (a folder that is its own parent, a file that never ends)
/// stops there with `InvalidData` instead of running on.
struct ReadOnly {
    file: File,
    left: u64,
}

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the image reads back far more bytes than it holds: its cluster chains loop",
            ));
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.file.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}
impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.file.seek(pos)
    }
}
impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "read-only"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Entries an image may hold, and how deep its folders may nest (the seed
/// volume holds a handful of files in its root folder).
pub const MAX_ENTRIES: usize = 4096;
pub const MAX_DEPTH: usize = 16;

/// A read error: a hostile image (`InvalidData`) is bad input, anything else I/O.
fn read_failed<'a>(path: &'a Path, what: &'a str) -> impl Fn(io::Error) -> Error + 'a {
    move |e| {
        if e.kind() == io::ErrorKind::InvalidData {
            Error::input(format!("{}: {what}: {e}", path.display()))
        } else {
            Error::io(what, path, e)
        }
    }
}

/// A file found on a vfat image.
#[derive(Debug, Clone)]
pub struct VfatEntry {
    pub path: String,
    pub is_dir: bool,
    pub size: u64,
    pub sha256: Option<String>,
}

/// Reading changes nothing, so any time will do.
static READ_TIME: FixedTime = FixedTime(DateTime {
    date: Date {
        year: 1980,
        month: 1,
        day: 1,
    },
    time: Time {
        hour: 0,
        min: 0,
        sec: 0,
        millis: 0,
    },
});

/// The filesystem of the image at `path`, read-only.
fn open_image(path: &Path) -> Result<FileSystem<ReadOnly>> {
    let file = File::open(path).with_path("cannot open", path)?;
    let size = file.metadata().with_path("cannot stat", path)?.len();
    // Every byte read about twice (folders, then files), plus FAT look-ups.
    let left = size.saturating_mul(3).saturating_add(64 << 20);
    FileSystem::new(
        ReadOnly { file, left },
        FsOptions::new()
            .time_provider(&READ_TIME)
            .update_accessed_date(false),
    )
    .map_err(|e| Error::input(format!("{} is not a vfat image: {e}", path.display())))
}

/// The label (from the root folder entry, else the boot sector) and every entry.
pub fn read_vfat(path: &Path) -> Result<(String, Vec<VfatEntry>)> {
    let fs = open_image(path)?;
    let label = match fs
        .read_volume_label_from_root_dir()
        .map_err(read_failed(path, "cannot read"))?
    {
        Some(l) => l,
        None => fs.volume_label(),
    };
    let image_size = std::fs::metadata(path)
        .with_path("cannot stat", path)?
        .len();
    let mut out = Vec::new();
    let mut stack = vec![(String::new(), fs.root_dir(), 0usize)];
    while let Some((prefix, dir, depth)) = stack.pop() {
        if depth > MAX_DEPTH {
            return Err(Error::input(format!(
                "{}: folders nested over {MAX_DEPTH} levels deep (a folder that contains itself?)",
                path.display()
            )));
        }
        let mut here = Vec::new();
        for e in dir.iter() {
            let e = e.map_err(read_failed(path, "cannot read a folder of"))?;
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            if out.len() >= MAX_ENTRIES {
                return Err(Error::input(format!(
                    "{}: more than {MAX_ENTRIES} entries (a folder whose clusters loop?)",
                    path.display()
                )));
            }
            let p = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            if e.is_dir() {
                out.push(VfatEntry {
                    path: p.clone(),
                    is_dir: true,
                    size: 0,
                    sha256: None,
                });
                here.push((p, e.to_dir(), depth + 1));
            } else {
                if e.len() > image_size {
                    return Err(Error::input(format!(
                        "{}: {} claims {} bytes, more than the {image_size} bytes of the image",
                        path.display(),
                        crate::error::clip(&p),
                        e.len()
                    )));
                }
                let (sha256, size) =
                    sha256_of(&mut e.to_file()).map_err(read_failed(path, "cannot read"))?;
                out.push(VfatEntry {
                    path: p,
                    is_dir: false,
                    size,
                    sha256: Some(sha256),
                });
            }
        }
        stack.extend(here.into_iter().rev());
    }
    // Parents first, component by component (the plan's order).
    out.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
    Ok((label.trim_end().to_string(), out))
}

/// Read one file of a vfat image into memory (small files: user-data,
/// meta-data), refused when over `cap` bytes.
pub fn read_vfat_file(image: &Path, name: &str, cap: u64) -> Result<Option<Vec<u8>>> {
    let fs = open_image(image)?;
    let root = fs.root_dir();
    let f = match root.open_file(name) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&format!("cannot open {name} in"), image, e)),
    };
    let mut bytes = Vec::new();
    f.take(cap + 1)
        .read_to_end(&mut bytes)
        .map_err(read_failed(image, "cannot read"))?;
    if bytes.len() as u64 > cap {
        return Err(Error::input(format!(
            "{}: {} is over {cap} bytes",
            image.display(),
            crate::error::clip(name)
        )));
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Kind;
    use std::process::Command;

    fn mem(path: &str, bytes: &'static [u8]) -> VfatFile<'static> {
        VfatFile {
            path: path.into(),
            size: bytes.len() as u64,
            open: Box::new(move || Ok(Box::new(io::Cursor::new(bytes)))),
        }
    }

    fn rw(path: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap()
    }

    fn build(path: &Path, files: &[VfatFile]) {
        let mut f = rw(path);
        write_vfat(&mut f, path, "cidata", 0x1234_abcd, 1_700_000_000, files).unwrap();
    }

    #[test]
    fn dos_time_of_known_dates() {
        let t = dos_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        let t = dos_time(0);
        assert_eq!((t.date.year, t.date.month, t.date.day), (1980, 1, 1));
        let t = dos_time(951_782_400); // 2000-02-29
        assert_eq!((t.date.year, t.date.month, t.date.day), (2000, 2, 29));
    }

    #[test]
    fn image_is_reproducible_and_mtools_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let files = || {
            vec![
                mem("user-data", b"#cloud-config\n"),
                mem("meta-data", b"instance-id: x\n"),
                mem("network-config", b"version: 2\n"),
                mem("kube-apiserver", &[7u8; 10_000]),
            ]
        };
        let a = dir.path().join("a.img");
        let b = dir.path().join("b.img");
        build(&a, &files());
        build(&b, &files());
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

        let label = Command::new("mlabel")
            .args(["-s", "-i"])
            .arg(&a)
            .arg("::")
            .output()
            .unwrap();
        assert!(
            label.status.success(),
            "{}",
            String::from_utf8_lossy(&label.stderr)
        );
        assert!(
            String::from_utf8_lossy(&label.stdout).contains("cidata"),
            "{label:?}"
        );

        let dir_out = Command::new("mdir")
            .args(["-b", "-/", "-i"])
            .arg(&a)
            .arg("::")
            .output()
            .unwrap();
        assert!(
            dir_out.status.success(),
            "{}",
            String::from_utf8_lossy(&dir_out.stderr)
        );
        let listing = String::from_utf8_lossy(&dir_out.stdout);
        for f in [
            "::/user-data",
            "::/meta-data",
            "::/network-config",
            "::/kube-apiserver",
        ] {
            assert!(listing.lines().any(|l| l == f), "{f} missing in\n{listing}");
        }
        let cat = Command::new("mtype")
            .arg("-i")
            .arg(&a)
            .arg("::/meta-data")
            .output()
            .unwrap();
        assert_eq!(cat.stdout, b"instance-id: x\n");

        let fsck = Command::new("fsck.vfat")
            .args(["-n", "-v"])
            .arg(&a)
            .output()
            .unwrap();
        assert!(
            fsck.status.success(),
            "{}",
            String::from_utf8_lossy(&fsck.stdout)
        );

        let blkid = Command::new("blkid")
            .args(["-o", "export", "-p"])
            .arg(&a)
            .output()
            .unwrap();
        let blkid = String::from_utf8_lossy(&blkid.stdout);
        assert!(
            blkid.contains("LABEL=cidata") && blkid.contains("TYPE=vfat"),
            "{blkid}"
        );

        let (label, entries) = read_vfat(&a).unwrap();
        assert_eq!(label, "cidata");
        let k = entries.iter().find(|e| e.path == "kube-apiserver").unwrap();
        assert_eq!(k.size, 10_000);
        assert_eq!(
            k.sha256.as_deref(),
            Some(sha256_of(&mut &[7u8; 10_000][..]).unwrap().0.as_str())
        );
        assert_eq!(
            read_vfat_file(&a, "user-data", 1 << 20).unwrap().unwrap(),
            b"#cloud-config\n"
        );
    }

    #[test]
    fn wrong_size_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        let mut f = mem("a", b"abc");
        f.size = 4;
        let mut out = rw(&p);
        let err = write_vfat(&mut out, &p, "cidata", 1, 0, &[f]).unwrap_err();
        assert_eq!(err.kind, Kind::Integrity);
    }
}
