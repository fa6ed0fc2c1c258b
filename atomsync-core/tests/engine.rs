//! Flows of the sans-IO sync engine against the in-memory server model.

use std::collections::BTreeMap;

use atomsync_core::engine::testing::{FakeServer, SimServer};
use atomsync_core::engine::{
    Backoff, Batch, Conflict, ConflictCause, ConflictPolicy, Effects, Engine, EngineError,
    EngineOptions, Failure, FailureKind, MAX_PASSES, MemoryStorage, Resolution, RoundEnd, Seen,
    Step, Storage, SyncRound,
};
use atomsync_core::protocol::{
    ChangeResult, Cursor, ErrorBody, ErrorCode, PullRequest, PullResponse, PushRequest,
    PushResponse,
};
use atomsync_core::sexpr::Raw;
use serde::{Deserialize, Serialize};

const GROUP: &str = "todo";

fn raw(text: &str) -> Raw {
    Raw::from_text(text).unwrap()
}

/// What a step did, after its batch was applied.
struct Applied {
    batch: Batch,
    changed: Vec<String>,
    conflicts: Vec<Conflict>,
}

/// An engine with its storage; every batch is applied at once, as an adapter
/// must.
struct Client {
    engine: Engine,
    storage: MemoryStorage,
    /// Every key reported changed, in order.
    changed: Vec<String>,
}

impl Client {
    fn new(id: &str) -> Self {
        Client::with_policy(id, ConflictPolicy::ServerWins)
    }

    fn with_policy(id: &str, policy: ConflictPolicy) -> Self {
        Client::with_options(id, EngineOptions::default().policy(policy))
    }

    fn with_options(id: &str, options: EngineOptions) -> Self {
        Client {
            engine: Engine::new(GROUP, id).unwrap().with_options(options),
            storage: MemoryStorage::default(),
            changed: Vec::new(),
        }
    }

    fn apply(&mut self, effects: Effects) -> Applied {
        self.storage.apply(&effects.batch).unwrap();
        self.changed.extend(effects.changed.iter().cloned());
        Applied {
            batch: effects.batch,
            changed: effects.changed,
            conflicts: effects.conflicts,
        }
    }

    fn set(&mut self, key: &str, text: &str) -> Applied {
        let effects = self.engine.set(key, raw(text)).unwrap();
        self.apply(effects)
    }

    fn delete(&mut self, key: &str) -> Applied {
        let effects = self.engine.delete(key).unwrap();
        self.apply(effects)
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.engine.get(key).map(Raw::as_str)
    }

    fn answer_push(&mut self, request: &PushRequest, response: PushResponse) -> Applied {
        let effects = self.engine.on_push_response(request, response);
        self.apply(effects)
    }

    fn answer_pull(&mut self, request: &PullRequest, response: PullResponse) -> Applied {
        let effects = self.engine.on_pull_response(request, response);
        self.apply(effects)
    }

    fn push(&mut self, server: &mut FakeServer) -> Applied {
        let request = self.engine.next_push(0).expect("something to push");
        let response = server.push(&request).unwrap();
        self.answer_push(&request, response)
    }

    fn pull(&mut self, server: &mut FakeServer) -> Applied {
        let request = self.engine.next_pull(0).expect("a pull");
        match server.pull(&request) {
            Ok(response) => self.answer_pull(&request, response),
            Err(body) => {
                let effects = self
                    .engine
                    .on_pull_error(&request, &Failure::Error(body), 0, 0.0);
                self.apply(effects)
            }
        }
    }

    fn visible(&self) -> BTreeMap<String, String> {
        self.engine
            .documents()
            .map(|(k, v)| (k.to_owned(), v.as_str().to_owned()))
            .collect()
    }
}

/// Pushes everything pending and pulls to the end.
/// (Nothing is pushed during a pull from the beginning after a reset, so a
/// reset client pulls, then pushes, then pulls again.)
fn sync(client: &mut Client, server: &mut FakeServer) {
    for _ in 0..5 {
        while let Some(request) = client.engine.next_push(0) {
            let response = server.push(&request).unwrap();
            client.answer_push(&request, response);
        }
        loop {
            client.pull(server);
            if !client.engine.wants_pull() {
                break;
            }
        }
        if !client.engine.wants_push() {
            return;
        }
    }
}

fn server_value(server: &FakeServer, key: &str) -> Option<(u64, Option<String>)> {
    server
        .document(GROUP, key)
        .map(|d| (d.version, d.value.map(Raw::into_string)))
}

#[test]
fn write_is_visible_at_once_persisted_with_its_queue_entry_and_acknowledged() {
    let mut server = FakeServer::new();
    let mut client = Client::new("a/todo");

    let effects = client.set("milk", "\"buy\"");
    assert_eq!(effects.changed, ["milk"]);
    assert_eq!(client.get("milk"), Some("\"buy\""));
    // The write and its queue entry are in one batch, with the meta state.
    let batch = &effects.batch;
    assert!(batch.meta.is_some());
    assert_eq!(batch.pending.len(), 1);
    let stored = client.storage.snapshot().unwrap();
    assert_eq!(stored.pending.len(), 1);
    assert_eq!(stored.pending[&1].value, Some(raw("\"buy\"")));

    let request = client.engine.next_push(0).unwrap();
    assert_eq!(request.group, GROUP);
    assert_eq!(request.client_id, "a/todo");
    assert_eq!(request.changes.len(), 1);
    assert_eq!(request.changes[0].mutation, 1);
    assert_eq!(request.changes[0].base_version, 0);
    assert!(client.engine.next_push(0).is_none(), "one push in flight");

    let response = server.push(&request).unwrap();
    let effects = client.answer_push(&request, response);
    assert!(
        effects.changed.is_empty(),
        "the visible value did not change"
    );
    assert_eq!(client.engine.pending_len(), 0);
    assert_eq!(client.engine.confirmed("milk").unwrap().version, 1);
    assert_eq!(client.get("milk"), Some("\"buy\""));
    assert_eq!(
        server_value(&server, "milk"),
        Some((1, Some("\"buy\"".into())))
    );
    // The storage holds exactly the engine's state.
    assert_eq!(client.storage.snapshot(), Some(&client.engine.snapshot()));
    assert!(client.engine.next_push(0).is_none());
}

#[test]
fn other_clients_see_writes_updates_and_deletes() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");

    a.set("x", "1");
    a.set("y", "2");
    sync(&mut a, &mut server);
    let effects = b.pull(&mut server);
    assert_eq!(effects.changed, ["x", "y"]);
    assert_eq!(b.visible(), a.visible());

    b.set("x", "10");
    b.delete("y");
    sync(&mut b, &mut server);
    assert_eq!(
        server_value(&server, "y"),
        Some((2, None)),
        "a tombstone with a version"
    );
    let effects = a.pull(&mut server);
    assert_eq!(effects.changed, ["x", "y"]);
    assert_eq!(a.get("x"), Some("10"));
    assert_eq!(a.get("y"), None);
    assert_eq!(a.engine.confirmed("y").unwrap().version, 2);

    // A write on a deleted key is based on the tombstone's version.
    a.set("y", "3");
    assert_eq!(a.engine.pending().next().unwrap().base_version, 2);
    sync(&mut a, &mut server);
    assert_eq!(server_value(&server, "y"), Some((3, Some("3".into()))));
    assert!(a.engine.conflicts().next().is_none());
}

