//! Issue 12 on real processes: no input from the network can crash a node, stall the cluster or
//! move money. Each finding of the attack report is reproduced against a live 3-node cluster:
//! forged and malformed peer frames (over plain TCP where the test must write raw frames, with
//! `--insecure-peers` on loopback; over mutual TLS for the authentication findings), oversized
//! frame headers, too many connections, and the HTTP findings. Afterwards every node is ready
//! and money is conserved, also across a restart of every node.

mod common;

use common::TestCluster;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use settle_cluster::ids::{AccountId, LegId, NodeId, ShardId, TransferId};
use settle_cluster::ledger::{AccountKind, CreditCmd, Decision, FinalizeCmd, TransferBody};
use settle_cluster::message::{PeerMessage, Request, TransferRequest};
use settle_cluster::money::Currency;
use settle_cluster::placement::shard_of;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SHARDS: u32 = 8;

fn usd() -> Currency {
    Currency::from_code("USD").unwrap()
}

fn account(name: &str) -> AccountId {
    AccountId::new(name).unwrap()
}

/// An account name on a shard other than `avoid`'s.
fn account_off(prefix: &str, avoid: &str) -> String {
    (0..).map(|n| format!("{prefix}-{n}")).find(|name| shard_of(&account(name), SHARDS) != shard_of(&account(avoid), SHARDS)).unwrap()
}

fn credit(id: &str, from: &str, to: &str, amount: i128) -> CreditCmd {
    CreditCmd {
        id: TransferId::new(id).unwrap(),
        from: account(from),
        to: account(to),
        amount,
        currency: usd(),
        payer_shard: shard_of(&account(from), SHARDS),
        prevent: false,
        payer_kind: AccountKind::Customer,
    }
}

/// Writes bytes to a peer port over plain TCP (an insecure cluster's peers accept anyone).
fn send_raw(port: u16, bytes: &[u8]) {
    if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
        let _ = stream.write_all(bytes);
        let _ = stream.flush();
    }
}

fn frame(from: NodeId, messages: Vec<PeerMessage>) -> Vec<u8> {
    settle_actors::transport::encode_frame(from, messages)
}

fn raft_bytes(from: NodeId, to: NodeId, term: u64, kind: settle_cluster::raft::eraftpb::MessageType) -> Vec<u8> {
    use protobuf::Message as _;
    let mut message = settle_cluster::raft::eraftpb::Message::default();
    message.set_msg_type(kind);
    message.from = from;
    message.to = to;
    message.term = term;
    message.write_to_bytes().unwrap()
}

async fn balance(cluster: &TestCluster, node: u64, name: &str) -> String {
    let (status, body) = cluster.get_json(node, &format!("/v1/accounts/{name}")).await;
    assert_eq!(status, 200, "{name}: {body}");
    body["balance"].as_str().unwrap().to_string()
}

/// Every node ready (and live), each account's balance as expected through every node.
async fn assert_healthy_and_conserved(cluster: &TestCluster, expected: &[(&str, &str)]) {
    for node in 1..=3 {
        cluster.wait_ready(node, Duration::from_secs(30)).await;
        let (status, _) = cluster.get_json(node, "/health/live").await;
        assert_eq!(status, 200, "node {node} is live");
        for (name, amount) in expected {
            assert_eq!(balance(cluster, node, name).await, *amount, "{name} through node {node}");
        }
    }
}

/// The value of a `settle_peer_messages_rejected_total` sample with this reason on a node.
async fn rejected(cluster: &TestCluster, node: u64, reason: &str) -> f64 {
    let text = cluster.client.get(format!("{}/metrics", cluster.node(node).url())).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|line| line.starts_with("settle_peer_messages_rejected_total{") && line.contains(&format!("reason=\"{reason}\"")))
        .filter_map(|line| line.rsplit(' ').next().and_then(|value| value.parse::<f64>().ok()))
        .sum()
}

