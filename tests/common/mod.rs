//! A real cluster for tests: `settle start` processes on loopback ports, each with a data dir in
//! a temporary directory, killed and restarted by pid. Every wait is a bounded retry loop.

#![allow(dead_code)]

use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bootstrap admin key every test node starts with; the cluster's client sends it.
pub const ADMIN_KEY: &str = "test-bootstrap-admin-key-0123456789";

/// Headers carrying `Authorization: Bearer <key>`.
pub fn bearer(key: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {key}").parse().expect("header"));
    headers
}

/// The error code of an error answer (`<none>` for anything else).
pub fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub nodes: Vec<TestNode>,
    pub cluster_arg: String,
    pub shards: u32,
    pub client: reqwest::Client,
    /// Extra environment for every node (log format and filter, say).
    pub env: Vec<(String, String)>,
    /// Extra environment for one node (its own certificate, say).
    pub node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
}

pub struct TestNode {
    pub id: u64,
    pub http_port: u16,
    pub peer_port: u16,
    pub child: Option<Child>,
    /// The client API is served over HTTPS (`start_https`).
    pub https: bool,
    /// A node added after bootstrap: started with `--join` this member peer address instead
    /// of `--cluster` (`add_node`).
    pub join: Option<String>,
}

impl TestNode {
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.http_port)
    }
}

/// Ports the OS hands out now; a loopback race with another process is possible but rare.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").expect("bind")).collect();
    listeners.iter().map(|listener| listener.local_addr().expect("addr").port()).collect()
}

impl TestCluster {
    /// Starts `count` nodes and waits until every one is ready.
    pub async fn start(count: u64, shards: u32) -> TestCluster {
        TestCluster::start_with_env(count, shards, &[]).await
    }

    /// `start`, with extra environment variables for every node.
    /// `start`, with extra environment variables for every node. Peers use mutual TLS, as in
    /// production (`start_tls`).
    pub async fn start_with_env(count: u64, shards: u32, env: &[(&str, &str)]) -> TestCluster {
        TestCluster::start_tls(count, shards, env).await
    }

    /// Starts `count` nodes whose peers talk plain TCP (`--insecure-peers`, loopback only): for
    /// tests that write raw frames to a peer port.
    pub async fn start_insecure(count: u64, shards: u32, env: &[(&str, &str)]) -> TestCluster {
        let mut env = env.to_vec();
        env.push(("SETTLE_INSECURE_PEERS", "true"));
        TestCluster::start_configured(count, shards, &env, std::collections::BTreeMap::new()).await
    }

    /// Starts `count` nodes with peer mutual TLS: a throwaway cluster CA and a certificate per
    /// node (naming its node id), made with `settle_actors::tls::generate` in the cluster's dir.
    pub async fn start_tls(count: u64, shards: u32, env: &[(&str, &str)]) -> TestCluster {
        TestCluster::start_secured(count, shards, env, false).await
    }

    /// `start_tls`, and the client API over HTTPS with each node's certificate (it names
    /// 127.0.0.1); the cluster's client trusts the cluster CA (`ca_path`).
    pub async fn start_https(count: u64, shards: u32) -> TestCluster {
        TestCluster::start_secured(count, shards, &[], true).await
    }

