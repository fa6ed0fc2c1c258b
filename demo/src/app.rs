//! The demo's views.

use std::collections::BTreeSet;

use atomsync_leptos::{SyncedAtom, provide_atomsync, use_synced_atom};
use leptos::prelude::*;
use leptos_meta::{MetaTags, Stylesheet, Title, provide_meta_context};
use serde::{Deserialize, Serialize};

/// One todo: the kinds of values atomsync keeps exact end to end.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Todo {
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
    /// Tags, as a set.
    pub tags: BTreeSet<String>,
    /// Due date as a Unix timestamp in milliseconds.
    pub due: Option<i64>,
    /// Any float, kept to the bit (try `1e-308` or `-0`).
    pub weight: f64,
}

/// App-wide settings, synced in their own group.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Settings {
    /// Whether finished todos are listed.
    pub show_done: bool,
}

/// The HTML shell rendered by the server.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
                <MetaTags />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

/// The todo app.
#[component]
pub fn App() -> impl IntoView {
    provide_meta_context();
    provide_atomsync("atomsync-demo");
    let todos = use_synced_atom::<Todo>("todo");
    let settings = use_synced_atom::<Settings>("settings");
    let show_done = move || settings.with(|s| s.get("main").is_none_or(|s| s.show_done));

    view! {
        <Stylesheet id="leptos" href="/pkg/demo.css" />
        <Title text="atomsync todos" />
        <main>
            <h1>"atomsync todos"</h1>
            <StatusBar todos />
            <NewTodo todos />
            <label class="setting">
                <input
                    type="checkbox"
                    id="show-done"
                    prop:checked=show_done
                    on:change=move |ev| {
                        let show_done = event_target_checked(&ev);
                        settings.insert("main".to_owned(), Settings { show_done });
                    }
                />
                " show finished"
            </label>
            // Inside <Suspense/>: the server renders the group's current
            // documents, and the browser hydrates from the same data.
            <Suspense fallback=|| view! { <p>"Loading…"</p> }>
                <ul id="todos">
                    <For
                        each=move || {
                            todos
                                .with(|docs| {
                                    docs.iter()
                                        .filter(|(_, t)| show_done() || !t.done)
                                        .map(|(k, _)| k.clone())
                                        .collect::<Vec<_>>()
                                })
                        }
                        key=|key| key.clone()
                        let:key
                    >
                        <TodoItem todos key />
                    </For>
                </ul>
            </Suspense>
        </main>
    }
}

/// Online state, pending writes, last sync and conflicts.
#[component]
fn StatusBar(todos: SyncedAtom<Todo>) -> impl IntoView {
    let status = todos.status();
    view! {
        <footer id="status" class="status">
            <span id="ready" data-ready=move || status.ready.get().to_string()>
                {move || if status.ready.get() { "loaded" } else { "loading…" }}
            </span>
            <span id="leader" title="the tab that syncs; other tabs of this app go through it">
                {move || if status.leader.get() { "syncing tab" } else { "" }}
            </span>
            <span id="online" class:offline=move || !status.online.get()>
                {move || if status.online.get() { "online" } else { "offline" }}
            </span>
            <span id="pending" data-pending=move || status.pending.get().to_string()>
                {move || format!("{} pending", status.pending.get())}
            </span>
            <span id="synced">
                {move || match status.last_synced.get() {
                    Some(ms) => format!("synced {}", format_time(ms)),
                    None => "never synced".to_owned(),
                }}
            </span>
            <span id="conflicts">{move || format!("{} conflicts", status.conflicts.with(Vec::len))}</span>
            <span id="error">{move || status.last_error.get().unwrap_or_default()}</span>
        </footer>
    }
}

fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02} UTC")
}

/// Parses `YYYY-MM-DD` (as an `<input type=date>` gives it) to a Unix timestamp in ms.
fn parse_date(text: &str) -> Option<i64> {
    let mut parts = text.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, d) = (parts.next()??, parts.next()??, parts.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    Some((era * 146_097 + doe - 719_468) * 86_400_000)
}

/// `x` in its shortest form that parses back to the same bits: plain
/// decimals for magnitudes from 1e-4 to below 1e16 (`0.1`, `1`, `-0`,
/// `123.5`), scientific notation outside it (`1e-308`, not 308 digits;
/// `1.7976931348623157e308`), so that a weight always fits its row.
pub fn format_float(x: f64) -> String {
    let magnitude = x.abs();
    if x == 0.0 || !x.is_finite() || (1e-4..1e16).contains(&magnitude) {
        // `Display` is the shortest round trip too, without an exponent.
        x.to_string()
    } else {
        format!("{x:e}")
    }
}

