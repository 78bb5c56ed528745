//! Transfers, payer side: routed to the payer's shard (after the id's reservation, see
//! `reserve.rs`), one proposal per transfer. A same-shard transfer is final when it applies; a
//! cross-shard one is prepared (the debit pending) and this leader drives it: it asks the payee
//! shard for a decision (`credit.rs`), re-sends the request while no decision comes back, and
//! past `prevent_after_ms` asks the payee shard to refuse unless it credited already. The
//! waiters of a pending transfer are answered by its finalize (`finalize.rs`).

use super::super::peer::{drive_of, Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use crate::ids::{ProposalTag, ShardId};
use crate::ledger::{
    AccountKind, Command, CreditCmd, Decision, FinalizeCmd, RefundCmd, RejectCode, TransferCmd, TransferOutcome, TransferStatus,
    TransferView,
};
use crate::message::{RefundRequest, Reply, TransferRequest, TransferResult};
use crate::placement::Placement;
use crate::planted::{planted, PlantedBug};

/// The shard a transfer is recorded on: its payer's.
pub(in crate::core) fn payer_shard(placement: &Placement, item: &TransferRequest) -> ShardId {
    placement.shard_of(&item.from)
}

pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, items: Vec<TransferRequest>, ctx: &mut Ctx) {
    if items.is_empty() {
        ctx.out.replies.push((origin, Reply::Transfers(Vec::new())));
        return;
    }
    let task = peer.open_task(origin, deadline_ms, TaskKind::Transfers, items.len());
    for (slot, item) in items.into_iter().enumerate() {
        let command = TransferCmd { id: item.id, from: item.from, to: item.to, amount: item.amount, currency: item.currency };
        peer.propose(task, slot, Command::Transfer(command));
    }
}

/// A refund leg (one transfer): proposed as `Command::Refund`, answered like a transfer.
pub(in crate::core) fn accept_refund(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, refund: RefundRequest) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Transfers, 1);
    let item = refund.transfer;
    let transfer = TransferCmd { id: item.id, from: item.from, to: item.to, amount: item.amount, currency: item.currency };
    peer.propose(task, 0, Command::Refund(RefundCmd { transfer, original: refund.original, reason: refund.reason }));
}

pub(in crate::core) fn applied(
    peer: &mut ShardPeer,
    tag: ProposalTag,
    transfer: TransferCmd,
    outcome: TransferOutcome,
    record: Option<TransferView>,
    ctx: &mut Ctx,
) {
    if peer.replica.is_leader() && outcome == TransferOutcome::Recorded(TransferStatus::Pending) {
        prepared(peer, &transfer, ctx);
    }
    let Some((task, slot)) = peer.take_tag(tag) else {
        return;
    };
    match outcome {
        TransferOutcome::Recorded(TransferStatus::Pending) | TransferOutcome::Replayed(TransferStatus::Pending) => {
            peer.finalize_waiters.entry(transfer.id).or_default().push((task, slot));
        }
        TransferOutcome::Recorded(_) | TransferOutcome::Replayed(_) => {
            // A replica reports records for the entries it proposed (see `ShardReplica`).
            let result = record.map_or(TransferResult::Unavailable, TransferResult::Done);
            peer.fill(task, slot, Answer::Transfer(result), ctx);
        }
        TransferOutcome::Refused(code) => peer.fill(task, slot, Answer::Transfer(TransferResult::Refused(code)), ctx),
    }
}

/// A transfer was just prepared on a shard this node leads: ask the payee shard to decide.
pub(in crate::core) fn prepared(peer: &mut ShardPeer, transfer: &TransferCmd, ctx: &mut Ctx) {
    let payer_shard = peer.replica.shard();
    let credit = CreditCmd {
        id: transfer.id.clone(),
        from: transfer.from.clone(),
        to: transfer.to.clone(),
        amount: transfer.amount,
        currency: transfer.currency,
        payer_shard,
        prevent: false,
        payer_kind: payer_kind(peer, &transfer.from),
    };
    ctx.out.credit(ctx.placement.shard_of(&transfer.to), credit, peer.replica.ledger().fence_epoch());
    let now = ctx.time.monotonic_ms;
    let drive = peer.drive(&transfer.id);
    drive.credit_sent_ms = Some(now);
    drive.since_ms = Some(now);
}

/// The kind of a pending transfer's payer (it exists: only damage hides it, and a damaged
/// replica is quarantined before anything it sends counts).
fn payer_kind(peer: &ShardPeer, payer: &crate::ids::AccountId) -> AccountKind {
    peer.replica.ledger().account(payer).map_or(AccountKind::Customer, |account| account.kind)
}

/// Re-drives the pending transfers of a shard this node leads: re-sends credit requests that had
/// no answer in `redrive_interval_ms`, and past `prevent_after_ms` asks the payee to refuse.
/// A new leader does this only once it has applied an entry of its own term (it has seen
/// every pending transfer then). Stale marks are dropped on every peer.
pub(in crate::core) fn redrive(peer: &mut ShardPeer, ctx: &mut Ctx) {
    let now = ctx.time.monotonic_ms;
    let redrive_interval_ms = ctx.limits.redrive_interval_ms;
    if peer.replica.leader_ready() {
        let payer_shard = peer.replica.shard();
        let mut resend = Vec::new();
        let pending: Vec<crate::ids::TransferId> = peer.replica.ledger().pending_ids().cloned().collect();
        for id in pending {
            let drive = drive_of(&mut peer.drives, &id);
            let since = *drive.since_ms.get_or_insert(now);
            if drive.credit_sent_ms.is_some_and(|sent| now.saturating_sub(sent) < redrive_interval_ms) {
                continue;
            }
            // The record is read from the store only when its credit is due again.
            let Some(record) = peer.replica.ledger().transfer(&id) else {
                continue;
            };
            let record = &record;
            let drive = drive_of(&mut peer.drives, &id);
            // Measured on this leader's monotonic clock from when it first saw the transfer
            // pending: a new leader gives the payee shard the full period again.
            let prevent = now.saturating_sub(since) >= ctx.limits.prevent_after_ms;
            let sent_before = drive.credit_sent_ms.replace(now).is_some();
            let payer_kind = payer_kind(peer, &record.from);
            resend.push((CreditCmd::for_record(record, payer_kind, payer_shard, prevent), sent_before));
        }
        let fence = peer.replica.ledger().fence_epoch();
        for (credit, sent_before) in resend {
            let payee_shard = ctx.placement.shard_of(&credit.to);
            ctx.stats.redrives += 1;
            if credit.prevent {
                ctx.stats.prevents += 1;
            }
            if sent_before {
                // No answer since the last send: the leader we know of may be gone.
                ctx.out.silent_shards.push(payee_shard);
            }
            if credit.prevent && planted(ctx.planted, PlantedBug::CoordinatorAbortsAlone) {
                let decision = Decision::Refused(RejectCode::CreditTimeout);
                peer.propose_untagged(Command::Finalize(FinalizeCmd { id: credit.id.clone(), body: credit.body(), decision }));
                continue;
            }
            ctx.out.credit(payee_shard, credit, fence);
        }
    }
    let stale_after = redrive_interval_ms.saturating_mul(10);
    let fresh = |at: &u64| now.saturating_sub(*at) < stale_after;
    peer.credits_proposed_ms.retain(|_, at| fresh(at));
    peer.drives.retain(|_, drive| {
        drive.finalize_proposed_ms = drive.finalize_proposed_ms.filter(fresh);
        !drive.is_idle()
    });
}
