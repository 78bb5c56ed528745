//! Customers and risk limits: one-command legs (`operation::propose_single`) on the customer's
//! shard, or on the shard a limits change names; reads go through `read.rs` like every read.

use crate::ids::ShardId;
use crate::ledger::CustomerCmd;
use crate::placement::Placement;

/// The shard of the customer a customer command names.
pub(in crate::core) fn shard(placement: &Placement, command: &CustomerCmd) -> ShardId {
    placement.customer_shard_of(command.customer())
}
