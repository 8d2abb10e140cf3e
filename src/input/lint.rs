//! The version-aware check: rendered units and manifests against the flag table
//! kept as data in `recipes/flags.toml` (and, where known, complete flag sets
//! in `recipes/flagsets/<component>-v1.<minor>.txt`).

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::input::Versions;
use crate::input::assets::Assets;
use crate::input::component::Component;
use crate::input::inventory::Inventory;
use crate::input::overlay::Rendered;
use crate::input::recipe::Version;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagTable {
    #[serde(default)]
    pub flags: Vec<FlagRule>,
    #[serde(default)]
    pub values: Vec<ValueRule>,
    #[serde(default)]
    pub required: Vec<Required>,
    #[serde(default)]
    pub api_versions: Vec<ApiVersionRule>,
    #[serde(default)]
    pub needs: Vec<Needs>,
    #[serde(default)]
    pub added: Vec<Added>,
    /// (component, major, minor) → every flag that version accepts, where known.
    #[serde(skip)]
    pub flagsets: BTreeMap<(String, u32, u32), (BTreeSet<String>, String)>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlagRule {
    pub component: String,
    pub flag: String,
    #[serde(default)]
    pub deprecated: Option<String>,
    #[serde(default)]
    pub removed: Option<String>,
    pub replacement: String,
    pub source: String,
}

/// One item of a comma-separated flag value (an admission plugin, a runtime-config entry).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ValueRule {
    pub component: String,
    pub flag: String,
    pub item: String,
    #[serde(default)]
    pub deprecated: Option<String>,
    #[serde(default)]
    pub removed: Option<String>,
    #[serde(default)]
    pub unconfirmed: bool,
    pub replacement: String,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Required {
    pub component: String,
    pub flag: String,
    pub since: String,
    pub source: String,
}

/// A flag that does nothing without another (with `needs_value`, set to it).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    pub component: String,
    pub flag: String,
    pub needs: String,
    #[serde(default)]
    pub needs_value: Option<String>,
    pub why: String,
    pub source: String,
}

/// A flag the templates add from `since` on, and why (documentation; the
/// tests check every added flag has its row).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Added {
    pub component: String,
    pub flag: String,
    pub since: String,
    pub why: String,
    pub source: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiVersionRule {
    pub kind: String,
    pub api_version: String,
    #[serde(default)]
    pub added: Option<String>,
    #[serde(default)]
    pub deprecated: Option<String>,
    #[serde(default)]
    pub removed: Option<String>,
    pub source: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Notice,
    Warning,
    Error,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// Rootfs path of the file the finding is about.
    pub file: String,
    pub message: String,
}

/// A rendered file to check, and which of its flags came from the inventory.
pub struct Checked<'a> {
    pub path: &'a str,
    pub text: &'a str,
    /// Flags given through `extra_args` (named so in findings).
    pub extra: &'a BTreeMap<String, String>,
    /// The inventory section those came from, e.g. `[apiserver.extra_args]`.
    pub extra_section: &'a str,
}

fn at_least(v: Version, bound: &Option<String>) -> bool {
    bound
        .as_deref()
        .and_then(Version::parse_loose)
        .is_some_and(|b| v >= b)
}

impl FlagTable {
    pub fn load(assets: &Assets) -> Result<FlagTable> {
        let asset = assets
            .recipe_file("flags.toml")?
            .ok_or_else(|| Error::input("the flag table recipes/flags.toml is missing"))?;
        let mut table: FlagTable = toml::from_str(&asset.text).map_err(|e| {
            Error::input(format!(
                "{}: {}",
                asset.origin,
                crate::error::clip_lines(&e.to_string())
            ))
        })?;
        for (component, major, minor, asset) in assets.flagsets()? {
            let set = asset
                .text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(String::from)
                .collect();
            table
                .flagsets
                .insert((component, major, minor), (set, asset.origin));
        }
        Ok(table)
    }

