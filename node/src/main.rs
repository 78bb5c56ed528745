//! `settle`: one binary for a node (`start`), a local cluster (`local`), and the tools around it.
//! The server and its command line live here; the tools that break a cluster or load it
//! (`local`, `bench`, `drill`, `sim`) live in `settle_chaos` and speak to nodes through
//! `settle_client`.

mod api;
mod backup_cli;
mod keys_cli;
mod logging;
mod metrics;
mod node_cli;
mod scheduler;
mod settings;
mod sim_cli;
mod status;

use actix_web::web;
use anyhow::Context;
use clap::{Parser, Subcommand};
use settings::{NodeSettings, StartFlags};
use settle_actors::identity::{self, DataDirIdentity};
use settle_actors::DriverConfig;
use settle_chaos::{bench, drill, local};
use settle_cluster::placement::Placement;
use settle_cluster::NodeConfig;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "settle", version, about = "Settle: a replicated payment ledger")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start one node of a cluster.
    Start(StartFlags),
    /// Start a whole local cluster (child processes on loopback) and stop it on Ctrl-C.
    Local(local::LocalFlags),
    /// Run the deterministic simulator over many seeds, or replay one (--seed S --trace).
    Sim(sim_cli::SimFlags),
    /// Benchmark a running cluster (--target) or a fresh local one.
    Bench(bench::BenchFlags),
    /// The cluster at a glance; exits non-zero when something needs attention.
    Status(status::StatusFlags),
    /// Take an online, consistent backup of every shard into a directory (admin key).
    Backup(backup_cli::BackupFlags),
    /// Prepare a node's empty data dir from a backup (then `settle start` it with the same flags).
    Restore(backup_cli::RestoreFlags),
    /// Run a failover drill under load and check nothing was lost (`settle drill heal` undoes faults).
    Drill(drill::DrillFlags),
    /// Make a cluster CA and a peer certificate per node (naming its node id and address).
    Certs(CertsFlags),
    /// Create, list and revoke API keys.
    #[command(subcommand)]
    Keys(keys_cli::KeysCommand),
    /// Check the tamper-evident audit log.
    #[command(subcommand)]
    Audit(keys_cli::AuditCommand),
    /// Move a node's replicas away: decommission a live node, replace a dead one (admin key).
    #[command(subcommand)]
    Node(node_cli::NodeCommand),
}

#[derive(clap::Args)]
struct CertsFlags {
    /// Where to write ca.pem, node-N.pem and node-N.key (created if missing).
    #[arg(long)]
    dir: std::path::PathBuf,
    /// The nodes and their peer IP addresses: 1=10.0.0.1,2=10.0.0.2,3=10.0.0.3.
    #[arg(long)]
    nodes: String,
}

/// `settle certs`: a throwaway cluster CA (its key is not kept: make new certificates to add a
/// node) and one certificate per node. Production clusters may use their own CA instead; see
/// the README for what a node certificate must carry.
fn certs(flags: CertsFlags) -> anyhow::Result<()> {
    let mut nodes = Vec::new();
    for part in flags.nodes.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let (id, ip) = part.split_once('=').with_context(|| format!("{part:?} is not ID=IP"))?;
        let id: u64 = id.parse().with_context(|| format!("node id in {part:?}"))?;
        let ip: std::net::IpAddr = ip.parse().with_context(|| format!("IP address in {part:?}"))?;
        nodes.push((id, ip));
    }
    if nodes.is_empty() {
        anyhow::bail!("--nodes lists no node");
    }
    std::fs::create_dir_all(&flags.dir).with_context(|| format!("creating {}", flags.dir.display()))?;
    let written = settle_actors::tls::generate(&flags.dir, &nodes)?;
    for (node, files) in written {
        println!("node {node}: --tls-cert {} --tls-key {} --tls-ca {}", files.cert.display(), files.key.display(), files.ca.display());
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // TLS (peers, HTTPS, the tools' HTTP clients) uses ring, installed once for the process.
    settle_actors::tls::install_crypto_provider();
    let cli = Cli::parse();
    match cli.command {
        Command::Start(flags) => start(flags),
        Command::Local(flags) => {
            init_logging("text");
            local::run(flags)
        }
        Command::Sim(flags) => sim_cli::run(flags),
        Command::Bench(flags) => bench::run(flags),
        Command::Status(flags) => status::run(flags),
        Command::Backup(flags) => backup_cli::backup(flags),
        Command::Restore(flags) => backup_cli::restore(flags),
        Command::Drill(flags) => drill::run(flags),
        Command::Certs(flags) => certs(flags),
        Command::Keys(command) => keys_cli::keys(command),
        Command::Audit(command) => keys_cli::audit(command),
        Command::Node(command) => node_cli::run(command),
    }
}

