//! Who may move money: API keys with roles (a table of role × endpoint decisions), signed
//! merchant requests (HMAC-SHA256 and Ed25519, with their edge cases), per-key rate limits,
//! revocation, the tamper-evident audit log (verified over HTTP and from a node's disk, where
//! one edited record is found), and `/metrics` on its own listener.

mod common;

use common::{TestCluster, ADMIN_KEY};
use reqwest::Method;
use ring::signature::KeyPair;
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

fn now_s() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A key as the tests hold it.
#[derive(Clone)]
struct Key {
    id: String,
    key: String,
    signing_secret: Option<String>,
}

/// How a request is signed (the contract in the README: five lines, each ending in "\n").
fn message(method: &Method, path_and_query: &str, timestamp: u64, nonce: &str, body: &[u8]) -> String {
    let digest = hex::encode(ring::digest::digest(&ring::digest::SHA256, body));
    format!("{method}\n{path_and_query}\n{timestamp}\n{nonce}\n{digest}\n")
}

fn hmac_header(key: &Key, method: &Method, path: &str, timestamp: u64, nonce: &str, body: &[u8]) -> String {
    let secret = key.signing_secret.as_ref().expect("a merchant key has a signing secret");
    let mac = ring::hmac::sign(
        &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()),
        message(method, path, timestamp, nonce, body).as_bytes(),
    );
    format!("key_id={},timestamp={timestamp},nonce={nonce},alg=hmac-sha256,signature={}", key.id, hex::encode(mac.as_ref()))
}

struct Client {
    http: reqwest::Client,
    nonces: std::sync::atomic::AtomicU64,
}

impl Client {
    fn new() -> Client {
        settle_actors::tls::install_crypto_provider();
        Client { http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap(), nonces: 0.into() }
    }

