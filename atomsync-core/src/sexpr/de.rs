//! The streaming deserializer: S-expression text to Rust values, without an
//! intermediate value tree.

use serde::de::{self, DeserializeSeed, Visitor};

use super::error::{Category, Error, Result};
use super::{DEFAULT_MAX_DEPTH, RAW_TOKEN};

/// Reads one S-expression from text into any [`Deserialize`](serde::Deserialize) type.
pub struct Deserializer<'de> {
    text: &'de str,
    input: &'de [u8],
    pos: usize,
    depth: usize,
    max_depth: usize,
    /// Set when the `(` of the next list was elided, as in `(key v1 v2)`,
    /// the written form of `(key . (v1 v2))`.
    implicit_open: bool,
    scratch: Vec<u8>,
}

/// What the next datum starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lead {
    Eof,
    Open,
    Close,
    Vector,
    Bytes,
    Str,
    Hash,
    Dot,
    QuotedSymbol,
    Atom,
}

/// Bytes that end an atom.
static DELIMITER: [bool; 256] = {
    let mut table = [false; 256];
    let delimiters = b" \t\n\r\x0c()\";|[]";
    let mut i = 0;
    while i < delimiters.len() {
        table[delimiters[i] as usize] = true;
        i += 1;
    }
    table
};

/// Bytes that start whitespace or a line comment.
static SPACE_OR_COMMENT: [bool; 256] = {
    let mut table = [false; 256];
    let bytes = b" \t\n\r\x0c;";
    let mut i = 0;
    while i < bytes.len() {
        table[bytes[i] as usize] = true;
        i += 1;
    }
    table
};

#[inline]
fn is_delimiter(b: u8) -> bool {
    DELIMITER[b as usize]
}

fn syntax(msg: impl Into<String>) -> Error {
    Error::new(Category::Syntax, msg)
}

fn eof() -> Error {
    Error::new(Category::Eof, "unexpected end of input")
}

/// A number as written, classified.
enum Number {
    Int(i128),
    UInt(u128),
    Float(f64),
    /// Looks like a number but is not one (or is out of every integer range).
    Invalid,
}

impl<'de> Deserializer<'de> {
    /// A deserializer over `input`, with the default depth limit.
    #[allow(clippy::should_implement_trait)]
    pub fn from_str(input: &'de str) -> Self {
        Deserializer {
            text: input,
            input: input.as_bytes(),
            pos: 0,
            depth: 0,
            max_depth: DEFAULT_MAX_DEPTH,
            implicit_open: false,
            scratch: Vec::new(),
        }
    }

    /// A deserializer over bytes that must be UTF-8.
    pub fn from_slice(input: &'de [u8]) -> Result<Self> {
        match std::str::from_utf8(input) {
            Ok(s) => Ok(Self::from_str(s)),
            Err(e) => Err(syntax("invalid UTF-8").at(input, e.valid_up_to())),
        }
    }

    /// Sets the deepest nesting accepted; deeper input is a [`Category::Depth`] error.
    pub fn with_max_depth(mut self, max_depth: usize) -> Self {
        self.max_depth = max_depth;
        self
    }

    /// Checks that only whitespace and comments remain.
    pub fn end(&mut self) -> Result<()> {
        self.skip_ws()?;
        if self.pos < self.input.len() {
            return Err(self.err(syntax("trailing characters after the value")));
        }
        Ok(())
    }

    /// Attaches the current position to an error.
    pub(crate) fn err(&self, e: Error) -> Error {
        e.at(self.input, self.pos)
    }

    // ---------------------------------------------------------------- lexing

