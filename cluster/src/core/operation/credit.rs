//! Credits, payee side of the cross-shard protocol: a payer shard's leader asks the payee
//! shard for a decision (`PeerMessage::Credits`, or the outbox when both shards are led here);
//! the payee shard records exactly one decision per transfer id (first wins, for ever, the
//! ledger's rule) and the decision goes back to the payer shard (`finalize.rs`) with the body it
//! was made for. A decision already applied is answered without a new proposal — but only for
//! the same body: the id may be bound to another transfer.

use super::super::peer::ShardPeer;
use super::super::{Ctx, NodeCore};
use crate::ids::{NodeId, ShardId};
use crate::ledger::{Command, CreditCmd, CreditOutcome, Decision, FinalizeCmd, RejectCode};
use crate::message::PeerMessage;
use crate::planted::{planted, PlantedBug};

impl NodeCore {
    /// Routes the credit requests in the outbox: proposals on payee shards led here, messages
    /// to the other leaders.
    pub(in crate::core) fn route_credits(&mut self) {
        let node = self.config.node;
        let mut fences = std::mem::take(&mut self.outbox.credit_fences);
        for (payee_shard, credits) in std::mem::take(&mut self.outbox.credits) {
            let fence = fences.remove(&payee_shard).unwrap_or(0);
            let local_leader = self.peers.get(&payee_shard).is_some_and(|peer| peer.replica.is_leader());
            if !local_leader {
                if let Some(leader) = self.leader_of(payee_shard).filter(|leader| *leader != node) {
                    self.send(leader, PeerMessage::Credits { shard: payee_shard, credits, hops: 0, fence });
                }
                continue;
            }
            let (mut ctx, peers) = self.ctx();
            let peer = peers.get_mut(&payee_shard).expect("checked");
            // Not before this shard's cut for the payers' backup fence: they wait for it.
            if super::backup::fenced(peer, fence, &mut ctx) {
                propose(peer, credits, &mut ctx);
            } else {
                super::backup::park(&mut peer.fenced_credits, fence, credits);
            }
            self.dirty.insert(payee_shard);
        }
    }

    /// Credit requests from another node's coordinator, for a payee shard led here (or
    /// forwarded once toward the leader this node knows).
    pub(in crate::core) fn credits_received(&mut self, from: NodeId, shard: ShardId, credits: Vec<CreditCmd>, hops: u8, fence: u64) {
        if self.peers.get(&shard).is_some_and(|peer| peer.replica.is_leader()) {
            // Credit requests come from the payer shard's leader: that is where decisions go.
            if hops == 0 {
                for credit in &credits {
                    self.learn_leader(credit.payer_shard, from);
                }
            }
            for credit in credits {
                self.outbox.credit(shard, credit, fence);
            }
            return;
        }
        if let Some(leader) = self.redirect(from, shard, hops) {
            self.send(leader, PeerMessage::Credits { shard, credits, hops: hops + 1, fence });
        }
    }
}

/// Proposes the credits a payee shard led here has not decided yet; answers the decided ones.
fn propose(peer: &mut ShardPeer, credits: Vec<CreditCmd>, ctx: &mut Ctx) {
    let now = ctx.time.monotonic_ms;
    let retry_after = ctx.limits.redrive_interval_ms;
    let unchecked = planted(ctx.planted, PlantedBug::IdReuseUnchecked);
    for credit in credits {
        let known = peer.replica.ledger().credit(&credit.id).map(|record| {
            if record.same_transfer(&credit) || unchecked {
                record.decision.clone()
            } else {
                // The id was decided for another body: this one is refused, and applying it
                // would store nothing either.
                Decision::Refused(RejectCode::IdempotencyKeyReused)
            }
        });
        if let Some(decision) = known {
            // Decisions never change, so an applied one can be answered without a proposal.
            let finalize = FinalizeCmd { id: credit.id.clone(), body: credit.body(), decision };
            ctx.out.decision(credit.payer_shard, finalize, peer.replica.ledger().fence_epoch());
            continue;
        }
        if peer.credits_proposed_ms.get(&credit.id).is_some_and(|at| now.saturating_sub(*at) < retry_after) {
            continue;
        }
        peer.credits_proposed_ms.insert(credit.id.clone(), now);
        peer.propose_untagged(Command::Credit(credit));
    }
}

/// The payee shard recorded or replayed a decision on `credit`: on its leader, tell the payer
/// shard, naming the body the decision is for.
pub(in crate::core) fn applied(peer: &mut ShardPeer, credit: CreditCmd, outcome: CreditOutcome, ctx: &mut Ctx) {
    if !peer.replica.is_leader() {
        return;
    }
    peer.credits_proposed_ms.remove(&credit.id);
    let Some(decision) = outcome.decision else {
        // Not a credit this shard could decide: nothing to tell.
        return;
    };
    let payer_shard = credit.payer_shard;
    let finalize = FinalizeCmd { body: credit.body(), id: credit.id, decision };
    ctx.out.decision(payer_shard, finalize, peer.replica.ledger().fence_epoch());
}
