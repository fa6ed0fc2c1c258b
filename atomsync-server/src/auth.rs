//! Who may use which group: [`Credentials`], [`Authorizer`] and its
//! implementations.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::path::Path;

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{Extensions, HeaderMap, header};
use serde::Deserialize;
use subtle::{ConditionallySelectable, ConstantTimeEq};

use crate::{Error, Result};

/// What a request presents to an [`Authorizer`]: its bearer token, and its
/// headers and extensions for host applications with their own sessions
/// (cookies, session layers).
///
/// Extract it in an axum handler (it never fails), or build it with
/// [`Credentials::from_parts`], [`Credentials::bearer`] or
/// [`Credentials::none`]. Its `Debug` output never shows the token, the
/// `Authorization` or the `Cookie` header.
#[derive(Clone, Default)]
pub struct Credentials {
    token: Option<String>,
    headers: HeaderMap,
    extensions: Extensions,
}

impl Credentials {
    /// No credentials at all.
    pub fn none() -> Self {
        Credentials::default()
    }

    /// Only a bearer token.
    pub fn bearer(token: impl Into<String>) -> Self {
        Credentials {
            token: Some(token.into()),
            ..Credentials::default()
        }
    }

    /// The credentials of a request: its `Authorization: Bearer TOKEN` header
    /// (if any), headers and extensions.
    pub fn from_parts(parts: &Parts) -> Self {
        Credentials {
            token: bearer_token(&parts.headers).map(str::to_owned),
            headers: parts.headers.clone(),
            extensions: parts.extensions.clone(),
        }
    }

    /// The bearer token, if the request had one.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The request's headers (empty when not built from a request).
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The request's extensions (empty when not built from a request), where
    /// session layers leave their data.
    pub fn extensions(&self) -> &Extensions {
        &self.extensions
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let headers: Vec<_> = self
            .headers
            .keys()
            .map(|name| {
                let redacted = name == header::AUTHORIZATION || name == header::COOKIE;
                (name.as_str(), if redacted { "<redacted>" } else { "…" })
            })
            .collect();
        f.debug_struct("Credentials")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("headers", &headers)
            .finish_non_exhaustive()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Credentials {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Credentials::from_parts(parts))
    }
}

/// The token of an `Authorization: Bearer TOKEN` header.
fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Why an [`Authorizer`] refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// No credentials, or unknown ones: 401.
    #[error("missing or unknown credentials")]
    Unauthorized,
    /// Known credentials that may not use the group: 403.
    #[error("the credentials may not use this group")]
    Forbidden,
}

impl AuthError {
    pub(crate) fn into_error(self, group: &str) -> Error {
        match self {
            AuthError::Unauthorized => Error::Unauthorized,
            AuthError::Forbidden => Error::Forbidden(group.to_owned()),
        }
    }
}

/// Decides which groups a request may pull from, push to and follow.
///
/// Implemented by [`AllowAll`], [`TokenFile`] and any
/// `Fn(&Credentials, &str) -> Result<(), AuthError>` closure, so a host
/// application can plug in its own sessions:
///
/// ```
/// use atomsync_server::{AuthError, Credentials, Store, SyncService};
///
/// // Each user may only use the group named after them.
/// let authorizer = |credentials: &Credentials, group: &str| {
///     let user = credentials
///         .headers()
///         .get("x-user")
///         .and_then(|v| v.to_str().ok())
///         .ok_or(AuthError::Unauthorized)?;
///     if group == user { Ok(()) } else { Err(AuthError::Forbidden) }
/// };
/// let service = SyncService::with_authorizer(Store::open_in_memory()?, authorizer);
/// # Ok::<(), atomsync_server::Error>(())
/// ```
pub trait Authorizer: Send + Sync + 'static {
    /// May these credentials use `group`? [`AuthError::Unauthorized`] when
    /// they identify no one, [`AuthError::Forbidden`] when the one they
    /// identify may not use the group.
    fn authorize(&self, credentials: &Credentials, group: &str) -> Result<(), AuthError>;

    /// Do these credentials identify anyone at all? Checked before a request
    /// body is read, so that anonymous clients are turned away early. The
    /// default accepts everything and leaves the decision to
    /// [`Authorizer::authorize`].
    fn authenticate(&self, credentials: &Credentials) -> Result<(), AuthError> {
        let _ = credentials;
        Ok(())
    }
}

