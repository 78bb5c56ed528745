//! Stop orders: routed to the account's shard, one proposal each, answered with the outcome.
//! Reading an account's stops goes through `read.rs` like every read.

use super::super::peer::{Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use crate::ids::{ProposalTag, ShardId};
use crate::ledger::{Command, StopCmd, StopOutcome};
use crate::message::Reply;
use crate::placement::Placement;

/// The shard of the account a stop names.
pub(in crate::core) fn shard(placement: &Placement, command: &StopCmd) -> ShardId {
    placement.shard_of(command.account())
}

pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, command: StopCmd) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Single, 1);
    peer.propose(task, 0, Command::Stop(command));
}

pub(in crate::core) fn applied(peer: &mut ShardPeer, tag: ProposalTag, outcome: StopOutcome, ctx: &mut Ctx) {
    if let Some((task, slot)) = peer.take_tag(tag) {
        peer.fill(task, slot, Answer::Reply(Reply::Stop(outcome)), ctx);
    }
}
