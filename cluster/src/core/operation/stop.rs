//! Stop orders: routed to the account's shard, one proposal each (`operation::propose_single`),
//! answered with the outcome. Reading an account's stops goes through `read.rs` like every read.

use crate::ids::ShardId;
use crate::ledger::StopCmd;
use crate::placement::Placement;

/// The shard of the account a stop names.
pub(in crate::core) fn shard(placement: &Placement, command: &StopCmd) -> ShardId {
    placement.shard_of(command.account())
}
