//! Unit tests of holds on one shard and across two (`holds.rs`). Each failure mode other
//! ledgers shipped (voided twice, a rejected hold captured, an expired hold captured, a capture
//! over the hold) is a test here.

use super::tests::{create, ids_on, place, tid, transfer, two_shards, usd};
use super::*;

const DAY_MS: u64 = 86_400_000;

fn hold(ledger: &mut Ledger, now_ms: u64, id: &str, from: &AccountId, to: &AccountId, amount: Minor, timeout_ms: u64) -> TransferOutcome {
    make(ledger, now_ms, id, from, to, amount, timeout_ms, false)
}

/// A delayed transfer: a hold that settles when `delay_ms` passes.
fn delayed(ledger: &mut Ledger, now_ms: u64, id: &str, from: &AccountId, to: &AccountId, amount: Minor, delay_ms: u64) -> TransferOutcome {
    make(ledger, now_ms, id, from, to, amount, delay_ms, true)
}

#[allow(clippy::too_many_arguments)]
fn make(
    ledger: &mut Ledger,
    now_ms: u64,
    id: &str,
    from: &AccountId,
    to: &AccountId,
    amount: Minor,
    timeout_ms: u64,
    settle_on_expiry: bool,
) -> TransferOutcome {
    let transfer = TransferCmd { id: tid(id), from: from.clone(), to: to.clone(), amount, currency: usd() };
    match ledger.apply(now_ms, &Command::Hold(HoldCmd { transfer, timeout_ms, settle_on_expiry })) {
        Applied::Transfer(outcome) => outcome,
        other => panic!("not a transfer outcome: {other:?}"),
    }
}

fn capture(ledger: &mut Ledger, now_ms: u64, id: &str, amount: Option<Minor>) -> TransferOutcome {
    match ledger.apply(now_ms, &Command::Capture(CaptureCmd { id: tid(id), amount })) {
        Applied::Transfer(outcome) => outcome,
        other => panic!("not a transfer outcome: {other:?}"),
    }
}

fn void(ledger: &mut Ledger, now_ms: u64, id: &str) -> TransferOutcome {
    match ledger.apply(now_ms, &Command::Void(VoidCmd { id: tid(id) })) {
        Applied::Transfer(outcome) => outcome,
        other => panic!("not a transfer outcome: {other:?}"),
    }
}

/// One shard with `bank` (settlement), `alice` funded with `funding`, and `bob`.
fn one_shard(funding: Minor) -> (Ledger, AccountId, AccountId) {
    let accounts = ids_on(0, 1, 3);
    let mut ledger = Ledger::new(0, 1);
    create(&mut ledger, &accounts[0], AccountKind::Settlement);
    create(&mut ledger, &accounts[1], AccountKind::Customer);
    create(&mut ledger, &accounts[2], AccountKind::Customer);
    transfer(&mut ledger, "fund", &accounts[0], &accounts[1], funding);
    (ledger, accounts[1].clone(), accounts[2].clone())
}

