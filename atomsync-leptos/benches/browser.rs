//! The hook in headless Chromium against raw IndexedDB (issue 5's
//! measurements), with the raw IndexedDB cost of the same records measured
//! in the same run:
//!
//! - local write → visible to a reader, in an atom of 10,000 documents;
//! - cold start from IndexedDB (10,000 documents of ~100 bytes) → `ready`;
//! - bulk persist of 10,000 documents.
//!
//! Run (see BENCHMARKS.md; `--bench` makes the runner run this file's
//! `wasm_bindgen_bench` function and print its console output):
//!
//! ```sh
//! cd atomsync-leptos && CHROMEDRIVER=$(command -v chromedriver) \
//!   CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
//!   WASM_BINDGEN_TEST_TIMEOUT=600 \
//!   cargo bench -p atomsync-leptos --features hydrate --target wasm32-unknown-unknown --bench browser
//! ```
//!
//! It prints a table and asserts nothing about time (only that the data
//! arrived, so a broken hook cannot produce a fast figure).

#![cfg(target_arch = "wasm32")]

use std::collections::BTreeSet;

use atomsync_core::engine::{Batch, Meta, StoredDoc};
use atomsync_core::protocol::Cursor;
use atomsync_core::sexpr::Raw;
use atomsync_leptos::browser::{random_id, sleep};
use atomsync_leptos::idb_store::LocalDb;
use atomsync_leptos::{
    Endpoint, SyncedAtom, UseSyncedAtomOptions, provide_atomsync, use_synced_atom_with_options,
};
use js_sys::{Array, Function, Promise, Reflect};
use leptos::prelude::*;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

/// Documents per atom.
const DOCS: usize = 10_000;
/// Writes timed for write → visible.
const WRITES: usize = 200;
/// Timed rounds of the cold start (after one untimed warm-up round).
const COLD_ROUNDS: usize = 7;
/// Timed rounds of the bulk persists (after one untimed warm-up round).
const BULK_ROUNDS: usize = 5;
const GROUP: &str = "todo";

/// The demo's document type: about 100 bytes as S-expression text.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Todo {
    title: String,
    done: bool,
    tags: BTreeSet<String>,
    due: Option<i64>,
    weight: f64,
}

fn todo(i: usize) -> Todo {
    Todo {
        title: format!("Buy oat milk and bread, item {i:05}"),
        done: i.is_multiple_of(3),
        tags: ["errand".to_owned(), "home".to_owned()].into(),
        due: Some(1_767_225_600_000 + i as i64 * 60_000),
        weight: 0.5 + i as f64,
    }
}

fn key(i: usize) -> String {
    format!("k{i:05}")
}

fn now() -> f64 {
    web_sys::window()
        .and_then(|w| w.performance())
        .expect("window.performance")
        .now()
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
    let rank = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[rank]
}

fn log(line: &str) {
    web_sys::console::log_1(&line.into());
}

