//! The seeded fault simulation of the sync engine
//! (`atomsync_core::engine::testing`) against the real server store,
//! `atomsync_server::Store`, in-process: SQLite in a file of a temporary
//! directory, reopened from that file on every server restart.
//!
//! Two tests: the simulation's own checks (convergence, no lost acknowledged
//! write, every conflict reported, no skipped change) against the real store,
//! and a differential run in which every request also goes to the in-memory
//! model (`FakeServer`) and the two must answer alike.
//!
//! 200 seeds each by default; `ATOMSYNC_SIM_SEEDS=n` runs `n` seeds and
//! `ATOMSYNC_SEED=n` replays seed `n` with a trace.

use std::path::{Path, PathBuf};

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
    real_epoch: String,
    model_epoch: String,
}

impl Differential {
    fn new() -> Differential {
        let mut real = RealStore::new(false);
        let model = FakeServer::new();
        let real_epoch = real.store().epoch().to_owned();
        let model_epoch = model.cursor().epoch;
        Differential {
            real,
            model,
            real_epoch,
            model_epoch,
        }
    }

    fn to_model(&self, cursor: &Cursor) -> Cursor {
        let mut cursor = cursor.clone();
        if cursor.epoch == self.real_epoch {
            cursor.epoch.clone_from(&self.model_epoch);
        }
        cursor
    }

    fn to_real(&self, cursor: &mut Cursor) {
        if cursor.epoch == self.model_epoch {
            cursor.epoch.clone_from(&self.real_epoch);
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
        let mut model = self.model.push(request);
        if let Ok(response) = &mut model {
            self.to_real(&mut response.cursor);
        }
        Self::compare("push", request, &real, &model);
        real
    }

    fn restart(&mut self) {
        self.real.restart();
        self.model.restart();
    }
}

#[test]
fn real_store_answers_like_the_model() {
    let stats = run(|_| Differential::new());
    eprintln!("{stats:#?}");
    if stats.runs >= 100 {
        assert!(
            stats.conflicts > 0 && stats.server_restarts > 0,
            "{stats:?}"
        );
    }
}