/// A hold lowers available and not balance; a partial capture moves the captured part and
/// releases the rest; the capture and the hold replay; nothing else can close it again.
#[test]
fn a_partial_capture_moves_part_and_releases_the_rest() {
    let (mut ledger, alice, bob) = one_shard(100);
    assert_eq!(hold(&mut ledger, 10, "h1", &alice, &bob, 80, DAY_MS), TransferOutcome::Recorded(TransferStatus::Held));
    let payer = ledger.account(&alice).unwrap();
    assert_eq!((payer.balance, payer.available()), (100, 20));
    // The held funds cannot be spent again.
    let spent = transfer(&mut ledger, "t1", &alice, &bob, 30);
    assert_eq!(spent, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::InsufficientFunds))));
    assert_eq!(capture(&mut ledger, 20, "h1", Some(81)), TransferOutcome::Refused(RejectCode::CaptureExceedsHold));
    assert_eq!(capture(&mut ledger, 20, "h1", Some(60)), TransferOutcome::Recorded(TransferStatus::Posted));
    let (payer, payee) = (ledger.account(&alice).unwrap(), ledger.account(&bob).unwrap());
    assert_eq!((payer.balance, payer.available(), payee.balance), (40, 40, 60));
    assert_eq!(
        ledger.hold(&tid("h1")).unwrap(),
        HoldRecord { held: 80, expires_at_ms: 10 + DAY_MS, captured: 60, released: 20, closed_at_ms: Some(20), settle_on_expiry: false }
    );
    assert_eq!(ledger.transfer(&tid("h1")).unwrap().amount, 60);
    // Retries and late operations change nothing.
    assert_eq!(capture(&mut ledger, 30, "h1", Some(60)), TransferOutcome::Replayed(TransferStatus::Posted));
    assert_eq!(void(&mut ledger, 30, "h1"), TransferOutcome::Replayed(TransferStatus::Posted));
    assert_eq!(hold(&mut ledger, 30, "h1", &alice, &bob, 80, DAY_MS), TransferOutcome::Replayed(TransferStatus::Posted));
    assert_eq!(hold(&mut ledger, 30, "h1", &alice, &bob, 60, DAY_MS), TransferOutcome::Refused(RejectCode::IdempotencyKeyReused));
    let reused = transfer(&mut ledger, "h1", &alice, &bob, 60);
    assert_eq!(reused, Applied::Transfer(TransferOutcome::Refused(RejectCode::IdempotencyKeyReused)));
    assert_eq!(ledger.account(&alice).unwrap().balance, 40);
    ledger.check_invariants();
}

/// A void releases the whole hold exactly once; a second void and a capture after it replay
/// the void.
#[test]
fn a_hold_is_voided_once() {
    let (mut ledger, alice, bob) = one_shard(100);
    hold(&mut ledger, 10, "h1", &alice, &bob, 70, DAY_MS);
    assert_eq!(void(&mut ledger, 20, "h1"), TransferOutcome::Recorded(TransferStatus::Voided));
    assert_eq!(void(&mut ledger, 21, "h1"), TransferOutcome::Replayed(TransferStatus::Voided));
    assert_eq!(capture(&mut ledger, 22, "h1", None), TransferOutcome::Replayed(TransferStatus::Voided));
    let payer = ledger.account(&alice).unwrap();
    assert_eq!((payer.balance, payer.debits_pending), (100, 0));
    assert_eq!(ledger.account(&bob).unwrap().balance, 0);
    ledger.check_invariants();
}

/// A hold expires through the log: `ExpireHolds` releases it once its entry's time passes the
/// expiry (not before); a capture that applies after the expiry finds it expired even when no
/// sweep ran.
#[test]
fn holds_expire_by_the_log_time() {
    let (mut ledger, alice, bob) = one_shard(100);
    hold(&mut ledger, 10, "h1", &alice, &bob, 30, 1_000);
    hold(&mut ledger, 10, "h2", &alice, &bob, 30, 5_000);
    assert_eq!(ledger.next_hold_expiry_ms(), Some(1_010));
    assert_eq!(ledger.apply(1_009, &Command::ExpireHolds), Applied::HoldsExpired(0));
    assert_eq!(ledger.apply(1_010, &Command::ExpireHolds), Applied::HoldsExpired(1));
    assert_eq!(ledger.transfer(&tid("h1")).unwrap().status, TransferStatus::Expired);
    assert_eq!(ledger.next_hold_expiry_ms(), Some(5_010));
    assert_eq!(capture(&mut ledger, 2_000, "h1", None), TransferOutcome::Replayed(TransferStatus::Expired));
    // h2 is due but no sweep ran: the capture expires it instead of posting.
    assert_eq!(capture(&mut ledger, 5_010, "h2", None), TransferOutcome::Recorded(TransferStatus::Expired));
    assert_eq!(ledger.next_hold_expiry_ms(), None);
    let payer = ledger.account(&alice).unwrap();
    assert_eq!((payer.balance, payer.debits_pending), (100, 0));
    ledger.check_invariants();
}

