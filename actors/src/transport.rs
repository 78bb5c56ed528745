//! Peer transport: one outbound TCP connection per remote node, carrying length-prefixed,
//! checksummed frames (`[u32 length][u32 crc32][payload]`, little endian), each frame a batch
//! of messages from one driver round. The length is checked against `frame_bytes_max` before
//! anything is read or decoded. A link that fails drops what it was sending and reconnects;
//! Raft and the request legs retry on their own.

use crate::tls::PeerTls;
use serde::{Deserialize, Serialize};
use settle_cluster::ids::NodeId;
use settle_cluster::message::{decode, encode_into, PeerMessage};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The link a joining node opens to the member named by `--join`, whose node id it does not
/// know yet (node ids start at 1): with TLS the member's certificate must cover the address.
pub const JOIN_LINK: NodeId = 0;

/// Batches queued per link before new ones are dropped.
pub const LINK_QUEUE_BATCHES_MAX: usize = 1_024;
const RECONNECT_DELAY_MS_MIN: u64 = 50;
const RECONNECT_DELAY_MS_MAX: u64 = 1_000;
const CONNECT_TIMEOUT_MS: u64 = 1_000;

#[derive(Serialize, Deserialize)]
struct Frame {
    from: NodeId,
    messages: Vec<PeerMessage>,
}

/// Per-link fault switches (set through the admin endpoint when faults are enabled).
#[derive(Debug, Default)]
pub struct LinkFaults {
    /// Drop everything sent to this peer.
    pub drop_outbound: AtomicBool,
    /// Drop everything received from this peer.
    pub drop_inbound: AtomicBool,
    /// Delay each outbound frame by this many milliseconds.
    pub delay_ms: AtomicU64,
    /// Drop this share (per million) of outbound frames.
    pub loss_per_million: AtomicU64,
}

/// Whether the outbound link to a peer is connected right now.
#[derive(Debug, Default)]
pub struct LinkState {
    pub connected: AtomicBool,
    /// When a frame last arrived from this peer (ms since the Unix epoch; 0 never).
    pub last_received_ms: AtomicU64,
}

#[derive(Debug, Default)]
pub struct TransportStats {
    pub frames_sent: AtomicU64,
    pub frames_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub batches_dropped: AtomicU64,
    pub frames_rejected: AtomicU64,
    pub rejections: TransportRejections,
}

/// One peer of the node: where it listens, its fault switches and its link's state.
#[derive(Debug)]
pub struct PeerEntry {
    pub address: SocketAddr,
    pub faults: LinkFaults,
    pub state: LinkState,
}

/// The node's peers, shared by the driver, the link and reader tasks and the HTTP edge. It
/// grows when a node joins the cluster (`Transport::add_peer`) and shrinks when one is retired
/// (`Transport::remove_peer`).
#[derive(Debug, Default)]
pub struct PeerTable {
    entries: std::sync::RwLock<BTreeMap<NodeId, Arc<PeerEntry>>>,
}

impl PeerTable {
    pub fn get(&self, peer: NodeId) -> Option<Arc<PeerEntry>> {
        self.entries.read().expect("peer table lock").get(&peer).cloned()
    }

    /// Every peer, in id order.
    pub fn all(&self) -> Vec<(NodeId, Arc<PeerEntry>)> {
        self.entries.read().expect("peer table lock").iter().map(|(id, entry)| (*id, entry.clone())).collect()
    }

    fn insert(&self, peer: NodeId, entry: Arc<PeerEntry>) {
        self.entries.write().expect("peer table lock").insert(peer, entry);
    }

    fn remove(&self, peer: NodeId) {
        self.entries.write().expect("peer table lock").remove(&peer);
    }
}

/// The sending half handed to the driver.
pub struct Transport {
    node: NodeId,
    links: BTreeMap<NodeId, mpsc::Sender<Vec<PeerMessage>>>,
    pub peers: Arc<PeerTable>,
    pub stats: Arc<TransportStats>,
    runtime: tokio::runtime::Handle,
    frame_bytes_max: u32,
    tls: Option<Arc<PeerTls>>,
}

