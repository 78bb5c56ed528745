//! System commands (API keys, nonces, audit events): routed to the command's shard (the system
//! shard, or a nonce's own), one proposal each (`operation::propose_single`), answered with the
//! outcome. System reads go through `read.rs` like every read.

use crate::ids::ShardId;
use crate::ledger::SystemCmd;
use crate::placement::Placement;

/// The shard a system command belongs to.
pub(in crate::core) fn shard(placement: &Placement, command: &SystemCmd) -> ShardId {
    command.shard(placement.shard_count())
}