    fn skip_ws(&mut self) -> Result<()> {
        loop {
            match self.input.get(self.pos) {
                Some(b' ' | b'\t' | b'\n' | b'\r' | 0x0c) => self.pos += 1,
                Some(b';') => {
                    while let Some(&b) = self.input.get(self.pos) {
                        self.pos += 1;
                        if b == b'\n' {
                            break;
                        }
                    }
                }
                Some(b'#') if self.input.get(self.pos + 1) == Some(&b'|') => {
                    let start = self.pos;
                    self.pos += 2;
                    loop {
                        match self.input.get(self.pos) {
                            None => {
                                self.pos = start;
                                return Err(self.err(syntax("unterminated block comment")));
                            }
                            Some(b'|') if self.input.get(self.pos + 1) == Some(&b'#') => {
                                self.pos += 2;
                                break;
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    #[inline]
    fn lead(&mut self) -> Result<Lead> {
        if self.implicit_open {
            return Ok(Lead::Open);
        }
        let b = match self.input.get(self.pos) {
            Some(&b) if !SPACE_OR_COMMENT[b as usize] => b,
            _ => {
                self.skip_ws()?;
                match self.input.get(self.pos) {
                    Some(&b) => b,
                    None => return Ok(Lead::Eof),
                }
            }
        };
        Ok(match b {
            b'(' | b'[' => Lead::Open,
            b')' | b']' => Lead::Close,
            b'"' => Lead::Str,
            b'|' => Lead::QuotedSymbol,
            b'#' => match self.input.get(self.pos + 1) {
                Some(b'(') => Lead::Vector,
                Some(b'u') if self.input[self.pos..].starts_with(b"#u8(") => Lead::Bytes,
                Some(b'|') => {
                    // A block comment.
                    self.skip_ws()?;
                    return self.lead();
                }
                _ => Lead::Hash,
            },
            b'.' if self
                .input
                .get(self.pos + 1)
                .is_none_or(|&n| is_delimiter(n)) =>
            {
                Lead::Dot
            }
            _ => Lead::Atom,
        })
    }

    #[inline]
    fn enter(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > self.max_depth {
            return Err(self.err(Error::new(
                Category::Depth,
                format!("nesting deeper than {} levels", self.max_depth),
            )));
        }
        Ok(())
    }

    #[inline]
    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// Consumes the opening of a list (or takes the elided one).
    #[inline]
    fn open_list(&mut self) -> Result<()> {
        match self.lead()? {
            Lead::Open => {
                if self.implicit_open {
                    self.implicit_open = false;
                } else {
                    self.pos += 1;
                }
                self.enter()
            }
            _ => Err(self.unexpected("a list")),
        }
    }

    #[inline]
    fn close_list(&mut self) -> Result<()> {
        match self.lead()? {
            Lead::Close => {
                self.pos += 1;
                self.leave();
                Ok(())
            }
            Lead::Eof => Err(self.err(eof())),
            _ => Err(self.unexpected("`)`")),
        }
    }

    fn unexpected(&mut self, expected: &str) -> Error {
        let found = match self.lead() {
            Ok(Lead::Eof) => return self.err(eof()),
            Ok(Lead::Open) => "a list",
            Ok(Lead::Close) => "`)`",
            Ok(Lead::Vector) => "a vector",
            Ok(Lead::Bytes) => "a byte vector",
            Ok(Lead::Str) => "a string",
            Ok(Lead::Dot) => "`.`",
            Ok(Lead::QuotedSymbol) => "a symbol",
            Ok(Lead::Hash) => "`#` syntax",
            Ok(Lead::Atom) => "an atom",
            Err(e) => return e,
        };
        self.err(Error::new(
            Category::Data,
            format!("expected {expected}, found {found}"),
        ))
    }

    /// The input text between two byte offsets that lie on ASCII delimiters.
    fn slice(&self, start: usize, end: usize) -> Result<&'de str> {
        match self.text.get(start..end) {
            Some(s) => Ok(s),
            None => Err(self.err(syntax("token does not end on a character boundary"))),
        }
    }

    /// The bytes of the atom at the cursor (up to a delimiter), consumed.
    #[inline]
    fn atom(&mut self) -> &'de [u8] {
        let start = self.pos;
        while let Some(&b) = self.input.get(self.pos) {
            if is_delimiter(b) {
                break;
            }
            self.pos += 1;
        }
        &self.input[start..self.pos]
    }

    fn parse_number(&mut self) -> Result<Number> {
        let start = self.pos;
        let text = self.atom();
        match classify_number(text) {
            Some(Number::Invalid) | None => {
                self.pos = start;
                Err(self.err(Error::new(
                    Category::Data,
                    format!(
                        "invalid or out-of-range number `{}`",
                        String::from_utf8_lossy(&text[..text.len().min(40)])
                    ),
                )))
            }
            Some(n) => Ok(n),
        }
    }

    /// Parses a string literal into `scratch` unless it has no escapes, in
    /// which case the borrowed input is returned.
    fn parse_str(&mut self) -> Result<Str<'de>> {
        // at `"`
        let start = self.pos;
        self.pos += 1;
        let content_start = self.pos;
        match memchr::memchr2(b'"', b'\\', &self.input[self.pos..]) {
            None => {
                self.pos = start;
                return Err(self.err(Error::new(Category::Eof, "unterminated string")));
            }
            Some(n) => {
                self.pos += n;
                if self.input[self.pos] == b'"' {
                    let s = self.slice(content_start, self.pos)?;
                    self.pos += 1;
                    return Ok(Str::Borrowed(s));
                }
            }
        }
        self.scratch.clear();
        self.scratch
            .extend_from_slice(&self.input[content_start..self.pos]);
        loop {
            match self.input.get(self.pos) {
                None => {
                    self.pos = start;
                    return Err(self.err(Error::new(Category::Eof, "unterminated string")));
                }
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Str::Scratch);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    self.parse_escape(b'"')?;
                }
                Some(_) => {
                    let rest = &self.input[self.pos..];
                    let n = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
                    self.scratch.extend_from_slice(&rest[..n]);
                    self.pos += n;
                }
            }
        }
    }

    /// After a backslash: appends the escaped character to `scratch`.
    fn parse_escape(&mut self, quote: u8) -> Result<()> {
        let Some(&b) = self.input.get(self.pos) else {
            return Err(self.err(eof()));
        };
        self.pos += 1;
        let c = match b {
            b'"' | b'\\' | b'|' => b,
            b'a' => 0x07,
            b'b' => 0x08,
            b't' => b'\t',
            b'n' => b'\n',
            b'v' => 0x0b,
            b'f' => 0x0c,
            b'r' => b'\r',
            b'x' => {
                let start = self.pos;
                while self.input.get(self.pos).is_some_and(u8::is_ascii_hexdigit) {
                    self.pos += 1;
                }
                let digits = &self.input[start..self.pos];
                if digits.is_empty() || digits.len() > 8 || self.input.get(self.pos) != Some(&b';')
                {
                    return Err(self.err(syntax("invalid `\\x` escape; expected `\\xHEX;`")));
                }
                self.pos += 1;
                let code = u32::from_str_radix(to_str(digits), 16).unwrap_or(u32::MAX);
                let Some(c) = char::from_u32(code) else {
                    return Err(self.err(syntax(format!(
                        "escape `\\x{};` is not a Unicode scalar value",
                        to_str(digits)
                    ))));
                };
                let mut buf = [0u8; 4];
                self.scratch
                    .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                return Ok(());
            }
            _ if b == quote => b,
            _ => {
                self.pos -= 1;
                return Err(self.err(syntax(format!(
                    "invalid escape `\\{}`",
                    char::from(b).escape_default()
                ))));
            }
        };
        self.scratch.push(c);
        Ok(())
    }

    /// Parses a symbol (bare or `|quoted|`) at the cursor.
    fn parse_symbol(&mut self) -> Result<Str<'de>> {
        if self.input.get(self.pos) == Some(&b'|') {
            let start = self.pos;
            self.pos += 1;
            self.scratch.clear();
            loop {
                match self.input.get(self.pos) {
                    None => {
                        self.pos = start;
                        return Err(self.err(Error::new(Category::Eof, "unterminated `|symbol|`")));
                    }
                    Some(b'|') => {
                        self.pos += 1;
                        return Ok(Str::Scratch);
                    }
                    Some(b'\\') => {
                        self.pos += 1;
                        self.parse_escape(b'|')?;
                    }
                    Some(&b) => {
                        self.scratch.push(b);
                        self.pos += 1;
                    }
                }
            }
        }
        let start = self.pos;
        let text = self.atom();
        if text.is_empty() || classify_number(text).is_some() || text[0] == b'#' {
            self.pos = start;
            return Err(self.unexpected("a symbol"));
        }
        Ok(Str::Borrowed(self.slice(start, self.pos)?))
    }

    /// Parses `#t`, `#f`, `#nil`, or a `#\` character at the cursor.
    fn parse_hash(&mut self) -> Result<Hash> {
        let start = self.pos;
        if self.input.get(self.pos + 1) == Some(&b'\\') {
            self.pos += 2;
            let Some(&lead_byte) = self.input.get(self.pos) else {
                return Err(self.err(eof()));
            };
            let len = match lead_byte {
                0..=0x7f => 1,
                0xc0..=0xdf => 2,
                0xe0..=0xef => 3,
                _ => 4,
            };
            let Some(first) = self
                .input
                .get(self.pos..self.pos + len)
                .and_then(|b| std::str::from_utf8(b).ok())
                .and_then(|s| s.chars().next())
            else {
                return Err(self.err(syntax("invalid character literal")));
            };
            self.pos += first.len_utf8();
            let name_rest = self.atom();
            if name_rest.is_empty() {
                return Ok(Hash::Char(first));
            }
            let name = &self.input[start + 2..self.pos];
            let c = match name {
                b"space" => Some(' '),
                b"newline" | b"linefeed" | b"nl" => Some('\n'),
                b"tab" => Some('\t'),
                b"return" => Some('\r'),
                b"nul" | b"null" => Some('\0'),
                b"alarm" => Some('\x07'),
                b"backspace" => Some('\x08'),
                b"delete" | b"rubout" => Some('\x7f'),
                b"escape" | b"altmode" => Some('\x1b'),
                b"page" => Some('\x0c'),
                _ if first == 'x'
                    && name_rest.iter().all(u8::is_ascii_hexdigit)
                    && name_rest.len() <= 8 =>
                {
                    u32::from_str_radix(to_str(name_rest), 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                _ => None,
            };
            return match c {
                Some(c) => Ok(Hash::Char(c)),
                None => {
                    self.pos = start;
                    Err(self.err(syntax(format!(
                        "unknown character name `#\\{}`",
                        String::from_utf8_lossy(name)
                    ))))
                }
            };
        }
        let text = self.atom();
        match text {
            b"#t" | b"#true" => Ok(Hash::Bool(true)),
            b"#f" | b"#false" => Ok(Hash::Bool(false)),
            b"#nil" => Ok(Hash::Nil),
            _ => {
                self.pos = start;
                Err(self.err(syntax(format!(
                    "unknown `#` syntax `{}`",
                    String::from_utf8_lossy(text)
                ))))
            }
        }
    }

    /// Reads a `#u8(...)` byte vector at the cursor into `scratch`.
    fn parse_bytes(&mut self) -> Result<()> {
        self.pos += 4;
        self.scratch.clear();
        loop {
            self.skip_ws()?;
            match self.input.get(self.pos) {
                None => return Err(self.err(eof())),
                Some(b')') => {
                    self.pos += 1;
                    return Ok(());
                }
                Some(_) => {
                    let start = self.pos;
                    let text = self.atom();
                    match to_str(text).parse::<u8>() {
                        Ok(b) if !text.is_empty() => self.scratch.push(b),
                        _ => {
                            self.pos = start;
                            return Err(
                                self.err(syntax("expected a byte (0 to 255) in `#u8(...)`"))
                            );
                        }
                    }
                }
            }
        }
    }

    /// Consumes a `.` between the car and the cdr of a pair, or, when the cdr
    /// is written as the rest of the list, arranges for the next datum to read
    /// it that way. Returns whether the dot was explicit.
    fn pair_dot(&mut self) -> Result<bool> {
        match self.lead()? {
            Lead::Dot => {
                self.pos += 1;
                Ok(true)
            }
            Lead::Eof => Err(self.err(eof())),
            _ => {
                // `(key v1 v2)` is `(key . (v1 v2))`: the pair's `)` closes the cdr.
                self.implicit_open = true;
                self.depth -= 1;
                Ok(false)
            }
        }
    }

    /// After the cdr of a pair: consumes the pair's `)` when the dot was explicit.
    fn pair_end(&mut self, explicit: bool) -> Result<()> {
        if explicit { self.close_list() } else { Ok(()) }
    }

    // ------------------------------------------------------- skipping, raw

    /// Skips one datum without recursion, optionally writing it in canonical
    /// spacing to `out`. Checks the syntax on the way, dotted pairs included.
    fn skip_datum(&mut self, mut out: Option<&mut Vec<u8>>) -> Result<()> {
        // Per open list or vector: LIST, VECTOR, DOTTED (after `.`, wants the
        // cdr) or CDR (has the cdr, wants `)`).
        const LIST: u8 = 0;
        const VECTOR: u8 = 1;
        const DOTTED: u8 = 2;
        const CDR: u8 = 3;
        let mut levels: Vec<u8> = Vec::new();
        // Whether the previous token leaves no room for a space (an opener).
        let mut after_open = true;
        loop {
            let lead = self.lead()?;
            let start = self.pos;
            match levels.last() {
                Some(&CDR) if lead != Lead::Close => {
                    return Err(self.unexpected("`)` after the cdr of a pair"));
                }
                _ => {}
            }
            let mut opened = None;
            match lead {
                Lead::Eof => return Err(self.err(eof())),
                Lead::Close => {
                    match levels.pop() {
                        None => return Err(self.unexpected("a value")),
                        Some(DOTTED) => return Err(self.unexpected("a value after `.`")),
                        Some(_) => {}
                    }
                    self.close_list()?;
                    if let Some(out) = out.as_deref_mut() {
                        out.push(b')');
                    }
                }
                Lead::Open => {
                    self.open_list()?;
                    opened = Some(LIST);
                }
                Lead::Vector => {
                    self.pos += 2;
                    self.enter()?;
                    opened = Some(VECTOR);
                }
                Lead::Bytes => self.parse_bytes()?,
                Lead::Str => {
                    self.parse_str()?;
                }
                Lead::QuotedSymbol => {
                    self.parse_symbol()?;
                }
                Lead::Hash => {
                    self.parse_hash()?;
                }
                Lead::Dot => {
                    match levels.last_mut() {
                        Some(level @ &mut LIST) if !after_open => *level = DOTTED,
                        _ => return Err(self.unexpected("a value")),
                    }
                    self.pos += 1;
                }
                Lead::Atom => {
                    if let Some(Number::Invalid) = classify_number(self.atom()) {
                        self.pos = start;
                        self.parse_number()?;
                    }
                }
            }
            if let Some(out) = out.as_deref_mut()
                && lead != Lead::Close
            {
                if !after_open {
                    out.push(b' ');
                }
                if lead == Lead::Open {
                    out.push(b'(');
                } else {
                    out.extend_from_slice(&self.input[start..self.pos]);
                }
            }
            if let Some(kind) = opened {
                levels.push(kind);
                after_open = true;
                continue;
            }
            after_open = false;
            if lead == Lead::Dot {
                continue;
            }
            // A datum is complete.
            match levels.last_mut() {
                None => return Ok(()),
                Some(level @ &mut DOTTED) => *level = CDR,
                Some(_) => {}
            }
        }
    }

    /// Reads one datum and returns its text, re-spaced canonically.
    fn capture_datum(&mut self) -> Result<String> {
        let mut out = Vec::new();
        self.skip_datum(Some(&mut out))?;
        Ok(String::from_utf8(out).expect("copied from UTF-8 input at token boundaries"))
    }

    /// Whether the list starting at the cursor is a pair `(car . cdr)`.
    /// Leaves the cursor where it was.
    fn peek_is_pair(&mut self) -> Result<bool> {
        let saved = (self.pos, self.depth, self.implicit_open);
        let result = (|| {
            self.open_list()?;
            if self.lead()? == Lead::Close {
                return Ok(false);
            }
            self.skip_datum(None)?;
            Ok(self.lead()? == Lead::Dot)
        })();
        (self.pos, self.depth, self.implicit_open) = saved;
        result
    }

    /// Whether the datum at the cursor is a symbol.
    fn peek_is_symbol(&mut self) -> Result<bool> {
        Ok(match self.lead()? {
            Lead::QuotedSymbol => true,
            Lead::Atom => {
                let saved = self.pos;
                let text = self.atom();
                self.pos = saved;
                classify_number(text).is_none()
            }
            _ => false,
        })
    }

    fn visit_str<V: Visitor<'de>>(&mut self, s: Str<'de>, visitor: V) -> Result<V::Value> {
        match s {
            Str::Borrowed(s) => visitor.visit_borrowed_str(s),
            Str::Scratch => match std::str::from_utf8(&self.scratch) {
                Ok(s) => visitor.visit_str(s),
                Err(_) => Err(self.err(syntax("escape produced invalid UTF-8"))),
            },
        }
    }

    fn visit_number<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        match self.parse_number()? {
            Number::Int(i) => match i64::try_from(i) {
                Ok(i) => visitor.visit_i64(i),
                Err(_) => visitor.visit_i128(i),
            },
            Number::UInt(u) => match u64::try_from(u) {
                Ok(u) => visitor.visit_u64(u),
                Err(_) => visitor.visit_u128(u),
            },
            Number::Float(f) => visitor.visit_f64(f),
            Number::Invalid => Err(self.err(syntax("invalid number"))),
        }
    }

    fn deserialize_list_any<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        // Classify: `()` unit, `(sym . x)` single-entry map (newtype variant),
        // `((k . v) ...)` map, `(sym x ...)` single-entry map (tuple or
        // struct variant), `(x)` Some(x), `(x y ...)` sequence.
        let saved = (self.pos, self.depth, self.implicit_open);
        self.open_list()?;
        if self.lead()? == Lead::Close {
            self.close_list()?;
            return visitor.visit_unit();
        }
        let first_is_symbol = self.peek_is_symbol()?;
        let first_is_pair = self.lead()? == Lead::Open && self.peek_is_pair()?;
        self.skip_datum(None)?;
        let after = self.lead()?;
        (self.pos, self.depth, self.implicit_open) = saved;
        match after {
            Lead::Dot => visitor.visit_map(PairAccess::new(self, false)?),
            _ if first_is_pair => self.visit_alist(visitor),
            Lead::Close => {
                self.open_list()?;
                let value = visitor.visit_some(&mut *self)?;
                self.close_list()?;
                Ok(value)
            }
            _ if first_is_symbol => visitor.visit_map(PairAccess::new(self, true)?),
            _ => {
                self.open_list()?;
                let value = visitor.visit_seq(ListAccess { de: self })?;
                self.close_list()?;
                Ok(value)
            }
        }
    }

