//! Fuzz target `member_header`: the input goes to
//! `protocol/tests/fuzz_regressions/member_header.rs`, which states and checks the properties
//! (shared with the regression tests CI runs).

#![no_main]

#[path = "../../protocol/tests/fuzz_regressions/member_header.rs"]
mod property;

libfuzzer_sys::fuzz_target!(|data: &[u8]| property::check(data));
