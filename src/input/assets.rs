//! Recipes and overlay templates: built into the binary, or read from folders
//! given on the command line (which take precedence, file by file).

use std::path::{Path, PathBuf};

use include_dir::{Dir, include_dir};

use crate::error::{Error, IoContext, Result, clip};
use crate::input::recipe::is_rel_path;

static BUILTIN_RECIPES: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/recipes");
static BUILTIN_OVERLAYS: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/overlays");

/// Where recipe and overlay files are looked up.
#[derive(Debug, Clone, Default)]
pub struct Assets {
    /// Folders searched for recipes (and `layouts/`) before the built-in ones
    /// (`--recipes`: the user's own, trusted as the built-in ones are).
    pub recipe_dirs: Vec<PathBuf>,
    /// Folders of locks (`<cache>/locks`, a bundle being imported), searched
    /// after the built-in recipes: a lock, or anything a writer of a shared
    /// cache puts there, never shadows a version this build pins, and may not
    /// claim `changelog` trust (checked where recipes are loaded).
    pub lock_dirs: Vec<PathBuf>,
    /// A folder searched for overlays before the built-in ones.
    pub overlay_dir: Option<PathBuf>,
}

/// A text file and where it came from (for error messages and manifests).
#[derive(Debug, Clone)]
pub struct Asset {
    pub text: String,
    /// `built-in:recipes/x.toml` or a filesystem path.
    pub origin: String,
    /// Read from one of the lock folders.
    pub lock: bool,
}

impl Assets {
    pub fn recipe_file(&self, rel: &str) -> Result<Option<Asset>> {
        inside("recipe", rel)?;
        for dir in &self.recipe_dirs {
            if let Some(a) = read_opt(&dir.join(rel))? {
                return Ok(Some(a));
            }
        }
        if let Some(a) = builtin(&BUILTIN_RECIPES, "recipes", rel) {
            return Ok(Some(a));
        }
        for dir in &self.lock_dirs {
            if let Some(a) = read_opt(&dir.join(rel))? {
                return Ok(Some(Asset { lock: true, ..a }));
            }
        }
        Ok(None)
    }

    pub fn overlay_file(&self, overlay: &str, rel: &str) -> Result<Option<Asset>> {
        inside("overlay", overlay)?;
        inside("overlay", rel)?;
        let rel = format!("{overlay}/{rel}");
        if let Some(dir) = &self.overlay_dir
            && let Some(a) = read_opt(&dir.join(&rel))?
        {
            return Ok(Some(a));
        }
        Ok(builtin(&BUILTIN_OVERLAYS, "overlays", &rel))
    }

    /// Complete flag sets: `flagsets/<component>-v<major>.<minor>.txt` →
    /// (component, major, minor, file): Kubernetes' components are v1.x, etcd v3.x.
    pub fn flagsets(&self) -> Result<Vec<(String, u32, u32, Asset)>> {
        let mut names = std::collections::BTreeSet::new();
        for dir in &self.recipe_dirs {
            if let Ok(rd) = std::fs::read_dir(dir.join("flagsets")) {
                for ent in rd.flatten() {
                    names.insert(ent.file_name().to_string_lossy().into_owned());
                }
            }
        }
        if let Some(d) = BUILTIN_RECIPES.get_dir("flagsets") {
            for f in d.files() {
                if let Some(n) = f.path().file_name() {
                    names.insert(n.to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        for name in names {
            let Some(stem) = name.strip_suffix(".txt") else {
                continue;
            };
            let Some((component, v)) = stem.rsplit_once("-v") else {
                continue;
            };
            let Some((Ok(major), Ok(minor))) = v
                .split_once('.')
                .map(|(a, b)| (a.parse::<u32>(), b.parse::<u32>()))
            else {
                continue;
            };
            if let Some(a) = self.recipe_file(&format!("flagsets/{name}"))? {
                out.push((component.to_string(), major, minor, a));
            }
        }
        Ok(out)
    }

    /// Where the file `path` (`recipes/...`) whose origin is `origin` came
    /// from, without this machine's paths (for bundles, carried elsewhere):
    /// built-in, a lock of the cache, or a `--recipes` folder, with the path
    /// relative to that folder.
    pub fn portable_origin(&self, origin: &str, path: &str) -> String {
        if origin.starts_with("built-in:") {
            return origin.to_string();
        }
        let rel = path.strip_prefix("recipes/").unwrap_or(path);
        let from_locks = self.recipe_dirs.iter().any(|d| {
            d.file_name().is_some_and(|n| n == "locks") && Path::new(origin).starts_with(d)
        });
        if from_locks {
            format!("lock:{rel}")
        } else {
            format!("recipe folder:{rel}")
        }
    }

    /// Names of `kubernetes-*.toml` recipes available, deduplicated and sorted.
    pub fn recipe_names(&self) -> Result<Vec<String>> {
        let mut names = std::collections::BTreeSet::new();
        for dir in self.recipe_dirs.iter().chain(&self.lock_dirs) {
            let rd = match std::fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io("cannot list recipes in", dir, e)),
            };
            for ent in rd {
                let ent = ent.with_path("cannot list recipes in", dir)?;
                let name = ent.file_name().to_string_lossy().into_owned();
                if is_recipe_name(&name) {
                    names.insert(name);
                }
            }
        }
        for f in BUILTIN_RECIPES.files() {
            let name = f.path().to_string_lossy().into_owned();
            if is_recipe_name(&name) {
                names.insert(name);
            }
        }
        Ok(names.into_iter().collect())
    }
}

/// Refuse a name that would leave the folders searched (`..`, an absolute
/// path): recipes and layouts name files relative to them.
fn inside(what: &str, rel: &str) -> Result<()> {
    if is_rel_path(rel) {
        return Ok(());
    }
    Err(Error::input(format!(
        "{what} file {:?}: refused, not a relative path inside the {what} folders",
        clip(rel)
    )))
}

fn is_recipe_name(name: &str) -> bool {
    name.starts_with("kubernetes-v") && name.ends_with(".toml")
}

fn read_opt(path: &Path) -> Result<Option<Asset>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(Asset {
            text,
            origin: path.display().to_string(),
            lock: false,
        })),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("cannot read", path, e)),
    }
}

fn builtin(dir: &Dir<'static>, top: &str, rel: &str) -> Option<Asset> {
    let file = dir.get_file(rel)?;
    Some(Asset {
        text: file.contents_utf8()?.to_string(),
        origin: format!("built-in:{top}/{rel}"),
        lock: false,
    })
}