    fn visit_alist<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        self.open_list()?;
        let value = visitor.visit_map(AlistAccess { de: self })?;
        self.close_list()?;
        Ok(value)
    }

    fn deserialize_rest_any<V: Visitor<'de>>(&mut self, visitor: V) -> Result<V::Value> {
        // The elements of a tuple variant `(Variant a b ...)`. (Struct
        // variants are written with an explicit dot and read as pairs.)
        self.open_list()?;
        let value = visitor.visit_seq(ListAccess { de: self })?;
        self.close_list()?;
        Ok(value)
    }
}

/// Classifies a number token: integers, decimals with `.`/exponent, and the
/// special floats `+nan.0`, `-nan.0`, `+inf.0`, `-inf.0`. `None` means the
/// token is not numeric at all (a symbol); a numeric-looking token that does
/// not parse is [`Number::Invalid`].
fn classify_number(text: &[u8]) -> Option<Number> {
    match text {
        b"+nan.0" => return Some(Number::Float(f64::NAN)),
        b"-nan.0" => return Some(Number::Float(-f64::NAN)),
        b"+inf.0" => return Some(Number::Float(f64::INFINITY)),
        b"-inf.0" => return Some(Number::Float(f64::NEG_INFINITY)),
        _ => {}
    }
    let digits = match text.first()? {
        b'+' | b'-' => &text[1..],
        _ => text,
    };
    let first = *digits.first()?;
    if !(first.is_ascii_digit() || first == b'.' && digits.get(1).is_some_and(u8::is_ascii_digit)) {
        return None;
    }
    if digits.len() <= 18 && digits.iter().all(u8::is_ascii_digit) {
        // Fits in i64 whatever the digits: no overflow checks needed.
        let n = digits
            .iter()
            .fold(0i64, |n, &d| n * 10 + i64::from(d - b'0'));
        return Some(if text[0] == b'-' {
            Number::Int(i128::from(-n))
        } else {
            Number::UInt(n as u128)
        });
    }
    let s = to_str(text);
    if digits.iter().all(u8::is_ascii_digit) {
        return Some(if text[0] == b'-' {
            s.parse::<i128>().map_or(Number::Invalid, Number::Int)
        } else {
            s.parse::<u128>().map_or(Number::Invalid, Number::UInt)
        });
    }
    let float_chars = digits
        .iter()
        .all(|&b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-'));
    Some(match s.parse::<f64>() {
        Ok(f) if float_chars => Number::Float(f),
        _ => Number::Invalid,
    })
}

fn to_str(bytes: &[u8]) -> &str {
    // The input was validated as UTF-8 on construction and every slice taken
    // here starts and ends at an ASCII delimiter or the input's ends.
    std::str::from_utf8(bytes).expect("slice of UTF-8 input at ASCII boundaries")
}

enum Str<'de> {
    Borrowed(&'de str),
    Scratch,
}

enum Hash {
    Bool(bool),
    Nil,
    Char(char),
}

macro_rules! deserialize_number {
    ($($method:ident),*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
            match self.lead()? {
                Lead::Atom => self.visit_number(visitor),
                _ => Err(self.unexpected("a number")),
            }
        }
    )*};
}

