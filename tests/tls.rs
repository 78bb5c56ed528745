//! Peer mutual TLS: nodes configured with a certificate, key and the cluster CA talk to each
//! other over TLS (the cluster elects leaders and moves money), and a peer connection without a
//! certificate from that CA is refused.

mod common;

use common::TestCluster;
use serde_json::json;
use std::io::Write;
use std::time::{Duration, Instant};

/// With peer mTLS configured the cluster works, and a peer without a CA-signed certificate is
/// refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_mutual_tls_and_refuse_strangers() {
    // Ready means each node hears a quorum of peers: over TLS here.
    let cluster = TestCluster::start_tls(3, 4, &[]).await;
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(2, "alice", "USD", "customer").await;
    let (status, body) = cluster
        .post_json(3, "/v1/transfers", &json!({ "id": "tls-1", "from": "bank", "to": "alice", "amount": "3.00", "currency": "USD" }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(cluster.get_json(1, "/v1/accounts/alice").await.1["balance"], "3.00");

    // A plaintext peer: the node refuses it during the TLS handshake.
    let mut stranger = std::net::TcpStream::connect(("127.0.0.1", cluster.node(1).peer_port)).unwrap();
    let _ = stranger.write_all(&[0u8; 64]);
    drop(stranger);
    let log = cluster.data_dir(1).join("settle.log");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("peer tls handshake refused") {
            break;
        }
        assert!(Instant::now() < deadline, "node 1 did not refuse the plaintext peer:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The client API over HTTPS (`--http-tls-cert`/`--http-tls-key`, here through the
/// `SETTLE_HTTP_TLS_*` environment): a client trusting the cluster CA moves money through one
/// node and reads it back through another; plain HTTP to the same port gets no answer, and a
/// client that does not trust the CA fails the handshake; `settle status` (auditor key) and
/// `settle bench` (operator key) work against the secured cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_api_serves_https_and_refuses_plain_http_and_untrusted_clients() {
    let cluster = TestCluster::start_https(3, 4).await;
    assert!(cluster.node(1).url().starts_with("https://"));
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(2, "alice", "USD", "customer").await;
    let (status, body) = cluster
        .post_json(2, "/v1/transfers", &json!({ "id": "https-1", "from": "bank", "to": "alice", "amount": "4.00", "currency": "USD" }))
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(cluster.get_json(3, "/v1/accounts/alice").await.1["balance"], "4.00");

    let port = cluster.node(1).http_port;
    let plain = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
    let answer = plain.get(format!("http://127.0.0.1:{port}/health/live")).send().await;
    assert!(answer.as_ref().map_or(true, |response| !response.status().is_success()), "plain HTTP was served: {answer:?}");

    let other = tempfile::tempdir().unwrap();
    let other_ca = settle_actors::tls::generate(other.path(), &[(1, "127.0.0.1".parse().unwrap())]).unwrap()[0].1.ca.clone();
    let untrusting = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .use_preconfigured_tls(settle_actors::tls::client_config_trusting(&other_ca).unwrap())
        .build()
        .unwrap();
    let refused = untrusting.get(format!("https://127.0.0.1:{port}/health/live")).send().await;
    assert!(refused.is_err(), "a client not trusting the cluster CA connected: {refused:?}");

    // The tools reach the HTTPS cluster with the cluster CA (`--ca-cert`) and a key of the
    // least role that does their job: status reads as an auditor, the bench moves money as an
    // operator.
    let ca = cluster.ca_path();
    let key = |role: &'static str| {
        let cluster = &cluster;
        async move {
            let (status, created) = cluster.post_json(1, "/v1/api_keys", &json!({ "role": role })).await;
            assert_eq!(status, 201, "{created}");
            created["key"].as_str().unwrap().to_string()
        }
    };
    let auditor = key("auditor").await;
    let operator = key("operator").await;
    // Until every node has heard of the others (their addresses travel with peer traffic).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_settle"))
            .args(["status", "--target", &cluster.node(1).url(), "--api-key", &auditor, "--ca-cert"])
            .arg(&ca)
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&status.stdout).to_string();
        if status.status.success() && text.contains("every node up") {
            break;
        }
        assert!(Instant::now() < deadline, "settle status over HTTPS: {text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let bench = tokio::process::Command::new(env!("CARGO_BIN_EXE_settle"))
        .args([
            "bench",
            "--target",
            &cluster.urls().join(","),
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--accounts",
            "50",
            "--concurrency",
            "4",
            "--api-key",
            &operator,
        ])
        .arg("--ca-cert")
        .arg(&ca)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bench.stdout);
    assert!(bench.status.success() && text.contains("conservation   ok"), "settle bench over HTTPS: {text}");
}
