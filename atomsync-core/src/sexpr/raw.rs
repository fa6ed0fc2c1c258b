//! [`Raw`]: one S-expression kept as text.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, Visitor};
use serde::ser::{Serialize, Serializer};

use super::{Deserializer as SexprDeserializer, RAW_TOKEN, Result, VALUE_MAX_DEPTH};

/// One well-formed S-expression datum, kept as text.
///
/// It lets a message carry an application value without knowing its type: the
/// server stores and forwards document values as `Raw`, and only the clients
/// decode them into their own types. Inside an S-expression message it is
/// written inline (not as a string); in other formats it is a string.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Raw(String);

impl Raw {
    /// Encodes `value` as a datum, nested at most [`VALUE_MAX_DEPTH`] deep.
    pub fn from_value<T: ?Sized + Serialize>(value: &T) -> Result<Self> {
        let mut out = Vec::with_capacity(128);
        value.serialize(&mut super::Serializer::new(&mut out).with_max_depth(VALUE_MAX_DEPTH))?;
        Ok(Raw(
            String::from_utf8(out).expect("the serializer writes UTF-8")
        ))
    }

    /// Checks that `text` is exactly one datum (nested at most
    /// [`VALUE_MAX_DEPTH`] deep) and keeps it with canonical spacing.
    pub fn from_text(text: &str) -> Result<Self> {
        super::from_str::<Raw>(text)
    }

    /// Keeps `text` without checking it, for text known to be a datum: what
    /// [`Raw::as_str`] gave before (stored by a server and read back, say).
    /// Nothing unsafe follows from other text, but messages carrying it are
    /// malformed.
    pub fn from_trusted(text: String) -> Self {
        Raw(text)
    }

    /// Decodes the datum into a Rust value (nested at most
    /// [`VALUE_MAX_DEPTH`] deep).
    pub fn to_value<'a, T: Deserialize<'a>>(&'a self) -> Result<T> {
        let mut de = SexprDeserializer::from_str(&self.0).with_max_depth(VALUE_MAX_DEPTH);
        let value = T::deserialize(&mut de).map_err(|e| de.err(e))?;
        de.end()?;
        Ok(value)
    }

    /// The datum's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The datum's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Debug for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Raw({})", self.0)
    }
}

impl fmt::Display for Raw {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Raw {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_newtype_struct(RAW_TOKEN, self.0.as_str())
    }
}

impl<'de> Deserialize<'de> for Raw {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;
        impl<'de> Visitor<'de> for RawVisitor {
            type Value = Raw;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an S-expression")
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<Raw, E> {
                // Only this crate's deserializer takes this path, with text it
                // has just validated and re-spaced.
                String::from_utf8(v).map(Raw).map_err(E::custom)
            }
            fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Raw, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Raw::from_text(&text).map_err(de::Error::custom)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Raw, E> {
                // From another format: the text still has to be one datum.
                Raw::from_text(v).map_err(E::custom)
            }
        }
        deserializer.deserialize_newtype_struct(RAW_TOKEN, RawVisitor)
    }
}
