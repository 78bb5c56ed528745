//! Moving a shard's replica from one node to another, one step per `Request::MoveReplica` on
//! the shard's leader (the admin tool repeats the request until `MoveStage::Done`). The steps,
//! one raft membership change at a time, so the shard never runs on fewer caught-up voters than
//! it started with:
//! 1. the leader's log is compacted (so the new member starts from a streamed snapshot, never
//!    from a log that begins before the shard's first membership was recorded);
//! 2. `to` joins as a learner: it receives the log, does not vote;
//! 3. once it holds all but `CATCH_UP_SLACK_ENTRIES` of the leader's log, it is promoted;
//! 4. if `from` leads, leadership goes to a caught-up voter first;
//! 5. once the promoted voter holds the promotion entry, `from` is removed.
//!
//! Every step looks at the applied membership, so a repeated or re-routed request (after a
//! failover mid-move) continues where the shard is.
//!
//! A move with `from == to` **rebuilds** that node's replica (one quarantined after its records
//! failed a checksum): the voter is removed first (the others hold every committed entry once
//! the removal commits), then added back as a learner with an empty log and promoted like any
//! new member — a new replica under the same node id, never the damaged state voting again.
//! The leader cannot tell a damaged voter from a sound one in a quiet shard (both look caught
//! up), so the requester decides: the node itself asks while its replica is quarantined or a
//! learner, and stops once it runs a voter again (`api/scheduler.rs`; the simulator's driver).

use super::super::peer::{Origin, ShardPeer};
use super::super::Ctx;
use crate::ids::NodeId;
use crate::message::{MoveStage, MoveStatus, Reply};
use crate::placement::REPLICAS_PER_SHARD;
use crate::planted::{planted, PlantedBug};
use raft::eraftpb::ConfChangeType;

/// A learner this close to the leader's last index is promoted (under load it trails by the
/// entries in flight).
pub const CATCH_UP_SLACK_ENTRIES: u64 = 64;

/// Takes the next step of moving the shard's replica on `from` to `to`, and answers where the
/// move stands.
pub(in crate::core) fn accept_move(peer: &mut ShardPeer, origin: Origin, from: NodeId, to: NodeId, ctx: &mut Ctx) {
    let stage = step(peer, from, to, ctx);
    let replica = &peer.replica;
    let status = MoveStatus {
        shard: replica.shard(),
        stage,
        voters: replica.voters(),
        learners: replica.learners(),
        matched: replica.peer_matched(to).unwrap_or(0),
        last_index: replica.last_index(),
    };
    ctx.out.replies.push((origin, Reply::Moved(status)));
}

fn step(peer: &mut ShardPeer, from: NodeId, to: NodeId, ctx: &mut Ctx) -> MoveStage {
    if from == to {
        return rebuild_step(peer, to, ctx);
    }
    let replica = &mut peer.replica;
    let (voters, learners) = (replica.voters(), replica.learners());
    let member = |node: NodeId| voters.contains(&node) || learners.contains(&node);
    if voters.contains(&to) && !member(from) {
        return MoveStage::Done;
    }
    if replica.conf_change_pending() {
        return MoveStage::Waiting;
    }
    if !member(to) {
        if !member(from) {
            return MoveStage::Invalid;
        }
        // The new member starts from a snapshot taken after the last membership change: an
        // older one may name it a voter of a configuration it was removed from.
        if replica.compacted_index() == 0 || replica.compacted_index() < replica.conf_index() {
            peer.compact_fully = true;
            return MoveStage::Preparing;
        }
        return propose(peer, ConfChangeType::AddLearnerNode, to, MoveStage::AddingLearner);
    }
    let matched = replica.peer_matched(to).unwrap_or(0);
    if learners.contains(&to) {
        let caught_up = matched.saturating_add(CATCH_UP_SLACK_ENTRIES) >= replica.last_index() && matched > 0;
        if !caught_up && !planted(ctx.planted, PlantedBug::RemoveBeforeCaughtUp) {
            return MoveStage::CatchingUp;
        }
        return propose(peer, ConfChangeType::AddNode, to, MoveStage::Promoting);
    }
    // `to` votes and `from` is still a member: a move past its promotion has a voter to spare.
    if voters.len() <= REPLICAS_PER_SHARD && voters.contains(&from) {
        return MoveStage::Invalid;
    }
    // The promotion's index is known to the replica that applied it; after a restart or a
    // snapshot it is not (0): then the new voter must hold everything committed.
    let promoted_at = match replica.conf_index() {
        0 => replica.commit_index(),
        index => index,
    };
    let holds_promotion = matched >= promoted_at && matched > 0;
    if !holds_promotion && !planted(ctx.planted, PlantedBug::RemoveBeforeCaughtUp) {
        return MoveStage::CatchingUp;
    }
    if from == ctx.node {
        let last = replica.last_index();
        let target = voters
            .iter()
            .copied()
            .filter(|voter| *voter != from)
            .max_by_key(|voter| (replica.peer_matched(*voter) == Some(last), *voter == to));
        if let Some(target) = target {
            replica.transfer_leader(target);
        }
        return MoveStage::HandingOff;
    }
    propose(peer, ConfChangeType::RemoveNode, from, MoveStage::Removing)
}

