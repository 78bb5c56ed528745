//! The invariant checkers, each named as in the report. Periodic ones run on every replica of
//! every live node during the run; final ones run after the faults heal and the cluster settles.
//!
//! - `conservation`: per currency, the balances of all shards sum to zero (settlement accounts
//!   hold the money outside the cluster) once nothing is in flight; every shard's balances equal
//!   its net cross-shard inflow at every check.
//! - `no_overdraft`: no non-settlement account has available balance below zero.
//! - `at_most_once`: a transfer's payer record and payee decision never change once final, and an
//!   account's history never lists a transfer twice.
//! - `acknowledged_durable` (RPO 0): every transfer a client was told is posted is posted in the
//!   cluster after every crash and restart.
//! - `rejected_never_posted`: a transfer answered with a 4xx is never posted.
//! - `one_body_per_id`: a transfer id is a global idempotency key: every record stored under an
//!   id (payer record, payee decision) has the body the id is reserved for on its home shard, so
//!   at most one body per id is ever posted; no client is told "posted" for two bodies of an id.
//! - `linearizable_reads`: checked by the workload as reads return (`workload.rs`).
//! - `liveness`: after the faults heal, every shard elects a leader, every ambiguous transfer is
//!   resolved and nothing stays pending, within a bounded virtual time.
//! - `replicas_converge`: replicas of a shard reach the same applied index with identical state.
//! - `memory_matches_store`: on every replica, what the ledger keeps in memory (pending set,
//!   inflow, account count, cached accounts) equals what its store holds.
//! - `payer_matches_payee`: both sides of every cross-shard transfer agree, checked record by
//!   record on the most advanced replicas during the run and after it.
//! - `compaction_behind_state` (after every IO completion, `sim.rs`): no durable log is
//!   compacted past the durable state of its node's state store.
//! - `committed_on_quorum` (after every input, `sim.rs`): no replica's commit index is ahead of
//!   what a quorum of the shard's replicas holds durably (so an acknowledgement survives any
//!   minority's power loss).
//! - `holds_balanced`: a closed hold captured plus released exactly what it held, an open one
//!   is indexed for its expiry, and every account's pending debits are exactly its pending
//!   transfers plus its open holds (so nothing is released twice or held for ever).
//! - `statements_match_balances`: every account's movements, in time and sequence order, form a
//!   running balance that ends at its posted balance (statements and as-of balances are right).
//! - `spend_matches_history`: every customer's counter of what its accounts paid equals the
//!   posted and pending debits and open holds its accounts' records hold (so nothing released
//!   still counts, and nothing counts twice).
//! - `limits_respected`: no customer paid past its KYC class's limit (the workload's customers
//!   are class I, class II and unverified, with low limits its amounts reach).
//! - `verified_before_paid`: every payment of a customer who verifies every payment (c1) that
//!   moved money passed a verification first.
//! - `valid_input_accepted`: the core's checks of untrusted peer input never drop a message
//!   an honest node sent (only what the simulator injects as hostile).

use crate::sim::SimCluster;
use crate::workload::Workload;
use settle_cluster::ids::{AccountId, NodeId, ShardId, TransferId};
use settle_cluster::ledger::{AccountKind, Decision, Ledger, TransferBody, TransferRecord, TransferStatus, TransferView};
use settle_cluster::money::{Currency, Minor};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};

/// A broken invariant: which checker, and what it saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub checker: &'static str,
    pub message: String,
}

impl Violation {
    pub fn new(checker: &'static str, message: impl Into<String>) -> Violation {
        Violation { checker, message: message.into() }
    }
}

