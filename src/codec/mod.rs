//! Bytes only: the archive and compression formats imgbuild writes and reads.
//! Nothing here knows about inventories, recipes or the cache.

pub mod cpio;
pub mod gz;
pub mod tar;
pub mod vfat;
