//! System commands (API keys, nonces, audit events): routed to the command's shard (the system
//! shard, or a nonce's own), one proposal each, answered with the outcome. System reads go
//! through `read.rs` like every read.

use super::super::peer::{Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use crate::ids::{ProposalTag, ShardId};
use crate::ledger::{Command, SystemCmd, SystemOutcome};
use crate::message::Reply;
use crate::placement::Placement;

/// The shard a system command belongs to.
pub(in crate::core) fn shard(placement: &Placement, command: &SystemCmd) -> ShardId {
    command.shard(placement.shard_count())
}

pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, command: SystemCmd) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Single, 1);
    peer.propose(task, 0, Command::System(command));
}

pub(in crate::core) fn applied(peer: &mut ShardPeer, tag: ProposalTag, outcome: SystemOutcome, ctx: &mut Ctx) {
    if let Some((task, slot)) = peer.take_tag(tag) {
        peer.fill(task, slot, Answer::Reply(Reply::System(outcome)), ctx);
    }
}