impl<F> Authorizer for F
where
    F: Fn(&Credentials, &str) -> Result<(), AuthError> + Send + Sync + 'static,
{
    fn authorize(&self, credentials: &Credentials, group: &str) -> Result<(), AuthError> {
        self(credentials, group)
    }
}

/// Lets everyone use every group: the standalone server's default when no
/// users file is given.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _credentials: &Credentials, _group: &str) -> Result<(), AuthError> {
        Ok(())
    }
}

/// Users with bearer tokens and the groups each may use, from a TOML file.
///
/// ```toml
/// # users.toml
/// [users.alice]
/// token = "abc123"
/// groups = ["todo", "settings"]
///
/// [users.admin]
/// token = "s3cret-admin-token"
/// groups = ["*"]          # "*" means every group
/// ```
///
/// Clients send `Authorization: Bearer TOKEN`. No token or an unknown token
/// is [`AuthError::Unauthorized`] (401); a group the user may not use is
/// [`AuthError::Forbidden`] (403). Tokens are compared in constant time and
/// never appear in `Debug` output or logs.
///
/// ```
/// use atomsync_server::{Authorizer, AuthError, Credentials, TokenFile};
///
/// let users = TokenFile::from_toml(r#"
///     [users.alice]
///     token = "abc123"
///     groups = ["todo", "settings"]
/// "#)?;
/// assert_eq!(users.authorize(&Credentials::bearer("abc123"), "todo"), Ok(()));
/// assert_eq!(users.authorize(&Credentials::bearer("abc123"), "work"), Err(AuthError::Forbidden));
/// assert_eq!(users.authorize(&Credentials::bearer("nope"), "todo"), Err(AuthError::Unauthorized));
/// assert_eq!(users.authorize(&Credentials::none(), "todo"), Err(AuthError::Unauthorized));
/// # Ok::<(), atomsync_server::Error>(())
/// ```
#[derive(Clone)]
pub struct TokenFile {
    users: Vec<User>,
}

#[derive(Clone)]
struct User {
    name: String,
    token: Vec<u8>,
    groups: Groups,
}

#[derive(Debug, Clone)]
enum Groups {
    All,
    Some(BTreeSet<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    users: BTreeMap<String, UserFormat>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFormat {
    token: String,
    groups: Vec<String>,
}

impl TokenFile {
    /// Reads a users file.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if it cannot be read, [`Error::Config`] if it is not a
    /// valid users file (the message never contains a token).
    pub fn load(path: impl AsRef<Path>) -> Result<TokenFile> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)?;
        TokenFile::from_toml(&text)
            .map_err(|e| Error::Config(format!("users file {}: {e}", path.display())))
    }

    /// Parses the text of a users file.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the text is not a valid users file: a user
    /// without a token or groups, an empty or duplicate token, an invalid
    /// group name.
    pub fn from_toml(text: &str) -> Result<TokenFile> {
        let file: FileFormat = toml::from_str(text).map_err(|e| {
            // toml's messages quote the offending line, which may hold a token.
            Error::Config(format!("invalid users file: {}", e.message()))
        })?;
        let mut users: Vec<User> = Vec::with_capacity(file.users.len());
        for (name, user) in file.users {
            if user.token.trim().is_empty() || user.token.chars().any(char::is_whitespace) {
                return Err(Error::Config(format!(
                    "user `{name}`: the token must be non-empty, without spaces"
                )));
            }
            if users.iter().any(|u| u.token == user.token.as_bytes()) {
                return Err(Error::Config(format!(
                    "user `{name}` has the same token as another user"
                )));
            }
            let groups = if user.groups.iter().any(|g| g == "*") {
                Groups::All
            } else {
                for group in &user.groups {
                    atomsync_core::protocol::validate_group(group)
                        .map_err(|e| Error::Config(format!("user `{name}`: {e}: `{group}`")))?;
                }
                Groups::Some(user.groups.into_iter().collect())
            };
            users.push(User {
                name,
                token: user.token.into_bytes(),
                groups,
            });
        }
        Ok(TokenFile { users })
    }

    /// How many users the file names.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether the file names no user (then every request is refused).
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// The user holding `token`, comparing with every user's token in constant
    /// time.
    fn find(&self, token: &str) -> Option<&User> {
        let token = token.as_bytes();
        let mut found = u32::MAX;
        for (index, user) in self.users.iter().enumerate() {
            found.conditional_assign(&(index as u32), user.token.as_slice().ct_eq(token));
        }
        self.users.get(found as usize)
    }
}

