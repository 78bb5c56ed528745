//! Untrusted input against the core: whatever arrives from the peer port — any bytes, any
//! structurally valid message with hostile values — the core never panics, and its ledgers
//! keep every invariant. (`core/validate.rs` drops what is not well-formed for this node.)

use proptest::prelude::*;
use settle_cluster::ids::{AccountId, LegId, NodeId, ShardId, TransferId};
use settle_cluster::ledger::{AccountKind, CreditCmd, Decision, FinalizeCmd, RejectCode, ReserveCmd, TransferBody};
use settle_cluster::message::{decode, AccountRequest, PeerMessage, Reply, Request, TransferRequest};
use settle_cluster::money::Currency;
use settle_cluster::placement::Placement;
use settle_cluster::replica::RaftSettings;
use settle_cluster::{CoreLimits, NodeConfig, NodeCore, Time};
use std::collections::{BTreeMap, BTreeSet};

const SHARDS: u32 = 4;

fn core() -> NodeCore {
    let placement = Placement::new(vec![1, 2, 3], SHARDS);
    let config = NodeConfig { node: 1, placement, raft: RaftSettings::default(), limits: CoreLimits::default(), cache_bytes_max: 1 << 20 };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    NodeCore::new(config, BTreeMap::new(), BTreeSet::new(), std::sync::Arc::new(settle_cluster::store::MemStore::new()), 1, 7, &logger)
        .expect("a fresh core")
}

/// Plays nodes 2 and 3 as well-behaved raft peers for one step: grants votes, acknowledges
/// appends and heartbeats, makes every persist round durable. Enough for node 1 to lead and
/// commit, so hostile input reaches a leader that proposes, not a core that drops everything.
fn honest_peers(core: &mut NodeCore, now: &mut u64) {
    use protobuf::Message as _;
    use settle_cluster::raft::eraftpb::{Message, MessageType};
    *now += 100;
    core.tick(Time { wall_ms: *now, monotonic_ms: *now });
    for _ in 0..8 {
        core.poll();
        let effects = core.drain_effects();
        if effects.is_empty() {
            return;
        }
        for effect in effects {
            match effect {
                settle_cluster::Effect::Persist(round) => core.persisted(round.id),
                settle_cluster::Effect::Send { to, messages } => {
                    for message in messages {
                        let PeerMessage::Raft { shard, message } = message else {
                            continue;
                        };
                        let Ok(request) = Message::parse_from_bytes(&message) else {
                            continue;
                        };
                        let mut answer = Message::default();
                        answer.from = to;
                        answer.to = 1;
                        answer.term = request.term;
                        match request.get_msg_type() {
                            MessageType::MsgRequestPreVote => answer.set_msg_type(MessageType::MsgRequestPreVoteResponse),
                            MessageType::MsgRequestVote => answer.set_msg_type(MessageType::MsgRequestVoteResponse),
                            MessageType::MsgAppend => {
                                answer.set_msg_type(MessageType::MsgAppendResponse);
                                answer.index = request.index + u64::try_from(request.entries.len()).unwrap();
                            }
                            MessageType::MsgHeartbeat => {
                                answer.set_msg_type(MessageType::MsgHeartbeatResponse);
                                answer.commit = request.commit;
                            }
                            _ => continue,
                        }
                        let bytes = answer.write_to_bytes().unwrap();
                        core.receive(to, PeerMessage::Raft { shard, message: bytes });
                    }
                }
                _ => {}
            }
        }
    }
}

fn account() -> impl Strategy<Value = AccountId> {
    (0u8..12).prop_map(|n| AccountId::new(format!("acct-{n}")).unwrap())
}

fn id() -> impl Strategy<Value = TransferId> {
    (0u8..12).prop_map(|n| TransferId::new(format!("t-{n}")).unwrap())
}

fn amount() -> impl Strategy<Value = i128> {
    prop_oneof![Just(0i128), Just(-1), Just(i128::MIN), Just(i128::MAX), -1_000i128..1_000, Just(1_000_000_000_000_000_000_000_001)]
}

fn body() -> impl Strategy<Value = TransferBody> {
    (account(), account(), amount()).prop_map(|(from, to, amount)| TransferBody {
        from,
        to,
        amount,
        currency: Currency::from_code("USD").unwrap(),
    })
}

fn shard() -> impl Strategy<Value = ShardId> {
    prop_oneof![0..SHARDS, Just(SHARDS), Just(u32::MAX)]
}

