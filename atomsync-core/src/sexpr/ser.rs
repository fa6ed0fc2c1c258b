//! The streaming serializer: Rust values to canonical S-expression text.

use serde::ser::{self, Impossible, Serialize};

use super::error::{Category, Error, Result};
use super::{DEFAULT_MAX_DEPTH, RAW_TOKEN};

/// Writes S-expressions for any [`Serialize`] value into a byte buffer.
///
/// The output is canonical: the same value always gives the same bytes
/// (as long as the value's own iteration order is stable, e.g. `BTreeMap`).
pub struct Serializer<'w> {
    out: &'w mut Vec<u8>,
    depth: usize,
    max_depth: usize,
}

impl<'w> Serializer<'w> {
    /// A serializer appending to `out`, with the default depth limit.
    pub fn new(out: &'w mut Vec<u8>) -> Self {
        Serializer {
            out,
            depth: 0,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }

    /// Sets the deepest nesting the serializer accepts; deeper values are an error,
    /// so nothing is written that the decoder would refuse.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(Error::new(
                Category::Depth,
                format!("value nested deeper than {} levels", self.max_depth),
            ));
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn open(&mut self, token: &[u8]) -> Result<()> {
        self.enter()?;
        self.out.extend_from_slice(token);
        Ok(())
    }

    fn close(&mut self) {
        self.leave();
        self.out.push(b')');
    }
}

/// For each byte: 0 = copy, 1 = `\xHEX;`, otherwise the letter after `\`.
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        table[i] = 1;
        i += 1;
    }
    table[0x7f] = 1;
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table[b'\n' as usize] = b'n';
    table[b'\t' as usize] = b't';
    table[b'\r' as usize] = b'r';
    table
};

/// Writes `s` as a string literal with R6RS escapes.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        if escape == 1 {
            write_hex_escape(out, u32::from(b));
        } else {
            out.extend_from_slice(&[b'\\', escape]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

fn write_hex_escape(out: &mut Vec<u8>, code: u32) {
    out.extend_from_slice(format!("\\x{code:x};").as_bytes());
}

/// Whether `name` can be written as a bare symbol that every reader takes back
/// as the same symbol (not as a number, a dot or `#` syntax).
pub(crate) fn is_plain_symbol(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(&first) => {
            SYMBOL[first as usize] == 2 && bytes[1..].iter().all(|&b| SYMBOL[b as usize] != 0)
        }
        None => false,
    }
}

/// For each byte: 2 = may start a plain symbol, 1 = may follow, 0 = needs `|...|`.
static SYMBOL: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        if c.is_ascii_alphabetic() {
            table[b] = 2;
        } else if c.is_ascii_digit() {
            table[b] = 1;
        }
        b += 1;
    }
    let initials = b"!$%&*/:<=>?^_~";
    let mut i = 0;
    while i < initials.len() {
        table[initials[i] as usize] = 2;
        i += 1;
    }
    let subsequents = b"+-.@";
    let mut i = 0;
    while i < subsequents.len() {
        table[subsequents[i] as usize] = 1;
        i += 1;
    }
    table
};

/// Writes a symbol: bare when plain, otherwise as `|...|` with escapes.
pub(crate) fn write_symbol(out: &mut Vec<u8>, name: &str) {
    if is_plain_symbol(name) {
        out.extend_from_slice(name.as_bytes());
        return;
    }
    out.push(b'|');
    for c in name.chars() {
        match c {
            '|' => out.extend_from_slice(b"\\|"),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if c.is_control() => write_hex_escape(out, u32::from(c)),
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'|');
}

fn write_f64(out: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        out.extend_from_slice(if v.is_sign_negative() {
            b"-nan.0"
        } else {
            b"+nan.0"
        });
    } else if v.is_infinite() {
        out.extend_from_slice(if v > 0.0 { b"+inf.0" } else { b"-inf.0" });
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    }
}

fn write_f32(out: &mut Vec<u8>, v: f32) {
    if v.is_nan() || v.is_infinite() {
        write_f64(out, f64::from(v));
    } else {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    }
}

macro_rules! serialize_integer {
    ($($method:ident: $ty:ty),*) => {$(
        fn $method(self, v: $ty) -> Result<()> {
            self.out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
            Ok(())
        }
    )*};
}