    /// The cluster CA the nodes' certificates come from (`start_tls`, `start_https`).
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }

    /// A cluster of `count` nodes whose peers talk plain TCP, configured but not started (a test
    /// prepares the data dirs first, `settle restore` say, then `spawn`s each node).
    pub fn prepare_insecure(count: u64, shards: u32) -> TestCluster {
        let env = [("SETTLE_INSECURE_PEERS", "true")];
        TestCluster::configure_in(tempfile::tempdir().expect("temp dir"), count, shards, &env, std::collections::BTreeMap::new(), None)
    }

    async fn start_secured(count: u64, shards: u32, env: &[(&str, &str)], https: bool) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        std::fs::create_dir_all(&certs).expect("certs dir");
        // Certificates for two nodes more than bootstrap, for nodes a test adds (`add_node`).
        let nodes: Vec<(u64, std::net::IpAddr)> = (1..=count + 2).map(|id| (id, "127.0.0.1".parse().expect("ip"))).collect();
        let generated = settle_actors::tls::generate(&certs, &nodes).expect("certificates");
        let node_env = generated
            .into_iter()
            .map(|(id, cert)| {
                let mut vars = vec![
                    ("SETTLE_TLS_CERT".to_string(), cert.cert.display().to_string()),
                    ("SETTLE_TLS_KEY".to_string(), cert.key.display().to_string()),
                    ("SETTLE_TLS_CA".to_string(), cert.ca.display().to_string()),
                ];
                if https {
                    vars.push(("SETTLE_HTTP_TLS_CERT".to_string(), cert.cert.display().to_string()));
                    vars.push(("SETTLE_HTTP_TLS_KEY".to_string(), cert.key.display().to_string()));
                }
                (id, vars)
            })
            .collect();
        let ca = https.then(|| certs.join("ca.pem"));
        TestCluster::start_in(dir, count, shards, env, node_env, ca.as_deref()).await
    }

    async fn start_configured(
        count: u64,
        shards: u32,
        env: &[(&str, &str)],
        node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
    ) -> TestCluster {
        TestCluster::start_in(tempfile::tempdir().expect("temp dir"), count, shards, env, node_env, None).await
    }

    async fn start_in(
        dir: tempfile::TempDir,
        count: u64,
        shards: u32,
        env: &[(&str, &str)],
        node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
        https_ca: Option<&std::path::Path>,
    ) -> TestCluster {
        let mut cluster = TestCluster::configure_in(dir, count, shards, env, node_env, https_ca);
        for id in 1..=count {
            cluster.spawn(id);
        }
        for id in 1..=count {
            cluster.wait_ready(id, Duration::from_secs(60)).await;
        }
        cluster
    }

    fn configure_in(
        dir: tempfile::TempDir,
        count: u64,
        shards: u32,
        env: &[(&str, &str)],
        node_env: std::collections::BTreeMap<u64, Vec<(String, String)>>,
        https_ca: Option<&std::path::Path>,
    ) -> TestCluster {
        let ports = free_ports(usize::try_from(count * 2).expect("small"));
        let mut nodes = Vec::new();
        for id in 1..=count {
            let index = usize::try_from(id - 1).expect("small");
            nodes.push(TestNode {
                id,
                http_port: ports[2 * index],
                peer_port: ports[2 * index + 1],
                child: None,
                https: https_ca.is_some(),
                join: None,
            });
        }
        let cluster_arg = nodes.iter().map(|node| format!("{}=127.0.0.1:{}", node.id, node.peer_port)).collect::<Vec<_>>().join(",");
        settle_actors::tls::install_crypto_provider();
        let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10)).default_headers(bearer(ADMIN_KEY));
        if let Some(ca) = https_ca {
            builder = builder.use_preconfigured_tls(settle_actors::tls::client_config_trusting(ca).expect("cluster CA"));
        }
        let client = builder.build().expect("client");
        let mut env: Vec<(String, String)> = env.iter().map(|(key, value)| (key.to_string(), value.to_string())).collect();
        // Every node seals personal data with the same key (a fixed one: tests only).
        let pii_key = dir.path().join("pii.key");
        std::fs::write(&pii_key, "11".repeat(32)).expect("pii key");
        env.push(("SETTLE_PII_KEY_FILE".to_string(), pii_key.display().to_string()));
        TestCluster { dir, nodes, cluster_arg, shards, client, env, node_env }
    }

    /// Configures a node added after bootstrap (the next id, fresh ports), joining through
    /// node 1's peer address; the test registers it (`settle node add`) and `spawn`s it.
    pub fn add_node(&mut self) -> u64 {
        let id = self.nodes.iter().map(|node| node.id).max().unwrap_or(0) + 1;
        let ports = free_ports(2);
        let join = Some(format!("127.0.0.1:{}", self.node(1).peer_port));
        let https = self.nodes.first().is_some_and(|node| node.https);
        self.nodes.push(TestNode { id, http_port: ports[0], peer_port: ports[1], child: None, https, join });
        id
    }

    fn node_mut(&mut self, id: u64) -> &mut TestNode {
        self.nodes.iter_mut().find(|node| node.id == id).expect("known node")
    }

    pub fn node(&self, id: u64) -> &TestNode {
        self.nodes.iter().find(|node| node.id == id).expect("known node")
    }

    pub fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("node-{id}"))
    }

    pub fn spawn(&mut self, id: u64) {
        let data_dir = self.data_dir(id);
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("settle.log")).expect("log");
        let child =
            self.command(id, "start").stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log).spawn().expect("spawn settle");
        self.node_mut(id).child = Some(child);
    }

    /// `settle <subcommand>` with node `id`'s flags and environment (what `spawn` starts; `settle
    /// restore` takes the same).
    pub fn command(&self, id: u64, subcommand: &str) -> Command {
        let node = self.node(id);
        let mut command = Command::new(env!("CARGO_BIN_EXE_settle"));
        command
            .arg(subcommand)
            .args(["--node-id", &id.to_string()])
            .arg("--data-dir")
            .arg(self.data_dir(id))
            .args(["--http", &format!("127.0.0.1:{}", node.http_port)])
            .args(["--peer", &format!("127.0.0.1:{}", node.peer_port)])
            .args(match &node.join {
                Some(member) => ["--join", member.as_str()],
                None => ["--cluster", self.cluster_arg.as_str()],
            })
            .args(["--shards", &self.shards.to_string()])
            .env("RUST_LOG", "info")
            .env("SETTLE_BOOTSTRAP_ADMIN_KEY", ADMIN_KEY)
            .envs(self.env.iter().map(|(key, value)| (key.as_str(), value.as_str())))
            .envs(self.node_env.get(&id).into_iter().flatten().map(|(key, value)| (key.as_str(), value.as_str())));
        command
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.node_mut(id).child.take() {
            child.kill().expect("kill");
            child.wait().expect("reap");
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self, id: u64) -> std::process::ExitStatus {
        let mut child = self.node_mut(id).child.take().expect("running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on our own unreaped child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "node {id} did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub async fn restart(&mut self, id: u64) {
        self.spawn(id);
        self.wait_ready(id, Duration::from_secs(60)).await;
    }

    pub async fn wait_ready(&self, id: u64, timeout: Duration) {
        let url = format!("{}/health/ready", self.node(id).url());
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(response) = self.client.get(&url).timeout(Duration::from_secs(2)).send().await {
                if response.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "node {id} not ready within {timeout:?}; log in {}", self.data_dir(id).display());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of a node's log (for failure messages).
    pub fn log_tail(&self, id: u64, lines: usize) -> String {
        let text = std::fs::read_to_string(self.data_dir(id).join("settle.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(TestNode::url).collect()
    }

    pub fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|node| node.child.is_some()).map(|node| node.id).collect()
    }

    /// `/v1/cluster` from one node.
    pub async fn cluster_view(&self, id: u64) -> Value {
        self.get_json(id, "/v1/cluster").await.1
    }

    /// GET a JSON document; a request that fails (the node down or slower than the client's
    /// timeout) is status 0 with the error, so polling loops retry until their own deadline.
    pub async fn get_json(&self, id: u64, path: &str) -> (u16, Value) {
        let response = match self.client.get(format!("{}{path}", self.node(id).url())).send().await {
            Ok(response) => response,
            Err(error) => return (0, json!({ "request_error": error.to_string() })),
        };
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post_json(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.post(format!("{}{path}", self.node(id).url())).json(body).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn put_json(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        let response = self.client.put(format!("{}{path}", self.node(id).url())).json(body).send().await.expect("request");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// POSTs until the cluster answers something other than 5xx (a failover in progress), for
    /// at most 30 s; the last answer.
    pub async fn post_settled(&self, id: u64, path: &str, body: &Value) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, reply) = self.post_json(id, path, body).await;
            if status < 500 || Instant::now() > deadline {
                return (status, reply);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates an account through a node, retrying while the cluster answers 5xx.
    pub async fn create_account(&self, id: u64, account: &str, currency: &str, kind: &str) {
        let body = json!({ "id": account, "currency": currency, "kind": kind });
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, reply) = self.post_json(id, "/v1/accounts", &body).await;
            if status == 201 || status == 200 {
                return;
            }
            assert!(status >= 500 && Instant::now() < deadline, "create {account}: {status} {reply}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
