//! How the hook talks to the server (wasm32 only): the server functions, or
//! plain HTTP to a standalone atomsync-server.

use atomsync_core::engine::Failure;
use atomsync_core::protocol::{
    CONTENT_TYPE, ErrorBody, PullRequest, PullResponse, PushRequest, PushResponse,
};
use atomsync_core::sexpr;
use serde::de::DeserializeOwned;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::options::{Endpoint, server_routes};

/// A refused server URL, as the protocol's error (the sync loop reports it
/// before it sends anything, so this is only a safety net).
fn bad_url(message: String) -> Failure {
    Failure::Error(ErrorBody {
        error: atomsync_core::protocol::ErrorCode::BadRequest,
        message,
    })
}

/// Sends a pull.
pub async fn pull(
    endpoint: &Endpoint,
    token: Option<String>,
    request: PullRequest,
) -> Result<PullResponse, Failure> {
    #[cfg(feature = "fault-injection")]
    if let Some(answer) = crate::testing::fake_pull(&request, token.as_deref()) {
        return answer.await;
    }
    match endpoint {
        Endpoint::ServerFunctions => from_server_fn(crate::server_fns::pull(token, request).await),
        Endpoint::Url(base) => {
            let (url, _) = server_routes(base).map_err(bad_url)?;
            let mut query = format!("group={}", request.group);
            if let Some(since) = &request.since {
                query.push_str(&format!("&since={since}"));
            }
            if let Some(limit) = request.limit {
                query.push_str(&format!("&limit={limit}"));
            }
            let sep = if url.contains('?') { '&' } else { '?' };
            fetch("GET", &format!("{url}{sep}{query}"), token, None).await
        }
        Endpoint::None => Err(Failure::Unreachable),
    }
}

/// Sends a push.
pub async fn push(
    endpoint: &Endpoint,
    token: Option<String>,
    request: PushRequest,
) -> Result<PushResponse, Failure> {
    #[cfg(feature = "fault-injection")]
    crate::testing::record_push(&request);
    #[cfg(feature = "fault-injection")]
    if let Some(answer) = crate::testing::fake_push(&request, token.as_deref()) {
        return answer.await;
    }
    match endpoint {
        Endpoint::ServerFunctions => from_server_fn(crate::server_fns::push(token, request).await),
        Endpoint::Url(base) => {
            let body = sexpr::to_string(&request).map_err(|e| {
                Failure::Error(ErrorBody {
                    error: atomsync_core::protocol::ErrorCode::BadRequest,
                    message: e.to_string(),
                })
            })?;
            let (url, _) = server_routes(base).map_err(bad_url)?;
            fetch("POST", &url, token, Some(body)).await
        }
        Endpoint::None => Err(Failure::Unreachable),
    }
}

fn from_server_fn<T>(
    result: Result<Result<T, ErrorBody>, crate::fn_client::ServerFnFailure>,
) -> Result<T, Failure> {
    match result {
        Ok(Ok(response)) => Ok(response),
        Ok(Err(body)) => Err(Failure::Error(body)),
        Err(failure) => Err(Failure::from(failure)),
    }
}

async fn fetch<T: DeserializeOwned>(
    method: &str,
    url: &str,
    token: Option<String>,
    body: Option<String>,
) -> Result<T, Failure> {
    let init = web_sys::RequestInit::new();
    init.set_method(method);
    init.set_mode(web_sys::RequestMode::Cors);
    let headers = web_sys::Headers::new().map_err(|_| Failure::Unreachable)?;
    if let Some(token) = token {
        let _ = headers.set("Authorization", &format!("Bearer {token}"));
    }
    if let Some(body) = &body {
        let _ = headers.set("Content-Type", CONTENT_TYPE);
        init.set_body(&wasm_bindgen::JsValue::from_str(body));
    }
    init.set_headers(&headers);
    // Dropped with this future (the sync loop's time limit): the browser
    // cancels the request.
    let abort = AbortOnDrop(web_sys::AbortController::new().map_err(|_| Failure::Unreachable)?);
    init.set_signal(Some(&abort.0.signal()));
    let request =
        web_sys::Request::new_with_str_and_init(url, &init).map_err(|_| Failure::Unreachable)?;
    let window = web_sys::window().ok_or(Failure::Unreachable)?;
    let response = JsFuture::from(window.fetch_with_request(&request))
        .await
        .map_err(|_| Failure::Unreachable)?;
    let response: web_sys::Response = response.dyn_into().map_err(|_| Failure::Unreachable)?;
    let status = response.status();
    let text = match response.text() {
        Ok(promise) => JsFuture::from(promise)
            .await
            .ok()
            .and_then(|t| t.as_string())
            .unwrap_or_default(),
        Err(_) => String::new(),
    };
    drop(abort);
    if response.ok() {
        sexpr::from_str(&text).map_err(|_| Failure::Status(502))
    } else {
        match sexpr::from_str::<ErrorBody>(&text) {
            Ok(body) => Err(Failure::Error(body)),
            Err(_) => Err(Failure::Status(status)),
        }
    }
}

/// Aborts a `fetch` when dropped (harmless once it has answered).
struct AbortOnDrop(web_sys::AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