/// A hold rejected when made reserved nothing and can never be captured; a capture of a plain
/// transfer or an unknown id is refused.
#[test]
fn a_rejected_hold_is_never_captured() {
    let (mut ledger, alice, bob) = one_shard(100);
    let rejected = TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::InsufficientFunds));
    assert_eq!(hold(&mut ledger, 10, "h1", &alice, &bob, 101, DAY_MS), rejected);
    assert_eq!(ledger.account(&alice).unwrap().debits_pending, 0);
    let replay = TransferOutcome::Replayed(TransferStatus::Rejected(RejectCode::InsufficientFunds));
    assert_eq!(capture(&mut ledger, 20, "h1", Some(50)), replay);
    transfer(&mut ledger, "t1", &alice, &bob, 10);
    assert_eq!(capture(&mut ledger, 20, "t1", None), TransferOutcome::Refused(RejectCode::NotAHold));
    assert_eq!(void(&mut ledger, 20, "nope"), TransferOutcome::Refused(RejectCode::NotAHold));
    assert_eq!(ledger.account(&bob).unwrap().balance, 10);
    ledger.check_invariants();
}

/// A stop order placed after a hold refuses its capture and keeps the money held; once lifted
/// the capture goes through.
#[test]
fn a_stop_keeps_a_hold_from_being_captured() {
    let (mut ledger, alice, bob) = one_shard(100);
    hold(&mut ledger, 10, "h1", &alice, &bob, 50, DAY_MS);
    ledger.apply(11, &Command::Stop(place("s1", &alice, false)));
    assert_eq!(capture(&mut ledger, 12, "h1", None), TransferOutcome::Refused(RejectCode::AccountFrozen));
    assert_eq!(ledger.transfer(&tid("h1")).unwrap().status, TransferStatus::Held);
    assert_eq!(ledger.account(&alice).unwrap().available(), 50);
    ledger.check_invariants();
}

