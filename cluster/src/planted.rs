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
