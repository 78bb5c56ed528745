//! The deterministic simulator of the cluster core, its workloads and invariant checkers.

pub mod sim;
