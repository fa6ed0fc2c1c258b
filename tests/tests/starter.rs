//! examples/starter, the README's "Add atomsync to your Leptos app" built as
//! a user's app (its own workspace, `cargo leptos build` in scripts/test.sh),
//! served and driven in headless Chromium.

use std::time::Duration;

use atomsync_tests::browser::{Browser, Build, Demo};

/// Adds a todo through the starter's form.
async fn add(browser: &Browser, title: &str) {
    browser.fill("#title", title).await;
    browser
        .js("document.querySelector('#add').click(); return true;")
        .await;
}

/// The console's errors, without the browser's own request for a favicon
/// (the starter has none: a 404 that is not the app's).
async fn app_errors(browser: &Browser) -> Vec<String> {
    browser
        .console_errors()
        .await
        .into_iter()
        .filter(|e| !e.contains("favicon.ico"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_todo_added_is_server_rendered_and_hydrated_after_a_reload() {
    let starter = Demo::start_with(Build::starter(), &[]).await;
    let browser = Browser::start().await;
    browser.open(&starter.url()).await;
    add(&browser, "Buy milk").await;
    browser
        .wait_for("the todo to reach the server", || async {
            browser.titles().await == ["Buy milk"] && browser.pending().await == Some(0)
        })
        .await;

    // Server-rendered: the HTML as served, before any script runs.
    let html = starter.get("/").await;
    assert!(
        html.contains(r#"<span class="title">Buy milk<"#),
        "the served HTML lists the todo:\n{html}"
    );

    // Hydrated: after a reload the page is live (the status says the local
    // data loaded, which only the browser's code does) and still works.
    browser.client.refresh().await.expect("reload");
    browser.wait_ready().await;
    assert_eq!(browser.titles().await, ["Buy milk"]);
    add(&browser, "Walk the dog").await;
    browser
        .wait_for("the second todo to reach the server", || async {
            browser.titles().await == ["Buy milk", "Walk the dog"]
                && browser.pending().await == Some(0)
        })
        .await;
    let errors = app_errors(&browser).await;
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    let log = starter.log();
    assert!(
        !log.contains("atomsync:"),
        "the server reports no misconfiguration:\n{log}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_starter_stops_on_ctrl_c_with_an_event_stream_open() {
    let mut starter = Demo::start_with(Build::starter(), &[]).await;
    let _stream = starter.open_event_stream("todo").await;
    let status = starter.interrupt(Duration::from_secs(5)).await;
    let status = status.expect("the server exits within 5 s of SIGINT with a stream open");
    assert!(status.success(), "{status:?}\n{}", starter.log());
}