/// Raw IndexedDB from plain JavaScript: the baselines, plus a "barrier" that
/// resolves once every earlier readwrite transaction of a database has
/// committed (a read-only transaction over the same stores is scheduled after
/// them, also from another connection).
const RAW_JS: &str = r#"
const STORES = ['docs', 'pending', 'conflicts', 'meta'];
const req = (r) => new Promise((resolve, reject) => {
  r.onsuccess = () => resolve(r.result);
  r.onerror = () => reject(r.error);
});
const done = (tx) => new Promise((resolve, reject) => {
  tx.oncomplete = () => resolve();
  tx.onerror = () => reject(tx.error);
  tx.onabort = () => reject(tx.error || new Error('aborted'));
});
const open = (name) => new Promise((resolve, reject) => {
  const r = indexedDB.open(name, 1);
  r.onupgradeneeded = () => {
    for (const s of STORES) if (!r.result.objectStoreNames.contains(s)) r.result.createObjectStore(s);
  };
  r.onsuccess = () => resolve(r.result);
  r.onerror = () => reject(r.error);
});
const groupRange = (group) => IDBKeyRange.bound([group], [group, []]);
return {
  open,
  close(db) { db.close(); },
  remove(name) {
    return new Promise((resolve) => {
      const r = indexedDB.deleteDatabase(name);
      r.onsuccess = r.onerror = r.onblocked = () => resolve();
    });
  },
  // Cold start baseline: open the database and getAll the group's documents.
  async coldGetAll(name, group) {
    const t0 = performance.now();
    const db = await open(name);
    const all = await req(db.transaction('docs').objectStore('docs').getAll(groupRange(group)));
    const ms = performance.now() - t0;
    db.close();
    let bytes = 0;
    for (const v of all) bytes += v.length;
    return [ms, all.length, bytes];
  },
  // Every record of `stores` in database `from`, put into database `to` in
  // one readwrite transaction; only the transaction is timed.
  async copy(from, to, stores) {
    const src = await open(from);
    const dump = [];
    for (const s of stores) {
      const tx = src.transaction(s);
      const [keys, values] = await Promise.all([
        req(tx.objectStore(s).getAllKeys()), req(tx.objectStore(s).getAll())]);
      dump.push([s, keys, values]);
    }
    src.close();
    const dst = await open(to);
    let records = 0;
    const t0 = performance.now();
    const tx = dst.transaction(stores, 'readwrite');
    for (const [s, keys, values] of dump) {
      const store = tx.objectStore(s);
      for (let i = 0; i < keys.length; i++) store.put(values[i], keys[i]);
      records += keys.length;
    }
    await done(tx);
    const ms = performance.now() - t0;
    dst.close();
    return [ms, records];
  },
  // One document record of database `from`, by key.
  async record(from, group, key) {
    const db = await open(from);
    const value = await req(db.transaction('docs').objectStore('docs').get([group, key]));
    db.close();
    return value;
  },
  // One put in its own readwrite transaction, then the barrier: the time a
  // raw write takes to be durable, measured as the hook's writes are.
  async putOne(db, probe, group, key, value) {
    const t0 = performance.now();
    const tx = db.transaction('docs', 'readwrite');
    tx.objectStore('docs').put(value, [group, key]);
    const issued = performance.now() - t0;
    const check = probe.transaction(['docs', 'pending', 'meta']);
    check.objectStore('meta').count();
    await done(check);
    return [issued, performance.now() - t0];
  },
  async barrier(db) {
    const tx = db.transaction(['docs', 'pending', 'meta']);
    tx.objectStore('meta').count();
    await done(tx);
  },
};
"#;

/// The raw IndexedDB helpers of [`RAW_JS`].
struct RawIdb(JsValue);

impl RawIdb {
    fn new() -> RawIdb {
        RawIdb(
            Function::new_no_args(RAW_JS)
                .call0(&JsValue::NULL)
                .expect("raw helpers"),
        )
    }

    async fn call(&self, method: &str, args: &[JsValue]) -> JsValue {
        let f: Function = Reflect::get(&self.0, &method.into())
            .expect("method")
            .unchecked_into();
        let result = f
            .apply(&self.0, &args.iter().collect::<Array>())
            .unwrap_or_else(|e| panic!("{method}: {e:?}"));
        JsFuture::from(Promise::resolve(&result))
            .await
            .unwrap_or_else(|e| panic!("{method}: {e:?}"))
    }

    async fn numbers(&self, method: &str, args: &[JsValue]) -> Vec<f64> {
        let array: Array = self.call(method, args).await.unchecked_into();
        array
            .iter()
            .map(|v| v.as_f64().expect("a number"))
            .collect()
    }
}

/// A database name for this run.
fn fresh(what: &str) -> String {
    format!("bench-{what}-{}", random_id(6))
}