#[test]
fn server_wins_by_default_and_the_lost_value_is_reported() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "\"base\"");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);

    a.set("k", "\"from a\"");
    b.set("k", "\"from b\"");
    sync(&mut a, &mut server);
    let request = b.engine.next_push(0).unwrap();
    let response = server.push(&request).unwrap();
    assert!(matches!(response.results[0], ChangeResult::Conflict { .. }));
    let effects = b.answer_push(&request, response);

    assert_eq!(effects.changed, ["k"]);
    assert_eq!(b.get("k"), Some("\"from a\""));
    assert_eq!(b.engine.pending_len(), 0);
    assert_eq!(effects.conflicts.len(), 1);
    let conflict = &effects.conflicts[0];
    assert_eq!(conflict.key, "k");
    assert_eq!(conflict.local, Some(raw("\"from b\"")));
    assert_eq!(conflict.server, Some(raw("\"from a\"")));
    assert_eq!(conflict.server_version, 2);
    assert_eq!(conflict.resolution, Resolution::ServerWins);
    assert_eq!(conflict.resolved(), Some(&raw("\"from a\"")));
    // Kept durably until the app takes it.
    assert_eq!(b.storage.snapshot().unwrap().conflicts.len(), 1);
    let (taken, effects) = b.engine.take_conflicts();
    b.apply(effects);
    assert_eq!(taken, vec![conflict.clone()]);
    assert!(b.storage.snapshot().unwrap().conflicts.is_empty());
    assert_eq!(
        server_value(&server, "k"),
        Some((2, Some("\"from a\"".into())))
    );
}

#[test]
fn client_wins_rebases_the_local_value_and_reports() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::with_policy("b/todo", ConflictPolicy::ClientWins);
    a.set("k", "1");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    a.set("k", "2");
    b.set("k", "3");
    sync(&mut a, &mut server);

    let request = b.engine.next_push(0).unwrap();
    let response = server.push(&request).unwrap();
    let effects = b.answer_push(&request, response);
    assert!(effects.changed.is_empty(), "the local value stays visible");
    assert_eq!(b.get("k"), Some("3"));
    assert_eq!(effects.conflicts.len(), 1);
    assert_eq!(effects.conflicts[0].resolution, Resolution::ClientWins);
    assert_eq!(effects.conflicts[0].server, Some(raw("2")));
    // Re-based on the server's version, with a new mutation number.
    let change = b.engine.pending().next().unwrap().clone();
    assert_eq!(change.base_version, 2);
    assert_ne!(change.mutation, request.changes[0].mutation);

    sync(&mut b, &mut server);
    assert_eq!(server_value(&server, "k"), Some((3, Some("3".into()))));
    sync(&mut a, &mut server);
    assert_eq!(a.get("k"), Some("3"));
}

#[test]
fn merge_resolves_rebases_and_reports() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    // Sums numbers; a deleted side counts as 0.
    let merge = ConflictPolicy::merge(|_key, local, server| {
        let n = |v: Option<&Raw>| v.map_or(0, |r| r.to_value::<i64>().unwrap());
        Some(Raw::from_value(&(n(local) + n(server))).unwrap())
    });
    let mut b = Client::with_policy("b/todo", merge);
    a.set("n", "1");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    a.set("n", "10");
    b.set("n", "5");
    sync(&mut a, &mut server);

    let request = b.engine.next_push(0).unwrap();
    let response = server.push(&request).unwrap();
    let effects = b.answer_push(&request, response);
    assert_eq!(effects.changed, ["n"]);
    assert_eq!(b.get("n"), Some("15"));
    let conflict = &effects.conflicts[0];
    assert_eq!(conflict.local, Some(raw("5")));
    assert_eq!(conflict.server, Some(raw("10")));
    assert_eq!(conflict.resolution, Resolution::Merged(Some(raw("15"))));
    assert_eq!(b.engine.pending().next().unwrap().base_version, 2);

    sync(&mut b, &mut server);
    assert_eq!(server_value(&server, "n"), Some((3, Some("15".into()))));
}

#[test]
fn equal_values_are_settled_without_a_report() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    a.delete("k");
    b.delete("k");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    assert!(b.engine.conflicts().next().is_none());
    assert_eq!(b.engine.pending_len(), 0);
    assert_eq!(b.engine.confirmed("k").unwrap().version, 2);
}

#[test]
fn retry_after_a_lost_response_is_applied_once() {
    let mut server = FakeServer::new();
    let mut client = Client::new("a/todo");
    client.set("k", "1");

    let request = client.engine.next_push(0).unwrap();
    // The server applies it, the answer is lost, the transport times out.
    server.push(&request).unwrap();
    let effects = client
        .engine
        .on_push_error(&request, &Failure::Unreachable, 1_000, 0.0);
    client.apply(effects);
    assert_eq!(
        client.engine.pending_len(),
        1,
        "still pending: no answer yet"
    );
    assert_eq!(client.engine.status().failures, 1);

    // The retry carries the same mutation number and base version.
    let ready = client.engine.ready_at().unwrap();
    assert!(client.engine.next_push(ready - 1).is_none(), "backing off");
    let retry = client.engine.next_push(ready).unwrap();
    assert_eq!(retry.changes, request.changes);
    let response = server.push(&retry).unwrap();
    assert_eq!(
        response.results,
        vec![ChangeResult::Accepted {
            mutation: 1,
            key: "k".into(),
            version: 1
        }]
    );
    client.answer_push(&retry, response);
    assert_eq!(client.engine.pending_len(), 0);
    assert!(client.engine.conflicts().next().is_none());
    assert_eq!(server_value(&server, "k"), Some((1, Some("1".into()))));
    assert_eq!(server.cursor().seq, 1, "applied once");
    assert_eq!(
        client.engine.status().failures,
        0,
        "success resets the backoff"
    );
}

#[test]
fn pull_does_not_clobber_pending_writes() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);

    b.set("k", "\"mine\"");
    a.set("k", "\"theirs\"");
    sync(&mut a, &mut server);
    let effects = b.pull(&mut server);
    assert!(
        effects.changed.is_empty(),
        "the pending value stays visible"
    );
    assert_eq!(b.get("k"), Some("\"mine\""));
    assert_eq!(b.engine.confirmed("k").unwrap().version, 2);
    // The pending change keeps its base version: the push decides.
    assert_eq!(b.engine.pending().next().unwrap().base_version, 1);
    let effects = b.push(&mut server);
    assert_eq!(effects.conflicts.len(), 1);
    assert_eq!(b.get("k"), Some("\"theirs\""));
}

#[test]
fn pull_while_a_push_is_in_flight() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);

    // a's push reaches the server; before its answer, a pull brings back
    // a's own write and then b's write on top of it.
    a.set("k", "2");
    let push = a.engine.next_push(0).unwrap();
    let push_response = server.push(&push).unwrap();
    let effects = a.pull(&mut server);
    assert!(effects.changed.is_empty());
    assert_eq!(a.engine.confirmed("k").unwrap().version, 2);
    b.pull(&mut server);
    b.set("k", "3");
    sync(&mut b, &mut server);
    let effects = a.pull(&mut server);
    assert!(effects.changed.is_empty(), "pending value still visible");
    assert_eq!(a.engine.confirmed("k").unwrap().version, 3);

    // The late push answer settles the change without regressing the doc.
    let effects = a.answer_push(&push, push_response);
    assert_eq!(effects.changed, ["k"]);
    assert!(effects.conflicts.is_empty());
    assert_eq!(a.get("k"), Some("3"));
    assert_eq!(a.engine.confirmed("k").unwrap().version, 3);
    assert_eq!(a.engine.pending_len(), 0);
}

#[test]
fn writes_behind_an_in_flight_change_coalesce_and_are_rebased() {
    let mut server = FakeServer::new();
    let mut client = Client::new("a/todo");
    client.set("k", "1");
    let push = client.engine.next_push(0).unwrap();
    client.set("k", "2");
    client.set("k", "3");
    let mutations: Vec<u64> = client.engine.pending().map(|c| c.mutation).collect();
    assert_eq!(
        mutations,
        [1, 2],
        "the later writes share one queued change"
    );
    assert_eq!(client.get("k"), Some("3"));

    let response = server.push(&push).unwrap();
    client.answer_push(&push, response);
    let queued = client.engine.pending().next().unwrap().clone();
    assert_eq!((queued.mutation, queued.base_version), (2, 1));
    sync(&mut client, &mut server);
    assert_eq!(server_value(&server, "k"), Some((2, Some("3".into()))));
    assert!(client.engine.conflicts().next().is_none());
}

