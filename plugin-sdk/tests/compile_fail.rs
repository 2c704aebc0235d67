//! Misuse of the SDK's attributes is a compile error with a clear message,
//! pointing at the offending code (never a macro panic).

#[test]
fn macro_misuse_is_a_clear_compile_error() {
    let t = trybuild::TestCases::new();
    t.compile_fail("tests/ui/*.rs");
}
