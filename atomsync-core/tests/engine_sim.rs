//! The seeded fault simulation of the sync engine against the in-memory
//! server model.
//!
//! `ATOMSYNC_SEED=n` replays seed `n` with a trace; `ATOMSYNC_SIM_SEEDS=n`
//! runs `n` seeds (default 1000).
//!
//! The mutant tests put a known adapter bug back in (`SimConfig::mutant`)
//! and show that the checks catch it: the checks can fail.

use atomsync_core::engine::testing::{
    FakeServer, Mutant, SimConfig, SimError, run_seeds, simulate,
};

#[test]
fn engines_converge_under_faults() {
    let stats = run_seeds(
        "cargo test -p atomsync-core --test engine_sim",
        &SimConfig::default(),
        // One run in four renumbers the database on restart: cursor resets.
        |seed| FakeServer::new().reepoch_on_restart(seed % 4 == 1),
    );
    eprintln!("{stats:#?}");
    // The known limitation, counted rather than failed: writes shown but
    // not committed when their tab or process died are gone, unreported.
    eprintln!(
        "known limitation: {} of {} writes were shown but not committed when their tab or process died",
        stats.shown_writes_lost_in_crash, stats.writes
    );
    stats.assert_faults_happened();
}

/// The first failing run of `config` among `seeds` seeds.
fn first_failure(config: &SimConfig, seeds: u64) -> Option<SimError> {
    (0..seeds).find_map(|seed| simulate(seed, FakeServer::new(), config).err())
}

/// Mutant: the adapter sends before its storage committed what the request
/// depends on (issue 9, finding 1). The send check catches it at once.
#[test]
fn checker_catches_a_send_before_commit() {
    let config = SimConfig {
        mutant: Some(Mutant::SendBeforeCommit),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 50).expect("a send before commit is caught");
    assert!(
        error.message.contains("that the storage does not hold"),
        "{error}"
    );
}

/// The same mutant with the send check off: its consequences (a write lost
/// without a report, a mutation number reused, a stored cursor past
/// documents not stored) are caught by the end-to-end checks too.
#[test]
fn consequences_of_a_send_before_commit_are_caught() {
    let config = SimConfig {
        mutant: Some(Mutant::SendBeforeCommit),
        check_sends: false,
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("a send before commit is caught");
    let caught = [
        "reused mutation number",
        "lost without a conflict report",
        "stored cursor",
    ];
    assert!(caught.iter().any(|c| error.message.contains(c)), "{error}");
}

/// Mutant: a leader deletes a follower's outbox entry when it applies it,
/// before the result commits (issue 9, finding 3). A leader that vanishes
/// in between loses the follower's write.
#[test]
fn checker_catches_an_ack_before_commit() {
    let config = SimConfig {
        mutant: Some(Mutant::AckBeforeCommit),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("an ack before commit is caught");
    assert!(
        error.message.contains("lost without a conflict report"),
        "{error}"
    );
}

/// Mutant: a new leader ignores the outbox its predecessor left (issue 9,
/// finding 3).
#[test]
fn checker_catches_a_replayless_handover() {
    let config = SimConfig {
        mutant: Some(Mutant::ReplaylessHandover),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("a replayless hand-over is caught");
    assert!(
        error.message.contains("lost without a conflict report"),
        "{error}"
    );
}

/// Mutant: the leader applies a follower's write on whatever it shows, not
/// on the value the follower saw (issue 9, finding 4). The checker judges
/// forwarded writes by the values the tabs showed, not by the fingerprint
/// (`Seen`) the code under test computes, so it sees the silent overwrite.
#[test]
fn checker_catches_a_blind_forward() {
    let config = SimConfig {
        mutant: Some(Mutant::BlindForward),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("a blind forward is caught");
    assert!(
        error.message.contains("lost without a conflict report"),
        "{error}"
    );
}

/// Mutant: a sync halted by a 401 stays halted when the token comes back
/// (issue 9, finding 6).
#[test]
fn checker_catches_a_halt_that_never_ends() {
    let config = SimConfig {
        mutant: Some(Mutant::NoResumeOnToken),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("a halt that never ends is caught");
    assert!(error.message.contains("halted at the end"), "{error}");
}

/// Mutant: a failed transaction is only reported, the engine goes on from
/// its state in memory (issue 9, finding 1).
#[test]
fn checker_catches_an_engine_not_restored_after_a_failed_transaction() {
    let config = SimConfig {
        mutant: Some(Mutant::NoRestoreOnAbort),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("a missing restore is caught");
    let caught = [
        "that the storage does not hold",
        "storage differs from the engine",
        "lost without a conflict report",
    ];
    assert!(caught.iter().any(|c| error.message.contains(c)), "{error}");
}

/// Mutant: a failed transaction is skipped and the later ones are written
/// (issue 9, finding 2). With the send check off, the stored-cursor check
/// catches a cursor stored past a pull page that was never stored.
#[test]
fn checker_catches_a_cursor_stored_past_a_lost_page() {
    let config = SimConfig {
        mutant: Some(Mutant::SkipFailedTransaction),
        check_sends: false,
        ..SimConfig::default()
    };
    let caught = (0..1000)
        .filter_map(|seed| simulate(seed, FakeServer::new(), &config).err())
        .find(|error| error.message.contains("stored cursor"));
    assert!(caught.is_some(), "the stored-cursor check never failed");
}

/// Mutant: a leader frozen past its lease is not fenced and commits over
/// its successor's state when it wakes (issue 9, finding 5).
#[test]
fn checker_catches_an_unfenced_leader() {
    let config = SimConfig {
        mutant: Some(Mutant::NoFence),
        ..SimConfig::default()
    };
    let error = first_failure(&config, 300).expect("an unfenced leader is caught");
    let caught = [
        "lost without a conflict report",
        "storage differs from the engine",
        "reused mutation number",
        "that the storage does not hold",
    ];
    assert!(caught.iter().any(|c| error.message.contains(c)), "{error}");
}
