//! The README's code is the code that is built: every Rust block of
//! README.md is marked `<!-- check: PATH -->` (a whole file) or
//! `<!-- check: PATH#NAME -->` (the lines between `// ANCHOR: NAME` and
//! `// ANCHOR_END: NAME`, dedented) and must equal it. The files are built
//! and run by the test command (examples/starter by `cargo leptos build` and
//! `tests/starter.rs`), so a snippet that stops compiling fails there, and
//! one that drifts fails here.

use std::path::Path;

use atomsync_tests::browser::workspace_root;

/// A fenced block of the README with its check marker, if any.
struct Block {
    line: usize,
    lang: String,
    check: Option<String>,
    text: String,
}

fn blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if let Some(lang) = lines[i].strip_prefix("```") {
            let check = i
                .checked_sub(1)
                .and_then(|p| lines[p].strip_prefix("<!-- check: "))
                .and_then(|m| m.strip_suffix(" -->"))
                .map(str::to_owned);
            let start = i + 1;
            let mut end = start;
            while end < lines.len() && lines[end] != "```" {
                end += 1;
            }
            assert!(end < lines.len(), "README line {i}: unclosed code block");
            blocks.push(Block {
                line: i + 1,
                lang: lang.to_owned(),
                check,
                text: lines[start..end].join("\n"),
            });
            i = end + 1;
        } else {
            i += 1;
        }
    }
    blocks
}

/// The text a marker names: a whole file, or an anchored region of it.
fn source(root: &Path, check: &str) -> String {
    let (path, anchor) = match check.split_once('#') {
        Some((path, anchor)) => (path, Some(anchor)),
        None => (check, None),
    };
    let text = std::fs::read_to_string(root.join(path))
        .unwrap_or_else(|e| panic!("README names {path}: {e}"));
    let Some(anchor) = anchor else {
        return text.trim_end_matches('\n').to_owned();
    };
    let lines: Vec<&str> = text.lines().collect();
    let find = |marker: String| {
        lines
            .iter()
            .position(|l| l.trim() == marker)
            .unwrap_or_else(|| panic!("{path} has no `{marker}`"))
    };
    let start = find(format!("// ANCHOR: {anchor}")) + 1;
    let end = find(format!("// ANCHOR_END: {anchor}"));
    let region = &lines[start..end];
    let indent = region
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    region
        .iter()
        .map(|l| l.get(indent..).unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn the_readmes_code_is_the_code_that_is_built() {
    let root = workspace_root();
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let blocks = blocks(&readme);
    let mut checked = Vec::new();
    for block in &blocks {
        let Some(check) = &block.check else {
            assert_ne!(
                block.lang, "rust",
                "README line {}: a Rust block without `<!-- check: PATH[#ANCHOR] -->`",
                block.line
            );
            continue;
        };
        let expected = source(&root, check);
        if block.text != expected {
            let first = block
                .text
                .lines()
                .zip(expected.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| block.text.lines().count().min(expected.lines().count()));
            panic!(
                "README line {}: the block differs from {check} at its line {}:\n  README: {:?}\n  file:   {:?}",
                block.line,
                first + 1,
                block.text.lines().nth(first),
                expected.lines().nth(first),
            );
        }
        checked.push(check.as_str());
    }
    // The whole starter app is printed, so it can be copied from the README.
    for file in [
        "examples/starter/Cargo.toml",
        "examples/starter/src/lib.rs",
        "examples/starter/src/main.rs",
        "examples/starter/src/app.rs",
    ] {
        assert!(
            checked.contains(&file),
            "the README does not print {file} whole"
        );
    }
}

#[test]
fn a_changed_line_is_caught() {
    // The check itself can fail: a README whose block differs by one line.
    let root = workspace_root();
    let lib = source(&root, "examples/starter/src/lib.rs");
    let readme = format!(
        "<!-- check: examples/starter/src/lib.rs -->\n```rust\n{}\n```\n",
        lib.replace("hydrate_body", "mount_to_body")
    );
    let block = &blocks(&readme)[0];
    assert_ne!(block.text, lib);
    assert_eq!(block.check.as_deref(), Some("examples/starter/src/lib.rs"));
}
