//! One module per operation. Each owns, for its kind of request or command: where it is routed
//! (the shard function the router and the leader's check share), how a leg of it is validated
//! and proposed on the shard's leader, and what happens after its command applies (answering
//! waiters, sending the next protocol message). The money rules themselves live in `ledger/`.
//!
//! This file is the registration: the two matches that hand a leg and an applied command to
//! their operation. Adding a command is a new module here, its rules in `ledger/`, and one arm
//! in each match below (plus its variants in `Request`/`Command`; see ARCHITECTURE.md).

pub(super) mod account;
pub(super) mod backup;
pub(super) mod credit;
pub(super) mod customer;
pub(super) mod finalize;
pub(super) mod holds;
pub(super) mod membership;
pub(super) mod read;
pub(super) mod reserve;
pub(super) mod stop;
pub(super) mod system;
pub(super) mod transfer;

use super::peer::{Origin, ShardPeer};
use super::Ctx;
use crate::ledger::{AppliedCommand, Command};
use crate::message::{Reply, Request};
use crate::replica::AppliedProposal;

/// A one-command leg whose task's whole reply is the command's outcome (system commands, stop
/// orders): proposes it.
fn propose_single(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, command: crate::ledger::Command) {
    let task = peer.open_task(origin, deadline_ms, super::peer::TaskKind::Single, 1);
    peer.propose(task, 0, command);
}

/// The applied command of a `propose_single` leg: its reply goes to the waiting task.
fn answer_single(peer: &mut ShardPeer, tag: crate::ids::ProposalTag, reply: Reply, ctx: &mut Ctx) {
    if let Some((task, slot)) = peer.take_tag(tag) {
        peer.fill(task, slot, super::peer::Answer::Reply(reply), ctx);
    }
}

