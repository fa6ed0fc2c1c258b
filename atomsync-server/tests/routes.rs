//! In-process tests of every route and every error class, through
//! `tower::ServiceExt::oneshot`.

mod common;

use std::time::Duration;

use atomsync_core::protocol::{
    CONTENT_TYPE, ChangeResult, Cursor, Document, ErrorCode, PullRequest, PullResponse,
    PushResponse,
};
use atomsync_core::sexpr;
use atomsync_server::{
    AuthError, Credentials, OriginPolicy, RouterOptions, SyncService, TokenFile, router,
    router_with_options,
};
use axum::Router;
use axum::body::{Body, Bytes};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use common::{change, decode_error, push_body, raw};

on_both_backends! {
    struct Reply {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Reply {
        fn error(&self) -> atomsync_core::protocol::ErrorBody {
            assert_eq!(
                self.headers[header::CONTENT_TYPE],
                CONTENT_TYPE,
                "errors are S-expressions"
            );
            decode_error(&self.body)
        }

        fn expect_error(&self, status: StatusCode, code: ErrorCode) -> String {
            assert_eq!(
                self.status,
                status,
                "body: {}",
                String::from_utf8_lossy(&self.body)
            );
            let error = self.error();
            assert_eq!(error.error, code);
            assert!(!error.message.is_empty());
            error.message
        }

        fn decode<T: serde::de::DeserializeOwned>(&self) -> T {
            assert_eq!(
                self.status,
                StatusCode::OK,
                "body: {}",
                String::from_utf8_lossy(&self.body)
            );
            assert_eq!(self.headers[header::CONTENT_TYPE], CONTENT_TYPE);
            sexpr::from_slice(&self.body).unwrap()
        }
    }

    async fn send(app: &Router, request: Request<Body>) -> Reply {
        let response = app.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn post(body: impl Into<Body>) -> Request<Body> {
        Request::post("/sync")
            .header(header::CONTENT_TYPE, CONTENT_TYPE)
            .body(body.into())
            .unwrap()
    }

    fn with_token(mut request: Request<Body>, token: &str) -> Request<Body> {
        request.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        request
    }

    /// Everything the store holds for group `g`.
    async fn snapshot(service: &SyncService) -> (Cursor, Vec<Document>) {
        let page = service
            .call(|store| {
                store.pull(&PullRequest {
                    group: "g".to_owned(),
                    since: None,
                    limit: None,
                })
            })
            .await
            .unwrap()
            .unwrap();
        (page.cursor, page.documents)
    }

    async fn seeded() -> (SyncService, Router) {
        let service = service();
        let app = router(service.clone());
        let reply = send(
            &app,
            post(push_body(
                "g",
                "seed",
                vec![
                    change(1, "a", 0, Some("(1)")),
                    change(2, "b", 0, Some("\"two\"")),
                ],
            )),
        )
        .await;
        let _: PushResponse = reply.decode();
        (service, app)
    }

    #[tokio::test]
    async fn pull_returns_documents_in_change_order() {
        let (service, app) = seeded().await;
        let page: PullResponse = send(&app, get("/sync?group=g")).await.decode();
        assert_eq!(
            page.documents,
            vec![
                Document {
                    key: "a".to_owned(),
                    version: 1,
                    value: Some(raw("(1)"))
                },
                Document {
                    key: "b".to_owned(),
                    version: 1,
                    value: Some(raw("\"two\""))
                },
            ]
        );
        assert!(!page.more);
        assert_eq!(page.cursor, service.cursor());
        assert_eq!(page.cursor.seq, 2);

        // `since` empty is the beginning; a page of one has more.
        let page: PullResponse = send(&app, get("/sync?group=g&since=&limit=1"))
            .await
            .decode();
        assert_eq!(page.documents.len(), 1);
        assert!(page.more);
        assert_eq!(page.cursor.seq, 1);
        let next: PullResponse = send(
            &app,
            get(&format!("/sync?group=g&since={}&limit=1", page.cursor)),
        )
        .await
        .decode();
        assert_eq!(next.documents[0].key, "b");
        assert!(!next.more);

        // An unknown group is empty, with the latest cursor.
        let page: PullResponse = send(&app, get("/sync?group=other")).await.decode();
        assert!(page.documents.is_empty());
        assert_eq!(page.cursor.seq, 2);
    }

    #[tokio::test]
    async fn push_accepts_refuses_and_answers_retries_the_same() {
        let (service, app) = seeded().await;
        let body = push_body(
            "g",
            "c1",
            vec![
                change(1, "a", 1, Some("(2)")),
                change(2, "b", 0, Some("(3)")),
                change(3, "new", 0, None),
            ],
        );
        let first: PushResponse = send(&app, post(body.clone())).await.decode();
        assert_eq!(
            first.results,
            vec![
                ChangeResult::Accepted {
                    mutation: 1,
                    key: "a".to_owned(),
                    version: 2
                },
                ChangeResult::Conflict {
                    mutation: 2,
                    key: "b".to_owned(),
                    current: Some(Document {
                        key: "b".to_owned(),
                        version: 1,
                        value: Some(raw("\"two\""))
                    })
                },
                ChangeResult::Accepted {
                    mutation: 3,
                    key: "new".to_owned(),
                    version: 1
                },
            ]
        );
        assert_eq!(first.cursor.seq, 4);
        let retry: PushResponse = send(&app, post(body)).await.decode();
        assert_eq!(retry, first);
        assert_eq!(service.cursor().seq, 4);
    }

    #[tokio::test]
    async fn push_accepts_a_content_type_with_parameters() {
        let (_service, app) = seeded().await;
        let request = Request::post("/sync")
            .header(
                header::CONTENT_TYPE,
                format!("{CONTENT_TYPE}; charset=utf-8"),
            )
            .body(Body::from(push_body(
                "g",
                "c",
                vec![change(1, "z", 0, None)],
            )))
            .unwrap();
        let _: PushResponse = send(&app, request).await.decode();
    }

    /// A document value has a depth of its own: a chain of 300 nested structs
    /// (900 levels) goes through the HTTP route and back, although a message
    /// may nest only 256 levels.
    #[tokio::test]
    async fn deep_document_values_travel_through_the_routes() {
        let (_service, app) = seeded().await;
        let deep = format!("{}1{}", "(".repeat(900), ")".repeat(900));
        let body = push_body("g", "c", vec![change(1, "deep", 0, Some(&deep))]);
        let response: PushResponse = send(&app, post(body)).await.decode();
        assert!(matches!(
            response.results[0],
            ChangeResult::Accepted { version: 1, .. }
        ));
        let page: PullResponse = send(&app, get("/sync?group=g")).await.decode();
        let value = page
            .documents
            .iter()
            .find(|d| d.key == "deep")
            .and_then(|d| d.value.clone())
            .unwrap();
        assert_eq!(value.as_str(), deep);
    }

    #[tokio::test]
    async fn events_send_the_current_cursor_then_each_change() {
        let (service, app) = seeded().await;
        let response = app.clone().oneshot(get("/events?group=g")).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/event-stream"
        );
        let mut body = response.into_body();
        let mut next_event = async || loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("no event in time")
                .unwrap()
                .unwrap();
            if let Ok(data) = frame.into_data() {
                let text = String::from_utf8(data.to_vec()).unwrap();
                if text.starts_with(':') {
                    continue; // heartbeat
                }
                return text;
            }
        };
        let first = next_event().await;
        assert_eq!(
            first,
            format!("event: cursor\ndata: {}\n\n", service.cursor())
        );

        // A change in another group sends nothing; one in `g` sends its cursor.
        let _: PushResponse = send(
            &app,
            post(push_body("h", "c", vec![change(1, "x", 0, None)])),
        )
        .await
        .decode();
        let _: PushResponse = send(
            &app,
            post(push_body("g", "c", vec![change(2, "x", 0, None)])),
        )
        .await
        .decode();
        let second = next_event().await;
        assert_eq!(
            second,
            "event: cursor\ndata: ".to_owned() + &format!("{}\n\n", service.cursor())
        );
        assert_eq!(service.cursor().seq, 4);

        // Shutting down ends the stream.
        service.shutdown();
        let end = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stream did not end");
        assert!(end.is_none());
    }

    #[tokio::test]
    async fn events_send_heartbeats() {
        let service = service();
        let app = router_with_options(
            service.clone(),
            RouterOptions::default().heartbeat(Duration::from_millis(50)),
        );
        let response = app.oneshot(get("/events?group=g")).await.unwrap();
        let mut body = response.into_body();
        let mut heartbeats = 0;
        while heartbeats < 2 {
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let text = String::from_utf8(frame.into_data().unwrap().to_vec()).unwrap();
            if text.starts_with(':') {
                assert_eq!(text, ": heartbeat\n\n");
                heartbeats += 1;
            }
        }
    }

    /// Requests that are client mistakes: each must get a 400 with an
    /// S-expression error body and leave the store unchanged.
    #[tokio::test]
    async fn bad_requests_are_400_and_change_nothing() {
        let (service, app) = seeded().await;
        let before = snapshot(&service).await;
        let epoch = service.epoch().to_owned();

        let bad_pulls = [
            ("/sync", "missing group"),
            ("/sync?group=", "empty group"),
            ("/sync?group=a%20b", "invalid group"),
            (&*format!("/sync?group={}", "g".repeat(200)), "long group"),
            ("/sync?group=g&group=h", "duplicate parameter"),
            ("/sync?group=g&since=nonsense", "cursor without seq"),
            ("/sync?group=g&since=abc.-1", "negative seq"),
            (
                "/sync?group=g&since=abc.99999999999999999999",
                "seq beyond u64",
            ),
            (
                &*format!("/sync?group=g&since={epoch}.9223372036854775808"),
                "seq beyond i64",
            ),
            ("/sync?group=g&since=a%20b.1", "bad epoch"),
            ("/sync?group=g&limit=0", "zero limit"),
            ("/sync?group=g&limit=-1", "negative limit"),
            ("/sync?group=g&limit=ten", "limit not a number"),
            ("/sync?group=%FF", "invalid UTF-8 in group"),
            ("/events", "events without group"),
            ("/events?group=a%20b", "events with invalid group"),
        ];
        for (uri, what) in bad_pulls {
            let reply = send(&app, get(uri)).await;
            let message = reply.expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
            println!("{what}: {message}");
        }
        // Large limits are capped, as the protocol says, however large.
        for limit in ["99999999999", "99999999999999999999999999", "0005"] {
            let reply = send(&app, get(&format!("/sync?group=g&limit={limit}"))).await;
            assert_eq!(reply.status, StatusCode::OK, "limit={limit}");
        }

        let valid = push_body("g", "c9", vec![change(1, "a", 1, Some("(5)"))]);
        let deep_value = format!(
            "((group . \"g\") (client_id . \"c\") (changes . #(((mutation . 1) (key . \"k\") \
             (base_version . 0) (value . ({}1{})))))))",
            "(".repeat(100_000),
            ")".repeat(100_000)
        );
        let bad_pushes: Vec<(Vec<u8>, &str)> = vec![
            (b"".to_vec(), "empty body"),
            (b"((group . \"g\")".to_vec(), "truncated"),
            (
                valid.as_bytes()[..valid.len() - 3].to_vec(),
                "truncated valid body",
            ),
            (format!("{valid} extra").into_bytes(), "trailing datum"),
            (b"#(1 2 3)".to_vec(), "wrong shape"),
            (b"((group . \"g\"))".to_vec(), "missing fields"),
            (b")(".to_vec(), "unbalanced"),
            (
                valid.replace("\"g\"", "\"\u{fffd}\"").into_bytes(),
                "replacement char in group",
            ),
            (
                {
                    let mut bytes = valid.clone().into_bytes();
                    let at = bytes.iter().position(|&b| b == b'g').unwrap();
                    bytes[at] = 0xff;
                    bytes
                },
                "invalid UTF-8",
            ),
            ("(".repeat(1_000_000).into_bytes(), "hostile nesting"),
            (deep_value.into_bytes(), "hostile nesting in a value"),
            (
                valid
                    .replace("(base_version . 1)", "(base_version . -1)")
                    .into_bytes(),
                "negative version",
            ),
            (
                valid
                    .replace("(base_version . 1)", "(base_version . 9223372036854775808)")
                    .into_bytes(),
                "version beyond i64",
            ),
            (
                valid
                    .replace("(base_version . 1)", "(base_version . 1e400)")
                    .into_bytes(),
                "absurd version",
            ),
            (
                valid
                    .replace("(mutation . 1)", "(mutation . \"one\")")
                    .into_bytes(),
                "mutation of the wrong type",
            ),
            (
                push_body("g", "c", vec![change(1, &"k".repeat(513), 0, None)]).into_bytes(),
                "long key",
            ),
            (
                push_body(&"g".repeat(129), "c", vec![change(1, "k", 0, None)]).into_bytes(),
                "long group",
            ),
            (
                push_body("g", &"c".repeat(129), vec![change(1, "k", 0, None)]).into_bytes(),
                "long client id",
            ),
            (
                push_body("g", "", vec![change(1, "k", 0, None)]).into_bytes(),
                "empty client id",
            ),
            (
                push_body(
                    "g",
                    "c",
                    (0..1001)
                        .map(|i| change(i + 1, &format!("k{i}"), 0, None))
                        .collect(),
                )
                .into_bytes(),
                "too many changes",
            ),
        ];
        for (body, what) in bad_pushes {
            let reply = send(&app, post(body)).await;
            let message = reply.expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
            println!("{what}: {message}");
        }
        // A reused mutation number is not a malformed request but a client that
        // lost its state: 409 `mutation-reused`, and nothing of the push applied.
        let reused = push_body(
            "g",
            "seed",
            vec![change(3, "fresh", 0, None), change(1, "b", 0, None)],
        );
        let message = send(&app, post(reused))
            .await
            .expect_error(StatusCode::CONFLICT, ErrorCode::MutationReused);
        assert!(message.contains("new client id"), "{message}");

        assert_eq!(snapshot(&service).await, before);
        // And the server still serves.
        let ok: PushResponse = send(&app, post(valid)).await.decode();
        assert!(matches!(
            ok.results[0],
            ChangeResult::Accepted { version: 2, .. }
        ));
    }

    #[tokio::test]
    async fn wrong_content_type_is_415() {
        let (service, app) = seeded().await;
        let before = snapshot(&service).await;
        let body = push_body("g", "c", vec![change(1, "z", 0, None)]);
        for content_type in [None, Some("text/plain"), Some("application/json")] {
            let mut request = Request::post("/sync");
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, content_type);
            }
            let reply = send(&app, request.body(Body::from(body.clone())).unwrap()).await;
            let message = reply.expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE, ErrorCode::BadRequest);
            assert!(message.contains(CONTENT_TYPE), "{message}");
        }
        assert_eq!(snapshot(&service).await, before);
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        let service = service();
        let app = router_with_options(service.clone(), RouterOptions::default().max_body(1024));
        let big = push_body(
            "g",
            "c",
            vec![change(
                1,
                "k",
                0,
                Some(&format!("\"{}\"", "x".repeat(2000))),
            )],
        );
        // With a Content-Length header.
        let reply = send(&app, post(big.clone())).await;
        let message = reply.expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge);
        assert!(message.contains("1024"), "{message}");
        // Streamed without a length.
        let chunks: Vec<Result<Bytes, std::io::Error>> = big
            .as_bytes()
            .chunks(100)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let streamed = Body::from_stream(futures_util::stream::iter(chunks));
        let reply = send(&app, post(streamed)).await;
        reply.expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge);
        assert_eq!(service.cursor().seq, 0);
        // The default limit is 4 MiB.
        let app = router(service.clone());
        let huge = push_body(
            "g",
            "c",
            vec![change(
                1,
                "k",
                0,
                Some(&format!("\"{}\"", "x".repeat(4 << 20))),
            )],
        );
        send(&app, post(huge))
            .await
            .expect_error(StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge);
        let fits = push_body(
            "g",
            "c",
            vec![change(
                1,
                "k",
                0,
                Some(&format!("\"{}\"", "x".repeat(3 << 20))),
            )],
        );
        let _: PushResponse = send(&app, post(fits)).await.decode();
    }

    #[tokio::test]
    async fn foreign_and_future_cursors_are_409() {
        let (service, app) = seeded().await;
        let other = store();
        for since in [
            format!("{}.1", other.epoch()),
            format!("{}.3", service.epoch()),
        ] {
            let reply = send(&app, get(&format!("/sync?group=g&since={since}"))).await;
            let message = reply.expect_error(StatusCode::CONFLICT, ErrorCode::CursorReset);
            assert!(message.contains("beginning"), "{message}");
        }
    }

    const USERS: &str = r#"
        [users.alice]
        token = "alice-token"
        groups = ["g", "settings"]

        [users.bob]
        token = "bob-token"
        groups = ["h"]
    "#;

    #[tokio::test]
    async fn token_auth_is_401_without_a_known_token_and_403_for_other_groups() {
        let service = SyncService::with_authorizer(
            store(),
            TokenFile::from_toml(USERS).unwrap(),
        );
        let app = router(service.clone());
        let body = || push_body("g", "c", vec![change(1, "k", 0, Some("1"))]);

        // 401: no token, an unknown token, another scheme.
        for token in [
            None,
            Some("Bearer nope"),
            Some("Basic YWxpY2U6eA=="),
            Some("Bearer"),
        ] {
            for request in [get("/sync?group=g"), post(body()), get("/events?group=g")] {
                let mut request = request;
                if let Some(token) = token {
                    request
                        .headers_mut()
                        .insert(header::AUTHORIZATION, token.parse().unwrap());
                }
                let uri = request.uri().clone();
                let reply = send(&app, request).await;
                reply.expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
                assert_eq!(reply.headers[header::WWW_AUTHENTICATE], "Bearer", "{uri}");
            }
        }
        // 401 comes before the body is looked at.
        let reply = send(&app, post("garbage")).await;
        reply.expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);

        // 403: bob may not use g.
        for request in [get("/sync?group=g"), post(body()), get("/events?group=g")] {
            let reply = send(&app, with_token(request, "bob-token")).await;
            let message = reply.expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);
            assert!(message.contains("`g`"), "{message}");
            assert!(!message.contains("bob-token"));
        }
        assert_eq!(service.cursor().seq, 0);

        // An invalid group name is a bad request before it is a forbidden one,
        // on every route (a push once said 403 where pulls said 400).
        let bad_group = push_body("a b", "c", vec![change(1, "k", 0, Some("1"))]);
        for request in [
            get("/sync?group=a%20b"),
            post(bad_group),
            get("/events?group=a%20b"),
        ] {
            let uri = request.uri().clone();
            let reply = send(&app, with_token(request, "bob-token")).await;
            reply.expect_error(StatusCode::BAD_REQUEST, ErrorCode::BadRequest);
            println!("{uri}: 400");
        }

        // Alice may.
        let _: PushResponse = send(&app, with_token(post(body()), "alice-token"))
            .await
            .decode();
        let page: PullResponse = send(&app, with_token(get("/sync?group=g"), "alice-token"))
            .await
            .decode();
        assert_eq!(page.documents.len(), 1);
        let response = app
            .clone()
            .oneshot(with_token(get("/events?group=g"), "alice-token"))
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn a_closure_authorizer_sees_the_request_headers() {
        let authorizer = |credentials: &Credentials, group: &str| {
            let user = credentials
                .headers()
                .get("x-user")
                .and_then(|v| v.to_str().ok())
                .ok_or(AuthError::Unauthorized)?;
            if user == group {
                Ok(())
            } else {
                Err(AuthError::Forbidden)
            }
        };
        let app = router(SyncService::with_authorizer(
            store(),
            authorizer,
        ));
        let request = |user: Option<&str>| {
            let mut request = get("/sync?group=ann");
            if let Some(user) = user {
                request
                    .headers_mut()
                    .insert("x-user", user.parse().unwrap());
            }
            request
        };
        let _: PullResponse = send(&app, request(Some("ann"))).await.decode();
        send(&app, request(Some("bo")))
            .await
            .expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);
        send(&app, request(None))
            .await
            .expect_error(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized);
    }

    #[tokio::test]
    async fn a_closed_service_is_503_without_internals() {
        let (service, app) = seeded().await;
        service.close().await;
        for request in [
            get("/sync?group=g"),
            post(push_body("g", "c", vec![change(1, "k", 0, None)])),
        ] {
            let reply = send(&app, request).await;
            let message = reply.expect_error(StatusCode::SERVICE_UNAVAILABLE, ErrorCode::Unavailable);
            assert_eq!(message, "the server is unavailable, retry later");
        }
    }

    #[tokio::test]
    async fn server_errors_do_not_leak_internals() {
        use axum::response::IntoResponse;
        let error = atomsync_server::Error::Internal("secret path /var/lib/x".to_owned());
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let error = decode_error(&body);
        assert_eq!(error.error, ErrorCode::Internal);
        assert!(!error.message.contains("secret"));
    }

    #[tokio::test]
    async fn the_router_mounts_under_a_prefix_next_to_other_routes() {
        let service = service();
        let app: Router = Router::new()
            .route("/", axum::routing::get(|| async { "home" }))
            .nest("/atomsync", router(service));
        let reply = send(&app, get("/")).await;
        assert_eq!(reply.body, "home");
        let _: PullResponse = send(&app, get("/atomsync/sync?group=g")).await.decode();
        assert_eq!(
            send(&app, get("/sync?group=g")).await.status,
            StatusCode::NOT_FOUND
        );
    }

    /// A request as a browser page on `origin` sends it to `127.0.0.1:3000`.
    fn from_page(
        mut request: Request<Body>,
        origin: Option<&str>,
        site: Option<&str>,
    ) -> Request<Body> {
        let headers = request.headers_mut();
        headers.insert(header::HOST, "127.0.0.1:3000".parse().unwrap());
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, origin.parse().unwrap());
        }
        if let Some(site) = site {
            headers.insert("sec-fetch-site", site.parse().unwrap());
        }
        request
    }

    #[tokio::test]
    async fn cross_site_requests_are_403_on_every_route_and_store_nothing() {
        let (service, app) = seeded().await;
        let before = snapshot(&service).await;
        let body = push_body("g", "evil", vec![change(1, "a", 1, Some("\"pwned\""))]);
        for (origin, site) in [
            (Some("http://evil.example"), Some("cross-site")),
            (Some("http://evil.example"), None),
            (None, Some("cross-site")),
            (Some("http://blog.127.0.0.1:3000"), Some("same-site")),
            (Some("null"), None),
        ] {
            // Every content type a page can send without a preflight, and ours
            // (which a page cannot send cross-site without passing CORS).
            for content_type in [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x",
                CONTENT_TYPE,
            ] {
                let request = Request::post("/sync")
                    .header(header::CONTENT_TYPE, content_type)
                    .body(Body::from(body.clone()))
                    .unwrap();
                let reply = send(&app, from_page(request, origin, site)).await;
                let message = reply.expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);
                assert!(message.contains("cross-site"), "{message}");
            }
            for uri in ["/sync?group=g", "/events?group=g"] {
                let reply = send(&app, from_page(get(uri), origin, site)).await;
                reply.expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);
            }
        }
        assert_eq!(snapshot(&service).await, before);

        // The same page's own requests, and clients that are not browsers, pass.
        for (origin, site) in [
            (Some("http://127.0.0.1:3000"), Some("same-origin")),
            (Some("http://127.0.0.1:3000"), None),
            (None, Some("same-origin")),
            (None, None),
        ] {
            let reply = send(&app, from_page(get("/sync?group=g"), origin, site)).await;
            let _: PullResponse = reply.decode();
        }
        let request = from_page(
            post(push_body(
                "g",
                "own",
                vec![change(1, "a", 1, Some("\"mine\""))],
            )),
            Some("http://127.0.0.1:3000"),
            Some("same-origin"),
        );
        let pushed: PushResponse = send(&app, request).await.decode();
        assert!(matches!(pushed.results[0], ChangeResult::Accepted { .. }));
    }

    #[tokio::test]
    async fn the_origin_policy_of_the_service_decides_which_other_origins_pass() {
        let service = service().with_origin_policy(
            OriginPolicy::same_origin()
                .allow("https://app.example.com")
                .unwrap(),
        );
        let app = router(service.clone());
        let allowed = from_page(
            get("/sync?group=g"),
            Some("https://app.example.com"),
            Some("cross-site"),
        );
        let _: PullResponse = send(&app, allowed).await.decode();
        let other = from_page(
            get("/sync?group=g"),
            Some("https://other.example.com"),
            Some("same-site"),
        );
        send(&app, other)
            .await
            .expect_error(StatusCode::FORBIDDEN, ErrorCode::Forbidden);

        // Set on a clone, it holds for the router made before.
        service.clone().set_origin_policy(OriginPolicy::any());
        let anyone = from_page(
            get("/sync?group=g"),
            Some("https://other.example.com"),
            Some("cross-site"),
        );
        let _: PullResponse = send(&app, anyone).await.decode();
    }
}
