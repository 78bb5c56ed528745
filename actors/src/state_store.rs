//! The state store: sled (the design card's store) holding each shard's latest checkpoint — the
//! ledger at an applied index, with that index in the same record. Anything it lost in a crash
//! is replayed from the log store, which is compacted only behind a checkpoint stored here.

use crate::record::{open, seal, RecordError};
use protobuf::Message as _;
use serde::{Deserialize, Serialize};
use settle_cluster::ids::ShardId;
use settle_cluster::raft::eraftpb::ConfState;
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

#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    index: u64,
    term: u64,
    conf_state: Vec<u8>,
    ledger: Vec<u8>,
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
            .flush_every_ms(Some(1_000))
            .use_compression(false)
            .open()?;
        let checkpoints = db.open_tree("checkpoints")?;
        Ok(StateStore { db, checkpoints })
    }

    /// Stores checkpoints and flushes before returning.
    pub fn save(&self, checkpoints: &[&Checkpoint]) -> Result<(), StateStoreError> {
        if checkpoints.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        for checkpoint in checkpoints {
            let record = CheckpointRecord {
                index: checkpoint.index,
                term: checkpoint.term,
                conf_state: checkpoint.conf_state.write_to_bytes().expect("in-memory encoding"),
                ledger: checkpoint.ledger.clone(),
            };
            let payload = settle_cluster::message::encode(&record);
            batch.insert(&checkpoint.shard.to_be_bytes(), seal(&payload));
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

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

fn decode_checkpoint(shard: ShardId, value: &[u8]) -> Result<Checkpoint, StateStoreError> {
    let payload = open(value).map_err(|source| StateStoreError::Record { shard, source })?;
    let record: CheckpointRecord =
        settle_cluster::message::decode(payload).map_err(|error| StateStoreError::Decode { shard, detail: error.to_string() })?;
    let conf_state =
        ConfState::parse_from_bytes(&record.conf_state).map_err(|error| StateStoreError::Decode { shard, detail: error.to_string() })?;
    // The ledger itself is checked when recovery decodes it.
    Ok(Checkpoint { shard, index: record.index, term: record.term, conf_state, ledger: record.ledger })
}
