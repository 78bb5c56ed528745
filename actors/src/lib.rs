//! The runtime around the deterministic core, as actors with bounded mailboxes: the driver
//! actor (a thread owning a node's `NodeCore`), the IO actor (a thread owning the two storage
//! engines: raft-engine for the Raft log, sled for checkpoints), and the peer transport's
//! actors (a listener, and one link per remote node). Everything that touches a socket, a disk,
//! a clock or a thread for the cluster lives here; the HTTP edge lives in `node`. The accounts
//! are the core's virtual actors (see ARCHITECTURE.md); these are the runtime's.

pub mod crash_only;
pub mod driver;
pub mod identity;
pub mod io;
pub mod join;
pub mod log_store;
pub mod record;
pub mod state_store;
pub mod tls;
pub mod transport;

pub use driver::{now_ms, start, DriverConfig, DriverHandle, NodeStatus, PeerStatus, StartError};
