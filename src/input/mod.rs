//! Inputs of a build, read and validated: the inventory (cluster.toml), the
//! recipe and its layout, the overlay templates and their rendering, and the
//! flag table that checks what was rendered.

pub mod assets;
pub mod component;
pub mod control_plane;
pub mod etcd;
pub mod inventory;
pub mod lint;
pub mod network;
pub mod overlay;
pub mod profile;
pub mod recipe;
pub mod render;
pub mod unit;

use std::path::PathBuf;

use crate::error::Result;
use assets::Assets;
use inventory::Inventory;
use lint::{Finding, FlagTable, Severity};
use overlay::{Overlay, Rendered};
use profile::Profile;
use recipe::{Recipe, Version};

/// Where things are, shared by every command.
#[derive(Debug, Clone)]
pub struct Session {
    pub inventory: PathBuf,
    pub cache_dir: PathBuf,
    pub assets: Assets,
    /// Entry mtimes: SOURCE_DATE_EPOCH, or 0.
    pub mtime: u64,
}

/// The inputs every node of a build shares: inventory, recipe, overlay and flag table.
pub struct Inputs {
    pub inventory: Inventory,
    pub recipe: Recipe,
    pub version: Version,
    pub flags: FlagTable,
    pub overlay: Overlay,
}

impl Inputs {
    /// Load the recipe, overlay and flag table for an inventory already read,
    /// for the layout's OS profile `os`.
    pub fn load(session: &Session, inventory: Inventory, os: &str) -> Result<Inputs> {
        let version = Version::parse(&inventory.cluster.kubernetes_version)
            .expect("validated by the inventory");
        let recipe = Recipe::load(&session.assets, &inventory.cluster.kubernetes_version)?;
        let mut profile = Profile::resolve(&recipe.layout_def, &recipe.layout, os)?;
        if let Some((part, why)) = inventory.etcd.left_out() {
            profile.leave_out(&recipe.layout_def, part, why);
        }
        if inventory.etcd.local() && recipe.etcd_version.is_none() {
            return Err(crate::Error::input(format!(
                "recipe {} carries no etcd, and the inventory {} runs etcd on the controllers \
                 ([etcd] mode = \"local\", the default). Write a lock with one \
                 (`imgbuild lock --version {} --etcd-version 3.6.5 --force`), or set [etcd] \
                 mode = \"external\" and cluster.etcd_servers",
                recipe.origin,
                inventory.path.display(),
                recipe.kubernetes_version
            )));
        }
        let overlay = Overlay::load(&session.assets, &recipe, profile)?;
        let flags = FlagTable::load(&session.assets)?;
        Ok(Inputs {
            inventory,
            recipe,
            version,
            flags,
            overlay,
        })
    }

    /// The overlay's files rendered for node `index` (1-based).
    pub fn render(&self, index: usize) -> Result<Vec<Rendered>> {
        self.overlay.render(&self.inventory, index, self.versions())
    }

    /// The Kubernetes release and, if the recipe has one, etcd's.
    pub fn versions(&self) -> Versions {
        Versions {
            k8s: self.version,
            etcd: self.recipe.etcd(),
        }
    }

    /// The OS profile the build is for.
    pub fn profile(&self) -> &Profile {
        self.overlay.profile()
    }

    /// Node `index`'s rendered files checked against the flag table, and a
    /// note for every part the OS profile leaves out saying what to do instead.
    pub fn lint(&self, index: usize, rendered: &[Rendered]) -> Result<Vec<Finding>> {
        let mut findings =
            lint::check_rendered(&self.inventory, &self.flags, self.versions(), rendered)?;
        for l in self
            .overlay
            .left_out(&self.inventory, index, self.versions())?
        {
            let why = self.profile().why.get(&l.part).cloned().unwrap_or_default();
            findings.push(Finding {
                severity: Severity::Notice,
                file: l.file,
                message: format!(
                    "left out {why} ([parts.{}]): {}; {}",
                    l.part, l.what, l.instead
                ),
            });
        }
        Ok(findings)
    }

    /// The layout's enabled units in start order (dependencies first), less
    /// those the OS profile leaves out.
    pub fn unit_order(&self) -> Vec<String> {
        self.recipe
            .layout_def
            .enable
            .values()
            .flatten()
            .filter(|u| self.profile().keeps_unit(u))
            .cloned()
            .collect()
    }
}

/// The releases templates and the flag table go by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Versions {
    pub k8s: Version,
    /// The recipe's etcd (`etcd_version`), if it has one.
    pub etcd: Option<Version>,
}

/// Which nodes a command builds, and with which OS profile of the layout.
#[derive(Debug, Clone)]
pub struct Selection {
    /// Node selectors (1-based index or name); empty with `all`.
    pub nodes: Vec<String>,
    pub all: bool,
    /// The layout's OS profile (`--os`).
    pub os: String,
}

/// Resolve `--node` selectors (1-based index or name) against the inventory;
/// `all` takes every controller.
pub fn select_nodes(inv: &Inventory, nodes: &[String], all: bool) -> Result<Vec<usize>> {
    if all {
        return Ok((1..=inv.controllers.len()).collect());
    }
    if nodes.is_empty() {
        return Err(crate::Error::input(
            "say which node to build: --node N (1-based index or name), or --all",
        ));
    }
    let mut out = Vec::new();
    for n in nodes {
        let (i, _) = inv.node(n)?;
        if !out.contains(&i) {
            out.push(i);
        }
    }
    Ok(out)
}