impl Transport {
    /// Every peer this node has a link to.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.links.keys().copied()
    }

    /// The address a peer listens on.
    pub fn address(&self, peer: NodeId) -> Option<SocketAddr> {
        self.peers.get(peer).map(|entry| entry.address)
    }

    /// Starts a link to a node that joined (or moved to a new address: the old link is
    /// dropped and a new one opened). Our own id is ignored.
    pub fn add_peer(&mut self, peer: NodeId, address: SocketAddr) {
        if peer == self.node || self.address(peer) == Some(address) {
            return;
        }
        let entry = Arc::new(PeerEntry { address, faults: LinkFaults::default(), state: LinkState::default() });
        self.peers.insert(peer, entry.clone());
        let (sender, receiver) = mpsc::channel(LINK_QUEUE_BATCHES_MAX);
        self.runtime.spawn(peer_link_actor(self.node, peer, entry, self.frame_bytes_max, receiver, self.stats.clone(), self.tls.clone()));
        self.links.insert(peer, sender);
    }

    /// Stops linking to a node retired from the cluster (its link actor ends with its queue).
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.links.remove(&peer);
        self.peers.remove(peer);
    }

    /// Queues messages for a peer; drops them (and counts it) when the link is backed up.
    pub fn send(&self, to: NodeId, messages: Vec<PeerMessage>) {
        let Some(link) = self.links.get(&to) else {
            return;
        };
        if link.try_send(messages).is_err() {
            self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// What arrives from peers: (sender, batch).
pub type Inbound = (NodeId, Vec<PeerMessage>);

/// Binds the peer listener and starts one link task per peer on `runtime`. Received batches go
/// to `inbound` (awaiting room there is the back-pressure on a peer's connection).
pub fn start(
    runtime: &tokio::runtime::Handle,
    node: NodeId,
    listen: SocketAddr,
    peers: BTreeMap<NodeId, SocketAddr>,
    limits: PeerLimits,
    inbound: mpsc::Sender<Inbound>,
    tls: Option<Arc<PeerTls>>,
) -> std::io::Result<Transport> {
    let listener = std::net::TcpListener::bind(listen)?;
    listener.set_nonblocking(true)?;
    let table = Arc::new(PeerTable::default());
    let stats = Arc::new(TransportStats::default());
    {
        let _guard = runtime.enter();
        let listener = TcpListener::from_std(listener)?;
        runtime.spawn(listener_actor(listener, limits, inbound, table.clone(), stats.clone(), tls.clone()));
    }
    let mut transport = Transport {
        node,
        links: BTreeMap::new(),
        peers: table,
        stats,
        runtime: runtime.clone(),
        frame_bytes_max: limits.frame_bytes_max,
        tls,
    };
    for (peer, address) in peers {
        transport.add_peer(peer, address);
    }
    Ok(transport)
}

/// Why the transport refused a connection or a frame, with a counter each (exported as
/// `settle_peer_messages_rejected_total{reason}` beside the core's reasons).
#[derive(Debug, Default)]
pub struct TransportRejections {
    /// A frame's header announced more than `frame_bytes_max`.
    pub frame_oversized: AtomicU64,
    /// A frame's checksum did not match its payload.
    pub frame_checksum: AtomicU64,
    /// A frame's payload did not decode.
    pub frame_undecodable: AtomicU64,
    /// A frame claimed a node id other than the one in the certificate that carried it.
    pub sender_not_certified: AtomicU64,
    /// A connection over `peer_connections_max`.
    pub connections_over_cap: AtomicU64,
    /// A TLS handshake that failed or did not finish within the handshake timeout.
    pub handshake_failed: AtomicU64,
    /// A frame whose payload did not arrive within the read timeout after its header.
    pub frame_timeout: AtomicU64,
}

impl TransportRejections {
    /// Each reason with its count.
    pub fn counts(&self) -> [(&'static str, u64); 7] {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        [
            ("frame_oversized", load(&self.frame_oversized)),
            ("frame_checksum", load(&self.frame_checksum)),
            ("frame_undecodable", load(&self.frame_undecodable)),
            ("sender_not_certified", load(&self.sender_not_certified)),
            ("connections_over_cap", load(&self.connections_over_cap)),
            ("handshake_failed", load(&self.handshake_failed)),
            ("frame_timeout", load(&self.frame_timeout)),
        ]
    }
}

/// Limits of the peer port, against a peer (or anyone who can reach the port) that misbehaves.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    pub frame_bytes_max: u32,
    /// Inbound connections open at once; more are closed at once.
    pub connections_max: usize,
    /// Bytes of frame payloads being read over all connections together: a reader waits for
    /// room before it reads a payload, so memory for inbound frames is bounded in total.
    pub inbound_bytes_max: usize,
    /// A TLS handshake must finish within this.
    pub handshake_timeout_ms: u64,
    /// Once a frame's header arrived, its payload must arrive within this.
    pub frame_read_timeout_ms: u64,
}

impl PeerLimits {
    /// The defaults beside a frame cap: 64 connections, 5 s handshakes, 30 s per frame.
    pub fn with_frame_bytes_max(frame_bytes_max: u32) -> PeerLimits {
        let inbound_bytes_max = usize::try_from(frame_bytes_max).unwrap_or(usize::MAX).saturating_mul(2);
        PeerLimits { frame_bytes_max, connections_max: 64, inbound_bytes_max, handshake_timeout_ms: 5_000, frame_read_timeout_ms: 30_000 }
    }
}

/// Who may have sent a connection's frames: with mutual TLS, the node named in the verified
/// certificate; without, anyone (only allowed on loopback, `--insecure-peers`).
enum PeerIdentity {
    Certified(rustls::pki_types::CertificateDer<'static>),
    Unauthenticated,
}

impl PeerIdentity {
    fn allows(&self, claimed: NodeId) -> bool {
        match self {
            PeerIdentity::Certified(certificate) => crate::tls::certified_as(certificate, claimed),
            PeerIdentity::Unauthenticated => true,
        }
    }
}

/// The listener actor: accepts peer connections (at most `connections_max` at once) and spawns
/// a reader per connection, which decodes frames into the driver actor's inbound mailbox.
async fn listener_actor(
    listener: TcpListener,
    limits: PeerLimits,
    inbound: mpsc::Sender<Inbound>,
    table: Arc<PeerTable>,
    stats: Arc<TransportStats>,
    tls: Option<Arc<PeerTls>>,
) {
    let open = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
    // Permits are bytes (capped where a semaphore's permit count must fit).
    let inbound_bytes = Arc::new(tokio::sync::Semaphore::new(limits.inbound_bytes_max.min(tokio::sync::Semaphore::MAX_PERMITS)));
    loop {
        let Ok((stream, remote)) = listener.accept().await else {
            continue;
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            stats.rejections.connections_over_cap.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%remote, connections_max = limits.connections_max, "peer connection refused: too many open");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let inbound = inbound.clone();
        let table = table.clone();
        let stats = stats.clone();
        let tls = tls.clone();
        let inbound_bytes = inbound_bytes.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let result = match tls {
                Some(tls) => {
                    let handshake = tokio::time::timeout(Duration::from_millis(limits.handshake_timeout_ms), tls.acceptor.accept(stream));
                    match handshake.await {
                        Ok(Ok(stream)) => {
                            let certificate = stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).cloned();
                            let Some(certificate) = certificate else {
                                stats.rejections.handshake_failed.fetch_add(1, Ordering::Relaxed);
                                return;
                            };
                            let identity = PeerIdentity::Certified(certificate.into_owned());
                            read_frames(stream, identity, limits, &inbound_bytes, inbound, table, stats).await
                        }
                        Ok(Err(error)) => {
                            stats.rejections.handshake_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%remote, %error, "peer tls handshake refused");
                            return;
                        }
                        Err(_) => {
                            stats.rejections.handshake_failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(%remote, "peer tls handshake timed out");
                            return;
                        }
                    }
                }
                None => read_frames(stream, PeerIdentity::Unauthenticated, limits, &inbound_bytes, inbound, table, stats).await,
            };
            if let Err(error) = result {
                tracing::debug!(%remote, %error, "peer connection closed");
            }
        });
    }
}

