//! Hostile air-gap bundles: each case takes a good bundle apart, makes one
//! thing hostile, and checks that `airgap import` refuses it with a message
//! naming the problem, without a panic, writing nothing to `out/`, leaving
//! nothing unverified in the cache and installing nothing. Also: no layout,
//! from a bundle or from anywhere, can bring a file from outside `pki_dir`
//! into an image.

mod support;

use std::fs;
use std::process::Output;

use support::Workspace;
use support::hostile::{Bundle, assert_refused, gzip_bomb, peak_tmp};

const V: &str = "v1.10.2";
/// The version the bundles' lock is renamed to: no built-in recipe pins it,
/// so the importing machine takes the bundle's recipe as a lock.
const LOCKED: &str = "v1.99.0";
const RECIPE: &str = "recipes/kubernetes-v1.99.0.toml";
const LAYOUT: &str = "recipes/layouts/controller.toml";

// ---------------------------------------------------------------- helpers

/// A workspace with its stand-in tarball imported, and the bundle it exports.
fn exported() -> (Workspace, Bundle) {
    let ws = Workspace::builder(V).binaries(16 * 1024).build();
    ws.ok(&["airgap", "export", "-o", "good.tar", "--offline"]);
    let bundle = Bundle::read(&ws.path("good.tar"));
    (ws, bundle)
}

/// [`exported`], with the recipe renamed to a version no built-in recipe
/// pins: the importing side installs it as a lock.
fn lock_bundle() -> (Workspace, Bundle) {
    let (ws, mut b) = exported();
    let old = format!("recipes/kubernetes-{V}.toml");
    let text = String::from_utf8(b.get(&old).to_vec())
        .unwrap()
        .replace(V, LOCKED);
    b.rename_text(&old, RECIPE, text);
    let mut m = b.manifest();
    m["kubernetes_version"] = LOCKED.into();
    m["artifacts"][0]["recipe"] = "kubernetes-v1.99.0.toml".into();
    b.set_manifest(&m);
    (ws, b)
}

/// `airgap import` of `bundle` into the workspace's second cache, on a
/// machine that knows only the built-in recipes.
fn import(ws: &Workspace, bundle: &Bundle, extra: &[&str]) -> Output {
    bundle.write(&ws.path("bad.tar"));
    fs::create_dir_all(ws.path("no-recipes")).unwrap();
    ws.cmd_with_cache("cache2")
        .env("IMGBUILD_RECIPES", ws.path("no-recipes"))
        .args(["airgap", "import", "bad.tar"])
        .args(extra)
        .output()
        .unwrap()
}

/// The import is refused (exit `code`, saying each of `says`) and the second
/// cache holds no index and no lock.
fn refused(ws: &Workspace, bundle: &Bundle, extra: &[&str], code: i32, says: &[&str]) {
    let out = import(ws, bundle, extra);
    assert_refused(ws, &out, code, says);
    for sub in ["index", "locks"] {
        assert_eq!(
            support::files_under(&ws.path("cache2").join(sub)),
            Vec::<String>::new(),
            "cache2/{sub}"
        );
    }
}

/// Change the bundle's lock as TOML.
fn edit_recipe(b: &mut Bundle, f: impl FnOnce(&mut toml::Value)) {
    b.edit_text(RECIPE, |text| {
        let mut v: toml::Value = toml::from_str(&text).unwrap();
        f(&mut v);
        toml::to_string(&v).unwrap()
    });
}

/// The lock names layout `evil`, which the bundle brings: the built-in
/// controller layout changed by `f`.
fn with_layout(b: &mut Bundle, f: impl FnOnce(&mut toml::Value)) {
    edit_recipe(b, |r| r["layout"] = "evil".into());
    let mut layout: toml::Value =
        toml::from_str(&fs::read_to_string(format!("{}/{LAYOUT}", support::REPO)).unwrap())
            .unwrap();
    f(&mut layout);
    b.add_text(
        "recipes/layouts/evil.toml",
        &toml::to_string(&layout).unwrap(),
    );
}

