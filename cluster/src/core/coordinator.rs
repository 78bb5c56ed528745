//! The cross-shard transfer protocol, as driven by shard leaders. Payer shard P prepares (the
//! debit is pending), asks payee shard Q for a decision (`Credits`), Q records exactly one
//! decision per transfer id and answers (`Decisions`), P finalizes by copying it. Nothing here
//! decides alone: P only ever copies Q's decision, and Q's first decision wins. Every message
//! is idempotent, so P's leader simply re-sends until the finalize applies; a new leader
//! re-drives every pending transfer once it has applied an entry of its own term.

use super::NodeCore;
use crate::ids::NodeId;
use crate::ids::{ShardId, TransferId};
use crate::ledger::{Command, CreditCmd, Decision, FinalizeCmd, RejectCode, TransferStatus};
use crate::message::{PeerMessage, Tagged};
use crate::planted::{planted, PlantedBug};
use std::collections::BTreeMap;

/// Forwards of one credit or decision batch by nodes that do not lead its shard.
const PROTOCOL_HOPS_MAX: u8 = 2;

#[derive(Default)]
pub(super) struct Coordinator {
    /// Credit requests to route, by payee shard.
    credit_outbox: BTreeMap<ShardId, Vec<CreditCmd>>,
    /// Decisions to route, by payer shard (each with the body it was made for).
    decision_outbox: BTreeMap<ShardId, Vec<FinalizeCmd>>,
    /// Payer side: how this leader drives each pending transfer, by payer shard.
    drives: BTreeMap<ShardId, BTreeMap<TransferId, Drive>>,
    /// Payee side: credits proposed and not yet applied.
    credit_proposed_ms: BTreeMap<(ShardId, TransferId), u64>,
}

/// The payer-side timers of one pending transfer, on the monotonic clock. An entry lives while
/// any of them is set.
#[derive(Debug, Default)]
struct Drive {
    /// Since when this leader has seen the transfer pending (set by the first re-drive pass
    /// that finds it, or when it is prepared here).
    since_ms: Option<u64>,
    /// When its credit request last left.
    credit_sent_ms: Option<u64>,
    /// When its finalize was proposed, until it applies (so duplicates are not proposed) or
    /// the mark goes stale.
    finalize_proposed_ms: Option<u64>,
}

impl Drive {
    fn is_idle(&self) -> bool {
        self.since_ms.is_none() && self.credit_sent_ms.is_none() && self.finalize_proposed_ms.is_none()
    }
}

impl Coordinator {
    /// Since when each pending transfer on a shard led here has been pending.
    pub(super) fn pending_since(&self) -> impl Iterator<Item = (ShardId, u64)> + '_ {
        self.drives.iter().flat_map(|(shard, drives)| drives.values().filter_map(|drive| drive.since_ms.map(|since| (*shard, since))))
    }

    /// This node no longer leads `shard`: its bookkeeping is the new leader's job now.
    pub(super) fn forget_shard(&mut self, shard: ShardId) {
        self.drives.remove(&shard);
        self.credit_proposed_ms.retain(|(payee, _), _| *payee != shard);
    }

    /// The drive of a transfer, made empty if there is none (the id is copied only then).
    fn drive(&mut self, shard: ShardId, id: &TransferId) -> &mut Drive {
        let drives = self.drives.entry(shard).or_default();
        if !drives.contains_key(id) {
            drives.insert(id.clone(), Drive::default());
        }
        drives.get_mut(id).expect("inserted above")
    }
}

impl NodeCore {
    /// A transfer was just prepared on a shard this node leads: ask the payee shard to decide.
    pub(super) fn transfer_prepared(&mut self, shard: ShardId, id: &TransferId) {
        let record = self.replicas[&shard].ledger().transfer(id).expect("prepared record");
        let payee_shard = self.config.placement.shard_of(&record.to);
        let credit = CreditCmd::for_record(record, shard, false);
        self.coordinator.credit_outbox.entry(payee_shard).or_default().push(credit);
        let drive = self.coordinator.drive(shard, id);
        drive.credit_sent_ms = Some(self.clock_ms);
        drive.since_ms = Some(self.clock_ms);
    }

