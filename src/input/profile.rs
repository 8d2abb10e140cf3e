//! OS profiles (`--os NAME`), kept as data in the layout: where a system keeps
//! what imgbuild installs, which folders it already has, and which parts of
//! the node it cannot run.
//!
//! The layout's paths and the recipes' `install` paths are written for the
//! layout's `base_os`. Every profile names the same folders (`dirs`); what is
//! installed under one of the base profile's folders moves under the chosen
//! profile's (`/usr` is read-only on Flatcar and Fedora CoreOS, so
//! `/usr/local/bin` becomes `/opt/bin`), and templates read the folders as
//! `os.<dir>` (`{{ os.bin_dir }}`). A profile may leave out parts
//! (`[parts.NAME]`: layout files and enabled units); the part's `instead` is a
//! template rendered per node and printed by `lint` and the build.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::input::recipe::Layout;

/// The profile every command but `ignition` uses.
pub const DEFAULT_OS: &str = "debian";

/// `[os.NAME]` of a layout.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OsProfile {
    /// Folder name → absolute path, e.g. `bin_dir = "/opt/bin"`; the same
    /// names in every profile.
    pub dirs: BTreeMap<String, String>,
    /// Names of `[parts]` this system does not run.
    #[serde(default)]
    pub leave_out: Vec<String>,
    /// Folders the system already has (absolute): outputs that only add to
    /// a running system (Ignition) leave them to it.
    #[serde(default)]
    pub system_dirs: Vec<String>,
}

/// `[parts.NAME]` of a layout: files and units that belong together.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    /// What the part is, for messages.
    pub what: String,
    /// Layout files (by `template`) of the part.
    #[serde(default)]
    pub files: Vec<String>,
    /// Enabled units of the part.
    #[serde(default)]
    pub units: Vec<String>,
    /// `[[pki]]` entries of the part, by rootfs path (as the layout gives it).
    #[serde(default)]
    pub pki: Vec<String>,
    /// `[[dirs]]` of the part, by path.
    #[serde(default)]
    pub dirs: Vec<String>,
    /// The recipe's artifacts (by name) whose members only this part uses:
    /// without the part they are neither fetched nor installed.
    #[serde(default)]
    pub artifacts: Vec<String>,
    /// What to do without it: a template rendered per node (like the overlay's).
    pub instead: String,
}

/// The profile chosen for a build, checked against its layout.
#[derive(Debug, Clone)]
pub struct Profile {
    pub name: String,
    /// What templates see as `os`: `name` and every folder of `dirs`.
    pub vars: BTreeMap<String, String>,
    /// (from, to): relative rootfs prefixes, longest `from` first.
    moves: Vec<(String, String)>,
    /// Parts left out, by name.
    pub left_out: BTreeMap<String, Part>,
    /// Why each part is left out (`on flatcar`, `by [etcd] mode = "external"`).
    pub why: BTreeMap<String, String>,
    /// Relative paths of the folders the system already has.
    pub system_dirs: Vec<String>,
}

impl Profile {
    /// The profile `name` of `layout` (read from `origin`), after checking
    /// every profile and part of the layout.
    pub fn resolve(layout: &Layout, origin: &str, name: &str) -> Result<Profile> {
        let err = |m: String| Error::input(format!("layout {origin}: {m}"));
        if layout.os.is_empty() {
            // A layout without profiles: its paths are used as they are.
            if name != DEFAULT_OS {
                return Err(err(format!(
                    "--os {name}: this layout defines no [os.NAME] profiles; only --os {DEFAULT_OS} applies"
                )));
            }
            return Ok(Profile {
                name: name.to_string(),
                vars: BTreeMap::from([("name".to_string(), name.to_string())]),
                moves: Vec::new(),
                left_out: BTreeMap::new(),
                why: BTreeMap::new(),
                system_dirs: Vec::new(),
            });
        }
        check_layout(layout).map_err(err)?;
        let base = &layout.os[layout.base_os.as_deref().unwrap_or(DEFAULT_OS)];
        let Some(chosen) = layout.os.get(name) else {
            let have: Vec<_> = layout.os.keys().map(String::as_str).collect();
            return Err(Error::input(format!(
                "--os {}: no such profile; layout {origin} has {}",
                crate::error::clip(name),
                have.join(", ")
            )));
        };
        let mut vars = BTreeMap::from([("name".to_string(), name.to_string())]);
        let mut moves = Vec::new();
        for (key, to) in &chosen.dirs {
            vars.insert(key.clone(), to.clone());
            let from = &base.dirs[key];
            if from != to {
                moves.push((rel(from).to_string(), rel(to).to_string()));
            }
        }
        moves.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
        Ok(Profile {
            name: name.to_string(),
            vars,
            moves,
            left_out: chosen
                .leave_out
                .iter()
                .map(|p| (p.clone(), layout.parts[p].clone()))
                .collect(),
            why: chosen
                .leave_out
                .iter()
                .map(|p| (p.clone(), format!("on {name}")))
                .collect(),
            system_dirs: chosen.system_dirs.iter().map(|d| rel(d).into()).collect(),
        })
    }

