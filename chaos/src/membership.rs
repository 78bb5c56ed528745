//! Replica moves in the simulator: on clusters with more nodes than replicas per shard, a
//! driver moves a random shard's replica from one of its voters (up, crashed or partitioned
//! off: a replacement) to a node without one, through the same request `settle node` sends
//! (`Request::MoveReplica`, repeated until done), while the workload runs under the seed's
//! faults — so crashes and partitions land in the middle of changes, and every checker runs
//! across them.
//!
//! Its own checker, `redundancy_kept`: when the leader answers that it removes the old voter,
//! the new voter's replica (read on its node, not from the leader's account) holds every entry
//! up to the point its promotion was proposed. Removing a voter before its replacement caught up
//! leaves the shard on fewer copies than it promises, and a replaced dead node's shard without
//! a quorum that can commit until a snapshot arrives.

use crate::checkers::Violation;
use crate::sim::SimCluster;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use settle_cluster::ids::{NodeId, ShardId};
use settle_cluster::message::{MoveStage, Reply, Request};
use settle_cluster::CallId;

/// How long after the previous move (or the start) the next one begins, at most.
const MOVE_GAP_MS_MAX: u64 = 2_000;
/// A move not finished this long after it began is abandoned (a later one continues it).
const MOVE_DEADLINE_MS: u64 = 15_000;
const CALL_TIMEOUT_MS: u64 = 1_000;

struct Move {
    shard: ShardId,
    from: NodeId,
    to: NodeId,
    started_ms: u64,
    call: Option<CallId>,
    /// The leader's last index when it last answered that it promotes `to`.
    promoted_at: Option<u64>,
    checked: bool,
}

pub struct MembershipDriver {
    rng: SmallRng,
    next_at_ms: u64,
    current: Option<Move>,
    /// Moves finished, moves abandoned at their deadline, and quarantined replicas rebuilt.
    pub done: u64,
    pub abandoned: u64,
    pub rebuilt: u64,
}

impl MembershipDriver {
    pub fn new(seed: u64) -> MembershipDriver {
        let mut rng = SmallRng::seed_from_u64(seed ^ 0x00de_c0de);
        let next_at_ms = rng.gen_range(0..MOVE_GAP_MS_MAX);
        MembershipDriver { rng, next_at_ms, current: None, done: 0, abandoned: 0, rebuilt: 0 }
    }

    /// Advances the move in progress; begins a new one when it is time and `begin` allows.
    pub fn step(&mut self, cluster: &mut SimCluster, begin: bool) -> Result<(), Violation> {
        let now = cluster.now_ms();
        if self.current.as_ref().is_some_and(|moving| now.saturating_sub(moving.started_ms) > MOVE_DEADLINE_MS) {
            let moving = self.current.take().expect("checked");
            cluster.note(format!("move shard {} {}→{}: abandoned at its deadline", moving.shard, moving.from, moving.to));
            self.abandoned += 1;
            self.next_at_ms = now + self.rng.gen_range(0..MOVE_GAP_MS_MAX);
        }
        if self.current.is_none() {
            if !begin || now < self.next_at_ms {
                return Ok(());
            }
            self.current = self.choose(cluster, now);
        }
        let Some(moving) = self.current.as_mut() else {
            self.next_at_ms = now + self.rng.gen_range(0..MOVE_GAP_MS_MAX);
            return Ok(());
        };
        // A rebuild is done once the node runs a voter of the shard again (its own applied
        // configuration says so): the leader cannot tell.
        if moving.from == moving.to && moving.call.is_none() && runs_voter(cluster, moving.to, moving.shard) {
            cluster.note(format!("rebuild shard {} on node {}: done", moving.shard, moving.to));
            self.rebuilt += 1;
            self.current = None;
            self.next_at_ms = now + self.rng.gen_range(0..MOVE_GAP_MS_MAX);
            return Ok(());
        }
        let request = Request::MoveReplica { shard: moving.shard, from: moving.from, to: moving.to };
        let Some(pending) = moving.call else {
            moving.call = Some(submit(cluster, &mut self.rng, request));
            return Ok(());
        };
        let status = match cluster.take_reply(pending) {
            None => return Ok(()),
            Some(Reply::Moved(status)) => status,
            Some(_) => {
                moving.call = Some(submit(cluster, &mut self.rng, request));
                return Ok(());
            }
        };
        moving.call = None;
        match status.stage {
            MoveStage::Promoting => {
                // The latest proposal counts: one lost with its leader is proposed again (at
                // another index, maybe a lower one on the new leader's log).
                moving.promoted_at = Some(status.last_index);
            }
            MoveStage::Removing if !moving.checked => {
                moving.checked = true;
                if let Some(promoted_at) = moving.promoted_at {
                    let held = cluster.core(moving.to).and_then(|core| {
                        core.replicas().find(|replica| replica.shard() == moving.shard).map(|replica| replica.last_index())
                    });
                    if let Some(held) = held.filter(|held| *held < promoted_at) {
                        let message = format!(
                            "shard {}: voter {} removed while its replacement {} held the log to {held}, short of {promoted_at} where it was promoted",
                            moving.shard, moving.from, moving.to
                        );
                        return Err(Violation::new("redundancy_kept", message));
                    }
                }
            }
            MoveStage::Done | MoveStage::Invalid => {
                cluster.note(format!("move shard {} {}→{}: {:?} {:?}", moving.shard, moving.from, moving.to, status.stage, status.voters));
                if status.stage == MoveStage::Done && moving.from != moving.to {
                    self.done += 1;
                }
                self.current = None;
                self.next_at_ms = now + self.rng.gen_range(0..MOVE_GAP_MS_MAX);
            }
            _ => {}
        }
        Ok(())
    }

