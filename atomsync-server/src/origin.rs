//! [`OriginPolicy`]: which browser pages may call the server, the defence
//! against cross-site request forgery shared by the HTTP routes and the Leptos
//! server functions.

use std::collections::BTreeSet;
use std::fmt;

use http::{HeaderMap, header};

use crate::{Error, Result};

/// The `Sec-Fetch-Site` request header (not in `http::header`).
const SEC_FETCH_SITE: &str = "sec-fetch-site";

/// Which browser pages may send requests to the server: the defence against
/// cross-site request forgery.
///
/// A page on any site can make a visitor's browser send a "simple" request
/// (a form post, a `fetch` with `mode: "no-cors"`, a `text/plain` body) to
/// any other site, without asking CORS first, and the browser attaches the
/// visitor's cookies. With a cookie-based authorizer such a request would
/// write as the visitor. CORS does not stop it: CORS only hides the answer
/// from the page, after the server has acted. So the server looks at the
/// headers browsers set and no page can forge:
///
/// 1. If `Origin` is one of the allowed origins ([`OriginPolicy::allow`]),
///    the request is accepted.
/// 2. Else if `Sec-Fetch-Site` is present (current browsers send it to
///    `https` origins and to `localhost`/`127.0.0.1`; Chromium does not send
///    it to other plain-`http` hosts),
///    `same-origin` and `none` (the user typed the address) are accepted and
///    `cross-site` and `same-site` are refused. `same-site` means another
///    origin of the same registrable domain (`blog.example.com` calling
///    `app.example.com`): cookies marked `SameSite` are sent along, so a
///    sibling subdomain is no more trusted than any other site; list it with
///    [`OriginPolicy::allow`] if it should be.
/// 3. Else if `Origin` is present (plain-`http` hosts, older browsers), it
///    must name the request's own host (its `Host` header), or the request
///    is refused; `Origin: null` (sandboxed frames, `file:` pages) is
///    refused. (An HTTP/2 request has no `Host` header, only an authority;
///    browsers speak HTTP/2 over `https` only, where step 2 decides.)
/// 4. Else (no `Origin`, no `Sec-Fetch-Site`) the request does not come from a
///    browser's cross-origin request (browsers send `Origin` with every
///    cross-origin request and every `POST`), and is accepted: command-line
///    tools, native clients and servers are not affected.
///
/// A refused request gets 403 with the protocol's `forbidden` error before
/// anything else is looked at. The rule is the one of Go's
/// `net/http.CrossOriginProtection`; it applies to every method, `GET`
/// included, because an `/events` stream holds one of the server's limited
/// subscriber slots and no other site should be able to take them with its
/// visitors' browsers.
///
/// [`OriginPolicy::default`] is [`OriginPolicy::same_origin`]: safe by
/// default. [`OriginPolicy::any`] turns the check off; that is only sound
/// when no request is authorized by something a browser adds by itself
/// (cookies, HTTP authentication, client certificates), e.g. bearer tokens
/// only.
///
/// ```
/// use atomsync_server::OriginPolicy;
/// use http::HeaderMap;
///
/// let policy = OriginPolicy::same_origin().allow("https://app.example.com")?;
/// let mut headers = HeaderMap::new();
/// headers.insert("host", "api.example.com".parse().unwrap());
/// headers.insert("sec-fetch-site", "same-site".parse().unwrap());
/// headers.insert("origin", "https://app.example.com".parse().unwrap());
/// assert!(policy.check(&headers).is_ok());
/// headers.insert("origin", "https://blog.example.com".parse().unwrap());
/// assert!(policy.check(&headers).is_err());
/// # Ok::<(), atomsync_server::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct OriginPolicy {
    any: bool,
    allowed: BTreeSet<String>,
}

impl OriginPolicy {
    /// Only pages of the server's own origin (and clients that are not
    /// browsers): the default.
    pub fn same_origin() -> Self {
        OriginPolicy::default()
    }

    /// Every origin: no cross-site check at all. Only for servers whose
    /// requests are authorized by bearer tokens, never cookies.
    pub fn any() -> Self {
        OriginPolicy {
            any: true,
            allowed: BTreeSet::new(),
        }
    }

    /// Also accepts requests from pages of `origin`, like
    /// `https://app.example.com` or `http://localhost:3000` (scheme, host and
    /// port if not the scheme's default; a trailing `/` is ignored).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if `origin` is not of that form.
    pub fn allow(mut self, origin: &str) -> Result<Self> {
        self.allowed.insert(normalize(origin)?);
        Ok(self)
    }

    /// The policy of a list of origins as given on the command line
    /// (`--allow-origin`): [`OriginPolicy::any`] if one of them is `*`, else
    /// [`OriginPolicy::same_origin`] plus each of them.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an invalid origin.
    pub fn from_list<S: AsRef<str>>(origins: &[S]) -> Result<Self> {
        if origins.iter().any(|o| o.as_ref() == "*") {
            return Ok(OriginPolicy::any());
        }
        origins
            .iter()
            .try_fold(OriginPolicy::same_origin(), |policy, origin| {
                policy.allow(origin.as_ref())
            })
    }

    /// Whether every origin is accepted ([`OriginPolicy::any`]).
    pub fn allows_any(&self) -> bool {
        self.any
    }

    /// The origins accepted besides the server's own.
    pub fn allowed(&self) -> impl Iterator<Item = &str> {
        self.allowed.iter().map(String::as_str)
    }

