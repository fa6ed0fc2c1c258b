//! The one error type of the S-expression codec.

use std::fmt;

/// What kind of failure an [`Error`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Category {
    /// The input is not well-formed S-expression text.
    Syntax,
    /// The input ended in the middle of a value.
    Eof,
    /// Nesting went deeper than the configured limit.
    Depth,
    /// The text is well-formed but does not fit the requested Rust type,
    /// or a value cannot be represented (encoding side).
    Data,
}

/// An error from encoding or decoding S-expressions.
///
/// Decoding errors carry the line and column (both 1-based, columns counted
/// in bytes) where the problem was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    inner: Box<ErrorImpl>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ErrorImpl {
    category: Category,
    message: String,
    position: Option<(usize, usize)>,
}

/// The result type of the codec.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(category: Category, message: impl Into<String>) -> Self {
        Error {
            inner: Box::new(ErrorImpl {
                category,
                message: message.into(),
                position: None,
            }),
        }
    }

    /// Attaches the position of byte `offset` in `input`, unless a position is set already.
    pub(crate) fn at(mut self, input: &[u8], offset: usize) -> Self {
        if self.inner.position.is_none() {
            let offset = offset.min(input.len());
            let before = &input[..offset];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let line_start = before
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            self.inner.position = Some((line, offset - line_start + 1));
        }
        self
    }

    /// What kind of failure this is.
    pub fn category(&self) -> Category {
        self.inner.category
    }

    /// The message, without the position.
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The 1-based line of the failure, for decoding errors.
    pub fn line(&self) -> Option<usize> {
        self.inner.position.map(|p| p.0)
    }

    /// The 1-based column (in bytes) of the failure, for decoding errors.
    pub fn column(&self) -> Option<usize> {
        self.inner.position.map(|p| p.1)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.inner.position {
            Some((line, column)) => {
                write!(f, "{} at line {line} column {column}", self.inner.message)
            }
            None => f.write_str(&self.inner.message),
        }
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(Category::Data, msg.to_string())
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::new(Category::Data, msg.to_string())
    }
}
