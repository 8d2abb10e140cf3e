//! Every input the fuzzers (`scripts/fuzz`, `fuzz/`) found a problem with,
//! run again through the same harness: `tests/fuzz_regressions/<target>/`
//! holds the reproducers, one file each, named after what they found. The
//! harness is the fuzz crate's own file, compiled in here; the fuzz crate
//! itself (libFuzzer) is never built by `cargo test`.
//!
//! A reproducer fails here as it did under the fuzzer: a panic (an assertion
//! of the harness included) fails the test; an allocation over the harness's
//! cap aborts the test binary, as it aborted the fuzzer.

#[path = "../fuzz/src/harness.rs"]
mod harness;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

#[global_allocator]
static ALLOC: harness::CappedAlloc = harness::CappedAlloc;

#[test]
fn every_reproducer_runs_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let cases = harness::reproducers(&root);
    assert!(!cases.is_empty(), "no reproducers under {}", root.display());
    let mut failed = Vec::new();
    for (target, path) in &cases {
        let data = std::fs::read(path).unwrap();
        if catch_unwind(AssertUnwindSafe(|| harness::run(target, &data))).is_err() {
            failed.push(format!("{target}: {}", path.display()));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} reproducer(s) fail (the panic of each is printed above):\n{}",
        failed.len(),
        cases.len(),
        failed.join("\n")
    );
}

/// Every folder is a target's, so no reproducer sits where nothing runs it.
#[test]
fn every_folder_is_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    for entry in std::fs::read_dir(&root).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            assert!(
                harness::TARGETS.iter().any(|(t, _)| *t == name),
                "tests/fuzz_regressions/{name}/ is no fuzz target's"
            );
        }
    }
}

/// The harness's checks have teeth: an error quoting a long run of its input
/// is caught, and one quoting a clipped value is not.
#[test]
fn the_echo_check_catches_long_quotes() {
    let input = "x".repeat(2000);
    let long = imgbuild::Error::input(format!("bad value {input:?}"));
    assert!(catch_unwind(|| harness::check_error(&long, input.as_bytes())).is_err());
    let clipped = imgbuild::Error::input(format!("bad value {:?}", imgbuild::error::clip(&input)));
    harness::check_error(&clipped, input.as_bytes());
}
