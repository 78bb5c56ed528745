//! Unit tests of one shard's ledger. Cross-shard interleavings live in `cluster/tests/protocol.rs`.

use super::*;
use crate::ids::StopId;
use crate::money::Currency;
use crate::placement::home_shard_of;

pub(super) fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

pub(super) fn id(text: &str) -> AccountId {
    AccountId::new(text).unwrap()
}

pub(super) fn tid(text: &str) -> TransferId {
    TransferId::new(text).unwrap()
}

/// Finds account ids that live on `shard` among `shards`, so tests can build same-shard and
/// cross-shard pairs without knowing the hash.
pub(super) fn ids_on(shard: ShardId, shards: u32, count: usize) -> Vec<AccountId> {
    (0..).map(|n| id(&format!("acct-{n}"))).filter(|a| shard_of(a, shards) == shard).take(count).collect()
}

pub(super) fn create(ledger: &mut Ledger, account: &AccountId, kind: AccountKind) {
    let command = Command::CreateAccount(CreateAccount { id: account.clone(), currency: usd(), kind });
    assert_eq!(ledger.apply(1, &command), Applied::Account(AccountOutcome::Created));
}

pub(super) fn transfer(ledger: &mut Ledger, id: &str, from: &AccountId, to: &AccountId, amount: Minor) -> Applied {
    let command = Command::Transfer(TransferCmd { id: tid(id), from: from.clone(), to: to.clone(), amount, currency: usd() });
    ledger.apply(2, &command)
}

/// Shard 0 of two holds `bank` (settlement) and `alice`, funded with `funding`; shard 1 holds
/// `bob`: the cross-shard tests' starting point.
pub(super) fn two_shards(funding: Minor) -> (Ledger, Ledger, [AccountId; 3]) {
    let shards = 2;
    let payers = ids_on(0, shards, 2);
    let payees = ids_on(1, shards, 1);
    let (bank, alice, bob) = (payers[0].clone(), payers[1].clone(), payees[0].clone());
    let mut p = Ledger::new(0, shards);
    let mut q = Ledger::new(1, shards);
    create(&mut p, &bank, AccountKind::Settlement);
    create(&mut p, &alice, AccountKind::Customer);
    create(&mut q, &bob, AccountKind::Customer);
    transfer(&mut p, "fund", &bank, &alice, funding);
    (p, q, [bank, alice, bob])
}

/// Creating an account is idempotent for the same body and a conflict for a different one.
#[test]
fn create_account_is_idempotent_and_detects_conflicts() {
    let mut ledger = Ledger::new(0, 1);
    let alice = id("alice");
    create(&mut ledger, &alice, AccountKind::Customer);
    let same = Command::CreateAccount(CreateAccount { id: alice.clone(), currency: usd(), kind: AccountKind::Customer });
    assert_eq!(ledger.apply(3, &same), Applied::Account(AccountOutcome::AlreadyExists));
    let different = Command::CreateAccount(CreateAccount { id: alice.clone(), currency: usd(), kind: AccountKind::Merchant });
    assert_eq!(ledger.apply(3, &different), Applied::Account(AccountOutcome::Conflict));
    assert_eq!(ledger.account(&alice).unwrap().kind, AccountKind::Customer);
}

/// A same-shard transfer posts both sides in one apply; settlement accounts may go negative.
#[test]
fn same_shard_transfer_posts_atomically() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice, bob) = (id("bank"), id("alice"), id("bob"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    create(&mut ledger, &bob, AccountKind::Customer);
    let funded = transfer(&mut ledger, "fund", &bank, &alice, 1_000);
    assert_eq!(funded, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted)));
    let paid = transfer(&mut ledger, "t1", &alice, &bob, 400);
    assert_eq!(paid, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted)));
    assert_eq!(ledger.account(&bank).unwrap().balance, -1_000);
    assert_eq!(ledger.account(&alice).unwrap().balance, 600);
    assert_eq!(ledger.account(&bob).unwrap().balance, 400);
    ledger.check_invariants();
}

