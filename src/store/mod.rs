//! The local, content-addressed artifact cache and what derives from it.

pub mod cache;
pub mod locks;
pub mod maintenance;
pub mod segments;