/// Writes 10,000 server documents to the group (as a pull of them would)
/// through `LocalDb::apply` in one batch; returns the time it took.
async fn seed(app: &str) -> f64 {
    let mut batch = Batch {
        meta: Some(Meta {
            group: GROUP.to_owned(),
            client_id: format!("{app}-seed"),
            cursor: Some(Cursor::new("bench".to_owned(), DOCS as u64)),
            resyncing: false,
            next_mutation: 1,
            next_conflict: 1,
        }),
        ..Batch::default()
    };
    for i in 0..DOCS {
        let value = Raw::from_value(&todo(i)).expect("encodes");
        batch.docs.insert(
            key(i),
            Some(StoredDoc {
                value: Some(value),
                version: i as u64 + 1,
                epoch: None,
            }),
        );
    }
    let db = LocalDb::open(app).await.expect("open");
    let t0 = now();
    db.apply(GROUP, &batch, &[], None)
        .expect("transaction")
        .await
        .expect("commit");
    now() - t0
}

/// Calls the hook in a new owner and waits until it is ready; returns the
/// atom, its owner and the time from the call to `ready`.
async fn start_atom(app: &str) -> (SyncedAtom<Todo>, Owner, f64) {
    let owner = Owner::new_root(None);
    owner.set();
    provide_atomsync(app.to_owned());
    let ready_at = RwSignal::new(None::<f64>);
    let t0 = now();
    let atom = use_synced_atom_with_options::<Todo>(
        GROUP,
        UseSyncedAtomOptions::default().endpoint(Endpoint::None),
    );
    let ready = atom.status().ready;
    // Effects run in a microtask right after the task that set `ready`.
    Effect::new(move |_| {
        if ready.get() && ready_at.get_untracked().is_none() {
            ready_at.set(Some(now()));
        }
    });
    let at = loop {
        if let Some(at) = ready_at.get_untracked() {
            break at;
        }
        sleep(2).await;
    };
    if let Some(error) = atom.status().last_error.get_untracked() {
        panic!("the atom reported an error: {error}");
    }
    (atom, owner, at - t0)
}

/// A markdown table row.
fn row(cells: &[String]) {
    log(&format!("| {} |", cells.join(" | ")));
}