    /// Checks the headers of a request (see the rules above).
    ///
    /// # Errors
    ///
    /// [`Error::CrossOrigin`] (403) if the request comes from a page the
    /// policy does not accept.
    pub fn check(&self, headers: &HeaderMap) -> Result<()> {
        if self.any {
            return Ok(());
        }
        let origin = headers
            .get(header::ORIGIN)
            .map(|v| v.to_str().unwrap_or("(invalid)"));
        if origin.is_some_and(|o| self.allowed.contains(o.trim_end_matches('/'))) {
            return Ok(());
        }
        if let Some(site) = headers.get(SEC_FETCH_SITE) {
            return match site.as_bytes() {
                b"same-origin" | b"none" => Ok(()),
                _ => Err(refusal(origin, Some(site.to_str().unwrap_or("(invalid)")))),
            };
        }
        let Some(origin) = origin else {
            return Ok(());
        };
        let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
        match (host_of(origin), host) {
            (Some(origin_host), Some(host)) if origin_host.eq_ignore_ascii_case(host) => Ok(()),
            _ => Err(refusal(Some(origin), None)),
        }
    }
}

impl fmt::Debug for OriginPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.any {
            f.write_str("OriginPolicy(any)")
        } else {
            f.debug_tuple("OriginPolicy")
                .field(&"same-origin")
                .field(&self.allowed)
                .finish()
        }
    }
}

fn refusal(origin: Option<&str>, site: Option<&str>) -> Error {
    // Header values are attacker-chosen: keep them short in messages and logs.
    let shorten = |s: &str| s.chars().take(100).collect::<String>();
    let message = match (origin, site) {
        (Some(origin), Some(site)) => format!(
            "origin `{}` is not allowed (Sec-Fetch-Site: {})",
            shorten(origin),
            shorten(site)
        ),
        (None, Some(site)) => format!("a {} request without an allowed origin", shorten(site)),
        (Some(origin), None) => format!("origin `{}` is not allowed", shorten(origin)),
        (None, None) => "not allowed".to_owned(),
    };
    Error::CrossOrigin(message)
}

/// `scheme://host[:port]` in lower case, without a trailing `/`.
fn normalize(origin: &str) -> Result<String> {
    let trimmed = origin.trim().trim_end_matches('/');
    let invalid = || {
        Error::Config(format!(
            "invalid origin `{origin}`: expected scheme://host[:port], like https://app.example.com"
        ))
    };
    let (scheme, host) = trimmed.split_once("://").ok_or_else(invalid)?;
    let scheme_ok = !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.:[]_".contains(c));
    if !scheme_ok || !host_ok {
        return Err(invalid());
    }
    Ok(trimmed.to_ascii_lowercase())
}

/// The `host[:port]` of an origin (`scheme://host[:port]`).
fn host_of(origin: &str) -> Option<&str> {
    let (_scheme, host) = origin.split_once("://")?;
    (!host.is_empty() && !host.contains('/')).then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn same_origin_accepts_own_pages_and_non_browsers_only() {
        let policy = OriginPolicy::default();
        let ok = [
            vec![],
            vec![("host", "127.0.0.1:3000")],
            vec![("sec-fetch-site", "same-origin")],
            vec![("sec-fetch-site", "none")],
            vec![
                ("origin", "http://127.0.0.1:3000"),
                ("host", "127.0.0.1:3000"),
            ],
            // Behind a proxy that rewrites Host, Sec-Fetch-Site decides.
            vec![
                ("origin", "https://app.example.com"),
                ("host", "127.0.0.1:3000"),
                ("sec-fetch-site", "same-origin"),
            ],
        ];
        for case in ok {
            assert_eq!(policy.check(&headers(&case)).ok(), Some(()), "{case:?}");
        }
        let refused = [
            vec![("sec-fetch-site", "cross-site")],
            vec![("sec-fetch-site", "same-site")],
            vec![("sec-fetch-site", "something-new")],
            vec![
                ("sec-fetch-site", "cross-site"),
                ("origin", "http://127.0.0.1:3000"),
                ("host", "127.0.0.1:3000"),
            ],
            vec![
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:3000"),
            ],
            vec![("origin", "null"), ("host", "127.0.0.1:3000")],
            vec![("origin", "http://evil.example")],
            vec![
                ("origin", "http://localhost:3000"),
                ("host", "127.0.0.1:3000"),
            ],
        ];
        for case in refused {
            let err = policy.check(&headers(&case)).unwrap_err();
            assert!(matches!(err, Error::CrossOrigin(_)), "{case:?}: {err}");
            assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
        }
    }

    #[test]
    fn allowed_origins_and_any() {
        let policy =
            OriginPolicy::from_list(&["https://App.example.com/", "http://localhost:3000"])
                .unwrap();
        assert_eq!(
            policy.allowed().collect::<Vec<_>>(),
            ["http://localhost:3000", "https://app.example.com"]
        );
        for origin in ["https://app.example.com", "http://localhost:3000"] {
            let case = [("origin", origin), ("sec-fetch-site", "cross-site")];
            assert!(policy.check(&headers(&case)).is_ok(), "{origin}");
        }
        let case = [
            ("origin", "https://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ];
        assert!(policy.check(&headers(&case)).is_err());

        let any = OriginPolicy::from_list(&["https://a.example", "*"]).unwrap();
        assert!(any.allows_any());
        assert!(any.check(&headers(&case)).is_ok());
        assert!(!OriginPolicy::default().allows_any());
    }

    #[test]
    fn invalid_origins_are_configuration_errors() {
        for bad in [
            "",
            "app.example.com",
            "https://",
            "https://a.example/path",
            "ht tp://a",
        ] {
            let err = OriginPolicy::same_origin().allow(bad).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{bad:?}: {err}");
        }
    }

    #[test]
    fn messages_are_short_whatever_the_headers() {
        let long = format!("http://{}", "a".repeat(10_000));
        let err = OriginPolicy::default()
            .check(&headers(&[("origin", &long), ("host", "x")]))
            .unwrap_err();
        assert!(err.to_string().len() < 300, "{err}");
    }
}
