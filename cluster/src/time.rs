//! Time as the core sees it: two clock readings passed in by the driver (or the simulator).

/// The two clocks the driver reads: the wall clock stamps log entries (what clients see as
/// `created_at`); the monotonic clock drives every timer and deadline, so a wall-clock jump
/// cannot stall re-drives or expire calls early. Inside the core neither ever goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    pub wall_ms: u64,
    pub monotonic_ms: u64,
}

impl Time {
    /// This time moved forward to `later` on each clock (never back).
    pub fn advanced_to(self, later: Time) -> Time {
        Time { wall_ms: self.wall_ms.max(later.wall_ms), monotonic_ms: self.monotonic_ms.max(later.monotonic_ms) }
    }

    /// Monotonic milliseconds since `earlier` (0 if it is in the future).
    pub fn since_ms(&self, earlier_monotonic_ms: u64) -> u64 {
        self.monotonic_ms.saturating_sub(earlier_monotonic_ms)
    }
}