/// Insufficient funds is stored under the id: a retry returns it even after the payer is funded.
#[test]
fn rejection_is_stored_and_replayed() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice, bob) = (id("bank"), id("alice"), id("bob"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    create(&mut ledger, &bob, AccountKind::Customer);
    let first = transfer(&mut ledger, "t1", &alice, &bob, 1);
    let rejected = TransferStatus::Rejected(RejectCode::InsufficientFunds);
    assert_eq!(first, Applied::Transfer(TransferOutcome::Recorded(rejected.clone())));
    transfer(&mut ledger, "fund", &bank, &alice, 10);
    assert_eq!(transfer(&mut ledger, "t1", &alice, &bob, 1), Applied::Transfer(TransferOutcome::Replayed(rejected)));
    assert_eq!(ledger.account(&bob).unwrap().balance, 0);
}

/// The same id with a different body is refused and leaves the original untouched.
#[test]
fn reused_id_with_different_body_is_refused() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice) = (id("bank"), id("alice"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    transfer(&mut ledger, "t1", &bank, &alice, 5);
    let reused = transfer(&mut ledger, "t1", &bank, &alice, 6);
    assert_eq!(reused, Applied::Transfer(TransferOutcome::Refused(RejectCode::IdempotencyKeyReused)));
    assert_eq!(ledger.account(&alice).unwrap().balance, 5);
    assert_eq!(ledger.transfer(&tid("t1")).unwrap().amount, 5);
}

/// Missing accounts and wrong currencies are stored rejections that move nothing.
#[test]
fn missing_accounts_and_currency_mismatch_are_rejected() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice, ghost) = (id("bank"), id("alice"), id("ghost"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    let to_ghost = transfer(&mut ledger, "t1", &bank, &ghost, 5);
    assert_eq!(to_ghost, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::PayeeNotFound))));
    let from_ghost = transfer(&mut ledger, "t2", &ghost, &bank, 5);
    assert_eq!(from_ghost, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::PayerNotFound))));
    let eur = Currency::from_code("EUR").unwrap();
    let command = Command::Transfer(TransferCmd { id: tid("t3"), from: bank.clone(), to: alice.clone(), amount: 5, currency: eur });
    assert_eq!(
        ledger.apply(2, &command),
        Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::CurrencyMismatch)))
    );
    assert_eq!(ledger.account(&bank).unwrap().balance, 0);
    ledger.check_invariants();
}

/// Cross-shard: prepare holds the funds, the payee's first decision wins, finalize copies it once.
#[test]
fn cross_shard_prepare_credit_finalize() {
    let (mut p, mut q, [_, alice, bob]) = two_shards(100);
    let (alice, bob) = (&alice, &bob);

    let prepared = transfer(&mut p, "x1", alice, bob, 70);
    assert_eq!(prepared, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Pending)));
    assert_eq!(p.account(alice).unwrap().available(), 30);
    // The held funds cannot be spent twice.
    let second = transfer(&mut p, "x2", alice, bob, 70);
    assert_eq!(second, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::InsufficientFunds))));

    let record = p.transfer(&tid("x1")).unwrap().clone();
    let credit = Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false));
    let decided = q.apply(3, &credit);
    assert_eq!(decided, Applied::Credit(CreditOutcome { decision: Some(Decision::Credited), decided_now: true }));
    // A duplicate, even a late "prevent", returns the first decision and credits nothing more.
    let prevent = Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, true));
    assert_eq!(q.apply(4, &prevent), Applied::Credit(CreditOutcome { decision: Some(Decision::Credited), decided_now: false }));
    assert_eq!(q.account(bob).unwrap().balance, 70);

    let finalize = Command::Finalize(FinalizeCmd { id: tid("x1"), body: record.body(), decision: Decision::Credited });
    assert_eq!(p.apply(5, &finalize), Applied::Finalize(FinalizeOutcome { status: Some(TransferStatus::Posted), finalized_now: true }));
    assert_eq!(p.apply(6, &finalize), Applied::Finalize(FinalizeOutcome { status: Some(TransferStatus::Posted), finalized_now: false }));
    assert_eq!(p.account(alice).unwrap().balance, 30);
    assert_eq!(p.account(alice).unwrap().debits_pending, 0);
    assert_eq!(p.pending_count(), 0);
    let total = p.net_inflow()[&usd()] + q.net_inflow()[&usd()];
    assert_eq!(total, 0);
    p.check_invariants();
    q.check_invariants();
}

