//! The `SExpr` encoding for Leptos server functions.
//!
//! ## Usage
//!
//! ```ignore
//! use atomsync_leptos::SExpr;
//! use leptos::prelude::*;
//!
//! #[server(input = SExpr, output = SExpr)]
//! pub async fn rename(id: u64, name: String) -> Result<Option<String>, ServerFnError> {
//!     Ok(Some(name))
//! }
//! ```
//!
//! Arguments and results travel as S-expressions in the body of a `POST`
//! request with content type [`atomsync_core::protocol::CONTENT_TYPE`],
//! keeping every Rust type exact (see [`atomsync_core::sexpr`]).

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use server_fn::codec::Post;
use server_fn::{ContentType, Decodes, Encodes, Format, FormatType};

use atomsync_core::protocol::CONTENT_TYPE;
use atomsync_core::sexpr;

/// Encodes server-function arguments and results as S-expressions.
///
/// Implements [`ContentType`], [`FormatType`], [`Encodes`] and [`Decodes`];
/// use it through [`SExpr`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SExprEncoding;

/// Pass arguments and receive results as S-expressions in the body of a
/// `POST` request: `#[server(input = SExpr, output = SExpr)]`.
pub type SExpr = Post<SExprEncoding>;

impl ContentType for SExprEncoding {
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
}

impl FormatType for SExprEncoding {
    const FORMAT_TYPE: Format = Format::Text;
}

impl<T: Serialize> Encodes<T> for SExprEncoding {
    type Error = sexpr::Error;

    fn encode(output: &T) -> Result<Bytes, Self::Error> {
        sexpr::to_vec(output).map(Bytes::from)
    }
}

impl<T: DeserializeOwned> Decodes<T> for SExprEncoding {
    type Error = sexpr::Error;

    fn decode(bytes: Bytes) -> Result<T, Self::Error> {
        sexpr::from_slice(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct Args {
        id: u128,
        tags: BTreeSet<String>,
        ratio: f64,
        maybe: Option<Option<i8>>,
    }

    #[test]
    fn encodes_and_decodes_through_the_server_fn_traits() {
        let args = Args {
            id: u128::MAX,
            tags: ["a".to_owned(), "b c".to_owned()].into(),
            ratio: 5e-324,
            maybe: Some(None),
        };
        let bytes = <SExprEncoding as Encodes<Args>>::encode(&args).unwrap();
        assert_eq!(
            std::str::from_utf8(&bytes).unwrap(),
            "((id . 340282366920938463463374607431768211455) (tags . #(\"a\" \"b c\")) \
             (ratio . 5e-324) (maybe . (())))"
        );
        let back: Args = <SExprEncoding as Decodes<Args>>::decode(bytes).unwrap();
        assert_eq!(back, args);
        assert_eq!(<SExpr as ContentType>::CONTENT_TYPE, CONTENT_TYPE);
        assert!(matches!(SExprEncoding::FORMAT_TYPE, Format::Text));
    }

    #[test]
    fn bad_bodies_are_errors_with_positions() {
        let err =
            <SExprEncoding as Decodes<Args>>::decode(Bytes::from_static(b"((id . 1)")).unwrap_err();
        assert!(err.to_string().contains("end of input"), "{err}");
    }
}
