//! A hostile cache, and hostile files given to `cache import`: whoever can
//! write a shared cache can swap blobs, indexes, originals and segments; each
//! case checks that a build refuses (or remakes) rather than ships them, with
//! a message naming the problem and nothing in `out/`. Pinned archives that
//! expand too far or hold too much are refused before the disk fills.

mod support;

use std::fs;
use std::path::PathBuf;

use support::hostile::{assert_refused, gzip_bomb, output_within, peak_tmp, tarball_of};
use support::{Workspace, test_recipe};

const V: &str = "v1.10.2";
const APISERVER: &str = "kubernetes/server/bin/kube-apiserver";

// ---------------------------------------------------------------- helpers

/// The index of the server tarball in the workspace's cache (etcd's is the other).
fn index_path(ws: &Workspace) -> PathBuf {
    let names = ws.cache_files("index");
    let servers: Vec<PathBuf> = names
        .iter()
        .map(|n| ws.path("cache/index").join(n))
        .filter(|p| {
            fs::read_to_string(p)
                .unwrap()
                .contains("\"artifact\": \"kubernetes-server\"")
        })
        .collect();
    assert_eq!(servers.len(), 1, "{names:?}");
    servers[0].clone()
}

/// Rewrite the index as JSON, as a writer of a shared cache could.
fn edit_index(ws: &Workspace, f: impl FnOnce(&mut serde_json::Value)) {
    let path = index_path(ws);
    let mut v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    fs::remove_file(&path).unwrap();
    fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Rewrite a cache file in place with other bytes of the same length.
fn flip(path: &std::path::Path) {
    let mut bytes = fs::read(path).unwrap();
    for b in bytes.iter_mut().skip(100).take(64) {
        *b ^= 0x5a;
    }
    fs::remove_file(path).unwrap();
    fs::write(path, bytes).unwrap();
}

/// Build node 1 and expect a refusal with `code`, saying `says`.
fn build_refused(ws: &Workspace, code: i32, says: &[&str]) -> String {
    let _ = fs::remove_dir_all(ws.path("out"));
    let out = ws.run(&["controller", "--node", "1"]);
    assert_refused(ws, &out, code, says)
}

/// Point the index's kube-apiserver at kubectl's blob (digest and size
/// consistent: the blob's own check passes).
fn swap_index(ws: &Workspace) {
    edit_index(ws, |v| {
        let kubectl = v["members"]["kubernetes/server/bin/kubectl"].clone();
        v["members"][APISERVER] = kubectl;
    });
}

/// A workspace whose recipe pins `tarball` (written where `cache import`
/// takes it from), nothing imported.
fn pinned(tarball: &[u8]) -> Workspace {
    let ws = Workspace::builder(V).not_imported().build();
    fs::write(ws.path("kubernetes-server-linux-amd64.tar.gz"), tarball).unwrap();
    fs::write(
        ws.path(&format!("recipes/kubernetes-{V}.toml")),
        test_recipe(V, "amd64", tarball, ws.etcd_tarball()),
    )
    .unwrap();
    ws
}

/// `cache import` of the pinned tarball is refused with exit 4, saying `says`,
/// and the cache holds nothing; returns the most the temp folder held.
fn import_refused(ws: &Workspace, env: &[(&str, &str)], says: &[&str]) -> u64 {
    let mut cmd = ws.cmd();
    cmd.args(["cache", "import", "kubernetes-server-linux-amd64.tar.gz"])
        .envs(env.iter().copied());
    let (out, peak) = peak_tmp(cmd, &ws.path("cache/tmp"));
    assert_refused(ws, &out, 4, says);
    ws.assert_cache_clean(true);
    peak
}

// ---------------------------------------------------------------- a shared cache

/// A blob rewritten in place (same name, same size) fails the build as it is read.
#[test]
fn swapped_blob() {
    let ws = Workspace::new(V);
    let blob = ws
        .path("cache/blobs/sha256")
        .join(&ws.cache_files("blobs/sha256")[0]);
    flip(&blob);
    build_refused(&ws, 4, &["is corrupt", "cache verify"]);
}

/// Rewrite a cache file in place (same inode, mode and size) and set its
/// mtime back: only ctime shows it.
fn rewrite_keeping_mtime(path: &std::path::Path) {
    use std::io::{Seek, Write};
    let mtime = fs::metadata(path).unwrap().modified().unwrap();
    let mut bytes = fs::read(path).unwrap();
    bytes[100] ^= 0x5a;
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    f.rewind().unwrap();
    f.write_all(&bytes).unwrap();
    f.set_modified(mtime).unwrap();
}

/// Blobs this user verified are read without hashing while their stamp is
/// the one recorded and only this user may write them. A blob another user
/// owns is hashed as it streams into every build, verified or not: that user
/// can rewrite it in place and set its mtime back. The same done to this
/// user's own blob is what `cache verify` finds.
#[test]
fn a_blob_another_user_owns_is_hashed_every_time() {
    let ws = Workspace::new(V);
    ws.ok(&["controller", "--node", "1"]);
    let blob = ws
        .path("cache/blobs/sha256")
        .join(&ws.cache_files("blobs/sha256")[0]);
    let mine = fs::metadata("/proc/self").unwrap();
    if std::os::unix::fs::MetadataExt::uid(&mine) == 0 {
        std::os::unix::fs::chown(&blob, Some(65534), Some(65534)).unwrap();
        rewrite_keeping_mtime(&blob);
        // The binaries are read again only when their segment is made again.
        fs::remove_dir_all(ws.path("cache/segments")).unwrap();
        build_refused(&ws, 4, &["is corrupt", "cache verify"]);
    }
    let ws = Workspace::new(V);
    ws.ok(&["controller", "--node", "1"]);
    let blob = ws
        .path("cache/blobs/sha256")
        .join(&ws.cache_files("blobs/sha256")[0]);
    rewrite_keeping_mtime(&blob);
    let out = ws.run(&["cache", "verify"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&out.stdout).contains("corrupt"));
    assert!(!blob.exists());
}

/// An index rewritten to name another blob, after this user's build verified
/// it: the ledger no longer matches, the members are derived again from the
/// pinned original, and the build is refused naming the member.
#[test]
fn swapped_index_after_a_verified_build() {
    let ws = Workspace::new(V);
    ws.ok(&["controller", "--node", "1"]);
    swap_index(&ws);
    build_refused(&ws, 4, &["was altered", APISERVER]);
}

/// The same swap made before another user's first build: that user's ledger
/// (outside the cache) never saw the index, so it is verified first.
#[test]
fn swapped_index_seen_by_another_user() {
    let ws = Workspace::new(V);
    swap_index(&ws);
    let out = ws
        .cmd()
        .env("XDG_STATE_HOME", ws.path("other-user-state"))
        .args(["controller", "--node", "1"])
        .output()
        .unwrap();
    assert_refused(&ws, &out, 4, &["was altered", APISERVER]);
}

/// A blob digest that is not hex (here a path) never becomes a path.
#[test]
fn non_hex_digest_in_index() {
    let ws = Workspace::new(V);
    edit_index(&ws, |v| {
        v["members"][APISERVER]["sha256"] = "../../../../../../etc/passwd".into()
    });
    build_refused(&ws, 4, &["not 64 lowercase hex digits"]);
}

/// An index whose pin is not the recipe's (nor its own name's).
#[test]
fn index_pin_not_the_recipes() {
    let ws = Workspace::new(V);
    edit_index(&ws, |v| {
        v["pin"] = format!("sha256:{}", "0".repeat(64)).into()
    });
    build_refused(&ws, 4, &["records the pin"]);
}

/// An index that is not JSON.
#[test]
fn index_not_an_index() {
    let ws = Workspace::new(V);
    let path = index_path(&ws);
    fs::remove_file(&path).unwrap();
    fs::write(&path, b"{ not json").unwrap();
    build_refused(&ws, 4, &["not an index"]);
}

/// The kept original rewritten: with no ledger record the build hashes it
/// against the recipe's pin and refuses.
#[test]
fn swapped_original() {
    let ws = Workspace::new(V);
    let original = ws
        .path("cache/artifacts/sha256")
        .join(&ws.cache_files("artifacts/sha256")[0]);
    flip(&original);
    let _ = fs::remove_dir_all(ws.path("xdg-state"));
    build_refused(&ws, 4, &["hashes to"]);
}

/// `cache verify` derives the members again from the kept original and
/// drops an index that names other blobs.
#[test]
fn cache_verify_finds_a_swapped_index() {
    let ws = Workspace::new(V);
    swap_index(&ws);
    let out = ws.run(&["cache", "verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(4), "{stdout}");
    assert!(
        stdout.contains("does not hold what its index says") && stdout.contains(APISERVER),
        "{stdout}"
    );
    // The swapped index is gone; etcd's, untouched, stays.
    assert_eq!(ws.cache_files("index").len(), 1);
    build_refused(&ws, 3, &["not in the cache"]);
}

/// A segment and its record rewritten together are not used: a build
/// makes the segment again and writes the same bytes as before.
#[test]
fn swapped_segment_is_made_again() {
    let ws = Workspace::new(V);
    ws.ok(&["controller", "--node", "1"]);
    let good = fs::read(ws.path("out/controller-1.tar.gz")).unwrap();
    for name in ws.cache_files("segments") {
        let path = ws.path("cache/segments").join(&name);
        if name.ends_with(".json") {
            continue;
        }
        // The attacker's bytes, and a record that matches them.
        let evil = vec![0x1f; fs::metadata(&path).unwrap().len() as usize];
        fs::remove_file(&path).unwrap();
        fs::write(&path, &evil).unwrap();
        let record_path = ws.path("cache/segments").join(format!("{name}.json"));
        let mut record: serde_json::Value =
            serde_json::from_slice(&fs::read(&record_path).unwrap()).unwrap();
        record["sha256"] = support::sha256_bytes(&evil).into();
        record["stamp"] = serde_json::Value::Null;
        fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();
    }
    fs::remove_dir_all(ws.path("out")).unwrap();
    ws.ok(&["controller", "--node", "1"]);
    assert!(fs::read(ws.path("out/controller-1.tar.gz")).unwrap() == good);
}

/// A recipe naming a member the cached index lacks: no panic; the member is
/// taken from the kept original when it is there, refused when it is not.
#[test]
fn recipe_names_a_member_the_index_lacks() {
    let ws = Workspace::new(V);
    let recipe = ws.path(&format!("recipes/kubernetes-{V}.toml"));
    let add = |path: &str| {
        let mut r: toml::Value = toml::from_str(&fs::read_to_string(&recipe).unwrap()).unwrap();
        let mut m = toml::map::Map::new();
        m.insert("path".into(), path.into());
        m.insert("install".into(), "usr/share/doc/kubernetes/LICENSES".into());
        m.insert("mode".into(), 0o644.into());
        r["artifacts"][0]["members"]
            .as_array_mut()
            .unwrap()
            .push(m.into());
        fs::write(&recipe, toml::to_string(&r).unwrap()).unwrap();
    };
    let original = fs::read_to_string(&recipe).unwrap();
    add("kubernetes/LICENSES");
    ws.ok(&["controller", "--node", "1", "--format", "dir"]);
    assert!(
        ws.path("out/controller-1/usr/share/doc/kubernetes/LICENSES")
            .is_file()
    );
    fs::write(&recipe, original).unwrap();
    add("kubernetes/not-in-the-tarball");
    build_refused(&ws, 4, &["lacks member", "kubernetes/not-in-the-tarball"]);
}

// ---------------------------------------------------------------- files given to cache import

/// A pinned gzip bomb: the digest matches, expansion is capped.
#[test]
fn pinned_gzip_bomb() {
    let ws = pinned(&gzip_bomb(APISERVER, 256 << 20));
    let peak = import_refused(&ws, &[], &["decompression bomb"]);
    assert!(peak < 80 << 20, "{peak} bytes in tmp at once");
}

/// A file over the artifact cap is refused by its size.
#[test]
fn import_over_the_cap() {
    let ws = Workspace::builder(V).not_imported().build();
    import_refused(
        &ws,
        &[("IMGBUILD_MAX_ARTIFACT_SIZE", "4K")],
        &["cap of 4 KiB"],
    );
}

/// A FIFO (or device) under a pinned name is refused, not read forever.
#[test]
fn import_a_fifo() {
    let ws = Workspace::builder(V).not_imported().build();
    let path = ws.path("kubernetes-server-linux-amd64.tar.gz");
    fs::remove_file(&path).unwrap();
    support::sh(std::process::Command::new("mkfifo").arg(&path));
    let mut cmd = ws.cmd();
    cmd.args(["cache", "import", "kubernetes-server-linux-amd64.tar.gz"]);
    let out = output_within(cmd, std::time::Duration::from_secs(30));
    assert_refused(&ws, &out, 2, &["not a regular file"]);
}

/// A pinned tarball of more entries than any release holds.
#[test]
fn too_many_entries() {
    let names: Vec<String> = (0..100_001).map(|i| format!("f/{i}")).collect();
    let entries: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let ws = pinned(&tarball_of(&entries));
    import_refused(&ws, &[], &["more than 100000 entries"]);
}

/// A pinned tarball holding a wanted member twice (tools disagree on which counts).
#[test]
fn duplicate_member() {
    let ws = pinned(&tarball_of(&[
        (APISERVER, b"first"),
        ("kubernetes/server/bin/kube-controller-manager", b"x"),
        ("kubernetes/server/bin/kube-scheduler", b"x"),
        ("kubernetes/server/bin/kubectl", b"x"),
        (APISERVER, b"second"),
    ]));
    import_refused(&ws, &[], &["appears twice", APISERVER]);
}

/// A cap that is not a size is refused, naming the variable.
#[test]
fn bad_cap_variable() {
    let ws = Workspace::builder(V).not_imported().build();
    let out = ws.run_with_env(
        &[("IMGBUILD_MAX_ARTIFACT_SIZE", "lots")],
        &["cache", "import", "kubernetes-server-linux-amd64.tar.gz"],
    );
    assert_refused(&ws, &out, 2, &["IMGBUILD_MAX_ARTIFACT_SIZE", "lots"]);
    ws.assert_cache_clean(true);
}

/// A recipe a writer of the cache drops into `<cache>/locks/` for a version
/// the build pins itself is never used: the built-in pins win, so the build
/// asks for the real release (exit 3) instead of taking the cached stand-ins.
#[test]
fn a_lock_in_the_cache_never_shadows_a_pinned_version() {
    let ws = Workspace::new(V);
    // The stand-ins are cached under the test recipe's pins; move that recipe
    // into the cache's locks, as a publisher-checksum lock.
    let recipe = fs::read_to_string(ws.path(&format!("recipes/kubernetes-{V}.toml"))).unwrap();
    fs::remove_dir_all(ws.path("recipes")).unwrap();
    fs::create_dir_all(ws.path("cache/locks")).unwrap();
    let lock = recipe.replace("trust = \"local\"", "trust = \"publisher-checksum\"");
    fs::write(ws.path(&format!("cache/locks/kubernetes-{V}.toml")), lock).unwrap();
    build_refused(&ws, 3, &["not in the cache", "350e48201e97"]);
}

/// A lock claiming `changelog` trust (only built-in recipes and --recipes
/// folders may) is refused, for a version nothing else pins.
#[test]
fn a_lock_claiming_changelog_trust_is_refused() {
    let ws = Workspace::new(V);
    let recipe = fs::read_to_string(ws.path(&format!("recipes/kubernetes-{V}.toml"))).unwrap();
    let other = "v1.10.99";
    let lock = recipe
        .replace(V, other)
        .replace("trust = \"local\"", "trust = \"changelog\"");
    fs::create_dir_all(ws.path("cache/locks")).unwrap();
    fs::write(
        ws.path(&format!("cache/locks/kubernetes-{other}.toml")),
        lock,
    )
    .unwrap();
    fs::write(
        ws.path("cluster.toml"),
        fs::read_to_string(ws.path("cluster.toml"))
            .unwrap()
            .replace(V, other),
    )
    .unwrap();
    build_refused(&ws, 2, &["claims trust \"changelog\"", "--recipes"]);
}
