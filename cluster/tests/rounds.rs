//! Persist rounds through `NodeCore`'s input/effect interface: how many rounds are handed to the
//! driver before the earlier ones are durable.

use settle_cluster::ids::AccountId;
use settle_cluster::ledger::AccountKind;
use settle_cluster::message::{AccountRequest, Request};
use settle_cluster::money::Currency;
use settle_cluster::placement::Placement;
use settle_cluster::replica::RaftSettings;
use settle_cluster::{CallId, CoreLimits, Effect, NodeConfig, NodeCore, PersistRound, Time};
use std::collections::{BTreeMap, BTreeSet};

/// The persist rounds among `effects`.
fn rounds(effects: Vec<Effect>) -> Vec<PersistRound> {
    effects
        .into_iter()
        .filter_map(|effect| match effect {
            Effect::Persist(round) => Some(round),
            _ => None,
        })
        .collect()
}

/// Polls and makes every round durable at once until the core hands out no more.
fn settle(core: &mut NodeCore) {
    for _ in 0..100 {
        core.poll();
        let rounds = rounds(core.drain_effects());
        let Some(last) = rounds.last() else {
            return;
        };
        core.persisted(last.id);
    }
    panic!("the core kept producing rounds");
}

/// At the cap of rounds in flight a pending log compaction waits too: it leaves in the first
/// round after IO caught up, not in a round beyond the cap.
#[test]
fn compaction_waits_while_rounds_are_at_the_cap() {
    let limits = CoreLimits { rounds_inflight_max: 1, compaction_lag_entries: 0, ..CoreLimits::default() };
    let config =
        NodeConfig { node: 1, placement: Placement::new(vec![1], 1), raft: RaftSettings::default(), limits, cache_bytes_max: 1 << 20 };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    let mut core =
        NodeCore::new(config, BTreeMap::new(), BTreeSet::new(), std::sync::Arc::new(settle_cluster::store::MemStore::new()), 1, 7, &logger)
            .expect("a fresh core");
    // The only voter: it leads once its first tick's campaign is durable.
    core.tick(Time { wall_ms: 100, monotonic_ms: 100 });
    settle(&mut core);
    let applied = core.replicas().next().expect("one shard").applied_index();
    assert!(applied > 0, "the leader applied its first entry");

    let usd = Currency::from_code("USD").unwrap();
    let create = AccountRequest { id: AccountId::new("alice").unwrap(), currency: usd, kind: AccountKind::Customer };
    core.submit(CallId(1), Request::CreateAccount(create), 10_000);
    core.poll();
    let inflight = rounds(core.drain_effects());
    assert_eq!((inflight.len(), core.rounds_inflight()), (1, 1), "the proposal's round is in flight");

    core.state_persisted(&[(0, applied)]);
    core.poll();
    assert!(rounds(core.drain_effects()).is_empty(), "no round beyond the cap");
    assert_eq!(core.rounds_inflight(), 1);

    core.persisted(inflight[0].id);
    core.poll();
    let next = rounds(core.drain_effects());
    let compactions: Vec<_> = next.iter().flat_map(|round| &round.writes).filter_map(|write| write.compact_to).collect();
    assert_eq!(compactions.len(), 1, "the compaction leaves once IO caught up: {next:?}");
    assert_eq!(compactions[0].0, applied);
}
