//! Test support for atomsync's cross-crate and browser tests: starting the
//! demo server and headless Chromium profiles, all on 127.0.0.1.

#![forbid(unsafe_code)]

pub mod browser;