/// A refused credit releases the held funds and stores the payee's reason.
#[test]
fn refused_credit_releases_the_hold() {
    let shards = 2;
    let payers = ids_on(0, shards, 2);
    let payees = ids_on(1, shards, 1);
    let (bank, alice, missing) = (&payers[0], &payers[1], &payees[0]);
    let mut p = Ledger::new(0, shards);
    let mut q = Ledger::new(1, shards);
    create(&mut p, bank, AccountKind::Settlement);
    create(&mut p, alice, AccountKind::Customer);
    transfer(&mut p, "fund", bank, alice, 100);
    transfer(&mut p, "x1", alice, missing, 60);
    let record = p.transfer(&tid("x1")).unwrap().clone();
    let decided = q.apply(3, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    let refused = Decision::Refused(RejectCode::PayeeNotFound);
    assert_eq!(decided, Applied::Credit(CreditOutcome { decision: Some(refused.clone()), decided_now: true }));
    p.apply(4, &Command::Finalize(FinalizeCmd { id: tid("x1"), body: record.body(), decision: refused }));
    assert_eq!(p.account(alice).unwrap().available(), 100);
    assert_eq!(p.transfer(&tid("x1")).unwrap().status, TransferStatus::Rejected(RejectCode::PayeeNotFound));
    p.check_invariants();
    q.check_invariants();
}

/// Transfer ids whose home is `shard` among `shards` (see `placement::home_shard_of`).
fn transfer_ids_homed_on(shard: ShardId, shards: u32, count: usize) -> Vec<TransferId> {
    (0..).map(|n| tid(&format!("id-{n}"))).filter(|t| home_shard_of(t, shards) == shard).take(count).collect()
}

/// A reservation binds an id to its first body for ever: the same body replays, any other
/// body (payer, payee, amount or currency) is refused as reused.
#[test]
fn reservation_binds_an_id_to_its_first_body() {
    let shards = 2;
    let ids = transfer_ids_homed_on(0, shards, 1);
    let mut home = Ledger::new(0, shards);
    let body = TransferBody { from: id("p1"), to: id("q"), amount: 100, currency: usd() };
    let reserve = |body: &TransferBody| Command::Reserve(ReserveCmd { id: ids[0].clone(), body: body.clone() });
    assert_eq!(home.apply(1, &reserve(&body)), Applied::Reserve(ReserveOutcome::Reserved));
    assert_eq!(home.apply(2, &reserve(&body)), Applied::Reserve(ReserveOutcome::Replayed));
    let others = [
        TransferBody { from: id("p2"), ..body.clone() },
        TransferBody { to: id("r"), ..body.clone() },
        TransferBody { amount: 101, ..body.clone() },
        TransferBody { currency: Currency::from_code("EUR").unwrap(), ..body.clone() },
    ];
    for other in &others {
        assert_eq!(home.apply(3, &reserve(other)), Applied::Reserve(ReserveOutcome::Reused), "{other:?}");
    }
    assert_eq!(home.reservation(&ids[0]), Some(body.clone()));
    home.check_invariants();
}

/// When the id's home is the payer's shard, the transfer reserves the id itself, and an id
/// another payer reserved first is refused there without moving money.
#[test]
fn transfer_on_the_home_shard_honours_and_makes_reservations() {
    let shards = 2;
    let ids = transfer_ids_homed_on(0, shards, 2);
    let local = ids_on(0, shards, 3);
    let (bank, alice, bob) = (&local[0], &local[1], &local[2]);
    let remote_payer = &ids_on(1, shards, 1)[0];
    let mut ledger = Ledger::new(0, shards);
    create(&mut ledger, bank, AccountKind::Settlement);
    create(&mut ledger, alice, AccountKind::Customer);
    create(&mut ledger, bob, AccountKind::Customer);
    transfer(&mut ledger, ids[1].as_str(), bank, alice, 100);
    // A payer on shard 1 reserved ids[0] first (its origin asked this home shard).
    let other = TransferBody { from: remote_payer.clone(), to: bob.clone(), amount: 5, currency: usd() };
    ledger.apply(3, &Command::Reserve(ReserveCmd { id: ids[0].clone(), body: other.clone() }));
    let refused = transfer(&mut ledger, ids[0].as_str(), alice, bob, 10);
    assert_eq!(refused, Applied::Transfer(TransferOutcome::Refused(RejectCode::IdempotencyKeyReused)));
    assert_eq!(ledger.account(alice).unwrap().balance, 100);
    assert!(ledger.transfer(&ids[0]).is_none());
    // The funding transfer reserved its own id in the same apply.
    let funding = ledger.transfer(&ids[1]).unwrap().body();
    assert_eq!(ledger.reservation(&ids[1]), Some(funding.clone()));
    let again = Command::Reserve(ReserveCmd { id: ids[1].clone(), body: TransferBody { amount: 99, ..funding } });
    assert_eq!(ledger.apply(4, &again), Applied::Reserve(ReserveOutcome::Reused));
    ledger.check_invariants();
}

/// A decision made for another body under the same id never finalizes a pending record: the
/// hold stays until the decision for its own body arrives.
#[test]
fn finalize_for_another_body_is_ignored() {
    let shards = 2;
    let payers = ids_on(0, shards, 2);
    let payees = ids_on(1, shards, 1);
    let (bank, alice, bob) = (&payers[0], &payers[1], &payees[0]);
    let mut p = Ledger::new(0, shards);
    create(&mut p, bank, AccountKind::Settlement);
    create(&mut p, alice, AccountKind::Customer);
    transfer(&mut p, "fund", bank, alice, 100);
    transfer(&mut p, "x1", alice, bob, 60);
    let record = p.transfer(&tid("x1")).unwrap().clone();
    let foreign_bodies = [TransferBody { amount: 5, ..record.body() }, TransferBody { from: bank.clone(), ..record.body() }];
    for body in foreign_bodies {
        let finalize = Command::Finalize(FinalizeCmd { id: tid("x1"), body, decision: Decision::Credited });
        let outcome = p.apply(5, &finalize);
        assert_eq!(outcome, Applied::Finalize(FinalizeOutcome { status: Some(TransferStatus::Pending), finalized_now: false }));
    }
    assert_eq!(p.account(alice).unwrap().balance, 100);
    assert_eq!(p.account(alice).unwrap().debits_pending, 60);
    let own = Command::Finalize(FinalizeCmd { id: tid("x1"), body: record.body(), decision: Decision::Refused(RejectCode::PayeeNotFound) });
    p.apply(6, &own);
    assert_eq!(p.account(alice).unwrap().available(), 100);
    p.check_invariants();
}

/// History lists newest first and pages with a cursor until the oldest item.
#[test]
fn history_pages_newest_first() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice) = (id("bank"), id("alice"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    for n in 0..5 {
        transfer(&mut ledger, &format!("t{n}"), &bank, &alice, 1);
    }
    let (first, cursor) = ledger.history(&alice, None, 2).unwrap();
    let ids: Vec<&str> = first.iter().map(|v| v.id.as_str()).collect();
    assert_eq!(ids, vec!["t4", "t3"]);
    let (second, cursor) = ledger.history(&alice, cursor, 2).unwrap();
    assert_eq!(second.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), vec!["t2", "t1"]);
    let (last, cursor) = ledger.history(&alice, cursor, 2).unwrap();
    assert_eq!(last.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), vec!["t0"]);
    assert_eq!(cursor, None);
}

