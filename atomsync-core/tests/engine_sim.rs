//! The seeded fault simulation of the sync engine against the in-memory
//! server model.
//!
//! `ATOMSYNC_SEED=n` replays seed `n` with a trace; `ATOMSYNC_SIM_SEEDS=n`
//! runs `n` seeds (default 1000).

use atomsync_core::engine::testing::{FakeServer, SimConfig, run_seeds};

#[test]
fn engines_converge_under_faults() {
    let stats = run_seeds(
        "cargo test -p atomsync-core --test engine_sim",
        &SimConfig::default(),
        // One run in four renumbers the database on restart: cursor resets.
        |seed| FakeServer::new().reepoch_on_restart(seed % 4 == 1),
    );
    eprintln!("{stats:#?}");
    stats.assert_faults_happened();
}
