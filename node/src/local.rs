//! `settle local`: a whole cluster on this machine — child processes of `settle start` on
//! consecutive loopback ports, each with its own data dir and log file — stopped on Ctrl-C.

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
}

/// A running local cluster; dropping it stops the nodes.
pub struct LocalCluster {
    pub urls: Vec<String>,
    children: Vec<Child>,
    /// Children whose exit was already reported.
    reported: Vec<usize>,
}

impl LocalCluster {
    /// Starts the nodes and waits (at most `ready_timeout`) until each serves requests.
    pub fn start(flags: &LocalFlags, ready_timeout: Duration) -> anyhow::Result<LocalCluster> {
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
        let binary = std::env::current_exe().context("locating the settle binary")?;
        let mut started = LocalCluster { urls: Vec::new(), children: Vec::new(), reported: Vec::new() };
        for node in 1..=flags.nodes {
            let data_dir = flags.data_dir.join(format!("node-{node}"));
            std::fs::create_dir_all(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
            let log_path = data_dir.join("settle.log");
            let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
            let http_port = port(flags.http_port, node)?;
            let child = Command::new(&binary)
                .arg("start")
                .args(["--node-id", &node.to_string()])
                .arg("--data-dir")
                .arg(&data_dir)
                .args(["--http", &format!("127.0.0.1:{http_port}")])
                .args(["--peer", &format!("127.0.0.1:{}", port(peer_base, node)?)])
                .args(["--cluster", &cluster])
                .args(["--shards", &flags.shards.to_string()])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .with_context(|| format!("starting node {node}"))?;
            started.children.push(child);
            started.urls.push(format!("http://127.0.0.1:{http_port}"));
        }
        started.wait_ready(ready_timeout, &flags.data_dir)?;
        Ok(started)
    }

    fn wait_ready(&mut self, timeout: Duration, data_dir: &Path) -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
        let deadline = Instant::now() + timeout;
        for (index, url) in self.urls.clone().iter().enumerate() {
            loop {
                if let Some(status) = self.children[index].try_wait()? {
                    let log = data_dir.join(format!("node-{}", index + 1)).join("settle.log");
                    bail!("node {} exited with {status}; see {}", index + 1, log.display());
                }
                let ready = runtime.block_on(async {
                    let response = client.get(format!("{url}/health/ready")).send().await;
                    response.is_ok_and(|response| response.status().is_success())
                });
                if ready {
                    break;
                }
                if Instant::now() > deadline {
                    bail!("node {} at {url} not ready within {timeout:?}", index + 1);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Nodes that exited since the last call, with their exit status.
    pub fn newly_exited(&mut self) -> Vec<(usize, std::process::ExitStatus)> {
        let mut exited = Vec::new();
        for (index, child) in self.children.iter_mut().enumerate() {
            if self.reported.contains(&index) {
                continue;
            }
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
        for child in &self.children {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: kill(2) on the pid of a child we started and have not reaped.
                unsafe {
                    libc::kill(pid, libc::SIGTERM);
                }
            }
        }
        for child in &mut self.children {
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
        }
        self.children.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(flags: LocalFlags) -> anyhow::Result<()> {
    crate::init_logging("text");
    let mut cluster = LocalCluster::start(&flags, Duration::from_secs(60))?;
    println!("settle: {} nodes ready (data in {})", flags.nodes, flags.data_dir.display());
    for (index, url) in cluster.urls.iter().enumerate() {
        println!("  node {}: {url}   (log: {})", index + 1, flags.data_dir.join(format!("node-{}", index + 1)).join("settle.log").display());
    }
    let url = &cluster.urls[0];
    println!();
    println!("try:");
    println!("  curl -s -XPOST {url}/v1/accounts -d '{{\"id\":\"bank\",\"currency\":\"USD\",\"kind\":\"settlement\"}}'");
    println!("  curl -s -XPOST {url}/v1/accounts -d '{{\"id\":\"alice\",\"currency\":\"USD\"}}'");
    println!("  curl -s -XPOST {url}/v1/transfers -d '{{\"id\":\"t1\",\"from\":\"bank\",\"to\":\"alice\",\"amount\":\"100.00\",\"currency\":\"USD\"}}'");
    println!("  curl -s {url}/v1/accounts/alice");
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
