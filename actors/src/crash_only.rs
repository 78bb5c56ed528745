//! Crash-only: a node whose driver, IO or transport actor dies must not linger half alive
//! (answering `/health/live` while its core is gone). `install` makes any panic, on any thread,
//! end the process with exit status 101 after logging it, so the supervisor (systemd,
//! Kubernetes, `settle local`) restarts the node and recovery takes over.

/// The exit status of a node that stopped on a panic.
pub const PANIC_EXIT_STATUS: i32 = 101;

/// Installs the process-wide panic hook. Call once, at the start of `settle start`.
pub fn install() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current().name().unwrap_or("unnamed").to_string();
        tracing::error!(thread = %thread, panic = %info, "a thread panicked; the node stops so it can be restarted");
        default_hook(info);
        std::process::exit(PANIC_EXIT_STATUS);
    }));
}