    /// Leave out the layout's part `part` too (the inventory does not want
    /// it), saying `why`; nothing when the layout has no such part.
    pub fn leave_out(&mut self, layout: &Layout, part: &str, why: &str) {
        if let Some(p) = layout.parts.get(part) {
            self.left_out.insert(part.to_string(), p.clone());
            self.why.insert(part.to_string(), why.to_string());
        }
    }

    /// Where a path the layout or a recipe names (relative) goes on this system.
    pub fn relocate(&self, path: &str) -> String {
        for (from, to) in &self.moves {
            if let Some(rest) = path.strip_prefix(from.as_str())
                && (rest.is_empty() || rest.starts_with('/'))
            {
                return format!("{to}{rest}");
            }
        }
        path.to_string()
    }

    /// Whether no part left out names `name` in the list `of` gives.
    fn keeps(&self, of: impl Fn(&Part) -> &Vec<String>, name: &str) -> bool {
        !self
            .left_out
            .values()
            .any(|p| of(p).iter().any(|n| n == name))
    }

    /// Whether the layout file with this template is part of the node.
    pub fn keeps_file(&self, template: &str) -> bool {
        self.keeps(|p| &p.files, template)
    }

    /// Whether this enabled unit is part of the node.
    pub fn keeps_unit(&self, unit: &str) -> bool {
        self.keeps(|p| &p.units, unit)
    }

    /// Whether the `[[pki]]` entry with this (layout) path is part of the node.
    pub fn keeps_pki(&self, path: &str) -> bool {
        self.keeps(|p| &p.pki, path)
    }

    /// Whether the `[[dirs]]` entry with this (layout) path is part of the node.
    pub fn keeps_dir(&self, path: &str) -> bool {
        self.keeps(|p| &p.dirs, path)
    }

    /// Whether the recipe's artifact of this name is part of the node.
    pub fn keeps_artifact(&self, name: &str) -> bool {
        self.keeps(|p| &p.artifacts, name)
    }
}

fn rel(abs: &str) -> &str {
    abs.trim_start_matches('/')
}

