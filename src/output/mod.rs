//! Output formats: each is a writer over a `Plan`, plus what every output
//! shares (the manifest, SHA256SUMS, atomic files).

pub mod cloud_init;
pub mod dir;
pub mod file;
pub mod manifest;
