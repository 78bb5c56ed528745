//! Account creation: routed to the account's shard, one proposal, answered with the outcome
//! and the account as it is after the apply.

use super::super::peer::{Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use crate::ids::{ProposalTag, ShardId};
use crate::ledger::{AccountOutcome, AccountView, Command, CreateAccount};
use crate::message::{AccountRequest, Reply};
use crate::placement::Placement;

/// The shard an account lives on.
pub(in crate::core) fn shard(placement: &Placement, request: &AccountRequest) -> ShardId {
    placement.shard_of(&request.id)
}

pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, request: AccountRequest) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Single, 1);
    let command = CreateAccount { id: request.id, currency: request.currency, kind: request.kind };
    peer.propose(task, 0, Command::CreateAccount(command));
}

pub(in crate::core) fn applied(
    peer: &mut ShardPeer,
    tag: ProposalTag,
    outcome: AccountOutcome,
    account: Option<AccountView>,
    ctx: &mut Ctx,
) {
    if let Some((task, slot)) = peer.take_tag(tag) {
        peer.fill(task, slot, Answer::Reply(Reply::Account { outcome, account }), ctx);
    }
}