fn format_date(ms: i64) -> String {
    let z = ms.div_euclid(86_400_000) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

fn parse_tags(text: &str) -> BTreeSet<String> {
    text.split([',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// A fresh key for a new todo: time plus randomness, so two offline
/// browsers never pick the same one.
fn new_key() -> String {
    #[cfg(target_arch = "wasm32")]
    {
        let now = js_sys_now();
        let random = (js_sys_random() * 1e12) as u64;
        format!("{now:013}-{random:012x}")
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        format!("native-{}", NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

#[cfg(target_arch = "wasm32")]
fn js_sys_now() -> u64 {
    atomsync_leptos::browser::now_ms()
}

#[cfg(target_arch = "wasm32")]
fn js_sys_random() -> f64 {
    atomsync_leptos::browser::random()
}

/// The form adding a todo.
#[component]
fn NewTodo(todos: SyncedAtom<Todo>) -> impl IntoView {
    let title = RwSignal::new(String::new());
    let tags = RwSignal::new(String::new());
    let due = RwSignal::new(String::new());
    let weight = RwSignal::new(String::from("1"));
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let text = title.get_untracked().trim().to_owned();
        if text.is_empty() {
            return;
        }
        let todo = Todo {
            title: text,
            done: false,
            tags: parse_tags(&tags.get_untracked()),
            due: parse_date(&due.get_untracked()),
            weight: weight.get_untracked().trim().parse().unwrap_or(1.0),
        };
        todos.insert(new_key(), todo);
        title.set(String::new());
        tags.set(String::new());
    };
    view! {
        <form id="new-todo" on:submit=add>
            <input id="new-title" placeholder="What needs doing?" bind:value=title />
            <input id="new-tags" placeholder="tags, comma separated" bind:value=tags />
            <input id="new-due" type="date" bind:value=due />
            <input id="new-weight" placeholder="weight" bind:value=weight />
            <button id="add" type="submit">"Add"</button>
        </form>
    }
}

/// One todo: toggle, edit, delete.
#[component]
fn TodoItem(todos: SyncedAtom<Todo>, key: String) -> impl IntoView {
    let editing = RwSignal::new(false);
    let todo = {
        let key = key.clone();
        Memo::new(move |_| todos.with(|docs| docs.get(&key).cloned()))
    };
    let key = StoredValue::new(key);
    let toggle = move |_| key.with_value(|k| todos.update_key(k, |t| t.done = !t.done));
    let remove = move |_| {
        key.with_value(|k| todos.remove(k));
    };
    let save = move |ev: leptos::ev::KeyboardEvent| {
        if ev.key() == "Enter" {
            let text = event_target_value(&ev);
            key.with_value(|k| todos.update_key(k, |t| t.title = text.trim().to_owned()));
            editing.set(false);
        } else if ev.key() == "Escape" {
            editing.set(false);
        }
    };
    let title = move || todo.with(|t| t.as_ref().map(|t| t.title.clone()).unwrap_or_default());
    view! {
        <li class="todo" data-key=key.get_value() class:done=move || todo.with(|t| t.as_ref().is_some_and(|t| t.done))>
            <input
                type="checkbox"
                class="toggle"
                prop:checked=move || todo.with(|t| t.as_ref().is_some_and(|t| t.done))
                on:change=toggle
            />
            <Show
                when=move || editing.get()
                fallback=move || view! {
                    <span class="title" on:dblclick=move |_| editing.set(true)>{title}</span>
                }
            >
                <input class="edit" value=title on:keydown=save />
            </Show>
            <span class="tags">
                {move || {
                    todo.with(|t| {
                        t.as_ref()
                            .map(|t| {
                                t.tags
                                    .iter()
                                    .map(|tag| view! { <span class="tag">{tag.clone()}</span> })
                                    .collect_view()
                            })
                    })
                }}
            </span>
            <span class="due">
                {move || todo.with(|t| t.as_ref().and_then(|t| t.due).map(format_date).unwrap_or_default())}
            </span>
            <span
                class="weight"
                data-bits=move || todo.with(|t| t.as_ref().map(|t| t.weight.to_bits().to_string()).unwrap_or_default())
            >
                {move || todo.with(|t| t.as_ref().map(|t| format_float(t.weight)).unwrap_or_default())}
            </span>
            <button class="edit-button" on:click=move |_| editing.set(true)>"Edit"</button>
            <button class="delete" on:click=remove>"Delete"</button>
        </li>
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        for text in ["1970-01-01", "2026-11-25", "2000-02-29", "1969-12-31"] {
            let ms = parse_date(text).unwrap();
            assert_eq!(format_date(ms), text);
        }
        assert_eq!(parse_date("1970-01-02"), Some(86_400_000));
        assert_eq!(parse_date("2026-13-01"), None);
        assert_eq!(parse_date("nope"), None);
    }

    #[test]
    fn floats_are_shown_in_their_shortest_exact_form() {
        let cases = [
            (1e-308, "1e-308"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e308"),
            (-2.5e-300, "-2.5e-300"),
            (1e16, "1e16"),
            (1e-5, "1e-5"),
            (1e-4, "0.0001"),
            (0.1, "0.1"),
            (1.0, "1"),
            (-0.0, "-0"),
            (0.0, "0"),
            (123.456, "123.456"),
            (9_007_199_254_740_992.0, "9007199254740992"),
            (f64::INFINITY, "inf"),
            (f64::NEG_INFINITY, "-inf"),
        ];
        for (x, text) in cases {
            assert_eq!(format_float(x), text, "{x:?}");
        }
        assert_eq!(format_float(f64::NAN), "NaN");
        // Every finite float: short, and the same bits back.
        let mut bits: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..100_000 {
            bits = bits.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let x = f64::from_bits(bits);
            if !x.is_finite() {
                continue;
            }
            let text = format_float(x);
            assert!(text.len() <= 24, "{text} is too long");
            assert_eq!(
                text.parse::<f64>().unwrap().to_bits(),
                x.to_bits(),
                "{text}"
            );
        }
    }

    #[test]
    fn tags_are_a_set() {
        let tags = parse_tags("home, work home  ,x");
        assert_eq!(tags.into_iter().collect::<Vec<_>>(), ["home", "work", "x"]);
    }
}
