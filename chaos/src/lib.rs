//! Breaking the cluster on purpose and checking what survives.
//!
//! In simulation: the deterministic simulator of the cluster core (`sim`), its fault plans
//! (`faults`), the client workload (`workload`), the named invariant checkers (`checkers`), and
//! one seed's run from start to verdict (`run`).
//!
//! Against real processes over HTTP: the failover drills (`drill`), the load generator
//! (`bench`), the local cluster they start (`local`), and the checkers of what their clients
//! were told against what the cluster reads back (`history`, the same names as `checkers`).

pub mod backup;
pub mod bench;
pub mod checkers;
pub mod drill;
pub mod faults;
pub mod history;
pub mod http;
pub mod local;
pub mod membership;
pub mod run;
pub mod sim;
pub mod workload;