#[test]
fn conflict_drops_every_queued_write_of_the_key_and_reports_the_latest() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    b.set("k", "\"b\"");
    sync(&mut b, &mut server);
    a.set("k", "1");
    let push = a.engine.next_push(0).unwrap();
    a.set("k", "2");
    let response = server.push(&push).unwrap();
    let effects = a.answer_push(&push, response);
    assert_eq!(a.engine.pending_len(), 0);
    assert_eq!(effects.conflicts[0].local, Some(raw("2")));
    assert_eq!(a.get("k"), Some("\"b\""));
}

#[test]
fn late_and_repeated_answers_are_harmless() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    let push = a.engine.next_push(0).unwrap();
    let response = server.push(&push).unwrap();
    a.answer_push(&push, response.clone());
    let effects = a.answer_push(&push, response);
    assert!(effects.batch.is_empty() && effects.changed.is_empty());

    // Pages answering older requests never move anything back.
    let first = a.engine.next_pull(0).unwrap();
    let first_page = server.pull(&first).unwrap();
    a.answer_pull(&first, first_page.clone());
    sync(&mut b, &mut server);
    b.set("k", "2");
    sync(&mut b, &mut server);
    let second = a.engine.next_pull(0).unwrap();
    let second_page = server.pull(&second).unwrap();
    a.answer_pull(&second, second_page.clone());
    b.set("k", "3");
    sync(&mut b, &mut server);
    a.pull(&mut server);
    assert_eq!(a.get("k"), Some("3"));
    let cursor = a.engine.cursor().cloned();
    for (request, page) in [(&first, first_page), (&second, second_page)] {
        let effects = a.answer_pull(request, page);
        assert!(effects.changed.is_empty() && effects.batch.is_empty());
        assert_eq!(a.get("k"), Some("3"));
        assert_eq!(a.engine.cursor().cloned(), cursor);
    }
    assert!(a.engine.conflicts().next().is_none());
}

#[test]
fn cursor_reset_resyncs_from_the_beginning_keeping_pending_changes() {
    let mut server = FakeServer::new();
    let mut a = Client::with_policy("a/todo", ConflictPolicy::ClientWins);
    a.set("kept", "1");
    a.set("gone", "2");
    a.set("edited", "3");
    sync(&mut a, &mut server);
    a.set("edited", "\"local edit\"");
    a.set("new", "\"offline\"");

    // The server is replaced by another database with some other content.
    server.wipe();
    server.put(GROUP, "kept", Some(raw("1")));
    server.put(GROUP, "edited", Some(raw("3")));
    server.put(GROUP, "other", Some(raw("4")));
    let epoch = server.cursor().epoch;

    let request = a.engine.next_pull(0).unwrap();
    let body = server.pull(&request).unwrap_err();
    assert_eq!(body.error, ErrorCode::CursorReset);
    let failure = Failure::Error(body);
    assert_eq!(failure.kind(), FailureKind::CursorReset);
    let effects = a.engine.on_pull_error(&request, &failure, 0, 0.0);
    a.apply(effects);
    assert_eq!(a.engine.cursor(), None);
    assert!(a.engine.status().resyncing);
    assert_eq!(a.engine.status().failures, 0, "a reset is not a failure");
    assert_eq!(
        a.get("gone"),
        Some("2"),
        "still shown until the resync ends"
    );

    let effects = a.pull(&mut server);
    assert_eq!(effects.changed, ["other"]);
    assert!(!a.engine.status().resyncing);
    assert_eq!(a.engine.cursor().unwrap().epoch, epoch);
    // The new database lacks `gone`: reported, and (client wins) written
    // again as a new document.
    assert!(a.engine.confirmed("gone").is_none());
    assert_eq!(a.get("gone"), Some("2"));
    assert_eq!(effects.conflicts.len(), 1);
    let report = &effects.conflicts[0];
    assert_eq!(report.key, "gone");
    assert_eq!(report.cause, ConflictCause::Reset);
    assert_eq!(report.resolution, Resolution::ClientWins);
    assert_eq!(report.local, Some(raw("2")));
    assert_eq!(report.server, None);
    assert_eq!(a.get("edited"), Some("\"local edit\""), "pending kept");
    assert_eq!(a.get("new"), Some("\"offline\""));
    assert_eq!(a.engine.pending_len(), 3);

    sync(&mut a, &mut server);
    assert_eq!(server_value(&server, "gone"), Some((1, Some("2".into()))));
    assert_eq!(
        server_value(&server, "new"),
        Some((1, Some("\"offline\"".into())))
    );
    // The edit was based on the old database's version 1; it matches the new
    // one's by chance here, so it is accepted.
    assert_eq!(
        server_value(&server, "edited"),
        Some((2, Some("\"local edit\"".into())))
    );
    let expected: BTreeMap<String, String> = server
        .documents(GROUP)
        .into_iter()
        .filter_map(|d| d.value.map(|v| (d.key, v.into_string())))
        .collect();
    assert_eq!(a.visible(), expected);
    assert_eq!(a.storage.snapshot(), Some(&a.engine.snapshot()));
}

#[test]
fn late_answers_of_a_replaced_database_do_not_stick() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    a.set("k", "1");
    sync(&mut a, &mut server);
    // A pull and a push of the old database whose answers come late.
    let old_pull = a.engine.next_pull(0).unwrap();
    let old_page = server.pull(&old_pull).unwrap();
    a.set("k", "2");
    let old_push = a.engine.next_push(0).unwrap();
    let old_answer = server.push(&old_push).unwrap();

    server.wipe();
    server.put(GROUP, "k", Some(raw("\"new db\"")));
    server.put(GROUP, "j", Some(raw("\"only new\"")));
    let reset = a.engine.next_pull(0);
    assert!(reset.is_none(), "the old pull is still in flight");
    let body = server.pull(&old_pull).unwrap_err();
    let effects = a
        .engine
        .on_pull_error(&old_pull, &Failure::Error(body), 0, 0.0);
    a.apply(effects);
    assert_eq!(a.engine.cursor(), None);

    // The old page is refused: the engine pulls from the beginning now.
    let effects = a.answer_pull(&old_pull, old_page);
    assert!(effects.changed.is_empty() && effects.batch.is_empty());
    assert_eq!(a.engine.cursor(), None);
    let page = a.pull(&mut server);
    assert_eq!(a.get("j"), Some("\"only new\""));
    // The pending write was made on the old database's k; the new one's k
    // differs: a conflict, resolved (server wins) and reported, not a
    // write sent over it.
    assert_eq!(page.conflicts.len(), 1, "{:?}", page.conflicts);
    assert_eq!(page.conflicts[0].local, Some(raw("2")));
    assert_eq!(page.conflicts[0].server, Some(raw("\"new db\"")));
    assert_eq!(a.get("k"), Some("\"new db\""));

    // The old database's answer finds nothing left to settle, and makes the
    // engine check the server again from the beginning.
    a.answer_push(&old_push, old_answer);
    assert_eq!(a.engine.pending_len(), 0);
    assert!(a.engine.status().resyncing);
    sync(&mut a, &mut server);
    assert_eq!(a.get("k"), Some("\"new db\""));
    assert_eq!(a.get("j"), Some("\"only new\""));
    assert!(a.engine.confirmed_documents().all(|(_, d)| !d.is_stale()));
    assert_eq!(a.storage.snapshot(), Some(&a.engine.snapshot()));
}

