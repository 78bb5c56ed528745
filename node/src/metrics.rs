//! Prometheus metrics of one node, served on `/metrics`. Three sources: metrics this process
//! updates as it goes (HTTP, business outcomes, IO histograms, process collector); gauges read
//! from the node's status at scrape time (per shard: role, term, lag...); and counters the core
//! keeps itself (`CoreStats`), turned into families at scrape time. Label values are bounded:
//! route patterns, outcome codes, currencies from the built-in table, shard and node ids —
//! never account or transfer ids.

use prometheus::proto::{Bucket, Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use settle_actors::{DriverHandle, NodeStatus};
use settle_cluster::Buckets;
use settle_cluster::ShardRole;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

const PREFIX: &str = "settle_";

pub struct Metrics {
    registry: Registry,
    /// The process collector, without the `settle_` prefix: `process_cpu_seconds_total`,
    /// `process_resident_memory_bytes`... are the names every Prometheus client library uses,
    /// which dashboards and alerts written for any service expect.
    process_registry: Registry,
    node: String,
    started: Instant,
    pub http_requests: IntCounterVec,
    pub http_latency: HistogramVec,
    pub transfers: IntCounterVec,
    /// A float counter: a sum of amounts in minor units can pass u64 and must never wrap.
    pub transfer_volume: CounterVec,
    /// Refused authentications by code (no key, wrong key, bad signature, replayed nonce...).
    pub auth_failures: IntCounterVec,
    /// Requests refused by a key's rate limit, by the key's role.
    pub rate_limited: IntCounterVec,
    /// Audit events that could not be appended (their operations happened).
    pub audit_failures: prometheus::IntCounter,
}

impl Metrics {
    pub fn new(node: u64, driver: &DriverHandle) -> Metrics {
        let labels = std::collections::HashMap::from([("node".to_string(), node.to_string())]);
        let registry = Registry::new_custom(Some("settle".to_string()), Some(labels.clone())).expect("valid registry");
        let http_requests =
            IntCounterVec::new(Opts::new("http_requests_total", "HTTP requests by route pattern and status code"), &["endpoint", "status"])
                .expect("valid metric");
        let http_latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency by route pattern")
                .buckets(vec![0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["endpoint"],
        )
        .expect("valid metric");
        let transfers = IntCounterVec::new(
            Opts::new("transfers_total", "Transfers answered by this node's API, by outcome (posted, pending or an error code)"),
            &["outcome"],
        )
        .expect("valid metric");
        let transfer_volume = CounterVec::new(
            Opts::new("transfer_volume_minor_total", "Amount of posted transfers answered by this node, in minor units, by currency"),
            &["currency"],
        )
        .expect("valid metric");
        let auth_failures =
            IntCounterVec::new(Opts::new("auth_failures_total", "Requests refused as unauthenticated, by error code"), &["code"])
                .expect("valid metric");
        let rate_limited =
            IntCounterVec::new(Opts::new("rate_limited_total", "Requests refused by a key's rate limit, by role"), &["role"])
                .expect("valid metric");
        let audit_failures =
            prometheus::IntCounter::new("audit_append_failures_total", "Audit events that could not be appended to the audit chain")
                .expect("valid metric");
        let process_registry = Registry::new_custom(None, Some(labels.clone())).expect("valid registry");
        process_registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())).expect("unique metric names");
        let metrics = Metrics {
            registry,
            process_registry,
            node: node.to_string(),
            started: Instant::now(),
            http_requests,
            http_latency,
            transfers,
            transfer_volume,
            auth_failures,
            rate_limited,
            audit_failures,
        };
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(metrics.http_requests.clone()),
            Box::new(metrics.http_latency.clone()),
            Box::new(metrics.transfers.clone()),
            Box::new(metrics.transfer_volume.clone()),
            Box::new(metrics.auth_failures.clone()),
            Box::new(metrics.rate_limited.clone()),
            Box::new(metrics.audit_failures.clone()),
            Box::new(driver.io_stats.sync_seconds.clone()),
            Box::new(driver.io_stats.group_entries.clone()),
            Box::new(driver.io_stats.group_shards.clone()),
            Box::new(driver.loop_stats.iteration_seconds.clone()),
            Box::new(driver.loop_stats.iteration_cpu_seconds.clone()),
        ];
        for collector in collectors {
            metrics.registry.register(collector).expect("unique metric names");
        }
        metrics
    }

    /// The text exposition: registered metrics plus families built from the node's status and
    /// the data dir's disk use and state store engine (measured beforehand, off the async
    /// workers; absent when that measurement failed).
    pub fn render(&self, driver: &DriverHandle, status: Option<&NodeStatus>, disk: Option<&DiskUsage>) -> String {
        let mut families = self.registry.gather();
        families.extend(self.process_registry.gather());
        let mut scrape = Scrape { node: self.node.clone(), families: Vec::new() };
        scrape.gauge("build_info", "Version of this node (value 1)", vec![(vec![("version", env!("CARGO_PKG_VERSION").to_string())], 1.0)]);
        scrape.gauge("uptime_seconds", "Seconds since this node started", vec![(vec![], self.started.elapsed().as_secs_f64())]);
        if let Some(disk) = disk {
            scrape.gauge("data_dir_bytes", "Bytes used by this node's data dir", vec![(vec![], disk.data_dir_bytes as f64)]);
            if let Some((size, free)) = disk.filesystem_bytes {
                scrape.gauge("data_dir_fs_size_bytes", "Size of the filesystem holding the data dir", vec![(vec![], size as f64)]);
                scrape.gauge("data_dir_fs_free_bytes", "Bytes available to this process on that filesystem", vec![(vec![], free as f64)]);
            }
            scrape.state_store(&disk.engine);
        }
        scrape.gauge("driver_inbox_depth", "Client calls queued for the node driver", vec![(vec![], driver.inbox_depth() as f64)]);
        scrape.gauge(
            "driver_loop_recent_max_seconds",
            "Longest driver loop iteration over the last 10-20 s (over 0.1 s under load is a bug)",
            vec![(vec![], driver.loop_stats.recent_max_seconds())],
        );
        scrape.gauge(
            "driver_loop_recent_max_cpu_seconds",
            "Most CPU time one driver loop iteration used over the last 10-20 s (over 0.1 s is a bug in our work per iteration)",
            vec![(vec![], driver.loop_stats.recent_max_cpu_seconds())],
        );
        let load = |value: &std::sync::atomic::AtomicU64| value.load(Ordering::Relaxed) as f64;
        let io = &driver.io_stats;
        scrape.counter("io_syncs_total", "IO groups written and synced (one sync each)", vec![(vec![], load(&io.syncs))]);
        scrape.counter("io_persist_rounds_total", "Persist rounds made durable", vec![(vec![], load(&io.rounds))]);
        scrape.counter("io_entries_total", "Raft entries made durable", vec![(vec![], load(&io.entries))]);
        let peers = &driver.transport_stats;
        scrape.counter("peer_frames_sent_total", "Frames sent to peers", vec![(vec![], load(&peers.frames_sent))]);
        scrape.counter("peer_frames_received_total", "Frames received from peers", vec![(vec![], load(&peers.frames_received))]);
        scrape.counter("peer_bytes_sent_total", "Bytes sent to peers", vec![(vec![], load(&peers.bytes_sent))]);
        scrape.counter(
            "peer_batches_dropped_total",
            "Message batches dropped: link backed up, down or faulted",
            vec![(vec![], load(&peers.batches_dropped))],
        );
        scrape.counter(
            "peer_frames_rejected_total",
            "Frames refused: over the size cap, failing their checksum, undecodable, or from a sender its certificate does not name",
            vec![(vec![], load(&peers.frames_rejected))],
        );
        // Rejections of untrusted peer input: the transport's (connections and frames) and
        // the core's (messages), one family by reason.
        let mut rejected: Vec<Sample> =
            peers.rejections.counts().iter().map(|(reason, count)| (vec![("reason", reason.to_string())], *count as f64)).collect();
        if let Some(status) = status {
            rejected.extend(
                status.stats.peer_messages_rejected.iter().map(|(reason, count)| (vec![("reason", reason.to_string())], *count as f64)),
            );
        }
        scrape.counter("peer_messages_rejected_total", "Peer input dropped before it was acted on, by reason", rejected);
        let links = driver
            .peers
            .all()
            .into_iter()
            .map(|(peer, entry)| (vec![("peer", peer.to_string())], f64::from(u8::from(entry.state.connected.load(Ordering::Relaxed)))))
            .collect();
        scrape.gauge("peer_link_up", "1 while the outbound link to a peer is connected", links);
        if let Some(status) = status {
            scrape.node_status(status);
        }
        families.extend(scrape.families);
        let mut buffer = Vec::new();
        TextEncoder::new().encode(&families, &mut buffer).expect("text encoding");
        String::from_utf8(buffer).expect("prometheus text is UTF-8")
    }
}

