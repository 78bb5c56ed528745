//! Prometheus metrics of one node, served on `/metrics`. Label values are bounded: endpoints
//! are route patterns, outcomes are status names and error codes, never ids.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use settle_actors::{DriverHandle, NodeStatus};
use std::sync::atomic::Ordering;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub transfers: IntCounterVec,
    shards_led: IntGauge,
    shards_without_leader: IntGauge,
    shard_term: IntGaugeVec,
    shard_is_leader: IntGaugeVec,
    pending_transfers: IntGauge,
    calls_inflight: IntGauge,
    io_syncs: IntGauge,
    io_rounds: IntGauge,
    io_entries: IntGauge,
    io_sync_seconds_total: prometheus::Gauge,
    peer_frames_sent: IntGauge,
    peer_frames_received: IntGauge,
    peer_batches_dropped: IntGauge,
}

impl Metrics {
    pub fn new(node: u64) -> Metrics {
        let labels = std::collections::HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(Some("settle".to_string()), Some(labels)).expect("valid registry");
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route pattern and status code"),
            &["endpoint", "status"],
        )
        .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route pattern")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let transfers = IntCounterVec::new(
            Opts::new("transfers_total", "Transfers answered by this node's API, by outcome (posted or an error code)"),
            &["outcome"],
        )
        .expect("valid metric");
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let metrics = Metrics {
            http_requests,
            http_latency,
            transfers,
            shards_led: gauge("shards_led", "Shards this node leads"),
            shards_without_leader: gauge("shards_without_leader", "Shards with a replica here that know no leader"),
            shard_term: IntGaugeVec::new(Opts::new("shard_term", "Raft term of each shard replica here"), &["shard"])
                .expect("valid metric"),
            shard_is_leader: IntGaugeVec::new(Opts::new("shard_is_leader", "1 when this node leads the shard"), &["shard"])
                .expect("valid metric"),
            pending_transfers: gauge("pending_transfers", "Cross-shard transfers prepared and not yet finalized, on shards led here"),
            calls_inflight: gauge("calls_inflight", "Client calls waiting for the cluster on this node"),
            io_syncs: gauge("io_syncs_total", "IO rounds written and synced (one sync each)"),
            io_rounds: gauge("io_persist_rounds_total", "Persist rounds made durable"),
            io_entries: gauge("io_entries_total", "Raft entries made durable"),
            io_sync_seconds_total: prometheus::Gauge::new("io_sync_seconds_total", "Time spent writing and syncing").expect("valid metric"),
            peer_frames_sent: gauge("peer_frames_sent_total", "Frames sent to peers"),
            peer_frames_received: gauge("peer_frames_received_total", "Frames received from peers"),
            peer_batches_dropped: gauge("peer_batches_dropped_total", "Message batches dropped because a link was backed up or down"),
            registry,
        };
        metrics.register();
        metrics
    }

    fn register(&self) {
        let registry = &self.registry;
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_latency.clone()),
            Box::new(self.transfers.clone()),
            Box::new(self.shards_led.clone()),
            Box::new(self.shards_without_leader.clone()),
            Box::new(self.shard_term.clone()),
            Box::new(self.shard_is_leader.clone()),
            Box::new(self.pending_transfers.clone()),
            Box::new(self.calls_inflight.clone()),
            Box::new(self.io_syncs.clone()),
            Box::new(self.io_rounds.clone()),
            Box::new(self.io_entries.clone()),
            Box::new(self.io_sync_seconds_total.clone()),
            Box::new(self.peer_frames_sent.clone()),
            Box::new(self.peer_frames_received.clone()),
            Box::new(self.peer_batches_dropped.clone()),
        ];
        for collector in collectors {
            registry.register(collector).expect("unique metric names");
        }
        let process = prometheus::process_collector::ProcessCollector::for_self();
        registry.register(Box::new(process)).expect("process collector registers once");
    }

    /// Refreshes the gauges from the driver and renders the text format.
    pub fn render(&self, driver: &DriverHandle, status: Option<&NodeStatus>) -> String {
        if let Some(status) = status {
            let mut led = 0;
            let mut leaderless = 0;
            let mut pending = 0;
            for shard in &status.shards {
                if shard.role == "none" {
                    continue;
                }
                let label = shard.id.to_string();
                let leads = shard.leader == Some(status.node);
                led += i64::from(leads);
                leaderless += i64::from(shard.leader.is_none());
                if leads {
                    pending += i64::try_from(shard.pending_transfers).unwrap_or(i64::MAX);
                }
                self.shard_term.with_label_values(&[&label]).set(i64::try_from(shard.term).unwrap_or(i64::MAX));
                self.shard_is_leader.with_label_values(&[&label]).set(i64::from(leads));
            }
            self.shards_led.set(led);
            self.shards_without_leader.set(leaderless);
            self.pending_transfers.set(pending);
            self.calls_inflight.set(i64::try_from(status.calls_inflight).unwrap_or(i64::MAX));
        }
        let load = |value: &std::sync::atomic::AtomicU64| i64::try_from(value.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        let io = &driver.io_stats;
        self.io_syncs.set(load(&io.syncs));
        self.io_rounds.set(load(&io.rounds));
        self.io_entries.set(load(&io.entries));
        let sync_micros = io.sync_micros_total.load(Ordering::Relaxed);
        self.io_sync_seconds_total.set(Duration::from_micros(sync_micros).as_secs_f64());
        let peers = &driver.transport_stats;
        self.peer_frames_sent.set(load(&peers.frames_sent));
        self.peer_frames_received.set(load(&peers.frames_received));
        self.peer_batches_dropped.set(load(&peers.batches_dropped));
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buffer).expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

use std::time::Duration;
