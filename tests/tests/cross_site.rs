//! Cross-site request forgery against the demo, in headless Chromium: a page
//! of another site tries every way a page can push without passing CORS,
//! and nothing is stored (issue #13).
//!
//! The demo runs on `http://127.0.0.1:PORT` and the user has a cookie there.
//! An attacker server in this test serves `attack.html`, opened from
//! `http://evil.test:PORT2` (another site: Chromium maps the name to
//! 127.0.0.1 with `--host-resolver-rules`) and from `http://127.0.0.1:PORT2`
//! (the same site, another origin: `Sec-Fetch-Site: same-site`). The page
//! sends a valid push to the server function (`/atomsync/push`) and to the
//! plain route (`/atomsync/sync`) as:
//!
//! - a form post with `enctype="text/plain"` whose body is the push followed
//!   by a comment (`PUSH ;=`), the classic trick to post any text;
//! - a form post, form-urlencoded;
//! - `fetch` with `mode: "no-cors"` and a `text/plain` body, and again asking
//!   for the protocol's content type (which `no-cors` does not allow);
//! - `fetch` in `cors` mode with the protocol's content type (needs a
//!   preflight, which the demo does not grant);
//! - `navigator.sendBeacon` with a `text/plain` blob.
//!
//! To show that the attacks are real, the page sends each of them to a
//! mirror too (`http://mirror.test:PORT2/mirror/...`, also another site),
//! which records what arrives: the test checks that the browser did send
//! them, cross-site, with bodies that decode as valid pushes (which a server
//! that decodes any body, as the server functions did before #13, would
//! have stored). The demo must store none of them.

use std::sync::{Arc, Mutex};

use atomsync_core::protocol::{CONTENT_TYPE, Change, PushRequest};
use atomsync_core::sexpr::{self, Raw};
use atomsync_tests::browser::{Browser, Demo};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::Html;
use axum::routing::{any, get};
use serde::{Deserialize, Serialize};

/// The arguments of the `push` server function, as its encoding sends them.
#[derive(Serialize, Deserialize)]
struct PushArgs {
    token: Option<String>,
    request: PushRequest,
}

fn push_request() -> PushRequest {
    PushRequest {
        group: "todo".to_owned(),
        client_id: "evil".to_owned(),
        changes: vec![Change {
            mutation: 1,
            key: "pwned".to_owned(),
            base_version: 0,
            value: Some(
                Raw::from_text(
                    "((title . \"pwned\") (done . #f) (tags . #()) (due . ()) (weight . 1.0))",
                )
                .unwrap(),
            ),
        }],
        low_water: None,
        epoch: None,
    }
}

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    content_type: String,
    origin: String,
    site: String,
    body: Bytes,
}

#[derive(Clone)]
struct Attacker {
    page: Arc<Mutex<String>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn page(State(attacker): State<Attacker>) -> Html<String> {
    Html(attacker.page.lock().unwrap().clone())
}

async fn mirror(
    State(attacker): State<Attacker>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> &'static str {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    attacker.seen.lock().unwrap().push(Seen {
        method,
        path: uri.path().to_owned(),
        content_type: header("content-type"),
        origin: header("origin"),
        site: header("sec-fetch-site"),
        body,
    });
    "ok"
}

