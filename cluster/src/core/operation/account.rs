//! Account creation: routed to the account's shard, one proposal per account, each answered
//! with its outcome and the account as it is after the apply. A batch (`CreateAccounts`) is
//! one leg per shard with a slot per account.

use super::super::peer::{Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use crate::ids::{ProposalTag, ShardId};
use crate::ledger::{AccountOutcome, AccountView, Command, CreateAccount};
use crate::message::{AccountRequest, AccountResult};
use crate::placement::Placement;

/// The shard an account lives on.
pub(in crate::core) fn shard(placement: &Placement, request: &AccountRequest) -> ShardId {
    placement.shard_of(&request.id)
}

/// One account: the task's reply is `Reply::Account`.
pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, request: AccountRequest) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Single, 1);
    peer.propose(task, 0, command(request));
}

/// A batch leg (accounts of this shard, at least one): the task's reply is `Reply::Accounts`.
pub(in crate::core) fn accept_batch(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, requests: Vec<AccountRequest>) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Accounts, requests.len());
    for (slot, request) in requests.into_iter().enumerate() {
        peer.propose(task, slot, command(request));
    }
}

fn command(request: AccountRequest) -> Command {
    Command::CreateAccount(CreateAccount { id: request.id, currency: request.currency, kind: request.kind })
}

pub(in crate::core) fn applied(
    peer: &mut ShardPeer,
    tag: ProposalTag,
    outcome: AccountOutcome,
    account: Option<AccountView>,
    ctx: &mut Ctx,
) {
    if let Some((task, slot)) = peer.take_tag(tag) {
        peer.fill(task, slot, Answer::Account(AccountResult::Done { outcome, account }), ctx);
    }
}
