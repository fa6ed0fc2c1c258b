//! Live update latency (issue 6): a todo added in one headless Chromium
//! profile, until another profile's DOM shows it, over loopback with the demo
//! server. Prints a table; asserts nothing about time.
//!
//! ```sh
//! cargo leptos build                                # the demo (scripts/test.sh does it too)
//! cargo bench -p atomsync-tests --bench live
//! ```
//!
//! Clock: both profiles read `performance.timeOrigin + performance.now()`,
//! the same machine clock at sub-millisecond resolution. The write's time is
//! taken in A's page right before the form is submitted; B records the time
//! in a `MutationObserver` callback, i.e. as soon as the title is in its DOM
//! (before paint).
//!
//! Baselines of the same run, on the same server and browsers:
//! - the server's announcement: a plain `EventSource` on `/atomsync/events`
//!   in B, receiving the `cursor` event of the same write (A's push reached
//!   the server and the server told B): what is left of the figure above it
//!   is B's pull, decoding and rendering;
//! - one plain HTTP round trip: `fetch` of a pull of the group in A. Live
//!   delivery needs at least two (A's push, B's pull) plus the event.
//!
//! `cargo test --all-targets` also runs this file (without `--bench`): it then
//! returns at once.

use std::time::{Duration, Instant};

use atomsync_tests::browser::{Browser, Demo};

/// Timed writes (after a few untimed warm-up writes).
const WRITES: usize = 30;
const WARM_UP: usize = 3;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("live: a benchmark; run it with `cargo bench -p atomsync-tests --bench live`");
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(run());
}

/// Watches B's list and the server's event stream.
const WATCH: &str = r#"
const now = () => performance.timeOrigin + performance.now();
window.__seen = {};
window.__events = [];
const record = () => {
  for (const el of document.querySelectorAll('#todos li .title')) {
    const t = el.textContent;
    if (t.startsWith('live ') && !(t in window.__seen)) window.__seen[t] = now();
  }
};
new MutationObserver(record).observe(document.body, { subtree: true, childList: true, characterData: true });
const events = new EventSource('/atomsync/events?group=todo');
events.addEventListener('cursor', () => window.__events.push(now()));
return await new Promise((resolve) => { events.onopen = () => resolve(true); });
"#;

/// Adds a todo through A's form; returns the time right before the submit.
fn add(title: &str) -> String {
    format!(
        r#"
const set = (id, value) => {{
  const el = document.getElementById(id);
  el.value = value;
  el.dispatchEvent(new Event('input', {{ bubbles: true }}));
}};
set('new-title', {title:?});
set('new-tags', '');
set('new-weight', '1');
const t = performance.timeOrigin + performance.now();
document.getElementById('add').click();
return t;
"#
    )
}

/// Times `n` pulls of the group over the plain HTTP route.
fn fetches(n: usize) -> String {
    format!(
        r#"
const times = [];
for (let i = 0; i < {n}; i++) {{
  const t0 = performance.now();
  const r = await fetch('/atomsync/sync?group=todo', {{ cache: 'no-store' }});
  await r.text();
  times.push(performance.now() - t0);
  await new Promise((resolve) => setTimeout(resolve, 20));
}}
return times;
"#
    )
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if !n.is_multiple_of(2) {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn percentile(values: &mut [f64], p: f64) -> f64 {
    values.sort_by(f64::total_cmp);
    values[((values.len() as f64 - 1.0) * p).round() as usize]
}

fn number(value: &serde_json::Value) -> f64 {
    value.as_f64().expect("a number")
}

async fn run() {
    let demo = Demo::start().await;
    let (a, b) = (Browser::start().await, Browser::start().await);
    a.open(&demo.url()).await;
    b.open(&demo.url()).await;
    b.js(WATCH).await;

    let (mut live, mut announced) = (Vec::new(), Vec::new());
    for i in 0..WARM_UP + WRITES {
        let title = format!("live {i:03}");
        let written = number(&a.js(&add(&title)).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        let seen = loop {
            let seen = b
                .js(&format!("return window.__seen[{title:?}] ?? null"))
                .await;
            if let Some(seen) = seen.as_f64() {
                break seen;
            }
            assert!(
                Instant::now() < deadline,
                "B never showed {title:?}: {}",
                b.js("return document.body.innerText").await
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let event = b
            .js(&format!(
                "return window.__events.find((t) => t >= {written}) ?? null"
            ))
            .await
            .as_f64();
        if i >= WARM_UP {
            live.push(seen - written);
            if let Some(event) = event {
                announced.push(event - written);
            }
        }
        // Let both sides settle (A's pull of its own write, B's) before the next.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut rtt: Vec<f64> = serde_json::from_value(a.js(&fetches(WRITES)).await).expect("times");

    let (live_median, live_p90) = (median(&mut live), percentile(&mut live, 0.9));
    let (live_min, live_max) = (live[0], live[live.len() - 1]);
    let event = median(&mut announced);
    let rtt = median(&mut rtt);
    println!();
    println!("| workload | atomsync | baseline (same run) | ratio | goal |");
    println!("|---|---|---|---|---|");
    println!(
        "| a todo added in profile A → in profile B's DOM, median of {WRITES} (p90 {live_p90:.1} ms, min {live_min:.1}, max {live_max:.1}) | {live_median:.1} ms | the server's `cursor` event for the same write reaches a plain `EventSource` in B: {event:.1} ms ({} of {WRITES} seen) | {:.2}× (event / live) | < 100 ms |",
        announced.len(),
        event / live_median
    );
    println!(
        "| — | — | one plain HTTP round trip (`fetch` of a pull of the group, in A), median of {WRITES}: {rtt:.2} ms | {:.1} round trips | — |",
        live_median / rtt
    );
    a.close().await;
    b.close().await;
}