    /// Check the rendered files of one node for `versions`: etcd's unit
    /// against the recipe's etcd release, everything else against the
    /// Kubernetes release.
    pub fn check(&self, versions: Versions, files: &[Checked<'_>]) -> Vec<Finding> {
        let mut out = Vec::new();
        for f in files {
            if f.path.starts_with("etc/systemd/system/") && f.path.ends_with(".service") {
                self.check_unit(versions, f, &mut out);
            } else if f.path.ends_with(".yaml") || f.path.ends_with(".yml") {
                self.check_manifest(versions.k8s, f, &mut out);
            }
        }
        out
    }

    fn check_unit(&self, versions: Versions, f: &Checked<'_>, out: &mut Vec<Finding>) {
        let Some((cmd, flags)) = crate::input::unit::exec_start(f.text) else {
            return;
        };
        let component = cmd.rsplit('/').next().unwrap_or(&cmd).to_string();
        // etcd has releases of its own; a recipe without one checks nothing.
        let (version, product) = if component == ETCD_BINARY {
            match versions.etcd {
                Some(v) => (v, "etcd"),
                None => return,
            }
        } else {
            (versions.k8s, "Kubernetes")
        };
        // How messages name the release: `v1.36.0`, `etcd v3.6.5`.
        let shown = match product {
            "etcd" => format!("etcd {version}"),
            _ => version.to_string(),
        };
        let mut push = |severity, message: String| {
            out.push(Finding {
                severity,
                file: f.path.to_string(),
                message,
            })
        };
        let from = |flag: &str| {
            if f.extra.contains_key(flag) {
                format!(" (from {} in the inventory)", f.extra_section)
            } else {
                String::new()
            }
        };
        for (flag, value) in &flags {
            for r in self
                .flags
                .iter()
                .filter(|r| r.component == component && &r.flag == flag)
            {
                let since = |b: &Option<String>| b.clone().unwrap_or_default();
                if at_least(version, &r.removed) {
                    push(
                        Severity::Error,
                        format!(
                            "{component} --{flag}{} was removed in {} and {shown} refuses to start with it; use: {}. Source: {}",
                            from(flag),
                            since(&r.removed),
                            r.replacement,
                            r.source
                        ),
                    );
                } else if at_least(version, &r.deprecated) {
                    push(
                        Severity::Warning,
                        format!(
                            "{component} --{flag}{} is deprecated since {} ({shown} still accepts it); use: {}. Source: {}",
                            from(flag),
                            since(&r.deprecated),
                            r.replacement,
                            r.source
                        ),
                    );
                }
            }
            if let Some(value) = value {
                let items: Vec<&str> = value.split(',').collect();
                for r in self.values.iter().filter(|r| {
                    r.component == component && &r.flag == flag && items.contains(&r.item.as_str())
                }) {
                    let what = format!("{component} --{flag}={value}{}: {}", from(flag), r.item);
                    let note = if r.unconfirmed { " (unconfirmed)" } else { "" };
                    if at_least(version, &r.removed) && !r.unconfirmed {
                        push(
                            Severity::Error,
                            format!(
                                "{what} was removed in {}; use: {}. Source: {}",
                                r.removed.as_deref().unwrap_or(""),
                                r.replacement,
                                r.source
                            ),
                        );
                    } else if at_least(version, &r.deprecated) || at_least(version, &r.removed) {
                        push(
                            Severity::Warning,
                            format!(
                                "{what} may not work on {shown}{note}; use: {}. Source: {}",
                                r.replacement, r.source
                            ),
                        );
                    }
                }
            }
        }
        let present: BTreeSet<&str> = flags.iter().map(|(f, _)| f.as_str()).collect();
        for r in self.needs.iter().filter(|r| r.component == component) {
            if !present.contains(r.flag.as_str()) {
                continue;
            }
            let given = flags.iter().find(|(f, _)| *f == r.needs).map(|(_, v)| v);
            let fits = match (&r.needs_value, given) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(want), Some(v)) => v.as_deref().unwrap_or("true") == want,
            };
            if !fits {
                let needed = match &r.needs_value {
                    Some(v) => format!("--{}={v}", r.needs),
                    None => format!("--{}", r.needs),
                };
                push(
                    Severity::Warning,
                    format!(
                        "{component} --{}{} has no effect without {needed}: {}. Source: {}",
                        r.flag,
                        from(&r.flag),
                        r.why,
                        r.source
                    ),
                );
            }
        }
        for r in self.required.iter().filter(|r| r.component == component) {
            if at_least(version, &Some(r.since.clone())) && !present.contains(r.flag.as_str()) {
                push(
                    Severity::Error,
                    format!(
                        "{component} needs --{} since {} ({shown} refuses to start without it). Source: {}",
                        r.flag, r.since, r.source
                    ),
                );
            }
        }
        // Every flag, the recipe's own included, against the version's complete
        // set where one is known: a typo or a flag of another version fails here
        // rather than when the API server refuses to start.
        for flag in present {
            if self
                .flags
                .iter()
                .any(|r| r.component == component && r.flag == flag)
            {
                continue; // already judged by its row above
            }
            match self
                .flagsets
                .get(&(component.clone(), version.major, version.minor))
            {
                Some((set, origin)) if !set.contains(flag) => push(
                    Severity::Error,
                    format!(
                        "{component} --{flag}{} is unknown to {product} v{}.{} (flag set {origin}); check its spelling. \
                         A flag hidden from --help can be added to a flagsets/ file in a --recipes folder",
                        if f.extra.contains_key(flag) {
                            from(flag)
                        } else {
                            " (from the recipe's template)".to_string()
                        },
                        version.major,
                        version.minor
                    ),
                ),
                Some(_) => {}
                None if f.extra.contains_key(flag) => push(
                    Severity::Notice,
                    format!(
                        "{component} --{flag}{} is passed through unchecked: imgbuild knows no complete flag set for {product} v{}.{}",
                        from(flag),
                        version.major,
                        version.minor
                    ),
                ),
                None => {}
            }
        }
    }

    fn check_manifest(&self, version: Version, f: &Checked<'_>, out: &mut Vec<Finding>) {
        for doc in f.text.split("\n---") {
            let field = |name: &str| {
                doc.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().trim_matches('"').to_string())
            };
            let (Some(api_version), Some(kind)) = (field("apiVersion:"), field("kind:")) else {
                continue;
            };
            let rules: Vec<&ApiVersionRule> = self
                .api_versions
                .iter()
                .filter(|r| r.kind == kind)
                .collect();
            if rules.is_empty() {
                continue;
            }
            let served: Vec<&str> = rules
                .iter()
                .filter(|r| r.added.is_none() || at_least(version, &r.added))
                .filter(|r| !at_least(version, &r.removed))
                .map(|r| r.api_version.as_str())
                .collect();
            let Some(rule) = rules.iter().find(|r| r.api_version == api_version) else {
                out.push(Finding {
                    severity: Severity::Warning,
                    file: f.path.to_string(),
                    message: format!("{kind} apiVersion {api_version} is not in the flag table; {version} serves {}", served.join(", ")),
                });
                continue;
            };
            if !served.contains(&api_version.as_str()) {
                out.push(Finding {
                    severity: Severity::Error,
                    file: f.path.to_string(),
                    message: format!(
                        "{kind} apiVersion {api_version} is not served by {version}; use {}. Source: {}",
                        served.join(" or "),
                        rule.source
                    ),
                });
            } else if at_least(version, &rule.deprecated) {
                out.push(Finding {
                    severity: Severity::Warning,
                    file: f.path.to_string(),
                    message: format!(
                        "{kind} apiVersion {api_version} is deprecated since {}. Source: {}",
                        rule.deprecated.as_deref().unwrap_or(""),
                        rule.source
                    ),
                });
            }
        }
    }
}

