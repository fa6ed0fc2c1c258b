//! The seeded fault simulation of the sync engine
//! (`atomsync_core::engine::testing`) against the real server store on
//! PostgreSQL (`Store::open("postgres://…")`), in-process, on a throwaway
//! cluster (or `ATOMSYNC_TEST_POSTGRES_URL`), one database per seed.
//!
//! Restarts close the store and open it again; a checkpoint copies the
//! database (`CREATE DATABASE .. TEMPLATE`) and restoring it puts the copy
//! back under the original name, as an operator restoring a backup would:
//! the store must see another copy and take a new epoch, as the model does.
//!
//! 20 seeds by default (each seed creates databases, which takes a moment);
//! `ATOMSYNC_SIM_SEEDS=n` runs `n` seeds and `ATOMSYNC_SEED=n` replays seed
//! `n` with a trace.

#[path = "../../atomsync-server/tests/common/pg.rs"]
#[allow(dead_code, missing_docs, unreachable_pub)]
mod pg;

use std::time::{Duration, SystemTime};

use atomsync_core::engine::testing::{SimConfig, SimServer, run_seeds};
use atomsync_core::protocol::{ErrorBody, PullRequest, PullResponse, PushRequest, PushResponse};
use atomsync_server::{Store, StoreOptions};

const REPLAY: &str = "cargo test -p atomsync-tests --test sim_postgres_store";
const DEFAULT_SEEDS: u64 = 20;

/// The PostgreSQL store as a simulation server.
struct PgStore {
    /// `postgres://user@host:port` and the database names.
    base: String,
    name: String,
    store: Option<Store>,
    new_epoch_on_restart: bool,
    restarts: u64,
}

impl PgStore {
    fn new(new_epoch_on_restart: bool) -> PgStore {
        let url = pg::fresh_database();
        let (base, name) = url.rsplit_once('/').expect("a database URL");
        let mut store = PgStore {
            base: base.to_owned(),
            name: name.to_owned(),
            store: None,
            new_epoch_on_restart,
            restarts: 0,
        };
        store.open();
        store
    }

    fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base)
    }

    fn open(&mut self) {
        let url = self.url(&self.name);
        self.store = Some(
            Store::open(&url, StoreOptions::default())
                .unwrap_or_else(|e| panic!("cannot open {url}: {e}")),
        );
    }

    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("the store is open")
    }

    /// Runs maintenance statements on the server one by one (outside any
    /// transaction, as `CREATE DATABASE` must be), retrying while the
    /// store's closed connection is still leaving (a template must have no
    /// other session).
    fn admin(&self, statements: &[String]) {
        let url = self.url("postgres");
        let mut client = postgres::Client::connect(&url, postgres::NoTls).unwrap();
        for statement in statements {
            Self::retry(&mut client, statement);
        }
    }

    fn retry(client: &mut postgres::Client, statement: &str) {
        for attempt in 0.. {
            match client.simple_query(statement) {
                Ok(_) => return,
                Err(_) if attempt < 50 => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("{statement}: {e:?}"),
            }
        }
    }
}

impl SimServer for PgStore {
    fn pull(&mut self, request: &PullRequest) -> Result<PullResponse, ErrorBody> {
        self.store().pull(request).map_err(|e| e.body())
    }

    fn push(&mut self, request: &PushRequest) -> Result<PushResponse, ErrorBody> {
        self.store().push(request).map_err(|e| e.body())
    }

    fn restart(&mut self) {
        self.store = None;
        self.restarts += 1;
        if self.new_epoch_on_restart {
            let epoch = format!("{:032x}", 0xe0c0_u128 << 64 | u128::from(self.restarts));
            let mut client =
                postgres::Client::connect(&self.url(&self.name), postgres::NoTls).unwrap();
            client
                .execute("UPDATE atomsync_meta SET epoch = $1", &[&epoch])
                .expect("the epoch changes");
        }
        self.open();
    }

    fn checkpoint(&mut self) {
        self.store = None;
        let (name, copy) = (&self.name, format!("{}_checkpoint", self.name));
        self.admin(&[
            format!("DROP DATABASE IF EXISTS {copy}"),
            format!("CREATE DATABASE {copy} TEMPLATE {name}"),
        ]);
        self.open();
    }

    fn restore_checkpoint(&mut self) {
        self.store = None;
        let (name, copy) = (&self.name, format!("{}_checkpoint", self.name));
        self.admin(&[
            format!("DROP DATABASE {name}"),
            format!("CREATE DATABASE {name} TEMPLATE {copy}"),
        ]);
        self.open();
    }

    fn purge_tombstones(&mut self) {
        let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
        self.store()
            .purge_tombstones(tomorrow)
            .expect("tombstones purge");
    }
}

#[test]
fn engines_converge_against_the_postgresql_store() {
    let config = SimConfig {
        default_seeds: DEFAULT_SEEDS,
        ..SimConfig::default()
    };
    // One run in four gives the database a new epoch on restarts.
    let stats = run_seeds(REPLAY, &config, |seed| PgStore::new(seed % 4 == 1));
    eprintln!("{stats:#?}");
    stats.assert_faults_happened();
}
