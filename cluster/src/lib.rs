//! The deterministic core of Settle. Nothing in this crate does IO, reads a clock, spawns a
//! thread or draws from an unseeded RNG: every input arrives through a method call (entries,
//! messages, ticks with a timestamp, a seed) and every effect leaves as a returned value. That is
//! what lets the simulator in `chaos/` drive the same code production runs.

pub mod backup;
pub mod codec;
pub mod ids;
pub mod ledger;
pub mod log;
pub mod message;
pub mod money;
pub mod placement;
pub mod planted;
pub mod recovery;
pub mod replica;
pub mod snapshot;
pub mod storage;
pub mod store;
pub mod time;

mod core;
pub use crate::core::{
    cache_bytes_per_shard, AdminError, Buckets, CoreLimits, CoreStats, Effect, NodeConfig, NodeCore, PersistRound, RecoveredShard,
    ShardRole, ShardStatus, CACHE_BYTES_DEFAULT,
};
pub use crate::ids::CallId;
pub use crate::time::Time;
pub use raft;