/// Waits until a node has counted at least one rejection for `reason` (the frames are sent
/// asynchronously; the count is what proves they arrived and were dropped).
async fn wait_rejected(cluster: &TestCluster, node: u64, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while rejected(cluster, node, reason).await < 1.0 {
        assert!(Instant::now() < deadline, "node {node} never counted a {reason} rejection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The resident memory of a node's process, in bytes.
fn rss_bytes(cluster: &TestCluster, node: u64) -> u64 {
    let pid = cluster.node(node).child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|line| line.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Forged and malformed peer frames, sent to every node's peer port: negative and misrouted
/// credits, frames claiming the receiver itself or a stranger, undecodable and misaddressed
/// raft messages, out-of-range shards, oversized headers, too many connections, random,
/// truncated and mutated frames. Nothing moves, nothing crashes, every node stays ready, and
/// every node restarts (no committed entry bricks recovery).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_malformed_peer_frames_move_nothing_and_crash_nothing() {
    let mut cluster = TestCluster::start_insecure(3, SHARDS, &[]).await;
    let victim = "victim";
    let mallory = account_off("mallory", victim);
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(1, victim, "USD", "customer").await;
    cluster.create_account(1, &mallory, "USD", "customer").await;
    let (status, body) =
        cluster.post_json(2, "/v1/transfers", &json!({"id":"fund","from":"bank","to":victim,"amount":"10.00","currency":"USD"})).await;
    assert_eq!(status, 201, "{body}");
    let expected = [("bank", "-10.00"), (victim, "10.00"), (mallory.as_str(), "0.00")];

    let victim_shard: ShardId = shard_of(&account(victim), SHARDS);
    let mallory_shard: ShardId = shard_of(&account(&mallory), SHARDS);
    for node in 1..=3u64 {
        let port = cluster.node(node).peer_port;
        let other: NodeId = if node == 1 { 2 } else { 1 };
        // A negative credit would drive the victim below zero.
        let negative =
            PeerMessage::Credits { shard: victim_shard, credits: vec![credit("neg", &mallory, victim, -20_000)], hops: 0, fence: 0 };
        send_raw(port, &frame(other, vec![negative]));
        // A credit whose payee lives on another shard than the one it names panicked on apply.
        let misrouted = PeerMessage::Credits { shard: mallory_shard, credits: vec![credit("mis", "bank", victim, 500)], hops: 0, fence: 0 };
        send_raw(port, &frame(other, vec![misrouted]));
        // A frame claiming to come from the receiver itself killed its driver.
        send_raw(port, &frame(node, vec![PeerMessage::LeaderHint { shard: 0, leader: other }]));
        // From a node that is not a member.
        send_raw(port, &frame(99, vec![PeerMessage::LeaderHint { shard: 0, leader: other }]));
        // Raft bytes that do not parse, a raft message for another node, a shard out of range.
        send_raw(port, &frame(other, vec![PeerMessage::Raft { shard: 1, message: vec![0xff; 40] }]));
        let elsewhere = raft_bytes(other, 42, 1_000, settle_cluster::raft::eraftpb::MessageType::MsgHeartbeat);
        send_raw(port, &frame(other, vec![PeerMessage::Raft { shard: 1, message: elsewhere }]));
        send_raw(port, &frame(other, vec![PeerMessage::LeaderHint { shard: SHARDS + 5, leader: other }]));
        // A decision for a transfer nobody made, with an impossible amount.
        let decision = FinalizeCmd {
            id: TransferId::new("ghost").unwrap(),
            body: TransferBody { from: account(victim), to: account(&mallory), amount: 0, currency: usd() },
            decision: Decision::Credited,
        };
        send_raw(port, &frame(other, vec![PeerMessage::Decisions { shard: victim_shard, decisions: vec![decision], hops: 0, fence: 0 }]));
        // A leg with an invalid transfer (same account) and one with an absurd timeout.
        let item =
            TransferRequest { id: TransferId::new("leg").unwrap(), from: account(victim), to: account(victim), amount: 1, currency: usd() };
        let leg = PeerMessage::Leg {
            leg: LegId(1),
            shard: victim_shard,
            timeout_ms: 1_000,
            request: Request::Transfers(vec![item]),
            request_id: None,
            members_epoch: 0,
        };
        send_raw(port, &frame(other, vec![leg]));
    }
    for node in 1..=3 {
        for reason in [
            "amount_out_of_range",
            "credit_wrong_shard",
            "sender_is_self",
            "sender_not_member",
            "raft_undecodable",
            "raft_not_for_this_replica",
            "shard_out_of_range",
            "same_account",
        ] {
            wait_rejected(&cluster, node, reason).await;
        }
    }

    // Random bytes, truncated and mutated valid frames.
    let mut rng = rand::rngs::StdRng::seed_from_u64(12);
    let valid = frame(2, vec![PeerMessage::LeaderHint { shard: 1, leader: 2 }]);
    for round in 0..60 {
        let port = cluster.node(1 + round % 3).peer_port;
        let bytes: Vec<u8> = match round % 3 {
            0 => (0..rng.gen_range(1..200)).map(|_| rng.gen()).collect(),
            1 => valid[..rng.gen_range(0..valid.len())].to_vec(),
            _ => {
                let mut mutated = valid.clone();
                let position = rng.gen_range(0..mutated.len());
                mutated[position] ^= rng.gen_range(1..=255u8);
                mutated
            }
        };
        send_raw(port, &bytes);
    }

    // Headers announcing 256 MiB frames used to allocate that at once: 8 of them took a node
    // to 2.1 GB. Buffers now grow as bytes arrive.
    let before = rss_bytes(&cluster, 1);
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(("127.0.0.1", cluster.node(1).peer_port)).unwrap();
        let mut header = (256u32 << 20).to_le_bytes().to_vec();
        header.extend_from_slice(&[0u8; 4]);
        header.extend_from_slice(&[7u8; 1024]);
        stream.write_all(&header).unwrap();
        held.push(stream);
    }
    // Past the connection cap (64 by default), connections are closed at once.
    for _ in 0..70 {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", cluster.node(1).peer_port)) {
            held.push(stream);
        }
    }
    wait_rejected(&cluster, 1, "connections_over_cap").await;
    let after = rss_bytes(&cluster, 1);
    assert!(after < before + (64 << 20), "node 1 grew from {before} to {after} bytes on announced frames");
    drop(held);

    assert_healthy_and_conserved(&cluster, &expected).await;
    let (status, body) =
        cluster.post_json(3, "/v1/transfers", &json!({"id":"after","from":victim,"to":mallory,"amount":"1.00","currency":"USD"})).await;
    assert_eq!(status, 201, "the cluster still moves money: {body}");
    let expected = [("bank", "-10.00"), (victim, "9.00"), (mallory.as_str(), "1.00")];

    // A committed bad entry used to panic recovery: every node restarts and agrees.
    for node in 1..=3 {
        cluster.kill(node);
    }
    for node in 1..=3 {
        cluster.spawn(node);
    }
    assert_healthy_and_conserved(&cluster, &expected).await;
}

/// With mutual TLS (the default): a plaintext stranger is refused at the handshake, and so is
/// a certificate from another CA; a real node certificate cannot speak for another node — its
/// frames claiming node 3 (a forged credit of 1,000,000.00 from nobody, an introduction that
/// rewrites node 3's address) are dropped and counted. Nothing moves, no term jumps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_must_be_the_node_their_certificate_names() {
    let cluster = TestCluster::start_tls(3, SHARDS, &[]).await;
    let victim = "victim";
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(1, victim, "USD", "customer").await;
    let ghost = account_off("ghost", victim);
    let expected = [("bank", "0.00"), (victim, "0.00")];
    let terms_before: u64 = shard_terms(&cluster).await;
    let forged_credit = PeerMessage::Credits {
        shard: shard_of(&account(victim), SHARDS),
        credits: vec![credit("mint", &ghost, victim, 100_000_000)],
        hops: 0,
        fence: 0,
    };
    let forged_term = raft_bytes(3, 1, 1_000, settle_cluster::raft::eraftpb::MessageType::MsgHeartbeat);

    // A plaintext stranger: refused at the handshake.
    send_raw(cluster.node(1).peer_port, &frame(3, vec![forged_credit.clone()]));
    wait_rejected(&cluster, 1, "handshake_failed").await;

    // A certificate signed by another CA, naming node 3: refused at the handshake.
    let strange = tempfile::tempdir().unwrap();
    let stranger = settle_actors::tls::generate(strange.path(), &[(3, "127.0.0.1".parse().unwrap())]).unwrap();
    let before = rejected(&cluster, 2, "handshake_failed").await;
    let refused = tls_send(cluster.node(2).peer_port, &stranger[0].1, 3, &frame(3, vec![forged_credit.clone()])).await;
    assert!(refused.is_err(), "a certificate from another CA is refused");
    let deadline = Instant::now() + Duration::from_secs(10);
    while rejected(&cluster, 2, "handshake_failed").await <= before {
        assert!(Instant::now() < deadline, "node 2 did not count the refused handshake");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Node 2's real certificate, claiming to be node 3.
    let node_2 = settle_actors::tls::NodeCertificate {
        cert: cluster.dir.path().join("certs/node-2.pem"),
        key: cluster.dir.path().join("certs/node-2.key"),
        ca: cluster.dir.path().join("certs/ca.pem"),
    };
    let rewrite =
        PeerMessage::NodeInfo { http: "http://203.0.113.66:1".to_string(), version: "evil".to_string(), started_ms: 0, draining: true };
    let raft = PeerMessage::Raft { shard: 0, message: forged_term };
    tls_send(cluster.node(1).peer_port, &node_2, 1, &frame(3, vec![forged_credit, rewrite, raft]))
        .await
        .expect("node 2's certificate is valid");
    wait_rejected(&cluster, 1, "sender_not_certified").await;

    let view = cluster.cluster_view(1).await;
    let node_3 = view["nodes"].as_array().unwrap().iter().find(|node| node["id"] == 3).unwrap().clone();
    assert_ne!(node_3["http"], "http://203.0.113.66:1", "node 3's address was not rewritten: {node_3}");
    assert_healthy_and_conserved(&cluster, &expected).await;
    let terms_after = shard_terms(&cluster).await;
    assert!(terms_after <= terms_before + 3 * u64::from(SHARDS), "terms jumped from {terms_before} to {terms_after}");
}

/// The sum of every shard's term as node 1 sees it.
async fn shard_terms(cluster: &TestCluster) -> u64 {
    let view = cluster.cluster_view(1).await;
    view["shards"].as_array().unwrap().iter().map(|shard| shard["term"].as_u64().unwrap_or(0)).sum()
}

/// Connects to a peer port with a certificate (asking for `server`'s node name) and writes
/// bytes; an error when the handshake fails.
async fn tls_send(port: u16, identity: &settle_actors::tls::NodeCertificate, server: NodeId, bytes: &[u8]) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let tls = settle_actors::tls::load(&identity.cert, &identity.key, &identity.ca).map_err(std::io::Error::other)?;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let name = rustls::pki_types::ServerName::try_from(settle_actors::tls::node_name(server)).map_err(std::io::Error::other)?;
    let mut stream = tls.connector.connect(name, stream).await?;
    stream.write_all(bytes).await?;
    stream.flush().await?;
    // Give the server a moment to read before the connection closes.
    let mut sink = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_millis(500), tokio::io::AsyncReadExt::read(&mut stream, &mut sink)).await;
    Ok(())
}