fn message() -> impl Strategy<Value = PeerMessage> {
    let credit = (id(), body(), shard(), any::<bool>()).prop_map(|(id, body, payer_shard, prevent)| CreditCmd {
        id,
        from: body.from,
        to: body.to,
        amount: body.amount,
        currency: body.currency,
        payer_shard,
        prevent,
        payer_kind: AccountKind::Customer,
    });
    let decision = (id(), body(), any::<bool>()).prop_map(|(id, body, credited)| FinalizeCmd {
        id,
        body,
        decision: if credited { Decision::Credited } else { Decision::Refused(RejectCode::PayeeNotFound) },
    });
    let transfer = (id(), body())
        .prop_map(|(id, body)| TransferRequest { id, from: body.from, to: body.to, amount: body.amount, currency: body.currency })
        .boxed();
    let request = prop_oneof![
        proptest::collection::vec(transfer.clone(), 0..4).prop_map(Request::Transfers),
        (any::<u64>(), proptest::collection::vec(transfer, 0..4))
            .prop_map(|(fence, items)| Request::Fenced { fence, request: settle_cluster::message::FencedRequest::Transfers(items) }),
        proptest::collection::vec((id(), body()).prop_map(|(id, body)| ReserveCmd { id, body }), 0..4).prop_map(Request::Reserve),
        account().prop_map(|id| Request::CreateAccount(AccountRequest {
            id,
            currency: Currency::from_code("USD").unwrap(),
            kind: settle_cluster::ledger::AccountKind::Customer
        })),
        account().prop_map(Request::ReadAccount),
        (shard(), any::<u64>()).prop_map(|(shard, epoch)| Request::Fence { shard, epoch }),
        (shard(), any::<u64>(), proptest::option::of(proptest::collection::vec(any::<u8>(), 0..2_000)))
            .prop_map(|(shard, epoch, after)| Request::BackupChunk { shard, epoch, after }),
        (account(), any::<u32>()).prop_map(|(account, limit)| Request::History { account, before: None, limit }),
    ];
    prop_oneof![
        (shard(), proptest::collection::vec(any::<u8>(), 0..64)).prop_map(|(shard, message)| PeerMessage::Raft { shard, message }),
        (any::<u64>(), shard(), prop_oneof![0u64..10_000, any::<u64>()], request, any::<u64>()).prop_map(
            |(leg, shard, timeout_ms, request, members_epoch)| PeerMessage::Leg {
                leg: LegId(leg),
                shard,
                timeout_ms,
                request,
                request_id: None,
                members_epoch
            }
        ),
        any::<u64>().prop_map(|leg| PeerMessage::LegReply { leg: LegId(leg), reply: Reply::Unavailable }),
        (shard(), proptest::collection::vec(credit, 0..4), any::<u8>(), any::<u64>())
            .prop_map(|(shard, credits, hops, fence)| PeerMessage::Credits { shard, credits, hops, fence }),
        (shard(), proptest::collection::vec(decision, 0..4), any::<u8>(), any::<u64>())
            .prop_map(|(shard, decisions, hops, fence)| PeerMessage::Decisions { shard, decisions, hops, fence }),
        (shard(), 0u64..6).prop_map(|(shard, leader)| PeerMessage::LeaderHint { shard, leader }),
        (shard(), any::<u64>(), proptest::collection::vec(0u64..8, 0..5), proptest::collection::vec(0u64..8, 0..3))
            .prop_map(|(shard, epoch, voters, learners)| PeerMessage::Members { shard, epoch, voters, learners }),
        (
            prop_oneof![0u64..4, any::<u64>()],
            proptest::collection::vec((0u64..8, peer_address()), 0..5),
            proptest::collection::vec(0u64..8, 0..3)
        )
            .prop_map(|(epoch, nodes, retired)| PeerMessage::Registry { epoch, nodes, retired }),
        peer_address().prop_map(|peer| PeerMessage::Join { peer }),
        (any::<u32>(), proptest::collection::vec(0u64..8, 0..4), any::<u64>(), proptest::collection::vec((0u64..8, peer_address()), 0..5))
            .prop_map(|(shards, bootstrap, epoch, nodes)| PeerMessage::Welcome { shards, bootstrap, epoch, nodes, retired: Vec::new() }),
    ]
}

/// Peer addresses as a hostile registry might carry them: good ones, unspecified, port 0,
/// junk, and one far over the length bound.
fn peer_address() -> impl Strategy<Value = String> {
    prop_oneof![
        (1u16..10).prop_map(|port| format!("127.0.0.1:{port}")),
        Just("0.0.0.0:9000".to_string()),
        Just("127.0.0.1:0".to_string()),
        "\\PC{0,12}",
        Just("9".repeat(10_000)),
    ]
}

