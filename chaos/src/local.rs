//! `settle local`: a whole cluster on this machine — child processes of `settle start` on
//! consecutive loopback ports, each with its own data dir and log file — stopped on Ctrl-C. The
//! bench and the drills start theirs with `LocalCluster::start_temporary`.
//!
//! The nodes run the `settle` binary named by the caller. `settle local`, `bench` and `drill` are
//! commands of that binary, so they pass the running executable (`settle_binary`); a test or
//! another program names the binary it built.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct LocalFlags {
    /// How many nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Parent of each node's data dir (node-1, node-2, ...).
    #[arg(long, default_value = "./settle-data")]
    pub data_dir: PathBuf,
    /// HTTP port of node 1; node N listens on this + N - 1.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Peer port of node 1 (default: HTTP port + 1000).
    #[arg(long)]
    pub peer_port: Option<u16>,
    /// Shards, fixed when the cluster is first started.
    #[arg(long, default_value_t = 64)]
    pub shards: u32,
    /// Plain TCP between the nodes instead of mutual TLS (to measure what TLS costs). By
    /// default the cluster gets a throwaway CA and node certificates in DATA_DIR/certs.
    #[arg(long)]
    pub insecure_peers: bool,
    /// Plain HTTP on the client port instead of HTTPS (a development mode; the production path
    /// is TLS). By default the nodes serve HTTPS with the throwaway CA's certificates.
    #[arg(long)]
    pub plain_http: bool,
    /// Start a new cluster from a backup (`settle backup --to`): each node's empty data dir is
    /// prepared with `settle restore` first. Needs a fresh --data-dir and the backup's --shards.
    #[arg(long)]
    pub restore_from: Option<PathBuf>,
}

/// A running local cluster; dropping it stops the nodes.
pub struct LocalCluster {
    pub urls: Vec<String>,
    /// The development admin key every node bootstraps with (DATA_DIR/admin.key).
    pub admin_key: String,
    /// The CA clients trust for HTTPS (None with `--plain-http`).
    pub ca: Option<PathBuf>,
    /// How to start each node again (binary, arguments, log file).
    specs: Vec<(std::path::PathBuf, Vec<std::ffi::OsString>, std::path::PathBuf)>,
    env: Vec<(String, String)>,
    children: Vec<Option<Child>>,
    /// Children whose exit was already reported.
    reported: Vec<usize>,
    /// `start_temporary`: the directory holding the data dirs, removed after the nodes stop
    /// (fields drop after `Drop::drop` has stopped them).
    temporary: Option<TempDir>,
}

/// Nodes a local cluster makes certificates for beyond its bootstrap members, so that many
/// may join it later.
pub const SPARE_NODES: u64 = 2;

/// Replaces the value after `flag` in a node's arguments (or appends both).
fn set_arg(args: &mut Vec<std::ffi::OsString>, flag: &str, value: std::ffi::OsString) {
    match args.iter().position(|arg| arg == flag) {
        Some(index) if index + 1 < args.len() => args[index + 1] = value,
        _ => args.extend([flag.into(), value]),
    }
}

/// The value after `flag` in a node's arguments.
fn arg_value<'a>(args: &'a [std::ffi::OsString], flag: &str) -> Option<&'a std::ffi::OsString> {
    args.iter().position(|arg| arg == flag).and_then(|index| args.get(index + 1))
}

impl LocalCluster {
    /// Starts the nodes (`binary start ...`) and waits (at most `ready_timeout`) until each
    /// serves requests.
    pub fn start(flags: &LocalFlags, binary: &Path, ready_timeout: Duration) -> anyhow::Result<LocalCluster> {
        LocalCluster::start_with_env(flags, binary, ready_timeout, Vec::new())
    }