impl<'de> de::Deserializer<'de> for &mut Deserializer<'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Eof => Err(self.err(eof())),
            Lead::Close | Lead::Dot => Err(self.unexpected("a value")),
            Lead::Open => self.deserialize_list_any(visitor),
            Lead::Vector => self.deserialize_seq(visitor),
            Lead::Bytes => self.deserialize_byte_buf(visitor),
            Lead::Str => {
                let s = self.parse_str()?;
                self.visit_str(s, visitor)
            }
            Lead::QuotedSymbol => {
                let s = self.parse_symbol()?;
                self.visit_str(s, visitor)
            }
            Lead::Hash => match self.parse_hash()? {
                Hash::Bool(b) => visitor.visit_bool(b),
                Hash::Nil => visitor.visit_unit(),
                Hash::Char(c) => visitor.visit_char(c),
            },
            Lead::Atom => {
                let saved = self.pos;
                let text = self.atom();
                self.pos = saved;
                if classify_number(text).is_some() {
                    self.visit_number(visitor)
                } else {
                    let s = self.parse_symbol()?;
                    self.visit_str(s, visitor)
                }
            }
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.lead()? == Lead::Hash {
            let start = self.pos;
            if let Hash::Bool(b) = self.parse_hash()? {
                return visitor.visit_bool(b);
            }
            self.pos = start;
        }
        Err(self.unexpected("`#t` or `#f`"))
    }

    deserialize_number!(
        deserialize_i8,
        deserialize_i16,
        deserialize_i32,
        deserialize_i64,
        deserialize_i128,
        deserialize_u8,
        deserialize_u16,
        deserialize_u32,
        deserialize_u64,
        deserialize_u128,
        deserialize_f64
    );

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        if self.lead()? != Lead::Atom {
            return Err(self.unexpected("a number"));
        }
        let start = self.pos;
        let text = self.atom();
        if let Some(Number::Float(f)) = classify_number(text) {
            if f.is_nan() || f.is_infinite() {
                return visitor.visit_f32(f as f32);
            }
            // Parse as f32 directly: going through f64 could round twice.
            if let Ok(f) = to_str(text).parse::<f32>() {
                return visitor.visit_f32(f);
            }
        }
        self.pos = start;
        self.visit_number(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Hash => {
                let start = self.pos;
                if let Hash::Char(c) = self.parse_hash()? {
                    return visitor.visit_char(c);
                }
                self.pos = start;
                Err(self.unexpected("a character"))
            }
            Lead::Str => {
                let s = self.parse_str()?;
                self.visit_str(s, visitor)
            }
            _ => Err(self.unexpected("a character")),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Str => {
                let s = self.parse_str()?;
                self.visit_str(s, visitor)
            }
            Lead::QuotedSymbol => {
                let s = self.parse_symbol()?;
                self.visit_str(s, visitor)
            }
            Lead::Atom => {
                let start = self.pos;
                if classify_number(self.atom()).is_none() {
                    let s = self.slice(start, self.pos)?;
                    return visitor.visit_borrowed_str(s);
                }
                self.pos = start;
                Err(self.unexpected("a string"))
            }
            _ => Err(self.unexpected("a string")),
        }
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Bytes => {
                self.parse_bytes()?;
                visitor.visit_bytes(&self.scratch)
            }
            Lead::Str => match self.parse_str()? {
                Str::Borrowed(s) => visitor.visit_borrowed_bytes(s.as_bytes()),
                Str::Scratch => visitor.visit_bytes(&self.scratch),
            },
            Lead::Vector | Lead::Open => self.deserialize_seq(visitor),
            _ => Err(self.unexpected("a byte vector")),
        }
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Open => {
                self.open_list()?;
                if self.lead()? == Lead::Close {
                    self.close_list()?;
                    return visitor.visit_none();
                }
                let value = visitor.visit_some(&mut *self)?;
                self.close_list()?;
                Ok(value)
            }
            Lead::Hash => {
                let start = self.pos;
                if let Hash::Nil = self.parse_hash()? {
                    return visitor.visit_none();
                }
                self.pos = start;
                Err(self.unexpected("`()` or a one-element list"))
            }
            _ => Err(self.unexpected("`()` or a one-element list")),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Open => {
                self.open_list()?;
                self.close_list()?;
                visitor.visit_unit()
            }
            Lead::Hash => {
                let start = self.pos;
                if let Hash::Nil = self.parse_hash()? {
                    return visitor.visit_unit();
                }
                self.pos = start;
                Err(self.unexpected("`()`"))
            }
            _ => Err(self.unexpected("`()`")),
        }
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        if name == RAW_TOKEN {
            // A document value has a depth of its own, whatever the message
            // around it; it is skipped over without recursion.
            let limit = self.max_depth;
            self.max_depth = self.depth.saturating_add(super::VALUE_MAX_DEPTH);
            let text = self.capture_datum();
            self.max_depth = limit;
            return visitor.visit_byte_buf(text?.into_bytes());
        }
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Vector => {
                self.pos += 2;
                self.enter()?;
            }
            Lead::Open => self.open_list()?,
            _ => return Err(self.unexpected("a vector")),
        }
        let value = visitor.visit_seq(ListAccess { de: &mut *self })?;
        self.close_list()?;
        Ok(value)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.lead()? {
            Lead::Open => self.visit_alist(visitor),
            _ => Err(self.unexpected("an association list")),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.lead()? {
            Lead::Open => self.visit_alist(visitor),
            Lead::Vector => self.deserialize_seq(visitor),
            _ => Err(self.unexpected("an association list")),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        match self.lead()? {
            Lead::Open => {
                self.open_list()?;
                let value = visitor.visit_enum(VariantAccess { de: &mut *self })?;
                self.close_list()?;
                Ok(value)
            }
            Lead::Str | Lead::QuotedSymbol | Lead::Atom => {
                visitor.visit_enum(UnitVariantAccess { de: self })
            }
            _ => Err(self.unexpected("an enum variant")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.skip_datum(None)?;
        visitor.visit_unit()
    }
}

/// The elements of a list or vector, up to its `)`.
struct ListAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::SeqAccess<'de> for ListAccess<'_, 'de> {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        match self.de.lead()? {
            Lead::Close => Ok(None),
            Lead::Eof => Err(self.de.err(eof())),
            Lead::Dot => Err(self.de.err(syntax("a dotted list is not a sequence"))),
            _ => seed.deserialize(&mut *self.de).map(Some),
        }
    }
}

