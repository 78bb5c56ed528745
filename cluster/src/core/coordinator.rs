//! The cross-shard transfer protocol, as driven by shard leaders. Payer shard P prepares (the
//! debit is pending), asks payee shard Q for a decision (`Credits`), Q records exactly one
//! decision per transfer id and answers (`Decisions`), P finalizes by copying it. Nothing here
//! decides alone: P only ever copies Q's decision, and Q's first decision wins. Every message
//! is idempotent, so P's leader simply re-sends until the finalize applies; a new leader
//! re-drives every pending transfer once it has applied an entry of its own term.

use super::NodeCore;
use crate::ids::{ShardId, TransferId};
use crate::ledger::{Command, CreditCmd, Decision, FinalizeCmd, TransferStatus};
use crate::message::{PeerMessage, Tagged};
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct Coordinator {
    /// Credit requests to route, by payee shard.
    credit_outbox: BTreeMap<ShardId, Vec<CreditCmd>>,
    /// Decisions to route, by payer shard.
    decision_outbox: BTreeMap<ShardId, Vec<(TransferId, Decision)>>,
    /// Payer side: when each pending transfer's credit request last left.
    credit_sent_ms: BTreeMap<(ShardId, TransferId), u64>,
    /// Payer side: finalizes proposed and not yet applied (so duplicates are not proposed).
    finalize_proposed_ms: BTreeMap<(ShardId, TransferId), u64>,
    /// Payee side: credits proposed and not yet applied.
    credit_proposed_ms: BTreeMap<(ShardId, TransferId), u64>,
}

impl Coordinator {
    /// This node no longer leads `shard`: its bookkeeping is the new leader's job now.
    pub(super) fn forget_shard(&mut self, shard: ShardId) {
        self.credit_sent_ms.retain(|(payer, _), _| *payer != shard);
        self.finalize_proposed_ms.retain(|(payer, _), _| *payer != shard);
        self.credit_proposed_ms.retain(|(payee, _), _| *payee != shard);
    }
}

impl NodeCore {
    /// A transfer was just prepared on a shard this node leads: ask the payee shard to decide.
    pub(super) fn transfer_prepared(&mut self, shard: ShardId, id: &TransferId) {
        let record = self.replicas[&shard].ledger().transfer(id).expect("prepared record");
        let payee_shard = self.config.placement.shard_of(&record.to);
        let credit = CreditCmd::for_record(record, shard, false);
        self.coordinator.credit_outbox.entry(payee_shard).or_default().push(credit);
        self.coordinator.credit_sent_ms.insert((shard, id.clone()), self.now_ms);
    }

    /// The payee shard (led here) recorded or replayed a decision: tell the payer shard.
    pub(super) fn credit_decided(&mut self, shard: ShardId, payer_shard: ShardId, id: &TransferId, decision: Decision) {
        self.coordinator.credit_proposed_ms.remove(&(shard, id.clone()));
        self.coordinator.decision_outbox.entry(payer_shard).or_default().push((id.clone(), decision));
    }

    pub(super) fn transfer_finalized(&mut self, shard: ShardId, id: &TransferId) {
        let key = (shard, id.clone());
        self.coordinator.credit_sent_ms.remove(&key);
        self.coordinator.finalize_proposed_ms.remove(&key);
    }

    /// Credit requests from another node's coordinator, for a payee shard led here.
    pub(super) fn credits_received(&mut self, shard: ShardId, credits: Vec<CreditCmd>) {
        // A node that does not lead the shard drops them: forwarding could bounce between two
        // stale views, and the coordinator re-sends anyway.
        if self.replicas.get(&shard).is_some_and(|replica| replica.is_leader()) {
            self.coordinator.credit_outbox.entry(shard).or_default().extend(credits);
        }
    }

    pub(super) fn decisions_received(&mut self, shard: ShardId, decisions: Vec<(TransferId, Decision)>) {
        if self.replicas.get(&shard).is_some_and(|replica| replica.is_leader()) {
            self.coordinator.decision_outbox.entry(shard).or_default().extend(decisions);
        }
    }

