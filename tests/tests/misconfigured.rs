//! A Leptos app set up wrong says so, once, in the server log and in the
//! browser's `status().last_error`: the demo started without its
//! `.nest("/atomsync", ..)` or without `provide_sync_service`
//! (`ATOMSYNC_DEMO_FORGET`), driven in headless Chromium.

use atomsync_tests::browser::{Browser, Build, Demo};

/// The text of the status bar's error (`status().last_error`).
async fn last_error(browser: &Browser) -> String {
    browser
        .js("return document.querySelector('#error').textContent")
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_routes_are_reported_in_the_log_and_the_status() {
    let demo = Demo::start_with(Build::demo(), &[("ATOMSYNC_DEMO_FORGET", "routes")]).await;
    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    browser
        .wait_for("the status to report the event stream's 404", || async {
            last_error(&browser).await.contains("answered 404")
        })
        .await;
    let error = last_error(&browser).await;
    assert!(
        error.contains("GET /atomsync/events answered 404")
            && error.contains(r#".nest("/atomsync", atomsync_server::router(service.clone()))"#)
            && error.contains("polling every 2000 ms"),
        "{error}"
    );
    // It stays while the hook syncs by polling (a write goes through).
    browser.add_todo("Still syncs", "", "", "1").await;
    browser
        .wait_for("the todo to reach the server", || async {
            browser.pending().await == Some(0) && !browser.titles().await.is_empty()
        })
        .await;
    assert!(last_error(&browser).await.contains("answered 404"));
    let console = browser.console_errors().await;
    assert_eq!(
        console
            .iter()
            .filter(|e| e.contains("answered 404, so"))
            .count(),
        1,
        "once in the console, for both groups of the demo: {console:#?}"
    );

    // The server log says it once, however many pages are rendered.
    browser.client.refresh().await.expect("reload");
    browser.wait_ready().await;
    let log = demo.log();
    let said = "the SyncService given to provide_sync_service has no routes";
    assert_eq!(log.matches(said).count(), 1, "{log}");
    assert!(
        log.contains(r#".nest("/atomsync", atomsync_server::router(service.clone()))"#),
        "{log}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_sync_service_is_reported_in_the_log_and_the_status() {
    let demo = Demo::start_with(Build::demo(), &[("ATOMSYNC_DEMO_FORGET", "service")]).await;
    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    browser
        .wait_for("the status to report the missing service", || async {
            last_error(&browser)
                .await
                .contains("no SyncService in context")
        })
        .await;
    let error = last_error(&browser).await;
    assert!(
        error.contains("atomsync_leptos::provide_sync_service(service.clone())")
            && error.contains("leptos_routes_with_context"),
        "{error}"
    );
    // Writes stay pending (not lost), and the message stays.
    browser.add_todo("Kept", "", "", "1").await;
    browser
        .wait_for("the todo to be listed", || async {
            browser.titles().await == ["Kept"]
        })
        .await;
    browser.client.refresh().await.expect("reload");
    browser.wait_ready().await;
    browser
        .wait_for("the message after the reload", || async {
            last_error(&browser)
                .await
                .contains("no SyncService in context")
        })
        .await;
    assert_eq!(browser.pending().await, Some(1));
    // The server log says it once, after several pulls and pushes.
    let log = demo.log();
    assert_eq!(log.matches("no SyncService in context").count(), 1, "{log}");
    browser.close().await;
}
