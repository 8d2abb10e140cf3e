//! The fuzz targets' shared part: the harness (also compiled into the main
//! crate's `tests/fuzz_regressions.rs`) and the allocation cap.

pub mod harness;

#[global_allocator]
static ALLOC: harness::CappedAlloc = harness::CappedAlloc;