    /// Sends a request as `key`: a merchant key signs it (HMAC), any other carries its bearer;
    /// `None` sends no credentials.
    async fn send(
        &self,
        base: &str,
        key: Option<&Key>,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let bytes = body.map(|body| serde_json::to_vec(body).unwrap()).unwrap_or_default();
        let mut request = self.http.request(method.clone(), format!("{base}{path}"));
        if body.is_some() {
            request = request.header("content-type", "application/json").body(bytes.clone());
        }
        match key {
            Some(key) if key.signing_secret.is_some() => {
                let nonce = format!("n{}-{}", std::process::id(), self.nonces.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
                request = request.header("settle-signature", hmac_header(key, &method, path, now_s(), &nonce, &bytes));
            }
            Some(key) => request = request.bearer_auth(&key.key),
            None => {}
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, response.json().await.unwrap_or(Value::Null), headers)
    }
}

async fn create_key(cluster: &TestCluster, body: Value) -> Key {
    let (status, created) = cluster.post_json(1, "/v1/api_keys", &body).await;
    assert_eq!(status, 201, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("settle_"), "{key}");
    Key { id: created["id"].as_str().unwrap().to_string(), key, signing_secret: created["signing_secret"].as_str().map(str::to_string) }
}

async fn fund(cluster: &TestCluster, id: &str, to: &str, amount: &str) {
    let body = json!({ "id": id, "from": "bank", "to": to, "amount": amount, "currency": "USD" });
    let (status, reply) = cluster.post_json(1, "/v1/transfers", &body).await;
    assert!(status == 201 || status == 202, "{reply}");
}

/// The role table, request by request: admin, operator, merchant (bound to m1, signing),
/// customer_app (bound to c1) and auditor keys each get exactly the statuses the table says;
/// without a key or with a wrong one every guarded endpoint answers 401; health stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_gets_what_the_endpoint_table_says() {
    let cluster = TestCluster::start(3, 4).await;
    for (id, kind) in [("bank", "settlement"), ("m1", "merchant"), ("c1", "customer"), ("other", "customer")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    fund(&cluster, "fund-m1", "m1", "100.00").await;
    fund(&cluster, "fund-c1", "c1", "100.00").await;
    let admin = Key { id: "bootstrap".to_string(), key: ADMIN_KEY.to_string(), signing_secret: None };
    let operator = create_key(&cluster, json!({ "role": "operator" })).await;
    let merchant = create_key(&cluster, json!({ "role": "merchant", "accounts": ["m1"] })).await;
    let customer = create_key(&cluster, json!({ "role": "customer_app", "accounts": ["c1"] })).await;
    let auditor = create_key(&cluster, json!({ "role": "auditor" })).await;
    assert!(merchant.signing_secret.is_some() && customer.signing_secret.is_none());
    let roles = [("admin", &admin), ("operator", &operator), ("merchant", &merchant), ("customer_app", &customer), ("auditor", &auditor)];

    // (method, path, body; `{role}` is replaced by the role's name) → status per role, in
    // the order admin, operator, merchant, customer_app, auditor.
    let table: Vec<(Method, &str, Option<Value>, [u16; 5])> = vec![
        (Method::GET, "/v1/cluster", None, [200, 200, 200, 200, 200]),
        (Method::GET, "/metrics", None, [200, 200, 403, 403, 200]),
        (Method::POST, "/v1/accounts", Some(json!({ "id": "new-{role}", "currency": "USD" })), [201, 201, 403, 403, 403]),
        (
            Method::POST,
            "/v1/accounts/batch",
            Some(json!({ "accounts": [{ "id": "batch-{role}", "currency": "USD" }] })),
            [200, 200, 403, 403, 403],
        ),
        (Method::GET, "/v1/accounts/m1", None, [200, 200, 200, 403, 200]),
        (Method::GET, "/v1/accounts/c1", None, [200, 200, 403, 200, 200]),
        (Method::GET, "/v1/accounts/m1/transfers", None, [200, 200, 200, 403, 200]),
        (Method::GET, "/v1/accounts/c1/transfers", None, [200, 200, 403, 200, 200]),
        (
            Method::POST,
            "/v1/transfers",
            Some(json!({ "id": "bank-{role}", "from": "bank", "to": "other", "amount": "1.00", "currency": "USD" })),
            [201, 201, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/transfers",
            Some(json!({ "id": "m1-{role}", "from": "m1", "to": "other", "amount": "1.00", "currency": "USD" })),
            [201, 201, 201, 403, 403],
        ),
        (
            Method::POST,
            "/v1/transfers",
            Some(json!({ "id": "c1-{role}", "from": "c1", "to": "other", "amount": "1.00", "currency": "USD" })),
            [201, 201, 403, 201, 403],
        ),
        (
            Method::POST,
            "/v1/transfers/batch",
            Some(json!({ "transfers": [{ "id": "mb-{role}", "from": "m1", "to": "other", "amount": "1.00", "currency": "USD" }] })),
            [200, 200, 200, 403, 403],
        ),
        (Method::GET, "/v1/transfers/fund-m1", None, [200, 200, 200, 403, 200]),
        (Method::GET, "/v1/transfers/fund-c1", None, [200, 200, 403, 200, 200]),
        (Method::GET, "/v1/api_keys", None, [200, 403, 403, 403, 403]),
        (Method::POST, "/v1/api_keys", Some(json!({ "role": "auditor", "label": "by {role}" })), [201, 403, 403, 403, 403]),
        (Method::GET, "/v1/audit", None, [200, 403, 403, 403, 200]),
        (Method::GET, "/admin/faults", None, [200, 403, 403, 403, 403]),
        (Method::DELETE, "/admin/drain", None, [200, 200, 403, 403, 403]),
        // Stops last: they freeze `other`'s debits (nobody debits it above).
        (
            Method::POST,
            "/v1/risk/stops",
            Some(json!({ "id": "stop-{role}", "target": "account", "account": "other", "reason": "test" })),
            [201, 201, 403, 403, 403],
        ),
        (Method::GET, "/v1/accounts/other/stops", None, [200, 200, 403, 403, 200]),
        (Method::POST, "/v1/risk/stops/stop-{role}/lift", Some(json!({ "account": "other", "reason": "test" })), [200, 200, 403, 403, 403]),
    ];
    let client = Client::new();
    let base = cluster.node(2).url();
    let wrong = Key { id: "x".to_string(), key: "settle_0123456789abcdef_wrong".to_string(), signing_secret: None };
    let mut mismatches = Vec::new();
    for (method, path, body, expected) in &table {
        for ((role, key), want) in roles.iter().zip(expected) {
            let body = body.as_ref().map(|body| serde_json::from_str::<Value>(&body.to_string().replace("{role}", role)).unwrap());
            let path = path.replace("{role}", role);
            let (status, answer, _) = client.send(&base, Some(key), method.clone(), &path, body.as_ref()).await;
            if status != *want {
                mismatches.push(format!("{role} {method} {path}: {status} (want {want}) {answer}"));
            } else if status == 403 {
                assert_eq!(error_code(&answer), "forbidden", "{role} {method} {path}");
            }
        }
        for (who, key) in [("no key", None), ("wrong key", Some(&wrong))] {
            let (status, answer, _) = client.send(&base, key, method.clone(), path, body.as_ref()).await;
            if status != 401 || error_code(&answer) != "unauthorized" {
                mismatches.push(format!("{who} {method} {path}: {status} {answer}"));
            }
        }
    }
    assert!(mismatches.is_empty(), "decisions that differ from the table:\n{}", mismatches.join("\n"));
    for path in ["/health/live", "/health/ready"] {
        assert_eq!(client.send(&base, None, Method::GET, path, None).await.0, 200, "{path} needs no key");
    }
    // A refused debit moved nothing.
    let (_, other) = cluster.get_json(1, "/v1/accounts/other").await;
    let expected_other: u32 = table
        .iter()
        .filter(|(method, path, _, _)| *method == Method::POST && path.starts_with("/v1/transfers"))
        .map(|(_, _, _, statuses)| statuses.iter().filter(|status| **status == 201 || **status == 200).count() as u32)
        .sum();
    assert_eq!(other["balance"], format!("{expected_other}.00"), "only the allowed transfers reached `other`: {other}");
}

/// Signed merchant requests: a good HMAC signature passes; a signature over another body, a
/// stale timestamp, a nonce already used (through another node) and a bearer-only merchant
/// are refused with their codes and move nothing; an Ed25519 signature from a registered
/// public key passes and a wrong one does not; a revoked key is refused on every node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_requests_and_their_edge_cases() {
    let cluster = TestCluster::start(3, 4).await;
    for (id, kind) in [("bank", "settlement"), ("m1", "merchant"), ("payee", "customer")] {
        cluster.create_account(1, id, "USD", kind).await;
    }
    fund(&cluster, "fund-m1", "m1", "100.00").await;
    let merchant = create_key(&cluster, json!({ "role": "merchant", "accounts": ["m1"] })).await;
    let client = Client::new();
    let path = "/v1/transfers";
    let post = |node: u64, signature: String, body: Vec<u8>| {
        let url = format!("{}{path}", cluster.node(node).url());
        let request = client.http.post(url).header("content-type", "application/json").header("settle-signature", signature).body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            (status, response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let body =
        |id: &str| serde_json::to_vec(&json!({ "id": id, "from": "m1", "to": "payee", "amount": "1.00", "currency": "USD" })).unwrap();

    let good = hmac_header(&merchant, &Method::POST, path, now_s(), "nonce-1", &body("s1"));
    assert_eq!(post(1, good.clone(), body("s1")).await.0, 201);
    let replay = post(2, good, body("s1")).await;
    assert_eq!((replay.0, error_code(&replay.1)), (401, "nonce_reused"), "the nonce is spent cluster-wide: {}", replay.1);

    let other_body = hmac_header(&merchant, &Method::POST, path, now_s(), "nonce-2", &body("s2"));
    let refused = post(1, other_body, body("s2-tampered")).await;
    assert_eq!((refused.0, error_code(&refused.1)), (401, "signature_invalid"), "{}", refused.1);

    let stale = hmac_header(&merchant, &Method::POST, path, now_s() - 301, "nonce-3", &body("s3"));
    let refused = post(1, stale, body("s3")).await;
    assert_eq!((refused.0, error_code(&refused.1)), (401, "signature_expired"), "{}", refused.1);
    let future = hmac_header(&merchant, &Method::POST, path, now_s() + 301, "nonce-4", &body("s4"));
    assert_eq!(post(1, future, body("s4")).await.0, 401);

    let bearer =
        client.http.post(format!("{}{path}", cluster.node(1).url())).bearer_auth(&merchant.key).json(&json!({})).send().await.unwrap();
    let answer: Value = bearer.json().await.unwrap();
    assert_eq!(error_code(&answer), "signature_required", "{answer}");

    // Ed25519: the merchant registers its public key; the cluster never sees the private one.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let public = hex::encode(pair.public_key().as_ref());
    let signer = create_key(&cluster, json!({ "role": "merchant", "accounts": ["m1"], "ed25519_public_key": public })).await;
    let ed_header = |nonce: &str, signed: &[u8]| {
        let signature = pair.sign(message(&Method::POST, path, now_s(), nonce, signed).as_bytes());
        format!("key_id={},timestamp={},nonce={nonce},alg=ed25519,signature={}", signer.id, now_s(), hex::encode(signature.as_ref()))
    };
    assert_eq!(post(3, ed_header("ed-1", &body("e1")), body("e1")).await.0, 201);
    let forged = post(3, ed_header("ed-2", &body("e2")), body("e2-other")).await;
    assert_eq!((forged.0, error_code(&forged.1)), (401, "signature_invalid"));

    // Exactly the two signed transfers moved money.
    let (_, payee) = cluster.get_json(1, "/v1/accounts/payee").await;
    assert_eq!(payee["balance"], "2.00", "{payee}");

    // Revoked: refused at once where revoked, and on every node within the key cache's life.
    let (status, _) = {
        let response = cluster.client.delete(format!("{}/v1/api_keys/{}", cluster.node(1).url(), merchant.id)).send().await.unwrap();
        (response.status().as_u16(), ())
    };
    assert_eq!(status, 200);
    let mut attempt = 0;
    for node in 1..=3 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            attempt += 1;
            let nonce = format!("after-revoke-{attempt}");
            let (status, answer) = post(node, hmac_header(&merchant, &Method::POST, path, now_s(), &nonce, &body("r1")), body("r1")).await;
            if status == 401 {
                assert_eq!(error_code(&answer), "unauthorized");
                break;
            }
            assert!(Instant::now() < deadline, "node {node} still accepts a revoked key: {status} {answer}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let (_, payee) = cluster.get_json(1, "/v1/accounts/payee").await;
    assert!(payee["balance"] == "2.00" || payee["balance"] == "3.00", "at most one request raced the revocation: {payee}");
}

/// A key's token bucket: its burst passes, the next request gets 429 with Retry-After and
/// RateLimit-* headers, and nothing of it is applied. The audit chain records who did what,
/// `settle audit verify` checks it over HTTP, and after one record is edited in a stopped
/// node's state store the offline check names that record; `/metrics` is served without a key
/// only on `--metrics-addr`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_audit_chain_and_metrics_listener() {
    let mut cluster = TestCluster::start(3, 4).await;
    cluster.create_account(1, "bank", "USD", "settlement").await;
    cluster.create_account(1, "c1", "USD", "customer").await;
    fund(&cluster, "fund-c1", "c1", "10.00").await;
    let limited =
        create_key(&cluster, json!({ "role": "customer_app", "accounts": ["c1"], "rate_limit": { "per_second": 1, "burst": 3 } })).await;
    let client = Client::new();
    let base = cluster.node(1).url();
    let mut statuses = Vec::new();
    let mut last_headers = None;
    for n in 0..4 {
        let body = json!({ "id": format!("rl-{n}"), "from": "c1", "to": "bank", "amount": "1.00", "currency": "USD" });
        let (status, answer, headers) = client.send(&base, Some(&limited), Method::POST, "/v1/transfers", Some(&body)).await;
        if status == 429 {
            assert_eq!(error_code(&answer), "rate_limited", "{answer}");
        }
        statuses.push(status);
        last_headers = Some(headers);
    }
    assert_eq!(statuses, vec![201, 201, 201, 429], "a burst of 3, then refused");
    let headers = last_headers.unwrap();
    for name in ["retry-after", "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
        assert!(headers.contains_key(name), "429 carries {name}: {headers:?}");
    }
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "0");
    let (status, _) = cluster.get_json(1, "/v1/transfers/rl-3").await;
    assert_eq!(status, 404, "the refused transfer was not applied");

    // The audit chain: the key creation and the transfers, with who did them.
    let auditor = create_key(&cluster, json!({ "role": "auditor" })).await;
    let (status, page, _) = client.send(&cluster.node(2).url(), Some(&auditor), Method::GET, "/v1/audit?limit=1000", None).await;
    assert_eq!(status, 200, "{page}");
    let records = page["records"].as_array().unwrap();
    let by_limited: Vec<&Value> = records.iter().filter(|record| record["event"]["key_id"] == limited.id.as_str()).collect();
    assert_eq!(by_limited.len(), 4, "every attempt is audited, the refused one too: {page}");
    assert_eq!(by_limited[3]["event"]["status"], 429);
    assert_eq!(by_limited[0]["event"]["targets"][0], "rl-0");
    assert!(records.iter().any(|record| record["event"]["operation"] == "POST /v1/api_keys" && record["event"]["key_id"] == "bootstrap"));
    let settle = env!("CARGO_BIN_EXE_settle");
    let verify = Command::new(settle).args(["audit", "verify", "--target", &base, "--api-key", &auditor.key]).output().unwrap();
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "online verify: {out}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(out.contains("intact"), "{out}");

    // Edit one audit record on node 3's disk, well formed, its checksums valid: a new key id.
    cluster.terminate(3);
    let state = cluster.data_dir(3).join("state");
    {
        use settle_cluster::store::KvStore;
        let store = settle_actors::state_store::StateStore::open(&state).unwrap();
        let (start, end) = settle_cluster::ledger::keys::kind_range(0, 0, settle_cluster::ledger::keys::AUDIT);
        let stored = store.scan(&start, &end, usize::MAX, false);
        assert!(stored.len() >= 4, "node 3 holds the chain");
        let (key, value) = stored[2].clone();
        let mut record: settle_cluster::ledger::AuditRecord =
            settle_cluster::codec::decode(settle_cluster::ledger::LEDGER_FORMAT_VERSION, &value).unwrap();
        record.event.key_id = "nobody".to_string();
        let mut batch = settle_cluster::store::WriteBatch::default();
        batch.put(key, settle_cluster::codec::encode(settle_cluster::ledger::LEDGER_FORMAT_VERSION, &record));
        store.write(batch).unwrap();
        store.persist().unwrap();
    }
    let offline = Command::new(settle).args(["audit", "verify", "--data-dir"]).arg(cluster.data_dir(3)).output().unwrap();
    let err = String::from_utf8_lossy(&offline.stderr);
    assert!(!offline.status.success(), "the edit is found");
    assert!(err.contains("record 2's contents do not match its hash"), "{err}");
    cluster.terminate(2);
    let untouched = Command::new(settle).args(["audit", "verify", "--data-dir"]).arg(cluster.data_dir(2)).output().unwrap();
    assert!(untouched.status.success(), "node 2's copy is intact: {}", String::from_utf8_lossy(&untouched.stderr));

    // /metrics: a key on the API port, none on --metrics-addr.
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    cluster.node_env.entry(2).or_default().push(("SETTLE_METRICS_ADDR".to_string(), format!("127.0.0.1:{metrics_port}")));
    cluster.restart(2).await;
    let open = client.http.get(format!("http://127.0.0.1:{metrics_port}/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.text().await.unwrap().contains("settle_audit_append_failures_total"));
    let guarded = client.http.get(format!("{}/metrics", cluster.node(2).url())).send().await.unwrap();
    assert_eq!(guarded.status(), 401);

    // A flood of wrong keys from one address is cut off (429 auth_throttled, no lookups), and
    // the address is served again once it stops failing.
    let node1 = cluster.node(1).url();
    let guessed = Key { id: "guess".to_string(), key: "settle_0123456789abcdef_guess".to_string(), signing_secret: None };
    let mut throttled_after = None;
    for attempt in 0..300 {
        let (status, answer, headers) = client.send(&node1, Some(&guessed), Method::GET, "/v1/cluster", None).await;
        if status == 429 {
            assert_eq!(error_code(&answer), "auth_throttled", "{answer}");
            assert!(headers.contains_key("retry-after"));
            throttled_after = Some(attempt);
            break;
        }
        assert_eq!(status, 401, "{answer}");
    }
    let attempts = throttled_after.expect("a flood of wrong keys is throttled");
    assert!(attempts >= 100, "the burst of 100 failures passes first: throttled after {attempts}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = client.send(&node1, Some(&auditor), Method::GET, "/v1/cluster", None).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "the address is served again once it stops failing");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