mod model {
    //! Property test: one shard's ledger behaves like a BTreeMap of balances.
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[derive(Debug, Clone)]
    enum Op {
        Transfer { id: u8, from: u8, to: u8, amount: i128 },
    }

    fn op() -> impl Strategy<Value = Op> {
        (0u8..40, 0u8..5, 0u8..5, 1i128..200).prop_map(|(id, from, to, amount)| Op::Transfer { id, from, to, amount })
    }

    proptest! {
        /// Any sequence of transfers (with retried and reused ids) leaves balances equal to a
        /// model that posts a transfer iff its id is new and the payer can afford it.
        #[test]
        fn ledger_matches_balance_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut ledger = Ledger::new(0, 1);
            let accounts: Vec<AccountId> = (0..5).map(|n| id(&format!("a{n}"))).collect();
            // Account 0 is the settlement account that funds the others.
            create(&mut ledger, &accounts[0], AccountKind::Settlement);
            for account in &accounts[1..] {
                create(&mut ledger, account, AccountKind::Customer);
            }
            let mut balances: BTreeMap<u8, i128> = (0..5).map(|n| (n, 0)).collect();
            let mut seen: BTreeMap<u8, (u8, u8, i128, bool)> = BTreeMap::new();
            for op in ops {
                let Op::Transfer { id: tid_n, from, to, amount } = op;
                let applied = transfer(&mut ledger, &format!("t{tid_n}"), &accounts[usize::from(from)], &accounts[usize::from(to)], amount);
                // Dedup by id comes first, then validation, then funds.
                let expected = if let Some((f, t, a, posted)) = seen.get(&tid_n) {
                    if (*f, *t, *a) == (from, to, amount) {
                        TransferOutcome::Replayed(if *posted { TransferStatus::Posted } else { TransferStatus::Rejected(RejectCode::InsufficientFunds) })
                    } else {
                        TransferOutcome::Refused(RejectCode::IdempotencyKeyReused)
                    }
                } else if from == to {
                    TransferOutcome::Refused(RejectCode::SameAccount)
                } else {
                    let affordable = from == 0 || balances[&from] >= amount;
                    seen.insert(tid_n, (from, to, amount, affordable));
                    if affordable {
                        *balances.get_mut(&from).unwrap() -= amount;
                        *balances.get_mut(&to).unwrap() += amount;
                        TransferOutcome::Recorded(TransferStatus::Posted)
                    } else {
                        TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::InsufficientFunds))
                    }
                };
                prop_assert_eq!(applied, Applied::Transfer(expected));
            }
            for (n, balance) in &balances {
                prop_assert_eq!(ledger.account(&accounts[usize::from(*n)]).unwrap().balance, *balance);
            }
            prop_assert_eq!(balances.values().sum::<i128>(), 0);
            ledger.check_invariants();
        }
    }
}

fn stop(ledger: &mut Ledger, now_ms: u64, command: StopCmd) -> StopOutcome {
    match ledger.apply(now_ms, &Command::Stop(command)) {
        Applied::Stop(outcome) => outcome,
        other => panic!("not a stop outcome: {other:?}"),
    }
}

pub(super) fn place(id_text: &str, account: &AccountId, block_credits: bool) -> StopCmd {
    StopCmd::Place(PlaceStop {
        id: StopId::new(id_text).unwrap(),
        account: account.clone(),
        block_credits,
        reason: "suspected fraud".to_string(),
        authority_ref: "PSB-2026-118".to_string(),
        actor: "op-key".to_string(),
    })
}

