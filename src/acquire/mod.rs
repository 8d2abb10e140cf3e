//! Getting artifacts into the cache: downloads, recipe locks, air-gap bundles.

pub mod airgap;
pub mod fetch;
mod http;
pub mod lock;
