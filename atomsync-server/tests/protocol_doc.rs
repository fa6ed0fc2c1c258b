//! The request and response examples of `docs/protocol.md` are real: this
//! test replays them against the router and checks the document shows exactly
//! what the server says. Run with `ATOMSYNC_BLESS_DOCS=1` to rewrite them.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use atomsync_core::protocol::CONTENT_TYPE;
use atomsync_server::{RouterOptions, SyncService, TokenFile, router_with_options};
use axum::Router;
use axum::body::Body;
use http::{Request, header};
use http_body_util::BodyExt;
use tower::ServiceExt;

use common::{change, push_body};

on_both_backends! {
    /// The epoch shown in the document instead of the random one.
    const EPOCH: &str = "5f0c9a1e7b3d4c2a9e8f1b6d0a4c7e21";

    struct Transcript {
        epoch: String,
        examples: Vec<(&'static str, String)>,
    }

    impl Transcript {
        async fn exchange(&mut self, app: &Router, name: &'static str, request: Request<Body>) {
            let mut text = format!("{} {} HTTP/1.1\n", request.method(), request.uri());
            for (name, value) in request.headers() {
                text += &format!(
                    "{}: {}\n",
                    title_case(name.as_str()),
                    value.to_str().unwrap()
                );
            }
            let (parts, body) = request.into_parts();
            let body = body.collect().await.unwrap().to_bytes();
            if !body.is_empty() {
                text += &format!("\n{}\n", String::from_utf8_lossy(&body));
            }
            let response = app
                .clone()
                .oneshot(Request::from_parts(parts, Body::from(body)))
                .await
                .unwrap();
            text += &format!("\nHTTP/1.1 {}\n", response.status());
            for name in [
                header::CONTENT_TYPE,
                header::WWW_AUTHENTICATE,
                header::RETRY_AFTER,
            ] {
                if let Some(value) = response.headers().get(&name) {
                    text += &format!(
                        "{}: {}\n",
                        title_case(name.as_str()),
                        value.to_str().unwrap()
                    );
                }
            }
            let body = response.into_body();
            let body = if name.starts_with("events") {
                // An endless stream: take its first two events.
                let mut body = body;
                let mut text = String::new();
                while text.matches("event: ").count() < 2 {
                    let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                        .await
                        .expect("no event in time")
                        .unwrap()
                        .unwrap();
                    if let Ok(data) = frame.into_data() {
                        text += std::str::from_utf8(&data).unwrap();
                    }
                }
                text.trim_end().to_owned()
            } else {
                String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap()
            };
            text += &format!("\n{body}");
            let text = text
                .replace(&self.epoch, EPOCH)
                .replace(&"x".repeat(1000), "xxxx…(1000 bytes of x)…xxxx");
            self.examples.push((name, text));
        }
    }

    fn title_case(name: &str) -> String {
        name.split('-')
            .map(|part| {
                let mut chars = part.chars();
                chars.next().map_or_else(String::new, |c| {
                    c.to_ascii_uppercase().to_string() + chars.as_str()
                })
            })
            .collect::<Vec<_>>()
            .join("-")
    }

    fn get(uri: &str) -> Request<Body> {
        Request::get(uri).body(Body::empty()).unwrap()
    }

    fn post(token: Option<&str>, body: impl Into<Body>) -> Request<Body> {
        let mut request = Request::post("/sync").header(header::CONTENT_TYPE, CONTENT_TYPE);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(body.into()).unwrap()
    }

    async fn transcript() -> Transcript {
        let service = SyncService::new(store());
        let app = router_with_options(service.clone(), RouterOptions::default().max_body(1024));
        let mut t = Transcript {
            epoch: service.epoch().to_owned(),
            examples: Vec::new(),
        };
        let cursor = |seq: u64| format!("{}.{seq}", service.epoch());

        t.exchange(&app, "pull-empty", get("/sync?group=todo"))
            .await;
        let first_push = push_body(
            "todo",
            "laptop-7f3a",
            vec![
                change(1, "milk", 0, Some(r#"((title . "Buy milk") (done . #f))"#)),
                change(
                    2,
                    "call-bob",
                    0,
                    Some(r#"((title . "Call Bob") (done . #f))"#),
                ),
            ],
        );
        t.exchange(&app, "push", post(None, first_push.clone()))
            .await;
        let second_push = push_body(
            "todo",
            "phone-19c2",
            vec![
                change(
                    1,
                    "milk",
                    1,
                    Some(r#"((title . "Buy oat milk") (done . #f))"#),
                ),
                change(
                    2,
                    "call-bob",
                    0,
                    Some(r#"((title . "Call Bob!") (done . #f))"#),
                ),
                change(3, "call-bob", 1, None),
            ],
        );
        t.exchange(&app, "push-conflict", post(None, second_push))
            .await;
        t.exchange(&app, "push-retry", post(None, first_push)).await;
        t.exchange(
            &app,
            "pull-page",
            get(&format!("/sync?group=todo&since={}&limit=1", cursor(0))),
        )
        .await;
        t.exchange(
            &app,
            "pull-since",
            get(&format!("/sync?group=todo&since={}", cursor(2))),
        )
        .await;
        // A change arrives while the events example listens.
        let pusher = service.clone();
        let delayed = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let request = common::push_request(
                "todo",
                "laptop-7f3a",
                vec![change(
                    3,
                    "milk",
                    2,
                    Some(r#"((title . "Buy oat milk") (done . #t))"#),
                )],
            );
            pusher.push(&common::anyone(), request).await.unwrap();
        });
        t.exchange(&app, "events", get("/events?group=todo")).await;
        delayed.await.unwrap();

        t.exchange(&app, "error-query", get("/sync?group=todo&limit=lots"))
            .await;
        t.exchange(
            &app,
            "error-syntax",
            post(None, r#"((group . "todo") (client_id . "x""#),
        )
        .await;
        t.exchange(
            &app,
            "error-shape",
            post(
                None,
                r#"((group . "todo") (client_id . "x") (changes . #(((key . "a")))))"#,
            ),
        )
        .await;
        t.exchange(
            &app,
            "error-media-type",
            Request::post("/sync")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
        let big = push_body(
            "todo",
            "x",
            vec![change(
                1,
                "big",
                0,
                Some(&format!("\"{}\"", "x".repeat(1000))),
            )],
        );
        t.exchange(&app, "error-too-large", post(None, big)).await;
        t.exchange(
            &app,
            "error-cross-site",
            Request::post("/sync")
                .header(header::HOST, "127.0.0.1:8090")
                .header(header::ORIGIN, "https://evil.example")
                .header("sec-fetch-site", "cross-site")
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(
                    r#"((group . "todo") (client_id . "x") (changes . #()))"#,
                ))
                .unwrap(),
        )
        .await;
        // A router whose event-stream slots are all taken (here: none at all).
        let full = router_with_options(service.clone(), RouterOptions::default().max_subscribers(0));
        t.exchange(&full, "error-busy", get("/events?group=todo"))
            .await;
        t.exchange(
            &app,
            "error-cursor",
            get("/sync?group=todo&since=0b9d2e6f1a7c4e3d8a5b2c1d0e9f8a7b.12"),
        )
        .await;
        // The phone lost its state and numbers again from 1.
        let reused = push_body(
            "todo",
            "phone-19c2",
            vec![change(
                1,
                "eggs",
                0,
                Some(r#"((title . "Buy eggs") (done . #f))"#),
            )],
        );
        t.exchange(&app, "error-mutation-reused", post(None, reused))
            .await;
        // The laptop's next push says everything below 4 is settled.
        let mut next = common::push_request(
            "todo",
            "laptop-7f3a",
            vec![change(
                4,
                "eggs",
                0,
                Some(r#"((title . "Buy eggs") (done . #f))"#),
            )],
        );
        next.low_water = Some(4);
        let next = atomsync_core::sexpr::to_string(&next).unwrap();
        t.exchange(&app, "push-low-water", post(None, next)).await;
        // The tombstone of call-bob (change 4) passes the horizon.
        service
            .call(|store| store.purge_tombstones(std::time::SystemTime::now() + Duration::from_secs(1)))
            .await
            .unwrap()
            .unwrap();
        t.exchange(
            &app,
            "error-cursor-purged",
            get(&format!("/sync?group=todo&since={}", cursor(3))),
        )
        .await;
        t.exchange(&app, "pull-after-purge", get("/sync?group=todo"))
            .await;

        // With a users file.
        let users = TokenFile::from_toml(
            "[users.alice]\ntoken = \"abc123\"\ngroups = [\"todo\", \"settings\"]\n",
        )
        .unwrap();
        let guarded = SyncService::with_authorizer(store(), users);
        let guarded_app = router_with_options(guarded.clone(), RouterOptions::default());
        t.epoch = guarded.epoch().to_owned();
        t.exchange(&guarded_app, "error-unauthorized", get("/sync?group=todo"))
            .await;
        let mut forbidden = get("/sync?group=work");
        forbidden
            .headers_mut()
            .insert(header::AUTHORIZATION, "Bearer abc123".parse().unwrap());
        t.exchange(&guarded_app, "error-forbidden", forbidden).await;
        t
    }

    fn doc_path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/protocol.md")
    }

    /// Replaces the code block after `<!-- example: NAME -->` with `text`.
    fn replace_block(doc: &str, name: &str, text: &str) -> Option<String> {
        let marker = format!("<!-- example: {name} -->\n");
        let start = doc.find(&marker)? + marker.len();
        let open = "```http\n";
        if !doc[start..].starts_with(open) {
            return None;
        }
        let body = start + open.len();
        let end = body + doc[body..].find("\n```")?;
        Some(format!("{}{}{}", &doc[..body], text, &doc[end..]))
    }

    #[tokio::test]
    async fn protocol_doc_examples_match_the_server() {
        let transcript = transcript().await;
        let path = doc_path();
        let doc = std::fs::read_to_string(&path).unwrap();
        let bless = std::env::var_os("ATOMSYNC_BLESS_DOCS").is_some();
        let mut updated = doc.clone();
        for (name, text) in &transcript.examples {
            match replace_block(&updated, name, text) {
                Some(new) => updated = new,
                None => panic!("docs/protocol.md has no block `<!-- example: {name} -->`:\n{text}"),
            }
        }
        if bless {
            std::fs::write(&path, updated).unwrap();
        } else {
            assert!(
                updated == doc,
                "docs/protocol.md is out of date; run with ATOMSYNC_BLESS_DOCS=1 and review the diff"
            );
        }
    }
}
