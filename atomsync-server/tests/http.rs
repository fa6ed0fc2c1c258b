//! End-to-end tests of the `atomsync-server` binary over real HTTP on
//! 127.0.0.1 with an ephemeral port.

mod common;

use std::time::Duration;

use atomsync_core::protocol::{
    CONTENT_TYPE, ChangeResult, Cursor, ErrorCode, PullResponse, PushResponse,
};
use atomsync_core::sexpr;
use common::{ServerProcess, change, client, decode_error, http_push, push_request, raw};

async fn pull(client: &reqwest::Client, url: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

async fn decode<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> T {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], CONTENT_TYPE);
    sexpr::from_slice(&response.bytes().await.unwrap()).unwrap()
}

/// Reads server-sent events until one with data arrives.
async fn next_event(response: &mut reqwest::Response, buffer: &mut String) -> String {
    loop {
        if let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                return data.to_owned();
            }
            continue;
        }
        let chunk = tokio::time::timeout(Duration::from_secs(10), response.chunk())
            .await
            .expect("no event in time")
            .unwrap()
            .expect("the stream ended");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn push_pull_and_events_over_http_and_data_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let db = db.to_str().unwrap();
    let client = client();

    let mut server = ServerProcess::start(&["--db", db]);
    let mut events = client
        .get(server.url("/events?group=todo"))
        .send()
        .await
        .unwrap();
    assert_eq!(events.status(), 200);
    let mut buffer = String::new();
    let initial: Cursor = next_event(&mut events, &mut buffer).await.parse().unwrap();
    assert_eq!(initial.seq, 0);

    let request = push_request(
        "todo",
        "c1",
        vec![
            change(1, "milk", 0, Some("((title . \"Buy milk\") (done . #f))")),
            change(2, "eggs", 0, Some("((title . \"Eggs\") (done . #t))")),
        ],
    );
    let pushed: PushResponse =
        decode(http_push(&client, &server.url("/sync"), None, &request).await).await;
    assert!(
        pushed
            .results
            .iter()
            .all(|r| matches!(r, ChangeResult::Accepted { .. }))
    );
    assert_eq!(pushed.cursor.epoch, initial.epoch);
    let poke: Cursor = next_event(&mut events, &mut buffer).await.parse().unwrap();
    assert_eq!(poke, pushed.cursor);

    let page: PullResponse =
        decode(pull(&client, &server.url("/sync?group=todo"), None).await).await;
    assert_eq!(page.documents.len(), 2);
    assert_eq!(
        page.documents[0].value,
        Some(raw("((title . \"Buy milk\") (done . #f))"))
    );

    // A graceful stop (SIGTERM) with an event stream open.
    let status = server.terminate();
    assert!(status.success(), "{status}");
    drop(events);

    // Same file, positional form: same data, same epoch.
    let server = ServerProcess::start_with(&["0", db]);
    let again: PullResponse =
        decode(pull(&client, &server.url("/sync?group=todo"), None).await).await;
    assert_eq!(again, page);
    let since = format!("/sync?group=todo&since={}", page.cursor);
    let empty: PullResponse = decode(pull(&client, &server.url(&since), None).await).await;
    assert!(empty.documents.is_empty());
    // The retried push is recognised after the restart.
    let retried: PushResponse =
        decode(http_push(&client, &server.url("/sync"), None, &request).await).await;
    assert_eq!(retried, pushed);
}

#[tokio::test]
async fn a_users_file_guards_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.toml");
    std::fs::write(
        &users,
        "[users.alice]\ntoken = \"abc123\"\ngroups = [\"todo\", \"settings\"]\n",
    )
    .unwrap();
    let db = dir.path().join("data.db");
    let server = ServerProcess::start(&[
        "--db",
        db.to_str().unwrap(),
        "--users",
        users.to_str().unwrap(),
    ]);
    let client = client();
    let request = push_request("todo", "c", vec![change(1, "k", 0, Some("1"))]);

    for token in [None, Some("wrong")] {
        let response = pull(&client, &server.url("/sync?group=todo"), token).await;
        assert_eq!(response.status(), 401);
        let response = http_push(&client, &server.url("/sync"), token, &request).await;
        assert_eq!(response.status(), 401);
        let error = decode_error(&response.bytes().await.unwrap());
        assert_eq!(error.error, ErrorCode::Unauthorized);
        let response = pull(&client, &server.url("/events?group=todo"), token).await;
        assert_eq!(response.status(), 401);
    }
    let other = push_request("work", "c", vec![change(1, "k", 0, Some("1"))]);
    assert_eq!(
        pull(&client, &server.url("/sync?group=work"), Some("abc123"))
            .await
            .status(),
        403
    );
    assert_eq!(
        http_push(&client, &server.url("/sync"), Some("abc123"), &other)
            .await
            .status(),
        403
    );
    assert_eq!(
        pull(&client, &server.url("/events?group=work"), Some("abc123"))
            .await
            .status(),
        403
    );
    let pushed: PushResponse =
        decode(http_push(&client, &server.url("/sync"), Some("abc123"), &request).await).await;
    assert!(matches!(
        pushed.results[0],
        ChangeResult::Accepted { version: 1, .. }
    ));
}

