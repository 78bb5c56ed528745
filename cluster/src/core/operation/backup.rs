//! Backups (`ledger/fence.rs`, `backup.rs`): a fence proposed on one named shard, answered once
//! applied; a chunk of a shard's cut, answered by the leader from the view its replica kept;
//! and the marker rule of the cross-shard protocol — a leader acts on a credit request or a
//! decision only once its shard applied the sender's fence (`fenced`).

use super::super::peer::{Origin, ShardPeer};
use super::super::Ctx;
use crate::ledger::{Command, FenceOutcome};
use crate::message::Reply;
use crate::planted::{planted, PlantedBug};
use crate::snapshot::SNAPSHOT_CHUNK_BYTES_MAX;

/// A fence for this shard: proposed, answered when applied (`applied`).
pub(super) fn accept_fence(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, epoch: u64) {
    super::propose_single(peer, origin, deadline_ms, Command::Fence(epoch));
}

/// A chunk of the shard's cut for `epoch`, answered at once from this replica's view.
pub(super) fn accept_chunk(peer: &mut ShardPeer, origin: Origin, epoch: u64, after: Option<Vec<u8>>, ctx: &mut Ctx) {
    let chunk = peer.replica.backup_chunk(epoch, after.as_deref(), SNAPSHOT_CHUNK_BYTES_MAX, ctx.time.monotonic_ms);
    let reply = if peer.replica.ledger().damage().is_some() { Reply::Unavailable } else { Reply::BackupChunk(Box::new(chunk)) };
    ctx.out.replies.push((origin, reply));
}

/// A fence applied on this shard: the messages parked for it are acted on now (on a leader;
/// a replica that does not lead drops them, their senders re-send them to the new leader).
pub(super) fn applied(peer: &mut ShardPeer, tag: crate::ids::ProposalTag, outcome: FenceOutcome, ctx: &mut Ctx) {
    if peer.fence_proposed.is_some_and(|(epoch, _)| epoch <= outcome.epoch) {
        peer.fence_proposed = None;
        let shard = peer.replica.shard();
        let credits = std::mem::take(&mut peer.fenced_credits);
        let decisions = std::mem::take(&mut peer.fenced_decisions);
        let legs = std::mem::take(&mut peer.fenced_legs);
        let leads = peer.replica.is_leader();
        if leads {
            for credit in credits {
                ctx.out.credit(shard, credit, outcome.epoch);
            }
            for decision in decisions {
                ctx.out.decision(shard, decision, outcome.epoch);
            }
        }
        for (origin, deadline_ms, request) in legs {
            if leads {
                super::accept(peer, origin, deadline_ms, request, ctx);
            } else {
                ctx.out.replies.push((origin, Reply::NotLeader { leader: peer.replica.leader() }));
            }
        }
    }
    super::answer_single(peer, tag, Reply::Fenced(outcome), ctx);
}

/// Keeps a payer-shard leg until the fence it needs applies (`applied`); past `PARKED_MAX` the
/// origin is told to try again (it re-sends the leg).
pub(super) fn park_leg(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, request: crate::message::Request, ctx: &mut Ctx) {
    if peer.fenced_legs.len() >= PARKED_MAX {
        ctx.out.replies.push((origin, Reply::NotLeader { leader: None }));
        return;
    }
    peer.fenced_legs.push((origin, deadline_ms, request));
}

/// At most this many credit requests (or decisions, or legs) wait for a fence on one shard.
const PARKED_MAX: usize = 4_096;

/// Keeps messages until the fence they need applies (`applied`); past `PARKED_MAX` they are
/// dropped, and the protocol re-sends them.
pub(in crate::core) fn park<T>(parked: &mut Vec<T>, items: Vec<T>) {
    let room = PARKED_MAX.saturating_sub(parked.len());
    parked.extend(items.into_iter().take(room));
}

/// Whether this leader's shard has applied backup fence `fence` (a message from a shard past it
/// may be acted on). If not, proposes that fence (again after `redrive_interval_ms`) and the
/// caller parks the message until it applies (`park`).
pub(in crate::core) fn fenced(peer: &mut ShardPeer, fence: u64, ctx: &mut Ctx) -> bool {
    if fence <= peer.replica.ledger().fence_epoch() || planted(ctx.planted, PlantedBug::FenceIgnored) {
        return true;
    }
    let now = ctx.time.monotonic_ms;
    let recent = peer.fence_proposed.is_some_and(|(epoch, at)| epoch >= fence && now.saturating_sub(at) < ctx.limits.redrive_interval_ms);
    if !recent {
        peer.fence_proposed = Some((fence, now));
        peer.propose_untagged(Command::Fence(fence));
    }
    false
}
