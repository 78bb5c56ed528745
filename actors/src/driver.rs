//! The driver actor: the one thread that owns a node's `NodeCore`. Its mailboxes are bounded
//! channels — `DriverMail` from the HTTP edge and the process (client calls, status, admin),
//! frames from the peer-link actors, completions from the IO actor — and a tick. It feeds the
//! core, polls it, and carries out its effects: frames to the peer-link actors, rounds and
//! checkpoints to the IO actor, replies to the waiting HTTP handlers. A full client mailbox
//! answers `Overloaded`.

use crate::io::{io_actor, IoDone, IoJob, IoStats, Storage, StorageError};
use crate::transport::{self, Inbound, PeerTable, Transport, TransportStats};
use settle_cluster::ids::{NodeId, ShardId};
use settle_cluster::message::{PeerMessage, Reply, Request};
use settle_cluster::{AdminError, CallId, CoreStats, Effect, NodeConfig, NodeCore, ShardStatus, Time};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};

/// Unregistered nodes asking to join that a node remembers, and for how long.
const JOIN_REQUESTS_MAX: usize = 16;
const JOIN_REQUEST_KEPT: Duration = Duration::from_secs(60);

/// Inputs taken from each channel per wake-up before the core is polled.
const INPUTS_PER_POLL_MAX: usize = 4_096;

#[derive(Debug, Clone)]
pub struct DriverConfig {
    pub core: NodeConfig,
    pub data_dir: PathBuf,
    pub peer_listen: SocketAddr,
    /// Every other node's peer address: the bootstrap members' and the registered ones'.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// The node registry kept in the data dir (`identity::read_peers`); newer ones replace it.
    pub registry: settle_cluster::placement::NodeRegistry,
    /// Bounds of the peer port (frame size, connections, timeouts).
    pub peer_limits: crate::transport::PeerLimits,
    /// Client calls queued for the driver before new ones are refused.
    pub inbox_calls_max: usize,
    /// Persist rounds and checkpoints queued for the IO thread (the driver waits beyond it).
    pub io_queue_jobs_max: usize,
    /// This node's HTTP address and version, told to peers (for `/v1/cluster`, `settle status`).
    pub http_advertise: String,
    pub version: String,
    /// Certificate, key and CA (PEM files) for mutual TLS between peers; plain TCP without.
    pub peer_tls: Option<(PathBuf, PathBuf, PathBuf)>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(#[from] settle_cluster::raft::Error),
    #[error("peer listener on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("thread: {0}")]
    Thread(std::io::Error),
    #[error("peer tls: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// What the node reports about itself.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    pub node: NodeId,
    pub shards: Vec<ShardStatus>,
    pub calls_inflight: usize,
    pub rounds_inflight: usize,
    /// The account cache's budget over all shards here (`cache_mb`).
    pub cache_bytes_max: usize,
    pub stats: CoreStats,
    pub peers: Vec<PeerStatus>,
    /// The bootstrap members (the others joined later), the node registry's epoch, and the
    /// nodes retired from the cluster.
    pub bootstrap: Vec<NodeId>,
    pub registry_epoch: u64,
    pub retired: Vec<NodeId>,
    /// Nodes asking to join through this node, not registered yet, with the address they gave.
    pub join_requests: Vec<(NodeId, String)>,
}

/// What this node knows of another: its HTTP address and version as it introduced itself, and
/// whether they talk.
#[derive(Debug, Clone, Default)]
pub struct PeerStatus {
    pub id: NodeId,
    /// Its peer address (from `--cluster`, or the node registry).
    pub address: Option<SocketAddr>,
    pub http: Option<String>,
    pub version: Option<String>,
    pub started_ms: Option<u64>,
    /// The outbound link is connected.
    pub connected: bool,
    /// Milliseconds since a frame last arrived from it (None: never).
    pub last_heard_ms: Option<u64>,
}

/// The longest HTTP address or version a peer may introduce itself with.
const NODE_INFO_TEXT_BYTES_MAX: usize = 256;

/// Ticks between two introductions to every peer.
const NODE_INFO_EVERY_TICKS: u64 = 20;

/// What the driver actor's mailbox carries from the HTTP edge and the process.
enum DriverMail {
    Submit { request: Request, timeout_ms: u64, request_id: Option<String>, reply: oneshot::Sender<Reply> },
    Status(oneshot::Sender<NodeStatus>),
    TransferLeader { shard: ShardId, to: NodeId, reply: oneshot::Sender<Result<(), AdminError>> },
    Drain { draining: bool, reply: oneshot::Sender<usize> },
    Stop,
}

/// The handle the HTTP edge and the process use to talk to the driver.
#[derive(Clone)]
pub struct DriverHandle {
    commands: mpsc::Sender<DriverMail>,
    pub io_stats: Arc<IoStats>,
    pub loop_stats: Arc<LoopStats>,
    pub transport_stats: Arc<TransportStats>,
    /// The node's peers: addresses, fault switches, link states.
    pub peers: Arc<PeerTable>,
    /// The state store, for its engine's gauges (`/metrics`).
    pub state_store: Arc<crate::state_store::StateStore>,
}

impl DriverHandle {
    /// Runs a client request through the cluster, answering `Unavailable` at the deadline and
    /// `Overloaded` when the inbox is full; the client's request id (if any) is carried to every
    /// node the request touches.
    pub async fn call_traced(&self, request: Request, timeout: Duration, request_id: Option<String>) -> Reply {
        let (reply, answer) = oneshot::channel();
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let command = DriverMail::Submit { request, timeout_ms, request_id, reply };
        if self.commands.try_send(command).is_err() {
            return Reply::Overloaded;
        }
        answer.await.unwrap_or(Reply::Unavailable)
    }

