//! S-expressions as a serde data format, in the syntax of `lexpr`'s defaults.
//!
//! ## Usage
//!
//! ```
//! use std::collections::BTreeSet;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, Debug, PartialEq)]
//! struct Todo {
//!     title: String,
//!     done: bool,
//!     tags: BTreeSet<String>,
//!     estimate: Option<f64>,
//! }
//!
//! let todo = Todo {
//!     title: "write \"docs\"".into(),
//!     done: false,
//!     tags: ["docs".to_string()].into(),
//!     estimate: Some(1e-7),
//! };
//! let text = atomsync_core::sexpr::to_string(&todo)?;
//! assert_eq!(
//!     text,
//!     r#"((title . "write \"docs\"") (done . #f) (tags . #("docs")) (estimate . (1e-7)))"#
//! );
//! assert_eq!(atomsync_core::sexpr::from_str::<Todo>(&text)?, todo);
//! # Ok::<(), atomsync_core::sexpr::Error>(())
//! ```
//!
//! ## Representation
//!
//! | Rust (serde data model) | S-expression |
//! |---|---|
//! | `bool` | `#t`, `#f` |
//! | integers, including `i128`/`u128` | `42`, `-7` |
//! | `f32`/`f64` | shortest text that reads back to the same bits: `0.1`, `1e16`, `5e-324`, `-0.0`; `+nan.0`, `-nan.0`, `+inf.0`, `-inf.0` |
//! | `char` | `#\a`, `#\x1f600` (anything but printable ASCII as hex) |
//! | string | `"..."` with R6RS escapes (`\"`, `\\`, `\n`, `\t`, `\r`, `\xHEX;`) |
//! | bytes | `#u8(1 2 3)` |
//! | `()`, unit struct, `None` | `()` |
//! | `Some(x)` | `(x)` |
//! | newtype struct | the inner value |
//! | sequence, tuple, tuple struct | vector `#(a b c)` |
//! | map | association list `((key . value) ...)`, keys of any type |
//! | struct | association list with symbol keys `((field . value) ...)` |
//! | unit variant | symbol `Variant` |
//! | newtype variant | `(Variant . value)` |
//! | tuple variant | `(Variant a b)` |
//! | struct variant | `(Variant . ((field . value) ...))`, the same list as lexpr's `(Variant (field . value) ...)` with the dot kept so it is never mistaken for a tuple variant |
//!
//! Symbols that are not plain identifiers (field renames of any text) are
//! written `|like this|` with `\|`, `\\` and `\xHEX;` escapes.
//!
//! The reader also takes what `serde-lexpr` writes: lists for sequences,
//! `(key value ...)` for `(key . (value ...))`, `#nil`, `#true`/`#false`,
//! named characters (`#\space`), `;` and `#| |#` comments.
//!
//! ## Design
//!
//! Both directions stream: the serializer writes text as serde walks the value
//! and the deserializer reads tokens as serde asks for them, with no value
//! tree in between. `deserialize_any` (used by serde for untagged and
//! internally tagged enums and `flatten`) classifies lists by looking ahead
//! without recursion. Nesting is bounded by [`DEFAULT_MAX_DEPTH`] on both
//! sides, so hostile input is an error, never a stack overflow.

mod de;
mod error;
mod raw;
mod ser;

use serde::{Deserialize, Serialize};

pub use de::Deserializer;
pub use error::{Category, Error, Result};
pub use raw::Raw;
pub use ser::{Compound, Serializer};

/// The deepest nesting of lists and vectors accepted by default, when
/// encoding and decoding. Real documents stay far below it; it keeps the
/// recursion of serde well inside a 2 MiB thread stack.
pub const DEFAULT_MAX_DEPTH: usize = 256;

/// The deepest nesting of lists and vectors accepted in one document value:
/// by [`Raw::from_value`] and [`Raw::to_value`], and for a [`Raw`] inside a
/// message, counted from the value's own start (so the envelope around it
/// takes nothing from it). Enough for a chain of 300 nested structs with
/// optional children (three levels each); a value is skipped over without
/// recursion inside messages, and decoding one this deep into a Rust type
/// still fits a 2 MiB thread stack. Use [`Deserializer::with_max_depth`] and
/// [`Serializer::with_max_depth`] for other limits.
pub const VALUE_MAX_DEPTH: usize = 1024;

/// The newtype-struct name through which [`Raw`] talks to this format.
pub(crate) const RAW_TOKEN: &str = "$atomsync::sexpr::Raw";

/// Serializes `value` as canonical S-expression text.
pub fn to_string<T: ?Sized + Serialize>(value: &T) -> Result<String> {
    let bytes = to_vec(value)?;
    Ok(String::from_utf8(bytes).expect("the serializer writes UTF-8"))
}

/// Serializes `value` as canonical S-expression text, as bytes.
pub fn to_vec<T: ?Sized + Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(128);
    value.serialize(&mut Serializer::new(&mut out))?;
    Ok(out)
}

/// Deserializes one value from S-expression text; only whitespace and
/// comments may follow it.
pub fn from_str<'a, T: Deserialize<'a>>(s: &'a str) -> Result<T> {
    from_deserializer(Deserializer::from_str(s))
}

/// Deserializes one value from UTF-8 S-expression bytes; only whitespace and
/// comments may follow it.
pub fn from_slice<'a, T: Deserialize<'a>>(v: &'a [u8]) -> Result<T> {
    from_deserializer(Deserializer::from_slice(v)?)
}

fn from_deserializer<'a, T: Deserialize<'a>>(mut de: Deserializer<'a>) -> Result<T> {
    let value = T::deserialize(&mut de).map_err(|e| de.err(e))?;
    de.end()?;
    Ok(value)
}