#[test]
fn restore_from_storage_in_the_middle_of_a_push() {
    let mut server = FakeServer::new();
    let mut client = Client::new("a/todo");
    client.set("a", "1");
    client.set("b", "2");
    let push = client.engine.next_push(0).unwrap();
    // The server applies the push; the client process dies before the answer.
    server.push(&push).unwrap();
    client.set("c", "3");

    let snapshot = client.storage.load().unwrap().unwrap();
    let mut restored = Client {
        engine: Engine::restore(snapshot).unwrap(),
        storage: client.storage.clone(),
        changed: Vec::new(),
    };
    assert_eq!(restored.visible(), client.visible());
    assert_eq!(restored.engine.pending_len(), 3);

    let retry = restored.engine.next_push(0).unwrap();
    assert_eq!(
        &retry.changes[..2],
        &push.changes[..],
        "same mutation numbers"
    );
    let response = server.push(&retry).unwrap();
    assert!(
        response
            .results
            .iter()
            .all(|r| matches!(r, ChangeResult::Accepted { version: 1, .. }))
    );
    restored.answer_push(&retry, response);
    assert_eq!(restored.engine.pending_len(), 0);
    assert_eq!(server.cursor().seq, 3, "each change applied once");
    // New writes after the restore get fresh mutation numbers.
    restored.set("d", "4");
    assert_eq!(restored.engine.pending().next().unwrap().mutation, 4);
    sync(&mut restored, &mut server);
    assert_eq!(
        restored.storage.snapshot(),
        Some(&restored.engine.snapshot())
    );
}

#[test]
fn conflicts_survive_a_restart_until_taken() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    b.set("k", "2");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    assert_eq!(b.engine.status().conflicts, 1);
    let restored = Engine::restore(b.storage.load().unwrap().unwrap()).unwrap();
    let conflicts: Vec<_> = restored.conflicts().cloned().collect();
    assert_eq!(conflicts.len(), 1);
    assert_eq!(conflicts[0].local, Some(raw("2")));
}

#[test]
fn backoff_schedule() {
    let backoff = Backoff {
        initial_ms: 100,
        max_ms: 1_000,
        multiplier: 2,
        jitter: 0.5,
    };
    let full: Vec<u64> = (0..7).map(|n| backoff.delay_ms(n, 0.0)).collect();
    assert_eq!(full, [0, 100, 200, 400, 800, 1_000, 1_000]);
    let shortest: Vec<u64> = (1..7).map(|n| backoff.delay_ms(n, 1.0)).collect();
    assert_eq!(shortest, [50, 100, 200, 400, 500, 500]);
    assert_eq!(backoff.delay_ms(3, 0.5), 300);
    assert_eq!(backoff.delay_ms(u32::MAX, 0.0), 1_000, "no overflow");
    assert_eq!(backoff.delay_ms(1, f64::NAN), 100);
    assert_eq!(Backoff::default().delay_ms(1, 0.0), 500);

    // The engine follows it, with the caller's clock and jitter.
    let mut client = Client::with_options("a/todo", EngineOptions::default().backoff(backoff));
    client.set("k", "1");
    let mut now = 10_000;
    let mut waits = Vec::new();
    for _ in 0..5 {
        let push = client.engine.next_push(now).unwrap();
        let effects = client.engine.on_push_error(
            &push,
            &Failure::Error(ErrorBody {
                error: ErrorCode::Unavailable,
                message: "busy".into(),
            }),
            now,
            0.0,
        );
        client.apply(effects);
        let ready = client.engine.ready_at().unwrap();
        waits.push(ready - now);
        assert_eq!(client.engine.retry_after(now), Some(ready - now));
        assert!(client.engine.next_push(ready - 1).is_none());
        assert!(client.engine.next_pull(ready - 1).is_none());
        now = ready;
    }
    assert_eq!(waits, [100, 200, 400, 800, 1_000]);
    assert_eq!(client.engine.status().failures, 5);
    // A late failure of an old request does not count again.
    let push = client.engine.next_push(now).unwrap();
    let stale = PushRequest {
        changes: Vec::new(),
        ..push.clone()
    };
    let effects = client
        .engine
        .on_push_error(&stale, &Failure::Unreachable, now, 0.0);
    client.apply(effects);
    assert_eq!(client.engine.status().failures, 5);
    // Success resets it.
    let mut server = FakeServer::new();
    let response = server.push(&push).unwrap();
    client.answer_push(&push, response);
    assert_eq!(client.engine.status().failures, 0);
    assert_eq!(client.engine.ready_at(), None);
}

#[test]
fn failures_are_classified() {
    let body = |error| {
        Failure::Error(ErrorBody {
            error,
            message: String::new(),
        })
    };
    assert_eq!(Failure::Unreachable.kind(), FailureKind::Temporary);
    assert_eq!(Failure::Status(500).kind(), FailureKind::Temporary);
    assert_eq!(Failure::Status(503).kind(), FailureKind::Temporary);
    assert_eq!(Failure::Status(429).kind(), FailureKind::Temporary);
    assert_eq!(Failure::Status(408).kind(), FailureKind::Temporary);
    assert_eq!(Failure::Status(401).kind(), FailureKind::Auth);
    assert_eq!(Failure::Status(403).kind(), FailureKind::Auth);
    assert_eq!(Failure::Status(400).kind(), FailureKind::Permanent);
    assert_eq!(Failure::Status(413).kind(), FailureKind::TooLarge);
    assert_eq!(body(ErrorCode::Unauthorized).kind(), FailureKind::Auth);
    assert_eq!(body(ErrorCode::Forbidden).kind(), FailureKind::Auth);
    assert_eq!(body(ErrorCode::BadRequest).kind(), FailureKind::Permanent);
    assert_eq!(body(ErrorCode::TooLarge).kind(), FailureKind::TooLarge);
    assert_eq!(
        body(ErrorCode::MutationReused).kind(),
        FailureKind::MutationReused
    );
    assert_eq!(body(ErrorCode::Internal).kind(), FailureKind::Temporary);
    assert_eq!(body(ErrorCode::Unavailable).kind(), FailureKind::Temporary);
    assert_eq!(
        body(ErrorCode::CursorReset).kind(),
        FailureKind::CursorReset
    );
}

#[test]
fn auth_and_permanent_failures_halt_until_resumed() {
    let mut server = FakeServer::new();
    let mut client = Client::new("a/todo");
    client.set("k", "1");
    for (failure, kind) in [
        (Failure::Status(401), FailureKind::Auth),
        (Failure::Status(400), FailureKind::Permanent),
    ] {
        let push = client.engine.next_push(0).unwrap();
        let effects = client.engine.on_push_error(&push, &failure, 0, 0.0);
        client.apply(effects);
        let halt = client.engine.status().halted.unwrap();
        assert_eq!(halt.kind, kind);
        assert!(!halt.message.is_empty());
        // Not retried: nothing goes out, whatever the time.
        assert!(client.engine.next_push(u64::MAX).is_none());
        assert!(client.engine.next_pull(u64::MAX).is_none());
        assert_eq!(client.engine.retry_after(0), None);
        // Local writes keep working.
        client.set("k", "2");
        assert_eq!(client.get("k"), Some("2"));
        client.engine.resume();
    }
    sync(&mut client, &mut server);
    assert_eq!(server_value(&server, "k"), Some((2, Some("2".into()))));
}

#[test]
fn groups_need_distinct_client_ids_and_valid_names() {
    assert!(matches!(
        Engine::new("bad group", "c"),
        Err(EngineError::InvalidGroup(_))
    ));
    assert!(matches!(
        Engine::new(GROUP, ""),
        Err(EngineError::InvalidClientId(_))
    ));
    let mut engine = Engine::new(GROUP, "c").unwrap();
    assert!(matches!(
        engine.set("", raw("1")),
        Err(EngineError::InvalidKey(_))
    ));
    assert!(matches!(
        engine.delete("a\nb"),
        Err(EngineError::InvalidKey(_))
    ));
    assert_eq!(engine.pending_len(), 0);
}

#[test]
fn typed_values() {
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Todo {
        title: String,
        done: bool,
        tags: std::collections::BTreeSet<String>,
    }
    let todo = Todo {
        title: "milk".into(),
        done: false,
        tags: ["shop".to_owned()].into(),
    };
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    let effects = a.engine.set_value("t1", &todo).unwrap();
    a.apply(effects);
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    assert_eq!(b.engine.get_value::<Todo>("t1").unwrap(), Some(todo));
    assert_eq!(b.engine.get_value::<Todo>("nothing").unwrap(), None);
    assert!(b.engine.get_value::<u32>("t1").is_err());
}

