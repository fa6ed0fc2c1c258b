//! Fuzzes the S-expression decoder: no input may panic, hang or overflow the
//! stack, and whatever decodes re-encodes to text that decodes the same.
//!
//! Run: `cargo install cargo-fuzz && cargo +nightly fuzz run decode` in `fuzz/`
//! (cargo-fuzz needs a nightly toolchain for its sanitizers); `cargo build` in
//! `fuzz/` checks that the target builds on stable.

#![no_main]

use atomsync_core::sexpr::{self, Raw};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = sexpr::from_slice::<serde_json::Value>(data) {
        let text = sexpr::to_string(&value).expect("a decoded value encodes");
        let again: serde_json::Value = sexpr::from_str(&text).expect("encoded text decodes");
        assert_eq!(
            sexpr::to_string(&again).expect("encodes"),
            text,
            "canonical output is stable"
        );
    }
    let _ = sexpr::from_slice::<serde::de::IgnoredAny>(data);
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(raw) = Raw::from_text(text) {
            let again = Raw::from_text(raw.as_str()).expect("canonical raw text re-reads");
            assert_eq!(again, raw);
        }
    }
});