/// The entries `(key . value)` of an association list, up to its `)`.
struct AlistAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::MapAccess<'de> for AlistAccess<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        match self.de.lead()? {
            Lead::Close => Ok(None),
            Lead::Open => {
                self.de.open_list()?;
                seed.deserialize(&mut *self.de).map(Some)
            }
            Lead::Eof => Err(self.de.err(eof())),
            _ => Err(self.de.unexpected("an entry `(key . value)`")),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let explicit = self.de.pair_dot()?;
        let value = seed.deserialize(&mut *self.de)?;
        self.de.pair_end(explicit)?;
        Ok(value)
    }
}

/// A list read as a map of one entry: `(key . value)`, or `(symbol x ...)`
/// whose value is the rest of the list. Used by `deserialize_any`, which
/// needs enum variants with data to look like single-entry maps.
struct PairAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
    state: u8,
    rest: bool,
}

impl<'a, 'de> PairAccess<'a, 'de> {
    fn new(de: &'a mut Deserializer<'de>, rest: bool) -> Result<Self> {
        de.open_list()?;
        Ok(PairAccess { de, state: 0, rest })
    }
}

impl<'de> de::MapAccess<'de> for PairAccess<'_, 'de> {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.state > 0 {
            return Ok(None);
        }
        self.state = 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        self.state = 2;
        if self.rest {
            self.de.implicit_open = true;
            self.de.depth -= 1;
            return seed.deserialize(RestDeserializer { de: &mut *self.de });
        }
        let explicit = self.de.pair_dot()?;
        let value = seed.deserialize(&mut *self.de)?;
        self.de.pair_end(explicit)?;
        Ok(value)
    }
}

