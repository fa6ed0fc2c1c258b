//! The seeded fault simulation of the sync engine
//! (`atomsync_core::engine::testing`) against the real server store,
//! `atomsync_server::Store`, in-process: SQLite in a file of a temporary
//! directory, reopened from that file on every server restart.
//!
//! Two tests: the simulation's own checks (convergence, no lost acknowledged
//! write, every conflict reported, no skipped change, nothing sent before it
//! is committed, no reused mutation number; with asynchronous and failing
//! client storage, tabs, and tokens that expire) against the real store,
//! and a differential run in which every request also goes to the in-memory
//! model (`FakeServer`) and the two must answer alike.
//!
//! The store's database is copied aside (`checkpoint`) and put back
//! (`restore_checkpoint`) as files, the way an operator restores a backup or
//! a crash loses the last commits: the store must notice by its high-water
//! mark and take a new epoch, as the model does by construction.
//!
//! 200 seeds each by default; `ATOMSYNC_SIM_SEEDS=n` runs `n` seeds and
//! `ATOMSYNC_SEED=n` replays seed `n` with a trace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use atomsync_core::engine::testing::{FakeServer, SimConfig, SimServer, SimStats, run_seeds};
use atomsync_core::protocol::{
    Cursor, ErrorBody, PullRequest, PullResponse, PushRequest, PushResponse,
};
use atomsync_server::{Store, StoreOptions, Synchronous};
use tempfile::TempDir;

const REPLAY: &str = "cargo test -p atomsync-tests --test sim_real_store";
const DEFAULT_SEEDS: u64 = 200;

/// The real store as a simulation server.
struct RealStore {
    path: PathBuf,
    store: Option<Store>,
    /// Whether restarts also give the database a new identity (epoch), as a
    /// database restored under a new identity would have: every cursor
    /// handed out before is reset, all data is kept.
    new_epoch_on_restart: bool,
    restarts: u64,
    _dir: TempDir,
}