/// Set `key` of the table `v` (added when missing).
fn put(v: &mut toml::Value, key: &str, value: impl Into<toml::Value>) {
    v.as_table_mut().unwrap().insert(key.into(), value.into());
}

/// The first `[[pki]]` of a layout.
fn first_pki(layout: &mut toml::Value) -> &mut toml::Value {
    &mut layout["pki"][0]
}

// ---------------------------------------------------------------- the good case

/// The helpers make a bundle that imports: the hostile cases differ from it in one thing.
/// The bundle's manifest says where each recipe file came from without the
/// exporting machine's paths: the workspace's recipe folder (given with
/// --recipes) appears as `recipe folder:` and the path inside it.
#[test]
fn the_manifest_records_no_path_of_the_exporting_machine() {
    let (ws, b) = exported();
    let m = b.manifest();
    let text = m.to_string();
    let here = ws.dir().display().to_string();
    assert!(!text.contains(&here), "{text}");
    let origins: Vec<&str> = m["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["origin"].as_str().unwrap())
        .collect();
    for o in &origins {
        assert!(
            o.starts_with("built-in:") || o.starts_with("recipe folder:") || o.starts_with("lock:"),
            "{o}"
        );
        assert!(
            !o.contains("/tmp") && !o.contains("/home") && !o.contains("/root"),
            "{o}"
        );
    }
    assert!(
        origins.contains(&format!("recipe folder:kubernetes-{V}.toml").as_str()),
        "{origins:?}"
    );
}

#[test]
fn a_lock_bundle_imports() {
    let (ws, b) = lock_bundle();
    let out = import(&ws, &b, &[]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(ws.path("cache2/locks/kubernetes-v1.99.0.toml").is_file());
}

// ---------------------------------------------------------------- layout of the bundle

/// Two entries of one name are refused.
#[test]
fn duplicate_entry() {
    let (ws, mut b) = exported();
    let recipe = b.named("recipes/kubernetes-")[0].clone();
    let data = b.get(&recipe).to_vec();
    b.entries.push((recipe, data));
    refused(&ws, &b, &[], 4, &["appears twice"]);
}

/// manifest.json must come first.
#[test]
fn manifest_not_first() {
    let (ws, mut b) = exported();
    b.entries.rotate_left(1);
    refused(&ws, &b, &[], 4, &["must be first"]);
}

/// An artifact whose size is not the manifest's is refused.
#[test]
fn size_mismatch() {
    let (ws, mut b) = exported();
    let mut m = b.manifest();
    m["artifacts"][0]["size"] = 12345.into();
    b.set_manifest(&m);
    refused(&ws, &b, &[], 4, &["manifest.json says 12345"]);
}

/// A text file over 1 MiB is refused by its size, unread.
#[test]
fn oversized_text() {
    let (ws, mut b) = lock_bundle();
    b.edit_text(RECIPE, |t| format!("{t}\n# {}\n", "x".repeat(2 << 20)));
    refused(&ws, &b, &[], 4, &["1 MiB limit"]);
}

/// The same path listed twice in manifest.json.
#[test]
fn manifest_lists_a_file_twice() {
    let (ws, mut b) = exported();
    let mut m = b.manifest();
    let again = m["artifacts"][0].clone();
    m["artifacts"].as_array_mut().unwrap().push(again);
    b.set_manifest(&m);
    refused(&ws, &b, &[], 4, &["listed twice"]);
}

/// A bundle cut short in its last entry (a transfer that stopped).
#[test]
fn truncated_bundle() {
    let (ws, b) = exported();
    let bytes = b.bytes();
    fs::write(ws.path("bad.tar"), &bytes[..bytes.len() - 4096]).unwrap();
    let out = ws
        .cmd_with_cache("cache2")
        .args(["airgap", "import", "bad.tar"])
        .output()
        .unwrap();
    assert_refused(&ws, &out, 4, &["truncated"]);
    assert!(ws.cache_files("../cache2/index").is_empty());
}

/// An artifact over the size cap is refused from its header, unread.
#[test]
fn artifact_over_the_cap() {
    let (ws, b) = exported();
    b.write(&ws.path("bad.tar"));
    let out = ws
        .cmd_with_cache("cache2")
        .env("IMGBUILD_MAX_ARTIFACT_SIZE", "4K")
        .args(["airgap", "import", "bad.tar"])
        .output()
        .unwrap();
    assert_refused(
        &ws,
        &out,
        4,
        &["cap of 4 KiB", "IMGBUILD_MAX_ARTIFACT_SIZE"],
    );
}

// ---------------------------------------------------------------- names

/// An entry name with `..`.
#[test]
fn entry_name_with_dotdot() {
    let (ws, mut b) = exported();
    b.entries
        .push(("recipes/../../escape.toml".into(), b"x".to_vec()));
    refused(&ws, &b, &[], 4, &["`..`"]);
}

/// manifest.json listing an artifact path with `..`.
#[test]
fn manifest_artifact_path_with_dotdot() {
    let (ws, mut b) = exported();
    let mut m = b.manifest();
    m["artifacts"][0]["path"] = "artifacts/../../../etc/passwd".into();
    b.set_manifest(&m);
    refused(&ws, &b, &[], 4, &["manifest.json lists it", "`..`"]);
}

/// manifest.json listing a text file by an absolute path.
#[test]
fn manifest_file_path_absolute() {
    let (ws, mut b) = exported();
    let mut m = b.manifest();
    m["files"][0]["path"] = "/etc/cron.d/evil".into();
    b.set_manifest(&m);
    refused(
        &ws,
        &b,
        &[],
        4,
        &["manifest.json lists it", "absolute path"],
    );
}

/// A lock whose `layout` leaves the layouts folder.
#[test]
fn recipe_layout_with_dotdot() {
    let (ws, mut b) = lock_bundle();
    edit_recipe(&mut b, |r| r["layout"] = "../../../../etc/evil".into());
    refused(&ws, &b, &[], 2, &["layout = \"../../../../etc/evil\""]);
}

/// A lock installing a binary outside the rootfs.
#[test]
fn recipe_member_install_with_dotdot() {
    let (ws, mut b) = lock_bundle();
    edit_recipe(&mut b, |r| {
        r["artifacts"][0]["members"][0]["install"] = "../../etc/ld.so.preload".into()
    });
    refused(&ws, &b, &[], 2, &["members.install"]);
}

/// A lock taking a tarball member by an absolute path.
#[test]
fn recipe_member_path_absolute() {
    let (ws, mut b) = lock_bundle();
    edit_recipe(&mut b, |r| {
        r["artifacts"][0]["members"][0]["path"] = "/etc/shadow".into()
    });
    refused(&ws, &b, &[], 2, &["members.path"]);
}

/// A lock whose url_path leaves the mirror.
#[test]
fn recipe_url_path_with_dotdot() {
    let (ws, mut b) = lock_bundle();
    edit_recipe(&mut b, |r| {
        r["artifacts"][0]["url_path"] = "../../elsewhere/k.tar.gz".into()
    });
    refused(&ws, &b, &[], 2, &["url_path"]);
}

/// A lock whose file name is a path.
#[test]
fn recipe_file_is_a_path() {
    let (ws, mut b) = lock_bundle();
    edit_recipe(&mut b, |r| {
        r["artifacts"][0]["file"] = "../kubernetes-server-linux-{arch}.tar.gz".into()
    });
    refused(&ws, &b, &[], 2, &["file = \"../kubernetes-server"]);
}

// ---------------------------------------------------------------- trust

/// A bundle cannot vouch for its own pins: a recipe the machine lacks that
/// claims changelog trust is refused.
#[test]
fn recipe_claiming_changelog_trust() {
    let (ws, mut b) = lock_bundle();
    edit_recipe(&mut b, |r| r["artifacts"][0]["trust"] = "changelog".into());
    refused(&ws, &b, &[], 4, &["changelog", "--recipes"]);
}

/// A pinned gzip bomb: the digest matches (the bundle's own lock pins it),
/// and expansion is capped before the disk fills.
#[test]
fn pinned_gzip_bomb() {
    let (ws, mut b) = lock_bundle();
    let bomb = gzip_bomb("kubernetes/server/bin/kube-apiserver", 256 << 20);
    let hex = support::sha256_bytes(&bomb);
    b.swap_artifact(bomb);
    edit_recipe(&mut b, |r| {
        r["artifacts"][0]["digests"]["amd64"] = hex.into()
    });
    b.write(&ws.path("bad.tar"));
    fs::create_dir_all(ws.path("no-recipes")).unwrap();
    let mut cmd = ws.cmd_with_cache("cache2");
    cmd.env("IMGBUILD_RECIPES", ws.path("no-recipes"))
        .args(["airgap", "import", "bad.tar"]);
    let (out, peak) = peak_tmp(cmd, &ws.path("cache2/tmp"));
    assert_refused(&ws, &out, 4, &["decompression bomb"]);
    assert!(peak < 80 << 20, "{peak} bytes in tmp at once");
    assert!(ws.cache_files("../cache2/locks").is_empty());
}

// ---------------------------------------------------------------- layouts

/// A layout the machine lacks is refused without --allow-layouts.
#[test]
fn layout_needs_allow_layouts() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |_| {});
    refused(&ws, &b, &[], 4, &["layouts/evil.toml", "--allow-layouts"]);
    // The same layout, allowed: it is a sound one.
    let out = import(&ws, &b, &["--allow-layouts"]);
    assert!(out.status.success(), "{}", support::text(&out));
    assert!(ws.path("cache2/locks/layouts/evil.toml").is_file());
}

