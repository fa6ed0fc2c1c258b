//! A feature combination of atomsync-leptos that cannot work is a compile
//! error naming the fix: `src/features.rs` compiled alone with each
//! combination (it has no dependencies, so this takes a moment).
//!
//! The other misconfigurations are checked where they can be seen: leptos's
//! `ssr` without atomsync-leptos's by `scripts/test.sh` (a `cargo check`),
//! a missing `SyncService` in `tests/server_fns.rs`, and missing routes and
//! services in the browser by `tests/tests/misconfigured.rs` of the
//! atomsync-tests crate.

use std::path::Path;
use std::process::Command;

/// Compiles `src/features.rs` with `features` on; returns the compiler's
/// error output if it fails.
fn compile_with(features: &[&str]) -> Result<(), String> {
    let out = tempfile_dir();
    let mut rustc = Command::new(std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned()));
    rustc
        .args([
            "--edition",
            "2024",
            "--crate-type",
            "lib",
            "--emit",
            "metadata",
        ])
        .arg("--out-dir")
        .arg(&out)
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/features.rs"));
    for feature in features {
        rustc.args(["--cfg", &format!("feature=\"{feature}\"")]);
    }
    let output = rustc.output().expect("run rustc");
    let _ = std::fs::remove_dir_all(&out);
    if output.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

fn tempfile_dir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "atomsync-misconfig-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[test]
fn ssr_and_hydrate_together_are_a_compile_error_naming_the_fix() {
    let error = compile_with(&["ssr", "hydrate"]).expect_err("both features must not build");
    for part in [
        "the `ssr` and `hydrate` features are both on",
        r#"ssr = [\"leptos/ssr\", \"atomsync-leptos/ssr\""#,
        r#"hydrate = [\"leptos/hydrate\", \"atomsync-leptos/hydrate\""#,
        r#"bin-features = [\"ssr\"], lib-features = [\"hydrate\"]"#,
    ] {
        assert!(
            error.contains(&part.replace('\\', "")),
            "missing {part:?} in:\n{error}"
        );
    }
}

#[test]
fn each_feature_alone_and_none_compile() {
    for features in [&[][..], &["ssr"], &["hydrate"]] {
        compile_with(features).unwrap_or_else(|e| panic!("{features:?}: {e}"));
    }
}
