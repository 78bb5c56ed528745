//! Refunds: a transfer back from an original transfer's payee to its payer, linked to the
//! original, partial and multiple, the refunds of one original never more than its amount, each
//! idempotent by its own transfer id.
//!
//! A refund's payer is the original's payee, so its payer shard is the shard that holds the
//! original's credit (or, same-shard, the original itself): the cap is checked there, in the
//! same apply that prepares or posts the refund transfer, with the original's refund total
//! (`RefundTotal`, kind `u`) beside it. A refund that is rejected (at once, or later when the
//! original payer's shard refuses the credit) gives its amount back to the total.

use super::{keys, Decision, Ledger, RejectCode, TransferCmd, TransferOutcome, TransferStatus};
use crate::ids::TransferId;
use crate::money::Minor;
use serde::{Deserialize, Serialize};

pub const REFUND_REASON_BYTES_MAX: usize = 256;
/// Refunds of one original at most (each is a record in its total).
pub const REFUNDS_PER_ORIGINAL_MAX: usize = 100;

/// A refund as the log carries it: the refund transfer (payer = the original's payee, payee =
/// the original's payer) and what it refunds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundCmd {
    pub transfer: TransferCmd,
    pub original: TransferId,
    pub reason: String,
}

/// One refund of an original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundItem {
    pub id: TransferId,
    pub amount: Minor,
    pub reason: String,
    pub created_at_ms: u64,
    /// Rejected refunds stay listed; their amount no longer counts.
    pub released: bool,
}

/// What was refunded of one original (stored on the original payee's shard).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RefundTotal {
    pub original: Option<TransferId>,
    pub original_amount: Minor,
    /// Posted and pending refunds (rejected ones released).
    pub refunded: Minor,
    pub refunds: Vec<RefundItem>,
}

impl Ledger {
    /// The original transfer a refund names, as this shard knows it (its payee lives here):
    /// its amount, if it posted to the refund's payer from the refund's payee, in its currency.
    fn refundable(&self, command: &RefundCmd) -> Result<Minor, RejectCode> {
        let refund = &command.transfer;
        let matches = |from: &crate::ids::AccountId, to: &crate::ids::AccountId, currency| {
            *to == refund.from && *from == refund.to && currency == refund.currency
        };
        if let Some(credit) = self.credit(&command.original) {
            if credit.decision == Decision::Credited && matches(&credit.from, &credit.to, credit.currency) {
                return Ok(credit.amount);
            }
            return Err(RejectCode::NotRefundable);
        }
        match self.transfer(&command.original) {
            Some(original)
                if original.status == TransferStatus::Posted
                    && !original.cross_shard
                    && matches(&original.from, &original.to, original.currency) =>
            {
                Ok(original.amount)
            }
            _ => Err(RejectCode::NotRefundable),
        }
    }

    pub(super) fn refund_command(&mut self, now_ms: u64, command: &RefundCmd) -> TransferOutcome {
        let refund = &command.transfer;
        if command.reason.len() > REFUND_REASON_BYTES_MAX {
            return TransferOutcome::Refused(RejectCode::InvalidAmount);
        }
        if self.transfer(&refund.id).is_some() {
            // A retry (replayed by the transfer rules) or a reused id (refused by them).
            return self.transfer_command(now_ms, refund, false);
        }
        if refund.id == command.original {
            return TransferOutcome::Refused(RejectCode::IdempotencyKeyReused);
        }
        let original_amount = match self.refundable(command) {
            Ok(amount) => amount,
            Err(code) => return TransferOutcome::Refused(code),
        };
        let total_key = keys::transfer(self.shard, self.generation, keys::REFUND_TOTAL, &command.original);
        let mut total: RefundTotal = self.read(&total_key).unwrap_or_default();
        let over = total.refunded.checked_add(refund.amount).is_none_or(|sum| sum > original_amount);
        if (over && !crate::planted::planted(self.planted, crate::planted::PlantedBug::RefundCapUnchecked))
            || total.refunds.len() >= REFUNDS_PER_ORIGINAL_MAX
        {
            return TransferOutcome::Refused(RejectCode::RefundExceedsOriginal);
        }
        let outcome = self.transfer_command(now_ms, refund, false);
        if matches!(outcome, TransferOutcome::Recorded(TransferStatus::Posted | TransferStatus::Pending)) {
            total.original = Some(command.original.clone());
            total.original_amount = original_amount;
            total.refunded = total.refunded.saturating_add(refund.amount);
            total.refunds.push(RefundItem {
                id: refund.id.clone(),
                amount: refund.amount,
                reason: command.reason.clone(),
                created_at_ms: now_ms,
                released: false,
            });
            self.write(total_key, &total);
            self.write(keys::transfer(self.shard, self.generation, keys::REFUND_OF, &refund.id), &command.original);
        }
        outcome
    }

    /// A pending refund was rejected by the original payer's shard: its amount counts no more.
    pub(super) fn release_refund(&mut self, id: &TransferId) {
        let Some(original) = self.read::<TransferId>(&keys::transfer(self.shard, self.generation, keys::REFUND_OF, id)) else {
            return;
        };
        let total_key = keys::transfer(self.shard, self.generation, keys::REFUND_TOTAL, &original);
        let Some(mut total) = self.read::<RefundTotal>(&total_key) else {
            return;
        };
        if let Some(item) = total.refunds.iter_mut().find(|item| item.id == *id && !item.released) {
            item.released = true;
            total.refunded = total.refunded.saturating_sub(item.amount);
            self.write(total_key, &total);
        }
    }

    /// What was refunded of an original whose payee lives on this shard.
    /// The original a refund transfer refunds, if `id` is a refund made on this shard.
    pub fn refund_of(&self, id: &TransferId) -> Option<TransferId> {
        self.read(&keys::transfer(self.shard, self.generation, keys::REFUND_OF, id))
    }

    pub fn refunds(&self, original: &TransferId) -> Option<RefundTotal> {
        self.read(&keys::transfer(self.shard, self.generation, keys::REFUND_TOTAL, original))
    }

    /// Every refund total agrees with its refunds' records: the amounts of the refunds not
    /// released, whose transfers are posted or pending here, sum to `refunded`, which is at most
    /// the original's amount (`verify`, the simulator's checkers).
    pub fn verify_refunds(&self) -> Result<(), String> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::REFUND_TOTAL);
        for (_, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let total: RefundTotal = super::decode_value(&value).map_err(|error| format!("a refund total does not decode: {error}"))?;
            let original = total.original.clone().ok_or("a refund total without its original")?;
            if total.refunded > total.original_amount {
                return Err(format!("refunds of {original} total {} > the original {}", total.refunded, total.original_amount));
            }
            let mut counted: Minor = 0;
            for item in &total.refunds {
                let status = self.transfer(&item.id).map(|record| record.status);
                let live = matches!(status, Some(TransferStatus::Posted | TransferStatus::Pending));
                if live == item.released {
                    return Err(format!("refund {} of {original} is {status:?} but released = {}", item.id, item.released));
                }
                if live {
                    counted += item.amount;
                }
            }
            if counted != total.refunded {
                return Err(format!("refunds of {original}: the live ones sum to {counted}, the total says {}", total.refunded));
            }
        }
        Ok(())
    }
}

/// A stored value of a refund kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_refund_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    let decoded = match kind {
        keys::REFUND_TOTAL => super::decode_value::<RefundTotal>(value).map(|_| ()),
        keys::REFUND_OF => super::decode_value::<TransferId>(value).map(|_| ()),
        _ => return None,
    };
    Some(decoded.map_err(|error| error.to_string()))
}
