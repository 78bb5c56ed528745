//! The deterministic simulator of the cluster core (`sim`), its fault plans (`faults`), the
//! client workload (`workload`), the named invariant checkers (`checkers`), and one seed's run
//! from start to verdict (`run`).

pub mod checkers;
pub mod faults;
pub mod run;
pub mod sim;
pub mod workload;