fn invalid(message: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.into())
}

/// Reads frames until the connection closes or misbehaves. The payload buffer grows only as
/// bytes arrive (a header announcing a large frame costs nothing until the bytes come), and is
/// given back after a large frame. A frame whose sender is not the certified node is dropped
/// and counted; a corrupt or undecodable one closes the connection.
#[allow(clippy::too_many_arguments)]
async fn read_frames<S: AsyncRead + Unpin>(
    mut stream: S,
    identity: PeerIdentity,
    limits: PeerLimits,
    inbound_bytes: &tokio::sync::Semaphore,
    inbound: mpsc::Sender<Inbound>,
    table: Arc<PeerTable>,
    stats: Arc<TransportStats>,
) -> std::io::Result<()> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    let mut payload = Vec::new();
    let mut certified: Option<NodeId> = None;
    loop {
        stream.read_exact(&mut header).await?;
        let length = u32::from_le_bytes(header[..4].try_into().expect("4 bytes"));
        let checksum = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        if length > limits.frame_bytes_max {
            stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            stats.rejections.frame_oversized.fetch_add(1, Ordering::Relaxed);
            return Err(invalid(format!("frame of {length} bytes over the cap")));
        }
        payload.clear();
        if payload.capacity() > FRAME_BUFFER_KEEP_BYTES {
            payload = Vec::new();
        }
        // Room among all connections' frames is taken chunk by chunk as bytes arrive (a
        // header alone reserves nothing), and held until the frame is handed on.
        let mut room = Room { semaphore: inbound_bytes, held: 0 };
        let reading = read_payload(&mut stream, length, &mut payload, &mut room);
        match tokio::time::timeout(Duration::from_millis(limits.frame_read_timeout_ms), reading).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                stats.rejections.frame_timeout.fetch_add(1, Ordering::Relaxed);
                return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "frame payload too slow"));
            }
        }
        if crc32fast::hash(&payload) != checksum {
            stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
            stats.rejections.frame_checksum.fetch_add(1, Ordering::Relaxed);
            return Err(invalid("frame checksum mismatch"));
        }
        let frame: Frame = match decode(&payload) {
            Ok(frame) => frame,
            Err(error) => {
                stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
                stats.rejections.frame_undecodable.fetch_add(1, Ordering::Relaxed);
                return Err(invalid(error.to_string()));
            }
        };
        if certified != Some(frame.from) {
            if !identity.allows(frame.from) {
                stats.frames_rejected.fetch_add(1, Ordering::Relaxed);
                stats.rejections.sender_not_certified.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(claimed = frame.from, "peer frame dropped: its sender is not the node its certificate names");
                continue;
            }
            certified = Some(frame.from);
        }
        stats.frames_received.fetch_add(1, Ordering::Relaxed);
        if let Some(entry) = table.get(frame.from) {
            if entry.faults.drop_inbound.load(Ordering::Relaxed) {
                continue;
            }
            entry.state.last_received_ms.store(crate::driver::now_ms(), Ordering::Relaxed);
        }
        if inbound.send((frame.from, frame.messages)).await.is_err() {
            return Ok(());
        }
    }
}