/// Across shards: a capture turns the hold pending for the captured amount and the credit and
/// finalize post it; a capture the payee's shard refuses releases the whole hold.
#[test]
fn a_cross_shard_capture_posts_through_the_protocol() {
    let (mut p, mut q, [_, alice, bob]) = two_shards(200);
    assert_eq!(hold(&mut p, 10, "h1", &alice, &bob, 100, DAY_MS), TransferOutcome::Recorded(TransferStatus::Held));
    assert_eq!(capture(&mut p, 20, "h1", Some(70)), TransferOutcome::Recorded(TransferStatus::Pending));
    assert_eq!(p.account(&alice).unwrap().debits_pending, 70);
    let record = p.transfer(&tid("h1")).unwrap();
    let decided = q.apply(30, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    assert_eq!(decided, Applied::Credit(CreditOutcome { decision: Some(Decision::Credited), decided_now: true }));
    p.apply(40, &Command::Finalize(FinalizeCmd { id: tid("h1"), body: record.body(), decision: Decision::Credited }));
    assert_eq!(p.transfer(&tid("h1")).unwrap().status, TransferStatus::Posted);
    assert_eq!((p.account(&alice).unwrap().balance, q.account(&bob).unwrap().balance), (130, 70));
    assert_eq!(p.account(&alice).unwrap().debits_pending, 0);

    // The payee's shard refuses the second capture (a stop that blocks credits).
    hold(&mut p, 50, "h2", &alice, &bob, 50, DAY_MS);
    q.apply(51, &Command::Stop(place("s1", &bob, true)));
    assert_eq!(capture(&mut p, 60, "h2", None), TransferOutcome::Recorded(TransferStatus::Pending));
    let record = p.transfer(&tid("h2")).unwrap();
    let refused = Decision::Refused(RejectCode::AccountFrozen);
    q.apply(70, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    p.apply(80, &Command::Finalize(FinalizeCmd { id: tid("h2"), body: record.body(), decision: refused }));
    assert_eq!(
        p.hold(&tid("h2")).unwrap(),
        HoldRecord { held: 50, expires_at_ms: 50 + DAY_MS, captured: 0, released: 50, closed_at_ms: Some(60), settle_on_expiry: false }
    );
    let payer = p.account(&alice).unwrap();
    assert_eq!((payer.balance, payer.debits_pending), (130, 0));
    assert_eq!(p.net_inflow()[&usd()] + q.net_inflow()[&usd()], 0);
    p.check_invariants();
    q.check_invariants();
}

/// A delayed transfer arrives by itself when its delay passes (the sweep captures all of it),
/// may be revoked before, cannot be captured early, and a retry with the other mode is reused.
#[test]
fn a_delayed_transfer_arrives_unless_revoked() {
    let (mut ledger, alice, bob) = one_shard(100);
    assert_eq!(delayed(&mut ledger, 10, "d1", &alice, &bob, 30, 1_000), TransferOutcome::Recorded(TransferStatus::Held));
    assert_eq!(delayed(&mut ledger, 11, "d1", &alice, &bob, 30, 1_000), TransferOutcome::Replayed(TransferStatus::Held));
    assert_eq!(hold(&mut ledger, 11, "d1", &alice, &bob, 30, 1_000), TransferOutcome::Refused(RejectCode::IdempotencyKeyReused));
    assert_eq!(capture(&mut ledger, 12, "d1", None), TransferOutcome::Refused(RejectCode::NotAHold), "no early capture");
    assert_eq!(ledger.account(&alice).unwrap().available(), 70);
    delayed(&mut ledger, 10, "d2", &alice, &bob, 20, 1_000);
    assert_eq!(void(&mut ledger, 500, "d2"), TransferOutcome::Recorded(TransferStatus::Voided), "revoked in its window");
    // Not due yet: nothing happens; due: it posts, in full.
    assert_eq!(ledger.apply(1_009, &Command::ExpireHolds), Applied::HoldsExpired(0));
    assert_eq!(ledger.transfer(&tid("d1")).unwrap().status, TransferStatus::Held);
    assert_eq!(ledger.apply(1_010, &Command::ExpireHolds), Applied::HoldsExpired(0), "settled, not expired");
    assert_eq!(ledger.transfer(&tid("d1")).unwrap().status, TransferStatus::Posted);
    let (payer, payee) = (ledger.account(&alice).unwrap(), ledger.account(&bob).unwrap());
    assert_eq!((payer.balance, payer.available(), payee.balance), (70, 70, 30));
    assert_eq!(void(&mut ledger, 1_020, "d1"), TransferOutcome::Replayed(TransferStatus::Posted), "too late to revoke");
    ledger.check_invariants();
}

/// A delayed transfer whose payer is stopped when it falls due is refused and the money goes
/// back (an emergency stop of a payment in its delay window).
#[test]
fn a_stop_in_the_delay_window_refuses_the_delayed_transfer() {
    let (mut ledger, alice, bob) = one_shard(100);
    delayed(&mut ledger, 10, "d1", &alice, &bob, 60, 1_000);
    ledger.apply(20, &Command::Stop(place("s1", &alice, false)));
    ledger.apply(2_000, &Command::ExpireHolds);
    assert_eq!(ledger.transfer(&tid("d1")).unwrap().status, TransferStatus::Rejected(RejectCode::AccountFrozen));
    assert_eq!(ledger.account(&alice).unwrap().available(), 100);
    assert_eq!(ledger.account(&bob).unwrap().balance, 0);
    ledger.check_invariants();
}

/// Across shards, a delayed transfer falling due turns pending for all of it and the ordinary
/// credit and finalize post it.
#[test]
fn a_cross_shard_delayed_transfer_settles_through_the_protocol() {
    let (mut p, mut q, [_, alice, bob]) = two_shards(200);
    delayed(&mut p, 10, "d1", &alice, &bob, 80, 1_000);
    let settled = p.apply_command(1_500, Command::ExpireHolds, false);
    let AppliedCommand::HoldsExpired { expired, settled } = settled else { panic!("not an expiry: {settled:?}") };
    assert_eq!((expired.len(), settled.len()), (0, 1));
    p.commit_round(&AppliedMark { index: 1_500, ..AppliedMark::default() }).unwrap();
    assert_eq!(p.transfer(&tid("d1")).unwrap().status, TransferStatus::Pending);
    let record = p.transfer(&tid("d1")).unwrap();
    q.apply(1_600, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    p.apply(1_700, &Command::Finalize(FinalizeCmd { id: tid("d1"), body: record.body(), decision: Decision::Credited }));
    assert_eq!((p.account(&alice).unwrap().balance, q.account(&bob).unwrap().balance), (120, 80));
    let hold = p.hold(&tid("d1")).unwrap();
    assert_eq!((hold.captured, hold.released, hold.closed_at_ms), (80, 0, Some(1_500)));
    p.check_invariants();
    q.check_invariants();
}
