//! Holds (two-phase transfers): a transfer made with mode hold reserves its amount on the payer
//! (a pending debit, so `available` drops and `balance` does not) until it is captured — all
//! or part of it, the rest released — voided, or expired.
//!
//! Everything happens on the payer's shard, in its log order: the hold (`HoldCmd`, after the
//! id's reservation like any transfer), its capture (`CaptureCmd`: a same-shard capture posts at
//! once; a cross-shard one turns the record `Pending` for the captured amount and the ordinary
//! credit/finalize protocol takes over), its void (`VoidCmd`), and its expiry. Expiry is driven
//! through the log: the leader proposes `ExpireHolds` once its clock passes the earliest expiry,
//! and every replica releases the holds whose expiry is before that entry's timestamp, at most
//! `HOLDS_EXPIRED_PER_COMMAND` of them, oldest first. A capture or void that applies after a
//! hold's expiry finds it expired, whether or not the sweep ran yet, so an expired hold is never
//! captured.
//!
//! A **delayed transfer** (delayed arrival, 延时到账: the payer may revoke it until it arrives)
//! is a hold that settles instead of lapsing: `settle_on_expiry`. Its expiry is its arrival
//! time; the same sweep captures all of it then (a same-shard one posts, a cross-shard one turns
//! pending and the credit protocol moves it); a void before then revokes it; a stop order on
//! the payer when it falls due refuses it (`account_frozen`) and gives the money back, which is
//! what an emergency stop of a payment in its delay window is for. It cannot be captured early.
//!
//! The failure modes other ledgers met are each a rule here: a hold is released exactly once
//! (`captured + released = held` once it is closed, and only a `Held` record can be closed); a
//! rejected hold reserved nothing and can never be captured; a capture never exceeds the hold.

use super::{keys, Ledger, RecordKind, RejectCode, TransferCmd, TransferOutcome, TransferRecord, TransferStatus};
use crate::ids::TransferId;
use crate::money::Minor;
use crate::planted::{planted, PlantedBug};
use serde::{Deserialize, Serialize};

/// The longest a hold may last: 30 days.
pub const HOLD_TIMEOUT_MS_MAX: u64 = 30 * 24 * 3_600_000;
/// Holds released by one `ExpireHolds` command at most (the rest wait for the next one).
pub const HOLDS_EXPIRED_PER_COMMAND: usize = 64;

/// A hold as the log carries it: the transfer it may become, and how long it lasts from the
/// entry's timestamp.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldCmd {
    pub transfer: TransferCmd,
    pub timeout_ms: u64,
    /// A delayed transfer: settles (all of it) when the timeout passes instead of lapsing.
    pub settle_on_expiry: bool,
}

/// Captures a hold: `amount` (all of it when `None`) moves to the payee, the rest is released.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptureCmd {
    pub id: TransferId,
    pub amount: Option<Minor>,
}

/// Releases a hold without moving anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoidCmd {
    pub id: TransferId,
}

/// What a hold reserved and what became of it, beside its transfer record (kind `w`). The
/// record's `amount` is the amount held while it is held and the amount captured after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    pub held: Minor,
    pub expires_at_ms: u64,
    /// Moved (or, while the record is `Pending`, moving) to the payee.
    pub captured: Minor,
    /// Given back to the payer's available balance.
    pub released: Minor,
    /// When it was captured, voided or expired (shard clock); `None` while held, and for a hold
    /// rejected when it was made.
    pub closed_at_ms: Option<u64>,
    /// A delayed transfer: `expires_at_ms` is when it arrives (settles), not when it lapses.
    pub settle_on_expiry: bool,
}

impl Ledger {
    /// The hold of a transfer on this shard, if it was made as one.
    pub fn hold(&self, id: &TransferId) -> Option<HoldRecord> {
        self.read(&keys::transfer(self.shard, self.generation, keys::HOLD, id))
    }

    /// A transfer's view with its hold (for the operations and reads that show holds).
    pub fn transfer_view(&self, id: &TransferId) -> Option<super::TransferView> {
        let record = self.transfer(id)?;
        let mut view = super::TransferView::from(&record);
        view.hold = self.hold(id);
        Some(view)
    }

