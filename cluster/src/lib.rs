//! The deterministic core of Settle. Nothing in this crate does IO, reads a clock, spawns a
//! thread or draws from an unseeded RNG: every input arrives through a method call (entries,
//! messages, ticks with a timestamp, a seed) and every effect leaves as a returned value. That is
//! what lets the simulator in `chaos/` drive the same code production runs.

pub mod ids;
pub mod ledger;
pub mod message;
pub mod money;
pub mod placement;
pub mod planted;
pub mod recovery;
pub mod replica;
pub mod storage;

mod core;
pub use crate::core::{
    AdminError, Buckets, CallId, CoreLimits, CoreStats, Effect, NodeConfig, NodeCore, PersistRound, RecoveredShard, ShardStatus, Time,
};
pub use raft;