/// The data of a variant written as the rest of its list.
struct RestDeserializer<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::Deserializer<'de> for RestDeserializer<'_, 'de> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.de.deserialize_rest_any(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

/// An enum written as a bare symbol (or string): a unit variant.
struct UnitVariantAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for UnitVariantAccess<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let variant = seed.deserialize(&mut *self.de)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for UnitVariantAccess<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, _seed: T) -> Result<T::Value> {
        Err(self.de.err(Error::new(
            Category::Data,
            "expected a variant with data `(variant . value)`, found a bare symbol",
        )))
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, _visitor: V) -> Result<V::Value> {
        Err(self.de.err(Error::new(
            Category::Data,
            "expected a tuple variant `(variant a b ...)`, found a bare symbol",
        )))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value> {
        Err(self.de.err(Error::new(
            Category::Data,
            "expected a struct variant `(variant (field . value) ...)`, found a bare symbol",
        )))
    }
}

/// An enum written as a list headed by the variant's symbol.
struct VariantAccess<'a, 'de> {
    de: &'a mut Deserializer<'de>,
}

impl<'de> de::EnumAccess<'de> for VariantAccess<'_, 'de> {
    type Error = Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let variant = seed.deserialize(&mut *self.de)?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for VariantAccess<'_, 'de> {
    type Error = Error;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        match self.de.lead()? {
            Lead::Dot => {
                self.de.pair_dot()?;
                seed.deserialize(&mut *self.de)
            }
            Lead::Close => Err(self.de.unexpected("`. value`")),
            _ => {
                // `(variant v1 ...)`: the value is the rest of the list, whose
                // `)` the caller consumes.
                self.de.implicit_open = true;
                self.de.depth -= 1;
                let value = seed.deserialize(&mut *self.de)?;
                // The value consumed the `)`; give one back to the caller.
                self.de.pos -= 1;
                self.de.depth += 1;
                Ok(value)
            }
        }
    }

    fn tuple_variant<V: Visitor<'de>>(self, _len: usize, visitor: V) -> Result<V::Value> {
        if self.de.lead()? == Lead::Dot {
            // `(Variant . #(a b))`
            self.de.pos += 1;
            return de::Deserializer::deserialize_seq(&mut *self.de, visitor);
        }
        visitor.visit_seq(ListAccess { de: self.de })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        if self.de.lead()? == Lead::Dot {
            // `(Variant . ((field . value) ...))`, as this crate writes it.
            self.de.pos += 1;
            return self.de.visit_alist(visitor);
        }
        // `(Variant (field . value) ...)`, as serde-lexpr writes it.
        visitor.visit_map(AlistAccess { de: self.de })
    }
}
