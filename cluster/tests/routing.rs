//! Routing through `NodeCore`'s input/effect interface: where the legs of client calls go when
//! the node has no replica of their shard and the leader it guessed stays silent.

use settle_cluster::ids::{AccountId, NodeId, ShardId};
use settle_cluster::message::{PeerMessage, Request};
use settle_cluster::placement::Placement;
use settle_cluster::replica::RaftSettings;
use settle_cluster::{CallId, CoreLimits, Effect, NodeConfig, NodeCore, Time};
use std::collections::{BTreeMap, BTreeSet};

/// A core for `node` in a five-node cluster of five shards (three replicas each), fresh.
fn core(node: NodeId, placement: &Placement) -> NodeCore {
    let config = NodeConfig {
        node,
        placement: placement.clone(),
        raft: RaftSettings::default(),
        limits: CoreLimits::default(),
        cache_bytes_max: 1 << 20,
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    NodeCore::new(config, BTreeMap::new(), BTreeSet::new(), std::sync::Arc::new(settle_cluster::store::MemStore::new()), 1, 7, &logger)
        .expect("a fresh core")
}

/// An account whose shard is `shard`.
fn account_on(placement: &Placement, shard: ShardId, skip: usize) -> AccountId {
    (0..).map(|n| AccountId::new(format!("acct-{n}")).unwrap()).filter(|account| placement.shard_of(account) == shard).nth(skip).unwrap()
}

/// The nodes the legs for `shard` were sent to, in order.
fn leg_targets(effects: Vec<Effect>, shard: ShardId) -> Vec<NodeId> {
    let mut targets = Vec::new();
    for effect in effects {
        if let Effect::Send { to, messages } = effect {
            for message in messages {
                if matches!(message, PeerMessage::Leg { shard: leg_shard, .. } if leg_shard == shard) {
                    targets.push(to);
                }
            }
        }
    }
    targets
}

/// Several legs to one silent leader in one tick rotate the leader hint once, to the next
/// replica, even when legs of another shard lie between them.
#[test]
fn silent_legs_rotate_the_hint_once_per_tick() {
    let placement = Placement::new(vec![1, 2, 3, 4, 5], 5);
    let (node, shard, other_shard) = (4, 0, 4);
    assert!(!placement.replicas(shard).contains(&node) && !placement.replicas(other_shard).contains(&node));
    let mut core = core(node, &placement);
    let reads = [account_on(&placement, shard, 0), account_on(&placement, other_shard, 0), account_on(&placement, shard, 1)];
    for (call, account) in (1..).zip(reads) {
        core.submit(CallId(call), Request::ReadAccount(account), 60_000);
    }
    core.poll();
    assert_eq!(leg_targets(core.drain_effects(), shard), vec![1, 1], "first guess: the first other replica");
    let attempt_timeout_ms = CoreLimits::default().leg_attempt_timeout_ms;
    core.tick(Time { wall_ms: attempt_timeout_ms, monotonic_ms: attempt_timeout_ms });
    core.poll();
    assert_eq!(leg_targets(core.drain_effects(), shard), vec![2, 2], "one rotation, to the next replica");
}