/// Even allowed, a layout naming a PKI file by a path with `..` is refused.
#[test]
fn layout_pki_file_with_dotdot() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| {
        first_pki(l)["file"] = "../../../../../../etc/passwd".into()
    });
    refused(
        &ws,
        &b,
        &["--allow-layouts"],
        2,
        &["not a PKI file", "never a path"],
    );
}

/// Even allowed, a layout naming a PKI file by an absolute path is refused.
#[test]
fn layout_pki_file_absolute() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| {
        first_pki(l)["file"] = "/home/u/.ssh/id_ed25519".into()
    });
    refused(&ws, &b, &["--allow-layouts"], 2, &["not a PKI file"]);
}

/// The per-node files are patterns whose `{node}` only a controller's name
/// (a DNS label) replaces: anything but the exact patterns `pki init` knows
/// is refused, even allowed, so no `{node}` can hide a path.
#[test]
fn layout_per_node_pki_file_is_a_pattern_not_a_path() {
    for file in [
        "etcd-{node}/../../../../etc/passwd",
        "etcd-{node}.pem/../../x",
        "../etcd-{node}.pem",
        "{node}",
        "etcd-{node}",
        "/etc/{node}.pem",
    ] {
        let (ws, mut b) = lock_bundle();
        with_layout(&mut b, |l| first_pki(l)["file"] = file.into());
        refused(&ws, &b, &["--allow-layouts"], 2, &["not a PKI file"]);
    }
}