    /// Routes the outboxes: proposals on shards led here, messages to other leaders.
    pub(super) fn coordinator_flush(&mut self) {
        let node = self.config.node;
        let now = self.now_ms;
        let retry_after = self.config.limits.redrive_interval_ms;
        for (payee_shard, credits) in std::mem::take(&mut self.coordinator.credit_outbox) {
            let local_leader = self.replicas.get(&payee_shard).is_some_and(|replica| replica.is_leader());
            if !local_leader {
                if let Some(leader) = self.leader_of(payee_shard).filter(|leader| *leader != node) {
                    self.send(leader, PeerMessage::Credits { shard: payee_shard, credits });
                }
                continue;
            }
            for credit in credits {
                let known = self.replicas[&payee_shard].ledger().credit(&credit.id).map(|record| record.decision.clone());
                if let Some(decision) = known {
                    // Decisions never change, so an applied one can be answered without a proposal.
                    self.coordinator.decision_outbox.entry(credit.payer_shard).or_default().push((credit.id, decision));
                    continue;
                }
                let key = (payee_shard, credit.id.clone());
                if self.coordinator.credit_proposed_ms.get(&key).is_some_and(|at| now.saturating_sub(*at) < retry_after) {
                    continue;
                }
                self.coordinator.credit_proposed_ms.insert(key, now);
                let replica = self.replicas.get_mut(&payee_shard).expect("checked");
                replica.queue_proposal(Tagged { tag: 0, command: Command::Credit(credit) });
            }
        }
        for (payer_shard, decisions) in std::mem::take(&mut self.coordinator.decision_outbox) {
            let local_leader = self.replicas.get(&payer_shard).is_some_and(|replica| replica.is_leader());
            if !local_leader {
                if let Some(leader) = self.leader_of(payer_shard).filter(|leader| *leader != node) {
                    self.send(leader, PeerMessage::Decisions { shard: payer_shard, decisions });
                }
                continue;
            }
            for (id, decision) in decisions {
                let pending = self.replicas[&payer_shard]
                    .ledger()
                    .transfer(&id)
                    .is_some_and(|record| record.status == TransferStatus::Pending);
                if !pending {
                    continue;
                }
                let key = (payer_shard, id.clone());
                if self.coordinator.finalize_proposed_ms.get(&key).is_some_and(|at| now.saturating_sub(*at) < retry_after) {
                    continue;
                }
                self.coordinator.finalize_proposed_ms.insert(key, now);
                let replica = self.replicas.get_mut(&payer_shard).expect("checked");
                replica.queue_proposal(Tagged { tag: 0, command: Command::Finalize(FinalizeCmd { id, decision }) });
            }
        }
    }

    /// Re-drives pending transfers on shards led here: re-send credit requests that had no
    /// answer in `redrive_interval_ms`, and past `prevent_after_ms` ask the payee to refuse.
    pub(super) fn coordinator_tick(&mut self) {
        let now = self.now_ms;
        let limits = self.config.limits.clone();
        let placement = self.config.placement.clone();
        let mut resend = Vec::new();
        for (shard, replica) in &self.replicas {
            if !replica.leader_ready() {
                continue;
            }
            for record in replica.ledger().pending() {
                let key = (*shard, record.id.clone());
                let last = self.coordinator.credit_sent_ms.get(&key).copied();
                if last.is_some_and(|sent| now.saturating_sub(sent) < limits.redrive_interval_ms) {
                    continue;
                }
                let prevent = now.saturating_sub(record.created_at_ms) >= limits.prevent_after_ms;
                resend.push((key, placement.shard_of(&record.to), CreditCmd::for_record(record, *shard, prevent)));
            }
        }
        for (key, payee_shard, credit) in resend {
            self.coordinator.credit_sent_ms.insert(key, now);
            self.coordinator.credit_outbox.entry(payee_shard).or_default().push(credit);
        }
        let stale_after = limits.redrive_interval_ms.saturating_mul(10);
        let fresh = |at: &mut u64| now.saturating_sub(*at) < stale_after;
        self.coordinator.credit_proposed_ms.retain(|_, at| fresh(at));
        self.coordinator.finalize_proposed_ms.retain(|_, at| fresh(at));
    }
}