fn absolute_folder(path: &str) -> bool {
    path.starts_with('/')
        && path.len() > 1
        && !path.ends_with('/')
        && path[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Every profile names the base profile's folders, as absolute clean paths;
/// every part it leaves out exists and names files and units of the layout.
fn check_layout(layout: &Layout) -> std::result::Result<(), String> {
    let base_name = layout.base_os.as_deref().unwrap_or(DEFAULT_OS);
    let base = layout
        .os
        .get(base_name)
        .ok_or_else(|| format!("base_os {base_name:?} is not one of its [os.NAME] profiles"))?;
    let base_keys: BTreeSet<&String> = base.dirs.keys().collect();
    for (name, p) in &layout.os {
        let keys: BTreeSet<&String> = p.dirs.keys().collect();
        if keys != base_keys {
            return Err(format!(
                "[os.{name}] dirs name {keys:?}; every profile names the folders of base_os {base_name} ({base_keys:?})"
            ));
        }
        for (key, path) in p
            .dirs
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(p.system_dirs.iter().map(|d| ("system_dirs", d)))
        {
            if !absolute_folder(path) {
                return Err(format!(
                    "[os.{name}] {key} = {path:?}: expected an absolute folder path without `.`, `..` or a final `/`"
                ));
            }
        }
        for part in &p.leave_out {
            if !layout.parts.contains_key(part) {
                return Err(format!(
                    "[os.{name}] leaves out {part:?}, which is not one of its [parts.NAME]"
                ));
            }
        }
    }
    let enabled: BTreeSet<&String> = layout.enable.values().flatten().collect();
    for (name, part) in &layout.parts {
        for f in &part.files {
            if !layout.files.iter().any(|lf| &lf.template == f) {
                return Err(format!(
                    "[parts.{name}] names file {f:?}, which is not a template of its [[files]]"
                ));
            }
        }
        for u in &part.units {
            if !enabled.contains(u) {
                return Err(format!(
                    "[parts.{name}] names unit {u:?}, which its [enable] does not enable"
                ));
            }
        }
        for f in &part.pki {
            if !layout.pki.iter().any(|p| &p.path == f) {
                return Err(format!(
                    "[parts.{name}] names PKI path {f:?}, which is not a path of its [[pki]]"
                ));
            }
        }
        for d in &part.dirs {
            if !layout.dirs.iter().any(|ld| &ld.path == d) {
                return Err(format!(
                    "[parts.{name}] names folder {d:?}, which is not a path of its [[dirs]]"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(text: &str) -> Layout {
        toml::from_str(text).unwrap()
    }

    const LAYOUT: &str = r#"
overlay = "x"
base_os = "debian"
[[files]]
template = "etc/nginx/x.conf"
mode = 0o644
[[files]]
template = "usr/local/lib/imgbuild/run"
mode = 0o755
[enable]
"multi-user.target" = ["a.service", "nginx.service"]
[os.debian]
dirs = { bin_dir = "/usr/local/bin", lib_dir = "/usr/local/lib/imgbuild" }
[os.flatcar]
dirs = { bin_dir = "/opt/bin", lib_dir = "/opt/lib/imgbuild" }
leave_out = ["proxy"]
system_dirs = ["/etc", "/opt"]
[parts.proxy]
what = "the proxy"
files = ["etc/nginx/x.conf"]
units = ["nginx.service"]
instead = "use {{ node.internal_ip }}"
"#;

    #[test]
    fn profiles_move_folders_and_leave_parts_out() {
        let l = layout(LAYOUT);
        let debian = Profile::resolve(&l, "t", "debian").unwrap();
        assert_eq!(
            debian.relocate("usr/local/bin/kubectl"),
            "usr/local/bin/kubectl"
        );
        assert!(debian.keeps_file("etc/nginx/x.conf") && debian.keeps_unit("nginx.service"));
        let flatcar = Profile::resolve(&l, "t", "flatcar").unwrap();
        assert_eq!(flatcar.relocate("usr/local/bin/kubectl"), "opt/bin/kubectl");
        assert_eq!(
            flatcar.relocate("usr/local/lib/imgbuild/run"),
            "opt/lib/imgbuild/run"
        );
        assert_eq!(flatcar.relocate("usr/local/bin"), "opt/bin");
        assert_eq!(flatcar.relocate("usr/local/binx/y"), "usr/local/binx/y");
        assert_eq!(flatcar.relocate("var/lib/kubernetes"), "var/lib/kubernetes");
        assert!(!flatcar.keeps_file("etc/nginx/x.conf") && !flatcar.keeps_unit("nginx.service"));
        assert!(flatcar.keeps_unit("a.service"));
        assert_eq!(flatcar.vars["bin_dir"], "/opt/bin");
        assert_eq!(flatcar.vars["name"], "flatcar");
        assert_eq!(flatcar.system_dirs, ["etc", "opt"]);
    }

    #[test]
    fn bad_profiles_are_refused_by_name() {
        let l = layout(LAYOUT);
        let e = Profile::resolve(&l, "t", "plan9").unwrap_err().to_string();
        assert!(
            e.contains("--os plan9") && e.contains("debian, flatcar"),
            "{e}"
        );
        for (from, to, says) in [
            ("\"/opt/bin\", lib_dir", "\"opt/bin\", lib_dir", "absolute"),
            (
                "leave_out = [\"proxy\"]",
                "leave_out = [\"web\"]",
                "\"web\"",
            ),
            (
                "files = [\"etc/nginx/x.conf\"]",
                "files = [\"etc/y\"]",
                "etc/y",
            ),
            (
                "units = [\"nginx.service\"]",
                "units = [\"b.service\"]",
                "b.service",
            ),
            (", lib_dir = \"/opt/lib/imgbuild\"", "", "every profile"),
            ("base_os = \"debian\"", "base_os = \"suse\"", "suse"),
        ] {
            let l = layout(&LAYOUT.replace(from, to));
            let e = Profile::resolve(&l, "t", "debian").unwrap_err().to_string();
            assert!(e.contains(says) && e.starts_with("layout t: "), "{e}");
        }
        let bare = layout("overlay = \"x\"\n");
        assert!(Profile::resolve(&bare, "t", "debian").is_ok());
        assert!(Profile::resolve(&bare, "t", "flatcar").is_err());
    }
}
