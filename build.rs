// Recipes and overlays are embedded with include_dir!; rebuild when any of them changes.
fn main() {
    println!("cargo:rerun-if-changed=recipes");
    println!("cargo:rerun-if-changed=overlays");
    // zstd-sys links the system libzstd instead of the bundled, pinned one
    // when this is set (even with its `vendored` feature): zstd outputs would
    // then differ from machine to machine. codec::zstd checks at run time too.
    println!("cargo:rerun-if-env-changed=ZSTD_SYS_USE_PKG_CONFIG");
    if std::env::var_os("ZSTD_SYS_USE_PKG_CONFIG").is_some() {
        println!(
            "cargo::error=ZSTD_SYS_USE_PKG_CONFIG is set: imgbuild must link the libzstd zstd-sys \
             bundles (pinned in Cargo.lock), not the system's. Unset it and build again."
        );
    }
}
