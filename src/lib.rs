//! imgbuild: builds what a Kubernetes control-plane node boots from.
//!
//! The data path: a validated configuration and the inputs it names
//! (inventory, recipe, overlay templates, PKI folder, artifact cache) become a
//! [`plan::Plan`] per node; every output format is a writer over that plan.

pub mod acquire;
pub mod build;
pub mod codec;
pub mod error;
pub mod input;
pub mod inspect;
pub mod output;
pub mod pki;
pub mod plan;
pub mod progress;
pub mod store;
pub mod util;

pub use error::{Error, Kind, Result};
