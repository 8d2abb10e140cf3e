//! Small pieces every layer uses: digests, atomic files, file stamps.

pub mod atomic;
pub mod digest;
pub mod parallel;
pub mod stamp;
pub mod writeback;
