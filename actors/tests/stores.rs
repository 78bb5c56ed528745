//! The storage engines against the reference model (`DurableShard`), and what they do with a
//! damaged record: never return it as data.

use protobuf::Message as _;
use settle_actors::io::{IoJob, Storage};
use settle_cluster::ledger::{AppliedMark, Ledger};
use settle_cluster::placement::Placement;
use settle_cluster::raft::eraftpb::ConfState;
use settle_cluster::raft::eraftpb::{Entry, HardState};
use settle_cluster::recovery::DurableShard;
use settle_cluster::replica::ShardWrite;
use settle_cluster::store::KvStore;
use settle_cluster::PersistRound;
use std::collections::BTreeMap;

fn entry(index: u64, term: u64, marker: &str) -> Entry {
    let mut entry = Entry::default();
    entry.index = index;
    entry.term = term;
    entry.data = format!("{marker}-{index}").into_bytes().into();
    entry
}

fn hard_state(term: u64, commit: u64) -> HardState {
    let mut state = HardState::default();
    state.term = term;
    state.commit = commit;
    state
}

fn write(shard: u32, entries: Vec<Entry>, hard: Option<HardState>, compact_to: Option<(u64, u64)>) -> ShardWrite {
    ShardWrite { shard, entries, hard_state: hard, compact_to, ..ShardWrite::default() }
}

/// A snapshot from the leader at `index` replacing shard `shard`'s log, plus the next entry.
fn snapshot_write(shard: u32, index: u64, term: u64) -> ShardWrite {
    let mut metadata = settle_cluster::raft::eraftpb::SnapshotMetadata::default();
    metadata.index = index;
    metadata.term = term;
    metadata.set_conf_state(settle_cluster::raft::eraftpb::ConfState::from((vec![1, 2, 3], vec![])));
    let mut snapshot = settle_cluster::raft::eraftpb::Snapshot::default();
    snapshot.set_metadata(metadata);
    ShardWrite {
        shard,
        snapshot: Some(snapshot),
        entries: vec![entry(index + 1, term, "s")],
        hard_state: Some(hard_state(term, index)),
        ..ShardWrite::default()
    }
}

/// Records shard `shard` as applied to `index` in the state store, durably.
fn mark_applied(storage: &Storage, shard: u32, index: u64, term: u64) {
    let state: std::sync::Arc<dyn KvStore> = storage.state();
    let (mut ledger, _) = Ledger::open(shard, 4, state.clone(), 1 << 20).unwrap();
    let conf_state = ConfState::from((vec![1, 2, 3], vec![])).write_to_bytes().unwrap();
    ledger.commit_round(&AppliedMark { index, term, conf_state }).unwrap();
    state.persist().unwrap();
}

fn load(storage: &Storage) -> BTreeMap<u32, DurableShard> {
    let placement = Placement::new(vec![1, 2, 3], 4);
    let (recovered, quarantined) = storage.recover(&placement, 1, 1 << 20).expect("recover");
    assert!(quarantined.is_empty(), "{quarantined:?}");
    recovered
        .into_iter()
        .map(|(shard, replica)| {
            let store = replica.storage;
            let entries = (store.compacted_index() + 1..=store.last_index()).collect::<Vec<_>>();
            let durable = DurableShard {
                hard_state: store.hard_state().clone(),
                compacted_index: store.compacted_index(),
                compacted_term: store.term_of(store.compacted_index()).unwrap_or(0),
                entries: entries.iter().map(|i| entry(*i, store.term_of(*i).unwrap(), "x")).collect(),
                corrupt: None,
            };
            (shard, durable)
        })
        .collect()
}

/// Appends (with conflicting tails), hard states, compactions and snapshots written in groups
/// read back exactly as the reference model says, across a reopen.
#[test]
fn log_and_state_stores_match_the_reference_model_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let rounds = vec![
        vec![write(0, (1..=5).map(|i| entry(i, 1, "a")).collect(), Some(hard_state(1, 3)), None)],
        vec![
            write(0, vec![entry(4, 2, "b"), entry(5, 2, "b")], Some(hard_state(2, 5)), None),
            write(1, (1..=3).map(|i| entry(i, 1, "c")).collect(), Some(hard_state(1, 2)), None),
        ],
        vec![write(0, vec![entry(6, 2, "d")], None, Some((3, 1)))],
        vec![snapshot_write(1, 10, 2)],
    ];
    let mut model: BTreeMap<u32, DurableShard> = BTreeMap::new();
    {
        let mut storage = Storage::open(dir.path()).unwrap();
        // The state store is applied as far as the log is compacted (the rule the log store
        // relies on): shard 0 to 3, shard 1 to its snapshot at 10.
        mark_applied(&storage, 0, 3, 1);
        mark_applied(&storage, 1, 10, 2);
        for (id, writes) in rounds.into_iter().enumerate() {
            for shard_write in &writes {
                model.entry(shard_write.shard).or_default().apply_write(shard_write);
            }
            let round = PersistRound { id: u64::try_from(id).unwrap(), writes };
            storage.write_group(&[IoJob::Persist(round)]).unwrap();
        }
    }
    let storage = Storage::open(dir.path()).unwrap();
    let loaded = load(&storage);
    for (shard, expected) in &model {
        let got = &loaded[shard];
        assert_eq!(got.hard_state, expected.hard_state, "shard {shard} hard state");
        assert_eq!(got.compacted_index, expected.compacted_index, "shard {shard} compaction");
        let got_terms: Vec<(u64, u64)> = got.entries.iter().map(|e| (e.index, e.term)).collect();
        let want_terms: Vec<(u64, u64)> = expected.entries.iter().map(|e| (e.index, e.term)).collect();
        assert_eq!(got_terms, want_terms, "shard {shard} entries");
    }
}

