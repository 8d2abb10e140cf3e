//! The build manifest: every entry with its type, mode, owner, size, sha256,
//! link target and origin, plus what the build was made from. It never holds
//! file contents, so it is safe to publish even though the build holds keys.

use serde::Serialize;

use crate::plan::{Entry, EntryKind, Meta, Origin, Plan};

#[derive(Debug, Serialize)]
pub struct Manifest<'a> {
    #[serde(flatten)]
    pub meta: &'a Meta,
    pub format: &'a str,
    /// Output files of this build (name, sha256, size).
    pub outputs: Vec<OutputFile>,
    pub entries: Vec<ManifestEntry<'a>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct OutputFile {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct ManifestEntry<'a> {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<&'a str>,
    pub shared: bool,
    pub secret: bool,
    pub origin: &'a Origin,
}

impl<'a> ManifestEntry<'a> {
    pub fn new(e: &'a Entry) -> Self {
        ManifestEntry {
            path: format!("/{}", e.path),
            kind: e.type_name(),
            mode: format!("{:04o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            size: e.size(),
            sha256: match &e.kind {
                EntryKind::File { sha256, .. } => Some(sha256),
                _ => None,
            },
            target: match &e.kind {
                EntryKind::Symlink { target } => Some(target),
                _ => None,
            },
            shared: e.shared,
            secret: e.secret,
            origin: &e.origin,
        }
    }
}

pub fn render(plan: &Plan, format: &str, outputs: Vec<OutputFile>) -> Vec<u8> {
    let m = Manifest {
        meta: &plan.meta,
        format,
        outputs,
        entries: plan.ordered().map(ManifestEntry::new).collect(),
    };
    let mut v = serde_json::to_vec_pretty(&m).expect("manifest serializes");
    v.push(b'\n');
    v
}

/// Write the node's manifest at `path`. Several formats of one node share the
/// manifest: when the file already describes exactly the same entries and
/// inputs, the other formats' outputs are kept beside this one's; otherwise
/// the file is replaced.
pub fn write(
    path: &std::path::Path,
    plan: &Plan,
    format: &str,
    outputs: Vec<OutputFile>,
) -> crate::Result<()> {
    use serde_json::Value;
    let tag = |outputs: Vec<OutputFile>| -> Vec<Value> {
        outputs
            .into_iter()
            .map(|o| serde_json::json!({"name": o.name, "format": format, "sha256": o.sha256, "size": o.size}))
            .collect()
    };
    let mut new: Value =
        serde_json::from_slice(&render(plan, format, Vec::new())).expect("valid JSON");
    let mut merged = tag(outputs);
    if let Some(mut old) = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    {
        let strip = |v: &mut Value| {
            let o = v
                .as_object_mut()
                .map(|m| (m.remove("format"), m.remove("outputs")));
            o.and_then(|(_, outputs)| outputs)
        };
        let old_outputs = strip(&mut old);
        let mut bare = new.clone();
        strip(&mut bare);
        if old == bare {
            for o in old_outputs
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
            {
                if !merged.iter().any(|n| n["name"] == o["name"]) {
                    merged.push(o);
                }
            }
        }
    }
    merged.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    new["outputs"] = Value::Array(merged);
    let mut bytes = serde_json::to_vec_pretty(&new).expect("serializes");
    bytes.push(b'\n');
    crate::util::atomic::write(path, &bytes, 0o644).map(|_| ())
}