const ATTACK: &str = r#"<!doctype html>
<html><body>
<script>
const ARGS = __ARGS__;
const PUSH = __PUSH__;
const results = [];
function formPost(url, enctype, name, value) {
  return new Promise(resolve => {
    const frame = document.createElement('iframe');
    frame.name = 'f' + Math.random().toString(36).slice(2);
    document.body.appendChild(frame);
    const form = document.createElement('form');
    form.method = 'POST'; form.action = url; form.enctype = enctype; form.target = frame.name;
    const input = document.createElement('input');
    input.type = 'hidden'; input.name = name; input.value = value;
    form.appendChild(input);
    document.body.appendChild(form);
    const timer = setTimeout(() => resolve('no load in 5 s'), 5000);
    frame.addEventListener('load', () => { clearTimeout(timer); resolve('loaded'); });
    form.submit();
  });
}
async function attack(base) {
  for (const [path, body] of [['/atomsync/push', ARGS], ['/atomsync/sync', PUSH]]) {
    const url = base + path;
    const run = async (name, f) => {
      try { results.push([name, url, String(await f())]); }
      catch (e) { results.push([name, url, 'error: ' + e]); }
    };
    await run('form text/plain', () => formPost(url, 'text/plain', body + ' ;', ''));
    await run('form urlencoded', () => formPost(url, 'application/x-www-form-urlencoded', 'x', body));
    await run('no-cors text/plain', () =>
      fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include', body}).then(r => r.type));
    await run('no-cors asking for the sexpr type', () =>
      fetch(url, {method: 'POST', mode: 'no-cors', credentials: 'include',
                  headers: {'Content-Type': 'application/x-atomsync-sexpr'}, body}).then(r => r.type));
    await run('cors with the sexpr type', () =>
      fetch(url, {method: 'POST', credentials: 'include',
                  headers: {'Content-Type': 'application/x-atomsync-sexpr'}, body}).then(r => r.status));
    await run('beacon', () => navigator.sendBeacon(url, new Blob([body], {type: 'text/plain'})));
  }
}
(async () => {
  await attack('__DEMO__');
  await attack('__MIRROR__');
  // Beacons are sent after the call returns: give them a moment.
  await new Promise(r => setTimeout(r, 1000));
  window.attackResults = results;
  window.attackDone = true;
})();
</script>
</body></html>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_another_site_cannot_push_to_the_demo() {
    let demo = Demo::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let attacker_port = listener.local_addr().unwrap().port();
    let args = sexpr::to_string(&PushArgs {
        token: None,
        request: push_request(),
    })
    .unwrap();
    let push = sexpr::to_string(&push_request()).unwrap();
    let page_text = ATTACK
        .replace("__ARGS__", &serde_json::to_string(&args).unwrap())
        .replace("__PUSH__", &serde_json::to_string(&push).unwrap())
        .replace("__DEMO__", demo.url().trim_end_matches('/'))
        .replace(
            "__MIRROR__",
            &format!("http://mirror.test:{attacker_port}/mirror"),
        );
    let attacker = Attacker {
        page: Arc::new(Mutex::new(page_text)),
        seen: Arc::new(Mutex::new(Vec::new())),
    };
    let app = Router::new()
        .route("/attack.html", get(page))
        .route("/mirror/{*rest}", any(mirror))
        .with_state(attacker.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let browser = Browser::start_with_args(&[
        "--host-resolver-rules=MAP evil.test 127.0.0.1, MAP mirror.test 127.0.0.1",
    ])
    .await;
    // The user is logged in to the demo: a cookie on its origin.
    browser.open(&demo.url()).await;
    let cookie = browser
        .js(
            "document.cookie = 'session=alice; path=/; SameSite=None; Secure'; \
             if (!document.cookie.includes('session=')) document.cookie = 'session=alice; path=/'; \
             return document.cookie;",
        )
        .await;
    assert!(
        cookie.as_str().unwrap_or("").contains("session=alice"),
        "{cookie}"
    );

    for attacker_origin in [
        format!("http://evil.test:{attacker_port}"),
        format!("http://127.0.0.1:{attacker_port}"),
    ] {
        attacker.seen.lock().unwrap().clear();
        browser
            .client
            .goto(&format!("{attacker_origin}/attack.html"))
            .await
            .expect("open the attack page");
        browser
            .wait_for("the attack page to finish", || async {
                browser.js("return window.attackDone === true").await == true
            })
            .await;
        let results = browser.js("return window.attackResults").await;
        let results = results.as_array().expect("results").clone();
        assert_eq!(results.len(), 24, "{results:?}");

        // The browser did send the attacks, cross-site, with valid pushes.
        let seen = attacker.seen.lock().unwrap().clone();
        let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == Method::POST).collect();
        for s in &seen {
            assert_eq!(s.origin, attacker_origin, "{s:?}");
            // Chromium sends Sec-Fetch-Site only to potentially trustworthy
            // URLs (https, localhost, 127.0.0.1), not to http://mirror.test:
            // there only Origin tells (step 3 of the OriginPolicy).
            assert!(s.site == "cross-site" || s.site.is_empty(), "{s:?}");
        }
        let text_plain_form = posts
            .iter()
            .find(|s| s.path == "/mirror/atomsync/push" && s.content_type.starts_with("text/plain"))
            .expect("a text/plain push reached the mirror");
        let decoded: PushArgs = sexpr::from_slice(&text_plain_form.body).unwrap_or_else(|e| {
            panic!(
                "the attack body is not a valid push ({e}): {}",
                String::from_utf8_lossy(&text_plain_form.body)
            )
        });
        assert_eq!(decoded.request.changes[0].key, "pwned");
        let valid_pushes = posts
            .iter()
            .filter(|s| s.path == "/mirror/atomsync/push")
            .filter(|s| sexpr::from_slice::<PushArgs>(&s.body).is_ok())
            .count();
        // Form text/plain, two no-cors fetches and a beacon, at least.
        assert!(valid_pushes >= 4, "{seen:?}");
        assert!(
            posts
                .iter()
                .all(|s| !s.content_type.starts_with(CONTENT_TYPE)),
            "a page sent the protocol's type cross-site: {seen:?}"
        );

        // The demo stored none of them, and no push reached its store.
        let pulled = demo.get("/atomsync/sync?group=todo").await;
        assert!(!pulled.contains("pwned"), "{attacker_origin}: {pulled}");
        assert_eq!(
            demo.get("/demo/changes-received").await.trim(),
            "0",
            "{attacker_origin}: {results:?}"
        );
    }

    // The demo's own page still syncs through the same server functions.
    browser.open(&demo.url()).await;
    browser.add_todo("Mine", "", "", "1").await;
    browser
        .wait_for("the demo's own write to reach the server", || async {
            demo.get("/atomsync/sync?group=todo").await.contains("Mine")
        })
        .await;
    browser.close().await;
    server.abort();
}