/// State the periodic checks remember between runs.
#[derive(Default)]
pub struct Checkers {
    /// Per shard, the first final status any replica had for each transfer.
    final_statuses: BTreeMap<ShardId, BTreeMap<TransferId, TransferStatus>>,
    /// Per shard, the first decision any replica had for each transfer.
    decisions: BTreeMap<ShardId, BTreeMap<TransferId, Decision>>,
    /// State machine safety: the ledger hash any replica had at each applied index.
    applied_states: BTreeMap<(ShardId, u64), (NodeId, u64)>,
    /// Leader completeness: for entries a leader reported committed, the entry's term and the
    /// term of the leader that reported it.
    committed_terms: BTreeMap<(ShardId, u64), (u64, u64)>,
    /// Per replica (node, shard), the incarnation and applied index at its last full check: a
    /// replica that applied nothing since holds the same state, so its state is not read again.
    checked_at: BTreeMap<(NodeId, ShardId), (u64, u64)>,
}

impl Checkers {
    /// Checks every replica of every running node.
    pub fn periodic(&mut self, cluster: &SimCluster) -> Result<(), Violation> {
        for node in cluster.node_ids() {
            let Some(core) = cluster.core(node) else {
                continue;
            };
            // Messages between honest nodes always pass the core's checks of untrusted input
            // (only the hostile input the simulator itself injects may be dropped).
            let rejected: u64 = core.stats().peer_messages_rejected.values().sum();
            if rejected > cluster.hostile_messages_sent_to(node) {
                let message = format!("node {node} rejected honest peer messages: {:?}", core.stats().peer_messages_rejected);
                return Err(Violation::new("valid_input_accepted", message));
            }
            for replica in cluster.sound_replicas(node) {
                let ledger = replica.ledger();
                if replica.is_leader() {
                    // Leader completeness: a leader of a later term holds every committed entry.
                    let shard = ledger.shard();
                    for (key, (term, reported_in)) in self.committed_terms.range((shard, 0)..=(shard, u64::MAX)) {
                        if replica.term() <= *reported_in {
                            continue;
                        }
                        if let Some(held) = replica.entry_term(key.1) {
                            if held != *term {
                                let message = format!(
                                    "shard {shard}: leader {node} of term {} has term {held} at index {}, committed with term {term} in term {reported_in}",
                                    replica.term(),
                                    key.1
                                );
                                return Err(Violation::new("acknowledged_durable", message));
                            }
                        }
                    }
                    let commit = replica.commit_index();
                    if let Some(term) = replica.entry_term(commit) {
                        self.committed_terms.entry((shard, commit)).or_insert((term, replica.term()));
                    }
                }
                let position = (cluster.incarnation(node), replica.applied_index());
                if self.checked_at.insert((node, ledger.shard()), position) == Some(position) {
                    continue;
                }
                check_shard(ledger)?;
                if let Err(drift) = ledger.memory_matches_store() {
                    let message = format!("node {node} shard {}: memory differs from the store: {drift}", ledger.shard());
                    return Err(Violation::new("memory_matches_store", message));
                }
                self.check_final(ledger)?;
                let hash = ledger.state_digest();
                let key = (ledger.shard(), replica.applied_index());
                let (other, first_hash) = *first_recorded(&mut self.applied_states, &key, || (node, hash));
                if first_hash != hash {
                    let message = format!("shard {} at applied index {}: node {node} differs from node {other}", key.0, key.1);
                    return Err(Violation::new("replicas_converge", message));
                }
            }
        }
        payer_matches_payee(cluster, &latest_ledgers(cluster), false)
    }

    fn check_final(&mut self, ledger: &Ledger) -> Result<(), Violation> {
        let shard = ledger.shard();
        let statuses = self.final_statuses.entry(shard).or_default();
        for record in ledger.transfers() {
            // Pending, held and awaiting verification are not final (a held one is captured,
            // voided or expires; an unverified one is proved, fails or expires).
            if matches!(record.status, TransferStatus::Pending | TransferStatus::Held | TransferStatus::RequiresVerification) {
                continue;
            }
            let earlier = first_recorded(statuses, &record.id, || record.status.clone());
            if *earlier != record.status {
                let message = format!("transfer {} on shard {shard} was {earlier:?}, now {:?}", record.id, record.status);
                return Err(Violation::new("at_most_once", message));
            }
        }
        let decisions = self.decisions.entry(shard).or_default();
        for credit in ledger.credits() {
            let earlier = first_recorded(decisions, &credit.id, || credit.decision.clone());
            if *earlier != credit.decision {
                let message = format!("decision for {} on shard {shard} was {earlier:?}, now {:?}", credit.id, credit.decision);
                return Err(Violation::new("at_most_once", message));
            }
        }
        Ok(())
    }
}

