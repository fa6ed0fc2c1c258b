//! Limits on what one request may hold: the body (content type, size, time
//! to arrive) and the `/events` subscriber slots.

use std::sync::Arc;
use std::time::Duration;

use atomsync_core::protocol;
use axum::body::{Body, Bytes};
use http::{HeaderMap, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{Error, Result, RouterOptions};

/// Reads the body of a request that carries a protocol message (a push, or a
/// call of atomsync's server functions), within the limits of `options`.
///
/// This is the one place where the HTTP routes and the Leptos server
/// functions check a body:
///
/// - `headers` must declare the protocol's content type
///   ([`CONTENT_TYPE`](atomsync_core::protocol::CONTENT_TYPE), parameters
///   allowed), or the body is not read at all: [`Error::UnsupportedMediaType`]
///   (415). Together with [`OriginPolicy`](crate::OriginPolicy) this keeps
///   other sites' form posts and `text/plain` requests out.
/// - At most [`RouterOptions::max_body`] bytes are read:
///   [`Error::PayloadTooLarge`] (413) past that.
/// - The whole body must arrive within [`RouterOptions::body_timeout`]:
///   [`Error::BodyTimeout`] (408, and the connection is closed) otherwise, so
///   a client that stops sending half-way does not hold the request (and its
///   buffer) for ever.
///
/// # Errors
///
/// As above, and [`Error::BadRequest`] if the body cannot be read (the
/// connection failed).
pub async fn read_sexpr_body(
    headers: &HeaderMap,
    body: Body,
    options: &RouterOptions,
) -> Result<Bytes> {
    check_content_type(headers)?;
    let limit = options.max_body;
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(options.body_timeout, read).await {
        Err(_elapsed) => Err(Error::BodyTimeout {
            seconds: options.body_timeout.as_secs_f64().ceil() as u64,
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<LengthLimitError>() => Err(Error::PayloadTooLarge { limit }),
        Ok(Err(e)) => Err(Error::BadRequest(format!("could not read the body: {e}"))),
    }
}

/// [`Error::UnsupportedMediaType`] unless the content type is the protocol's.
fn check_content_type(headers: &HeaderMap) -> Result<()> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim());
    if content_type.is_some_and(|t| t.eq_ignore_ascii_case(protocol::CONTENT_TYPE)) {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType)
    }
}

/// The `/events` streams one router may hold at once.
#[derive(Clone)]
pub(crate) struct SubscriberSlots {
    slots: Arc<Semaphore>,
    max: usize,
    retry_after: Duration,
}

impl SubscriberSlots {
    pub(crate) fn new(max: usize, retry_after: Duration) -> Self {
        SubscriberSlots {
            slots: Arc::new(Semaphore::new(max.min(Semaphore::MAX_PERMITS))),
            max,
            retry_after,
        }
    }

    /// A slot, given back when the returned permit is dropped (when the
    /// stream ends or its client goes away).
    ///
    /// # Errors
    ///
    /// [`Error::Busy`] when every slot is taken.
    pub(crate) fn take(&self) -> Result<OwnedSemaphorePermit> {
        Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| Error::Busy {
                what: format!(
                    "the server already serves its limit of {} event streams",
                    self.max
                ),
                retry_after: self.retry_after,
            })
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    fn sexpr_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-atomsync-sexpr; charset=utf-8"
                .parse()
                .unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn bodies_are_checked_and_bounded() {
        let options = RouterOptions::default().max_body(8);
        let ok = read_sexpr_body(&sexpr_headers(), Body::from("(a b)"), &options).await;
        assert_eq!(ok.unwrap(), "(a b)");
        let big = read_sexpr_body(&sexpr_headers(), Body::from("(a b c d e)"), &options).await;
        assert!(
            matches!(big, Err(Error::PayloadTooLarge { limit: 8 })),
            "{big:?}"
        );
        for content_type in [
            None,
            Some("text/plain"),
            Some("application/x-www-form-urlencoded"),
            Some("multipart/form-data; boundary=x"),
            Some("application/x-atomsync-sexpr-not"),
        ] {
            let mut headers = HeaderMap::new();
            if let Some(t) = content_type {
                headers.insert(header::CONTENT_TYPE, t.parse().unwrap());
            }
            let refused = read_sexpr_body(&headers, Body::from("(a)"), &options).await;
            assert!(
                matches!(refused, Err(Error::UnsupportedMediaType)),
                "{content_type:?}: {refused:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_times_out() {
        let options = RouterOptions::default().body_timeout(Duration::from_secs(3));
        let stalled = futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from("(a"))])
            .chain(futures_util::stream::pending());
        let body = Body::from_stream(stalled);
        let result = read_sexpr_body(&sexpr_headers(), body, &options).await;
        assert!(
            matches!(result, Err(Error::BodyTimeout { seconds: 3 })),
            "{result:?}"
        );
    }

    #[test]
    fn subscriber_slots_are_counted_and_given_back() {
        let slots = SubscriberSlots::new(2, Duration::from_secs(7));
        let a = slots.take().unwrap();
        let _b = slots.take().unwrap();
        let err = slots.take().unwrap_err();
        assert!(
            matches!(err, Error::Busy { retry_after, .. } if retry_after == Duration::from_secs(7))
        );
        drop(a);
        assert!(slots.take().is_ok());
    }
}