    /// The earliest expiry among the holds still held on this shard (what the leader waits for
    /// before proposing `ExpireHolds`).
    pub fn next_hold_expiry_ms(&self) -> Option<u64> {
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::HOLD_EXPIRY);
        let hold = self.scan_keys_merged(&start, &end, 1).into_iter().next().and_then(|first| {
            let bytes = first.get(start.len()..start.len() + 8)?;
            Some(u64::from_be_bytes(bytes.try_into().ok()?))
        });
        // The same sweep rejects transfers whose verification window ended.
        match (hold, self.next_challenge_expiry_ms()) {
            (Some(hold), Some(challenge)) => Some(hold.min(challenge)),
            (hold, challenge) => hold.or(challenge),
        }
    }

    pub(super) fn hold_command(&mut self, now_ms: u64, command: &HoldCmd) -> TransferOutcome {
        let transfer = &command.transfer;
        if self.owner(&transfer.from) != self.shard {
            return TransferOutcome::Refused(RejectCode::WrongShard);
        }
        if let Some(existing) = self.transfer(&transfer.id) {
            // A retry names the same payer, payee, currency and the amount held.
            let same = self.hold(&transfer.id).is_some_and(|hold| {
                hold.held == transfer.amount
                    && hold.settle_on_expiry == command.settle_on_expiry
                    && existing.from == transfer.from
                    && existing.to == transfer.to
                    && existing.currency == transfer.currency
            });
            return if same {
                TransferOutcome::Replayed(existing.status)
            } else {
                TransferOutcome::Refused(RejectCode::IdempotencyKeyReused)
            };
        }
        if command.timeout_ms == 0 || command.timeout_ms > HOLD_TIMEOUT_MS_MAX {
            // The edge and the peer boundary refuse it first; a forged command changes nothing.
            return TransferOutcome::Refused(RejectCode::InvalidAmount);
        }
        let (home_here, reserved) = match self.admit(transfer) {
            Ok(admitted) => admitted,
            Err(code) => return TransferOutcome::Refused(code),
        };
        let cross_shard = self.owner(&transfer.to) != self.shard;
        let mut checked = self.check_payer(now_ms, transfer, !cross_shard);
        if checked.is_ok() && self.verification_needed(transfer).is_some() {
            // A payment its payer must prove is made as a plain transfer (which waits for the
            // proof); a hold or delayed transfer would move the money without one.
            checked = Err(RejectCode::VerificationRequired);
        }
        if checked.is_ok() && !cross_shard {
            // The payee is checked again at capture; refusing a hold it could never take now
            // spares the payer a reservation that can only be voided.
            checked = self.check_payee(&transfer.to, transfer.currency, transfer.amount, self.kind_of(&transfer.from));
        }
        let status = match checked {
            Ok(()) => TransferStatus::Held,
            Err(code) => TransferStatus::Rejected(code),
        };
        let expires_at_ms = now_ms.saturating_add(command.timeout_ms);
        if status == TransferStatus::Held {
            self.count_spend(&transfer.from, transfer.amount, now_ms);
            let payer = self.activate(&transfer.from).expect("checked payer");
            payer.debits_pending = payer.debits_pending.checked_add(transfer.amount).expect("bounded amounts");
            self.push_history(&transfer.from, &transfer.id, RecordKind::Transfer);
            self.overlay.insert(keys::hold_expiry(self.shard, self.generation, expires_at_ms, &transfer.id), Some(Vec::new()));
        }
        let record = TransferRecord::new(transfer, status.clone(), cross_shard, now_ms);
        if home_here && reserved.is_none() {
            self.write(keys::transfer(self.shard, self.generation, keys::RESERVATION, &transfer.id), &transfer.body());
        }
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &transfer.id), &record);
        let hold = HoldRecord {
            held: transfer.amount,
            expires_at_ms,
            captured: 0,
            released: 0,
            closed_at_ms: None,
            settle_on_expiry: command.settle_on_expiry,
        };
        self.write(keys::transfer(self.shard, self.generation, keys::HOLD, &transfer.id), &hold);
        TransferOutcome::Recorded(status)
    }

    /// The hold a capture or void names, while it is held; otherwise the outcome to answer
    /// (`Replayed` with the record's status when it is closed, so a retry sees what happened).
    fn active_hold(&mut self, now_ms: u64, id: &TransferId) -> Result<(TransferRecord, HoldRecord), TransferOutcome> {
        let (Some(record), Some(hold)) = (self.transfer(id), self.hold(id)) else {
            return Err(TransferOutcome::Refused(RejectCode::NotAHold));
        };
        let voided_again = record.status == TransferStatus::Voided && planted(self.planted, PlantedBug::HoldVoidedTwice);
        if record.status != TransferStatus::Held && !voided_again {
            return Err(TransferOutcome::Replayed(record.status));
        }
        let expiry_ignored = planted(self.planted, PlantedBug::HoldCapturedAfterExpiry)
            || (hold.settle_on_expiry && planted(self.planted, PlantedBug::DelayedRevokedAfterArrival));
        if now_ms >= hold.expires_at_ms && !expiry_ignored {
            if hold.settle_on_expiry {
                // A delayed transfer arrived before the sweep: it settles now, whoever asked.
                let (status, _) = self.settle_delayed(now_ms, record, hold);
                return Err(TransferOutcome::Recorded(status));
            }
            self.release_hold(now_ms, record, hold, TransferStatus::Expired);
            return Err(TransferOutcome::Recorded(TransferStatus::Expired));
        }
        Ok((record, hold))
    }

    /// Takes a hold's amount off its payer's pending debits. False (and the ledger marked
    /// damaged, so the replica is quarantined before anything of this round leaves) when stored
    /// state makes that impossible: the payer's record does not decode, or the stored amounts do
    /// not fit.
    fn unhold(&mut self, record: &TransferRecord, hold: &HoldRecord) -> bool {
        let released = self.activate(&record.from).and_then(|payer| {
            payer.debits_pending = payer.debits_pending.checked_sub(hold.held)?;
            Some(())
        });
        if released.is_none() {
            self.damaged(format!("hold {}: its payer's pending debits cannot release {}", record.id, hold.held));
        }
        released.is_some()
    }

    /// Gives a held amount back (void or expiry): the pending debit goes, nothing moves.
    fn release_hold(&mut self, now_ms: u64, mut record: TransferRecord, mut hold: HoldRecord, status: TransferStatus) {
        if !self.unhold(&record, &hold) {
            return;
        }
        if !crate::planted::planted(self.planted, crate::planted::PlantedBug::SpendKeptOnRelease) {
            self.uncount_spend(&record.from, hold.held, record.created_at_ms);
        }
        self.overlay.insert(keys::hold_expiry(self.shard, self.generation, hold.expires_at_ms, &record.id), None);
        hold.released = hold.held;
        hold.closed_at_ms = Some(now_ms);
        record.status = status;
        record.finalized_at_ms = Some(now_ms);
        self.write(keys::transfer(self.shard, self.generation, keys::HOLD, &record.id), &hold);
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &record.id), &record);
    }

    pub(super) fn capture_command(&mut self, now_ms: u64, command: &CaptureCmd) -> TransferOutcome {
        if self.hold(&command.id).is_some_and(|hold| hold.settle_on_expiry) {
            // A delayed transfer settles when it arrives, not when someone asks.
            return TransferOutcome::Refused(RejectCode::NotAHold);
        }
        let (record, hold) = match self.active_hold(now_ms, &command.id) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        let amount = command.amount.unwrap_or(hold.held);
        if amount <= 0 {
            return TransferOutcome::Refused(RejectCode::InvalidAmount);
        }
        if amount > hold.held {
            return TransferOutcome::Refused(RejectCode::CaptureExceedsHold);
        }
        if self.frozen(&record.from).debits > 0 {
            // A stop order placed after the hold: the money stays held (not released) until the
            // stop is lifted or the hold ends.
            return TransferOutcome::Refused(RejectCode::AccountFrozen);
        }
        match self.capture_hold(now_ms, record, hold, amount) {
            Some(status) => TransferOutcome::Recorded(status),
            None => TransferOutcome::Refused(RejectCode::PayerNotFound),
        }
    }

    /// Captures `amount` of a held hold (checked by the caller) and releases the rest: posts it
    /// (same shard, unless the payee refuses, which releases all of it) or turns the record
    /// pending for it (cross shard). `None` when stored state is damaged (nothing changed).
    fn capture_hold(&mut self, now_ms: u64, mut record: TransferRecord, mut hold: HoldRecord, amount: Minor) -> Option<TransferStatus> {
        if !self.unhold(&record, &hold) {
            return None;
        }
        self.overlay.insert(keys::hold_expiry(self.shard, self.generation, hold.expires_at_ms, &record.id), None);
        hold.captured = amount;
        hold.released = hold.held - amount;
        hold.closed_at_ms = Some(now_ms);
        record.amount = amount;
        let status = if record.cross_shard {
            let payer = self.activate(&record.from).expect("activated above");
            payer.debits_pending = payer.debits_pending.checked_add(amount).expect("bounded amounts");
            self.pending.insert(record.id.clone());
            self.overlay.insert(keys::transfer(self.shard, self.generation, keys::PENDING, &record.id), Some(Vec::new()));
            TransferStatus::Pending
        } else {
            match self.check_payee(&record.to, record.currency, amount, self.kind_of(&record.from)) {
                Ok(()) => {
                    let payer = self.activate(&record.from).expect("activated above");
                    payer.balance = payer.balance.checked_sub(amount).expect("checked for overflow");
                    self.record_movement(&record.from, &record.id, &record.to, -amount);
                    self.post_credit(&record.to, &record.from, amount, &record.id, RecordKind::Transfer);
                    TransferStatus::Posted
                }
                Err(code) => {
                    // The payee cannot take it: the whole hold is released.
                    hold.captured = 0;
                    hold.released = hold.held;
                    record.amount = hold.held;
                    TransferStatus::Rejected(code)
                }
            }
        };
        record.status = status.clone();
        if status != TransferStatus::Pending {
            record.finalized_at_ms = Some(now_ms);
        }
        self.uncount_spend(&record.from, hold.released, record.created_at_ms);
        self.write(keys::transfer(self.shard, self.generation, keys::HOLD, &record.id), &hold);
        self.write(keys::transfer(self.shard, self.generation, keys::TRANSFER, &record.id), &record);
        Some(status)
    }

    /// A delayed transfer falls due: all of it is captured, unless a stop order now blocks its
    /// payer's debits, which refuses it and gives the money back. The status, and the transfer
    /// to drive when it turned pending (cross shard).
    fn settle_delayed(&mut self, now_ms: u64, record: TransferRecord, hold: HoldRecord) -> (TransferStatus, Option<TransferCmd>) {
        if self.frozen(&record.from).debits > 0 {
            let status = TransferStatus::Rejected(RejectCode::AccountFrozen);
            self.release_hold(now_ms, record, hold, status.clone());
            return (status, None);
        }
        let amount = hold.held;
        let transfer =
            TransferCmd { id: record.id.clone(), from: record.from.clone(), to: record.to.clone(), amount, currency: record.currency };
        match self.capture_hold(now_ms, record, hold, amount) {
            Some(TransferStatus::Pending) => (TransferStatus::Pending, Some(transfer)),
            Some(status) => (status, None),
            None => (TransferStatus::Held, None),
        }
    }

    pub(super) fn void_command(&mut self, now_ms: u64, command: &VoidCmd) -> TransferOutcome {
        let (record, hold) = match self.active_hold(now_ms, &command.id) {
            Ok(found) => found,
            Err(outcome) => return outcome,
        };
        self.release_hold(now_ms, record, hold, TransferStatus::Voided);
        TransferOutcome::Recorded(TransferStatus::Voided)
    }

    /// Releases the holds whose expiry is before `now_ms` (the entry's timestamp), oldest first,
    /// at most `HOLDS_EXPIRED_PER_COMMAND`, and settles the delayed transfers due. The released
    /// holds, and the delayed transfers that turned pending (for the leader to drive).
    pub(super) fn expire_holds(&mut self, now_ms: u64) -> (Vec<TransferId>, Vec<TransferCmd>) {
        let (start, _) = keys::kind_range(self.shard, self.generation, keys::HOLD_EXPIRY);
        let end = keys::key(self.shard, self.generation, keys::HOLD_EXPIRY, &now_ms.saturating_add(1).to_be_bytes());
        let mut expired = Vec::new();
        let mut settled = Vec::new();
        for key in self.scan_keys_merged(&start, &end, HOLDS_EXPIRED_PER_COMMAND) {
            let Some(id) =
                key.get(start.len() + 8..).and_then(|bytes| std::str::from_utf8(bytes).ok()).and_then(|text| TransferId::new(text).ok())
            else {
                self.damaged("a hold expiry key does not name a transfer".to_string());
                continue;
            };
            let (Some(record), Some(hold)) = (self.transfer(&id), self.hold(&id)) else {
                self.damaged(format!("hold {id} in the expiry index has no record"));
                continue;
            };
            if record.status != TransferStatus::Held {
                self.damaged(format!("hold {id} in the expiry index is {}", record.status.as_str()));
                continue;
            }
            if hold.settle_on_expiry {
                let (_, pending) = self.settle_delayed(now_ms, record, hold);
                settled.extend(pending);
                continue;
            }
            self.release_hold(now_ms, record, hold, TransferStatus::Expired);
            expired.push(id);
        }
        // Transfers whose verification window ended, in what this command has room for.
        let room = HOLDS_EXPIRED_PER_COMMAND.saturating_sub(expired.len() + settled.len());
        if room > 0 {
            self.expire_challenges(now_ms, room);
        }
        (expired, settled)
    }

    /// A cross-shard capture the payee shard refused: what was captured is released too.
    pub(super) fn capture_refused(&mut self, id: &TransferId) {
        let key = keys::transfer(self.shard, self.generation, keys::HOLD, id);
        if let Some(mut hold) = self.read::<HoldRecord>(&key) {
            hold.released += hold.captured;
            hold.captured = 0;
            self.write(key, &hold);
        }
    }

    /// Every hold agrees with its record: a held record's hold is in the expiry index and
    /// nothing of it is captured or released; a closed hold's `captured + released` is what it
    /// held (or, for a hold rejected when made, both are zero); a posted or pending one moved
    /// exactly what it captured. Returns the held amounts by payer (part of `debits_pending`).
    pub fn verify_holds(&self) -> Result<std::collections::BTreeMap<crate::ids::AccountId, Minor>, String> {
        let mut held_by_payer = std::collections::BTreeMap::new();
        let (start, end) = keys::kind_range(self.shard, self.generation, keys::HOLD);
        for (key, value) in self.store.scan(&start, &end, usize::MAX, false) {
            let hold: HoldRecord = super::decode_value(&value).map_err(|error| format!("a hold does not decode: {error}"))?;
            let id = std::str::from_utf8(&key[start.len()..])
                .ok()
                .and_then(|text| TransferId::new(text).ok())
                .ok_or("a hold key without an id")?;
            let record = self.transfer(&id).ok_or_else(|| format!("hold {id} has no transfer record"))?;
            let closed = hold.captured.checked_add(hold.released).ok_or_else(|| format!("hold {id} overflows"))?;
            let indexed = self.store.get(&keys::hold_expiry(self.shard, self.generation, hold.expires_at_ms, &id)).is_some();
            if hold.captured < 0 || hold.released < 0 || hold.held <= 0 {
                return Err(format!("hold {id} has negative parts: {hold:?}"));
            }
            match &record.status {
                TransferStatus::Held => {
                    if closed != 0 || !indexed || record.amount != hold.held {
                        return Err(format!("held {id}: {hold:?}, amount {}, indexed {indexed}", record.amount));
                    }
                    let sum = held_by_payer.entry(record.from.clone()).or_insert(0);
                    *sum += hold.held;
                }
                TransferStatus::Posted | TransferStatus::Pending => {
                    if closed != hold.held || hold.captured != record.amount || indexed {
                        return Err(format!("captured hold {id}: {hold:?}, amount {}, indexed {indexed}", record.amount));
                    }
                    // A hold is captured before its expiry; a delayed transfer settles at or after it.
                    let before_expiry = hold.closed_at_ms.map(|at| at < hold.expires_at_ms);
                    if before_expiry != Some(!hold.settle_on_expiry) {
                        return Err(format!(
                            "hold {id} (settles on expiry: {}) was captured at {:?}, expiry {}",
                            hold.settle_on_expiry, hold.closed_at_ms, hold.expires_at_ms
                        ));
                    }
                }
                TransferStatus::Voided | TransferStatus::Expired => {
                    if hold.released != hold.held || hold.captured != 0 || indexed {
                        return Err(format!("released hold {id}: {hold:?}, indexed {indexed}"));
                    }
                    // Voided before its expiry, expired at or after it; a delayed transfer never
                    // lapses.
                    let before_expiry = hold.closed_at_ms.map(|at| at < hold.expires_at_ms);
                    let lapsed_delayed = hold.settle_on_expiry && record.status == TransferStatus::Expired;
                    if before_expiry != Some(record.status == TransferStatus::Voided) || lapsed_delayed {
                        return Err(format!(
                            "hold {id} is {} but was closed at {:?} (expiry {})",
                            record.status.as_str(),
                            hold.closed_at_ms,
                            hold.expires_at_ms
                        ));
                    }
                }
                TransferStatus::RequiresVerification => return Err(format!("hold {id} awaits a verification, which holds never do")),
                TransferStatus::Rejected(_) => {
                    if (closed != 0 && (hold.released != hold.held || hold.captured != 0)) || indexed {
                        return Err(format!("rejected hold {id}: {hold:?}, indexed {indexed}"));
                    }
                }
            }
        }
        Ok(held_by_payer)
    }
}

/// A stored value of a hold kind decodes as its kind says (`Ledger::check_record`).
pub(super) fn check_hold_record(kind: u8, value: &[u8]) -> Option<Result<(), String>> {
    match kind {
        keys::HOLD => Some(super::decode_value::<HoldRecord>(value).map(|_| ()).map_err(|error| error.to_string())),
        keys::HOLD_EXPIRY if value.is_empty() => Some(Ok(())),
        keys::HOLD_EXPIRY => Some(Err("a hold expiry marker with a value".to_string())),
        _ => None,
    }
}