/// The value first recorded under `key`, recording `value()` when there is none yet: the checks
/// hold every later value to the first. The key is looked up by reference and cloned only when
/// recorded (`entry` would need an owned key for every lookup).
fn first_recorded<'m, K, Q, V>(first_values: &'m mut BTreeMap<K, V>, key: &Q, value: impl FnOnce() -> V) -> &'m V
where
    K: Borrow<Q> + Ord,
    Q: ToOwned<Owned = K> + Ord + ?Sized,
{
    if !first_values.contains_key(key) {
        first_values.insert(key.to_owned(), value());
    }
    &first_values[key]
}

/// What one shard can check alone, without panicking.
pub fn check_shard(ledger: &Ledger) -> Result<(), Violation> {
    let shard = ledger.shard();
    for record in ledger.transfers() {
        // A record whose id is homed here was reserved in the same apply that stored it.
        if let Some(reserved) = ledger.reservation(&record.id) {
            // A captured hold's record says what was captured; its id was reserved for what it held.
            let held = ledger.hold(&record.id).map(|hold| TransferBody { amount: hold.held, ..record.body() });
            if reserved != held.unwrap_or_else(|| record.body()) {
                let message = format!("{} on shard {shard} stores {:?} but the id is reserved for {reserved:?}", record.id, record.body());
                return Err(Violation::new("one_body_per_id", message));
            }
        }
    }
    let mut sums: BTreeMap<Currency, Minor> = BTreeMap::new();
    for account in ledger.accounts() {
        if account.kind != AccountKind::Settlement && account.available() < 0 {
            let message = format!("account {} on shard {shard} has available {}", account.id, account.available());
            return Err(Violation::new("no_overdraft", message));
        }
        let mut seen = BTreeSet::new();
        let (history, _) = ledger.history(&account.id, None, usize::MAX).unwrap_or_default();
        for item in &history {
            if !seen.insert((item.id.clone(), item.payee_side)) {
                let message = format!("account {} lists transfer {} twice", account.id, item.id);
                return Err(Violation::new("at_most_once", message));
            }
        }
        no_movement_while_frozen(ledger, &account.id, &history)?;
        if u64::try_from(history.len()).ok() != Some(account.history_len) {
            let message =
                format!("account {} counts {} transfers but its history lists {}", account.id, account.history_len, history.len());
            return Err(Violation::new("at_most_once", message));
        }
        *sums.entry(account.currency).or_insert(0) += account.balance;
    }
    for (currency, sum) in &sums {
        let inflow = ledger.net_inflow().get(currency).copied().unwrap_or(0);
        if *sum != inflow {
            let message = format!("shard {shard} {currency}: balances sum to {sum}, net inflow is {inflow}");
            return Err(Violation::new("conservation", message));
        }
    }
    // Holds: a closed one released or captured exactly what it held, an open one is indexed for
    // expiry; every account's pending debits are exactly its pending transfers and open holds.
    let held = ledger.verify_holds().map_err(|broken| Violation::new("holds_balanced", format!("shard {shard}: {broken}")))?;
    let mut pending: BTreeMap<AccountId, Minor> = held;
    for record in ledger.pending() {
        *pending.entry(record.from.clone()).or_insert(0) += record.amount;
    }
    for account in ledger.accounts() {
        let expected = pending.get(&account.id).copied().unwrap_or(0);
        if account.debits_pending != expected {
            let message = format!(
                "account {} on shard {shard} has pending debits {}, its pending transfers and holds sum to {expected}",
                account.id, account.debits_pending
            );
            return Err(Violation::new("holds_balanced", message));
        }
    }
    // Every account's movements (its statement) run to its posted balance, in log order.
    ledger.verify_movements().map_err(|broken| Violation::new("statements_match_balances", format!("shard {shard}: {broken}")))?;
    // Customers' counters hold exactly what their accounts' records still count, and no
    // customer paid past its class's limit (the simulator only ever sets limits once).
    ledger.verify_spend().map_err(|broken| Violation::new("spend_matches_history", format!("shard {shard}: {broken}")))?;
    ledger.verify_limits().map_err(|broken| Violation::new("limits_respected", format!("shard {shard}: {broken}")))?;
    ledger.verify_always_verified().map_err(|broken| Violation::new("verified_before_paid", format!("shard {shard}: {broken}")))?;
    // Refunds of an original never exceed it, and its total counts exactly its live refunds.
    ledger.verify_refunds().map_err(|broken| Violation::new("refunds_within_original", format!("shard {shard}: {broken}")))?;
    // The audit chain links every record to the one before, and the head to the last.
    if let Err(broken) = ledger.verify_audit_chain() {
        return Err(Violation::new("audit_chain_intact", broken));
    }
    ledger.verify_nonces().map_err(|broken| Violation::new("nonces_indexed", format!("shard {shard}: {broken}")))
}

