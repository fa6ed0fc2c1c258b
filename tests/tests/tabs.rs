//! Tabs of one browser in headless Chromium (the demo): no write any tab
//! showed is lost when leaders close, follower writes wait in IndexedDB's
//! outbox while no tab leads, and on a non-secure origin (no Web Locks) the
//! tabs share one queue through a lease instead of overwriting each other.

use atomsync_tests::browser::{Browser, Demo};
use fantoccini::wd::WindowHandle;

/// The demo's app name and group: the Web Lock a leader holds.
const LOCK: &str = "atomsync:atomsync-demo:todo";

/// Opens `url` in a new tab and switches to it.
async fn new_tab(browser: &Browser, url: &str) -> WindowHandle {
    let handle = browser
        .client
        .new_window(true)
        .await
        .expect("a new tab")
        .handle;
    browser
        .client
        .switch_to_window(handle.clone())
        .await
        .expect("switch");
    browser.open(url).await;
    handle
}

async fn switch(browser: &Browser, tab: &WindowHandle) {
    browser
        .client
        .switch_to_window(tab.clone())
        .await
        .expect("switch");
}

/// Closes `tab` (the current one) and switches to `next`.
async fn close_tab(browser: &Browser, tab: &WindowHandle, next: &WindowHandle) {
    switch(browser, tab).await;
    browser.client.close_window().await.expect("close the tab");
    switch(browser, next).await;
}

/// Whether this tab shows itself as the syncing (leading) tab.
async fn leads(browser: &Browser) -> bool {
    browser
        .js("return document.querySelector('#leader').innerText")
        .await
        == serde_json::json!("syncing tab")
}

/// Every title the server holds (a pull of the whole group).
async fn server_titles(demo: &Demo, titles: &[String]) -> Vec<String> {
    let pulled = demo.get("/atomsync/sync?group=todo&limit=1000").await;
    titles
        .iter()
        .filter(|t| pulled.contains(&format!("\"{t}\"")))
        .cloned()
        .collect()
}

/// Finding 3 of #9: a follower writes while no tab leads (the old leader
/// closed; the lock is held by a page that is not atomsync, so no follower
/// can take over) and then closes too. The write waits in IndexedDB's outbox
/// and the next leader pushes it. Before the outbox, it was posted to a
/// channel nobody handled, and gone with the tab.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_write_made_while_no_tab_leads_is_synced_by_the_next_leader() {
    let demo = Demo::start().await;
    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    let leader = browser.client.window().await.expect("the first tab");
    assert!(leads(&browser).await);
    // A same-origin page that is not the app queues for the lock first.
    let hog = browser.client.new_window(true).await.expect("a tab").handle;
    switch(&browser, &hog).await;
    browser
        .client
        .goto(&format!("{}pkg/demo.css", demo.url()))
        .await
        .expect("open a static page");
    browser
        .js(&format!(
            "navigator.locks.request('{LOCK}', () => new Promise(() => {{}})); return true"
        ))
        .await;
    let follower = new_tab(&browser, &demo.url()).await;
    assert!(!leads(&browser).await);

    // The leader closes: the hog gets the lock, so nobody leads.
    close_tab(&browser, &leader, &follower).await;
    browser
        .add_todo("Written while nobody leads", "", "", "1")
        .await;
    browser
        .wait_for("the follower to show its write", || async {
            browser.titles().await == ["Written while nobody leads"]
        })
        .await;
    // Give the write time to reach IndexedDB, then close the follower and
    // the hog: no tab of the app is left.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let blank = browser.client.new_window(true).await.expect("a tab").handle;
    close_tab(&browser, &follower, &hog).await;
    close_tab(&browser, &hog, &blank).await;

    // A new tab leads, finds the write in the outbox and pushes it.
    browser.open(&demo.url()).await;
    assert!(leads(&browser).await);
    browser
        .wait_for("the write to be pushed", || async {
            browser.pending().await == Some(0)
                && browser.titles().await == ["Written while nobody leads"]
        })
        .await;
    let title = vec!["Written while nobody leads".to_owned()];
    assert_eq!(server_titles(&demo, &title).await, title);
    browser.close().await;
}

