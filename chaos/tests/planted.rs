//! Proof that the checkers bite: with one known bug planted at a time (the test-only
//! `planted-bugs` feature), the simulator finds it within a bounded number of seeds and names
//! the failing seed and checker.

use settle_chaos::faults::FaultClass;
use settle_chaos::run::{run_seed, RunOptions};
use settle_cluster::planted::PlantedBug;

/// Seeds tried per bug before the test gives up.
const SEEDS_MAX: u64 = 300;

fn find(bug: PlantedBug, faults: FaultClass) -> (u64, &'static str, String) {
    find_within(bug, faults, SEEDS_MAX)
}

fn find_within(bug: PlantedBug, faults: FaultClass, seeds: u64) -> (u64, &'static str, String) {
    for seed in 0..seeds {
        let mut options = RunOptions::new(seed);
        options.planted = bug;
        options.faults = faults;
        let report = run_seed(&options);
        if let Some(violation) = report.violation {
            println!("{bug:?}: found by seed {seed} ({faults}): {} — {}", violation.checker, violation.message);
            return (seed, violation.checker, violation.message);
        }
    }
    panic!("{bug:?} was not found in {seeds} seeds");
}

/// Acknowledging before the flush loses acknowledged transfers when nodes crash (or leaves a
/// replica that lost entries it acknowledged unable to converge: `liveness`).
#[test]
fn ack_before_flush_is_caught() {
    let (_, checker, _) = find(PlantedBug::AckBeforeFlush, FaultClass::Crash);
    assert!(
        ["acknowledged_durable", "core_assertion", "conservation", "at_most_once", "replicas_converge", "liveness"].contains(&checker),
        "{checker}"
    );
}

/// A payee credit applied twice creates money.
#[test]
fn double_credit_is_caught() {
    let (_, checker, _) = find(PlantedBug::DoubleCredit, FaultClass::Net);
    assert!(["at_most_once", "conservation"].contains(&checker), "{checker}");
}

/// A deposed leader answering reads without ReadIndex returns stale state.
#[test]
fn stale_leader_read_is_caught() {
    let (_, checker, _) = find(PlantedBug::StaleLeaderRead, FaultClass::Net);
    assert_eq!(checker, "linearizable_reads");
}

/// A coordinator that releases a transfer on timeout without asking the payee loses the
/// payee's credit from the books.
#[test]
fn coordinator_aborting_alone_is_caught() {
    let (_, checker, _) = find(PlantedBug::CoordinatorAbortsAlone, FaultClass::Net);
    assert!(["conservation", "acknowledged_durable", "at_most_once"].contains(&checker), "{checker}");
}

/// Skipping the funds check on the cross-shard path overdraws accounts.
#[test]
fn skipped_overdraft_check_is_caught() {
    let (_, checker, _) = find(PlantedBug::SkipOverdraftCheck, FaultClass::None);
    assert!(["no_overdraft", "core_assertion"].contains(&checker), "{checker}");
}

/// The bug of issue 9 (records found under a reused transfer id trusted without comparing
/// bodies: money destroyed) is caught within the first few dozen seeds, under every fault.
#[test]
fn id_reuse_unchecked_is_caught() {
    let (_, checker, _) = find_within(PlantedBug::IdReuseUnchecked, FaultClass::All, 40);
    assert!(["one_body_per_id", "conservation", "core_assertion"].contains(&checker), "{checker}");
}

/// An origin that does not reserve ids on their home shard lets a payer on another shard post
/// a second body under a used id; and a lookup without payer (routed through the home shard's
/// reservation) no longer finds transfers it acknowledged.
#[test]
fn skipped_id_reservation_is_caught() {
    let (_, checker, _) = find_within(PlantedBug::SkipIdReservation, FaultClass::All, 40);
    assert!(["one_body_per_id", "linearizable_reads"].contains(&checker), "{checker}");
}

/// Passivating an account whose last update was not yet written to the store loses that
/// update (accounts are virtual actors with a small cache in every seed): accounts whose
/// creation was acknowledged vanish (setup cannot fund them: `liveness`), balances stop adding
/// up, or replicas disagree.
#[test]
fn passivating_an_unflushed_account_is_caught() {
    let (_, checker, _) = find_within(PlantedBug::PassivateUnflushed, FaultClass::None, 40);
    assert!(
        ["liveness", "conservation", "core_assertion", "replicas_converge", "acknowledged_durable", "linearizable_reads", "no_overdraft"]
            .contains(&checker),
        "{checker}"
    );
}

/// An overdraft check off by one minor unit on the same-shard path only: the workload's
/// boundary amounts (exactly the payer's last read available balance, or one unit more) find
/// it within the first seeds.
#[test]
fn overdraft_off_by_one_is_caught() {
    let (_, checker, _) = find_within(PlantedBug::OverdraftOffByOne, FaultClass::All, 100);
    assert!(["no_overdraft", "core_assertion"].contains(&checker), "{checker}");
}

/// A payer that finalizes "posted" although the payee shard refused destroys the amount: the
/// workload's transfers to missing payees make payee refusals common in every seed.
#[test]
fn finalizing_posted_on_a_refusal_is_caught() {
    let (_, checker, _) = find_within(PlantedBug::FinalizePostsRefused, FaultClass::All, 100);
    assert!(["conservation", "rejected_never_posted", "linearizable_reads", "core_assertion"].contains(&checker), "{checker}");
}