impl<'a, 'w> ser::Serializer for &'a mut Serializer<'w> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Compound<'a, 'w>;
    type SerializeTuple = Compound<'a, 'w>;
    type SerializeTupleStruct = Compound<'a, 'w>;
    type SerializeTupleVariant = Compound<'a, 'w>;
    type SerializeMap = Compound<'a, 'w>;
    type SerializeStruct = Compound<'a, 'w>;
    type SerializeStructVariant = Compound<'a, 'w>;

    fn serialize_bool(self, v: bool) -> Result<()> {
        self.out.extend_from_slice(if v { b"#t" } else { b"#f" });
        Ok(())
    }

    serialize_integer!(
        serialize_i8: i8, serialize_i16: i16, serialize_i32: i32, serialize_i64: i64,
        serialize_i128: i128, serialize_u8: u8, serialize_u16: u16, serialize_u32: u32,
        serialize_u64: u64, serialize_u128: u128
    );

    fn serialize_f32(self, v: f32) -> Result<()> {
        write_f32(self.out, v);
        Ok(())
    }

    fn serialize_f64(self, v: f64) -> Result<()> {
        write_f64(self.out, v);
        Ok(())
    }

    fn serialize_char(self, c: char) -> Result<()> {
        self.out.extend_from_slice(b"#\\");
        if c.is_ascii_graphic() {
            self.out.push(c as u8);
        } else {
            self.out
                .extend_from_slice(format!("x{:x}", u32::from(c)).as_bytes());
        }
        Ok(())
    }

    fn serialize_str(self, v: &str) -> Result<()> {
        write_str(self.out, v);
        Ok(())
    }

    fn serialize_bytes(self, v: &[u8]) -> Result<()> {
        self.out.extend_from_slice(b"#u8(");
        let mut buf = itoa::Buffer::new();
        for (i, b) in v.iter().enumerate() {
            if i > 0 {
                self.out.push(b' ');
            }
            self.out.extend_from_slice(buf.format(*b).as_bytes());
        }
        self.out.push(b')');
        Ok(())
    }

    fn serialize_none(self) -> Result<()> {
        self.out.extend_from_slice(b"()");
        Ok(())
    }

    fn serialize_some<T: ?Sized + Serialize>(self, value: &T) -> Result<()> {
        self.open(b"(")?;
        value.serialize(&mut *self)?;
        self.close();
        Ok(())
    }

    fn serialize_unit(self) -> Result<()> {
        self.out.extend_from_slice(b"()");
        Ok(())
    }

    fn serialize_unit_struct(self, _name: &'static str) -> Result<()> {
        self.serialize_unit()
    }

    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<()> {
        write_symbol(self.out, variant);
        Ok(())
    }

    fn serialize_newtype_struct<T: ?Sized + Serialize>(
        self,
        name: &'static str,
        value: &T,
    ) -> Result<()> {
        if name == RAW_TOKEN {
            return value.serialize(RawEmitter { out: self.out });
        }
        value.serialize(self)
    }

    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<()> {
        self.open(b"(")?;
        write_symbol(self.out, variant);
        self.out.extend_from_slice(b" . ");
        value.serialize(&mut *self)?;
        self.close();
        Ok(())
    }

    fn serialize_seq(self, _len: Option<usize>) -> Result<Compound<'a, 'w>> {
        self.open(b"#(")?;
        Ok(Compound {
            ser: self,
            first: true,
        })
    }

    fn serialize_tuple(self, len: usize) -> Result<Compound<'a, 'w>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a, 'w>> {
        self.serialize_seq(Some(len))
    }

    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'w>> {
        self.open(b"(")?;
        write_symbol(self.out, variant);
        Ok(Compound {
            ser: self,
            first: false,
        })
    }

    fn serialize_map(self, _len: Option<usize>) -> Result<Compound<'a, 'w>> {
        self.open(b"(")?;
        Ok(Compound {
            ser: self,
            first: true,
        })
    }

    fn serialize_struct(self, _name: &'static str, len: usize) -> Result<Compound<'a, 'w>> {
        self.serialize_map(Some(len))
    }

    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        _len: usize,
    ) -> Result<Compound<'a, 'w>> {
        // `(Variant . ((field . value) ...))`: the same list as lexpr's
        // `(Variant (field . value) ...)`, but the explicit dot tells it apart
        // from a tuple variant whose elements are pairs.
        self.open(b"(")?;
        write_symbol(self.out, variant);
        self.out.extend_from_slice(b" . ");
        self.open(b"(")?;
        Ok(Compound {
            ser: self,
            first: true,
        })
    }
}

/// The state of a list, vector, map or struct being written.
pub struct Compound<'a, 'w> {
    ser: &'a mut Serializer<'w>,
    first: bool,
}