impl Authorizer for TokenFile {
    fn authorize(&self, credentials: &Credentials, group: &str) -> Result<(), AuthError> {
        let token = credentials.token().ok_or(AuthError::Unauthorized)?;
        let user = self.find(token).ok_or(AuthError::Unauthorized)?;
        match &user.groups {
            Groups::All => Ok(()),
            Groups::Some(groups) if groups.contains(group) => Ok(()),
            Groups::Some(_) => {
                tracing::debug!(user = %user.name, group, "group not allowed");
                Err(AuthError::Forbidden)
            }
        }
    }

    fn authenticate(&self, credentials: &Credentials) -> Result<(), AuthError> {
        let token = credentials.token().ok_or(AuthError::Unauthorized)?;
        self.find(token).map(|_| ()).ok_or(AuthError::Unauthorized)
    }
}

impl fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.users.iter().map(|u| (&u.name, &u.groups)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
        [users.alice]
        token = "abc123"
        groups = ["todo", "settings"]

        [users.root]
        token = "r00t-token"
        groups = ["*"]
    "#;

    #[test]
    fn token_file_grants_listed_groups() {
        let users = TokenFile::from_toml(FILE).unwrap();
        assert_eq!(users.len(), 2);
        let alice = Credentials::bearer("abc123");
        assert_eq!(users.authorize(&alice, "todo"), Ok(()));
        assert_eq!(users.authorize(&alice, "settings"), Ok(()));
        assert_eq!(users.authorize(&alice, "other"), Err(AuthError::Forbidden));
        let root = Credentials::bearer("r00t-token");
        assert_eq!(users.authorize(&root, "anything"), Ok(()));
        for bad in ["abc12", "abc1234", "", "r00t-token "] {
            assert_eq!(
                users.authorize(&Credentials::bearer(bad), "todo"),
                Err(AuthError::Unauthorized),
                "{bad:?}"
            );
        }
        assert_eq!(users.authenticate(&alice), Ok(()));
        assert_eq!(
            users.authenticate(&Credentials::none()),
            Err(AuthError::Unauthorized)
        );
    }

    #[test]
    fn tokens_never_show_in_debug_output() {
        let users = TokenFile::from_toml(FILE).unwrap();
        let debug = format!("{users:?}");
        assert!(
            debug.contains("alice") && !debug.contains("abc123"),
            "{debug}"
        );
        let mut parts = http::Request::builder()
            .header("authorization", "Bearer abc123")
            .header("cookie", "session=xyz")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let credentials = Credentials::from_parts(&parts);
        assert_eq!(credentials.token(), Some("abc123"));
        let debug = format!("{credentials:?}");
        assert!(
            !debug.contains("abc123") && !debug.contains("xyz"),
            "{debug}"
        );
        parts
            .headers
            .insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(Credentials::from_parts(&parts).token(), None);
    }

    #[test]
    fn invalid_token_files_are_refused_without_showing_tokens() {
        for (text, what) in [
            ("[users.a]\ntoken = \"\"\ngroups = []", "empty token"),
            ("[users.a]\ntoken = \"x y\"\ngroups = []", "spaces"),
            (
                "[users.a]\ntoken = \"t1\"\ngroups = []\n[users.b]\ntoken = \"t1\"\ngroups = []",
                "duplicate",
            ),
            (
                "[users.a]\ntoken = \"t1\"\ngroups = [\"bad group\"]",
                "group",
            ),
            ("[users.a]\ntoken = \"t1\"", "no groups"),
            (
                "[users.a]\ntoken = \"t1\"\ngroups = []\nextra = 1",
                "unknown field",
            ),
            ("[users.a]\ntoken = \"t1\ngroups = []", "syntax"),
        ] {
            let err = TokenFile::from_toml(text).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{what}: {err}");
            assert!(!err.to_string().contains("t1"), "{what}: {err}");
        }
    }

    #[test]
    fn closures_are_authorizers() {
        fn check(a: &dyn Authorizer) -> Result<(), AuthError> {
            a.authorize(&Credentials::bearer("t"), "g")
        }
        assert_eq!(
            check(&|c: &Credentials, _: &str| {
                c.token().map(|_| ()).ok_or(AuthError::Unauthorized)
            }),
            Ok(())
        );
        assert_eq!(check(&AllowAll), Ok(()));
    }
}