#[wasm_bindgen_bench]
async fn hook_vs_raw_indexeddb(_c: &mut Criterion) {
    let _ = any_spawner::Executor::init_wasm_bindgen();
    let raw = RawIdb::new();
    log(&format!(
        "atomsync-leptos in {}",
        web_sys::window()
            .and_then(|w| w.navigator().user_agent().ok())
            .unwrap_or_default()
    ));
    let mut results = Vec::new();

    // ---------- cold start ----------
    let app = fresh("cold");
    let db_name = format!("atomsync:{app}");
    seed(&app).await;
    let (mut hook_ms, mut raw_ms) = (Vec::new(), Vec::new());
    let mut bytes = 0.0;
    let mut last = None;
    for round in 0..=COLD_ROUNDS {
        let r = raw
            .numbers("coldGetAll", &[db_name.as_str().into(), GROUP.into()])
            .await;
        assert_eq!(r[1] as usize, DOCS, "raw getAll sees every document");
        bytes = r[2];
        let (atom, owner, ms) = start_atom(&app).await;
        assert_eq!(atom.with_untracked(|d| d.len()), DOCS, "all documents load");
        if round > 0 {
            raw_ms.push(r[0]);
            hook_ms.push(ms);
        }
        if round == COLD_ROUNDS {
            last = Some((atom, owner));
        } else {
            owner.cleanup();
        }
    }
    let cold_hook = median(&mut hook_ms);
    let cold_raw = median(&mut raw_ms);
    log(&format!(
        "cold start: {DOCS} records of {:.0} bytes on average (key + StoredDoc S-expression)",
        bytes / DOCS as f64
    ));
    results.push([
        format!("cold start, {DOCS} documents → `ready` (median of {COLD_ROUNDS})"),
        format!("{cold_hook:.1} ms"),
        format!("open + `getAll` of the same records: {cold_raw:.1} ms"),
        format!("{:.2}× (raw / hook)", cold_raw / cold_hook),
        "< 150 ms".to_owned(),
    ]);

    // ---------- write → visible, in the atom of 10,000 documents ----------
    let (atom, owner) = last.expect("the last cold start's atom");
    owner.set();
    let watched = RwSignal::new(key(0));
    let reader = Memo::new(move |_| atom.with(|docs| docs.get(&watched.get()).map(|t| t.weight)));
    let probe = raw.call("open", &[db_name.as_str().into()]).await;
    let raw_app = fresh("put");
    let raw_db = raw
        .call("open", &[format!("atomsync:{raw_app}").into()])
        .await;
    let record = raw
        .call(
            "record",
            &[db_name.as_str().into(), GROUP.into(), key(1).into()],
        )
        .await;
    let (mut visible, mut durable, mut raw_issue, mut raw_durable) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..WRITES + 10 {
        let k = key((i * 37) % DOCS);
        watched.set(k.clone());
        let before = reader.get_untracked();
        let weight = -(i as f64) - 0.25;
        assert_ne!(before, Some(weight));
        let t0 = now();
        atom.update_key(&k, |t| t.weight = weight);
        let seen = reader.get_untracked();
        let t1 = now();
        raw.call("barrier", std::slice::from_ref(&probe)).await;
        let t2 = now();
        assert_eq!(seen, Some(weight), "the reader sees the write");
        let r = raw
            .numbers(
                "putOne",
                &[
                    raw_db.clone(),
                    raw_db.clone(),
                    GROUP.into(),
                    k.as_str().into(),
                    record.clone(),
                ],
            )
            .await;
        // The first writes warm up.
        if i >= 10 {
            visible.push(t1 - t0);
            durable.push(t2 - t0);
            raw_issue.push(r[0]);
            raw_durable.push(r[1]);
        }
    }
    assert_eq!(atom.status().pending.get_untracked(), WRITES + 10);
    let (vis, vis95) = (median(&mut visible), percentile(&mut visible, 0.95));
    let dur = median(&mut durable);
    let (issue, rdur) = (median(&mut raw_issue), median(&mut raw_durable));
    results.push([
        format!("local write (`update_key`) → a `Memo` sees it, atom of {DOCS} (median of {WRITES}; p95 {vis95:.3} ms)"),
        format!("{vis:.3} ms"),
        format!("raw `put` of one record, issued (transaction + put call): {issue:.3} ms; committed: {rdur:.2} ms"),
        format!("{:.1}× faster than a raw committed put", rdur / vis),
        "< 1 ms".to_owned(),
    ]);
    results.push([
        format!("local write → committed in IndexedDB (median of {WRITES})"),
        format!("{dur:.2} ms"),
        format!("raw `put` of one record → committed: {rdur:.2} ms"),
        format!("{:.2}× (raw / hook)", rdur / dur),
        "—".to_owned(),
    ]);
    raw.call("close", std::slice::from_ref(&probe)).await;
    raw.call("close", std::slice::from_ref(&raw_db)).await;
    owner.cleanup();
    raw.call("remove", &[format!("atomsync:{raw_app}").into()])
        .await;

    // ---------- bulk persist: LocalDb::apply of one batch ----------
    let (mut apply_ms, mut copy_ms) = (Vec::new(), Vec::new());
    for round in 0..=BULK_ROUNDS {
        let app = fresh("apply");
        let ms = seed(&app).await;
        let copy = fresh("copy");
        let r = raw
            .numbers(
                "copy",
                &[
                    format!("atomsync:{app}").into(),
                    format!("atomsync:{copy}").into(),
                    Array::of1(&"docs".into()).into(),
                ],
            )
            .await;
        assert_eq!(r[1] as usize, DOCS);
        if round > 0 {
            apply_ms.push(ms);
            copy_ms.push(r[0]);
        }
        raw.call("remove", &[format!("atomsync:{app}").into()])
            .await;
        raw.call("remove", &[format!("atomsync:{copy}").into()])
            .await;
    }
    let (apply, copy) = (median(&mut apply_ms), median(&mut copy_ms));
    results.push([
        format!(
            "bulk persist, {DOCS} documents in one batch (`LocalDb::apply`, encoding included; median of {BULK_ROUNDS})"
        ),
        format!("{apply:.1} ms ({:.0} docs/s)", DOCS as f64 / apply * 1000.0),
        format!(
            "raw `put`s of the same records in one transaction: {copy:.1} ms ({:.0} docs/s)",
            DOCS as f64 / copy * 1000.0
        ),
        format!("**{:.2}×** (throughput)", copy / apply),
        "≥ 0.5×".to_owned(),
    ]);

    // ---------- bulk persist: 10,000 inserts through the hook ----------
    let (mut visible_ms, mut hook_ms, mut same_ms, mut docs_ms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut records = 0.0;
    for round in 0..=BULK_ROUNDS {
        let app = fresh("insert");
        let name = format!("atomsync:{app}");
        let (atom, owner, _) = start_atom(&app).await;
        let probe = raw.call("open", &[name.as_str().into()]).await;
        let values: Vec<(String, Todo)> = (0..DOCS).map(|i| (key(i), todo(i))).collect();
        let t0 = now();
        atom.update(|docs| {
            for (k, v) in values {
                docs.insert(k, v);
            }
        });
        let t1 = now();
        raw.call("barrier", std::slice::from_ref(&probe)).await;
        let t2 = now();
        assert_eq!(atom.status().pending.get_untracked(), DOCS);
        raw.call("close", std::slice::from_ref(&probe)).await;
        owner.cleanup();
        // The same records (pending queue + meta), and the documents alone.
        let copy = fresh("copy");
        let same = raw
            .numbers(
                "copy",
                &[
                    name.as_str().into(),
                    format!("atomsync:{copy}").into(),
                    ["pending", "meta"]
                        .iter()
                        .map(|s| JsValue::from_str(s))
                        .collect::<Array>()
                        .into(),
                ],
            )
            .await;
        records = same[1];
        let seeded = fresh("docs");
        seed(&seeded).await;
        let copy_docs = fresh("copy");
        let docs = raw
            .numbers(
                "copy",
                &[
                    format!("atomsync:{seeded}").into(),
                    format!("atomsync:{copy_docs}").into(),
                    Array::of1(&"docs".into()).into(),
                ],
            )
            .await;
        if round > 0 {
            visible_ms.push(t1 - t0);
            hook_ms.push(t2 - t0);
            same_ms.push(same[0]);
            docs_ms.push(docs[0]);
        }
        for db in [&app, &copy, &seeded, &copy_docs] {
            raw.call("remove", &[format!("atomsync:{db}").into()]).await;
        }
    }
    let (vis, hook) = (median(&mut visible_ms), median(&mut hook_ms));
    let (same, docs) = (median(&mut same_ms), median(&mut docs_ms));
    results.push([
        format!(
            "bulk persist, {DOCS} inserts in one `update` through the hook → committed (median of {BULK_ROUNDS}; visible after {vis:.1} ms)"
        ),
        format!("{hook:.1} ms ({:.0} docs/s)", DOCS as f64 / hook * 1000.0),
        format!(
            "raw `put`s in one transaction of the {records:.0} records it wrote (queue + meta): {same:.1} ms; of {DOCS} document records: {docs:.1} ms"
        ),
        format!(
            "**{:.2}×** vs the document records ({:.2}× vs the same records)",
            docs / hook,
            same / hook
        ),
        "≥ 0.5×".to_owned(),
    ]);

    log("");
    row(&[
        "workload".to_owned(),
        "atomsync-leptos".to_owned(),
        "raw IndexedDB (same run)".to_owned(),
        "ratio".to_owned(),
        "goal".to_owned(),
    ]);
    row(&vec!["---".to_owned(); 5]);
    for r in &results {
        row(r);
    }
    raw.call("remove", &[db_name.as_str().into()]).await;
}