fn lift(id_text: &str, account: &AccountId) -> StopCmd {
    StopCmd::Lift(LiftStop {
        id: StopId::new(id_text).unwrap(),
        account: account.clone(),
        reason: "cleared".to_string(),
        actor: "op-key".to_string(),
    })
}

/// A stop refuses the account's debits (stored as `account_frozen`) but not its credits; a
/// second stop that blocks credits refuses those too; each lift counts down; a placement is
/// idempotent by id and an id is never reused for another order; the frozen set survives a
/// reopen from the store.
#[test]
fn stops_freeze_debits_and_optionally_credits_until_lifted() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice, bob) = (id("bank"), id("alice"), id("bob"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    create(&mut ledger, &bob, AccountKind::Customer);
    transfer(&mut ledger, "fund", &bank, &alice, 1_000);

    assert!(
        matches!(stop(&mut ledger, 10, place("s1", &alice, false)), StopOutcome::Placed(record) if record.placed_at_ms == 10 && record.placed_by == "op-key")
    );
    assert!(matches!(stop(&mut ledger, 11, place("s1", &alice, false)), StopOutcome::Replayed(_)), "a retry replays");
    assert!(matches!(stop(&mut ledger, 11, place("s1", &alice, true)), StopOutcome::Conflict(_)), "another order under the id");
    assert_eq!(stop(&mut ledger, 11, place("s9", &id("nobody"), false)), StopOutcome::AccountNotFound);
    let frozen = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::AccountFrozen)));
    assert_eq!(transfer(&mut ledger, "t1", &alice, &bob, 10), frozen, "no debit from a frozen account");
    assert_eq!(
        transfer(&mut ledger, "t2", &bank, &alice, 10),
        Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted)),
        "credits still arrive"
    );

    assert!(matches!(stop(&mut ledger, 12, place("s2", &alice, true)), StopOutcome::Placed(_)));
    assert_eq!(ledger.frozen(&alice), Frozen { debits: 2, credits: 1 });
    assert_eq!(transfer(&mut ledger, "t3", &bank, &alice, 10), frozen, "a stop that blocks credits refuses them");

    // Reopened from its store, the ledger knows what is frozen.
    let (reopened, _) = Ledger::open(0, 1, ledger.store().clone(), 1 << 20).unwrap();
    assert_eq!(reopened.frozen(&alice), Frozen { debits: 2, credits: 1 });

    assert!(
        matches!(stop(&mut ledger, 13, lift("s2", &alice)), StopOutcome::Lifted(record) if record.lifted.as_ref().is_some_and(|lifted| lifted.at_ms == 13))
    );
    assert!(matches!(stop(&mut ledger, 14, lift("s2", &alice)), StopOutcome::Replayed(_)), "lifting twice changes nothing");
    assert_eq!(stop(&mut ledger, 14, lift("s7", &alice)), StopOutcome::StopNotFound);
    assert_eq!(transfer(&mut ledger, "t4", &alice, &bob, 10), frozen, "s1 still holds the debits");
    stop(&mut ledger, 15, lift("s1", &alice));
    assert_eq!(ledger.frozen(&alice), Frozen::default());
    assert_eq!(transfer(&mut ledger, "t5", &alice, &bob, 10), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted)));
    assert_eq!(ledger.stops(&alice).len(), 2, "lifted stops stay on record");
    ledger.check_invariants();
    ledger.memory_matches_store().unwrap();
}

/// Across shards: a frozen payer's prepare is refused on its shard, and a payee whose stop
/// blocks credits refuses the credit decision, which releases the payer's hold.
#[test]
fn stops_hold_on_the_cross_shard_path() {
    let (mut p, mut q, [_, alice, bob]) = two_shards(100);
    let (alice, bob) = (&alice, &bob);

    stop(&mut p, 3, place("s1", alice, false));
    let refused = transfer(&mut p, "x1", alice, bob, 10);
    assert_eq!(refused, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::AccountFrozen))));
    stop(&mut p, 4, lift("s1", alice));

    stop(&mut q, 5, place("s2", bob, true));
    assert_eq!(transfer(&mut p, "x2", alice, bob, 10), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Pending)));
    let record = p.transfer(&tid("x2")).unwrap();
    let decided = q.apply(6, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    assert_eq!(decided, Applied::Credit(CreditOutcome { decision: Some(Decision::Refused(RejectCode::AccountFrozen)), decided_now: true }));
    let finalize =
        Command::Finalize(FinalizeCmd { id: tid("x2"), body: record.body(), decision: Decision::Refused(RejectCode::AccountFrozen) });
    p.apply(7, &finalize);
    assert_eq!(p.account(alice).unwrap().available(), 100, "the hold is released");
    assert_eq!(q.account(bob).unwrap().balance, 0);
    p.check_invariants();
    q.check_invariants();
}