/// The binary etcd's unit runs: its flags go by the recipe's etcd release.
pub const ETCD_BINARY: &str = "etcd";

/// Turn error findings into one build error listing them all.
pub fn fail_on_errors(version: Version, findings: &[Finding]) -> Result<()> {
    let errors: Vec<String> = findings
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| format!("  /{}: {}", f.file, f.message))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::input(format!(
            "the configuration does not fit Kubernetes {version}:\n{}",
            errors.join("\n")
        )))
    }
}

/// Check a node's rendered files: a flag set twice (the recipe's and an
/// `extra_args` one) is an error here; the flag table's rules come back as findings.
pub fn check_rendered(
    inv: &Inventory,
    table: &FlagTable,
    versions: Versions,
    rendered: &[Rendered],
) -> Result<Vec<Finding>> {
    let none = BTreeMap::new();
    let mut checked = Vec::new();
    let mut sections = Vec::new();
    for r in rendered {
        let command = crate::input::unit::exec_start(&r.text);
        if r.path.starts_with("etc/systemd/system/")
            && let Some((_, flags)) = &command
        {
            let mut seen = std::collections::BTreeSet::new();
            for (flag, _) in flags {
                if !seen.insert(flag) {
                    return Err(Error::input(format!(
                        "inventory {}: --{flag} is set twice in /{}: the recipe already sets it, so remove it from the component's extra_args",
                        inv.path.display(),
                        r.path
                    )));
                }
            }
        }
        sections.push(command.and_then(|(c, _)| Component::of_command(&c)));
    }
    let names: Vec<String> = sections
        .iter()
        .map(|c| c.map(|c| c.extra_args_section()).unwrap_or_default())
        .collect();
    for ((r, c), name) in rendered.iter().zip(&sections).zip(&names) {
        checked.push(Checked {
            path: &r.path,
            text: &r.text,
            extra: c.map_or(&none, |c| c.extra_args(inv)),
            extra_section: name,
        });
    }
    Ok(table.check(versions, &checked))
}
