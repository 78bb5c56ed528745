//! The node's own repair loop: every `rebuild_interval_ms`, each replica here that is
//! quarantined (a stored record failed its checksum), or that is a learner (a rebuild or move
//! under way that a restart interrupted), takes one step of being rebuilt
//! (`Request::MoveReplica` with `from == to`: removed, added back empty, promoted;
//! `core/operation/membership.rs`). The node asks only about its own replicas — the leader
//! cannot tell a damaged voter from a sound one in a quiet shard — and stops asking once it
//! runs a voter again. Rebalancing and replacing dead nodes stay with the operator (`settle
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
    loop {
        ticker.tick().await;
        let Some(status) = driver.status().await else {
            continue;
        };
        let me = status.node;
        let repairs = status.shards.iter().filter(|shard| shard.role == ShardRole::Quarantined || shard.learners.contains(&me));
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