/// A ledger reopened from its store lifts stops placed before the reopen.
#[test]
fn stops_placed_before_a_reopen_are_lifted_after_it() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice) = (id("bank"), id("alice"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    stop(&mut ledger, 10, place("s1", &alice, false));
    let (mut reopened, _) = Ledger::open(0, 1, ledger.store().clone(), 1 << 20).unwrap();
    stop(&mut reopened, 11, place("s2", &alice, true));
    stop(&mut reopened, 12, lift("s1", &alice));
    stop(&mut reopened, 13, lift("s2", &alice));
    assert_eq!(reopened.frozen(&alice), Frozen::default());
    reopened.check_invariants();
}

fn refund(ledger: &mut Ledger, id_text: &str, original: &str, from: &AccountId, to: &AccountId, amount: Minor) -> Applied {
    let transfer = TransferCmd { id: tid(id_text), from: from.clone(), to: to.clone(), amount, currency: usd() };
    ledger.apply(5, &Command::Refund(RefundCmd { transfer, original: tid(original), reason: "returned goods".to_string() }))
}

/// Refunds of a same-shard payment: partial and multiple up to the original amount, each
/// idempotent by its own id; beyond the amount, against the wrong direction or an unknown
/// original they are refused and store nothing; a refund the payee cannot afford is rejected
/// and does not count.
#[test]
fn refunds_are_partial_multiple_capped_and_idempotent() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice, shop) = (id("bank"), id("alice"), id("shop"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    create(&mut ledger, &shop, AccountKind::Merchant);
    transfer(&mut ledger, "fund", &bank, &alice, 1_000);
    transfer(&mut ledger, "pay", &alice, &shop, 300);
    let posted = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted));
    assert_eq!(refund(&mut ledger, "r1", "pay", &shop, &alice, 100), posted);
    assert_eq!(refund(&mut ledger, "r1", "pay", &shop, &alice, 100), Applied::Transfer(TransferOutcome::Replayed(TransferStatus::Posted)));
    assert_eq!(refund(&mut ledger, "r2", "pay", &shop, &alice, 150), posted);
    let exceeds = Applied::Transfer(TransferOutcome::Refused(RejectCode::RefundExceedsOriginal));
    assert_eq!(refund(&mut ledger, "r3", "pay", &shop, &alice, 51), exceeds);
    let not_refundable = Applied::Transfer(TransferOutcome::Refused(RejectCode::NotRefundable));
    assert_eq!(refund(&mut ledger, "r4", "pay", &alice, &shop, 10), not_refundable, "the wrong direction");
    assert_eq!(refund(&mut ledger, "r5", "nope", &shop, &alice, 10), not_refundable, "an unknown original");
    assert!(ledger.transfer(&tid("r3")).is_none() && ledger.transfer(&tid("r4")).is_none());
    assert_eq!(refund(&mut ledger, "r6", "pay", &shop, &alice, 50), posted, "exactly the rest");
    let total = ledger.refunds(&tid("pay")).unwrap();
    assert_eq!((total.refunded, total.original_amount, total.refunds.len()), (300, 300, 3));
    assert_eq!(ledger.account(&alice).unwrap().balance, 1_000);
    assert_eq!(ledger.account(&shop).unwrap().balance, 0);

    // The shop spent its money: a refund it cannot afford is rejected and counts nothing.
    transfer(&mut ledger, "pay2", &alice, &shop, 200);
    transfer(&mut ledger, "spend", &shop, &bank, 200);
    let broke = refund(&mut ledger, "r7", "pay2", &shop, &alice, 50);
    assert_eq!(broke, Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::InsufficientFunds))));
    assert!(ledger.refunds(&tid("pay2")).is_none());
    ledger.check_invariants();
}

/// A cross-shard refund: the original's credit is on the payee's shard, where the refund is
/// prepared and capped; when the original payer's shard refuses the refund's credit, the
/// refunded amount is given back and the refund can be made again under a new id.
#[test]
fn a_refused_cross_shard_refund_gives_its_amount_back() {
    let (mut p, mut q, [_, alice, bob]) = two_shards(100);
    transfer(&mut p, "pay", &alice, &bob, 60);
    let record = p.transfer(&tid("pay")).unwrap();
    q.apply(3, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    p.apply(4, &Command::Finalize(FinalizeCmd { id: tid("pay"), body: record.body(), decision: Decision::Credited }));

    assert_eq!(refund(&mut q, "r1", "pay", &bob, &alice, 40), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Pending)));
    assert_eq!(q.refunds(&tid("pay")).unwrap().refunded, 40);
    let exceeds = refund(&mut q, "r2", "pay", &bob, &alice, 21);
    assert_eq!(exceeds, Applied::Transfer(TransferOutcome::Refused(RejectCode::RefundExceedsOriginal)), "pending refunds count");
    let pending = q.transfer(&tid("r1")).unwrap();
    let refused = Decision::Refused(RejectCode::AccountFrozen);
    q.apply(6, &Command::Finalize(FinalizeCmd { id: tid("r1"), body: pending.body(), decision: refused }));
    assert_eq!(q.refunds(&tid("pay")).unwrap().refunded, 0, "the refused refund is released");
    assert_eq!(refund(&mut q, "r3", "pay", &bob, &alice, 60), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Pending)));
    q.check_invariants();
    p.check_invariants();
}

