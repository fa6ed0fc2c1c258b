//! atomsync's server functions behind leptos_axum's handler, in process
//! (`tower::ServiceExt::oneshot`): they accept only the protocol's content
//! type and refuse other sites' pages, like the plain routes.
//!
//! `cargo test -p atomsync-leptos --features ssr --test server_fns`
#![cfg(feature = "ssr")]

use atomsync_core::protocol::{
    CONTENT_TYPE, Change, ChangeResult, ErrorBody, ErrorCode, PullRequest, PushRequest,
    PushResponse,
};
use atomsync_core::sexpr::{self, Raw};
use atomsync_leptos::server_fns::{Pull, Push};
use atomsync_server::{OriginPolicy, RouterOptions, Store, SyncService};
use axum::Router;
use axum::body::Body;
use axum::routing::post;
use http::{Request, StatusCode, header};
use leptos::server_fn::ServerFn;
use tower::ServiceExt;

const HOST: &str = "127.0.0.1:3000";
const OWN_ORIGIN: &str = "http://127.0.0.1:3000";

/// The host app: server functions at /atomsync/*, as `leptos_routes_with_context` mounts them.
fn app(service: &SyncService, options: Option<RouterOptions>) -> Router {
    leptos::server_fn::axum::register_explicit::<Push>();
    leptos::server_fn::axum::register_explicit::<Pull>();
    let service = service.clone();
    let context = move || match &options {
        Some(options) => {
            atomsync_leptos::provide_sync_service_with_options(service.clone(), options.clone());
        }
        None => atomsync_leptos::provide_sync_service(service.clone()),
    };
    Router::new().route(
        "/atomsync/{*name}",
        post(move |request: Request<Body>| {
            leptos_axum::handle_server_fns_with_context(context.clone(), request)
        }),
    )
}

fn push_args(key: &str) -> Vec<u8> {
    sexpr::to_vec(&Push {
        token: None,
        request: PushRequest {
            group: "g".to_owned(),
            client_id: format!("client-{key}"),
            changes: vec![Change {
                mutation: 1,
                key: key.to_owned(),
                base_version: 0,
                value: Some(Raw::from_text("\"pwned\"").unwrap()),
            }],
            low_water: None,
            epoch: None,
        },
    })
    .unwrap()
}

struct Reply {
    status: StatusCode,
    content_type: Option<String>,
    body: Vec<u8>,
}

async fn send(app: &Router, request: Request<Body>) -> Reply {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply {
        status,
        content_type,
        body,
    }
}

impl Reply {
    /// The protocol's error body, with its content type and `status`.
    fn expect_error(&self, status: StatusCode, code: ErrorCode) -> String {
        let text = String::from_utf8_lossy(&self.body);
        assert_eq!(self.status, status, "{text}");
        assert_eq!(self.content_type.as_deref(), Some(CONTENT_TYPE), "{text}");
        let error: ErrorBody = sexpr::from_slice(&self.body).unwrap();
        assert_eq!(error.error, code, "{text}");
        error.message
    }
}

async fn stored_keys(service: &SyncService) -> usize {
    let pull = PullRequest {
        group: "g".to_owned(),
        since: None,
        limit: None,
    };
    service
        .pull(&atomsync_server::Credentials::none(), pull)
        .await
        .unwrap()
        .documents
        .len()
}

fn request(content_type: Option<&str>, headers: &[(&'static str, &str)]) -> Request<Body> {
    let mut builder = Request::post(Push::PATH).header(header::HOST, HOST);
    if let Some(content_type) = content_type {
        builder = builder.header(header::CONTENT_TYPE, content_type);
    }
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::from(push_args("k"))).unwrap()
}

/// What a browser sends with a plain `<form method=post>`.
const FORM: [(&str, &str); 2] = [
    ("accept", "text/html,application/xhtml+xml"),
    ("referer", "http://evil.example/attack.html"),
];

#[tokio::test]
async fn other_content_types_are_415_and_store_nothing() {
    let service = SyncService::new(Store::open_in_memory().unwrap());
    let app = app(&service, None);
    for content_type in [
        None,
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/json"),
    ] {
        // From the server's own origin, so only the content type is wrong;
        // a form post (which leptos_axum would turn into a redirect) too.
        let own = [("origin", OWN_ORIGIN), ("sec-fetch-site", "same-origin")];
        let message = send(&app, request(content_type, &own))
            .await
            .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::BadRequest);
        assert!(message.contains(CONTENT_TYPE), "{message}");
        let form = [own[0], own[1], FORM[0], FORM[1]];
        send(&app, request(content_type, &form))
            .await
            .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::BadRequest);
    }
    assert_eq!(stored_keys(&service).await, 0);
}