/// No debit passed a stop on its account, and no credit a stop that blocks credits: every
/// movement in the account's history (newest first in `history`) between a stop's placement and
/// its lift, by history position (log order, not clocks), is a violation.
fn no_movement_while_frozen(ledger: &Ledger, account: &AccountId, history: &[TransferView]) -> Result<(), Violation> {
    let stops = ledger.stops(account);
    if stops.is_empty() {
        return Ok(());
    }
    let length = history.len();
    for (newest_first, item) in history.iter().enumerate() {
        let position = u64::try_from(length - 1 - newest_first).expect("fits");
        for stop in &stops {
            let until = stop.lifted.as_ref().map_or(u64::MAX, |lifted| lifted.at_position);
            if position < stop.placed_at_position || position >= until {
                continue;
            }
            let debit = item.from == *account;
            if debit || stop.block_credits {
                let what = if debit { "debited" } else { "credited" };
                let message = format!(
                    "shard {}: {} {what} {account} at history position {position}, under stop {} (positions {}..{until})",
                    ledger.shard(),
                    item.id,
                    stop.id,
                    stop.placed_at_position
                );
                return Err(Violation::new("no_movement_while_frozen", message));
            }
        }
    }
    Ok(())
}

/// The state of each shard on its most advanced live replica.
pub fn latest_ledgers(cluster: &SimCluster) -> BTreeMap<ShardId, &Ledger> {
    let mut best: BTreeMap<ShardId, (u64, &Ledger)> = BTreeMap::new();
    for node in cluster.live_nodes() {
        for replica in cluster.sound_replicas(node) {
            let shard = replica.ledger().shard();
            let newer = best.get(&shard).is_none_or(|(applied, _)| replica.applied_index() > *applied);
            if newer {
                best.insert(shard, (replica.applied_index(), replica.ledger()));
            }
        }
    }
    best.into_iter().map(|(shard, (_, ledger))| (shard, ledger)).collect()
}

/// Replicas of each shard on live nodes agree: same applied index, identical ledgers.
pub fn replicas_converged(cluster: &SimCluster) -> Result<(), Violation> {
    // Per shard, the first replica's applied index and logical state.
    type AppliedState = (u64, BTreeMap<Vec<u8>, Vec<u8>>);
    let mut seen: BTreeMap<ShardId, AppliedState> = BTreeMap::new();
    for node in cluster.live_nodes() {
        for replica in cluster.sound_replicas(node) {
            let shard = replica.ledger().shard();
            let state = (replica.applied_index(), replica.ledger().logical_state());
            let first = first_recorded(&mut seen, &shard, || state.clone());
            if *first != state {
                let message = format!("shard {shard}: replicas differ (applied {} vs {})", first.0, state.0);
                return Err(Violation::new("replicas_converge", message));
            }
        }
    }
    Ok(())
}