/// Prepaid cards never hold more than their cap (5,000 CNY named, 1,000 CNY anonymous): a load
/// that would pass it is rejected and stored, same-shard and as a cross-shard credit; spending
/// makes room again; a prepaid card in another currency is never created.
#[test]
fn prepaid_cards_stay_under_their_caps() {
    let cny = Currency::from_code("CNY").unwrap();
    let mut ledger = Ledger::new(0, 1);
    let (bank, named, anonymous, shop) = (id("bank"), id("card-n"), id("card-a"), id("shop"));
    for (account, kind) in [
        (&bank, AccountKind::Settlement),
        (&named, AccountKind::Prepaid),
        (&anonymous, AccountKind::PrepaidAnonymous),
        (&shop, AccountKind::Merchant),
    ] {
        let command = Command::CreateAccount(CreateAccount { id: account.clone(), currency: cny, kind });
        assert_eq!(ledger.apply(1, &command), Applied::Account(AccountOutcome::Created));
    }
    let load = |ledger: &mut Ledger, id_text: &str, from: &AccountId, to: &AccountId, amount: Minor| {
        let command = Command::Transfer(TransferCmd { id: tid(id_text), from: from.clone(), to: to.clone(), amount, currency: cny });
        ledger.apply(2, &command)
    };
    let posted = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted));
    let over = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::PrepaidLimitExceeded)));
    assert_eq!(load(&mut ledger, "l1", &bank, &named, 500_000), posted);
    assert_eq!(load(&mut ledger, "l2", &bank, &named, 1), over);
    assert_eq!(load(&mut ledger, "l3", &bank, &anonymous, 100_001), over);
    assert_eq!(load(&mut ledger, "l4", &bank, &anonymous, 100_000), posted);
    assert_eq!(load(&mut ledger, "s1", &anonymous, &shop, 30_000), posted, "spending");
    assert_eq!(load(&mut ledger, "l5", &bank, &anonymous, 30_000), posted, "makes room");
    assert_eq!(ledger.account(&anonymous).unwrap().balance, 100_000);
    let usd_card = Command::CreateAccount(CreateAccount { id: id("card-usd"), currency: usd(), kind: AccountKind::Prepaid });
    assert_eq!(ledger.apply(3, &usd_card), Applied::Account(AccountOutcome::WrongShard));
    assert!(ledger.account(&id("card-usd")).is_none());
    ledger.check_invariants();

    // Cross-shard: the card's shard refuses the credit that would pass the cap.
    let shards = 2;
    let payers = ids_on(0, shards, 1);
    let cards = ids_on(1, shards, 1);
    let mut p = Ledger::new(0, shards);
    let mut q = Ledger::new(1, shards);
    p.apply(1, &Command::CreateAccount(CreateAccount { id: payers[0].clone(), currency: cny, kind: AccountKind::Settlement }));
    q.apply(1, &Command::CreateAccount(CreateAccount { id: cards[0].clone(), currency: cny, kind: AccountKind::PrepaidAnonymous }));
    load(&mut p, "x1", &payers[0], &cards[0], 100_001);
    let record = p.transfer(&tid("x1")).unwrap();
    let decided = q.apply(3, &Command::Credit(CreditCmd::for_record(&record, AccountKind::Customer, 0, false)));
    assert_eq!(
        decided,
        Applied::Credit(CreditOutcome { decision: Some(Decision::Refused(RejectCode::PrepaidLimitExceeded)), decided_now: true })
    );
}

