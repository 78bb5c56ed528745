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
        if replica.compacted_index() == 0 {
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

fn propose(peer: &mut ShardPeer, change: ConfChangeType, node: NodeId, stage: MoveStage) -> MoveStage {
    match peer.replica.propose_conf_change(change, node) {
        Ok(()) => stage,
        // Raft refused it (a change in flight it had not applied, a transfer of leadership
        // under way): nothing changed, the next request tries again.
        Err(_) => MoveStage::Waiting,
    }
}
