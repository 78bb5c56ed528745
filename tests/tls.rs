//! Peer mutual TLS: nodes configured with a certificate, key and the cluster CA talk to each
//! other over TLS (the cluster elects leaders and moves money), and a peer connection without a
//! certificate from that CA is refused.

mod common;

use common::TestCluster;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes a CA and a node certificate for 127.0.0.1 signed by it; returns (cert, key, ca).
fn write_certificates(dir: &Path) -> (String, String, String) {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let node_key = KeyPair::generate().unwrap();
    let node = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&node_key, &ca).unwrap();
    let paths = [dir.join("node.pem"), dir.join("node.key"), dir.join("ca.pem")];
    std::fs::write(&paths[0], node.pem()).unwrap();
    std::fs::write(&paths[1], node_key.serialize_pem()).unwrap();
    std::fs::write(&paths[2], ca.pem()).unwrap();
    let [cert, key, ca] = paths.map(|path| path.display().to_string());
    (cert, key, ca)
}

/// With peer mTLS configured the cluster works, and a peer without a CA-signed certificate is
/// refused at the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_talk_over_mutual_tls_and_refuse_strangers() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key, ca) = write_certificates(certs.path());
    let env = [("SETTLE_TLS_CERT", cert.as_str()), ("SETTLE_TLS_KEY", key.as_str()), ("SETTLE_TLS_CA", ca.as_str())];
    // Ready means each node hears a quorum of peers: over TLS here.
    let cluster = TestCluster::start_with_env(3, 4, &env).await;
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
