//! The local, content-addressed artifact cache and what derives from it.

pub mod cache;
mod index;
pub mod ingest;
pub mod ledger;
pub mod locks;
pub mod maintenance;
pub mod segments;
