//! Known bugs that can be planted, one at a time, to prove the simulator's checkers catch them
//! (`chaos/tests/planted.rs`). They exist only when the test-only `planted-bugs` feature is on;
//! without it `planted` is a constant `false` and the compiler drops every buggy branch.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum PlantedBug {
    #[default]
    None,
    /// Tell raft a round is durable as soon as it is handed to the IO thread.
    AckBeforeFlush,
    /// The payee shard posts the credit again when a duplicate credit request arrives.
    DoubleCredit,
    /// A leader answers reads from its own state without a ReadIndex round.
    StaleLeaderRead,
    /// The coordinator releases a transfer on timeout without asking the payee shard.
    CoordinatorAbortsAlone,
    /// Cross-shard prepare skips the funds check.
    SkipOverdraftCheck,
    /// The origin skips reserving a transfer id on its home shard: an id reused by a payer on
    /// another shard is posted a second time, with another body.
    SkipIdReservation,
    /// The bug of issue 9: a record found under a transfer id is trusted without comparing its
    /// body (the home shard accepts any body, the payee shard answers a decision made for
    /// another payer, the payer finalizes with it), so a reused id destroys money.
    IdReuseUnchecked,
    /// The account cache passivates accounts whose update was not yet written back to the
    /// store: the update is lost.
    PassivateUnflushed,
    /// The overdraft check lets a same-shard transfer take one minor unit more than available.
    OverdraftOffByOne,
    /// The payer finalizes a cross-shard transfer as posted although the payee shard refused
    /// it: the debit lands, the credit never does.
    FinalizePostsRefused,
    /// The log is compacted as soon as a checkpoint is handed to the state store, before the
    /// state store reports it durable: a crash in between leaves entries in neither store.
    CompactBeforeDurable,
    /// The log is compacted to the applied index, past the durable checkpoint it was told of.
    CompactPastCheckpoint,
    /// A request nonce is answered fresh without looking for an earlier use: a captured
    /// signed request can be replayed.
    NonceForgotten,
    /// A ledger opened from the store does not load where the audit chain ends: the next
    /// event starts the chain over, overwriting the first records.
    AuditHeadNotLoaded,
    /// A stop order is checked on the same-shard path only: a frozen account still pays
    /// payees on other shards.
    StopIgnoredCrossShard,
    /// A refund is applied without checking the original's refunded total: refunds exceed it.
    RefundCapUnchecked,
    /// A void of a hold that was already voided releases its amount again (the "voided twice"
    /// bug other ledgers shipped): the payer's pending debits drop below what it holds.
    HoldVoidedTwice,
    /// A cross-shard debit posted at finalize is not recorded as a movement: the payer's
    /// statement and its balances as of a time miss it.
    MovementLostOnFinalize,
    /// A capture (or void) that applies after the hold's expiry, before the expiry sweep ran,
    /// still takes it: money moves on an authorisation that had lapsed.
    HoldCapturedAfterExpiry,
    /// The KYC limits are checked on the same-shard path only: a customer's payments to payees
    /// on other shards pass its class's limit.
    KycLimitUncheckedCrossShard,
    /// A voided or expired hold still counts against its customer's limits (the counters drift
    /// from the history, and the customer is refused money it may spend).
    SpendKeptOnRelease,
    /// A revoke of a delayed transfer that applies after it fell due (before the sweep
    /// settled it) still takes the money back: a payment that had arrived is undone.
    DelayedRevokedAfterArrival,
    /// Payments to payees on other shards skip the verification step: a customer who verifies
    /// every payment pays across shards without proving it.
    VerificationSkippedCrossShard,
    /// The bug CI's catch-up test found: every snapshot stream stages into the same generation
    /// and clears it first with a background delete, which then meets (and deletes) what the
    /// new stream staged, or the state it installed.
    StagingRangeReused,
    /// A shard acts on a credit request, a decision or a reserved transfer from a shard past a
    /// backup fence before applying that fence itself (Chandy–Lamport's marker rule broken): a
    /// backup's cut can hold a posted transfer without its credit, a credit without its
    /// transfer, or a transfer without its id's reservation.
    FenceIgnored,
    /// A replica move promotes the new node and removes the old voter without waiting for the
    /// new one to catch up: the shard runs on fewer copies than it promises.
    RemoveBeforeCaughtUp,
}

/// Whether this build has the planted bugs compiled in (the `planted-bugs` feature).
pub const COMPILED: bool = cfg!(feature = "planted-bugs");

impl PlantedBug {
    /// Every bug that can be planted (not `None`).
    pub const ALL: [PlantedBug; 26] = [
        PlantedBug::AckBeforeFlush,
        PlantedBug::DoubleCredit,
        PlantedBug::StaleLeaderRead,
        PlantedBug::CoordinatorAbortsAlone,
        PlantedBug::SkipOverdraftCheck,
        PlantedBug::SkipIdReservation,
        PlantedBug::IdReuseUnchecked,
        PlantedBug::PassivateUnflushed,
        PlantedBug::OverdraftOffByOne,
        PlantedBug::FinalizePostsRefused,
        PlantedBug::CompactBeforeDurable,
        PlantedBug::CompactPastCheckpoint,
        PlantedBug::NonceForgotten,
        PlantedBug::AuditHeadNotLoaded,
        PlantedBug::StopIgnoredCrossShard,
        PlantedBug::RefundCapUnchecked,
        PlantedBug::HoldVoidedTwice,
        PlantedBug::MovementLostOnFinalize,
        PlantedBug::HoldCapturedAfterExpiry,
        PlantedBug::KycLimitUncheckedCrossShard,
        PlantedBug::SpendKeptOnRelease,
        PlantedBug::DelayedRevokedAfterArrival,
        PlantedBug::VerificationSkippedCrossShard,
        PlantedBug::StagingRangeReused,
        PlantedBug::FenceIgnored,
        PlantedBug::RemoveBeforeCaughtUp,
    ];
}

impl std::fmt::Display for PlantedBug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

impl std::str::FromStr for PlantedBug {
    type Err = String;

    /// A bug by its name (`AckBeforeFlush`), or `None`.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text == "None" {
            return Ok(PlantedBug::None);
        }
        PlantedBug::ALL.into_iter().find(|bug| format!("{bug:?}") == text).ok_or_else(|| {
            let names: Vec<String> = PlantedBug::ALL.iter().map(ToString::to_string).collect();
            format!("unknown planted bug {text:?} (one of {})", names.join(", "))
        })
    }
}

/// Whether `bug` is planted in this configuration.
#[cfg(feature = "planted-bugs")]
pub fn planted(configured: PlantedBug, bug: PlantedBug) -> bool {
    configured == bug
}

/// Whether `bug` is planted in this configuration: never, without the `planted-bugs` feature.
#[cfg(not(feature = "planted-bugs"))]
pub fn planted(_configured: PlantedBug, _bug: PlantedBug) -> bool {
    false
}
