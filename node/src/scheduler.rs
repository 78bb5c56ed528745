//! The node's own repair loop: every `rebuild_interval_ms`, each replica here that is
//! quarantined (a stored record failed its checksum) takes one step of being rebuilt
//! (`Request::MoveReplica` with `from == to`: removed, added back empty, promoted;
//! `core/operation/membership.rs`). The node asks only about its own replicas — the leader
//! cannot tell a damaged voter from a sound one in a quiet shard — and only for replicas it saw
//! quarantined, until it runs a voter of the shard again (the leader promotes the learner it
//! added back, and answers `done` for it once it keeps up). A learner of an ordinary move is
//! never asked about: the node's view of its own promotion may trail the leader's, and a
//! rebuild step for a voter the leader did not add back removes it. Rebalancing and replacing dead nodes stay with the operator (`settle
//! node add|rebalance|replace`): moving data between machines is a decision, repairing a
//! replica in place is not.

use settle_actors::DriverHandle;
use settle_cluster::message::{Reply, Request};
use settle_cluster::ShardRole;
use std::time::Duration;

/// Runs until the process stops (spawned on the HTTP runtime).
pub async fn run(driver: DriverHandle, interval: Duration, timeout: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Shards seen quarantined here, until this node runs a voter of them again.
    let mut rebuilding = std::collections::BTreeSet::new();
    loop {
        ticker.tick().await;
        let Some(status) = driver.status().await else {
            continue;
        };
        let me = status.node;
        for shard in &status.shards {
            if shard.role == ShardRole::Quarantined {
                rebuilding.insert(shard.id);
            } else if shard.role.hosted() && shard.applied_index > 0 && shard.replicas.contains(&me) {
                // A voter by its own applied configuration (an empty replica waiting for its
                // snapshot still shows the bootstrap voters: it applied nothing).
                rebuilding.remove(&shard.id);
            }
        }
        let repairs = status.shards.iter().filter(|shard| rebuilding.contains(&shard.id));
        for shard in repairs {
            let request = Request::MoveReplica { shard: shard.id, from: me, to: me };
            match driver.call_traced(request, timeout, None).await {
                Reply::Moved(moved) => {
                    tracing::info!(shard_id = shard.id, stage = ?moved.stage, voters = ?moved.voters, "rebuilding this node's replica")
                }
                other => tracing::debug!(shard_id = shard.id, reply = ?other, "rebuild step not taken; next round retries"),
            }
        }
    }
}
