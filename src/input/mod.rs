//! Inputs of a build, read and validated: the inventory (cluster.toml), the
//! recipe and its layout, the overlay templates and their rendering, and the
//! flag table that checks what was rendered.

pub mod assets;
pub mod inventory;
pub mod lint;
pub mod recipe;
pub mod render;
pub mod unit;