fn open(path: &Path) -> Store {
    Store::open(path, StoreOptions::default().synchronous(Synchronous::Off))
        .unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

impl RealStore {
    fn new(new_epoch_on_restart: bool) -> RealStore {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("server.db");
        RealStore {
            store: Some(open(&path)),
            path,
            new_epoch_on_restart,
            restarts: 0,
            _dir: dir,
        }
    }

    fn store(&mut self) -> &mut Store {
        self.store.as_mut().expect("the store is open")
    }

    fn checkpoint_path(&self) -> PathBuf {
        self.path.with_extension("checkpoint")
    }
}

impl SimServer for RealStore {
    fn pull(&mut self, request: &PullRequest) -> Result<PullResponse, ErrorBody> {
        self.store().pull(request).map_err(|e| e.body())
    }

    fn push(&mut self, request: &PushRequest) -> Result<PushResponse, ErrorBody> {
        self.store().push(request).map_err(|e| e.body())
    }

    fn restart(&mut self) {
        // Closed before it is opened again, as a restarted process would.
        self.store = None;
        self.restarts += 1;
        if self.new_epoch_on_restart {
            let conn = rusqlite::Connection::open(&self.path).expect("the file opens");
            let epoch = format!("{:032x}", 0xe0c0_u128 << 64 | u128::from(self.restarts));
            conn.execute("UPDATE meta SET epoch = ?1", [epoch])
                .expect("the epoch changes");
        }
        self.store = Some(open(&self.path));
    }

    fn checkpoint(&mut self) {
        // Closed first: SQLite folds its WAL into the file, which is then a
        // consistent copy.
        self.store = None;
        std::fs::copy(&self.path, self.checkpoint_path()).expect("the database copies");
        self.store = Some(open(&self.path));
    }

    fn restore_checkpoint(&mut self) {
        self.store = None;
        for suffix in ["-wal", "-shm"] {
            let mut side = self.path.clone().into_os_string();
            side.push(suffix);
            let _absent = std::fs::remove_file(side);
        }
        std::fs::copy(self.checkpoint_path(), &self.path).expect("the copy is put back");
        self.store = Some(open(&self.path));
    }

    fn purge_tombstones(&mut self) {
        // Every tombstone is past a horizon that ends tomorrow.
        let tomorrow = SystemTime::now() + Duration::from_secs(86_400);
        self.store()
            .purge_tombstones(tomorrow)
            .expect("tombstones purge");
    }
}

/// `run_seeds` with [`DEFAULT_SEEDS`] (the real store is slower than the
/// model); `ATOMSYNC_SIM_SEEDS` and `ATOMSYNC_SEED` work as usual.
fn run<S: SimServer>(make_server: impl FnMut(u64) -> S) -> SimStats {
    let config = SimConfig {
        default_seeds: DEFAULT_SEEDS,
        ..SimConfig::default()
    };
    run_seeds(REPLAY, &config, make_server)
}

#[test]
fn engines_converge_against_the_real_store() {
    // One run in four gives the database a new epoch on restarts.
    let stats = run(|seed| RealStore::new(seed % 4 == 1));
    eprintln!("{stats:#?}");
    stats.assert_faults_happened();
}

/// The real store and the model side by side: every request goes to both,
/// the real answer is used, and the run panics (naming the seed) at the
/// first answer on which they differ. Epochs differ by nature, so the
/// model's cursors are translated to the real store's epoch.
struct Differential {
    real: RealStore,
    model: FakeServer,
    /// Real epoch -> model epoch, for every epoch either side has had.
    to_model: BTreeMap<String, String>,
    /// Model epoch -> real epoch.
    to_real: BTreeMap<String, String>,
}

impl Differential {
    fn new() -> Differential {
        let mut differential = Differential {
            real: RealStore::new(false),
            model: FakeServer::new(),
            to_model: BTreeMap::new(),
            to_real: BTreeMap::new(),
        };
        differential.pair_epochs();
        differential
    }

    /// Pairs the current epochs. A new epoch on one side only is an answer
    /// that differs: it pairs with the other side's old one and the next
    /// comparison fails.
    fn pair_epochs(&mut self) {
        let real = self.real.store().epoch().to_owned();
        let model = self.model.cursor().epoch;
        self.to_model.insert(real.clone(), model.clone());
        self.to_real.insert(model, real);
    }

    fn to_model(&self, cursor: &Cursor) -> Cursor {
        let mut cursor = cursor.clone();
        if let Some(epoch) = self.to_model.get(&cursor.epoch) {
            cursor.epoch.clone_from(epoch);
        }
        cursor
    }

    fn to_real(&self, cursor: &mut Cursor) {
        if let Some(epoch) = self.to_real.get(&cursor.epoch) {
            cursor.epoch.clone_from(epoch);
        }
    }

    fn compare<T: PartialEq + std::fmt::Debug>(
        what: &str,
        request: &dyn std::fmt::Debug,
        real: &Result<T, ErrorBody>,
        model: &Result<T, ErrorBody>,
    ) {
        let same = match (real, model) {
            (Ok(real), Ok(model)) => real == model,
            // Messages are for people; the codes must agree.
            (Err(real), Err(model)) => real.error == model.error,
            _ => false,
        };
        assert!(
            same,
            "the real store and the model answer a {what} differently\n  request: {request:?}\n  real:  {real:?}\n  model: {model:?}"
        );
    }
}

impl SimServer for Differential {
    fn pull(&mut self, request: &PullRequest) -> Result<PullResponse, ErrorBody> {
        let real = self.real.pull(request);
        let translated = PullRequest {
            since: request.since.as_ref().map(|c| self.to_model(c)),
            ..request.clone()
        };
        let mut model = self.model.pull(&translated);
        if let Ok(page) = &mut model {
            self.to_real(&mut page.cursor);
        }
        Self::compare("pull", request, &real, &model);
        real
    }

    fn push(&mut self, request: &PushRequest) -> Result<PushResponse, ErrorBody> {
        let real = self.real.push(request);
        let translated = PushRequest {
            epoch: request
                .epoch
                .as_ref()
                .map(|e| self.to_model.get(e).cloned().unwrap_or_else(|| e.clone())),
            ..request.clone()
        };
        let mut model = self.model.push(&translated);
        if let Ok(response) = &mut model {
            self.to_real(&mut response.cursor);
        }
        Self::compare("push", request, &real, &model);
        real
    }

    fn restart(&mut self) {
        self.real.restart();
        self.model.restart();
        self.pair_epochs();
    }

    fn checkpoint(&mut self) {
        self.real.checkpoint();
        SimServer::checkpoint(&mut self.model);
        self.pair_epochs();
    }

    fn restore_checkpoint(&mut self) {
        let before = (
            self.real.store().epoch().to_owned(),
            self.model.cursor().epoch,
        );
        self.real.restore_checkpoint();
        SimServer::restore_checkpoint(&mut self.model);
        let real_new = self.real.store().epoch() != before.0;
        let model_new = self.model.cursor().epoch != before.1;
        assert_eq!(
            real_new, model_new,
            "after a restore, the real store took a new epoch: {real_new}, the model: {model_new}"
        );
        self.pair_epochs();
    }

    fn purge_tombstones(&mut self) {
        self.real.purge_tombstones();
        SimServer::purge_tombstones(&mut self.model);
    }
}

#[test]
fn real_store_answers_like_the_model() {
    let stats = run(|_| Differential::new());
    eprintln!("{stats:#?}");
    stats.assert_faults_happened();
}