/// The checks on the settled cluster against what clients were told.
pub fn final_checks(cluster: &SimCluster, workload: &Workload) -> Result<(), Violation> {
    let ledgers = latest_ledgers(cluster);
    let shards = cluster.placement().shard_count();
    if ledgers.len() != usize::try_from(shards).expect("fits") {
        return Err(Violation::new("liveness", format!("only {} of {shards} shards have a live replica", ledgers.len())));
    }
    let mut totals: BTreeMap<Currency, Minor> = BTreeMap::new();
    for ledger in ledgers.values() {
        if ledger.pending_count() > 0 {
            let message = format!("shard {} still has {} pending transfers", ledger.shard(), ledger.pending_count());
            return Err(Violation::new("liveness", message));
        }
        for account in ledger.accounts() {
            *totals.entry(account.currency).or_insert(0) += account.balance;
        }
    }
    for (currency, total) in &totals {
        if *total != 0 {
            return Err(Violation::new("conservation", format!("{currency} balances sum to {total}, not 0")));
        }
    }
    let placement = cluster.placement();
    let record_of = |payer: &AccountId, id: &TransferId| -> Option<TransferRecord> {
        let shard = placement.shard_of(payer);
        ledgers.get(&shard).and_then(|ledger| ledger.transfer(id))
    };
    // Every acknowledged audit event is in the chain, where its acknowledgement said.
    if let Some(system) = ledgers.get(&settle_cluster::ledger::SYSTEM_SHARD) {
        for (seq, marker) in &workload.audited {
            let read = settle_cluster::ledger::SystemRead::Audit { from: *seq, limit: 1 };
            let settle_cluster::ledger::SystemReadReply::Audit { records, .. } = system.system_read(&read) else {
                unreachable!("an audit read answers audit records")
            };
            let found = records.first().filter(|record| record.seq == *seq).map(|record| record.event.request_id.clone());
            if found.as_deref() != Some(marker.as_str()) {
                let message = format!("audit event {marker} was acknowledged at {seq} but the chain holds {found:?} there");
                return Err(Violation::new("acknowledged_durable", message));
            }
        }
    }
    for (id, acknowledged) in &workload.posted {
        let status = record_of(&acknowledged.command.from, id).map(|record| record.status);
        if status != Some(TransferStatus::Posted) {
            let message = format!("{id} was acknowledged posted at {} ms but the cluster has {status:?}", acknowledged.at_ms);
            return Err(Violation::new("acknowledged_durable", message));
        }
    }
    for ((id, body), code) in &workload.rejected {
        if let Some(record) = record_of(&body.from, id) {
            if record.status == TransferStatus::Posted && record.body() == *body {
                let message = format!("{id} was rejected ({}) but is posted", code.code());
                return Err(Violation::new("rejected_never_posted", message));
            }
        }
    }
    payer_matches_payee(cluster, &ledgers, true)?;
    one_body_per_id(cluster, &ledgers)
}

