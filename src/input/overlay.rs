//! The overlay: the layout's templates, parsed once and rendered per node,
//! for one OS profile (which moves some paths and leaves some parts out).

use crate::error::{Error, Result};
use crate::input::Versions;
use crate::input::assets::Assets;
use crate::input::inventory::Inventory;
use crate::input::profile::Profile;
use crate::input::recipe::{Recipe, Version};
use crate::input::render::{Context, Renderer};

/// One file of the layout, rendered for a node.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// Template path under the overlay.
    pub template: String,
    /// Rootfs path (relative).
    pub path: String,
    pub mode: u32,
    pub secret: bool,
    pub text: String,
}

/// A part of the layout the profile leaves out, and what to do instead
/// (rendered for a node).
#[derive(Debug, Clone)]
pub struct LeftOut {
    pub part: String,
    pub what: String,
    /// The part's first file (rootfs path, relative), which findings name.
    pub file: String,
    pub instead: String,
}

struct Template {
    name: String,
    path: String,
    mode: u32,
    secret: bool,
    origin: String,
}

pub struct Overlay {
    templates: Vec<Template>,
    renderer: Renderer,
    profile: Profile,
}

/// The template name of a left-out part's `instead` text.
fn instead_name(part: &str) -> String {
    format!("[parts.{part}].instead")
}

impl Overlay {
    /// The templates the recipe's layout names for `profile`, parsed.
    pub fn load(assets: &Assets, recipe: &Recipe, profile: Profile) -> Result<Overlay> {
        let layout = &recipe.layout_def;
        let version = Version::parse(&recipe.kubernetes_version);
        let mut templates = Vec::new();
        let mut sources = Vec::new();
        for f in layout
            .files
            .iter()
            .filter(|f| profile.keeps_file(&f.template))
            .filter(|f| version.is_none_or(|v| crate::input::recipe::since_applies(&f.since, v)))
        {
            let asset = assets
                .overlay_file(&layout.overlay, &f.template)?
                .ok_or_else(|| {
                    Error::input(format!(
                        "recipe {}: template {:?} not found in overlay {:?}",
                        recipe.origin,
                        crate::error::clip(&f.template),
                        crate::error::clip(&layout.overlay)
                    ))
                })?;
            sources.push((f.template.clone(), asset.text, asset.origin.clone()));
            templates.push(Template {
                name: f.template.clone(),
                path: profile.relocate(f.path.as_deref().unwrap_or(&f.template)),
                mode: f.mode,
                secret: f.secret,
                origin: asset.origin,
            });
        }
        for (name, part) in &profile.left_out {
            let origin = format!("layout {} [parts.{name}] instead", layout.overlay);
            sources.push((instead_name(name), part.instead.clone(), origin));
        }
        Ok(Overlay {
            templates,
            renderer: Renderer::new(&sources)?,
            profile,
        })
    }

    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    /// Every template rendered for node `index` (1-based), in layout order.
    pub fn render(
        &self,
        inv: &Inventory,
        index: usize,
        versions: Versions,
    ) -> Result<Vec<Rendered>> {
        let ctx = Context::new(inv, index, versions, &self.profile.vars);
        self.templates
            .iter()
            .map(|t| {
                Ok(Rendered {
                    template: t.name.clone(),
                    path: t.path.clone(),
                    mode: t.mode,
                    secret: t.secret,
                    text: self.renderer.render(&t.name, &t.origin, &ctx)?,
                })
            })
            .collect()
    }

    /// The parts the profile leaves out, with what to do instead for node `index`.
    pub fn left_out(
        &self,
        inv: &Inventory,
        index: usize,
        versions: Versions,
    ) -> Result<Vec<LeftOut>> {
        let ctx = Context::new(inv, index, versions, &self.profile.vars);
        self.profile
            .left_out
            .iter()
            .map(|(name, part)| {
                let origin = format!("[parts.{name}].instead");
                Ok(LeftOut {
                    part: name.clone(),
                    what: part.what.clone(),
                    file: part.files.first().cloned().unwrap_or_default(),
                    instead: self.renderer.render(&instead_name(name), &origin, &ctx)?,
                })
            })
            .collect()
    }
}