    /// Client calls queued for the driver (its mailbox depth).
    pub fn inbox_depth(&self) -> usize {
        self.commands.max_capacity() - self.commands.capacity()
    }

    pub async fn status(&self) -> Option<NodeStatus> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(DriverMail::Status(reply)).await.ok()?;
        answer.await.ok()
    }

    /// Asks this node's leader of `shard` to hand leadership to `to`.
    pub async fn transfer_leader(&self, shard: ShardId, to: NodeId) -> Option<Result<(), AdminError>> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(DriverMail::TransferLeader { shard, to, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Starts or stops draining; answers how many shards this node still leads.
    pub async fn drain(&self, draining: bool) -> Option<usize> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(DriverMail::Drain { draining, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Asks the driver to stop after the IO already queued is durable.
    pub async fn stop(&self) {
        let _ = self.commands.send(DriverMail::Stop).await;
    }
}

/// Wall-clock milliseconds: the timestamps the core stamps on entries and the deadlines of calls.
pub fn now_ms() -> u64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
}

/// Recovers the node's state, starts the IO thread, the peer transport and the driver thread.
pub fn start(config: DriverConfig, logger: slog::Logger) -> Result<(DriverHandle, std::thread::JoinHandle<()>), StartError> {
    let storage = Storage::open(&config.data_dir)?;
    let per_shard = settle_cluster::cache_bytes_per_shard(config.core.cache_bytes_max, &config.core.placement, config.core.node);
    let (recovered, quarantined) = storage.recover(&config.core.placement, config.core.node, per_shard)?;
    let engine = storage.state();
    let state_store: std::sync::Arc<dyn settle_cluster::store::KvStore> = engine.clone();
    let recovered_shards = recovered.len();
    let incarnation = now_ms() ^ rand::random::<u64>();
    let seed = rand::random::<u64>();
    let mut core =
        NodeCore::new(config.core.clone(), recovered, quarantined.keys().copied().collect(), state_store, incarnation, seed, &logger)?;
    core.set_registry(config.registry.clone());
    tracing::info!(node = config.core.node, recovered_shards, "node core ready");

    // One network thread: on small machines every extra thread is a context switch per frame.
    let network = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("settle-net")
        .enable_all()
        .build()
        .map_err(StartError::Thread)?;
    let (inbound_sender, inbound) = mpsc::channel::<Inbound>(4_096);
    let tls = match &config.peer_tls {
        Some((cert, key, ca)) => Some(Arc::new(crate::tls::load(cert, key, ca)?)),
        None => None,
    };
    let transport = transport::start(
        network.handle(),
        config.core.node,
        config.peer_listen,
        config.peers.clone(),
        config.peer_limits,
        inbound_sender,
        tls,
    )
    .map_err(|source| StartError::Listen { address: config.peer_listen, source })?;

    let io_stats = Arc::new(IoStats::default());
    let (io_jobs, io_receiver) = std::sync::mpsc::sync_channel::<IoJob>(config.io_queue_jobs_max);
    // Room for a report per queued job and more: the IO thread must never wait on the driver
    // while the driver waits on it.
    let (io_done_sender, io_done) = mpsc::channel::<Vec<IoDone>>(config.io_queue_jobs_max * 4 + 64);
    let io_thread = {
        let stats = io_stats.clone();
        std::thread::Builder::new()
            .name("settle-io".to_string())
            .spawn(move || io_actor(storage, io_receiver, |done| io_done_sender.blocking_send(done).is_ok(), stats))
            .map_err(StartError::Thread)?
    };

    let (commands_sender, commands) = mpsc::channel(config.inbox_calls_max);
    let loop_stats = Arc::new(LoopStats::default());
    let handle = DriverHandle {
        commands: commands_sender,
        io_stats,
        loop_stats: loop_stats.clone(),
        transport_stats: transport.stats.clone(),
        peers: transport.peers.clone(),
        state_store: engine,
    };
    let bootstrap: BTreeMap<NodeId, String> = config
        .peers
        .iter()
        .filter(|(id, _)| config.core.placement.nodes().contains(id))
        .map(|(id, address)| (*id, address.to_string()))
        .collect();
    let own_address = config.peers.get(&config.core.node).copied().unwrap_or(config.peer_listen);
    let tick = Duration::from_millis(config.core.raft.tick_ms);
    let driver_thread = std::thread::Builder::new()
        .name("settle-driver".to_string())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("driver runtime");
            let info = NodeInfo { http: config.http_advertise.clone(), version: config.version.clone(), started_ms: now_ms() };
            let mut driver = DriverActor {
                core,
                transport,
                io_jobs,
                replies: BTreeMap::new(),
                next_call: CallId(1),
                started: Instant::now(),
                info,
                peers: BTreeMap::new(),
                ticks: 0,
                links_up: BTreeMap::new(),
                leaders_seen: BTreeMap::new(),
                node_info_rejected: 0,
                joins_refused: 0,
                join_requests: BTreeMap::new(),
                data_dir: config.data_dir.clone(),
                bootstrap,
                own_address,
                loop_stats,
                last_slow_logged: None,
            };
            runtime.block_on(driver.run(tick, commands, inbound, io_done));
            // Closing the job channel lets the IO thread finish what is queued and exit.
            drop(driver.io_jobs);
            let _ = io_thread.join();
            drop(network);
            tracing::info!("node driver stopped");
        })
        .map_err(StartError::Thread)?;
    Ok((handle, driver_thread))
}

/// How long the driver thread's loop iterations take: one iteration handles a bounded batch of
/// inputs, then polls the core and hands its effects out. An iteration over 100 ms stalls
/// every shard of the node (heartbeats included). Measured twice: wall time (what the shards
/// wait) and the thread's own CPU time (our work: over 100 ms is a bug; wall time far above it
/// means the thread waited for a core or a lock).
pub struct LoopStats {
    pub iteration_seconds: prometheus::Histogram,
    pub iteration_cpu_seconds: prometheus::Histogram,
    wall_max: WindowMax,
    cpu_max: WindowMax,
}

/// The window of `LoopStats::recent_max_seconds`.
pub const LOOP_MAX_WINDOW_SECS: u64 = 10;

/// The largest value recorded in the current and the previous window of `LOOP_MAX_WINDOW_SECS`.
struct WindowMax {
    window: AtomicU64,
    max_us_current: AtomicU64,
    max_us_previous: AtomicU64,
    started: Instant,
}

impl WindowMax {
    fn new() -> WindowMax {
        WindowMax {
            window: AtomicU64::new(0),
            max_us_current: AtomicU64::new(0),
            max_us_previous: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Only one thread records.
    fn record(&self, value: Duration) {
        let window = self.started.elapsed().as_secs() / LOOP_MAX_WINDOW_SECS;
        if self.window.load(Ordering::Relaxed) != window {
            let last = self.max_us_current.swap(0, Ordering::Relaxed);
            let adjacent = self.window.load(Ordering::Relaxed) + 1 == window;
            self.max_us_previous.store(if adjacent { last } else { 0 }, Ordering::Relaxed);
            self.window.store(window, Ordering::Relaxed);
        }
        let micros = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.max_us_current.fetch_max(micros, Ordering::Relaxed);
    }

    /// The largest value over the last one to two windows (10–20 s), in seconds.
    fn recent_max_seconds(&self) -> f64 {
        let window = self.started.elapsed().as_secs() / LOOP_MAX_WINDOW_SECS;
        let recorded = self.window.load(Ordering::Relaxed);
        let micros = if recorded == window {
            self.max_us_current.load(Ordering::Relaxed).max(self.max_us_previous.load(Ordering::Relaxed))
        } else if recorded + 1 == window {
            self.max_us_current.load(Ordering::Relaxed)
        } else {
            0
        };
        micros as f64 / 1e6
    }
}

impl Default for LoopStats {
    fn default() -> Self {
        let buckets = vec![0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let wall =
            prometheus::HistogramOpts::new("driver_loop_iteration_seconds", "Time one driver loop iteration took (inputs, poll, effects)")
                .buckets(buckets.clone());
        let cpu = prometheus::HistogramOpts::new(
            "driver_loop_iteration_cpu_seconds",
            "CPU time the driver thread used in one loop iteration (its own work, without waiting for a core or a lock)",
        )
        .buckets(buckets);
        LoopStats {
            iteration_seconds: prometheus::Histogram::with_opts(wall).expect("valid histogram"),
            iteration_cpu_seconds: prometheus::Histogram::with_opts(cpu).expect("valid histogram"),
            wall_max: WindowMax::new(),
            cpu_max: WindowMax::new(),
        }
    }
}

impl LoopStats {
    /// Records one iteration (only the driver thread calls this).
    fn record(&self, took: Duration, cpu: Duration) {
        self.iteration_seconds.observe(took.as_secs_f64());
        self.iteration_cpu_seconds.observe(cpu.as_secs_f64());
        self.wall_max.record(took);
        self.cpu_max.record(cpu);
    }

    /// The longest iteration (wall time) over the last 10–20 s, in seconds.
    pub fn recent_max_seconds(&self) -> f64 {
        self.wall_max.recent_max_seconds()
    }

    /// The most CPU one iteration used over the last 10–20 s, in seconds.
    pub fn recent_max_cpu_seconds(&self) -> f64 {
        self.cpu_max.recent_max_seconds()
    }
}

/// A driver-loop iteration this long is logged (with where the time went), at most once per
/// `SLOW_ITERATION_LOG_EVERY`.
const SLOW_ITERATION: Duration = Duration::from_millis(100);
const SLOW_ITERATION_LOG_EVERY: Duration = Duration::from_secs(10);

/// CPU time this thread has used: against wall time it tells our own slowness from waiting for
/// a core (on a machine with more runnable threads than cores).
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid, writable timespec; the call only writes it.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    if status != 0 {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

/// What woke the driver loop.
enum Woke {
    Io(Vec<IoDone>),
    Peer(NodeId, Vec<PeerMessage>),
    Command(DriverMail),
    Tick,
    /// Nothing arrived, but the last poll left work for the next.
    More,
}

struct NodeInfo {
    http: String,
    version: String,
    started_ms: u64,
}

struct DriverActor {
    core: NodeCore,
    transport: Transport,
    io_jobs: std::sync::mpsc::SyncSender<IoJob>,
    replies: BTreeMap<CallId, oneshot::Sender<Reply>>,
    next_call: CallId,
    started: Instant,
    /// How this node introduces itself, and what peers said of themselves.
    info: NodeInfo,
    peers: BTreeMap<NodeId, (String, String, u64)>,
    ticks: u64,
    /// Whether each peer's link was up at the last tick.
    links_up: BTreeMap<NodeId, bool>,
    /// Each shard's leader and term at the last tick.
    leaders_seen: BTreeMap<ShardId, (Option<NodeId>, u64)>,
    /// Introductions dropped: from a node that is not a peer, or with implausible text.
    node_info_rejected: u64,
    /// Join requests from nodes the registry does not hold at the address they gave.
    joins_refused: u64,
    /// Nodes asking to join through this node that are not registered yet: id → (the peer
    /// address they gave, when they last asked), for `settle node add` without `--peer`.
    join_requests: BTreeMap<NodeId, (String, Instant)>,
    /// Where the peers file is kept, the bootstrap members' addresses, and this node's own.
    data_dir: PathBuf,
    bootstrap: BTreeMap<NodeId, String>,
    own_address: SocketAddr,
    loop_stats: Arc<LoopStats>,
    last_slow_logged: Option<Instant>,
}

impl DriverActor {
    async fn run(
        &mut self,
        tick: Duration,
        mut commands: mpsc::Receiver<DriverMail>,
        mut inbound: mpsc::Receiver<Inbound>,
        mut io_done: mpsc::Receiver<Vec<IoDone>>,
    ) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A poll cut at its work budget: look at the mailboxes (and the tick), then go on.
            let more = self.core.has_more_work();
            let woke = tokio::select! {
                biased;
                Some(done) = io_done.recv() => Woke::Io(done),
                Some((from, messages)) = inbound.recv() => Woke::Peer(from, messages),
                command = commands.recv() => match command {
                    Some(DriverMail::Stop) | None => return,
                    Some(command) => Woke::Command(command),
                },
                _ = ticker.tick() => Woke::Tick,
                () = std::future::ready(()), if more => Woke::More,
            };
            let iteration = Instant::now();
            let cpu_before = thread_cpu_time();
            let mut inputs = 1usize;
            match woke {
                Woke::Io(done) => self.io_done(done),
                Woke::Peer(from, messages) => self.peer(from, messages),
                Woke::Command(command) => self.command(command),
                Woke::Tick => self.tick(),
                Woke::More => {}
            }
            for _ in 0..INPUTS_PER_POLL_MAX {
                let mut progressed = false;
                if let Ok(done) = io_done.try_recv() {
                    self.io_done(done);
                    progressed = true;
                }
                if let Ok((from, messages)) = inbound.try_recv() {
                    self.peer(from, messages);
                    progressed = true;
                }
                match commands.try_recv() {
                    Ok(DriverMail::Stop) => return,
                    Ok(command) => {
                        self.command(command);
                        progressed = true;
                    }
                    Err(_) => {}
                }
                if !progressed {
                    break;
                }
                inputs += 1;
            }
            let took_inputs = iteration.elapsed();
            self.core.advance_clock(self.time());
            self.core.poll();
            let took_poll = iteration.elapsed();
            self.effects();
            let took = iteration.elapsed();
            let cpu = thread_cpu_time().saturating_sub(cpu_before);
            self.loop_stats.record(took, cpu);
            if took >= SLOW_ITERATION && self.last_slow_logged.is_none_or(|at| at.elapsed() >= SLOW_ITERATION_LOG_EVERY) {
                self.last_slow_logged = Some(Instant::now());
                tracing::warn!(
                    took_ms = took.as_millis(),
                    cpu_ms = cpu.as_millis(),
                    inputs_ms = took_inputs.as_millis(),
                    poll_ms = (took_poll - took_inputs).as_millis(),
                    effects_ms = (took - took_poll).as_millis(),
                    inputs,
                    "slow driver loop iteration (every shard here waited, heartbeats too)"
                );
            }
        }
    }

    fn tick(&mut self) {
        // A link that just went down: its node is likely dead, so its shards elect sooner.
        for (peer, entry) in self.transport.peers.all() {
            let connected = entry.state.connected.load(std::sync::atomic::Ordering::Relaxed);
            let was = self.links_up.insert(peer, connected).unwrap_or(false);
            if was && !connected {
                tracing::info!(peer, "peer link down; shards it leads will elect sooner");
                self.core.peer_unreachable(peer);
            }
        }
        self.core.tick(self.time());
        self.log_leader_changes();
        if self.ticks.is_multiple_of(NODE_INFO_EVERY_TICKS) {
            self.introduce();
        }
        self.ticks += 1;
    }

    /// One log line per shard whose leader changed since the last tick (SREs read elections
    /// from the logs as well as the metrics).
    fn log_leader_changes(&mut self) {
        for replica in self.core.replicas() {
            let shard = replica.shard();
            let now = (replica.leader(), replica.term());
            let before = self.leaders_seen.insert(shard, now);
            if before.is_some_and(|(leader, _)| leader != now.0) {
                tracing::info!(shard_id = shard, term = now.1, leader = ?now.0, index = replica.commit_index(), "shard leader changed");
            }
        }
    }

    /// Tells every peer who this node is (HTTP address, version) and whether it drains.
    fn introduce(&mut self) {
        let message = PeerMessage::NodeInfo {
            http: self.info.http.clone(),
            version: self.info.version.clone(),
            started_ms: self.info.started_ms,
            draining: self.core.draining(),
        };
        let peers: Vec<NodeId> = self.transport.peers().collect();
        for peer in peers {
            self.transport.send(peer, vec![message.clone()]);
        }
    }

    fn time(&self) -> Time {
        let monotonic_ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Time { wall_ms: now_ms(), monotonic_ms }
    }

    fn io_done(&mut self, done: Vec<IoDone>) {
        for item in done {
            match item {
                IoDone::Persisted { round } => self.core.persisted(round),
                IoDone::StatePersisted { marks } => self.core.state_persisted(&marks),
            }
        }
    }

    fn peer(&mut self, from: NodeId, messages: Vec<PeerMessage>) {
        for message in messages {
            match message {
                PeerMessage::NodeInfo { http, version, started_ms, draining } => {
                    // Untrusted like every frame: only a peer (the transport checked the
                    // sender against its certificate) may introduce itself, with bounded text.
                    let known = self.transport.peers().any(|peer| peer == from);
                    let plausible = http.len() <= NODE_INFO_TEXT_BYTES_MAX
                        && version.len() <= NODE_INFO_TEXT_BYTES_MAX
                        && http.starts_with("http")
                        && !http.chars().any(char::is_control)
                        && !version.chars().any(char::is_control);
                    if !known || !plausible {
                        self.node_info_rejected += 1;
                        continue;
                    }
                    self.peers.insert(from, (http, version, started_ms));
                    self.core.set_peer_draining(from, draining);
                }
                PeerMessage::Join { peer } => self.join_asked(from, peer),
                // Only a joining node reads a welcome (`join.rs`).
                PeerMessage::Welcome { .. } => {}
                message => {
                    if let PeerMessage::Leg { request_id: Some(request_id), shard, .. } = &message {
                        tracing::debug!(request_id = %request_id, shard_id = shard, from, "leg received");
                    }
                    self.core.receive(from, message);
                }
            }
        }
    }

    fn command(&mut self, command: DriverMail) {
        match command {
            DriverMail::Submit { request, timeout_ms, request_id, reply } => {
                let call = self.next_call;
                self.next_call = CallId(self.next_call.0 + 1);
                self.replies.insert(call, reply);
                self.core.submit_traced(call, request, timeout_ms, request_id);
            }
            DriverMail::Status(reply) => {
                let now = now_ms();
                let peers = self
                    .transport
                    .peers()
                    .map(|id| {
                        let entry = self.transport.peers.get(id);
                        let state = entry.as_ref().map(|entry| &entry.state);
                        let heard = state.map_or(0, |state| state.last_received_ms.load(std::sync::atomic::Ordering::Relaxed));
                        let info = self.peers.get(&id);
                        PeerStatus {
                            id,
                            address: entry.as_ref().map(|entry| entry.address),
                            http: info.map(|(http, _, _)| http.clone()),
                            version: info.map(|(_, version, _)| version.clone()),
                            started_ms: info.map(|(_, _, started)| *started),
                            connected: state.is_some_and(|state| state.connected.load(std::sync::atomic::Ordering::Relaxed)),
                            last_heard_ms: (heard > 0).then(|| now.saturating_sub(heard)),
                        }
                    })
                    .collect();
                let status = NodeStatus {
                    node: self.core.node(),
                    shards: self.core.shard_status(),
                    calls_inflight: self.core.calls_inflight(),
                    rounds_inflight: self.core.rounds_inflight(),
                    cache_bytes_max: self.core.cache_bytes_max(),
                    stats: {
                        let mut stats = self.core.stats().clone();
                        if self.node_info_rejected > 0 {
                            stats.peer_messages_rejected.insert("node_info_invalid", self.node_info_rejected);
                        }
                        if self.joins_refused > 0 {
                            stats.peer_messages_rejected.insert("join_not_registered", self.joins_refused);
                        }
                        stats
                    },
                    peers,
                    bootstrap: self.core.placement().nodes().to_vec(),
                    registry_epoch: self.core.registry().epoch,
                    retired: self.core.registry().retired.iter().copied().collect(),
                    join_requests: self
                        .join_requests
                        .iter()
                        .filter(|(_, (_, asked))| asked.elapsed() < JOIN_REQUEST_KEPT)
                        .map(|(id, (peer, _))| (*id, peer.clone()))
                        .collect(),
                };
                let _ = reply.send(status);
            }
            DriverMail::TransferLeader { shard, to, reply } => {
                let _ = reply.send(self.core.transfer_leader(shard, to));
            }
            DriverMail::Drain { draining, reply } => {
                self.core.set_draining(draining);
                self.introduce();
                let _ = reply.send(self.core.led_shards());
            }
            DriverMail::Stop => unreachable!("handled by the loop"),
        }
    }

    fn effects(&mut self) {
        for effect in self.core.drain_effects() {
            match effect {
                Effect::Send { to, messages } => self.transport.send(to, messages),
                Effect::Persist(round) => self.queue_io(IoJob::Persist(round)),
                Effect::PersistState { marks } => self.queue_io(IoJob::PersistState { marks }),
                Effect::DeleteRange { start, end } => self.queue_io(IoJob::DeleteRange { start, end }),
                Effect::Reply { call, reply } => {
                    if let Some(waiter) = self.replies.remove(&call) {
                        let _ = waiter.send(reply);
                    }
                }
                Effect::Registry(registry) => self.registry_changed(registry),
            }
        }
    }

    /// A newer node registry: link to every node in it and keep it in the data dir (a node
    /// that restarts links to them without being told again).
    fn registry_changed(&mut self, registry: settle_cluster::placement::NodeRegistry) {
        tracing::info!(epoch = registry.epoch, nodes = ?registry.nodes, "node registry changed");
        for node in &registry.retired {
            if self.transport.address(*node).is_some() {
                tracing::warn!(node, "node retired from the cluster: no more links to it");
            }
            self.transport.remove_peer(*node);
        }
        for (node, peer) in registry.nodes.iter().filter(|(node, _)| !registry.retired.contains(node)) {
            match peer.parse::<SocketAddr>() {
                Ok(address) => self.transport.add_peer(*node, address),
                Err(_) => tracing::warn!(node, peer, "registered peer address does not parse; not linked"),
            }
        }
        let known = crate::identity::KnownPeers { registry, bootstrap: self.bootstrap.clone() };
        if let Err(error) = crate::identity::write_peers(&self.data_dir, &known) {
            // The registry is replicated: a node that restarts without it hears it again.
            tracing::warn!(%error, "keeping the node registry in the data dir failed");
        }
    }

    /// A node started with `--join` asks for the cluster's layout. Only a node the registry
    /// holds at the address it gives is answered (over the link to its registered address).
    fn join_asked(&mut self, from: NodeId, peer: String) {
        if !settle_cluster::ledger::valid_peer_address(&peer) {
            self.joins_refused += 1;
            return;
        }
        let registry = self.core.registry();
        if registry.nodes.get(&from) != Some(&peer) || registry.retired.contains(&from) {
            self.joins_refused += 1;
            if !self.join_requests.contains_key(&from) {
                tracing::warn!(node = from, peer, "join refused: the node registry does not hold this node at that address");
            }
            // Kept (bounded, recent only) so an admin can register it without retyping its address.
            let fresh = |(_, asked): &(String, Instant)| asked.elapsed() < JOIN_REQUEST_KEPT;
            self.join_requests.retain(|_, request| fresh(request));
            if self.join_requests.len() < JOIN_REQUESTS_MAX || self.join_requests.contains_key(&from) {
                self.join_requests.insert(from, (peer, Instant::now()));
            }
            return;
        }
        self.join_requests.remove(&from);
        let mut nodes: Vec<(NodeId, String)> =
            self.transport.peers.all().into_iter().map(|(id, entry)| (id, entry.address.to_string())).collect();
        nodes.push((self.core.node(), self.own_address.to_string()));
        let registry = self.core.registry();
        let placement = self.core.placement();
        let welcome = PeerMessage::Welcome {
            shards: placement.shard_count(),
            bootstrap: placement.nodes().to_vec(),
            epoch: registry.epoch,
            nodes,
            retired: registry.retired.iter().copied().collect(),
        };
        tracing::info!(node = from, peer, "welcoming a joining node");
        self.transport.send(from, vec![welcome]);
    }

    /// Hands a job to the IO thread (waiting for room). Without the IO thread nothing can become
    /// durable, so the node stops.
    fn queue_io(&self, job: IoJob) {
        if self.io_jobs.send(job).is_err() {
            tracing::error!("io thread gone; stopping");
            std::process::exit(70);
        }
    }
}