#[tokio::test]
async fn cross_site_requests_are_403_and_store_nothing() {
    let service = SyncService::new(Store::open_in_memory().unwrap());
    let app = app(&service, None);
    for headers in [
        vec![
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
        ],
        vec![("origin", "http://evil.example")],
        vec![("sec-fetch-site", "cross-site")],
        vec![("origin", "null")],
        vec![
            ("origin", "http://evil.example"),
            ("sec-fetch-site", "cross-site"),
            FORM[0],
            FORM[1],
        ],
    ] {
        for content_type in [
            "text/plain",
            "application/x-www-form-urlencoded",
            CONTENT_TYPE,
        ] {
            let message = send(&app, request(Some(content_type), &headers))
                .await
                .expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);
            assert!(message.contains("cross-site"), "{headers:?}: {message}");
        }
    }
    assert_eq!(stored_keys(&service).await, 0);
}

#[tokio::test]
async fn same_origin_requests_with_the_right_type_work() {
    let service = SyncService::new(Store::open_in_memory().unwrap());
    let app = app(&service, None);
    for (i, headers) in [
        vec![("origin", OWN_ORIGIN), ("sec-fetch-site", "same-origin")],
        vec![("origin", OWN_ORIGIN)],
        // Not a browser.
        vec![],
    ]
    .into_iter()
    .enumerate()
    {
        let mut request = request(Some(CONTENT_TYPE), &headers);
        *request.body_mut() = Body::from(push_args(&format!("k{i}")));
        let reply = send(&app, request).await;
        assert_eq!(reply.status, StatusCode::OK, "{headers:?}");
        let answer: Result<PushResponse, ErrorBody> = sexpr::from_slice(&reply.body).unwrap();
        assert!(
            matches!(answer.unwrap().results[0], ChangeResult::Accepted { .. }),
            "{headers:?}"
        );
    }
    assert_eq!(stored_keys(&service).await, 3);
}

#[tokio::test]
async fn the_services_origin_policy_and_the_router_options_apply() {
    let service = SyncService::new(Store::open_in_memory().unwrap()).with_origin_policy(
        OriginPolicy::same_origin()
            .allow("https://app.example.com")
            .unwrap(),
    );
    let app = app(&service, Some(RouterOptions::default().max_body(64)));
    let allowed = [
        ("origin", "https://app.example.com"),
        ("sec-fetch-site", "cross-site"),
    ];
    // Allowed, but the body is over the 64 bytes of these options.
    send(&app, request(Some(CONTENT_TYPE), &allowed))
        .await
        .expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge);
    let other = [
        ("origin", "https://other.example.com"),
        ("sec-fetch-site", "same-site"),
    ];
    send(&app, request(Some(CONTENT_TYPE), &other))
        .await
        .expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);

    let roomy = app_with_default_limits(&service);
    let reply = send(&roomy, request(Some(CONTENT_TYPE), &allowed)).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(stored_keys(&service).await, 1);
}

fn app_with_default_limits(service: &SyncService) -> Router {
    app(service, None)
}

#[tokio::test]
async fn without_a_sync_service_the_answer_says_to_provide_one() {
    leptos::server_fn::axum::register_explicit::<Push>();
    // The app forgot `provide_sync_service` in its context closure.
    let app = Router::new().route(
        "/atomsync/{*name}",
        post(|request: Request<Body>| leptos_axum::handle_server_fns_with_context(|| {}, request)),
    );
    let reply = send(&app, request(Some(CONTENT_TYPE), &[])).await;
    // Not a bare 500: the protocol's error, in band, which the browser shows
    // in `status().last_error` (and retries, as the fix needs a restart).
    assert_eq!(reply.status, StatusCode::OK);
    let answer: Result<PushResponse, ErrorBody> = sexpr::from_slice(&reply.body).unwrap();
    let error = answer.unwrap_err();
    assert_eq!(error.error, ErrorCode::Internal);
    assert!(
        error.message.contains("no SyncService in context")
            && error
                .message
                .contains("atomsync_leptos::provide_sync_service(service.clone())")
            && error.message.contains("leptos_routes_with_context"),
        "{}",
        error.message
    );
}