/// One step of rebuilding `node`'s replica: remove it while it does not keep up, add it back
/// as a learner, promote it once caught up.
fn rebuild_step(peer: &mut ShardPeer, node: NodeId, ctx: &mut Ctx) -> MoveStage {
    let replica = &mut peer.replica;
    let (voters, learners) = (replica.voters(), replica.learners());
    let matched = replica.peer_matched(node).unwrap_or(0);
    let caught_up = matched > 0 && matched.saturating_add(CATCH_UP_SLACK_ENTRIES) >= replica.last_index();
    if node == ctx.node || (voters.contains(&node) && caught_up && peer.rebuilt.contains(&node)) {
        // The leader runs its replica (nothing of it is damaged), or added it back itself and it
        // keeps up (one damaged again, which stops acknowledging, is rebuilt again).
        return MoveStage::Done;
    }
    if replica.conf_change_pending() {
        return MoveStage::Waiting;
    }
    if voters.contains(&node) {
        // Never below two voters: the shard keeps a quorum that can commit the re-addition.
        if voters.len() < REPLICAS_PER_SHARD {
            return MoveStage::Invalid;
        }
        // The voters that stay must hold everything committed: removing the one that holds
        // an entry they lack would leave it on fewer copies than a quorum of the new set.
        let commit = replica.commit_index();
        let others_hold = voters
            .iter()
            .filter(|voter| **voter != node)
            .all(|voter| *voter == ctx.node || replica.peer_matched(*voter).is_some_and(|matched| matched >= commit));
        if !others_hold {
            return MoveStage::CatchingUp;
        }
        peer.rebuilt.remove(&node);
        return propose(peer, ConfChangeType::RemoveNode, node, MoveStage::Removing);
    }
    if learners.contains(&node) {
        if !caught_up && !planted(ctx.planted, PlantedBug::RemoveBeforeCaughtUp) {
            return MoveStage::CatchingUp;
        }
        return propose(peer, ConfChangeType::AddNode, node, MoveStage::Promoting);
    }
    // The empty replica must start from a snapshot taken after its removal: an older one names
    // it a voter, and replaying its own removal would stop it.
    if replica.compacted_index() == 0 || replica.compacted_index() < replica.conf_index() {
        peer.compact_fully = true;
        return MoveStage::Preparing;
    }
    peer.rebuilt.insert(node);
    propose(peer, ConfChangeType::AddLearnerNode, node, MoveStage::AddingLearner)
}

fn propose(peer: &mut ShardPeer, change: ConfChangeType, node: NodeId, stage: MoveStage) -> MoveStage {
    match peer.replica.propose_conf_change(change, node) {
        Ok(()) => stage,
        // Raft refused it (a change in flight it had not applied, a transfer of leadership
        // under way): nothing changed, the next request tries again.
        Err(_) => MoveStage::Waiting,
    }
}
