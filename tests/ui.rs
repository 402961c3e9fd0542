//! Compile-fail and compile-pass tests of the macros' diagnostics (trybuild).
//! Regenerate the snapshots with `TRYBUILD=overwrite cargo test -p tchu --test ui` and review
//! the diff. Diagnostics drift between compilers, so they run on stable only.

#[rustversion::attr(not(stable), ignore = "diagnostics are snapshotted on stable")]
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("../tests/ui/event/pass/*.rs");
    t.pass("../tests/ui/subscribe/pass/*.rs");
    t.compile_fail("../tests/ui/event/fail/*.rs");
    t.compile_fail("../tests/ui/subscribe/fail/*.rs");
}
