//! Output formats: each is a writer over a `Plan`.
//!
//! Every writer puts the node-independent entries (`Entry::shared`: binaries and
//! their folders) first, then the node's own, each part in path order. That lets
//! formats that concatenate (gzip members, cpio archives) build the shared part
//! once for all nodes.

pub mod cloud_init;
pub mod cpio;
pub mod digest;
pub mod dir;
pub mod gz;
pub mod manifest;
pub mod output;
pub mod tar;
pub mod vfat;

use crate::plan::{Entry, Plan};

/// Entries in the order every writer uses: shared first, then per-node.
pub fn ordered(plan: &Plan) -> impl Iterator<Item = &Entry> {
    plan.shared().chain(plan.per_node())
}