/// A leg for a shard this node leads: its operation validates and proposes it (or, for reads,
/// queues it for the next ReadIndex).
pub(super) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, request: Request, ctx: &mut Ctx) {
    if let Request::Fenced { fence, request } = request {
        // A payer-shard leg whose ids were reserved past a backup fence: not before this
        // shard's cut for it (`ledger/fence.rs`).
        if backup::fenced(peer, fence, ctx) {
            accept(peer, origin, deadline_ms, request.into_request(), ctx);
        } else {
            backup::park_leg(peer, origin, deadline_ms, fence, request, ctx);
        }
        return;
    }
    let shard = peer.replica.shard();
    let routed_here = match &request {
        Request::CreateAccount(create) => account::shard(ctx.placement, create) == shard,
        Request::CreateAccounts(items) => !items.is_empty() && items.iter().all(|item| account::shard(ctx.placement, item) == shard),
        Request::Transfers(items) => items.iter().all(|item| transfer::payer_shard(ctx.placement, item) == shard),
        Request::Reserve(items) => items.iter().all(|item| reserve::home_shard(ctx.placement, &item.id) == shard),
        Request::ReadAccount(_) | Request::History { .. } | Request::Statement { .. } | Request::BalanceAsOf { .. } => {
            read::account_shard(ctx.placement, &request) == shard
        }
        Request::System(command) => system::shard(ctx.placement, command) == shard,
        Request::SystemRead(_) => shard == crate::ledger::SYSTEM_SHARD,
        Request::Stop(command) => stop::shard(ctx.placement, command) == shard,
        Request::ReadStops(account) => ctx.placement.shard_of(account) == shard,
        Request::Refund(refund) => transfer::payer_shard(ctx.placement, &refund.transfer) == shard,
        Request::ReadRefunds { payee, .. } => ctx.placement.shard_of(payee) == shard,
        Request::Hold(hold) => transfer::payer_shard(ctx.placement, &hold.transfer) == shard,
        Request::Capture { payer, .. } | Request::Void { payer, .. } => ctx.placement.shard_of(payer) == shard,
        Request::Customer(command) => customer::shard(ctx.placement, command) == shard,
        Request::ReadCustomer(customer) => ctx.placement.customer_shard_of(customer) == shard,
        Request::SetRiskLimits { shard: named, .. }
        | Request::ReadRiskLimits { shard: named }
        | Request::Fence { shard: named, .. }
        | Request::BackupChunk { shard: named, .. }
        | Request::MoveReplica { shard: named, .. } => *named == shard,
        Request::VerifyTransfer { payer, .. } | Request::ReadChallenge { payer, .. } => ctx.placement.shard_of(payer) == shard,
        // Without a payer hint a lookup asks every shard.
        Request::ReadTransfer { .. } => true,
        Request::Fenced { .. } => false,
    };
    if !routed_here {
        // Another node computed a different placement: refuse rather than corrupt the shard.
        ctx.out.replies.push((origin, Reply::Unavailable));
        return;
    }
    match request {
        Request::CreateAccount(create) => account::accept(peer, origin, deadline_ms, create),
        Request::CreateAccounts(items) => account::accept_batch(peer, origin, deadline_ms, items),
        Request::Transfers(items) => transfer::accept(peer, origin, deadline_ms, items, ctx),
        Request::Reserve(items) => reserve::accept(peer, origin, deadline_ms, items, ctx),
        Request::System(command) => propose_single(peer, origin, deadline_ms, Command::System(command)),
        Request::Stop(command) => propose_single(peer, origin, deadline_ms, Command::Stop(command)),
        Request::Customer(command) => propose_single(peer, origin, deadline_ms, Command::Customer(command)),
        Request::SetRiskLimits { limits, .. } => {
            propose_single(peer, origin, deadline_ms, Command::Risk(crate::ledger::RiskCmd::SetLimits(limits)))
        }
        Request::Refund(refund) => transfer::accept_refund(peer, origin, deadline_ms, refund),
        Request::Fence { epoch, .. } => backup::accept_fence(peer, origin, deadline_ms, epoch),
        Request::BackupChunk { epoch, after, .. } => backup::accept_chunk(peer, origin, epoch, after, ctx),
        Request::VerifyTransfer { command, .. } => holds::accept(peer, origin, deadline_ms, Command::Verify(command)),
        Request::Fenced { .. } => ctx.out.replies.push((origin, Reply::Unavailable)),
        Request::MoveReplica { from, to, .. } => membership::accept_move(peer, origin, from, to, ctx),
        request @ (Request::Hold(_) | Request::Capture { .. } | Request::Void { .. }) => match holds::command(request) {
            Some(command) => holds::accept(peer, origin, deadline_ms, command),
            None => ctx.out.replies.push((origin, Reply::Unavailable)),
        },
        read @ (Request::ReadAccount(_)
        | Request::ReadTransfer { .. }
        | Request::History { .. }
        | Request::SystemRead(_)
        | Request::ReadStops(_)
        | Request::ReadRefunds { .. }
        | Request::Statement { .. }
        | Request::BalanceAsOf { .. }
        | Request::ReadCustomer(_)
        | Request::ReadRiskLimits { .. }
        | Request::ReadChallenge { .. }) => read::accept(peer, origin, deadline_ms, read, ctx),
    }
}

/// A command this peer's replica applied: its operation answers waiters and drives what follows.
pub(super) fn applied(peer: &mut ShardPeer, proposal: AppliedProposal, ctx: &mut Ctx) {
    let tag = proposal.tag;
    match proposal.applied {
        AppliedCommand::Account { outcome, account, .. } => account::applied(peer, tag, outcome, account, ctx),
        AppliedCommand::Transfer { transfer, outcome, record } => transfer::applied(peer, tag, transfer, outcome, record, ctx),
        AppliedCommand::Reserve { reserve, outcome } => reserve::applied(peer, tag, reserve, outcome, ctx),
        AppliedCommand::Credit { credit, outcome } => credit::applied(peer, credit, outcome, ctx),
        AppliedCommand::Finalize { finalize, outcome, record } => finalize::applied(peer, finalize, outcome, record, ctx),
        AppliedCommand::System { outcome, .. } => answer_single(peer, tag, Reply::System(outcome), ctx),
        AppliedCommand::Stop { outcome, .. } => answer_single(peer, tag, Reply::Stop(outcome), ctx),
        AppliedCommand::Hold { id, transfer, outcome, record } => holds::applied(peer, tag, id, transfer, outcome, record, ctx),
        AppliedCommand::HoldsExpired { expired, settled } => holds::expired(peer, &expired, &settled, ctx),
        AppliedCommand::Customer { outcome, .. } => answer_single(peer, tag, Reply::Customer(Box::new(outcome)), ctx),
        AppliedCommand::Risk { outcome, .. } => answer_single(peer, tag, Reply::Risk(outcome), ctx),
        AppliedCommand::Fence { outcome } => backup::applied(peer, tag, outcome, ctx),
    }
}