#[test]
fn server_cursor_hint_asks_for_a_pull() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    sync(&mut a, &mut server);
    assert!(!a.engine.wants_pull());
    b.set("k", "1");
    sync(&mut b, &mut server);
    a.engine.on_server_cursor(&server.cursor());
    assert!(a.engine.wants_pull());
    a.pull(&mut server);
    assert!(!a.engine.wants_pull());
    assert_eq!(a.get("k"), Some("1"));
    // Cursors of another database are no hint.
    a.engine.on_server_cursor(&Cursor::new("other", 99));
    assert!(!a.engine.wants_pull());
}

#[test]
fn paged_pulls_reach_the_end() {
    let mut server = FakeServer::new();
    let mut a = Client::with_options("a/todo", EngineOptions::default().push_batch(7));
    for i in 0..50 {
        a.set(&format!("doc{i:02}"), &i.to_string());
    }
    let mut pushes = 0;
    while let Some(push) = a.engine.next_push(0) {
        assert!(push.changes.len() <= 7);
        pushes += 1;
        let response = server.push(&push).unwrap();
        a.answer_push(&push, response);
    }
    assert_eq!(pushes, 8);
    assert_eq!(server.documents(GROUP).len(), 50);
    let mut b = Client::with_options("b/todo", EngineOptions::default().pull_limit(Some(8)));
    let mut pages = 0;
    loop {
        b.pull(&mut server);
        pages += 1;
        if !b.engine.wants_pull() {
            break;
        }
    }
    assert_eq!(pages, 7);
    assert_eq!(b.visible(), a.visible());
}

#[test]
fn batches_replay_to_the_snapshot() {
    // Applying every batch in order to a fresh snapshot gives the engine's.
    let mut server = FakeServer::new();
    let mut a = Client::with_policy("a/todo", ConflictPolicy::ClientWins);
    let mut b = Client::new("b/todo");
    let mut batches: Vec<Batch> = Vec::new();
    for round in 0..5 {
        sync(&mut b, &mut server);
        b.set("k", &format!("{}", round + 100));
        sync(&mut b, &mut server);
        let effects = a.engine.set("k", raw(&round.to_string())).unwrap();
        batches.push(effects.batch.clone());
        a.apply(effects);
        while let Some(push) = a.engine.next_push(0) {
            let response = server.push(&push).unwrap();
            let effects = a.engine.on_push_response(&push, response);
            batches.push(effects.batch.clone());
            a.apply(effects);
        }
    }
    let mut storage = MemoryStorage::default();
    for batch in &batches {
        storage.apply(batch).unwrap();
    }
    assert_eq!(storage.snapshot(), Some(&a.engine.snapshot()));
    assert_eq!(a.engine.status().conflicts, 5);
}

#[test]
fn merged_effects_persist_as_the_steps_in_order() {
    let mut server = FakeServer::new();
    let mut engine = Engine::new(GROUP, "a/todo").unwrap();
    let (mut one_by_one, mut merged) = (MemoryStorage::default(), MemoryStorage::default());
    let mut all = Effects::default();
    let mut step = |effects: Effects, all: &mut Effects| {
        one_by_one.apply(&effects.batch).unwrap();
        all.merge(effects);
    };
    // Out of key order, a key written twice, a delete, and a push in between
    // (so a later step removes a queue entry an earlier one added).
    step(engine.set("b", raw("1")).unwrap(), &mut all);
    step(engine.set("a", raw("2")).unwrap(), &mut all);
    let request = engine.next_push(0).unwrap();
    let response = server.push(&request).unwrap();
    step(engine.on_push_response(&request, response), &mut all);
    step(engine.set("c", raw("3")).unwrap(), &mut all);
    step(engine.set("b", raw("4")).unwrap(), &mut all);
    step(engine.delete("c").unwrap(), &mut all);
    merged.apply(&all.batch).unwrap();
    assert_eq!(merged.snapshot(), one_by_one.snapshot());
    assert_eq!(merged.snapshot(), Some(&engine.snapshot()));
    assert_eq!(all.changed, ["a", "b", "c"], "in key order, once each");
}

// ----- history that went back, reused numbers, bounded tables (issue #10) -----

/// A server that lost its data (restored from an old copy under a new
/// epoch): the documents it lacks are reported, never dropped silently; with
/// the server winning they are gone locally.
#[test]
fn a_reset_that_removes_documents_reports_them() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    a.set("kept", "1");
    sync(&mut a, &mut server);
    server.checkpoint();
    a.set("lost", "2");
    a.set("also-lost", "3");
    sync(&mut a, &mut server);
    assert!(server.restore_checkpoint(), "history was lost: a new epoch");
    // The cursor is of the old epoch: reset.
    let reset = a.pull(&mut server);
    assert!(reset.conflicts.is_empty());
    let end = a.pull(&mut server);
    assert_eq!(end.changed, ["also-lost", "lost"]);
    let keys: Vec<(&str, ConflictCause, &Resolution)> = end
        .conflicts
        .iter()
        .map(|c| (c.key.as_str(), c.cause, &c.resolution))
        .collect();
    assert_eq!(
        keys,
        [
            ("also-lost", ConflictCause::Reset, &Resolution::ServerWins),
            ("lost", ConflictCause::Reset, &Resolution::ServerWins)
        ]
    );
    assert_eq!(a.visible().len(), 1);
    assert_eq!(a.engine.conflicts().count(), 2, "kept until taken");
    assert_eq!(a.engine.pending_len(), 0);
}

/// Within one database, a full pull that lacks a document means it was
/// deleted and its tombstone purged: it goes quietly, like any deletion.
#[test]
fn a_purge_reset_removes_deleted_documents_quietly() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    a.set("j", "2");
    sync(&mut a, &mut server);
    sync(&mut b, &mut server);
    b.delete("k");
    sync(&mut b, &mut server);
    assert_eq!(server.purge_tombstones(), 1);
    // a never saw the deletion: its cursor is below the purge floor.
    let reset = a.pull(&mut server);
    assert!(a.engine.status().resyncing, "{:?}", reset.changed);
    let end = a.pull(&mut server);
    assert_eq!(end.changed, ["k"]);
    assert!(end.conflicts.is_empty());
    assert_eq!(a.get("k"), None);
    assert!(a.engine.confirmed("k").is_none());
    // b saw it: its cursor is past the floor, no reset; its tombstone stays.
    b.pull(&mut server);
    assert!(!b.engine.status().resyncing);
    // Written again: a version above the purged tombstone's, so b's
    // tombstone (version 2) does not hide it.
    a.set("k", "\"again\"");
    sync(&mut a, &mut server);
    assert_eq!(
        server_value(&server, "k"),
        Some((3, Some("\"again\"".into())))
    );
    sync(&mut b, &mut server);
    assert_eq!(b.get("k"), Some("\"again\""));
}

/// A full pull that pages below the purge floor after the purge is not
/// reset: its cursors carry the floor they were handed out under.
#[test]
fn a_full_pull_after_a_purge_pages_through() {
    let mut server = FakeServer::new();
    let mut a = Client::with_options("a/todo", EngineOptions::default().pull_limit(Some(1)));
    for i in 0..5 {
        a.set(&format!("k{i}"), "1");
    }
    a.delete("k4");
    sync(&mut a, &mut server);
    server.purge_tombstones();
    let mut fresh = Client::with_options("f/todo", EngineOptions::default().pull_limit(Some(1)));
    let mut pages = 0;
    loop {
        let page = fresh.pull(&mut server);
        assert!(page.conflicts.is_empty());
        pages += 1;
        assert!(pages < 20, "the full pull does not end");
        if !fresh.engine.wants_pull() {
            break;
        }
    }
    assert!(!fresh.engine.status().resyncing);
    assert_eq!(fresh.visible().len(), 4);
}

