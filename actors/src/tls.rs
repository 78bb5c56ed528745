//! Mutual TLS for the peer transport (rustls with the ring provider): every node presents a
//! certificate signed by the cluster's CA and accepts only peers that do the same. A node's
//! certificate names its node id as the DNS name `node-<id>.settle` (`node_name`): the
//! connecting side asks for that name, so it talks to the node it meant; the accepting side
//! checks that the node id every frame claims is the one in the certificate that carried it
//! (`certified_as`). `generate` makes a throwaway CA and node certificates (`settle certs`,
//! `settle local`, the tests).

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use settle_cluster::ids::NodeId;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::{TlsAcceptor, TlsConnector};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: no PEM {what} found")]
    Pem { path: String, what: &'static str },
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
    #[error("generating certificates: {0}")]
    Generate(String),
    #[error("writing {path}: {source}")]
    Write { path: String, source: std::io::Error },
}

/// The DNS name a node's certificate carries: its node id, which binds a connection to a node.
pub fn node_name(node: NodeId) -> String {
    format!("node-{node}.settle")
}

/// Whether `certificate` (already verified against the cluster CA during the handshake) is the
/// certificate of node `claimed`.
pub fn certified_as(certificate: &CertificateDer<'_>, claimed: NodeId) -> bool {
    let Ok(name) = ServerName::try_from(node_name(claimed)) else {
        return false;
    };
    let Ok(end_entity) = webpki::EndEntityCert::try_from(certificate) else {
        return false;
    };
    end_entity.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Writes a private key readable by its owner only.
fn write_private(path: PathBuf, text: String) -> Result<PathBuf, TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut file| file.write_all(text.as_bytes()));
    written.map_err(|source| TlsError::Write { path: path.display().to_string(), source })?;
    Ok(path)
}

/// The files of one node's peer TLS identity.
#[derive(Debug, Clone)]
pub struct NodeCertificate {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// Makes a cluster CA and a certificate per node (naming `node-<id>.settle` and its IP) in
/// `dir`: `ca.pem`, `node-<id>.pem`, `node-<id>.key`. The CA's key is not kept: a throwaway
/// cluster for development and tests. Production clusters use their own CA (see the README).
pub fn generate(dir: &Path, nodes: &[(NodeId, IpAddr)]) -> Result<Vec<(NodeId, NodeCertificate)>, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
    let generate_error = |error: rcgen::Error| TlsError::Generate(error.to_string());
    let write = |path: PathBuf, text: String| -> Result<PathBuf, TlsError> {
        std::fs::write(&path, text).map_err(|source| TlsError::Write { path: path.display().to_string(), source })?;
        Ok(path)
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "settle cluster CA");
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().map_err(generate_error)?).map_err(generate_error)?;
    let ca_path = write(dir.join("ca.pem"), ca.pem())?;
    let mut certificates = Vec::new();
    for (node, ip) in nodes {
        let key = KeyPair::generate().map_err(generate_error)?;
        let mut params = CertificateParams::new(vec![node_name(*node)]).map_err(generate_error)?;
        params.subject_alt_names.push(SanType::IpAddress(*ip));
        params.distinguished_name.push(DnType::CommonName, node_name(*node));
        let certificate = params.signed_by(&key, &ca).map_err(generate_error)?;
        let cert = write(dir.join(format!("node-{node}.pem")), certificate.pem())?;
        let key_path = dir.join(format!("node-{node}.key"));
        let key = write_private(key_path, key.serialize_pem())?;
        certificates.push((*node, NodeCertificate { cert, key, ca: ca_path.clone() }));
    }
    Ok(certificates)
}

/// Both sides of mTLS for one node.
pub struct PeerTls {
    pub acceptor: TlsAcceptor,
    pub connector: TlsConnector,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.display().to_string(), source })
}

/// A certificate chain and its private key, from PEM files.
fn read_identity(cert: &Path, key: &Path) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(cert)?).filter_map(Result::ok).collect();
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.display().to_string(), what: "certificate" });
    }
    let key =
        PrivateKeyDer::from_pem_slice(&read(key)?).map_err(|_| TlsError::Pem { path: key.display().to_string(), what: "private key" })?;
    Ok((chain, key))
}

/// The CA certificates of a PEM file, as trust roots.
fn read_roots(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&read(ca)?).filter_map(Result::ok) {
        roots.add(certificate)?;
    }
    if roots.is_empty() {
        return Err(TlsError::Pem { path: ca.display().to_string(), what: "CA certificate" });
    }
    Ok(roots)
}

/// Installs ring as the process's TLS crypto provider (once; later calls do nothing). reqwest is
/// built without a provider of its own, and building any client, even a plain-HTTP one, panics
/// without one: every place that builds a client calls this first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// TLS for the client HTTP API: the node's certificate chain and key (PEM), no client
/// certificates (clients authenticate with API keys), HTTP/2 and HTTP/1.1 offered by ALPN.
pub fn http_server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let (chain, key) = read_identity(cert, key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS client that trusts only the CA certificates in `ca` (PEM): how the tools and tests
/// reach a cluster whose HTTPS certificates come from its own CA.
pub fn client_config_trusting(ca: &Path) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(read_roots(ca)?)
        .with_no_client_auth())
}

/// Loads the node's certificate chain and key and the cluster CA (all PEM).
pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<PeerTls, TlsError> {
    let (chain, key) = read_identity(cert, key)?;
    let roots = read_roots(ca)?;
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|error| TlsError::Verifier(error.to_string()))?;
    let server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(PeerTls { acceptor: TlsAcceptor::from(Arc::new(server)), connector: TlsConnector::from(Arc::new(client)) })
}
