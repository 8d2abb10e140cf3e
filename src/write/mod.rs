//! Output formats: each is a writer over a [`crate::plan::Plan`].

pub mod cpio;
pub mod output;
pub mod vfat;
