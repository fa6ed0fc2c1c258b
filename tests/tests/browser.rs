//! The demo in headless Chromium: IndexedDB persistence, two profiles
//! converging, offline edits, and rich values end to end.

use atomsync_tests::browser::{Browser, Demo};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_todos_survive_a_reload() {
    let demo = Demo::start().await;
    let browser = Browser::start().await;
    browser.open(&demo.url()).await;
    browser.add_todo("Buy milk", "home", "", "1").await;
    browser
        .wait_for("the todo to be listed", || async {
            browser.titles().await == ["Buy milk"]
        })
        .await;
    browser.client.refresh().await.expect("reload");
    browser.wait_ready().await;
    assert_eq!(browser.titles().await, ["Buy milk"]);
    // It is in IndexedDB, not only on the server.
    let stored = browser
        .js("return await new Promise((resolve, reject) => { \
               const open = indexedDB.open('atomsync:atomsync-demo'); \
               open.onerror = () => reject(open.error); \
               open.onsuccess = () => { \
                 const tx = open.result.transaction('docs'); \
                 const all = tx.objectStore('docs').getAll(); \
                 all.onsuccess = () => resolve(all.result); \
                 all.onerror = () => reject(all.error); }; })")
        .await;
    let records: Vec<String> = serde_json::from_value(stored).expect("string records");
    assert!(
        records.iter().any(|r| r.contains("\"Buy milk\"")),
        "IndexedDB holds the todo as S-expression text: {records:?}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_profiles_converge_and_a_delete_reaches_the_other() {
    let demo = Demo::start().await;
    let (a, b) = (Browser::start().await, Browser::start().await);
    a.open(&demo.url()).await;
    b.open(&demo.url()).await;
    a.add_todo("Shared", "", "", "1").await;
    b.wait_for("b to see a's todo", || async {
        b.titles().await == ["Shared"]
    })
    .await;
    // Same key on both sides: b toggles, a sees it.
    let key_a = a.todo_row("Shared").await.expect("row")["key"].clone();
    let key_b = b.todo_row("Shared").await.expect("row")["key"].clone();
    assert_eq!(key_a, key_b);
    b.click_in_row("Shared", ".toggle").await;
    a.wait_for("a to see b's toggle", || async {
        a.todo_row("Shared")
            .await
            .is_some_and(|r| r["done"] == true)
    })
    .await;
    b.click_in_row("Shared", ".delete").await;
    a.wait_for("a to see b's delete", || async {
        a.titles().await.is_empty()
    })
    .await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_survive_a_reload_and_arrive_after_the_server_restarts() {
    let mut demo = Demo::start().await;
    let (a, b) = (Browser::start().await, Browser::start().await);
    a.open(&demo.url()).await;
    b.open(&demo.url()).await;

    demo.stop().await;
    a.add_todo("Written offline", "", "", "1").await;
    a.add_todo("Also offline", "", "", "1").await;
    a.wait_for("both offline writes to be pending", || async {
        a.pending().await == Some(2)
    })
    .await;
    // Reloading while the server is down loses nothing: the page cannot even
    // load, but the writes are in IndexedDB.
    let _ = a.client.refresh().await;

    demo.restart().await;
    a.open(&demo.url()).await;
    a.wait_for("the offline writes to be pushed", || async {
        a.pending().await == Some(0)
    })
    .await;
    b.wait_for("b to receive the offline writes", || async {
        let mut titles = b.titles().await;
        titles.sort();
        titles == ["Also offline", "Written offline"]
    })
    .await;
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rich_values_survive_indexeddb_and_the_wire() {
    let demo = Demo::start().await;
    let (a, b) = (Browser::start().await, Browser::start().await);
    a.open(&demo.url()).await;
    b.open(&demo.url()).await;
    a.add_todo("Rich", "zeta, alpha zeta", "2026-12-24", "5e-324")
        .await;
    let expected_bits = 5e-324f64.to_bits().to_string();
    let check = |row: serde_json::Value| {
        assert_eq!(
            row["tags"],
            serde_json::json!(["alpha", "zeta"]),
            "a set, sorted"
        );
        assert_eq!(row["due"], "2026-12-24");
        assert_eq!(row["weightBits"], expected_bits.as_str());
    };
    b.wait_for("b to receive the rich todo", || async {
        b.todo_row("Rich").await.is_some()
    })
    .await;
    check(b.todo_row("Rich").await.expect("row"));
    // And from IndexedDB after a reload.
    b.client.refresh().await.expect("reload");
    b.wait_ready().await;
    check(b.todo_row("Rich").await.expect("row after reload"));
    a.close().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_html_already_shows_todos_of_other_clients() {
    let demo = Demo::start().await;
    let writer = Browser::start().await;
    writer.open(&demo.url()).await;
    writer
        .add_todo("Rendered on the server", "ssr", "", "1")
        .await;
    writer
        .wait_for("the todo to reach the server", || async {
            writer.pending().await == Some(0) && !writer.titles().await.is_empty()
        })
        .await;

    // The first paint: the HTML as served, before any script runs.
    let html = demo.get("/").await;
    assert!(
        html.contains("Rendered on the server"),
        "the served HTML lists the todo:\n{html}"
    );

    // A fresh profile (empty IndexedDB) hydrates it without trouble.
    let reader = Browser::start().await;
    reader.open(&demo.url()).await;
    assert_eq!(reader.titles().await, ["Rendered on the server"]);
    writer.close().await;
    reader.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_share_writes_offline_and_hand_the_sync_over() {
    let mut demo = Demo::start().await;
    let tabs = Browser::start().await;
    tabs.open(&demo.url()).await;
    let first = tabs.client.window().await.expect("first tab");
    let second = tabs
        .client
        .new_window(true)
        .await
        .expect("second tab")
        .handle;
    tabs.client
        .switch_to_window(second.clone())
        .await
        .expect("switch");
    tabs.open(&demo.url()).await;

    // Offline: the tabs still see each other's writes at once.
    demo.stop().await;
    tabs.add_todo("From tab two", "", "", "1").await;
    tabs.client
        .switch_to_window(first.clone())
        .await
        .expect("switch");
    tabs.wait_for("the first tab to see the second's write", || async {
        tabs.titles().await == ["From tab two"]
    })
    .await;
    tabs.add_todo("From tab one", "", "", "1").await;
    tabs.client
        .switch_to_window(second.clone())
        .await
        .expect("switch");
    tabs.wait_for("the second tab to see the first's write", || async {
        let mut titles = tabs.titles().await;
        titles.sort();
        titles == ["From tab one", "From tab two"]
    })
    .await;

    // Close the leading (first) tab; the second takes the sync over and
    // pushes what both tabs wrote once the server is back.
    tabs.client.switch_to_window(first).await.expect("switch");
    tabs.client
        .close_window()
        .await
        .expect("close the first tab");
    tabs.client.switch_to_window(second).await.expect("switch");
    demo.restart().await;
    tabs.wait_for("the remaining tab to push everything", || async {
        tabs.pending().await == Some(0)
    })
    .await;

    // The server holds each todo exactly once, at version 1: no change was
    // applied twice.
    let pulled = demo.get("/atomsync/sync?group=todo").await;
    assert_eq!(pulled.matches("(version . 1)").count(), 2, "{pulled}");
    assert!(!pulled.contains("(version . 2)"), "{pulled}");
    let other = Browser::start().await;
    other.open(&demo.url()).await;
    other
        .wait_for("another profile to receive both", || async {
            other.titles().await.len() == 2
        })
        .await;
    tabs.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tabs_that_loaded_the_same_pending_write_push_it_once() {
    let mut demo = Demo::start().await;
    let tabs = Browser::start().await;
    tabs.open(&demo.url()).await;
    demo.stop().await;
    tabs.add_todo("Pending in both tabs", "", "", "1").await;
    tabs.wait_for("the write to be pending", || async {
        tabs.pending().await == Some(1)
    })
    .await;
    // A second tab loads the same pending write from IndexedDB (its page
    // comes from the restarted server, whose push route is up again).
    demo.restart().await;
    let second = tabs.client.new_window(true).await.expect("tab").handle;
    tabs.client.switch_to_window(second).await.expect("switch");
    tabs.open(&demo.url()).await;
    tabs.wait_for("the write to be pushed", || async {
        tabs.pending().await == Some(0)
    })
    .await;
    // Give a second pusher every chance to show up.
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let received = demo.get("/demo/changes-received").await;
    assert_eq!(received.trim(), "1", "the change was received once");
    tabs.close().await;
}