    /// `start`, with extra environment variables for every node (drills enable faults).
    pub fn start_with_env(
        flags: &LocalFlags,
        binary: &Path,
        ready_timeout: Duration,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<LocalCluster> {
        if flags.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let peer_base = flags.peer_port.unwrap_or(flags.http_port.saturating_add(1000));
        let port = |base: u16, node: u64| -> anyhow::Result<u16> {
            let offset = u16::try_from(node - 1).context("too many nodes")?;
            base.checked_add(offset).context("port out of range")
        };
        let mut members = Vec::new();
        for node in 1..=flags.nodes {
            members.push(format!("{node}=127.0.0.1:{}", port(peer_base, node)?));
        }
        let cluster = members.join(",");
        let needs_certificates = !flags.insecure_peers || !flags.plain_http;
        // Certificates for `SPARE_NODES` more, for nodes added later (`add_node`, `settle node add`).
        let certificates = if needs_certificates { Some(node_certificates(&flags.data_dir, flags.nodes + SPARE_NODES)?) } else { None };
        let ca = if flags.plain_http { None } else { Some(flags.data_dir.join("certs").join("ca.pem")) };
        let admin_key = development_admin_key(&flags.data_dir)?;
        let pii_key = development_pii_key(&flags.data_dir)?;
        let mut env = env;
        env.push(("SETTLE_BOOTSTRAP_ADMIN_KEY".to_string(), admin_key.clone()));
        env.push(("SETTLE_PII_KEY_FILE".to_string(), pii_key.display().to_string()));
        let mut started = LocalCluster {
            urls: Vec::new(),
            admin_key,
            ca,
            specs: Vec::new(),
            env,
            children: Vec::new(),
            reported: Vec::new(),
            temporary: None,
        };
        for node in 1..=flags.nodes {
            let data_dir = flags.data_dir.join(format!("node-{node}"));
            std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            let http_port = port(flags.http_port, node)?;
            let args: Vec<std::ffi::OsString> = vec![
                "start".into(),
                "--node-id".into(),
                node.to_string().into(),
                "--data-dir".into(),
                data_dir.clone().into_os_string(),
                "--http".into(),
                format!("127.0.0.1:{http_port}").into(),
                "--peer".into(),
                format!("127.0.0.1:{}", port(peer_base, node)?).into(),
                "--cluster".into(),
                cluster.clone().into(),
                "--shards".into(),
                flags.shards.to_string().into(),
            ];
            let mut args = args;
            let certificate = certificates.as_ref().map(|certificates| &certificates[usize::try_from(node - 1).expect("small")]);
            match certificate {
                Some(certificate) if !flags.insecure_peers => {
                    args.extend(["--tls-cert".into(), certificate.cert.clone().into_os_string()]);
                    args.extend(["--tls-key".into(), certificate.key.clone().into_os_string()]);
                    args.extend(["--tls-ca".into(), certificate.ca.clone().into_os_string()]);
                }
                _ => args.push("--insecure-peers".into()),
            }
            let scheme = match certificate {
                Some(certificate) if !flags.plain_http => {
                    args.extend(["--http-tls-cert".into(), certificate.cert.clone().into_os_string()]);
                    args.extend(["--http-tls-key".into(), certificate.key.clone().into_os_string()]);
                    "https"
                }
                _ => "http",
            };
            if let Some(backup) = &flags.restore_from {
                started.restore(binary, &args, &data_dir, backup)?;
            }
            started.specs.push((binary.to_path_buf(), args, data_dir.join("settle.log")));
            started.children.push(None);
            started.urls.push(format!("{scheme}://127.0.0.1:{http_port}"));
            started.spawn(usize::try_from(node).expect("small"))?;
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        for node in 1..=started.urls.len() {
            runtime.block_on(started.wait_ready(node, ready_timeout))?;
        }
        Ok(started)
    }

    /// A fresh cluster for a tool (`purpose`: "bench", "drill") on free loopback ports, in a
    /// temporary directory removed once the cluster is dropped and its nodes have stopped. The
    /// HTTP and peer ports are found as one range of 2 × nodes ports, so they cannot overlap.
    pub fn start_temporary(
        purpose: &str,
        binary: &Path,
        nodes: u64,
        shards: u32,
        insecure_peers: bool,
        plain_http: bool,
        env: Vec<(String, String)>,
    ) -> anyhow::Result<LocalCluster> {
        let dir = TempDir::new_for(purpose)?;
        LocalCluster::start_temporary_in(dir, purpose, binary, nodes, shards, insecure_peers, plain_http, env, None)
    }

    /// `start_temporary`, each node prepared from the backup in `backup` first (`settle
    /// restore`), with the development admin and PII keys of the cluster whose data dir is
    /// `keys_from` (the backed-up cluster's API keys and sealed personal data come back with it).
    pub fn start_temporary_restored(
        purpose: &str,
        binary: &Path,
        nodes: u64,
        shards: u32,
        backup: &Path,
        keys_from: &Path,
    ) -> anyhow::Result<LocalCluster> {
        let dir = TempDir::new_for(purpose)?;
        for key in ["admin.key", "pii.key"] {
            if keys_from.join(key).exists() {
                std::fs::copy(keys_from.join(key), dir.path.join(key)).with_context(|| format!("copying {key}"))?;
            }
        }
        LocalCluster::start_temporary_in(dir, purpose, binary, nodes, shards, false, false, Vec::new(), Some(backup.to_path_buf()))
    }

    #[allow(clippy::too_many_arguments)]
    fn start_temporary_in(
        dir: TempDir,
        purpose: &str,
        binary: &Path,
        nodes: u64,
        shards: u32,
        insecure_peers: bool,
        plain_http: bool,
        env: Vec<(String, String)>,
        restore_from: Option<PathBuf>,
    ) -> anyhow::Result<LocalCluster> {
        let http_port = free_port_range(nodes.checked_mul(2).context("too many nodes")?)?;
        let peer_port = http_port.checked_add(u16::try_from(nodes).context("too many nodes")?).context("port out of range")?;
        let flags = LocalFlags {
            nodes,
            data_dir: dir.path.clone(),
            http_port,
            peer_port: Some(peer_port),
            shards,
            insecure_peers,
            plain_http,
            restore_from,
        };
        eprintln!("{purpose}: starting a local {nodes}-node cluster ({shards} shards) in {}", dir.path.display());
        let mut cluster = LocalCluster::start_with_env(&flags, binary, Duration::from_secs(60), env)?;
        cluster.temporary = Some(dir);
        Ok(cluster)
    }

    /// The directory a temporary cluster lives in (its keys, certificates and data dirs).
    pub fn temporary_dir(&self) -> Option<&Path> {
        self.temporary.as_ref().map(|dir| dir.path.as_path())
    }

    /// Prepares a node's empty data dir from a backup: `settle restore --from BACKUP` with the
    /// flags the node will be started with.
    fn restore(&self, binary: &Path, start_args: &[std::ffi::OsString], data_dir: &Path, backup: &Path) -> anyhow::Result<()> {
        if std::fs::read_dir(data_dir)?.next().is_some() {
            bail!("--restore-from needs a fresh --data-dir: {} is not empty", data_dir.display());
        }
        let output = Command::new(binary)
            .arg("restore")
            .arg("--from")
            .arg(backup)
            .args(&start_args[1..])
            .envs(self.env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .output()
            .context("running settle restore")?;
        if !output.status.success() {
            bail!("settle restore into {} failed: {}", data_dir.display(), String::from_utf8_lossy(&output.stderr).trim());
        }
        eprint!("{}", String::from_utf8_lossy(&output.stdout));
        Ok(())
    }

    /// Configures a node that joins the running cluster (the next id, fresh loopback ports, an
    /// empty data dir beside the others, the spare certificate of its id) and returns its id
    /// and peer address; register it (`POST /admin/nodes`) and `spawn` it. It joins through
    /// node 1's peer address.
    pub fn add_node(&mut self) -> anyhow::Result<(usize, String)> {
        let node = self.specs.len() + 1;
        let (binary, template, log) = self.specs.first().cloned().context("a cluster has a first node")?;
        let member = arg_value(&template, "--peer").cloned().context("node 1's peer address")?;
        let ports = free_port_range(2)?;
        let peer = format!("127.0.0.1:{}", ports + 1);
        let data_dir = log.parent().and_then(Path::parent).context("the cluster's directory")?.join(format!("node-{node}"));
        std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let mut args = template.clone();
        set_arg(&mut args, "--node-id", node.to_string().into());
        set_arg(&mut args, "--data-dir", data_dir.clone().into_os_string());
        set_arg(&mut args, "--http", format!("127.0.0.1:{ports}").into());
        set_arg(&mut args, "--peer", peer.clone().into());
        if let Some(index) = args.iter().position(|arg| arg == "--cluster") {
            args.drain(index..index + 2);
        }
        set_arg(&mut args, "--join", member);
        let certs = data_dir.parent().context("the cluster's directory")?.join("certs");
        let files = [("--tls-cert", "pem"), ("--tls-key", "key"), ("--http-tls-cert", "pem"), ("--http-tls-key", "key")];
        for (flag, extension) in files {
            if arg_value(&args, flag).is_some() {
                let path = certs.join(format!("node-{node}.{extension}"));
                if !path.is_file() {
                    bail!("no certificate for node {node} in {} (a local cluster makes {SPARE_NODES} spare ones)", certs.display());
                }
                set_arg(&mut args, flag, path.into_os_string());
            }
        }
        let scheme = if arg_value(&args, "--http-tls-cert").is_some() { "https" } else { "http" };
        self.specs.push((binary, args, data_dir.join("settle.log")));
        self.children.push(None);
        self.urls.push(format!("{scheme}://127.0.0.1:{ports}"));
        Ok((node, peer))
    }

    /// Starts node `node` (1-based) from its spec.
    pub fn spawn(&mut self, node: usize) -> anyhow::Result<()> {
        let (binary, args, log_path) = &self.specs[node - 1];
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path)?;
        let child = Command::new(binary)
            .args(args)
            .envs(self.env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting node {node}"))?;
        self.children[node - 1] = Some(child);
        self.reported.retain(|index| *index != node - 1);
        Ok(())
    }

    /// Waits until node `node` answers /health/ready (or fails if it exits or time runs out).
    pub async fn wait_ready(&mut self, node: usize, timeout: Duration) -> anyhow::Result<()> {
        let client = crate::http::client_builder(self.ca.as_deref(), None)?.timeout(Duration::from_secs(2)).build()?;
        let url = self.urls[node - 1].clone();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(child) = self.children[node - 1].as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("node {node} exited with {status}; see {}", self.specs[node - 1].2.display());
                }
            }
            let response = client.get(format!("{url}/health/ready")).send().await;
            if response.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {node} at {url} not ready within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pid(&self, node: usize) -> Option<libc::pid_t> {
        self.children[node - 1].as_ref().and_then(|child| libc::pid_t::try_from(child.id()).ok())
    }

    /// Sends a signal to node `node` (SIGSTOP, SIGCONT, SIGTERM...).
    /// A node's data dir (it holds the node's log file too).
    pub fn data_dir(&self, node: usize) -> Option<PathBuf> {
        let (_, _, log) = self.specs.get(node.checked_sub(1)?)?;
        log.parent().map(Path::to_path_buf)
    }

    pub fn signal(&self, node: usize, signal: libc::c_int) {
        if let Some(pid) = self.pid(node) {
            // SAFETY: kill(2) on the pid of a child we started and have not reaped.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.children[node - 1].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait (at most `timeout`, then SIGKILL) for the node to exit.
    pub async fn terminate(&mut self, node: usize, timeout: Duration) -> Option<std::process::ExitStatus> {
        self.signal(node, libc::SIGCONT);
        self.signal(node, libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.children[node - 1].as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.children[node - 1] = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                self.kill(node);
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn is_running(&self, node: usize) -> bool {
        self.children[node - 1].is_some()
    }

    /// Nodes that exited since the last call, with their exit status.
    pub fn newly_exited(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut exited = Vec::new();
        for (index, child) in self.children.iter_mut().enumerate() {
            if self.reported.contains(&index) {
                continue;
            }
            let Some(child) = child.as_mut() else {
                continue;
            };
            if let Ok(Some(status)) = child.try_wait() {
                self.reported.push(index);
                exited.push((index + 1, status));
            }
        }
        exited
    }

    pub fn all_exited(&self) -> bool {
        self.reported.len() == self.children.len()
    }

    /// SIGTERM every node, wait up to 10 s each, then SIGKILL what is left.
    pub fn stop(&mut self) {
        for node in 1..=self.children.len() {
            self.signal(node, libc::SIGCONT);
            self.signal(node, libc::SIGTERM);
        }
        for slot in &mut self.children {
            let Some(child) = slot.as_mut() else {
                continue;
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
            *slot = None;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first port of `count` consecutive free loopback ports, found by binding them.
fn free_port_range(count: u64) -> anyhow::Result<u16> {
    let count = u16::try_from(count).context("too many nodes")?;
    for _ in 0..50 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
        let base = probe.local_addr()?.port();
        drop(probe);
        if base.checked_add(count).is_none() {
            continue;
        }
        let all_free = (0..count).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    bail!("no {count} consecutive free ports found")
}

/// A directory under the system temp dir, removed on drop.
struct TempDir {
    path: PathBuf,
}

impl TempDir {
    fn new_for(purpose: &str) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
        let path = std::env::temp_dir().join(format!("settle-{purpose}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The peer TLS files of each node (1..=nodes) under `data_dir/certs`: made once (a throwaway
/// CA and a certificate per node naming its node id and 127.0.0.1), reused when the cluster is
/// started again on the same data.
fn node_certificates(data_dir: &Path, nodes: u64) -> anyhow::Result<Vec<settle_actors::tls::NodeCertificate>> {
    let dir = data_dir.join("certs");
    let made = |node: u64| settle_actors::tls::NodeCertificate {
        cert: dir.join(format!("node-{node}.pem")),
        key: dir.join(format!("node-{node}.key")),
        ca: dir.join("ca.pem"),
    };
    let existing: Vec<_> = (1..=nodes).map(made).collect();
    if existing.iter().all(|files| files.cert.is_file() && files.key.is_file() && files.ca.is_file()) {
        return Ok(existing);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let loopback: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let nodes: Vec<_> = (1..=nodes).map(|node| (node, loopback)).collect();
    let generated = settle_actors::tls::generate(&dir, &nodes).context("making the cluster's certificates")?;
    Ok(generated.into_iter().map(|(_, files)| files).collect())
}

/// The development admin key of a local cluster: made once (32 random bytes, hex) and kept in
/// DATA_DIR/admin.key (mode 0600), so a cluster started again on the same data accepts it.
fn development_admin_key(data_dir: &Path) -> anyhow::Result<String> {
    secret_file(&data_dir.join("admin.key"), "dev_admin_")
}

/// The key file personal data is sealed with on every local node (64 hex digits), made once.
pub fn development_pii_key(data_dir: &Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("pii.key");
    secret_file(&path, "")?;
    Ok(path)
}

/// A secret kept in a file only its owner reads: the file's if it holds one, else a new one
/// (`prefix` and 32 random bytes in hex).
fn secret_file(path: &Path, prefix: &str) -> anyhow::Result<String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(existing) = std::fs::read_to_string(path) {
        let existing = existing.trim().to_string();
        if existing.len() >= 16 {
            return Ok(existing);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    let key: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let key = format!("{prefix}{key}");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{key}")?;
    Ok(key)
}

/// The `settle` binary for the nodes of a cluster started by one of its own commands: the
/// running executable.
pub fn settle_binary() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("locating the settle binary")
}

/// `settle local`: starts the cluster, prints how to use it, reports nodes that exit, and stops
/// every node on Ctrl-C or SIGTERM.
pub fn run(flags: LocalFlags) -> anyhow::Result<()> {
    let mut cluster = LocalCluster::start(&flags, &settle_binary()?, Duration::from_secs(60))?;
    println!("settle: {} nodes ready (data in {})", flags.nodes, flags.data_dir.display());
    for (index, url) in cluster.urls.iter().enumerate() {
        println!(
            "  node {}: {url}   (log: {})",
            index + 1,
            flags.data_dir.join(format!("node-{}", index + 1)).join("settle.log").display()
        );
    }
    let url = &cluster.urls[0];
    println!();
    println!("development admin key (kept in {}):", flags.data_dir.join("admin.key").display());
    println!("  export SETTLE_API_KEY={}", cluster.admin_key);
    let trust = match &cluster.ca {
        Some(ca) => {
            println!("HTTPS with a throwaway CA: trust {} (curl --cacert, settle ... --ca-cert)", ca.display());
            format!(" --cacert {}", ca.display())
        }
        None => {
            println!("plain HTTP (--plain-http): for development only");
            String::new()
        }
    };
    let auth = " -H \"Authorization: Bearer $SETTLE_API_KEY\"";
    println!();
    println!("try:");
    println!("  curl -s{trust}{auth} -XPOST {url}/v1/accounts -d '{{\"id\":\"bank\",\"currency\":\"USD\",\"kind\":\"settlement\"}}'");
    println!("  curl -s{trust}{auth} -XPOST {url}/v1/accounts -d '{{\"id\":\"alice\",\"currency\":\"USD\"}}'");
    println!("  curl -s{trust}{auth} -XPOST {url}/v1/transfers -d '{{\"id\":\"t1\",\"from\":\"bank\",\"to\":\"alice\",\"amount\":\"100.00\",\"currency\":\"USD\"}}'");
    println!("  curl -s{trust}{auth} {url}/v1/accounts/alice");
    println!(
        "  settle status --target {url}{} --api-key $SETTLE_API_KEY",
        cluster.ca.as_ref().map(|ca| format!(" --ca-cert {}", ca.display())).unwrap_or_default()
    );
    println!();
    println!("Ctrl-C stops every node.");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut check = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return anyhow::Ok(()),
                _ = terminate.recv() => return anyhow::Ok(()),
                _ = check.tick() => {
                    // A node that dies (or is killed in a drill) is reported; the others keep
                    // running, as they would on separate machines.
                    for (node, status) in cluster.newly_exited() {
                        println!("node {node} exited ({status}); the other nodes keep running");
                    }
                    if cluster.all_exited() {
                        return anyhow::Ok(());
                    }
                }
            }
        }
    })?;
    println!("stopping...");
    cluster.stop();
    Ok(())
}
