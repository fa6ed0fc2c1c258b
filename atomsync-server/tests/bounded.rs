//! The server's tables stay bounded: 100,000 changes pushed by a few sync
//! engines (the client side, with its low-water marks) leave no more
//! remembered answers in the `mutations` table than were in flight, and
//! purges keep tombstones from piling up. On both backends (20,000 changes
//! on PostgreSQL, where each one is a few round trips).

mod common;

use std::time::{Duration, SystemTime};

use atomsync_core::engine::{Engine, EngineOptions};
use atomsync_core::sexpr::Raw;

const CLIENTS: usize = 4;
const CHANGES: usize = 100_000;
const CHANGES_ON_POSTGRES: usize = 20_000;
const BATCH: usize = 100;

on_both_backends! {
    #[test]
    fn the_mutations_table_stays_bounded_by_what_is_in_flight() {
        let mut store = store();
        let changes = match backend() {
            common::Backend::Sqlite => CHANGES,
            common::Backend::Postgres => CHANGES_ON_POSTGRES,
        };
        let mut engines: Vec<Engine> = (0..CLIENTS)
            .map(|c| {
                Engine::new("g", format!("client-{c}"))
                    .unwrap()
                    .with_options(EngineOptions::default().push_batch(BATCH))
            })
            .collect();
        let mut most = 0;
        let mut pushed = 0;
        let mut round = 0;
        while pushed < changes {
            for (c, engine) in engines.iter_mut().enumerate() {
                for i in 0..BATCH {
                    // Keys are reused, so documents stay few as well.
                    let key = format!("c{c}-k{}", (round * BATCH + i) % 500);
                    let value = Raw::from_value(&(round, i)).unwrap();
                    let _effects = engine.set(key, value).unwrap();
                }
                let request = engine.next_push(0).unwrap();
                pushed += request.changes.len();
                let response = store.push(&request).unwrap();
                let _effects = engine.on_push_response(&request, response);
                assert_eq!(engine.pending_len(), 0);
                most = most.max(store.stats().unwrap().mutations);
            }
            round += 1;
        }
        assert!(pushed >= changes);
        let stats = store.stats().unwrap();
        // Each client's last batch is remembered until its next push says it is
        // settled: CLIENTS * BATCH at most, whatever the number of changes.
        assert!(
            most <= (CLIENTS * BATCH) as u64,
            "at most {most} answers were kept"
        );
        assert_eq!(stats.mutations, (CLIENTS * BATCH) as u64);
        assert_eq!(stats.documents, (CLIENTS * 500) as u64);

        // Deleting everything leaves tombstones, which a purge removes.
        for engine in &mut engines {
            let keys: Vec<String> = engine.documents().map(|(k, _)| k.to_owned()).collect();
            for key in keys {
                let _effects = engine.delete(key).unwrap();
            }
            while let Some(request) = engine.next_push(0) {
                let response = store.push(&request).unwrap();
                let _effects = engine.on_push_response(&request, response);
            }
        }
        assert_eq!(store.stats().unwrap().tombstones, (CLIENTS * 500) as u64);
        let purged = store
            .purge_tombstones(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_eq!(purged, (CLIENTS * 500) as u64);
        assert_eq!(store.stats().unwrap().tombstones, 0);
    }
}