/// A document learnt from a push answer during a resync, then deleted and
/// its tombstone purged before the resync's last page: the pull lacks it,
/// so it is gone, not confirmed.
#[test]
fn a_resync_does_not_confirm_a_document_purged_meanwhile() {
    let mut server = FakeServer::new();
    let mut a = Client::with_options("a/todo", EngineOptions::default().pull_limit(Some(1)));
    let mut b = Client::new("b/todo");
    b.set("x", "0");
    b.set("y", "0");
    sync(&mut b, &mut server);
    // a writes `k` before its first pull: accepted, learnt from the answer
    // (not confirmed by a pull yet)...
    a.set("k", "1");
    a.push(&mut server);
    assert!(a.engine.confirmed("k").unwrap().is_stale());
    // ...and its first pull from the beginning gets under way (a page of one).
    a.pull(&mut server);
    assert!(a.engine.status().resyncing);
    // b deletes it; the tombstone is purged; then a's pull ends.
    sync(&mut b, &mut server);
    b.delete("k");
    sync(&mut b, &mut server);
    server.purge_tombstones();
    sync(&mut a, &mut server);
    assert_eq!(a.get("k"), None);
    assert!(a.engine.confirmed("k").is_none());
}

/// A server that went back in time under the same epoch, and a client whose
/// version is above the server's: under client wins it once rewrote on top
/// of its own version for ever. Now the answer shows the server went back,
/// the engine resyncs and rebases on the server's version.
#[test]
fn client_wins_cannot_livelock_on_a_server_behind_the_client() {
    let mut server = FakeServer::new();
    let mut a = Client::with_policy("a/todo", ConflictPolicy::ClientWins);
    a.set("k", "1");
    sync(&mut a, &mut server);
    let behind = server.clone();
    a.set("k", "2");
    sync(&mut a, &mut server);
    a.set("k", "3");
    sync(&mut a, &mut server);
    assert_eq!(a.engine.confirmed("k").unwrap().version, 3);
    // Same epoch, older data (an undetected restore).
    server = behind;
    a.set("k", "\"mine\"");
    let mut rounds = 0;
    while let Some(request) = a.engine.next_push(0) {
        rounds += 1;
        assert!(rounds < 5, "the push never settles");
        let response = server.push(&request).unwrap();
        a.answer_push(&request, response);
    }
    sync(&mut a, &mut server);
    assert_eq!(
        server_value(&server, "k"),
        Some((2, Some("\"mine\"".into())))
    );
    assert_eq!(a.engine.confirmed("k").unwrap().version, 2);
    assert_eq!(a.get("k"), Some("\"mine\""));
}

/// A client that lost its storage and numbers again from 1 under the same
/// id: the server refuses the reused number (it was decided for another
/// change), and the engine takes a new id and pushes again. Nothing lost,
/// no halt.
#[test]
fn a_reused_mutation_number_renames_the_client_instead_of_losing_the_write() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    a.set("k", "1");
    sync(&mut a, &mut server);
    // The same id, a fresh storage: mutation 1 again, other content.
    let mut again = Client::new("a/todo");
    again.set("j", "\"new\"");
    let request = again.engine.next_push(0).unwrap();
    assert_eq!(request.changes[0].mutation, 1);
    let body = server.push(&request).unwrap_err();
    assert_eq!(body.error, ErrorCode::MutationReused);
    let failure = Failure::Error(body);
    assert_eq!(failure.kind(), FailureKind::MutationReused);
    let effects = again.engine.on_push_error(&request, &failure, 0, 0.25);
    again.apply(effects);
    assert_eq!(again.engine.status().halted, None);
    assert_eq!(again.engine.ready_at(), None, "pushed again at once");
    let renamed = again.engine.client_id().to_owned();
    assert!(renamed.starts_with("a/todo~"), "{renamed}");
    assert_eq!(
        again.storage.snapshot().unwrap().meta.client_id,
        renamed,
        "the new id is persisted"
    );
    sync(&mut again, &mut server);
    assert_eq!(
        server_value(&server, "j"),
        Some((1, Some("\"new\"".into())))
    );
    assert_eq!(again.get("k"), Some("1"));
    // Renamed again later, the suffix is replaced, not stacked.
    again.set("j", "\"newer\"");
    let request = again.engine.next_push(0).unwrap();
    let effects = again.engine.on_push_error(&request, &failure, 0, 0.5);
    again.apply(effects);
    let id = again.engine.client_id();
    assert_eq!(id.matches('~').count(), 1, "{id}");
    assert_ne!(id, renamed);
    // A true retry (same content) is still answered as the first time.
    let mut b = Client::new("b/todo");
    b.set("r", "1");
    let push = b.engine.next_push(0).unwrap();
    let first = server.push(&push).unwrap();
    assert_eq!(server.push(&push).unwrap().results, first.results);
}

/// Every push says which numbers the engine will never send again, and the
/// server forgets their answers: its table stays as small as what is in
/// flight.
#[test]
fn low_water_marks_keep_the_servers_answers_bounded() {
    let mut server = FakeServer::new();
    let mut a = Client::with_options("a/todo", EngineOptions::default().push_batch(10));
    for round in 0..50 {
        for i in 0..10 {
            a.set(&format!("k{i}"), &round.to_string());
        }
        let request = a.engine.next_push(0).unwrap();
        assert_eq!(request.low_water, Some(a.engine.low_water()));
        assert_eq!(
            request.low_water,
            Some(request.changes[0].mutation),
            "everything before this batch is settled"
        );
        let response = server.push(&request).unwrap();
        a.answer_push(&request, response);
        assert!(
            server.mutations_len() <= 10,
            "round {round}: {} answers kept",
            server.mutations_len()
        );
    }
    assert_eq!(a.engine.low_water(), 501);
}

// ----- pushes sized by bytes (issue #9) -----

/// Pushes take changes while their encoded body stays under the limit,
/// whatever the count.
#[test]
fn pushes_are_sized_by_bytes_not_only_by_count() {
    let mut server = FakeServer::new();
    let mut a = Client::with_options("a/todo", EngineOptions::default().max_push_bytes(1000));
    for i in 0..6 {
        a.set(&format!("k{i}"), &format!("\"{}\"", "x".repeat(300)));
    }
    let mut sizes = Vec::new();
    while let Some(request) = a.engine.next_push(0) {
        let body = atomsync_core::sexpr::to_vec(&request).unwrap();
        assert!(body.len() <= 1000, "a push of {} bytes", body.len());
        sizes.push(request.changes.len());
        let response = server.push(&request).unwrap();
        a.answer_push(&request, response);
    }
    assert_eq!(sizes, [2, 2, 2]);
    assert_eq!(server.documents(GROUP).len(), 6);
}

/// A value no push could carry is refused at the write, with the reason.
#[test]
fn a_write_larger_than_any_push_is_refused_at_once() {
    let mut a = Client::with_options("a/todo", EngineOptions::default().max_push_bytes(500));
    let error = a
        .engine
        .set("big", raw(&format!("\"{}\"", "x".repeat(600))))
        .unwrap_err();
    match &error {
        EngineError::TooLarge { key, bytes, limit } => {
            assert_eq!(key, "big");
            assert!(*bytes > 600 && *limit == 500);
        }
        other => panic!("{other:?}"),
    }
    assert!(error.to_string().contains("too large"), "{error}");
    assert_eq!(a.engine.pending_len(), 0);
    assert_eq!(a.get("big"), None);
}