    /// A quarantined replica on a live node to rebuild (`from == to`, any cluster size), else
    /// on clusters with a node to spare a shard, one of its voters and a node without a replica
    /// of it, as a live node sees the shard (a learner already added by an abandoned move is
    /// taken up again).
    fn choose(&mut self, cluster: &mut SimCluster, now: u64) -> Option<Move> {
        let live = cluster.live_nodes();
        let quarantined = live.iter().find_map(|node| {
            let status = cluster.core(*node)?.shard_status();
            status.iter().find(|shard| shard.role == settle_cluster::ShardRole::Quarantined).map(|shard| (*node, shard.id))
        });
        if let Some((node, shard)) = quarantined {
            cluster.note(format!("rebuild shard {shard} on node {node}: begins"));
            return Some(Move { shard, from: node, to: node, started_ms: now, call: None, promoted_at: None, checked: false });
        }
        if cluster.node_ids().len() <= settle_cluster::placement::REPLICAS_PER_SHARD {
            return None;
        }
        let viewer = *live.get(self.rng.gen_range(0..live.len().max(1)))?;
        let shards = cluster.placement().shard_count();
        let shard = self.rng.gen_range(0..shards);
        let status = cluster.core(viewer)?.shard_status().into_iter().find(|status| status.id == shard)?;
        let voters = status.replicas;
        let to = match status.learners.first() {
            Some(learner) => *learner,
            None => {
                let free: Vec<NodeId> = cluster.node_ids().into_iter().filter(|node| !voters.contains(node)).collect();
                *free.get(self.rng.gen_range(0..free.len().max(1)))?
            }
        };
        let candidates: Vec<NodeId> = voters.iter().copied().filter(|voter| *voter != to).collect();
        let from = *candidates.get(self.rng.gen_range(0..candidates.len().max(1)))?;
        cluster.note(format!("move shard {shard} {from}→{to}: begins"));
        Some(Move { shard, from, to, started_ms: now, call: None, promoted_at: None, checked: false })
    }
}

/// Whether `node` runs a replica of `shard` that is a voter by its own applied configuration
/// (one that applied something: an empty replica waiting for its snapshot still shows the
/// bootstrap voters).
fn runs_voter(cluster: &SimCluster, node: NodeId, shard: ShardId) -> bool {
    cluster.core(node).is_some_and(|core| {
        core.replicas().any(|replica| replica.shard() == shard && replica.applied_index() > 0 && replica.voters().contains(&node))
    })
}

fn submit(cluster: &mut SimCluster, rng: &mut SmallRng, request: Request) -> CallId {
    let live = cluster.live_nodes();
    let nodes: Vec<NodeId> = if live.is_empty() { cluster.node_ids() } else { live };
    let node = nodes[rng.gen_range(0..nodes.len())];
    cluster.submit(node, request, CALL_TIMEOUT_MS)
}
