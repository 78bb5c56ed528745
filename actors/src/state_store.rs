//! The state store: sled (the design card's store) holding each shard's latest checkpoint — the
//! ledger at an applied index, with that index in the same record. Anything it lost in a crash
//! is replayed from the log store, which is compacted only behind a checkpoint stored here.

use crate::record::{open, seal_encoded, RecordError};
use protobuf::Message as _;
use serde::{Deserialize, Serialize};
use settle_cluster::ids::ShardId;
use settle_cluster::raft::eraftpb::ConfState;
use settle_cluster::recovery::CheckpointView;
use settle_cluster::replica::Checkpoint;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum StateStoreError {
    #[error("state store: {0}")]
    Sled(#[from] sled::Error),
    #[error("state store shard {shard}: {source}")]
    Record { shard: ShardId, source: RecordError },
    #[error("state store shard {shard}: undecodable checkpoint: {detail}")]
    Decode { shard: ShardId, detail: String },
}

/// A stored checkpoint, as read back.
#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    index: u64,
    term: u64,
    conf_state: Vec<u8>,
    ledger: Vec<u8>,
}

/// What `save` writes: `CheckpointRecord` borrowing the ledger bytes. bincode writes a `&[u8]`
/// exactly as a `Vec<u8>` (length, then the bytes), so the stored bytes are the same.
#[derive(Serialize)]
struct CheckpointRecordRef<'a> {
    index: u64,
    term: u64,
    conf_state: Vec<u8>,
    ledger: &'a [u8],
}

pub struct StateStore {
    db: sled::Db,
    checkpoints: sled::Tree,
}

impl StateStore {
    pub fn open(path: &Path) -> Result<StateStore, StateStoreError> {
        let db = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            .cache_capacity(64 << 20)
            // `save` flushes before it returns: no background flusher.
            .flush_every_ms(None)
            .use_compression(false)
            .open()?;
        let checkpoints = db.open_tree("checkpoints")?;
        Ok(StateStore { db, checkpoints })
    }

    /// Stores checkpoints and flushes before returning.
    pub fn save(&self, checkpoints: &[CheckpointView<'_>]) -> Result<(), StateStoreError> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for checkpoint in checkpoints {
            let record = CheckpointRecordRef {
                index: checkpoint.index,
                term: checkpoint.term,
                conf_state: checkpoint.conf_state.write_to_bytes().expect("in-memory encoding"),
                ledger: checkpoint.ledger,
            };
            batch.insert(&checkpoint.shard.to_be_bytes(), seal_encoded(&record));
        }
        self.checkpoints.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Every shard's checkpoint; a checkpoint that fails its checksum or does not decode comes
    /// back as `Err` for that shard (recovery then rebuilds the shard from the log or the leader).
    pub fn load(&self) -> Result<BTreeMap<ShardId, Result<Checkpoint, StateStoreError>>, StateStoreError> {
        let mut loaded = BTreeMap::new();
        for row in self.checkpoints.iter() {
            let (key, value) = row?;
            let shard = ShardId::from_be_bytes(
                key.as_ref().try_into().map_err(|_| StateStoreError::Decode { shard: 0, detail: format!("bad key {key:?}") })?,
            );
            loaded.insert(shard, decode_checkpoint(shard, &value));
        }
        Ok(loaded)
    }
}

fn decode_checkpoint(shard: ShardId, value: &[u8]) -> Result<Checkpoint, StateStoreError> {
    let payload = open(value).map_err(|source| StateStoreError::Record { shard, source })?;
    let record: CheckpointRecord =
        crate::record::decode_payload(payload).map_err(|error| StateStoreError::Decode { shard, detail: error.to_string() })?;
    let conf_state =
        ConfState::parse_from_bytes(&record.conf_state).map_err(|error| StateStoreError::Decode { shard, detail: error.to_string() })?;
    // The ledger itself is checked when recovery decodes it.
    Ok(Checkpoint { shard, index: record.index, term: record.term, conf_state, ledger: record.ledger })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::seal;

    fn checkpoint(shard: ShardId, index: u64, ledger: Vec<u8>) -> Checkpoint {
        Checkpoint { shard, index, term: 3, conf_state: ConfState::from((vec![1, 2, 3], vec![])), ledger }
    }

    /// Saved checkpoints read back field for field, across a reopen.
    #[test]
    fn saved_checkpoints_read_back_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let saved = vec![checkpoint(0, 12, vec![1, 2, 3, 4]), checkpoint(5, 40, (0..=255).collect())];
        {
            let store = StateStore::open(dir.path()).unwrap();
            let views: Vec<CheckpointView<'_>> = saved.iter().map(CheckpointView::from).collect();
            store.save(&views).unwrap();
        }
        let store = StateStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.len(), saved.len());
        for expected in &saved {
            let got = loaded[&expected.shard].as_ref().unwrap();
            assert_eq!((got.shard, got.index, got.term), (expected.shard, expected.index, expected.term));
            assert_eq!(got.conf_state, expected.conf_state);
            assert_eq!(got.ledger, expected.ledger);
        }
    }

    /// The borrowed record is stored byte for byte as the owned one, so existing files read back.
    #[test]
    fn the_borrowed_record_has_the_bytes_of_the_owned_one() {
        let ledger: Vec<u8> = (0..300u32).map(|n| u8::try_from(n % 251).unwrap()).collect();
        let conf_state = ConfState::from((vec![1, 2, 3], vec![])).write_to_bytes().unwrap();
        let owned = CheckpointRecord { index: 9, term: 2, conf_state: conf_state.clone(), ledger: ledger.clone() };
        let borrowed = CheckpointRecordRef { index: 9, term: 2, conf_state, ledger: &ledger };
        let stored = seal_encoded(&borrowed);
        assert_eq!(stored, seal(&settle_cluster::codec::encode(crate::record::STORE_FORMAT_VERSION, &owned)));
        let checkpoint = decode_checkpoint(4, &stored).unwrap();
        assert_eq!((checkpoint.index, checkpoint.term, checkpoint.ledger), (9, 2, ledger));
    }
}