/// The HTTP findings: every error has the JSON shape (413, bad query strings, bad gzip,
/// unparsable path segments), unsupported methods answer 405, unsupported encodings 415,
/// repeated keys, unknown fields and leading zeros 400, a stalled body 408; the volume counter
/// never wraps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_input_is_validated_and_answered_in_the_error_shape() {
    let cluster = TestCluster::start_with_env(3, SHARDS, &[("SETTLE_HTTP_BODY_TIMEOUT_MS", "500")]).await;
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(1, "alice", "USD", "customer").await;
    let url = cluster.node(1).url();
    let client = &cluster.client;
    let code = |body: &Value| body["error"]["code"].as_str().unwrap_or("<none>").to_string();
    let json_of = |text: String| serde_json::from_str::<Value>(&text).unwrap_or(Value::Null);

    let big = "x".repeat(9 << 20);
    let response = client.post(format!("{url}/v1/transfers")).body(big).send().await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(code(&json_of(response.text().await.unwrap())), "payload_too_large");

    let response = client.get(format!("{url}/v1/accounts/alice/transfers?limit=%ZZ")).send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!((status, code(&json_of(response.text().await.unwrap()))), (400, "invalid_request".to_string()));

    let response = client.get(format!("{url}/v1/accounts/%FF%FE")).send().await.unwrap();
    let status = response.status().as_u16();
    let body = json_of(response.text().await.unwrap());
    assert!(status == 400 || status == 404, "{status}");
    assert!(body["error"]["code"].is_string(), "JSON error for an unparsable path segment: {body}");

    let response =
        client.post(format!("{url}/v1/accounts")).header("Content-Encoding", "gzip").body("this is not gzip").send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!((status, code(&json_of(response.text().await.unwrap()))), (400, "invalid_request".to_string()));

    let response = client.delete(format!("{url}/v1/accounts")).send().await.unwrap();
    let status = response.status().as_u16();
    assert_eq!((status, code(&json_of(response.text().await.unwrap()))), (405, "method_not_allowed".to_string()));

    for encoding in ["br", "zstd"] {
        let response = client
            .post(format!("{url}/v1/accounts"))
            .header("Content-Encoding", encoding)
            .body(r#"{"id":"carol","currency":"USD"}"#)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert_eq!((status, code(&json_of(response.text().await.unwrap()))), (415, "unsupported_encoding".to_string()), "{encoding}");
    }
    assert_eq!(cluster.get_json(1, "/v1/accounts/carol").await.0, 404, "nothing was created");

    let cases = [
        (r#"{"id":"dave","currency":"USD","currency":"EUR"}"#, "/v1/accounts", "invalid_request"),
        (r#"{"id":"dave","currency":"USD","balance":"100.00"}"#, "/v1/accounts", "invalid_request"),
        (r#"{"id":"z1","from":"bank","to":"alice","amount":"01.00","currency":"USD"}"#, "/v1/transfers", "invalid_amount"),
        (r#"{"id":"z2","from":"bank","to":"alice","amount":"1.00","amount":"9.00","currency":"USD"}"#, "/v1/transfers", "invalid_request"),
    ];
    for (body, path, expected) in cases {
        let response = client.post(format!("{url}{path}")).header("Content-Type", "application/json").body(body).send().await.unwrap();
        let status = response.status().as_u16();
        assert_eq!((status, code(&json_of(response.text().await.unwrap()))), (400, expected.to_string()), "{body}");
    }
    assert_eq!(cluster.get_json(1, "/v1/accounts/dave").await.0, 404, "nothing was created");
    assert_eq!(balance(&cluster, 1, "alice").await, "0.00", "nothing moved");

    // A body that stalls half way is answered 408 once the body timeout passes.
    let mut stream = TcpStream::connect(("127.0.0.1", cluster.node(1).http_port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let head = format!(
        "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"id\":",
        common::ADMIN_KEY
    );
    stream.write_all(head.as_bytes()).unwrap();
    let mut answer = String::new();
    let mut buffer = [0u8; 4096];
    while !answer.contains("body_timeout") {
        let read = stream.read(&mut buffer).expect("the node answers the stalled body");
        assert!(read > 0, "the node closed without answering: {answer}");
        answer.push_str(&String::from_utf8_lossy(&buffer[..read]));
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // Volume in minor units passes u64 (twice 1e17 USD = 2e19 cents): the counter keeps rising.
    for id in ["huge-1", "huge-2"] {
        let body = json!({"id": id, "from": "bank", "to": "alice", "amount": "100000000000000000.00", "currency": "USD"});
        let (status, reply) = cluster.post_json(1, "/v1/transfers", &body).await;
        assert_eq!(status, 201, "{reply}");
    }
    let text = client.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
    let volume: f64 = text
        .lines()
        .find(|line| line.starts_with("settle_transfer_volume_minor_total{") && line.contains("currency=\"USD\""))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
        .expect("volume sample");
    assert!(volume >= 2e19, "the volume counter did not wrap: {volume}");
}