/// Bytes of inbound frames a reader holds room for; given back when dropped.
struct Room<'s> {
    semaphore: &'s tokio::sync::Semaphore,
    held: u32,
}

impl Drop for Room<'_> {
    fn drop(&mut self) {
        self.semaphore.add_permits(usize::try_from(self.held).unwrap_or(0));
    }
}

/// Bytes read (and room taken) per step of a payload.
const PAYLOAD_CHUNK_BYTES: u32 = 64 << 10;

/// Reads a `length`-byte payload into `payload` in chunks, taking room for each chunk first.
async fn read_payload<S: AsyncRead + Unpin>(
    stream: &mut S,
    length: u32,
    payload: &mut Vec<u8>,
    room: &mut Room<'_>,
) -> std::io::Result<()> {
    let mut remaining = length;
    while remaining > 0 {
        let chunk = remaining.min(PAYLOAD_CHUNK_BYTES);
        room.semaphore.acquire_many(chunk).await.map_err(|_| invalid("transport closing"))?.forget();
        room.held += chunk;
        let start = payload.len();
        payload.resize(start + usize::try_from(chunk).expect("u32 fits usize"), 0);
        stream.read_exact(&mut payload[start..]).await?;
        remaining -= chunk;
    }
    Ok(())
}

/// A reader keeps its payload buffer between frames up to this size (larger ones are freed).
const FRAME_BUFFER_KEEP_BYTES: usize = 1 << 20;

/// Bytes of a frame's header: the payload's length, then its crc32.
const FRAME_HEADER_BYTES: usize = 8;

/// One frame as it goes on the wire (`[length][crc32][payload]`), claiming `from` as its
/// sender: for tools and tests that speak to a peer port directly.
pub fn encode_frame(from: NodeId, messages: Vec<PeerMessage>) -> Vec<u8> {
    let mut buffer = Vec::new();
    build_frame(&mut buffer, &Frame { from, messages }, u32::MAX).expect("no cap");
    buffer
}

/// Writes `[length][crc32][payload]` into `buffer` (cleared first), encoding the payload in place
/// behind a header that is filled in afterwards. A payload over `frame_bytes_max` is an error
/// carrying its length.
fn build_frame(buffer: &mut Vec<u8>, frame: &Frame, frame_bytes_max: u32) -> Result<(), u32> {
    buffer.clear();
    buffer.extend_from_slice(&[0u8; FRAME_HEADER_BYTES]);
    encode_into(buffer, frame);
    let payload = &buffer[FRAME_HEADER_BYTES..];
    let length = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    if length > frame_bytes_max {
        return Err(length);
    }
    let checksum = crc32fast::hash(payload);
    buffer[..4].copy_from_slice(&length.to_le_bytes());
    buffer[4..FRAME_HEADER_BYTES].copy_from_slice(&checksum.to_le_bytes());
    Ok(())
}

