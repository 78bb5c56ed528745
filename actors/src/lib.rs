//! The runtime around the deterministic core: the driver thread that owns a node's `NodeCore`,
//! the IO thread with the two storage engines (raft-engine for the Raft log, sled for checkpoints), and
//! the peer transport. Everything that touches a socket, a disk, a clock or a thread for the
//! cluster lives here; the HTTP edge lives in `node`.

pub mod driver;
pub mod io;
pub mod log_store;
pub mod record;
pub mod state_store;
pub mod tls;
pub mod transport;

pub use driver::{now_ms, start, DriverConfig, DriverHandle, NodeStatus, PeerStatus, StartError};
