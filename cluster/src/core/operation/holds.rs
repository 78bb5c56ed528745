//! Holds, payer side (`ledger/holds.rs` has the rules). A hold is routed like a transfer (its
//! id reserved on its home shard first, then one proposal on the payer's shard); a capture or
//! void goes to the payer's shard named by the edge (which looked the transfer up). All three
//! are answered like a transfer; a cross-shard capture turns the record pending and continues
//! as a cross-shard transfer (`transfer::applied` sends its credit request, its finalize answers
//! the waiter). Expiry: the leader proposes `ExpireHolds` once its wall clock passes the
//! shard's earliest expiry, looking at most once per `redrive_interval_ms`.

use super::super::peer::{Answer, Origin, ShardPeer, TaskKind};
use super::super::Ctx;
use super::transfer;
use crate::ids::{ProposalTag, TransferId};
use crate::ledger::{CaptureCmd, Command, HoldCmd, TransferCmd, TransferOutcome, TransferView, VoidCmd};
use crate::message::{Request, TransferResult};

/// The command of a hold, capture or void leg (`operation::accept` hands only those here).
pub(in crate::core) fn command(request: Request) -> Option<Command> {
    match request {
        Request::Hold(hold) => {
            let item = hold.transfer;
            let transfer = TransferCmd { id: item.id, from: item.from, to: item.to, amount: item.amount, currency: item.currency };
            Some(Command::Hold(HoldCmd { transfer, timeout_ms: hold.timeout_ms, settle_on_expiry: hold.settle_on_expiry }))
        }
        Request::Capture { id, amount, .. } => Some(Command::Capture(CaptureCmd { id, amount })),
        Request::Void { id, .. } => Some(Command::Void(VoidCmd { id })),
        _ => None,
    }
}

/// Proposes a hold, capture or void; answered like one transfer.
pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, command: Command) {
    let task = peer.open_task(origin, deadline_ms, TaskKind::Transfers, 1);
    peer.propose(task, 0, command);
}

/// A hold, capture or void applied: answered as a transfer.
pub(in crate::core) fn applied(
    peer: &mut ShardPeer,
    tag: ProposalTag,
    id: TransferId,
    transfer: Option<TransferCmd>,
    outcome: TransferOutcome,
    record: Option<TransferView>,
    ctx: &mut Ctx,
) {
    match transfer {
        Some(transfer) => transfer::applied(peer, tag, transfer, outcome, record, ctx),
        None => {
            debug_assert!(matches!(outcome, TransferOutcome::Refused(_)), "hold {id}: nothing stored, yet {outcome:?}");
            if let Some((task, slot)) = peer.take_tag(tag) {
                let result = match outcome {
                    TransferOutcome::Refused(code) => TransferResult::Refused(code),
                    _ => TransferResult::Unavailable,
                };
                peer.fill(task, slot, Answer::Transfer(result), ctx);
            }
        }
    }
}

/// Holds released by an `ExpireHolds`: counted by the leader, which also asks the payee shards
/// of the delayed transfers it settled across shards to decide them.
pub(in crate::core) fn expired(peer: &mut ShardPeer, expired: &[TransferId], settled: &[TransferCmd], ctx: &mut Ctx) {
    if !peer.replica.is_leader() {
        return;
    }
    ctx.stats.holds_expired += u64::try_from(expired.len()).unwrap_or(u64::MAX);
    for transfer in settled {
        transfer::prepared(peer, transfer, ctx);
    }
}

/// On a leader that has applied an entry of its term: proposes `ExpireHolds` when a hold is due.
pub(in crate::core) fn expire_due(peer: &mut ShardPeer, ctx: &mut Ctx) {
    if !peer.replica.leader_ready() {
        peer.holds_checked_ms = None;
        return;
    }
    let now = ctx.time.monotonic_ms;
    if peer.holds_checked_ms.is_some_and(|checked| now.saturating_sub(checked) < ctx.limits.redrive_interval_ms) {
        return;
    }
    peer.holds_checked_ms = Some(now);
    // Expiry is judged by the shard clock (entry timestamps, never going back): a leader whose
    // wall clock is behind it still proposes what the shard already considers due.
    let now_ms = ctx.time.wall_ms.max(peer.replica.ledger().clock().now_ms);
    if peer.replica.ledger().next_hold_expiry_ms().is_some_and(|due| due <= now_ms) {
        peer.propose_untagged(Command::ExpireHolds);
    }
}