/// A flipped byte inside a stored log record is never served as data: the store refuses to
/// open, or the shard comes back without it (never with altered bytes).
#[test]
fn a_flipped_byte_in_a_log_record_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut storage = Storage::open(dir.path()).unwrap();
        let writes = vec![write(2, (1..=3).map(|i| entry(i, 1, "MARKERMARKERMARKER")).collect(), Some(hard_state(1, 1)), None)];
        storage.write_group(&[IoJob::Persist(PersistRound { id: 1, writes })]).unwrap();
        for round in 2..6 {
            let writes = vec![write(1, vec![entry(round, 1, "other")], Some(hard_state(1, round)), None)];
            storage.write_group(&[IoJob::Persist(PersistRound { id: round, writes })]).unwrap();
        }
    }
    let needle = b"MARKERMARKERMARKER-2";
    let mut damaged = false;
    for file in std::fs::read_dir(dir.path().join("raft-log")).unwrap() {
        let path = file.unwrap().path();
        let mut bytes = std::fs::read(&path).unwrap();
        if let Some(position) = bytes.windows(needle.len()).position(|window| window == needle) {
            bytes[position + 3] ^= 0x20;
            std::fs::write(&path, &bytes).unwrap();
            damaged = true;
        }
    }
    assert!(damaged, "the record was found in the log files");
    let placement = Placement::new(vec![1, 2, 3], 4);
    match Storage::open(dir.path()).and_then(|storage| storage.recover(&placement, 1, 1 << 20)) {
        Err(error) => println!("refused to open: {error}"),
        Ok((recovered, _quarantined)) => {
            if let Some(replica) = recovered.get(&2) {
                let store = &replica.storage;
                let served = settle_cluster::raft::Storage::entries(
                    store,
                    store.compacted_index() + 1,
                    store.last_index() + 1,
                    None,
                    settle_cluster::raft::GetEntriesContext::empty(false),
                )
                .unwrap();
                for served_entry in served {
                    assert_eq!(
                        &served_entry.data[..],
                        format!("MARKERMARKERMARKER-{}", served_entry.index).as_bytes(),
                        "altered bytes served"
                    );
                }
            }
        }
    }
}

/// A crash mid-append leaves a torn last write: the log store opens, cuts it off, and every
/// write group before it reads back whole (the simulator's process crash keeps such a prefix).
#[test]
fn a_torn_last_write_is_cut_off_and_earlier_groups_survive() {
    let dir = tempfile::tempdir().unwrap();
    let last_round = 6;
    {
        let mut storage = Storage::open(dir.path()).unwrap();
        for round in 1..=last_round {
            let marker = if round == last_round { "TORNTORNTORN" } else { "whole" };
            let writes = vec![write(1, vec![entry(round, 1, marker)], Some(hard_state(1, round)), None)];
            storage.write_group(&[IoJob::Persist(PersistRound { id: round, writes })]).unwrap();
        }
    }
    // Cut the file holding the last write in the middle of that write's record.
    let needle = b"TORNTORNTORN-6";
    let mut torn = false;
    for file in std::fs::read_dir(dir.path().join("raft-log")).unwrap() {
        let path = file.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        if let Some(position) = bytes.windows(needle.len()).position(|window| window == needle) {
            std::fs::write(&path, &bytes[..position + needle.len() / 2]).unwrap();
            torn = true;
        }
    }
    assert!(torn, "the last write was found in the log files");
    let storage = Storage::open(dir.path()).expect("a torn tail does not stop the store from opening");
    let durable = load(&storage);
    let shard = &durable[&1];
    assert_eq!(shard.last_index(), last_round - 1, "the torn write is cut off, the ones before it survive");
    assert_eq!(shard.hard_state.commit, last_round - 1);
}
