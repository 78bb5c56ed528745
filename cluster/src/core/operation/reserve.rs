//! Transfer-id reservations on the id's home shard: the first step of every transfer whose
//! payer does not live there (the router holds the transfers back until every reservation of
//! the call is answered). Each item is one proposal; the outcome says whether the transfer may
//! go on (`Reserved`, `Replayed`) or is refused as reused.

use super::super::peer::{Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use super::transfer;
use crate::ids::{ProposalTag, ShardId, TransferId};
use crate::ledger::{Command, ReserveCmd, ReserveOutcome};
use crate::message::{Reply, Request, TransferRequest};
use crate::placement::Placement;
use std::collections::BTreeMap;

/// The shard that holds a transfer id's reservation.
pub(in crate::core) fn home_shard(placement: &Placement, id: &TransferId) -> ShardId {
    placement.home_shard_of(id)
}

/// Whether a transfer must be reserved before it goes to its payer shard (otherwise the payer
/// shard is the id's home and reserves it in the same apply).
pub(in crate::core) fn needs_reservation(placement: &Placement, item: &TransferRequest) -> bool {
    home_shard(placement, &item.id) != transfer::payer_shard(placement, item)
}

/// The reservation legs of a call's transfers, one per home shard, with the item positions.
pub(in crate::core) fn legs(placement: &Placement, items: &[TransferRequest]) -> Vec<(ShardId, Request, Vec<usize>)> {
    let mut by_shard: BTreeMap<ShardId, (Vec<ReserveCmd>, Vec<usize>)> = BTreeMap::new();
    for (position, item) in items.iter().enumerate() {
        if needs_reservation(placement, item) {
            let entry = by_shard.entry(home_shard(placement, &item.id)).or_default();
            entry.0.push(ReserveCmd { id: item.id.clone(), body: item.body() });
            entry.1.push(position);
        }
    }
    by_shard.into_iter().map(|(shard, (commands, positions))| (shard, Request::Reserve(commands), positions)).collect()
}

pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, items: Vec<ReserveCmd>, ctx: &mut Ctx) {
    if items.is_empty() {
        ctx.out.replies.push((origin, Reply::Reservations { answers: Vec::new(), fence: peer.replica.ledger().fence_epoch() }));
        return;
    }
    let task = peer.open_task(origin, deadline_ms, TaskKind::Reservations, items.len());
    for (slot, item) in items.into_iter().enumerate() {
        peer.propose(task, slot, Command::Reserve(item));
    }
}

pub(in crate::core) fn applied(peer: &mut ShardPeer, tag: ProposalTag, reserve: ReserveCmd, outcome: ReserveOutcome, ctx: &mut Ctx) {
    if let Some((task, slot)) = peer.take_tag(tag) {
        peer.fill(task, slot, Answer::Reservation(reserve, outcome), ctx);
    }
}