/// Opens the link to a peer: TCP, then the TLS handshake when configured. `None` on any
/// failure (a refused connect is routine while a peer is down; a failed handshake is logged).
async fn connect(peer: NodeId, address: SocketAddr, tls: Option<&PeerTls>) -> Option<Box<dyn AsyncWrite + Unpin + Send>> {
    let connecting = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), TcpStream::connect(address));
    let stream = connecting.await.ok()?.ok()?;
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return Some(Box::new(stream));
    };
    // Ask for the peer's node name: the handshake then proves it is the node we meant. The
    // join link names the member by its address (its certificate carries its IP).
    let name = if peer == JOIN_LINK {
        rustls::pki_types::ServerName::IpAddress(address.ip().into())
    } else {
        let Ok(name) = rustls::pki_types::ServerName::try_from(crate::tls::node_name(peer)) else {
            return None;
        };
        name
    };
    match tls.connector.connect(name, stream).await {
        Ok(stream) => Some(Box::new(stream)),
        Err(error) => {
            tracing::warn!(peer, %error, "peer tls handshake failed");
            None
        }
    }
}

/// A peer-link actor, one per remote node: its mailbox is the bounded queue of frames for that
/// node; it (re)connects with backoff and writes each frame, dropping a stale queue when the
/// link breaks.
async fn peer_link_actor(
    node: NodeId,
    peer: NodeId,
    entry: Arc<PeerEntry>,
    frame_bytes_max: u32,
    mut queue: mpsc::Receiver<Vec<PeerMessage>>,
    stats: Arc<TransportStats>,
    tls: Option<Arc<PeerTls>>,
) {
    let (address, state) = (entry.address, &entry.state);
    let mut delay_ms = RECONNECT_DELAY_MS_MIN;
    let mut frame = Vec::new();
    'connect: loop {
        let Some(mut stream) = connect(peer, address, tls.as_deref()).await else {
            // Drop what piled up while the peer is unreachable: it is stale by now.
            loop {
                match queue.try_recv() {
                    Ok(_) => stats.batches_dropped.fetch_add(1, Ordering::Relaxed),
                    // The link was replaced (the peer moved) or the transport stopped.
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                    Err(mpsc::error::TryRecvError::Empty) => break,
                };
            }
            tokio::time::sleep(Duration::from_millis(delay_ms)).await;
            delay_ms = (delay_ms * 2).min(RECONNECT_DELAY_MS_MAX);
            continue 'connect;
        };
        delay_ms = RECONNECT_DELAY_MS_MIN;
        state.connected.store(true, Ordering::Relaxed);
        tracing::info!(peer, %address, "peer link connected");
        while let Some(mut messages) = queue.recv().await {
            // Coalesce whatever else is queued into the same frame.
            while messages.len() < 4_096 {
                match queue.try_recv() {
                    Ok(more) => messages.extend(more),
                    Err(_) => break,
                }
            }
            let link_faults = &entry.faults;
            if link_faults.drop_outbound.load(Ordering::Relaxed) {
                continue;
            }
            let loss = link_faults.loss_per_million.load(Ordering::Relaxed);
            if loss > 0 && rand::random::<u64>() % 1_000_000 < loss {
                continue;
            }
            let delay = link_faults.delay_ms.load(Ordering::Relaxed);
            if delay > 0 {
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            if let Err(length) = build_frame(&mut frame, &Frame { from: node, messages }, frame_bytes_max) {
                // The peer would refuse it; raft re-sends in smaller pieces or a snapshot.
                tracing::warn!(peer, length, "outbound frame over the cap dropped");
                stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
                // Give back what the oversized payload made the buffer grow to.
                frame = Vec::new();
                continue;
            }
            let written = match stream.write_all(&frame).await {
                Ok(()) => stream.flush().await,
                Err(error) => Err(error),
            };
            if let Err(error) = written {
                state.connected.store(false, Ordering::Relaxed);
                tracing::info!(peer, %error, "peer link lost");
                continue 'connect;
            }
            stats.frames_sent.fetch_add(1, Ordering::Relaxed);
            stats.bytes_sent.fetch_add(u64::try_from(frame.len()).unwrap_or(0), Ordering::Relaxed);
        }
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_frame() -> Frame {
        let messages = vec![PeerMessage::Raft { shard: 3, message: vec![1, 2, 3, 4] }, PeerMessage::LeaderHint { shard: 1, leader: 2 }];
        Frame { from: 7, messages }
    }

    /// A frame built in place is `[length][crc32][encode(frame)]`, the bytes the reader expects,
    /// and reusing the buffer leaves nothing of the previous frame.
    #[test]
    fn a_frame_built_in_place_is_length_checksum_and_payload() {
        let frame = sample_frame();
        let payload = settle_cluster::message::encode(&frame);
        let mut expected = Vec::new();
        expected.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_le_bytes());
        expected.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
        expected.extend_from_slice(&payload);
        let mut buffer = vec![0xFF; 3];
        build_frame(&mut buffer, &frame, 1 << 20).unwrap();
        assert_eq!(buffer, expected);
        build_frame(&mut buffer, &frame, 1 << 20).unwrap();
        assert_eq!(buffer, expected);
        let decoded: Frame = decode(&buffer[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!((decoded.from, decoded.messages), (frame.from, frame.messages));
    }

    /// A payload over the cap is refused with its length, never sent.
    #[test]
    fn a_frame_over_the_cap_is_refused_with_its_length() {
        let frame = sample_frame();
        let length = u32::try_from(settle_cluster::message::encode(&frame).len()).unwrap();
        let mut buffer = Vec::new();
        assert_eq!(build_frame(&mut buffer, &frame, length - 1), Err(length));
        assert!(build_frame(&mut buffer, &frame, length).is_ok());
    }

    /// Feeds `bytes` to a reader as one connection would, and returns the frames it handed on
    /// (the reader stops at the first corrupt frame or at the end of the bytes).
    fn read_all(bytes: &[u8], identity: PeerIdentity) -> (Vec<Inbound>, Arc<TransportStats>) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let limits = PeerLimits {
                frame_bytes_max: 4_096,
                connections_max: 4,
                inbound_bytes_max: 8_192,
                handshake_timeout_ms: 100,
                frame_read_timeout_ms: 100,
            };
            let room = tokio::sync::Semaphore::new(limits.inbound_bytes_max);
            let (sender, mut receiver) = mpsc::channel(64);
            let stats = Arc::new(TransportStats::default());
            let _ = read_frames(bytes, identity, limits, &room, sender, Arc::new(PeerTable::default()), stats.clone()).await;
            let mut received = Vec::new();
            while let Ok(inbound) = receiver.try_recv() {
                received.push(inbound);
            }
            (received, stats)
        })
    }

    /// A header announcing a frame over the cap is refused before any payload is read.
    #[test]
    fn an_oversized_header_is_refused_without_reading() {
        let mut bytes = (256u32 << 20).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 4]);
        let (received, stats) = read_all(&bytes, PeerIdentity::Unauthenticated);
        assert!(received.is_empty());
        assert_eq!(stats.rejections.frame_oversized.load(Ordering::Relaxed), 1);
    }

    mod properties {
        //! The frame reader against arbitrary and mutated input: it never panics, and it hands
        //! on only frames that arrived whole with a matching checksum.
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Any bytes: the reader returns; whatever it hands on is a frame some sender built.
            #[test]
            fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
                let (received, _) = read_all(&bytes, PeerIdentity::Unauthenticated);
                prop_assert!(received.len() <= 1 + bytes.len() / FRAME_HEADER_BYTES);
            }

            /// A valid frame with one byte changed (or cut short) is dropped, never misread; the
            /// frames before it still arrive.
            #[test]
            fn a_mutated_frame_is_never_misread(position in 0usize..200, flip in 1u8..=255, cut in any::<bool>()) {
                let good = encode_frame(7, sample_frame().messages);
                let mut bytes = good.clone();
                let mut bad = good.clone();
                let position = position % bad.len();
                if cut {
                    bad.truncate(position);
                } else {
                    bad[position] ^= flip;
                }
                bytes.extend_from_slice(&bad);
                let (received, _) = read_all(&bytes, PeerIdentity::Unauthenticated);
                prop_assert!(!received.is_empty(), "the good frame before it arrives");
                for (from, messages) in &received {
                    prop_assert_eq!(*from, 7);
                    prop_assert_eq!(messages, &sample_frame().messages);
                }
            }
        }
    }
}