/// Both sides of every cross-shard transfer agree, checked directly rather than through the sums:
/// a payer record finalized posted has the payee's `Credited` decision, one finalized rejected
/// has none or a refusal; a payee's `Credited` decision has a payer record that is not
/// rejected, a refusal one that is not posted. During the run a side not yet applied on the
/// most advanced live replica is skipped (a failover may be under way); once `settled`, a
/// posted record without its credit and a credit without its payer record are violations.
pub fn payer_matches_payee(cluster: &SimCluster, ledgers: &BTreeMap<ShardId, &Ledger>, settled: bool) -> Result<(), Violation> {
    let placement = cluster.placement();
    for ledger in ledgers.values() {
        for record in ledger.transfers() {
            if !record.cross_shard || record.status == TransferStatus::Pending {
                continue;
            }
            // A hold (or a payment awaiting verification) on a replica that has not applied its
            // capture yet, while the payee's side has moved on: a lagging replica during the
            // run, a violation once everything settled.
            if !settled && matches!(record.status, TransferStatus::Held | TransferStatus::RequiresVerification) {
                continue;
            }
            let Some(payee) = ledgers.get(&placement.shard_of(&record.to)) else {
                continue;
            };
            let credit = payee.credit(&record.id).filter(|credit| credit.body() == record.body());
            let agrees = match (&record.status, credit.as_ref().map(|credit| &credit.decision)) {
                (TransferStatus::Posted, Some(Decision::Credited)) => true,
                (TransferStatus::Posted, None) => !settled,
                (TransferStatus::Rejected(_), None | Some(Decision::Refused(_))) => true,
                // A hold not captured never asked the payee's shard.
                (TransferStatus::Held | TransferStatus::Voided | TransferStatus::Expired, None) => true,
                // Not proved yet: the payee's shard was not asked.
                (TransferStatus::RequiresVerification, None) => true,
                _ => false,
            };
            if !agrees {
                let decision = credit.map(|credit| credit.decision);
                let message = format!("{}: the payer finalized {:?}, the payee decided {decision:?}", record.id, record.status);
                return Err(Violation::new("payer_matches_payee", message));
            }
        }
        for credit in ledger.credits() {
            let Some(payer) = ledgers.get(&credit.payer_shard) else {
                continue;
            };
            let record = payer.transfer(&credit.id).filter(|record| record.body() == credit.body());
            let agrees = match (&credit.decision, record.as_ref().map(|record| &record.status)) {
                (_, None) => !settled,
                (Decision::Credited, Some(status)) => !matches!(status, TransferStatus::Rejected(_)),
                (Decision::Refused(_), Some(status)) => *status != TransferStatus::Posted,
            };
            if !agrees {
                let status = record.map(|record| record.status);
                let message = format!("{}: the payee decided {:?}, the payer holds {status:?}", credit.id, credit.decision);
                return Err(Violation::new("payer_matches_payee", message));
            }
        }
    }
    Ok(())
}

/// Every record stored under a transfer id, on any shard, has the body the id is reserved for
/// on its home shard; so one id never posts two bodies, and a payee's decision always concerns
/// the payer record it finalized.
fn one_body_per_id(cluster: &SimCluster, ledgers: &BTreeMap<ShardId, &Ledger>) -> Result<(), Violation> {
    let placement = cluster.placement();
    let reserved = |id: &TransferId| -> Option<TransferBody> { ledgers.get(&placement.home_shard_of(id)).and_then(|l| l.reservation(id)) };
    let mut posted: BTreeMap<TransferId, TransferBody> = BTreeMap::new();
    for ledger in ledgers.values() {
        for record in ledger.transfers() {
            let body = record.body();
            // A captured hold's record says what was captured; its id was reserved for what it held.
            let reserved_body = match ledger.hold(&record.id) {
                Some(hold) => TransferBody { amount: hold.held, ..body.clone() },
                None => body.clone(),
            };
            if reserved(&record.id) != Some(reserved_body) {
                let message = format!("{} is stored as {body:?} but reserved as {:?}", record.id, reserved(&record.id));
                return Err(Violation::new("one_body_per_id", message));
            }
            if record.status == TransferStatus::Posted {
                if let Some(other) = posted.insert(record.id.clone(), body.clone()) {
                    let message = format!("{} is posted as {other:?} and as {body:?}", record.id);
                    return Err(Violation::new("one_body_per_id", message));
                }
            }
        }
        for credit in ledger.credits() {
            let payer_record = ledgers.get(&credit.payer_shard).and_then(|l| l.transfer(&credit.id));
            if payer_record.as_ref().is_some_and(|record| record.body() != credit.body()) {
                let message = format!("{}: the payee decided on {:?}, the payer holds {:?}", credit.id, credit.body(), payer_record);
                return Err(Violation::new("one_body_per_id", message));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first value recorded under a key is what every later lookup returns.
    #[test]
    fn first_recorded_keeps_the_first_value() {
        let mut first_values: BTreeMap<TransferId, u64> = BTreeMap::new();
        let id = TransferId::new("t1").unwrap();
        assert_eq!(*first_recorded(&mut first_values, &id, || 1), 1);
        assert_eq!(*first_recorded(&mut first_values, &id, || 2), 1);
        assert_eq!(*first_recorded(&mut first_values, &TransferId::new("t2").unwrap(), || 3), 3);
        assert_eq!(first_values.len(), 2);
    }
}
