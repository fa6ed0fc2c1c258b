//! The starter's views: a todo list kept in IndexedDB and synced.

use atomsync_leptos::{provide_atomsync, use_synced_atom};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};

/// One todo.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Todo {
    /// What to do.
    pub title: String,
    /// Whether it is done.
    pub done: bool,
}

/// The page the server renders around the app.
pub fn shell(options: LeptosOptions) -> impl IntoView {
    view! {
        <!DOCTYPE html>
        <html lang="en">
            <head>
                <meta charset="utf-8" />
                <meta name="viewport" content="width=device-width, initial-scale=1" />
                <AutoReload options=options.clone() />
                <HydrationScripts options />
            </head>
            <body>
                <App />
            </body>
        </html>
    }
}

// ANCHOR: app
/// The todo list.
#[component]
pub fn App() -> impl IntoView {
    provide_atomsync("starter"); // IndexedDB database `atomsync:starter`
    let todos = use_synced_atom::<Todo>("todo");
    let status = todos.status();
    let title = RwSignal::new(String::new());
    let add = move |ev: leptos::ev::SubmitEvent| {
        ev.prevent_default();
        let text = title.get_untracked().trim().to_owned();
        if !text.is_empty() {
            // The title is the key: adding it again replaces it.
            let todo = Todo {
                title: text.clone(),
                done: false,
            };
            todos.insert(text, todo);
            title.set(String::new());
        }
    };
    view! {
        <form on:submit=add>
            <input id="title" placeholder="What needs doing?" bind:value=title />
            <button id="add" type="submit">"Add"</button>
        </form>
        // Inside <Suspense/>, the server renders the group's documents into
        // the page, and the browser hydrates from the same data.
        <Suspense fallback=|| view! { <p>"Loading…"</p> }>
            <ul id="todos">
                {move || {
                    todos.with(|docs| {
                        docs.iter()
                            .map(|(key, todo)| {
                                let key = key.clone();
                                let toggle = move |_| todos.update_key(&key, |t| t.done = !t.done);
                                view! {
                                    <li>
                                        <input type="checkbox" prop:checked=todo.done on:change=toggle />
                                        <span class="title">{todo.title.clone()}</span>
                                    </li>
                                }
                            })
                            .collect_view()
                    })
                }}
            </ul>
        </Suspense>
        <p>
            <span id="ready" data-ready=move || status.ready.get().to_string()>
                {move || if status.ready.get() { "loaded" } else { "loading…" }}
            </span>
            " · "
            <span id="pending" data-pending=move || status.pending.get().to_string()>
                {move || format!("{} pending", status.pending.get())}
            </span>
            " · "
            <span id="error">{move || status.last_error.get().unwrap_or_default()}</span>
        </p>
    }
}
// ANCHOR_END: app