proptest! {
    /// Any sequence of structurally valid messages with hostile values, from any claimed
    /// sender (itself, members, strangers), sent to a node that leads its shards with honest
    /// peers: no panic, and every ledger still passes every invariant.
    #[test]
    fn hostile_messages_never_panic_the_core(inputs in proptest::collection::vec((0u64..6, message()), 1..60)) {
        let mut core = core();
        let mut now = 0;
        for _ in 0..30 {
            honest_peers(&mut core, &mut now);
        }
        prop_assert!(core.led_shards() > 0, "node 1 leads with its honest peers");
        for (from, message) in inputs {
            core.receive(from as NodeId, message);
            honest_peers(&mut core, &mut now);
        }
        for replica in core.replicas() {
            prop_assert!(replica.ledger().verify().is_ok());
        }
    }

    /// A node registry is taken only from a member, only newer than the one held, and only
    /// when every entry is a well-formed, non-bootstrap node: a forged or malformed registry
    /// changes nothing, a good one is adopted and announced to the driver.
    #[test]
    fn only_a_well_formed_registry_from_a_member_is_adopted(epoch in 1u64..4, id in 4u64..8, port in 1u16..100) {
        let mut core = core();
        let mut now = 0;
        for _ in 0..30 {
            honest_peers(&mut core, &mut now);
        }
        let peer = format!("127.0.0.1:{port}");
        // From a stranger; naming a bootstrap member; more nodes than registrations; bad address.
        core.receive(9, PeerMessage::Registry { epoch, nodes: vec![(id, peer.clone())], retired: Vec::new() });
        core.receive(2, PeerMessage::Registry { epoch, nodes: vec![(2, peer.clone())], retired: Vec::new() });
        core.receive(2, PeerMessage::Registry { epoch: 0, nodes: vec![(id, peer.clone())], retired: Vec::new() });
        core.receive(2, PeerMessage::Registry { epoch, nodes: vec![(id, "0.0.0.0:1".to_string())], retired: Vec::new() });
        prop_assert_eq!(core.registry().epoch, 0);
        prop_assert_eq!(core.cluster_nodes(), vec![1, 2, 3]);
        core.receive(2, PeerMessage::Registry { epoch, nodes: vec![(id, peer.clone())], retired: Vec::new() });
        prop_assert_eq!(core.registry().epoch, epoch);
        prop_assert_eq!(core.cluster_nodes(), vec![1, 2, 3, id]);
        let told = core.drain_effects().into_iter().any(|effect| matches!(effect, settle_cluster::Effect::Registry(ref registry) if registry.epoch == epoch));
        prop_assert!(told, "the driver hears of the new registry");
        // An older one is ignored.
        core.receive(2, PeerMessage::Registry { epoch: epoch - 1, nodes: Vec::new(), retired: Vec::new() });
        prop_assert_eq!(core.registry().epoch, epoch);
        // Retiring a node that is also listed is refused; retiring it (and bootstrap node 3)
        // takes both out of the cluster: what they send is dropped from then on.
        core.receive(2, PeerMessage::Registry { epoch: epoch + 2, nodes: vec![(id, peer.clone())], retired: vec![id] });
        prop_assert_eq!(core.registry().epoch, epoch);
        core.receive(2, PeerMessage::Registry { epoch: epoch + 2, nodes: Vec::new(), retired: vec![id, 3] });
        prop_assert_eq!(core.cluster_nodes(), vec![1, 2]);
        let rejected_before = core.stats().peer_messages_rejected.get("sender_not_member").copied().unwrap_or(0);
        core.receive(3, PeerMessage::LeaderHint { shard: 0, leader: 3 });
        prop_assert_eq!(core.stats().peer_messages_rejected.get("sender_not_member").copied().unwrap_or(0), rejected_before + 1);
    }

    /// Any bytes as a frame payload: they decode to messages or to an error, never a panic.
    #[test]
    fn arbitrary_payloads_decode_or_fail(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = decode::<(NodeId, Vec<PeerMessage>)>(&bytes);
    }
}

/// A leg reaching a voter that does not lead its shard, from a node whose view of the shard's
/// members is older, gets the members first and then the NotLeader answer (a stale router is
/// corrected at once); a sender whose view is as new gets only the answer.
#[test]
fn a_stale_router_is_corrected_by_the_voter_it_reached() {
    use protobuf::Message as _;
    use settle_cluster::raft::eraftpb::{Message, MessageType};
    let mut core = core();
    let mut now = 0;
    for _ in 0..30 {
        honest_peers(&mut core, &mut now);
    }
    let shard = 0;
    let (term, applied) =
        core.replicas().find(|replica| replica.shard() == shard).map(|replica| (replica.term(), replica.applied_index())).unwrap();
    assert!(applied > 0, "the shard applied entries");
    // Node 2 leads a newer term: node 1 follows it.
    let mut heartbeat = Message::default();
    heartbeat.set_msg_type(MessageType::MsgHeartbeat);
    heartbeat.from = 2;
    heartbeat.to = 1;
    heartbeat.term = term + 1;
    core.receive(2, PeerMessage::Raft { shard, message: heartbeat.write_to_bytes().unwrap() });
    core.poll();
    core.drain_effects();
    let sent_to_3 = |core: &mut NodeCore, members_epoch: u64| -> Vec<&'static str> {
        let request = Request::ReadAccount(AccountId::new("acct-1").unwrap());
        core.receive(3, PeerMessage::Leg { leg: LegId(9), shard, timeout_ms: 1_000, request, request_id: None, members_epoch });
        core.poll();
        let mut kinds = Vec::new();
        for effect in core.drain_effects() {
            if let settle_cluster::Effect::Send { to: 3, messages } = effect {
                for message in messages {
                    match message {
                        PeerMessage::Members { .. } => kinds.push("members"),
                        PeerMessage::LegReply { .. } => kinds.push("not_leader"),
                        _ => {}
                    }
                }
            }
        }
        kinds
    };
    assert_eq!(sent_to_3(&mut core, 0), vec!["members", "not_leader"]);
    assert_eq!(sent_to_3(&mut core, u64::MAX), vec!["not_leader"]);
}
