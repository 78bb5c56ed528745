//! Logging: `tracing` with text or JSON lines, `RUST_LOG`-style filtering, and raft-rs's own
//! `slog` records bridged into `tracing` (target `raft`, with the shard and raft peer as fields).

pub fn init(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,raft=warn".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    let result = if format == "json" { builder.json().flatten_event(true).try_init() } else { builder.try_init() };
    // A second init (tests) keeps the first subscriber.
    drop(result);
}

/// A `slog` drain that re-emits raft-rs's records as `tracing` events.
pub struct RaftToTracing;

impl slog::Drain for RaftToTracing {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut fields = Fields(String::new());
        let _ = slog::KV::serialize(values, record, &mut fields);
        let _ = slog::KV::serialize(&record.kv(), record, &mut fields);
        let message = record.msg().to_string();
        let fields = fields.0.trim_start().to_string();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", %fields, "{message}"),
            slog::Level::Warning => tracing::warn!(target: "raft", %fields, "{message}"),
            slog::Level::Info => tracing::info!(target: "raft", %fields, "{message}"),
            slog::Level::Debug => tracing::debug!(target: "raft", %fields, "{message}"),
            slog::Level::Trace => tracing::trace!(target: "raft", %fields, "{message}"),
        }
        Ok(())
    }
}

struct Fields(String);

impl slog::Serializer for Fields {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}