/// A layout template that leaves the overlay.
#[test]
fn layout_template_with_dotdot() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| {
        l["files"][0]["template"] = "../../../../etc/shadow".into()
    });
    refused(&ws, &b, &["--allow-layouts"], 2, &["template"]);
}

/// A layout overlay name that leaves the overlays folder.
#[test]
fn layout_overlay_with_dotdot() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| l["overlay"] = "../..".into());
    refused(&ws, &b, &["--allow-layouts"], 2, &["overlay"]);
}

/// A layout placing a file at an absolute rootfs path.
#[test]
fn layout_path_absolute() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| {
        put(&mut l["files"][0], "path", "/etc/cron.d/evil")
    });
    refused(
        &ws,
        &b,
        &["--allow-layouts"],
        2,
        &["path = \"/etc/cron.d/evil\""],
    );
}

/// A layout asking for a setuid file.
#[test]
fn layout_setuid_mode() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| l["files"][0]["mode"] = 0o4755.into());
    refused(&ws, &b, &["--allow-layouts"], 2, &["0o777"]);
}

/// A unit name with a `/` in `[enable]`.
#[test]
fn layout_unit_name_with_slash() {
    let (ws, mut b) = lock_bundle();
    with_layout(&mut b, |l| {
        l["enable"]["multi-user.target"][0] = "../../../etc/passwd".into()
    });
    refused(&ws, &b, &["--allow-layouts"], 2, &["not a unit name"]);
}