fn init_logging(format: &str) {
    logging::init(format);
}

/// How long a node started with `--join` waits to be welcomed (registered) before it gives up.
const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// The data dir's identity (written on the first start) and the peers it knows. A bootstrap
/// member takes the layout from its flags; a node started with `--join` asks a member on its
/// first start and keeps the answer (`peers.json` first, then `cluster.json`: a crash between
/// the two joins again). Settings that follow from the layout (shards) are set from it.
fn layout(settings: &mut NodeSettings) -> anyhow::Result<(DataDirIdentity, bool, identity::KnownPeers)> {
    let Some(member) = settings.join else {
        let identity = DataDirIdentity::new(settings.node_id, settings.shards, settings.members.keys().copied().collect());
        let bootstrapped = identity::check_or_write(&settings.data_dir, &identity)?;
        let known = identity::read_peers(&settings.data_dir)?;
        return Ok((identity, bootstrapped, known));
    };
    std::fs::create_dir_all(&settings.data_dir).with_context(|| format!("creating {}", settings.data_dir.display()))?;
    if let Some(stored) = identity::read(&settings.data_dir)? {
        identity::check_or_write(&settings.data_dir, &DataDirIdentity { node_id: settings.node_id, ..stored.clone() })?;
        let known = identity::read_peers(&settings.data_dir)?;
        settings.shards = stored.shards;
        return Ok((stored, false, known));
    }
    let limits = settings.peer_limits();
    tracing::info!(node = settings.node_id, %member, "joining the cluster");
    let welcome = settle_actors::join::join(settings.node_id, settings.peer, member, limits, settings.peer_tls(), JOIN_TIMEOUT)?;
    let bootstrap =
        welcome.addresses.iter().filter(|(id, _)| welcome.bootstrap.contains(id)).map(|(id, address)| (*id, address.to_string())).collect();
    let known = identity::KnownPeers { registry: welcome.registry.clone(), bootstrap };
    identity::write_peers(&settings.data_dir, &known)?;
    let identity = DataDirIdentity::new(settings.node_id, welcome.shards, welcome.bootstrap.clone());
    identity::check_or_write(&settings.data_dir, &identity)?;
    settings.shards = welcome.shards;
    Ok((identity, true, known))
}

