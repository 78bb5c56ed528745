//! Reads: an account, its history, or a transfer. Linearizable: every read queued on a shard
//! this round shares one ReadIndex request; once the leader holds the read index and has
//! applied up to it, the reads are answered from its ledger. Never from a deposed leader.

use super::super::peer::{Answer, Origin, ShardPeer};
use super::super::Ctx;
use crate::ids::{AccountId, ShardId};
use crate::ledger::{AccountView, TransferView};
use crate::message::{HistoryPage, Reply, Request};
use crate::placement::Placement;
use crate::planted::{planted, PlantedBug};
use raft::ReadState;

/// The shard of the account an account or history read names (0 for other requests, which
/// the router never routes here).
pub(in crate::core) fn account_shard(placement: &Placement, request: &Request) -> ShardId {
    match request {
        Request::ReadAccount(account)
        | Request::History { account, .. }
        | Request::Statement { account, .. }
        | Request::BalanceAsOf { account, .. } => placement.shard_of(account),
        _ => 0,
    }
}

/// The shard that holds a transfer's payer record.
pub(in crate::core) fn payer_shard(placement: &Placement, payer: &AccountId) -> ShardId {
    placement.shard_of(payer)
}

pub(in crate::core) fn accept(peer: &mut ShardPeer, origin: Origin, deadline_ms: u64, request: Request, ctx: &mut Ctx) {
    if planted(ctx.planted, PlantedBug::StaleLeaderRead) {
        let reply = read_reply(peer, &request);
        ctx.out.replies.push((origin, reply));
        return;
    }
    let task = peer.open_read(origin, deadline_ms, request);
    peer.reads.queued.push(task);
}

/// Sends one ReadIndex request for every read queued on the shard this round.
pub(in crate::core) fn flush_reads(peer: &mut ShardPeer, ctx: &mut Ctx) {
    if peer.reads.queued.is_empty() {
        return;
    }
    let queued = std::mem::take(&mut peer.reads.queued);
    if !peer.replica.is_leader() {
        let hint = peer.replica.leader().filter(|leader| *leader != ctx.node);
        for task in queued {
            peer.fail_task(task, hint, ctx);
        }
        return;
    }
    let context = peer.reads.next_context;
    peer.reads.next_context += 1;
    peer.replica.read_index(context.to_be_bytes().to_vec());
    peer.reads.requested.insert(context, (queued, ctx.time.monotonic_ms));
}

/// Read indexes raft granted this round.
pub(in crate::core) fn read_states(peer: &mut ShardPeer, states: Vec<ReadState>, ctx: &mut Ctx) {
    for state in states {
        let Ok(bytes) = <[u8; 8]>::try_from(state.request_ctx.as_slice()) else {
            continue;
        };
        let context = u64::from_be_bytes(bytes);
        if let Some((tasks, asked_ms)) = peer.reads.requested.remove(&context) {
            ctx.stats.read_index_ms.observe(ctx.time.since_ms(asked_ms));
            peer.reads.indexed.push((state.index, tasks));
        }
    }
}

/// Answers reads whose read index the replica has applied.
pub(in crate::core) fn serve_applied_reads(peer: &mut ShardPeer, ctx: &mut Ctx) {
    if peer.reads.indexed.is_empty() {
        return;
    }
    let applied = peer.replica.applied_index();
    let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut peer.reads.indexed).into_iter().partition(|(index, _)| *index <= applied);
    peer.reads.indexed = later;
    for (_, tasks) in ready {
        for task in tasks {
            let Some(request) = peer.read_request(task) else {
                continue;
            };
            let reply = read_reply(peer, request);
            peer.fill(task, 0, Answer::Reply(reply), ctx);
        }
    }
}

fn read_reply(peer: &ShardPeer, request: &Request) -> Reply {
    let reply = read_from_ledger(peer, request);
    if peer.replica.ledger().damage().is_some() {
        // A stored record did not decode: what was read may be incomplete. The replica is
        // quarantined at the end of this poll; the client retries another.
        return Reply::Unavailable;
    }
    reply
}

fn read_from_ledger(peer: &ShardPeer, request: &Request) -> Reply {
    let ledger = peer.replica.ledger();
    match request {
        Request::ReadAccount(account) => Reply::AccountState(ledger.account(account).map(|account| AccountView::from(&account))),
        Request::ReadTransfer { id, payer } => {
            let payer_side = ledger.transfer_view(id);
            match payer_side.or_else(|| ledger.credit(id).map(|record| TransferView::from(&record))) {
                Some(view) => Reply::Transfer(Some(view)),
                // Asked as the id's home shard: point at the payer's shard.
                None if payer.is_none() => ledger.reservation(id).map_or(Reply::Transfer(None), Reply::Reserved),
                None => Reply::Transfer(None),
            }
        }
        Request::History { account, before, limit } => {
            let limit = usize::try_from(*limit).unwrap_or(usize::MAX);
            let page = ledger.history(account, *before, limit);
            Reply::History(page.map(|(transfers, next_cursor)| HistoryPage { transfers, next_cursor }))
        }
        Request::SystemRead(read) => Reply::SystemRead(ledger.system_read(read)),
        Request::ReadStops(account) => Reply::Stops(ledger.account(account).map(|_| ledger.stops(account))),
        Request::ReadRefunds { original, .. } => Reply::Refunds(ledger.refunds(original)),
        Request::Statement { account, from_ms, to_ms, after, limit } => {
            Reply::Statement(ledger.statement(account, *from_ms, *to_ms, *after, *limit))
        }
        Request::BalanceAsOf { account, at_ms } => Reply::Balance(ledger.balance_as_of(account, *at_ms)),
        Request::ReadCustomer(customer) => Reply::CustomerState(ledger.customer_report(customer).map(Box::new)),
        Request::ReadRiskLimits { .. } => Reply::RiskLimits(ledger.risk_limits().clone()),
        Request::ReadChallenge { id, .. } => Reply::Challenge(ledger.challenge_report(id).map(Box::new)),
        // The router sends only reads here (see `operation::accept`).
        Request::CreateAccount(_)
        | Request::CreateAccounts(_)
        | Request::Transfers(_)
        | Request::Reserve(_)
        | Request::System(_)
        | Request::Stop(_)
        | Request::Refund(_)
        | Request::Hold(_)
        | Request::Capture { .. }
        | Request::Void { .. }
        | Request::Customer(_)
        | Request::SetRiskLimits { .. }
        | Request::VerifyTransfer { .. }
        | Request::Fence { .. }
        | Request::BackupChunk { .. }
        | Request::MoveReplica { .. }
        | Request::Fenced { .. } => Reply::Unavailable,
    }
}
