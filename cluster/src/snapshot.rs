//! Snapshots for followers that fell behind the compacted log, streamed instead of sent whole.
//! The raft snapshot message carries only a `SnapshotDescriptor` (which offered snapshot, and the
//! applied point it is the state at); the follower then fetches the records in chunks of at
//! most `SNAPSHOT_CHUNK_BYTES_MAX` (`PeerMessage::SnapshotFetch` / `SnapshotChunk`), stages them
//! in its store under a new generation, and only then hands the raft message to raft, which
//! installs it: a generation switch. Nothing proportional to the shard's size is sent in one
//! message or done in one step of the driver.

use crate::codec::{self, CodecError};
use crate::ids::ShardId;
use crate::ledger::AppliedMark;
use serde::{Deserialize, Serialize};

/// The most bytes of records one chunk carries.
pub const SNAPSHOT_CHUNK_BYTES_MAX: usize = 1 << 20;
/// The most records one chunk carries.
pub const SNAPSHOT_CHUNK_ENTRIES_MAX: usize = 16_384;

/// The layout of snapshot descriptors.
pub const SNAPSHOT_FORMAT_VERSION: u8 = 1;

/// What a raft snapshot message carries: the offered snapshot to fetch, and its applied point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotDescriptor {
    pub shard: ShardId,
    pub snapshot_id: u64,
    pub mark: AppliedMark,
}

impl SnapshotDescriptor {
    pub fn encode(&self) -> Vec<u8> {
        codec::encode(SNAPSHOT_FORMAT_VERSION, self)
    }

    pub fn decode(bytes: &[u8]) -> Result<SnapshotDescriptor, CodecError> {
        codec::decode(SNAPSHOT_FORMAT_VERSION, bytes)
    }
}