/// A server with a smaller body limit answers 413: a push of several is
/// split, one change too large alone is dropped and reported, and every
/// other key goes on syncing, a later write to the same key included.
#[test]
fn too_large_for_the_server_splits_pushes_and_refuses_one_alone() {
    let mut server = FakeServer::new();
    let mut a = Client::with_policy("a/todo", ConflictPolicy::ServerWins);
    a.set("small", "1");
    a.set("big", &format!("\"{}\"", "x".repeat(2000)));
    a.set("other", "2");
    // The server takes at most 1000 bytes.
    let too_large =
        |request: &PushRequest| atomsync_core::sexpr::to_vec(request).unwrap().len() > 1000;
    let refusal = Failure::Error(ErrorBody {
        error: ErrorCode::TooLarge,
        message: "request body is larger than the limit of 1000 bytes".to_owned(),
    });
    assert_eq!(refusal.kind(), FailureKind::TooLarge);
    assert_eq!(Failure::Status(413).kind(), FailureKind::TooLarge);
    let mut reports = Vec::new();
    let mut rounds = 0;
    while let Some(request) = a.engine.next_push(0) {
        rounds += 1;
        assert!(rounds < 10, "pushes never settle");
        let effects = if too_large(&request) {
            a.engine.on_push_error(&request, &refusal, 0, 0.0)
        } else {
            let response = server.push(&request).unwrap();
            a.engine.on_push_response(&request, response)
        };
        assert_eq!(a.engine.status().halted, None);
        assert_eq!(a.engine.ready_at(), None, "no backoff");
        reports.extend(a.apply(effects).conflicts);
        if a.engine.is_pending("big") && !a.engine.is_pending("small") {
            // While the big one waits, a later write to it queues behind.
            if !a
                .engine
                .pending()
                .any(|c| c.key == "big" && c.value == Some(raw("3")))
            {
                a.set("big", "3");
            }
        }
    }
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].cause, ConflictCause::TooLarge);
    assert_eq!(reports[0].key, "big");
    assert_eq!(reports[0].resolution, Resolution::ServerWins);
    assert!(reports[0].local.as_ref().unwrap().as_str().len() > 2000);
    assert_eq!(server_value(&server, "small"), Some((1, Some("1".into()))));
    assert_eq!(server_value(&server, "other"), Some((1, Some("2".into()))));
    assert_eq!(server_value(&server, "big"), Some((1, Some("3".into()))));
    assert_eq!(a.engine.pending_len(), 0);
}

// ----- one sync round for every adapter (issue #9) -----

/// Runs a round against the model, applying each batch before the next
/// request; `between` runs after every answer (a user writing meanwhile).
fn run_round(
    client: &mut Client,
    server: &mut FakeServer,
    mut between: impl FnMut(&mut Client),
) -> (RoundEnd, usize) {
    let mut round = SyncRound::new();
    let mut requests = 0;
    loop {
        let effects = match round.next(&mut client.engine, 0) {
            Step::Push(request) => {
                let answer = server.push(&request).map_err(Failure::Error);
                round.on_push(&mut client.engine, &request, answer, 0, 0.5)
            }
            Step::Pull(request) => {
                let answer = server.pull(&request).map_err(Failure::Error);
                round.on_pull(&mut client.engine, &request, answer, 0, 0.5)
            }
            Step::Done(end) => return (end, requests),
        };
        requests += 1;
        client.apply(effects);
        between(client);
    }
}

#[test]
fn a_round_recovers_from_resets_and_reused_numbers_and_ends_synced() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    a.set("k", "1");
    assert_eq!(run_round(&mut a, &mut server, |_| {}).0, RoundEnd::Synced);
    // The server is renumbered (a reset), and a lost-state twin used our
    // next mutation number for something else.
    server.renumber();
    let twin = PushRequest {
        group: GROUP.to_owned(),
        client_id: "a/todo".to_owned(),
        changes: vec![atomsync_core::protocol::Change {
            mutation: 2,
            key: "x".to_owned(),
            base_version: 0,
            value: Some(raw("0")),
        }],
        low_water: None,
        epoch: None,
    };
    server.push(&twin).unwrap();
    a.set("j", "2");
    let (end, _) = run_round(&mut a, &mut server, |_| {});
    assert_eq!(end, RoundEnd::Synced);
    assert_eq!(a.engine.pending_len(), 0);
    assert!(a.engine.client_id().starts_with("a/todo~"));
    assert_eq!(server_value(&server, "j"), Some((1, Some("2".into()))));
    assert_eq!(a.visible().len(), 3);
}

#[test]
fn a_round_ends_at_a_failure_and_the_next_one_waits_for_the_backoff() {
    let mut a = Client::new("a/todo");
    a.set("k", "1");
    let mut round = SyncRound::new();
    let Step::Push(request) = round.next(&mut a.engine, 1000) else {
        panic!("a push first");
    };
    let effects = round.on_push(
        &mut a.engine,
        &request,
        Err(Failure::Unreachable),
        1000,
        0.0,
    );
    a.apply(effects);
    assert_eq!(
        round.next(&mut a.engine, 1000),
        Step::Done(RoundEnd::Failed(Failure::Unreachable))
    );
    let until = a.engine.ready_at().unwrap();
    assert!(until > 1000);
    assert_eq!(
        SyncRound::new().next(&mut a.engine, 1000),
        Step::Done(RoundEnd::Waiting { until })
    );
    assert!(matches!(
        SyncRound::new().next(&mut a.engine, until),
        Step::Push(_)
    ));
}

#[test]
fn a_round_under_a_stream_of_writes_ends_busy_and_one_more_round_catches_up() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    a.set("k", "0");
    let mut n = 0;
    let (end, requests) = run_round(&mut a, &mut server, |client| {
        n += 1;
        client.set("k", &n.to_string());
    });
    assert_eq!(end, RoundEnd::Busy);
    assert!(requests as u32 >= MAX_PASSES, "{requests}");
    let (end, _) = run_round(&mut a, &mut server, |_| {});
    assert_eq!(end, RoundEnd::Synced);
    assert_eq!(server_value(&server, "k").unwrap().1, Some(n.to_string()));
}

/// A write made offline before the server was restored (a new epoch), on a
/// document somebody else changed after the restore: the version numbers
/// match by chance, yet the write must not overwrite the other's without a
/// report. A write on a document the restored server has unchanged is
/// rebased and goes through.
#[test]
fn a_pending_write_after_a_reset_to_another_database_is_rebased_or_reported() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    a.set("same", "1");
    sync(&mut a, &mut server);
    server.checkpoint();
    a.set("k", "2");
    sync(&mut a, &mut server);
    assert_eq!(a.engine.confirmed("k").unwrap().version, 2);
    // a edits offline, based on k v2 and same v1.
    a.set("k", "\"a's edit\"");
    a.set("same", "\"a's other edit\"");
    // The server goes back to k v1 under a new epoch; b writes k v2 there.
    assert!(server.restore_checkpoint());
    sync(&mut b, &mut server);
    b.set("k", "\"b's write\"");
    sync(&mut b, &mut server);
    assert_eq!(server_value(&server, "k").unwrap().0, 2);
    // a comes back: its pull resets, the full pull shows k changed.
    let reset = a.pull(&mut server);
    assert!(reset.conflicts.is_empty());
    let page = a.pull(&mut server);
    let keys: Vec<&str> = page.conflicts.iter().map(|c| c.key.as_str()).collect();
    assert_eq!(keys, ["k"], "{:?}", page.conflicts);
    assert_eq!(page.conflicts[0].server, Some(raw("\"b's write\"")));
    sync(&mut a, &mut server);
    // Server wins: b's write stays; a's other edit was rebased and applied.
    assert_eq!(
        server_value(&server, "k"),
        Some((2, Some("\"b's write\"".into())))
    );
    assert_eq!(
        server_value(&server, "same"),
        Some((2, Some("\"a's other edit\"".into())))
    );
    assert_eq!(a.get("k"), Some("\"b's write\""));
}