impl Compound<'_, '_> {
    fn separator(&mut self) {
        if self.first {
            self.first = false;
        } else {
            self.ser.out.push(b' ');
        }
    }

    fn element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        self.separator();
        value.serialize(&mut *self.ser)
    }

    fn field<T: ?Sized + Serialize>(&mut self, key: &'static str, value: &T) -> Result<()> {
        self.separator();
        self.ser.enter()?;
        self.ser.out.push(b'(');
        write_symbol(self.ser.out, key);
        self.ser.out.extend_from_slice(b" . ");
        value.serialize(&mut *self.ser)?;
        self.ser.close();
        Ok(())
    }

    fn finish(self) -> Result<()> {
        self.ser.close();
        Ok(())
    }
}

impl ser::SerializeSeq for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTuple for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_element<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeTupleVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        self.element(value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeMap for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_key<T: ?Sized + Serialize>(&mut self, key: &T) -> Result<()> {
        self.separator();
        self.ser.enter()?;
        self.ser.out.push(b'(');
        key.serialize(&mut *self.ser)
    }
    fn serialize_value<T: ?Sized + Serialize>(&mut self, value: &T) -> Result<()> {
        self.ser.out.extend_from_slice(b" . ");
        value.serialize(&mut *self.ser)?;
        self.ser.close();
        Ok(())
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStruct for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.field(key, value)
    }
    fn end(self) -> Result<()> {
        self.finish()
    }
}

impl ser::SerializeStructVariant for Compound<'_, '_> {
    type Ok = ();
    type Error = Error;
    fn serialize_field<T: ?Sized + Serialize>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<()> {
        self.field(key, value)
    }
    fn end(self) -> Result<()> {
        self.ser.close();
        self.finish()
    }
}

/// Writes the already validated text of a [`Raw`](super::Raw) verbatim.
struct RawEmitter<'w> {
    out: &'w mut Vec<u8>,
}

fn not_raw() -> Error {
    Error::new(
        Category::Data,
        "a raw S-expression must be serialized from its text",
    )
}

macro_rules! reject {
    ($($method:ident($($arg:ty),*)),*) => {$(
        fn $method(self, $(_: $arg),*) -> Result<()> { Err(not_raw()) }
    )*};
}

impl ser::Serializer for RawEmitter<'_> {
    type Ok = ();
    type Error = Error;
    type SerializeSeq = Impossible<(), Error>;
    type SerializeTuple = Impossible<(), Error>;
    type SerializeTupleStruct = Impossible<(), Error>;
    type SerializeTupleVariant = Impossible<(), Error>;
    type SerializeMap = Impossible<(), Error>;
    type SerializeStruct = Impossible<(), Error>;
    type SerializeStructVariant = Impossible<(), Error>;

    fn serialize_str(self, v: &str) -> Result<()> {
        self.out.extend_from_slice(v.as_bytes());
        Ok(())
    }

    reject!(
        serialize_bool(bool),
        serialize_i8(i8),
        serialize_i16(i16),
        serialize_i32(i32),
        serialize_i64(i64),
        serialize_u8(u8),
        serialize_u16(u16),
        serialize_u32(u32),
        serialize_u64(u64),
        serialize_f32(f32),
        serialize_f64(f64),
        serialize_char(char),
        serialize_bytes(&[u8]),
        serialize_none(),
        serialize_unit(),
        serialize_unit_struct(&'static str),
        serialize_unit_variant(&'static str, u32, &'static str)
    );

    fn serialize_some<T: ?Sized + Serialize>(self, _: &T) -> Result<()> {
        Err(not_raw())
    }
    fn serialize_newtype_struct<T: ?Sized + Serialize>(self, _: &'static str, _: &T) -> Result<()> {
        Err(not_raw())
    }
    fn serialize_newtype_variant<T: ?Sized + Serialize>(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: &T,
    ) -> Result<()> {
        Err(not_raw())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self::SerializeSeq> {
        Err(not_raw())
    }
    fn serialize_tuple(self, _: usize) -> Result<Self::SerializeTuple> {
        Err(not_raw())
    }
    fn serialize_tuple_struct(
        self,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleStruct> {
        Err(not_raw())
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeTupleVariant> {
        Err(not_raw())
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self::SerializeMap> {
        Err(not_raw())
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self::SerializeStruct> {
        Err(not_raw())
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        _: &'static str,
        _: usize,
    ) -> Result<Self::SerializeStructVariant> {
        Err(not_raw())
    }
}
