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

/// The filesystem of the image at `path`, read-only, its cluster numbers
/// checked ([`check_clusters`]).
fn open_image(path: &Path) -> Result<FileSystem<ReadOnly>> {
    let file = File::open(path).with_path("cannot open", path)?;
    let size = file.metadata().with_path("cannot stat", path)?.len();
    let raw = file.try_clone().with_path("cannot open", path)?;
    // Every byte read about twice (folders, then files), plus FAT look-ups.
    let left = size.saturating_mul(3).saturating_add(64 << 20);
    let fs = FileSystem::new(
        ReadOnly { file, left },
        FsOptions::new()
            .time_provider(&READ_TIME)
            .update_accessed_date(false),
    )
    .map_err(|e| Error::input(format!("{} is not a vfat image: {e}", path.display())))?;
    check_clusters(&raw, &fs).map_err(|e| match e.kind() {
        io::ErrorKind::InvalidData => Error::input(format!("{}: {e}", path.display())),
        _ => Error::io("cannot read", path, e),
    })?;
    Ok(fs)
}

/// Bytes of `file` at `at`, as many as there are up to `buf.len()` (the
/// file's offset, shared with fatfs's handle, is left alone).
fn read_at(file: &File, mut at: u64, buf: &mut [u8]) -> io::Result<usize> {
    use std::os::unix::fs::FileExt;
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], at) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                at += k as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Refuse an image where a cluster number fatfs would follow lies outside
/// the data area (`2..=clusters + 1`): a FAT entry linking there, an entry of
/// a folder reachable from the root starting there, or FAT32's root folder.
/// fatfs 0.3 computes where cluster `c` lies as `(c - 2) * sectors_per_cluster`
/// in `u32`: cluster 1 or a huge one overflows (a panic where overflow is
/// checked, some other place of the image read as the file where not).
/// `fs` has checked the boot sector's fields.
fn check_clusters(disk: &File, fs: &FileSystem<ReadOnly>) -> io::Result<()> {
    use fatfs::FatType::{Fat12, Fat16, Fat32};
    let fat_type = fs.fat_type();
    let fat32 = fat_type == Fat32;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);

    let mut bs = [0u8; 512];
    if read_at(disk, 0, &mut bs)? < bs.len() {
        return Err(bad("no boot sector".into()));
    }
    let le16 = |at: usize| u64::from(u16::from_le_bytes([bs[at], bs[at + 1]]));
    let le32 = |at: usize| u32::from_le_bytes([bs[at], bs[at + 1], bs[at + 2], bs[at + 3]]);
    let sector = le16(11);
    let (reserved, fats, root_entries) = (le16(14), u64::from(bs[16]), le16(17));
    let per_fat = if fat32 { u64::from(le32(36)) } else { le16(22) };
    let total = match le16(19) {
        0 => u64::from(le32(32)),
        n => n,
    };
    let root_start = (reserved + fats * per_fat) * sector;
    let root_len = root_entries * 32;
    let data_start = root_start + root_len.div_ceil(sector) * sector;
    let per_cluster = u64::from(bs[13]).max(1);
    let cluster_len = per_cluster * sector;
    // As fatfs counts clusters (it checked that the data area is not empty).
    let clusters = (total * sector).saturating_sub(data_start) / cluster_len;
    let last = u32::try_from(clusters + 1).unwrap_or(u32::MAX);
    let in_range = |c: u32| (2..=last).contains(&c);
    // The FAT fatfs reads: the first, or FAT32's active one when not mirrored.
    let flags = le16(40);
    let active = if fat32 && flags & 0x80 != 0 {
        flags & 0x0f
    } else {
        0
    };
    let fat_start = (reserved + active * per_fat) * sector;
    let fat_len = per_fat * sector;
    // A value at or above "bad cluster" ends a chain, as 0 (free) does.
    let special = match fat_type {
        Fat12 => 0xff7,
        Fat16 => 0xfff7,
        Fat32 => 0x0fff_fff7,
    };
    // FAT entry `i` of `fat` (which starts at entry `first`, even for FAT12).
    let value = |fat: &[u8], first: u64, i: u64| -> Option<u32> {
        let (at, len) = match fat_type {
            Fat12 => ((i + i / 2 - (first + first / 2)) as usize, 2),
            Fat16 => (((i - first) * 2) as usize, 2),
            Fat32 => (((i - first) * 4) as usize, 4),
        };
        let mut b = [0u8; 4];
        b[..len].copy_from_slice(fat.get(at..at + len)?);
        let v = u32::from_le_bytes(b);
        Some(match fat_type {
            Fat12 if i % 2 == 1 => v >> 4,
            Fat12 => v & 0xfff,
            Fat16 => v,
            Fat32 => v & 0x0fff_ffff,
        })
    };

    // Every FAT entry of a data cluster, 8192 at a time. What lies past the
    // image's end is not checked: fatfs fails there with a short read.
    let mut piece = vec![0u8; 3 * 8192];
    let mut first = 0u64;
    'fat: while first <= u64::from(last) {
        let at = match fat_type {
            Fat12 => first + first / 2,
            Fat16 => first * 2,
            Fat32 => first * 4,
        };
        let want = (piece.len() as u64).min(fat_len.saturating_sub(at)) as usize;
        let n = read_at(disk, fat_start + at, &mut piece[..want])?;
        let count = match fat_type {
            Fat12 => 8192,
            Fat16 => 3 * 4096,
            Fat32 => 3 * 2048,
        };
        for i in first.max(2)..(first + count).min(u64::from(last) + 1) {
            let Some(v) = value(&piece[..n], first, i) else {
                break 'fat;
            };
            if v != 0 && v < special && !in_range(v) {
                return Err(bad(format!(
                    "cluster {i} links to cluster {v}, outside the volume's 2..={last}"
                )));
            }
        }
        first += count;
    }
    // The FAT entry of `c` as it is (checked above).
    let raw_next = |c: u32| -> io::Result<Option<u32>> {
        let mut b = [0u8; 4];
        let i = u64::from(c);
        let at = match fat_type {
            Fat12 => i + i / 2,
            Fat16 => i * 2,
            Fat32 => i * 4,
        };
        let n = read_at(disk, fat_start + at, &mut b)?;
        Ok(value(&b[..n], i, i))
    };
    // The next cluster of `c`, if any: fatfs follows a chain until an
    // end-of-chain mark, so a free (0) or bad cluster in one is refused
    // (fatfs would read "cluster 0", below the data area).
    let end_of_chain = special + 1;
    let next = |c: u32, what: &dyn Fn() -> String| -> io::Result<Option<u32>> {
        match raw_next(c)? {
            Some(v) if in_range(v) => Ok(Some(v)),
            Some(v) if v >= end_of_chain => Ok(None),
            // Past the image's end: fatfs fails there with a short read.
            None => Ok(None),
            Some(v) => Err(bad(format!(
                "{}: cluster {c} is followed by {v}, a free or bad cluster, not the end of its chain",
                what()
            ))),
        }
    };

    // Every entry of every folder reachable from the root folder, each
    // cluster read at most once.
    let mut seen = std::collections::HashSet::new();
    let mut folders: Vec<(String, Option<u32>)> = Vec::new();
    if fat32 {
        let root = le32(44);
        if !in_range(root) {
            return Err(bad(format!(
                "the root folder starts at cluster {root}, outside the volume's 2..={last}"
            )));
        }
        folders.push(("/".into(), Some(root)));
    } else {
        folders.push(("/".into(), None));
    }
    while let Some((folder, start)) = folders.pop() {
        // Where the folder lies: FAT12/16's root region, else its clusters.
        let mut pieces = Vec::new();
        match start {
            // Whole sectors, as fatfs reads it (root_entries may be fewer).
            None => pieces.push((root_start, root_len.div_ceil(sector) * sector)),
            Some(mut c) => {
                while seen.insert(c) {
                    pieces.push((data_start + u64::from(c - 2) * cluster_len, cluster_len));
                    match next(c, &|| format!("folder {folder}"))? {
                        Some(n) => c = n,
                        None => break,
                    }
                }
            }
        }
        'folder: for (at, len) in pieces {
            let mut bytes = vec![0u8; len as usize];
            let n = read_at(disk, at, &mut bytes)?;
            for e in bytes[..n].chunks_exact(32) {
                if e[0] == 0 {
                    break 'folder;
                }
                // Deleted entries and long-name pieces hold no cluster.
                if e[0] == 0xe5 || e[11] & 0x3f == 0x0f {
                    continue;
                }
                let hi = if fat32 {
                    u16::from_le_bytes([e[20], e[21]])
                } else {
                    0
                };
                let c = u32::from(hi) << 16 | u32::from(u16::from_le_bytes([e[26], e[27]]));
                let name = || crate::error::clip(String::from_utf8_lossy(&e[..11]).trim_end());
                if c != 0 && !in_range(c) {
                    return Err(bad(format!(
                        "{} in folder {folder} starts at cluster {c}, outside the volume's 2..={last}",
                        name()
                    )));
                }
                if e[11] & 0x10 != 0 && c != 0 && !seen.contains(&c) {
                    folders.push((name(), Some(c)));
                } else if e[11] & 0x18 == 0 && c != 0 {
                    // A file: fatfs reads as many clusters as its size needs.
                    let size = u64::from(u32::from_le_bytes([e[28], e[29], e[30], e[31]]));
                    let mut at = c;
                    for _ in 1..size.div_ceil(cluster_len).min(u64::from(last)) {
                        match next(at, &|| format!("{} in folder {folder}", name()))? {
                            Some(n) => at = n,
                            None => break,
                        }
                    }
                }
            }
        }
    }
    Ok(())
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

    /// A cluster number outside the data area, where a file starts or where
    /// its chain leads, is refused (fatfs would compute its place with an
    /// overflow: a panic in a debug build).
    #[test]
    fn clusters_outside_the_volume_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.img");
        build(&p, &[mem("kubelet", &[7u8; 10_000])]);
        let img = std::fs::read(&p).unwrap();
        let at = img.windows(11).position(|w| w == b"KUBELET    ").unwrap();
        let first = u16::from_le_bytes([img[at + 26], img[at + 27]]);
        let refused = |img: &[u8], want: &str| {
            std::fs::write(&p, img).unwrap();
            let e = read_vfat(&p).unwrap_err();
            assert_eq!(e.kind, Kind::Input, "{e}");
            assert!(e.message().contains(want), "{e}");
            let e = read_vfat_file(&p, "kubelet", 1 << 20).unwrap_err();
            assert!(e.message().contains(want), "{e}");
        };
        for c in [1u16, u16::MAX] {
            let mut bad = img.clone();
            bad[at + 26..at + 28].copy_from_slice(&c.to_le_bytes());
            refused(
                &bad,
                &format!("KUBELET in folder / starts at cluster {c}, outside"),
            );
        }
        // The file's first FAT entry links to cluster 1 (the image is FAT12:
        // 12-bit entries, two in three bytes).
        std::fs::write(&p, &img).unwrap();
        let disk = File::options().read(true).write(true).open(&p).unwrap();
        let fs = FileSystem::new(disk, FsOptions::new()).unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat12);
        drop(fs);
        let fat = usize::from(u16::from_le_bytes([img[14], img[15]]))
            * usize::from(u16::from_le_bytes([img[11], img[12]]));
        let i = usize::from(first);
        let mut bad = img.clone();
        let o = fat + i + i / 2;
        let pair = u16::from_le_bytes([bad[o], bad[o + 1]]);
        let pair = if i % 2 == 0 {
            pair & 0xf000 | 1
        } else {
            pair & 0x000f | 1 << 4
        };
        bad[o..o + 2].copy_from_slice(&pair.to_le_bytes());
        refused(
            &bad,
            &format!("cluster {first} links to cluster 1, outside"),
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
