//! The overlay: the layout's templates, parsed once and rendered per node.

use crate::error::{Error, Result};
use crate::input::assets::Assets;
use crate::input::inventory::Inventory;
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
}

impl Overlay {
    /// The templates the recipe's layout names, parsed.
    pub fn load(assets: &Assets, recipe: &Recipe) -> Result<Overlay> {
        let layout = &recipe.layout_def;
        let mut templates = Vec::new();
        let mut sources = Vec::new();
        for f in &layout.files {
            let asset = assets
                .overlay_file(&layout.overlay, &f.template)?
                .ok_or_else(|| {
                    Error::input(format!(
                        "recipe {}: template {:?} not found in overlay {:?}",
                        recipe.origin, f.template, layout.overlay
                    ))
                })?;
            sources.push((f.template.clone(), asset.text, asset.origin.clone()));
            templates.push(Template {
                name: f.template.clone(),
                path: f.path.clone().unwrap_or_else(|| f.template.clone()),
                mode: f.mode,
                secret: f.secret,
                origin: asset.origin,
            });
        }
        Ok(Overlay {
            templates,
            renderer: Renderer::new(&sources)?,
        })
    }

    /// Every template rendered for node `index` (1-based), in layout order.
    pub fn render(&self, inv: &Inventory, index: usize, version: Version) -> Result<Vec<Rendered>> {
        let ctx = Context::new(inv, index, version);
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
}