/// Finding 3 of #9, the race itself: three tabs; the leader closes and a
/// follower writes at once, before the other follower has taken over. The
/// write is shown, survives the hand-over and reaches the server; both
/// followers end up showing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_writing_as_the_leader_closes_loses_nothing() {
    let demo = Demo::start().await;
    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    let leader = browser.client.window().await.expect("the first tab");
    assert!(leads(&browser).await);
    let first = new_tab(&browser, &demo.url()).await;
    let second = new_tab(&browser, &demo.url()).await;
    assert!(!leads(&browser).await);

    // Close the leader and write in the second follower straight away.
    close_tab(&browser, &leader, &second).await;
    browser
        .add_todo("Written at the hand-over", "", "", "1")
        .await;
    browser
        .wait_for("the follower to show its write", || async {
            browser.titles().await == ["Written at the hand-over"]
        })
        .await;
    for tab in [&first, &second] {
        switch(&browser, tab).await;
        browser
            .wait_for("every tab to show the write, pushed", || async {
                browser.titles().await == ["Written at the hand-over"]
                    && browser.pending().await == Some(0)
            })
            .await;
    }
    let title = vec!["Written at the hand-over".to_owned()];
    assert_eq!(server_titles(&demo, &title).await, title);
    browser.close().await;
}

/// Finding 5 of #9: on a plain-http origin that is not localhost there are
/// no Web Locks. Two tabs write offline; both writes survive both tabs
/// closing and reach the server once it is back. Before the lease, both tabs
/// led with one client id and put their pending writes under the same
/// IndexedDB keys (mutation 1), so one write overwrote the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_on_a_non_secure_origin_share_one_queue() {
    let mut demo = Demo::start().await;
    let browser = Browser::start_with_args(&["--host-resolver-rules=MAP app.test 127.0.0.1"]).await;
    let url = format!("http://app.test:{}/", demo.port());
    browser.open(&url).await;
    let first = browser.client.window().await.expect("the first tab");
    assert_eq!(
        browser
            .js("return [window.isSecureContext, typeof navigator.locks]")
            .await,
        serde_json::json!([false, "undefined"]),
        "app.test is a non-secure origin without Web Locks"
    );
    let second = new_tab(&browser, &url).await;
    switch(&browser, &first).await;
    browser
        .wait_for("the first tab to lead", || async { leads(&browser).await })
        .await;
    switch(&browser, &second).await;
    assert!(!leads(&browser).await, "one tab leads");

    demo.stop().await;
    browser.add_todo("From the second tab", "", "", "1").await;
    switch(&browser, &first).await;
    browser.add_todo("From the first tab", "", "", "1").await;
    browser
        .wait_for("both writes in the leader's queue", || async {
            browser.pending().await == Some(2)
        })
        .await;
    // Both tabs go away; a new one (leading once the lease is released or
    // has passed) pushes both writes once the server is back.
    let blank = browser.client.new_window(true).await.expect("a tab").handle;
    close_tab(&browser, &first, &second).await;
    close_tab(&browser, &second, &blank).await;
    demo.restart().await;
    browser.open(&url).await;
    browser
        .wait_for("both writes to be pushed", || async {
            browser.pending().await == Some(0) && browser.titles().await.len() == 2
        })
        .await;
    let titles = vec![
        "From the first tab".to_owned(),
        "From the second tab".to_owned(),
    ];
    assert_eq!(server_titles(&demo, &titles).await, titles);
    browser.close().await;
}

/// Many rounds of tabs opening, closing (leaders included) and writing: the
/// end state holds every write any tab showed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_tab_churn_keeps_every_write_any_tab_showed() {
    let demo = Demo::start().await;
    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    let mut tabs = vec![browser.client.window().await.expect("the first tab")];
    let mut written = Vec::new();
    // A small xorshift: the same rounds every run, seed by environment.
    let mut state: u64 = std::env::var("ATOMSYNC_TAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x9e37_79b9_7f4a_7c15);
    let mut next = move |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let rounds: usize = std::env::var("ATOMSYNC_TAB_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(24);
    for round in 0..rounds {
        match next(4) {
            0 if tabs.len() < 4 => tabs.push(new_tab(&browser, &demo.url()).await),
            1 if tabs.len() > 1 => {
                let closing = tabs.remove(next(tabs.len()));
                let stay = next(tabs.len());
                close_tab(&browser, &closing, &tabs[stay]).await;
            }
            _ => {
                switch(&browser, &tabs[next(tabs.len())]).await;
                let title = format!("Round {round}");
                browser.add_todo(&title, "", "", "1").await;
                // The tab showed it: from now on it must not be lost.
                browser
                    .wait_for("the tab to show its write", || async {
                        browser.titles().await.contains(&title)
                    })
                    .await;
                written.push(title);
            }
        }
    }
    // Every tab converges, and so does the server.
    for tab in &tabs {
        switch(&browser, tab).await;
        browser
            .wait_for("every tab to show every write", || async {
                let titles = browser.titles().await;
                written.iter().all(|t| titles.contains(t))
            })
            .await;
    }
    browser
        .wait_for("everything to be pushed", || async {
            browser.pending().await == Some(0)
        })
        .await;
    assert_eq!(server_titles(&demo, &written).await, written);
    browser.close().await;
}