/// Disk use of the data dir, and the state store's engine, for one scrape. Measuring it walks
/// the tree, calls statvfs and lists the store's write-ahead log files: blocking, so the handler runs
/// [`DiskUsage::measure`] on actix's blocking pool.
pub struct DiskUsage {
    pub data_dir_bytes: u64,
    /// Size and free space of the filesystem holding the data dir.
    pub filesystem_bytes: Option<(u64, u64)>,
    /// The state store's engine (its WAL size lists the store's directory: off the workers too).
    pub engine: settle_actors::state_store::EngineStats,
}

impl DiskUsage {
    pub fn measure(data_dir: &Path, store: &settle_actors::state_store::StateStore) -> DiskUsage {
        DiskUsage { data_dir_bytes: dir_bytes(data_dir), filesystem_bytes: filesystem_bytes(data_dir), engine: store.engine_stats() }
    }
}

/// Families built at scrape time, with the registry's prefix and node label.
struct Scrape {
    node: String,
    families: Vec<MetricFamily>,
}

type Sample = (Vec<(&'static str, String)>, f64);

/// The kinds of family whose samples are one number each.
#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Scrape {
    /// The state store's engine, sampled with the data dir (off the HTTP workers).
    fn state_store(&mut self, engine: &settle_actors::state_store::EngineStats) {
        self.gauge(
            "state_store_memtable_bytes",
            "Bytes in the state store's memtables (active and sealed); growing without bound means flushes stopped",
            vec![(vec![], engine.memtable_bytes as f64)],
        );
        self.gauge("state_store_flushes_queued", "Sealed memtables waiting for a flush", vec![(vec![], engine.flushes_queued as f64)]);
        self.gauge(
            "state_store_journal_bytes",
            "Bytes of the state store's journal on disk (replayed at start for what no flush covered)",
            vec![(vec![], engine.journal_bytes as f64)],
        );
        self.counter("state_store_compactions_total", "Compactions the state store finished", vec![(vec![], engine.compactions as f64)]);
        self.counter(
            "state_store_compaction_seconds_total",
            "Time the state store's compactions took, seconds",
            vec![(vec![], engine.compaction_seconds)],
        );
    }

    fn labels(&self, labels: &[(&'static str, String)]) -> Vec<LabelPair> {
        let mut pairs = Vec::new();
        for (name, value) in
            labels.iter().map(|(n, v)| (n.to_string(), v.clone())).chain(std::iter::once(("node".to_string(), self.node.clone())))
        {
            let mut pair = LabelPair::default();
            pair.set_name(name);
            pair.set_value(value);
            pairs.push(pair);
        }
        pairs
    }

    fn family(&mut self, name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) {
        if metrics.is_empty() {
            // The text encoder refuses a family without samples (a node hosting no shard after
            // a decommission, no stale message yet): leave it out, as Prometheus clients do.
            return;
        }
        let mut family = MetricFamily::default();
        family.set_name(format!("{PREFIX}{name}"));
        family.set_help(help.to_string());
        family.set_field_type(kind);
        family.set_metric(metrics);
        self.families.push(family);
    }

    fn gauge(&mut self, name: &str, help: &str, samples: Vec<Sample>) {
        self.single_value(Kind::Gauge, name, help, samples);
    }

    fn counter(&mut self, name: &str, help: &str, samples: Vec<Sample>) {
        self.single_value(Kind::Counter, name, help, samples);
    }

    /// A family of one-number samples: gauges or counters.
    fn single_value(&mut self, kind: Kind, name: &str, help: &str, samples: Vec<Sample>) {
        let metrics = samples
            .into_iter()
            .map(|(labels, value)| {
                let mut metric = Metric::default();
                metric.set_label(self.labels(&labels));
                match kind {
                    Kind::Gauge => {
                        let mut gauge = Gauge::default();
                        gauge.set_value(value);
                        metric.set_gauge(gauge);
                    }
                    Kind::Counter => {
                        let mut counter = Counter::default();
                        counter.set_value(value);
                        metric.set_counter(counter);
                    }
                }
                metric
            })
            .collect();
        let kind = match kind {
            Kind::Gauge => MetricType::GAUGE,
            Kind::Counter => MetricType::COUNTER,
        };
        self.family(name, help, kind, metrics);
    }

    /// A histogram in seconds from the core's millisecond buckets.
    fn histogram(&mut self, name: &str, help: &str, buckets: &Buckets) {
        let mut histogram = prometheus::proto::Histogram::default();
        let mut cumulative = 0;
        let mut list = Vec::new();
        for (bound, count) in buckets.bounds_ms.iter().zip(&buckets.counts) {
            cumulative += count;
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(*bound as f64 / 1000.0);
            bucket.set_cumulative_count(cumulative);
            list.push(bucket);
        }
        histogram.set_bucket(list);
        histogram.set_sample_count(buckets.count);
        histogram.set_sample_sum(buckets.sum_ms as f64 / 1000.0);
        let mut metric = Metric::default();
        metric.set_label(self.labels(&[]));
        metric.set_histogram(histogram);
        self.family(name, help, MetricType::HISTOGRAM, vec![metric]);
    }

    /// The account cache (accounts are virtual actors), summed over the replicas here.
    fn account_cache(&mut self, hosted: &[&settle_cluster::ShardStatus], budget_bytes: usize) {
        let sum = |value: &dyn Fn(&settle_cluster::ledger::CacheStats) -> u64| hosted.iter().map(|shard| value(&shard.cache)).sum::<u64>();
        let (activations, hits) = (sum(&|c| c.activations), sum(&|c| c.hits));
        self.counter(
            "account_activations_total",
            "Accounts activated into the cache (read from the state store, or created)",
            vec![(vec![], activations as f64)],
        );
        self.counter(
            "account_passivations_total",
            "Accounts passivated out of the cache to keep it within its budget",
            vec![(vec![], sum(&|c| c.passivations) as f64)],
        );
        self.counter("account_cache_hits_total", "Account uses that found the account active", vec![(vec![], hits as f64)]);
        self.gauge(
            "account_cache_hit_ratio",
            "Hits over hits plus activations since the node started",
            vec![(vec![], if hits + activations == 0 { 1.0 } else { hits as f64 / (hits + activations) as f64 })],
        );
        self.gauge("accounts_active", "Accounts active in the cache now", vec![(vec![], sum(&|c| c.active) as f64)]);
        self.gauge("account_cache_bytes", "Bytes the active accounts are counted for", vec![(vec![], sum(&|c| c.bytes) as f64)]);
        self.gauge("account_cache_budget_bytes", "The account cache's budget (cache_mb)", vec![(vec![], budget_bytes as f64)]);
    }

    fn node_status(&mut self, status: &NodeStatus) {
        let hosted: Vec<_> = status.shards.iter().filter(|shard| shard.role != ShardRole::None).collect();
        let shard_label = |id: u32| vec![("shard", id.to_string())];
        let per_shard = |value: &dyn Fn(&settle_cluster::ShardStatus) -> f64| {
            hosted.iter().map(|shard| (shard_label(shard.id), value(shard))).collect::<Vec<_>>()
        };
        let role_code = |role: &ShardRole| match role {
            ShardRole::Leader => 3.0,
            ShardRole::Candidate | ShardRole::PreCandidate => 2.0,
            ShardRole::Follower => 1.0,
            ShardRole::None | ShardRole::Quarantined => 0.0,
        };
        self.gauge(
            "shard_role",
            "Raft role of each shard replica here: 3 leader, 2 candidate, 1 follower, 0 quarantined",
            per_shard(&|s| role_code(&s.role)),
        );
        self.gauge(
            "shard_is_leader",
            "1 when this node leads the shard",
            per_shard(&|s| f64::from(u8::from(s.leader == Some(status.node)))),
        );
        self.gauge(
            "shard_has_leader",
            "1 when this replica knows a leader of the shard",
            per_shard(&|s| f64::from(u8::from(s.leader.is_some()))),
        );
        self.gauge("shard_term", "Raft term of each shard replica here", per_shard(&|s| s.term as f64));
        self.gauge("shard_commit_index", "Raft commit index of each shard replica here", per_shard(&|s| s.commit_index as f64));
        self.gauge("shard_applied_index", "Applied index of each shard replica here", per_shard(&|s| s.applied_index as f64));
        self.gauge(
            "shard_apply_lag_entries",
            "Committed but not yet applied entries",
            per_shard(&|s| s.commit_index.saturating_sub(s.applied_index) as f64),
        );
        self.gauge("shard_log_entries", "Raft log entries held (since the last compaction)", per_shard(&|s| s.log_entries as f64));
        self.gauge("shard_accounts", "Accounts on each shard replica here", per_shard(&|s| s.accounts as f64));
        self.counter(
            "shard_leader_changes_total",
            "Leader changes each shard replica here has seen",
            per_shard(&|s| s.leader_changes as f64),
        );
        self.gauge(
            "pending_transfers",
            "Cross-shard transfers in doubt (prepared, not finalized) on shards led here",
            per_shard(&|s| if s.leader == Some(status.node) { s.pending_transfers as f64 } else { 0.0 }),
        );
        self.gauge(
            "pending_transfer_oldest_seconds",
            "Age of the oldest in-doubt transfer on shards led here",
            per_shard(&|s| s.pending_oldest_ms as f64 / 1000.0),
        );
        self.account_cache(&hosted, status.cache_bytes_max);
        let quarantined = status.shards.iter().filter(|shard| shard.role == ShardRole::Quarantined).count();
        self.gauge(
            "shards_quarantined",
            "Replicas here kept out because a stored record failed its checksum",
            vec![(vec![], quarantined as f64)],
        );
        // Membership, as each replica here applied it: voters and learners of each shard (a
        // learner is a replica move in flight; fewer than 3 voters is under-replicated).
        self.gauge("shard_voters", "Voters of each shard, as its replica here applied them", per_shard(&|s| s.replicas.len() as f64));
        self.gauge(
            "shard_learners",
            "Learners (replicas being added by a move) of each shard here",
            per_shard(&|s| s.learners.len() as f64),
        );
        self.counter(
            "replicas_added_total",
            "Replicas this node started because a shard took it as a new member",
            vec![(vec![], status.stats.replicas_added as f64)],
        );
        self.counter(
            "replicas_rebuilt_total",
            "Quarantined replicas here dropped for an empty one the shard added back (a rebuild)",
            vec![(vec![], status.stats.replicas_rebuilt as f64)],
        );
        self.counter(
            "routers_corrected_total",
            "Legs from a node with an older view of a shard's members, answered with the members first",
            vec![(vec![], status.stats.routers_corrected as f64)],
        );
        self.counter(
            "replicas_removed_total",
            "Replicas this node stopped because a shard removed it",
            vec![(vec![], status.stats.replicas_removed as f64)],
        );
        self.counter(
            "peer_messages_stale_total",
            "Peer messages dropped because sender and receiver disagreed on a shard's members while it changed, by reason",
            status.stats.peer_messages_stale.iter().map(|(reason, count)| (vec![("reason", reason.to_string())], *count as f64)).collect(),
        );
        self.gauge("calls_inflight", "Client calls waiting for the cluster on this node", vec![(vec![], status.calls_inflight as f64)]);
        self.gauge(
            "rounds_inflight",
            "Persist rounds handed to the IO thread and not yet durable",
            vec![(vec![], status.rounds_inflight as f64)],
        );
        let stats = &status.stats;
        self.counter("raft_proposals_total", "Commands proposed to raft on shards led here", vec![(vec![], stats.proposals as f64)]);
        let dropped: Vec<Sample> = ["not_leader", "raft"]
            .iter()
            .map(|reason| (vec![("reason", reason.to_string())], stats.proposals_dropped.get(*reason).copied().unwrap_or(0) as f64))
            .collect();
        self.counter("raft_proposals_dropped_total", "Commands dropped before they were logged, by reason", dropped);
        self.histogram("raft_propose_apply_seconds", "From proposing an entry on the leader to applying it there", &stats.propose_apply_ms);
        self.histogram("raft_read_index_seconds", "From asking for a read index to holding it", &stats.read_index_ms);
        self.counter("raft_snapshots_sent_total", "Raft snapshots sent to lagging followers", vec![(vec![], stats.snapshots_sent as f64)]);
        self.counter(
            "raft_snapshots_installed_total",
            "Raft snapshots installed from a leader",
            vec![(vec![], stats.snapshots_installed as f64)],
        );
        self.counter(
            "snapshot_streams_started_total",
            "Snapshot streams this node started fetching from a shard leader",
            vec![(vec![], stats.snapshot_streams_started as f64)],
        );
        self.counter(
            "snapshot_bytes_sent_total",
            "Bytes of snapshot records streamed to followers",
            vec![(vec![], stats.snapshot_bytes_sent as f64)],
        );
        self.counter(
            "snapshot_bytes_received_total",
            "Bytes of snapshot records received from leaders",
            vec![(vec![], stats.snapshot_bytes_received as f64)],
        );
        self.counter("transfer_redrives_total", "Credit requests re-sent for in-doubt transfers", vec![(vec![], stats.redrives as f64)]);
        self.counter(
            "holds_expired_total",
            "Holds released at their expiry on shards this node leads",
            vec![(vec![], stats.holds_expired as f64)],
        );
        self.counter(
            "transfer_prevents_total",
            "Re-sent credit requests asking the payee shard to refuse (past prevent_after_ms)",
            vec![(vec![], stats.prevents as f64)],
        );
        self.counter(
            "legs_forwarded_total",
            "Request legs sent to another node's shard leader",
            vec![(vec![], stats.legs_forwarded as f64)],
        );
        self.counter(
            "calls_timed_out_total",
            "Client calls answered unavailable at their deadline",
            vec![(vec![], stats.calls_timed_out as f64)],
        );
        self.counter(
            "calls_overloaded_total",
            "Client calls refused because too much was in flight",
            vec![(vec![], stats.calls_overloaded as f64)],
        );
        self.counter(
            "raft_entries_undecodable_total",
            "Committed entries that did not decode, applied as nothing",
            vec![(vec![], stats.entries_undecodable as f64)],
        );
        self.counter(
            "replicas_quarantined_damaged_total",
            "Replicas stopped while running because a stored record did not decode",
            vec![(vec![], stats.replicas_quarantined_damaged as f64)],
        );
    }
}

/// Bytes in a directory tree (the data dir is a few files; walking it per scrape is cheap).
fn dir_bytes(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    let mut total = 0;
    for entry in entries.flatten() {
        match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => total += dir_bytes(&entry.path()),
            Ok(metadata) => total += metadata.len(),
            Err(_) => {}
        }
    }
    total
}

/// Size and free space of the filesystem holding `path` (statvfs).
fn filesystem_bytes(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: statvfs writes the struct on success; we read it only then.
    let result = unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) };
    if result != 0 {
        return None;
    }
    // SAFETY: statvfs returned 0, so the struct is initialised.
    let stats = unsafe { stats.assume_init() };
    let block = stats.f_frsize;
    Some((stats.f_blocks.saturating_mul(block), stats.f_bavail.saturating_mul(block)))
}