/// The same, when the client comes back and pushes first (as a round does):
/// its push names the epoch its base versions come from, the restored
/// server refuses it (409 cursor-reset) instead of taking version 2 of the
/// old history for its own, and the round resyncs and reports.
#[test]
fn a_push_based_on_another_epoch_is_refused_and_the_round_reports_the_conflict() {
    let mut server = FakeServer::new();
    let mut a = Client::new("a/todo");
    let mut b = Client::new("b/todo");
    a.set("k", "1");
    sync(&mut a, &mut server);
    server.checkpoint();
    a.set("k", "2");
    sync(&mut a, &mut server);
    a.set("k", "\"a's edit\"");
    assert!(server.restore_checkpoint());
    sync(&mut b, &mut server);
    b.set("k", "\"b's write\"");
    sync(&mut b, &mut server);
    let request = a.engine.next_push(0).unwrap();
    assert!(request.epoch.is_some());
    let body = server.push(&request).unwrap_err();
    assert_eq!(body.error, ErrorCode::CursorReset);
    let effects = a
        .engine
        .on_push_error(&request, &Failure::Error(body), 0, 0.0);
    a.apply(effects);
    assert!(a.engine.status().resyncing);
    assert_eq!(
        a.engine.next_push(0),
        None,
        "nothing pushed until the pull ends"
    );
    let mut reports = Vec::new();
    let (end, _) = run_round(&mut a, &mut server, |_| {});
    assert_eq!(end, RoundEnd::Synced);
    reports.extend(a.engine.conflicts().cloned());
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].local, Some(raw("\"a's edit\"")));
    assert_eq!(
        server_value(&server, "k"),
        Some((2, Some("\"b's write\"".into())))
    );
}

// ----- writes forwarded by other tabs (Engine::write_based) -----

#[test]
fn a_forwarded_write_on_the_value_shown_applies_like_a_local_write() {
    let mut server = FakeServer::new();
    let mut leader = Client::new("leader");
    leader.set("milk", "1");
    sync(&mut leader, &mut server);
    // The follower saw "1" and writes "2".
    let seen = Seen::of(Some(&raw("1")));
    assert_eq!(leader.engine.seen("milk"), seen);
    let effects = leader
        .engine
        .write_based("milk", Some(raw("2")), seen)
        .unwrap();
    let applied = leader.apply(effects);
    assert!(applied.conflicts.is_empty());
    assert_eq!(applied.changed, ["milk"]);
    sync(&mut leader, &mut server);
    assert_eq!(server_value(&server, "milk"), Some((2, Some("2".into()))));
}

#[test]
fn a_forwarded_write_on_a_stale_value_is_a_reported_conflict_not_an_overwrite() {
    let mut server = FakeServer::new();
    let mut leader = Client::new("leader");
    leader.set("milk", "1");
    sync(&mut leader, &mut server);
    // The follower saw "1"; meanwhile another client wrote "3" and the
    // leader pulled it.
    let mut other = Client::new("other");
    sync(&mut other, &mut server);
    other.set("milk", "3");
    sync(&mut other, &mut server);
    sync(&mut leader, &mut server);
    assert_eq!(leader.get("milk"), Some("3"));
    let effects = leader
        .engine
        .write_based("milk", Some(raw("2")), Seen::of(Some(&raw("1"))))
        .unwrap();
    let applied = leader.apply(effects);
    assert_eq!(applied.conflicts.len(), 1);
    let report = &applied.conflicts[0];
    assert_eq!(report.cause, ConflictCause::Concurrent);
    assert_eq!(report.local.as_ref().map(Raw::as_str), Some("2"));
    assert_eq!(report.server.as_ref().map(Raw::as_str), Some("3"));
    assert_eq!(report.server_version, 2);
    assert_eq!(report.resolution, Resolution::ServerWins);
    // The report is durable, the newer value stays, nothing is pushed.
    assert_eq!(applied.batch.conflicts.len(), 1);
    assert_eq!(leader.get("milk"), Some("3"));
    assert_eq!(leader.engine.pending_len(), 0);
    let restored = Engine::restore(leader.storage.load().unwrap().unwrap()).unwrap();
    assert_eq!(restored.conflicts().count(), 1);
}

#[test]
fn a_stale_forwarded_write_follows_the_policy() {
    // A pending local write of the leader is a change the follower did not
    // see either.
    let mut client_wins = Client::with_policy("a", ConflictPolicy::ClientWins);
    client_wins.set("milk", "1");
    client_wins.set("milk", "3");
    let effects = client_wins
        .engine
        .write_based("milk", Some(raw("2")), Seen::of(Some(&raw("1"))))
        .unwrap();
    let applied = client_wins.apply(effects);
    assert_eq!(applied.conflicts[0].resolution, Resolution::ClientWins);
    assert_eq!(client_wins.get("milk"), Some("2"));

    let merge = ConflictPolicy::merge(|_, local, shown| {
        Some(raw(&format!(
            "({} {})",
            local.map_or("nil", Raw::as_str),
            shown.map_or("nil", Raw::as_str)
        )))
    });
    let mut merged = Client::with_policy("b", merge);
    merged.set("milk", "3");
    let effects = merged
        .engine
        .write_based("milk", None, Seen::of(Some(&raw("1"))))
        .unwrap();
    let applied = merged.apply(effects);
    assert_eq!(
        applied.conflicts[0].resolution,
        Resolution::Merged(Some(raw("(nil 3)")))
    );
    assert_eq!(merged.get("milk"), Some("(nil 3)"));
}

#[test]
fn a_forwarded_write_delivered_twice_is_applied_once() {
    let mut leader = Client::new("leader");
    let seen = leader.engine.seen("milk");
    assert_eq!(seen, Seen::of(None));
    let first = leader
        .engine
        .write_based("milk", Some(raw("2")), seen)
        .unwrap();
    leader.apply(first);
    let again = leader
        .engine
        .write_based("milk", Some(raw("2")), seen)
        .unwrap();
    let applied = leader.apply(again);
    assert!(applied.conflicts.is_empty() && applied.batch.is_empty());
    assert_eq!(leader.engine.pending_len(), 1);
    // A delete of a document the follower saw deleted is no conflict either.
    let gone = leader
        .engine
        .write_based("bread", None, Seen::of(Some(&raw("1"))))
        .unwrap();
    assert!(gone.conflicts.is_empty());
}

#[test]
fn a_forwarded_write_is_validated_like_a_local_one() {
    let mut leader = Client::new("leader");
    leader.set("milk", "3");
    let stale = Seen::of(Some(&raw("1")));
    assert!(matches!(
        leader.engine.write_based("", Some(raw("2")), stale),
        Err(EngineError::InvalidKey(_))
    ));
    assert_eq!(leader.engine.conflicts().count(), 0);
}

/// Found by the simulation (issue 9): a change the server decided (its
/// answer lost) and then rebased after a cursor reset must not be sent
/// again under its old number with another base version: the server takes
/// one number for one change (group, key, base version, value) and answers
/// `mutation-reused`, after which the engine renames itself and loses the
/// idempotency of every other change decided under the old id.
#[test]
fn a_rebased_change_takes_a_new_number() {
    let mut server = FakeServer::new();
    server.put(GROUP, "k", Some(raw("\"theirs\"")));
    let mut engine = Engine::new(GROUP, "a").unwrap();
    let _stored = engine.set("k", raw("\"mine\"")).unwrap();
    // Decided (a conflict against version 1), the answer lost.
    let push = engine.next_push(0).unwrap();
    assert_eq!(push.changes[0].base_version, 0);
    let _decided = server.push(&push).unwrap();
    let _lost = engine.on_push_error(&push, &Failure::Unreachable, 0, 0.5);
    let later = 1_000_000;
    // The engine learns the document as it is, then the database is
    // renumbered: the pull from the beginning rebases the write on it.
    let pull = engine.next_pull(later).unwrap();
    let _page = engine.on_pull_response(&pull, server.pull(&pull).unwrap());
    server.renumber();
    let pull = engine.next_pull(later).unwrap();
    let reset = server.pull(&pull).unwrap_err();
    let _reset = engine.on_pull_error(&pull, &Failure::Error(reset), later, 0.5);
    let pull = engine.next_pull(later).unwrap();
    let _page = engine.on_pull_response(&pull, server.pull(&pull).unwrap());
    let push = engine.next_push(later).unwrap();
    assert_eq!(push.changes.len(), 1);
    assert_eq!(push.changes[0].base_version, 1);
    let answer = server.push(&push);
    assert!(
        matches!(
            &answer,
            Ok(PushResponse { results, .. })
                if matches!(results[..], [ChangeResult::Accepted { version: 2, .. }])
        ),
        "{push:?} -> {answer:?}"
    );
}
