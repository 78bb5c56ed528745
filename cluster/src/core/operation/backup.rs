//! Backups (`ledger/fence.rs`, `backup.rs`): a fence proposed on one named shard, answered once
//! applied; a chunk of a shard's cut, answered by the leader from the view its replica kept;
//! and the marker rule of the cross-shard protocol — a leader acts on a credit request or a
//! decision only once its shard applied the sender's fence (`fenced`).

use super::super::peer::{Origin, ShardPeer};
use super::super::Ctx;
use crate::ledger::{Command, FenceOutcome};
use crate::message::{FencedRequest, Reply, Request};
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

/// A fence applied on this shard: the messages and legs parked for a fence it now holds are
/// acted on (on a leader; a replica that does not lead drops the messages, whose senders re-send
/// them, and tells the legs' origins to retry); the others wait on.
pub(super) fn applied(peer: &mut ShardPeer, tag: crate::ids::ProposalTag, outcome: FenceOutcome, ctx: &mut Ctx) {
    if peer.fence_proposed.is_some_and(|(epoch, _)| epoch <= outcome.epoch) {
        peer.fence_proposed = None;
    }
    release(peer, outcome.epoch, ctx);
    super::answer_single(peer, tag, Reply::Fenced(outcome), ctx);
}

/// Acts on everything parked for a fence at or below `epoch` (the shard's epoch now).
fn release(peer: &mut ShardPeer, epoch: u64, ctx: &mut Ctx) {
    let shard = peer.replica.shard();
    let leads = peer.replica.is_leader();
    let (credits, waiting): (Vec<_>, Vec<_>) =
        std::mem::take(&mut peer.fenced_credits).into_iter().partition(|(needed, _)| *needed <= epoch);
    peer.fenced_credits = waiting;
    let (decisions, waiting): (Vec<_>, Vec<_>) =
        std::mem::take(&mut peer.fenced_decisions).into_iter().partition(|(needed, _)| *needed <= epoch);
    peer.fenced_decisions = waiting;
    let (legs, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut peer.fenced_legs).into_iter().partition(|(needed, ..)| *needed <= epoch);
    peer.fenced_legs = waiting;
    if leads {
        for (needed, credit) in credits {
            ctx.out.credit(shard, credit, needed);
        }
        for (needed, decision) in decisions {
            ctx.out.decision(shard, decision, needed);
        }
    }
    for (needed, origin, deadline_ms, request) in legs {
        if leads {
            super::accept(peer, origin, deadline_ms, Request::Fenced { fence: needed, request }, ctx);
        } else {
            ctx.out.replies.push((origin, Reply::NotLeader { leader: peer.replica.leader() }));
        }
    }
}

/// Keeps a payer-shard leg until the fence it needs applies (`applied`); past `PARKED_MAX` the
/// origin is told to try again (it re-sends the leg).
pub(super) fn park_leg(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, fence: u64, request: FencedRequest, ctx: &mut Ctx) {
    if peer.fenced_legs.len() >= PARKED_MAX {
        ctx.out.replies.push((origin, Reply::NotLeader { leader: None }));
        return;
    }
    peer.fenced_legs.push((fence, origin, deadline_ms, request));
}

/// At most this many credit requests (or decisions, or legs) wait for a fence on one shard.
const PARKED_MAX: usize = 4_096;

/// Keeps messages until the fence they need applies (`applied`); past `PARKED_MAX` they are
/// dropped, and the protocol re-sends them.
pub(in crate::core) fn park<T>(parked: &mut Vec<(u64, T)>, fence: u64, items: Vec<T>) {
    let room = PARKED_MAX.saturating_sub(parked.len());
    parked.extend(items.into_iter().take(room).map(|item| (fence, item)));
}

/// Whether this leader's shard has applied backup fence `fence` (a message from a shard past it
/// may be acted on). If not, proposes it (or the highest fence already asked for, never a
/// lower one; again after `redrive_interval_ms`) and the caller parks the message until it
/// applies (`park`, `park_leg`).
pub(in crate::core) fn fenced(peer: &mut ShardPeer, fence: u64, ctx: &mut Ctx) -> bool {
    if fence <= peer.replica.ledger().fence_epoch() || planted(ctx.planted, PlantedBug::FenceIgnored) {
        return true;
    }
    propose_fence(peer, fence, ctx);
    false
}

/// Proposes fence `fence` unless it (or a higher one) was proposed within the re-drive
/// interval; a proposal raft dropped is made again by `tick`.
fn propose_fence(peer: &mut ShardPeer, fence: u64, ctx: &mut Ctx) {
    let now = ctx.time.monotonic_ms;
    let asked = peer.fence_proposed.map_or(0, |(epoch, _)| epoch);
    let recent = peer.fence_proposed.is_some_and(|(epoch, at)| epoch >= fence && now.saturating_sub(at) < ctx.limits.redrive_interval_ms);
    if !recent {
        let target = fence.max(asked);
        peer.fence_proposed = Some((target, now));
        peer.propose_untagged(Command::Fence(target));
    }
}

/// Every tick on a leader: what is parked for a fence not applied yet gets its fence proposed
/// again once the last proposal is a re-drive interval old (raft may have dropped it), and a
/// parked leg past its deadline is answered unavailable (its origin retries).
pub(in crate::core) fn tick(peer: &mut ShardPeer, ctx: &mut Ctx) {
    let now = ctx.time.monotonic_ms;
    let (expired, waiting): (Vec<_>, Vec<_>) =
        std::mem::take(&mut peer.fenced_legs).into_iter().partition(|(_, _, deadline_ms, _)| *deadline_ms <= now);
    peer.fenced_legs = waiting;
    for (_, origin, _, _) in expired {
        ctx.out.replies.push((origin, Reply::Unavailable));
    }
    if !peer.replica.is_leader() {
        return;
    }
    let needed = peer
        .fenced_credits
        .iter()
        .map(|(fence, _)| *fence)
        .chain(peer.fenced_decisions.iter().map(|(fence, _)| *fence))
        .chain(peer.fenced_legs.iter().map(|(fence, ..)| *fence))
        .max();
    match needed {
        Some(fence) if fence > peer.replica.ledger().fence_epoch() => propose_fence(peer, fence, ctx),
        // Applied already (a snapshot install can raise the epoch without a fence entry here).
        Some(_) => release(peer, peer.replica.ledger().fence_epoch(), ctx),
        None => {}
    }
}