// ---------------------------------------------------------------- the image

/// Layouts from anywhere (here `--recipes`) are held to the same rules: no
/// `[[pki]] file` that is a path reaches a build.
#[test]
fn no_layout_brings_a_file_from_outside_pki_dir() {
    let ws = Workspace::new(V);
    fs::write(ws.path("outside-secret"), "not for the image\n").unwrap();
    fs::create_dir_all(ws.path("recipes/layouts")).unwrap();
    for file in [
        "../outside-secret".to_string(),
        ws.path("outside-secret").display().to_string(),
        "etcd-{node}/../../outside-secret".to_string(),
    ] {
        let mut layout: toml::Value =
            toml::from_str(&fs::read_to_string(format!("{}/{LAYOUT}", support::REPO)).unwrap())
                .unwrap();
        first_pki(&mut layout)["file"] = file.as_str().into();
        fs::write(
            ws.path("recipes/layouts/controller.toml"),
            toml::to_string(&layout).unwrap(),
        )
        .unwrap();
        let out = ws.run(&["controller", "--node", "1"]);
        assert_refused(&ws, &out, 2, &["not a PKI file"]);
    }
}

/// A symbolic link in pki_dir is refused, whatever it points at: it could
/// bring any file the builder can read into the image.
#[test]
fn symlink_in_pki_dir_is_refused() {
    let ws = Workspace::new(V);
    // The link leads to a valid certificate, so only the link is wrong.
    let cert = ws.pki_dir().join("ca.pem");
    fs::rename(&cert, ws.path("outside-ca.pem")).unwrap();
    std::os::unix::fs::symlink(ws.path("outside-ca.pem"), &cert).unwrap();
    let out = ws.run(&["controller", "--node", "1"]);
    assert_refused(&ws, &out, 2, &["ca.pem", "symlink"]);
}

/// `secret` follows the file: a layout saying a key is not secret, mode
/// 0644, still gets it 0600 in the image.
#[test]
fn secret_follows_the_file() {
    let ws = Workspace::new(V);
    fs::create_dir_all(ws.path("recipes/layouts")).unwrap();
    let mut layout: toml::Value =
        toml::from_str(&fs::read_to_string(format!("{}/{LAYOUT}", support::REPO)).unwrap())
            .unwrap();
    for p in layout["pki"].as_array_mut().unwrap() {
        put(p, "mode", 0o644);
        put(p, "secret", false);
    }
    fs::write(
        ws.path("recipes/layouts/controller.toml"),
        toml::to_string(&layout).unwrap(),
    )
    .unwrap();
    ws.ok(&["controller", "--node", "1", "--format", "dir"]);
    use std::os::unix::fs::PermissionsExt;
    let mode = |f: &str| {
        fs::metadata(ws.path("out/controller-1/var/lib/kubernetes").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("ca-key.pem"), 0o600);
    assert_eq!(mode("admin.kubeconfig"), 0o600);
    assert_eq!(mode("encryption-config.yaml"), 0o600);
    assert_eq!(mode("ca.pem"), 0o644);
    // The per-node files too: etcd's key is secret whatever the layout says.
    let etcd = |f: &str| {
        fs::metadata(ws.path("out/controller-1/etc/etcd").join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(etcd("etcd-key.pem"), 0o600);
    assert_eq!(etcd("etcd.pem"), 0o644);
}