fn start(flags: StartFlags) -> anyhow::Result<()> {
    let settings = NodeSettings::load(&flags)?;
    init_logging(&settings.log_format);
    settle_actors::crash_only::install();
    if settings.insecure_peers {
        tracing::warn!(
            "peers talk plain TCP (--insecure-peers): anyone who reaches the peer port can claim to be a node; development only"
        );
    }
    let mut settings = settings;
    let (identity, bootstrapped, known) = layout(&mut settings)?;
    let placement = Placement::new(identity.members.clone(), identity.shards);
    let mut peers = known.addresses();
    peers.extend(settings.members.iter().map(|(id, address)| (*id, *address)));
    // A bootstrap member retired since stays out (`--cluster` still lists it).
    peers.retain(|id, _| !known.registry.retired.contains(id));
    peers.insert(settings.node_id, settings.peer);
    let config = DriverConfig {
        core: NodeConfig {
            node: settings.node_id,
            placement,
            raft: settings.raft.clone(),
            limits: settings.limits.clone(),
            cache_bytes_max: usize::try_from(settings.cache_mb << 20).context("--cache-mb")?,
        },
        data_dir: settings.data_dir.clone(),
        peer_listen: settings.peer,
        peers,
        registry: known.registry.clone(),
        peer_limits: settings.peer_limits(),
        inbox_calls_max: settings.inbox_calls_max,
        io_queue_jobs_max: settings.io_queue_jobs_max,
        http_advertise: format!("{}://{}", settings.http_scheme(), settings.http),
        version: env!("CARGO_PKG_VERSION").to_string(),
        peer_tls: settings.peer_tls(),
    };
    // raft-rs logs through slog; its records go to tracing (filter with RUST_LOG=raft=...).
    let logger = slog::Logger::root(slog::Fuse(logging::RaftToTracing), slog::o!());
    let (driver, driver_thread) = settle_actors::start(config, logger).context("starting the node")?;
    tracing::info!(
        node = settings.node_id,
        http = %settings.http,
        peer = %settings.peer,
        shards = settings.shards,
        bootstrapped,
        peer_tls = settings.peer_tls().is_some(),
        https = settings.http_tls().is_some(),
        "node started"
    );
    let pii = match &settings.pii_key_file {
        Some(path) => {
            let key = api::pii::PiiKey::load(path)?;
            tracing::info!(key_id = key.id(), "personal data is sealed with the PII key");
            Some(Arc::new(key))
        }
        None => None,
    };
    let settings = Arc::new(settings);
    let state = web::Data::new(api::AppState {
        driver: driver.clone(),
        metrics: Arc::new(metrics::Metrics::new(settings.node_id, &driver)),
        settings: settings.clone(),
        started: Instant::now(),
        request_counter: AtomicU64::new(u64::from(rand::random::<u32>()) << 32),
        auth: api::auth::Auth::new(settings.auth_cache_ms, settings.bootstrap_admin_key.as_deref()),
        pii,
    });
    let metrics_state = state.clone();
    let http = settings.http;
    let http_tls = match settings.http_tls() {
        Some((cert, key)) => Some(settle_actors::tls::http_server_config(&cert, &key).context("loading the HTTPS certificate and key")?),
        None => None,
    };
    let workers = settings.http_workers;
    let metrics_addr = settings.metrics_addr;
    // actix counts connections per worker.
    let connections_per_worker = (settings.http_connections_max / workers.max(1)).max(1);
    actix_web::rt::System::new().block_on(async move {
        let server = actix_web::HttpServer::new(move || api::app(state.clone()))
            .workers(workers)
            .max_connections(connections_per_worker)
            .client_request_timeout(std::time::Duration::from_secs(5))
            .client_disconnect_timeout(std::time::Duration::from_secs(1))
            // A TLS handshake that stalls cannot hold a connection either.
            .tls_handshake_timeout(std::time::Duration::from_secs(3))
            .shutdown_timeout(5);
        let server = match http_tls {
            Some(config) => server.bind_rustls_0_23(http, config),
            None => server.bind(http),
        };
        let server = server.with_context(|| format!("binding the HTTP API on {http}"))?.run();
        // `/metrics` without a key, on its own listener, for Prometheus.
        let metrics_server = match metrics_addr {
            Some(address) => Some(
                actix_web::HttpServer::new(move || {
                    actix_web::App::new().app_data(metrics_state.clone()).route("/metrics", web::get().to(api::metrics))
                })
                .workers(1)
                .shutdown_timeout(1)
                .bind(address)
                .with_context(|| format!("binding the metrics listener on {address}"))?
                .run(),
            ),
            None => None,
        };
        let metrics_handle = metrics_server.as_ref().map(actix_web::dev::Server::handle);
        if settings.rebuild_interval_ms > 0 {
            let interval = std::time::Duration::from_millis(settings.rebuild_interval_ms);
            let timeout = std::time::Duration::from_millis(settings.request_timeout_ms);
            actix_web::rt::spawn(scheduler::run(driver.clone(), interval, timeout));
        }
        if let Some(metrics_server) = metrics_server {
            actix_web::rt::spawn(metrics_server);
        }
        server.await.context("HTTP server")?;
        if let Some(handle) = metrics_handle {
            handle.stop(true).await;
        }
        tracing::info!("shutting down: waiting for queued writes");
        driver.stop().await;
        anyhow::Ok(())
    })?;
    driver_thread.join().map_err(|_| anyhow::anyhow!("driver thread panicked"))?;
    tracing::info!("node stopped");
    Ok(())
}
