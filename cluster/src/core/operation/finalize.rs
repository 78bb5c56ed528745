//! Finalize, payer side: the payee shard's decision comes back (`PeerMessage::Decisions`, or the
//! outbox when both shards are led here) and the payer shard copies it into its record —
//! posting the pending debit or releasing it — only if the record is still pending and has the
//! body the decision was made for. Then the transfer's waiters are answered.

use super::super::peer::{Answer, ShardPeer};
use super::super::{Ctx, NodeCore};
use crate::ids::{NodeId, ShardId};
use crate::ledger::{Command, FinalizeCmd, FinalizeOutcome, TransferStatus, TransferView};
use crate::message::{PeerMessage, TransferResult};
use crate::planted::{planted, PlantedBug};

impl NodeCore {
    /// Routes the decisions in the outbox: finalize proposals on payer shards led here,
    /// messages to the other leaders.
    pub(in crate::core) fn route_decisions(&mut self) {
        let node = self.config.node;
        let mut fences = std::mem::take(&mut self.outbox.decision_fences);
        for (payer_shard, decisions) in std::mem::take(&mut self.outbox.decisions) {
            let fence = fences.remove(&payer_shard).unwrap_or(0);
            let local_leader = self.peers.get(&payer_shard).is_some_and(|peer| peer.replica.is_leader());
            if !local_leader {
                if let Some(leader) = self.leader_of(payer_shard).filter(|leader| *leader != node) {
                    self.send(leader, PeerMessage::Decisions { shard: payer_shard, decisions, hops: 0, fence });
                }
                continue;
            }
            let (mut ctx, peers) = self.ctx();
            let peer = peers.get_mut(&payer_shard).expect("checked");
            // Not before this shard's cut for the payee's backup fence: they wait for it.
            if super::backup::fenced(peer, fence, &mut ctx) {
                propose(peer, decisions, &mut ctx);
            } else {
                super::backup::park(&mut peer.fenced_decisions, fence, decisions);
            }
            self.dirty.insert(payer_shard);
        }
    }

    pub(in crate::core) fn decisions_received(&mut self, from: NodeId, shard: ShardId, decisions: Vec<FinalizeCmd>, hops: u8, fence: u64) {
        if self.peers.get(&shard).is_some_and(|peer| peer.replica.is_leader()) {
            for decision in decisions {
                self.outbox.decision(shard, decision, fence);
            }
            return;
        }
        if let Some(leader) = self.redirect(from, shard, hops) {
            self.send(leader, PeerMessage::Decisions { shard, decisions, hops: hops + 1, fence });
        }
    }
}

/// Proposes the finalizes of transfers still pending here with the decided body (once per
/// `redrive_interval_ms`, so duplicate decisions do not pile up proposals).
fn propose(peer: &mut ShardPeer, decisions: Vec<FinalizeCmd>, ctx: &mut Ctx) {
    let now = ctx.time.monotonic_ms;
    let retry_after = ctx.limits.redrive_interval_ms;
    let unchecked = planted(ctx.planted, PlantedBug::IdReuseUnchecked);
    for finalize in decisions {
        // Only a decision made for this record's own body may finalize it.
        let pending = peer
            .replica
            .ledger()
            .transfer(&finalize.id)
            .is_some_and(|record| record.status == TransferStatus::Pending && (unchecked || record.body() == finalize.body));
        if !pending {
            continue;
        }
        let drive = peer.drive(&finalize.id);
        if drive.finalize_proposed_ms.is_some_and(|at| now.saturating_sub(at) < retry_after) {
            continue;
        }
        drive.finalize_proposed_ms = Some(now);
        peer.propose_untagged(Command::Finalize(finalize));
    }
}

/// A finalize applied: the transfer's drive ends and its waiters get the final record.
pub(in crate::core) fn applied(
    peer: &mut ShardPeer,
    finalize: FinalizeCmd,
    outcome: FinalizeOutcome,
    record: Option<TransferView>,
    ctx: &mut Ctx,
) {
    let Some(status) = &outcome.status else {
        return;
    };
    if *status == TransferStatus::Pending {
        return;
    }
    peer.drives.remove(&finalize.id);
    let waiters = peer.finalize_waiters.remove(&finalize.id).unwrap_or_default();
    let result = record.map_or(TransferResult::Unavailable, TransferResult::Done);
    for (task, slot) in waiters {
        peer.fill(task, slot, Answer::Transfer(result.clone()), ctx);
    }
}