/// Every posted balance change is a movement with the balance after it: a statement between two
/// times lists them oldest first with the balance before the first, pages resume where they
/// stopped, a balance as of a time is the one after its last movement; a rejected transfer
/// moves nothing, and a clock that goes back (a new leader) does not reorder them.
#[test]
fn statements_and_balances_as_of_follow_the_movements() {
    let mut ledger = Ledger::new(0, 1);
    let (bank, alice, bob) = (id("bank"), id("alice"), id("bob"));
    create(&mut ledger, &bank, AccountKind::Settlement);
    create(&mut ledger, &alice, AccountKind::Customer);
    create(&mut ledger, &bob, AccountKind::Customer);
    let pay = |ledger: &mut Ledger, now_ms: u64, id_text: &str, from: &AccountId, to: &AccountId, amount: Minor| {
        let command = Command::Transfer(TransferCmd { id: tid(id_text), from: from.clone(), to: to.clone(), amount, currency: usd() });
        ledger.apply(now_ms, &command)
    };
    pay(&mut ledger, 1_000, "fund", &bank, &alice, 100);
    pay(&mut ledger, 2_000, "t1", &alice, &bob, 30);
    pay(&mut ledger, 2_000, "t2", &alice, &bob, 500); // rejected: moves nothing
    pay(&mut ledger, 1_500, "t3", &bob, &alice, 5); // a leader whose clock is behind: stamped 2,000
    pay(&mut ledger, 3_000, "t4", &alice, &bob, 20);
    assert_eq!(ledger.transfer(&tid("t3")).unwrap().created_at_ms, 2_000);

    assert_eq!(ledger.balance_as_of(&alice, 999), Some((usd(), 0)));
    assert_eq!(ledger.balance_as_of(&alice, 1_000), Some((usd(), 100)));
    assert_eq!(ledger.balance_as_of(&alice, 2_999), Some((usd(), 75)));
    assert_eq!(ledger.balance_as_of(&alice, u64::MAX), Some((usd(), 55)));
    assert_eq!(ledger.balance_as_of(&id("nobody"), 5), None);

    let page = ledger.statement(&alice, 1_500, 10_000, None, 2).unwrap();
    assert_eq!(page.opening_balance, 100);
    let rows: Vec<(&str, Minor, Minor)> = page.rows.iter().map(|row| (row.transfer.as_str(), row.amount, row.balance_after)).collect();
    assert_eq!(rows, vec![("t1", -30, 70), ("t3", 5, 75)]);
    let next = ledger.statement(&alice, 1_500, 10_000, page.next, 2).unwrap();
    assert_eq!((next.opening_balance, next.rows.len(), next.rows[0].balance_after, next.next), (75, 1, 55, None));
    assert_eq!(next.rows[0].counterparty, bob);
    // The end is exclusive.
    assert_eq!(ledger.statement(&alice, 1_500, 3_000, None, 10).unwrap().rows.len(), 2);
    ledger.verify_movements().unwrap();
    ledger.check_invariants();
}

/// An anonymous prepaid card pays merchants only, on every path: a same-shard transfer, a
/// same-shard hold, and a cross-shard credit (whose command carries the payer's kind).
#[test]
fn an_anonymous_card_never_cashes_out() {
    let accounts = ids_on(0, 2, 4);
    let payees = ids_on(1, 2, 2);
    let (issuer, card, friend, shop) = (&accounts[0], &accounts[1], &accounts[2], &accounts[3]);
    let cny = Currency::from_code("CNY").unwrap();
    let mut p = Ledger::new(0, 2);
    let mut q = Ledger::new(1, 2);
    let open = |ledger: &mut Ledger, account: &AccountId, kind: AccountKind| {
        let command = Command::CreateAccount(CreateAccount { id: account.clone(), currency: cny, kind });
        assert_eq!(ledger.apply(1, &command), Applied::Account(AccountOutcome::Created));
    };
    open(&mut p, issuer, AccountKind::Settlement);
    open(&mut p, card, AccountKind::PrepaidAnonymous);
    open(&mut p, friend, AccountKind::Customer);
    open(&mut p, shop, AccountKind::Merchant);
    open(&mut q, &payees[0], AccountKind::Customer);
    open(&mut q, &payees[1], AccountKind::Merchant);
    let move_cny = |ledger: &mut Ledger, id: &str, from: &AccountId, to: &AccountId, amount: Minor| {
        ledger.apply(2, &Command::Transfer(TransferCmd { id: tid(id), from: from.clone(), to: to.clone(), amount, currency: cny }))
    };
    assert_eq!(move_cny(&mut p, "load", issuer, card, 500), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted)));
    let refused = Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Rejected(RejectCode::PrepaidCashOut)));
    assert_eq!(move_cny(&mut p, "cash", card, friend, 100), refused);
    assert_eq!(move_cny(&mut p, "buy", card, shop, 100), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Posted)));
    let hold = Command::Hold(HoldCmd {
        transfer: TransferCmd { id: tid("h"), from: card.clone(), to: friend.clone(), amount: 10, currency: cny },
        timeout_ms: 86_400_000,
        settle_on_expiry: false,
    });
    assert_eq!(p.apply(3, &hold), refused);
    // Across shards the payee's shard decides, by the kind the credit carries.
    for (n, payee) in payees.iter().enumerate() {
        let id = format!("x{n}");
        assert_eq!(move_cny(&mut p, &id, card, payee, 50), Applied::Transfer(TransferOutcome::Recorded(TransferStatus::Pending)));
        let record = p.transfer(&tid(&id)).unwrap();
        let decided = q.apply(4, &Command::Credit(CreditCmd::for_record(&record, AccountKind::PrepaidAnonymous, 0, false)));
        let expected = if n == 0 { Decision::Refused(RejectCode::PrepaidCashOut) } else { Decision::Credited };
        assert_eq!(decided, Applied::Credit(CreditOutcome { decision: Some(expected), decided_now: true }));
    }
    p.check_invariants();
    q.check_invariants();
}
