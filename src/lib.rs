//! imgbuild: builds what a Kubernetes control-plane node boots from.
//!
//! Inputs (inventory, recipe, overlay templates, PKI folder, artifact cache)
//! become a [`plan::Plan`]; each output format is a writer over that plan.

pub mod airgap;
pub mod assets;
pub mod atomic;
pub mod build;
pub mod cache;
pub mod error;
pub mod fetch;
pub mod flags;
pub mod inspect;
pub mod inventory;
pub mod lock;
pub mod pki;
pub mod plan;
pub mod progress;
pub mod recipe;
pub mod render;
pub mod stamp;
pub mod unit;
pub mod write;

pub use error::{Error, Kind, Result};