    /// The payee shard (led here) recorded or replayed a decision on `credit`: tell the payer
    /// shard, naming the body the decision is for.
    pub(super) fn credit_decided(&mut self, shard: ShardId, credit: &CreditCmd, decision: Decision) {
        self.coordinator.credit_proposed_ms.remove(&(shard, credit.id.clone()));
        let finalize = FinalizeCmd { id: credit.id.clone(), body: credit.body(), decision };
        self.coordinator.decision_outbox.entry(credit.payer_shard).or_default().push(finalize);
    }

    pub(super) fn transfer_finalized(&mut self, shard: ShardId, id: &TransferId) {
        if let Some(drives) = self.coordinator.drives.get_mut(&shard) {
            drives.remove(id);
        }
    }

    /// Credit requests from another node's coordinator, for a payee shard led here (or
    /// forwarded once toward the leader this node knows).
    pub(super) fn credits_received(&mut self, from: NodeId, shard: ShardId, credits: Vec<CreditCmd>, hops: u8) {
        if self.replicas.get(&shard).is_some_and(|replica| replica.is_leader()) {
            // Credit requests come from the payer shard's leader: that is where decisions go.
            if hops == 0 {
                for credit in &credits {
                    self.learn_leader(credit.payer_shard, from);
                }
            }
            self.coordinator.credit_outbox.entry(shard).or_default().extend(credits);
            return;
        }
        if let Some(leader) = self.redirect(from, shard, hops) {
            self.send(leader, PeerMessage::Credits { shard, credits, hops: hops + 1 });
        }
    }

    pub(super) fn decisions_received(&mut self, from: NodeId, shard: ShardId, decisions: Vec<FinalizeCmd>, hops: u8) {
        if self.replicas.get(&shard).is_some_and(|replica| replica.is_leader()) {
            self.coordinator.decision_outbox.entry(shard).or_default().extend(decisions);
            return;
        }
        if let Some(leader) = self.redirect(from, shard, hops) {
            self.send(leader, PeerMessage::Decisions { shard, decisions, hops: hops + 1 });
        }
    }

    /// Where to forward a protocol message for a shard this node does not lead: to the leader
    /// it knows, at most `PROTOCOL_HOPS_MAX` times, telling the sender who leads. `None` drops
    /// it (the coordinator re-sends anyway).
    fn redirect(&mut self, from: NodeId, shard: ShardId, hops: u8) -> Option<NodeId> {
        let node = self.config.node;
        let leader = self.leader_of(shard).filter(|leader| *leader != node && *leader != from)?;
        if self.replicas.contains_key(&shard) {
            self.send(from, PeerMessage::LeaderHint { shard, leader });
        }
        (hops < PROTOCOL_HOPS_MAX).then_some(leader)
    }

    /// Routes the outboxes: proposals on shards led here, messages to other leaders.
    pub(super) fn coordinator_flush(&mut self) {
        let node = self.config.node;
        let now = self.clock_ms;
        let retry_after = self.config.limits.redrive_interval_ms;
        for (payee_shard, credits) in std::mem::take(&mut self.coordinator.credit_outbox) {
            let local_leader = self.replicas.get(&payee_shard).is_some_and(|replica| replica.is_leader());
            if !local_leader {
                if let Some(leader) = self.leader_of(payee_shard).filter(|leader| *leader != node) {
                    self.send(leader, PeerMessage::Credits { shard: payee_shard, credits, hops: 0 });
                }
                continue;
            }
            for credit in credits {
                let unchecked = planted(self.config.planted, PlantedBug::IdReuseUnchecked);
                let known = self.replicas[&payee_shard].ledger().credit(&credit.id).map(|record| {
                    if record.same_transfer(&credit) || unchecked {
                        record.decision.clone()
                    } else {
                        // The id was decided for another body: this one is refused, and
                        // applying it would store nothing either.
                        Decision::Refused(RejectCode::IdempotencyKeyReused)
                    }
                });
                if let Some(decision) = known {
                    // Decisions never change, so an applied one can be answered without a proposal.
                    let finalize = FinalizeCmd { id: credit.id.clone(), body: credit.body(), decision };
                    self.coordinator.decision_outbox.entry(credit.payer_shard).or_default().push(finalize);
                    continue;
                }
                let key = (payee_shard, credit.id.clone());
                if self.coordinator.credit_proposed_ms.get(&key).is_some_and(|at| now.saturating_sub(*at) < retry_after) {
                    continue;
                }
                self.coordinator.credit_proposed_ms.insert(key, now);
                let replica = self.replicas.get_mut(&payee_shard).expect("checked");
                replica.queue_proposal(Tagged { tag: 0, command: Command::Credit(credit) });
                self.dirty.insert(payee_shard);
            }
        }
        for (payer_shard, decisions) in std::mem::take(&mut self.coordinator.decision_outbox) {
            let local_leader = self.replicas.get(&payer_shard).is_some_and(|replica| replica.is_leader());
            if !local_leader {
                if let Some(leader) = self.leader_of(payer_shard).filter(|leader| *leader != node) {
                    self.send(leader, PeerMessage::Decisions { shard: payer_shard, decisions, hops: 0 });
                }
                continue;
            }
            let unchecked = planted(self.config.planted, PlantedBug::IdReuseUnchecked);
            for finalize in decisions {
                // Only a decision made for this record's own body may finalize it.
                let pending = self.replicas[&payer_shard]
                    .ledger()
                    .transfer(&finalize.id)
                    .is_some_and(|record| record.status == TransferStatus::Pending && (unchecked || record.body() == finalize.body));
                if !pending {
                    continue;
                }
                let drive = self.coordinator.drive(payer_shard, &finalize.id);
                if drive.finalize_proposed_ms.is_some_and(|at| now.saturating_sub(at) < retry_after) {
                    continue;
                }
                drive.finalize_proposed_ms = Some(now);
                let replica = self.replicas.get_mut(&payer_shard).expect("checked");
                replica.queue_proposal(Tagged { tag: 0, command: Command::Finalize(finalize) });
                self.dirty.insert(payer_shard);
            }
        }
    }