#[tokio::test]
async fn bad_input_over_http_is_4xx_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let server = ServerProcess::start(&["--db", db.to_str().unwrap(), "--max-body", "2048"]);
    let client = client();
    let post = |body: Vec<u8>| {
        client
            .post(server.url("/sync"))
            .header("content-type", CONTENT_TYPE)
            .body(body)
            .send()
    };
    let response = post(b"((group . \"g\") (client_id . ".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = post(vec![b'('; 2000]).await.unwrap();
    assert_eq!(response.status(), 400);
    let response = post(vec![0xff; 100]).await.unwrap();
    assert_eq!(response.status(), 400);
    let big = sexpr::to_string(&push_request(
        "g",
        "c",
        vec![change(
            1,
            "k",
            0,
            Some(&format!("\"{}\"", "x".repeat(3000))),
        )],
    ))
    .unwrap();
    let response = post(big.into_bytes()).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(
        decode_error(&response.bytes().await.unwrap()).error,
        ErrorCode::TooLarge
    );
    let response = pull(
        &client,
        &server.url("/sync?group=g&since=elsewhere.5"),
        None,
    )
    .await;
    assert_eq!(response.status(), 409);
    let page: PullResponse = decode(pull(&client, &server.url("/sync?group=g"), None).await).await;
    assert!(page.documents.is_empty());
    assert_eq!(page.cursor.seq, 0);
}

#[tokio::test]
async fn cors_only_for_configured_origins() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data.db");
    let client = client();
    let preflight = |url: String| {
        client
            .request(reqwest::Method::OPTIONS, url)
            .header("origin", "https://app.example")
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "content-type, authorization",
            )
            .send()
    };

    let server = ServerProcess::start(&["--db", db.to_str().unwrap()]);
    let response = preflight(server.url("/sync")).await.unwrap();
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    drop(server);

    let server = ServerProcess::start(&[
        "--db",
        db.to_str().unwrap(),
        "--allow-origin",
        "https://app.example",
    ]);
    let response = preflight(server.url("/sync")).await.unwrap();
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    // The allowed origin passes the cross-site check too.
    let response = client
        .get(server.url("/sync?group=g"))
        .header("origin", "https://app.example")
        .header("sec-fetch-site", "cross-site")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // Another origin gets neither CORS headers nor an answer (403: the same
    // --allow-origin list feeds the cross-site check).
    let response = client
        .get(server.url("/sync?group=g"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 403);
    assert!(
        response
            .headers()
            .get("access-control-allow-origin")
            .is_none()
    );
    let body = decode_error(&response.bytes().await.unwrap());
    assert_eq!(body.error, ErrorCode::Forbidden);
    assert!(body.message.contains("cross-site"), "{}", body.message);
}

#[test]
fn the_binary_explains_itself_and_refuses_bad_arguments() {
    let bin = env!("CARGO_BIN_EXE_atomsync-server");
    let help = std::process::Command::new(bin)
        .arg("--help")
        .output()
        .unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--port",
        "--db",
        "--users",
        "--bind",
        "--allow-origin",
        "--max-body",
        "--header-timeout",
        "--body-timeout",
        "--idle-timeout",
        "--max-connections",
        "--max-subscribers",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let out = std::process::Command::new(bin)
        .args(["--port", "0", "--db"])
        .arg(dir.path().join("x.db"))
        .arg("--users")
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("users file"));
    let out = std::process::Command::new(bin)
        .args(["8090", "--port", "8091"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a port given twice is an error");
}
