//! Smoke tests of the whole core in the simulator without faults.

use settle_chaos::run::{all_shards_led, applied_indexes_agree};
use settle_chaos::sim::{SimCluster, SimConfig};
use settle_cluster::ids::{AccountId, TransferId};
use settle_cluster::ledger::{AccountKind, AccountOutcome, TransferStatus};
use settle_cluster::message::{AccountRequest, Reply, Request, TransferRequest, TransferResult};
use settle_cluster::money::Currency;

fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

fn create(cluster: &mut SimCluster, node: u64, id: &str, kind: AccountKind) {
    let request = Request::CreateAccount(AccountRequest { id: AccountId::new(id).unwrap(), currency: usd(), kind });
    let call = cluster.submit(node, request, 5_000);
    let reply = cluster.wait(call, 10_000).expect("reply");
    assert!(matches!(reply, Reply::Account { outcome: AccountOutcome::Created, .. }), "{reply:?}");
}

fn transfer(cluster: &mut SimCluster, node: u64, id: &str, from: &str, to: &str, amount: i128) -> TransferResult {
    let command = TransferRequest {
        id: TransferId::new(id).unwrap(),
        from: AccountId::new(from).unwrap(),
        to: AccountId::new(to).unwrap(),
        amount,
        currency: usd(),
    };
    let call = cluster.submit(node, Request::Transfers(vec![command]), 5_000);
    match cluster.wait(call, 10_000).expect("reply") {
        Reply::Transfers(mut results) => results.remove(0),
        other => panic!("unexpected {other:?}"),
    }
}

fn balance(cluster: &mut SimCluster, node: u64, id: &str) -> i128 {
    let call = cluster.submit(node, Request::ReadAccount(AccountId::new(id).unwrap()), 5_000);
    match cluster.wait(call, 10_000).expect("reply") {
        Reply::AccountState(Some(view)) => view.balance,
        other => panic!("unexpected {other:?}"),
    }
}

/// Accounts, same- and cross-shard transfers through every node settle to the expected balances.
#[test]
fn transfers_through_every_node_settle() {
    let mut cluster = SimCluster::new(SimConfig::new(3, 8, 1));
    let elected =
        cluster.run_until(10_000, |c| c.node_ids().iter().all(|n| c.core(*n).unwrap().shard_status().iter().all(|s| s.leader.is_some())));
    assert!(elected, "every shard elects a leader");
    create(&mut cluster, 1, "bank", AccountKind::Settlement);
    let customers: Vec<String> = (0..6).map(|n| format!("c{n}")).collect();
    for (n, customer) in customers.iter().enumerate() {
        let node = 1 + (n as u64 % 3);
        create(&mut cluster, node, customer, AccountKind::Customer);
        let result = transfer(&mut cluster, node, &format!("fund-{n}"), "bank", customer, 1_000);
        assert!(matches!(result, TransferResult::Done(ref view) if view.status == TransferStatus::Posted), "{result:?}");
    }
    for n in 0..6 {
        let from = &customers[n];
        let to = &customers[(n + 1) % 6];
        let node = 1 + ((n as u64 + 1) % 3);
        let result = transfer(&mut cluster, node, &format!("t-{n}"), from, to, 100 + n as i128);
        assert!(matches!(result, TransferResult::Done(ref view) if view.status == TransferStatus::Posted), "{result:?}");
    }
    let overdraft = transfer(&mut cluster, 2, "too-much", "c0", "c3", 5_000);
    assert!(matches!(overdraft, TransferResult::Done(ref view) if view.status != TransferStatus::Posted), "{overdraft:?}");
    let mut total = balance(&mut cluster, 3, "bank");
    for customer in &customers {
        let value = balance(&mut cluster, 3, customer);
        assert!(value >= 0);
        total += value;
    }
    assert_eq!(total, 0);
    assert_eq!(balance(&mut cluster, 1, "c1"), 1_000 + 100 - 101);
}

/// A crashed leader's shards fail over, and the restarted node recovers and converges.
#[test]
fn leader_crash_fails_over_and_restart_converges() {
    let mut config = SimConfig::new(3, 8, 7);
    config.limits.checkpoint_entries = 5;
    config.limits.compaction_lag_entries = 2;
    let mut cluster = SimCluster::new(config);
    let elected = cluster.run_until(10_000, |c| c.core(1).unwrap().shard_status().iter().all(|s| s.leader.is_some()));
    assert!(elected, "every shard elects a leader");
    create(&mut cluster, 2, "bank", AccountKind::Settlement);
    let customers: Vec<String> = (0..6).map(|n| format!("c{n}")).collect();
    for (n, customer) in customers.iter().enumerate() {
        create(&mut cluster, 2, customer, AccountKind::Customer);
        transfer(&mut cluster, 2, &format!("fund-{n}"), "bank", customer, 1_000);
    }
    cluster.crash(1);
    for round in 0..20 {
        let from = &customers[round % 6];
        let to = &customers[(round + 2) % 6];
        let node = 2 + (round as u64 % 2);
        let result = transfer(&mut cluster, node, &format!("t-{round}"), from, to, 10);
        assert!(matches!(result, TransferResult::Done(ref view) if view.status == TransferStatus::Posted), "{result:?}");
    }
    cluster.start(1);
    let caught_up = cluster.run_until(10_000, |c| all_shards_led(c) && applied_indexes_agree(c));
    assert!(caught_up, "the restarted node applies what its shards committed while it was down");
    let mut total = 0;
    for account in customers.iter().map(String::as_str).chain(["bank"]) {
        let seen: Vec<i128> = (1..=3).map(|node| balance(&mut cluster, node, account)).collect();
        assert!(seen.iter().all(|b| *b == seen[0]), "{account}: {seen:?}");
        total += seen[0];
    }
    assert_eq!(total, 0);
    for node in 1..=3 {
        for replica in cluster.core(node).unwrap().replicas() {
            replica.ledger().check_invariants();
        }
    }
}
