//! The mutation score: with one known bug planted at a time (the test-only `planted-bugs`
//! feature), the default simulator run (3 nodes, every fault) finds it within the first 100
//! seeds, and names the seed and the checker. The README's simulator section lists how often
//! each is caught (`settle sim --seeds 100 --planted BUG`).

use settle_chaos::faults::FaultClass;
use settle_chaos::run::{run_seed, RunOptions};
use settle_cluster::planted::PlantedBug;

/// Seeds of the default run tried per bug before the test gives up.
const SEEDS_MAX: u64 = 100;

/// The first seed of the default run that catches `bug`, and the checker that did; panics when
/// none of the first `SEEDS_MAX` does, or when the checker is not one of `expected`.
fn caught(bug: PlantedBug, expected: &[&str]) -> u64 {
    caught_on(3, bug, expected)
}

/// `caught` on clusters of `nodes` nodes.
fn caught_on(nodes: u64, bug: PlantedBug, expected: &[&str]) -> u64 {
    for seed in 0..SEEDS_MAX {
        let mut options = RunOptions::new(seed);
        options.nodes = nodes;
        options.planted = bug;
        options.faults = FaultClass::All;
        let report = run_seed(&options);
        if let Some(violation) = report.violation {
            println!("{bug:?}: found by seed {seed}: {} — {}", violation.checker, violation.message);
            assert!(expected.contains(&violation.checker), "{bug:?} found by an unexpected checker: {violation:?}");
            return seed;
        }
    }
    panic!("{bug:?} was not found in {SEEDS_MAX} seeds");
}

/// A leader that counts its own log write durable before the IO completes commits entries a
/// quorum does not hold: the quorum-durability invariant sees it at the commit.
#[test]
fn ack_before_flush_is_caught() {
    caught(PlantedBug::AckBeforeFlush, &["committed_on_quorum", "acknowledged_durable", "conservation", "at_most_once"]);
}

/// A payee credit applied twice creates money.
#[test]
fn double_credit_is_caught() {
    caught(PlantedBug::DoubleCredit, &["at_most_once", "conservation", "payer_matches_payee", "reads_match_model"]);
}

/// A deposed leader answering reads without ReadIndex returns stale state: reads of the latest
/// acknowledged accounts (the reader clients) show it.
#[test]
fn stale_leader_read_is_caught() {
    caught(PlantedBug::StaleLeaderRead, &["linearizable_reads", "reads_match_model"]);
}

/// A coordinator that releases a transfer on timeout without asking the payee leaves the
/// payee's credit standing against a released payer record.
#[test]
fn coordinator_aborting_alone_is_caught() {
    caught(
        PlantedBug::CoordinatorAbortsAlone,
        &["payer_matches_payee", "conservation", "acknowledged_durable", "at_most_once", "reads_match_model"],
    );
}

/// Skipping the funds check on the cross-shard path overdraws accounts.
#[test]
fn skipped_overdraft_check_is_caught() {
    // The planted path skips the rest of the payer's checks too, the KYC limits among them.
    caught(PlantedBug::SkipOverdraftCheck, &["no_overdraft", "core_assertion", "reads_match_model", "limits_respected"]);
}

/// The bug of issue 9 (records found under a reused transfer id trusted without comparing
/// bodies: money destroyed).
#[test]
fn id_reuse_unchecked_is_caught() {
    caught(PlantedBug::IdReuseUnchecked, &["one_body_per_id", "linearizable_reads", "conservation", "core_assertion", "reads_match_model"]);
}

/// An origin that does not reserve ids on their home shard lets a payer on another shard post
/// a second body under a used id; and a lookup without payer (routed through the home shard's
/// reservation) no longer finds transfers it acknowledged.
#[test]
fn skipped_id_reservation_is_caught() {
    caught(PlantedBug::SkipIdReservation, &["one_body_per_id", "linearizable_reads", "reads_match_model"]);
}

/// Passivating an account whose last update was not yet written to the store loses that
/// update (accounts are virtual actors with a small cache in every seed): accounts whose
/// creation was acknowledged vanish (setup cannot fund them: `liveness`), or memory and store
/// disagree.
#[test]
fn passivating_an_unflushed_account_is_caught() {
    caught(
        PlantedBug::PassivateUnflushed,
        &["liveness", "memory_matches_store", "conservation", "replicas_converge", "acknowledged_durable", "reads_match_model"],
    );
}

/// An overdraft check off by one minor unit on the same-shard path only: the workload's
/// boundary amounts (exactly the payer's last read available balance, or one unit more) find
/// it.
#[test]
fn overdraft_off_by_one_is_caught() {
    caught(PlantedBug::OverdraftOffByOne, &["no_overdraft", "core_assertion"]);
}

/// A payer that finalizes "posted" although the payee shard refused: the record-by-record
/// check of both sides sees it (transfers to missing payees make refusals common).
#[test]
fn finalizing_posted_on_a_refusal_is_caught() {
    caught(
        PlantedBug::FinalizePostsRefused,
        &["payer_matches_payee", "conservation", "rejected_never_posted", "linearizable_reads", "reads_match_model"],
    );
}