    /// Re-drives pending transfers on shards led here: re-send credit requests that had no
    /// answer in `redrive_interval_ms`, and past `prevent_after_ms` ask the payee to refuse.
    pub(super) fn coordinator_tick(&mut self) {
        let now = self.clock_ms;
        let redrive_interval_ms = self.config.limits.redrive_interval_ms;
        let prevent_after_ms = self.config.limits.prevent_after_ms;
        let placement = &self.config.placement;
        let mut resend = Vec::new();
        for (shard, replica) in &self.replicas {
            if !replica.leader_ready() {
                continue;
            }
            for record in replica.ledger().pending() {
                let drive = self.coordinator.drive(*shard, &record.id);
                let since = *drive.since_ms.get_or_insert(now);
                if drive.credit_sent_ms.is_some_and(|sent| now.saturating_sub(sent) < redrive_interval_ms) {
                    continue;
                }
                // Measured on this leader's monotonic clock from when it first saw the transfer
                // pending: a new leader gives the payee shard the full period again.
                let prevent = now.saturating_sub(since) >= prevent_after_ms;
                resend.push((*shard, placement.shard_of(&record.to), CreditCmd::for_record(record, *shard, prevent)));
            }
        }
        for (shard, payee_shard, credit) in resend {
            self.stats.redrives += 1;
            if credit.prevent {
                self.stats.prevents += 1;
            }
            let sent_before = self.coordinator.drive(shard, &credit.id).credit_sent_ms.replace(now).is_some();
            if sent_before {
                // No answer since the last send: the leader we know of may be gone.
                self.rotate_hint(payee_shard);
            }
            if credit.prevent && planted(self.config.planted, PlantedBug::CoordinatorAbortsAlone) {
                let decision = Decision::Refused(RejectCode::CreditTimeout);
                let finalize = Command::Finalize(FinalizeCmd { id: credit.id.clone(), body: credit.body(), decision });
                self.replicas.get_mut(&shard).expect("led here").queue_proposal(Tagged { tag: 0, command: finalize });
                self.dirty.insert(shard);
                continue;
            }
            self.coordinator.credit_outbox.entry(payee_shard).or_default().push(credit);
        }
        let stale_after = redrive_interval_ms.saturating_mul(10);
        let fresh = |at: &u64| now.saturating_sub(*at) < stale_after;
        self.coordinator.credit_proposed_ms.retain(|_, at| fresh(at));
        for drives in self.coordinator.drives.values_mut() {
            drives.retain(|_, drive| {
                drive.finalize_proposed_ms = drive.finalize_proposed_ms.filter(fresh);
                !drive.is_idle()
            });
        }
        self.coordinator.drives.retain(|_, drives| !drives.is_empty());
    }
}
