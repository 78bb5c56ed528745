//! Replica moves in the simulator: a shard's replica moves to a node that had none, through
//! learner, promotion and removal, while the cluster serves; money is conserved and restarts
//! keep the new membership.

use settle_chaos::run::{all_shards_led, applied_indexes_agree};
use settle_chaos::sim::{SimCluster, SimConfig};
use settle_cluster::ids::{AccountId, NodeId, ShardId, TransferId};
use settle_cluster::ledger::{AccountKind, AccountOutcome, TransferStatus};
use settle_cluster::message::{AccountRequest, MoveStage, MoveStatus, Reply, Request, TransferRequest, TransferResult};
use settle_cluster::money::Currency;

fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

fn create(cluster: &mut SimCluster, node: NodeId, id: &str, kind: AccountKind) {
    let request = Request::CreateAccount(AccountRequest { id: AccountId::new(id).unwrap(), currency: usd(), kind });
    let call = cluster.submit(node, request, 5_000);
    let reply = cluster.wait(call, 10_000).expect("reply");
    assert!(matches!(reply, Reply::Account { outcome: AccountOutcome::Created, .. }), "{reply:?}");
}

fn transfer(cluster: &mut SimCluster, node: NodeId, id: &str, from: &str, to: &str, amount: i128) -> TransferResult {
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

fn balance(cluster: &mut SimCluster, node: NodeId, id: &str) -> i128 {
    let call = cluster.submit(node, Request::ReadAccount(AccountId::new(id).unwrap()), 5_000);
    match cluster.wait(call, 10_000).expect("reply") {
        Reply::AccountState(Some(view)) => view.balance,
        other => panic!("unexpected {other:?}"),
    }
}

/// Repeats the move request through `via` until the shard's leader says it is done; returns
/// every stage seen.
fn move_replica(cluster: &mut SimCluster, via: NodeId, shard: ShardId, from: NodeId, to: NodeId) -> (Vec<MoveStage>, MoveStatus) {
    let mut stages = Vec::new();
    for _ in 0..300 {
        let call = cluster.submit(via, Request::MoveReplica { shard, from, to }, 2_000);
        if let Some(Reply::Moved(status)) = cluster.wait(call, 3_000) {
            if stages.last() != Some(&status.stage) {
                stages.push(status.stage);
            }
            if status.stage == MoveStage::Done {
                return (stages, status);
            }
        }
        cluster.run_for(100);
    }
    panic!("the move did not finish: {stages:?}");
}

fn hosts(cluster: &SimCluster, node: NodeId, shard: ShardId) -> bool {
    cluster.core(node).unwrap().replicas().any(|replica| replica.shard() == shard)
}

/// A shard's replica moves from a node to one without it (learner, catch-up by snapshot,
/// promotion, removal, leadership handed off if needed) while transfers go on; afterwards the
/// new node holds the shard's state, the old one none, every node routes to the new members,
/// money is conserved, and restarting both nodes keeps the new membership.
#[test]
fn a_replica_moves_to_another_node_and_stays_there_across_restarts() {
    let mut config = SimConfig::new(4, 8, 3);
    config.limits.checkpoint_entries = 20;
    let mut cluster = SimCluster::new(config);
    assert!(cluster.run_until(10_000, all_shards_led), "every shard elects a leader");
    let shard: ShardId = (0..8).find(|shard| !cluster.placement().replicas(*shard).contains(&4)).expect("a shard without node 4");
    let from = cluster.placement().preferred_leader(shard);
    create(&mut cluster, 1, "bank", AccountKind::Settlement);
    let customers: Vec<String> = (0..8).map(|n| format!("c{n}")).collect();
    for (n, customer) in customers.iter().enumerate() {
        create(&mut cluster, 2, customer, AccountKind::Customer);
        let result = transfer(&mut cluster, 3, &format!("fund-{n}"), "bank", customer, 1_000);
        assert!(matches!(result, TransferResult::Done(ref view) if view.status == TransferStatus::Posted), "{result:?}");
    }

    let (stages, status) = move_replica(&mut cluster, 4, shard, from, 4);

    assert!(cluster.core(4).unwrap().stats().snapshots_installed >= 1, "the new member starts from a snapshot");
    assert!(stages.contains(&MoveStage::AddingLearner) && stages.contains(&MoveStage::Removing), "{stages:?}");
    let mut expected: Vec<NodeId> = cluster.placement().replicas(shard).into_iter().filter(|node| *node != from).chain([4]).collect();
    expected.sort_unstable();
    let mut voters = status.voters.clone();
    voters.sort_unstable();
    assert_eq!(voters, expected);
    assert!(status.learners.is_empty());
    assert!(cluster.run_until(10_000, |c| !hosts(c, from, shard) && hosts(c, 4, shard)), "the old node stops its replica");
    for round in 0..16 {
        let result = transfer(
            &mut cluster,
            1 + round % 4,
            &format!("t-{round}"),
            &customers[round as usize % 8],
            &customers[(round as usize + 3) % 8],
            7,
        );
        assert!(matches!(result, TransferResult::Done(ref view) if view.status == TransferStatus::Posted), "{result:?}");
    }
    for node in [from, 4] {
        cluster.crash(node);
        cluster.start(node);
    }
    assert!(cluster.run_until(20_000, |c| all_shards_led(c) && applied_indexes_agree(c)), "the cluster converges after the restarts");
    assert!(!hosts(&cluster, from, shard), "a removed replica does not come back at restart");
    assert!(hosts(&cluster, 4, shard), "an added replica comes back at restart");
    let routes_to = |c: &SimCluster, node: NodeId| {
        let mut seen = c.core(node).unwrap().shard_status()[shard as usize].replicas.clone();
        seen.sort_unstable();
        seen
    };
    // Nodes without a replica learn the members from their tombstone or the leader's next
    // announcement (every leader_balance_interval_ms).
    let routed = cluster.run_until(10_000, |c| (1..=4).all(|node| routes_to(c, node) == expected));
    assert!(
        routed,
        "every node routes shard {shard} to its new voters: {:?}",
        (1..=4).map(|node| routes_to(&cluster, node)).collect::<Vec<_>>()
    );
    let mut total: i128 = 0;
    for (n, account) in customers.iter().map(String::as_str).chain(["bank"]).enumerate() {
        total += balance(&mut cluster, 1 + n as u64 % 4, account);
    }
    assert_eq!(total, 0, "money is conserved across the move");
    for node in 1..=4 {
        for replica in cluster.core(node).unwrap().replicas() {
            replica.ledger().check_invariants();
        }
    }
}

/// A move on a shard that has been quiet long enough for its state to be durable (nothing left
/// to checkpoint) and whose log was never compacted still starts: the leader compacts at its
/// checkpoint so the new member starts from a snapshot.
#[test]
fn a_move_on_a_quiet_shard_compacts_and_finishes() {
    let mut cluster = SimCluster::new(SimConfig::new(4, 8, 5));
    assert!(cluster.run_until(10_000, all_shards_led), "every shard elects a leader");
    create(&mut cluster, 1, "bank", AccountKind::Settlement);
    // Quiet: every checkpoint taken, nothing applied since.
    cluster.run_for(20_000);
    let shard: ShardId = (0..8).find(|shard| !cluster.placement().replicas(*shard).contains(&4)).expect("a shard without node 4");
    let from = cluster.placement().replicas(shard)[1];

    let (stages, status) = move_replica(&mut cluster, 2, shard, from, 4);

    assert_eq!(stages.first(), Some(&MoveStage::Preparing), "{stages:?}");
    assert!(status.voters.contains(&4) && !status.voters.contains(&from), "{status:?}");
}