/// Compacting the log when a checkpoint is handed to the state store, before it is durable:
/// the state store completes on its own schedule (with a long fsync tail), so the log's
/// compaction becomes durable first and the invariant on durable state sees it.
#[test]
fn compaction_before_the_checkpoint_is_durable_is_caught() {
    caught(PlantedBug::CompactBeforeDurable, &["compaction_behind_state"]);
}

/// Compacting the log to the applied index, past the durable checkpoint.
#[test]
fn compaction_past_the_checkpoint_is_caught() {
    caught(PlantedBug::CompactPastCheckpoint, &["compaction_behind_state"]);
}

/// A nonce answered fresh without looking for its earlier use lets a captured signed request
/// be replayed: writers spend the same few nonce names through every node.
#[test]
fn nonce_forgotten_is_caught() {
    caught(PlantedBug::NonceForgotten, &["nonce_used_once"]);
}

/// A restarted replica that does not load the audit chain's head starts the chain over: its
/// memory differs from its store, its chain breaks, or it diverges from the other replicas.
#[test]
fn audit_head_not_loaded_is_caught() {
    caught(PlantedBug::AuditHeadNotLoaded, &["memory_matches_store", "audit_chain_intact", "replicas_converge", "acknowledged_durable"]);
}

/// A stop order checked on the same-shard path only lets a frozen account pay across shards:
/// writers place and lift stops on customer accounts while transfers go on.
#[test]
fn stop_ignored_cross_shard_is_caught() {
    caught(PlantedBug::StopIgnoredCrossShard, &["no_movement_while_frozen"]);
}

/// A refund applied without checking the original's refunded total lets refunds exceed the
/// original: writers refund random parts of acknowledged transfers, often more than is left.
#[test]
fn refund_cap_unchecked_is_caught() {
    caught(PlantedBug::RefundCapUnchecked, &["refunds_within_original"]);
}

/// A void that releases an already voided hold again drops the payer's pending debits below
/// its open holds (in a debug build the core's own assertion on the account may see it first):
/// writers void some holds twice.
#[test]
fn hold_voided_twice_is_caught() {
    caught(PlantedBug::HoldVoidedTwice, &["holds_balanced", "core_assertion"]);
}

/// A cross-shard debit left out of the payer's movements: the running balance of its statement
/// no longer ends at its balance.
#[test]
fn movement_lost_on_finalize_is_caught() {
    caught(PlantedBug::MovementLostOnFinalize, &["statements_match_balances", "core_assertion"]);
}

/// A capture that applies after its hold expired (before the sweep) posts anyway: the hold's
/// record says it was closed after its expiry. Writers capture holds of 100 ms to 2 s at random
/// times.
#[test]
fn hold_captured_after_expiry_is_caught() {
    caught(PlantedBug::HoldCapturedAfterExpiry, &["holds_balanced"]);
}

/// KYC limits checked on the same-shard path only: a class I customer's payments to other
/// shards pass its lifetime limit (the workload's customers have low limits).
#[test]
fn kyc_limit_unchecked_cross_shard_is_caught() {
    caught(PlantedBug::KycLimitUncheckedCrossShard, &["limits_respected"]);
}

/// A released hold still counted against its customer: the counter drifts from the records.
#[test]
fn spend_kept_on_release_is_caught() {
    caught(PlantedBug::SpendKeptOnRelease, &["spend_matches_history", "core_assertion"]);
}

/// A revoke applying after its delayed transfer fell due (before the sweep) takes the money
/// back: the transfer's record says it was revoked after its arrival time.
#[test]
fn delayed_revoked_after_arrival_is_caught() {
    // The restore of an online backup runs the same shard checks on the cut.
    caught(PlantedBug::DelayedRevokedAfterArrival, &["holds_balanced", "backup_cut_consistent"]);
}

/// A shard that acts on a credit request or decision from a shard past a backup fence before
/// taking its own cut: an online backup holds a transfer posted without its credit, or a credit
/// without its transfer.
#[test]
fn fence_ignored_is_caught() {
    caught(PlantedBug::FenceIgnored, &["backup_cut_consistent"]);
}

/// Payments across shards that skip the verification step: customer c1, who verifies every
/// payment, pays other shards without a passed challenge.
#[test]
fn verification_skipped_cross_shard_is_caught() {
    caught(PlantedBug::VerificationSkippedCrossShard, &["verified_before_paid"]);
}

/// Snapshot streams that reuse one staging generation, cleared by a background delete that
/// races the new stream's writes (the bug CI's catch-up test found under load): staged or
/// installed records vanish.
#[test]
fn staging_range_reused_is_caught() {
    caught(
        PlantedBug::StagingRangeReused,
        &[
            "at_most_once",
            "audit_chain_intact",
            "compaction_behind_state",
            "memory_matches_store",
            "conservation",
            "replicas_converge",
            "acknowledged_durable",
            "core_assertion",
            "liveness",
            "reads_match_model",
            "linearizable_reads",
            "statements_match_balances",
            "holds_balanced",
            "payer_matches_payee",
        ],
    );
}

/// A replica move that removes the old voter before the new one caught up (on 4 nodes, where
/// the simulator moves replicas): the new voter's own log shows it at the removal.
#[test]
fn remove_before_caught_up_is_caught() {
    caught_on(4, PlantedBug::RemoveBeforeCaughtUp, &["redundancy_kept"]);
}
