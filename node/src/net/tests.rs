//! In-process tests of the real swarm (TCP + noise + yamux on 127.0.0.1): gossip with
//! application validation, the RPC codec over the wire, its limits, and blob transfer.

use std::future::Future;
use std::time::Duration;

use barn_protocol::groups::GROUP;
use barn_protocol::limits::{MAX_REQUEST, MAX_RESPONSE};
use barn_protocol::{ContentHash, SecretKey};
use futures::StreamExt;
use libp2p::request_response::{self, OutboundFailure};
use libp2p::swarm::SwarmEvent;
use libp2p::{PeerId, Swarm, gossipsub};

use super::blobs::{self, FetchErrorKind};
use super::codec::Codec;
use super::*;
use crate::store::BlobStore;

const TEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_TIMEOUT, f)
        .await
        .expect("test step timed out")
}

fn listening() -> NetConfig {
    NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    }
}

/// Two connected swarms: `a` listens, `b` dials.
async fn pair_with(b: Swarm<Behaviour>) -> (Swarm<Behaviour>, Swarm<Behaviour>) {
    let key = SecretKey::generate();
    let mut a = build_swarm(&key, &listening()).unwrap();
    assert_eq!(*a.local_peer_id(), key.node_id().to_peer_id());
    let mut b = b;
    within(async {
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = a.select_next_some().await {
                break address;
            }
        };
        b.dial(addr).unwrap();
        let (mut a_up, mut b_up) = (false, false);
        while !(a_up && b_up) {
            tokio::select! {
                e = a.select_next_some() => a_up |= matches!(e, SwarmEvent::ConnectionEstablished { .. }),
                e = b.select_next_some() => b_up |= matches!(e, SwarmEvent::ConnectionEstablished { .. }),
            }
        }
    })
    .await;
    (a, b)
}

async fn pair() -> (Swarm<Behaviour>, Swarm<Behaviour>) {
    pair_with(build_swarm(&SecretKey::generate(), &NetConfig::default()).unwrap()).await
}

/// Polls both swarms until `f` returns a value for an event of either (`true` = from `a`).
async fn drive_until<T>(
    a: &mut Swarm<Behaviour>,
    b: &mut Swarm<Behaviour>,
    mut f: impl FnMut(bool, SwarmEvent<BehaviourEvent>, &mut Swarm<Behaviour>) -> Option<T>,
) -> T {
    within(async {
        loop {
            let out = tokio::select! {
                e = a.select_next_some() => f(true, e, a),
                e = b.select_next_some() => f(false, e, b),
            };
            if let Some(out) = out {
                return out;
            }
        }
    })
    .await
}

/// A task aborted when dropped (a swarm being polled, the blob server).
struct Driver(tokio::task::JoinHandle<()>);

impl Driver {
    fn spawn(mut swarm: Swarm<Behaviour>) -> Self {
        Self(tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        }))
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tokio::test]
async fn gossip_arrives_and_is_validated_by_the_application() {
    let (mut a, mut b) = pair().await;
    let a_id = *a.local_peer_id();
    let b_id = *b.local_peer_id();
    let jobs = topic(TOPIC_JOBS).hash();

    // Publishing before the other side's subscription is known fails with
    // NoPeersSubscribedToTopic: wait for it.
    drive_until(&mut a, &mut b, |from_a, e, _| match e {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed {
            peer_id,
            topic,
        })) if from_a && peer_id == b_id && topic == jobs => Some(()),
        _ => None,
    })
    .await;

    let data = b"a signed job envelope would go here".to_vec();
    let id = a
        .behaviour_mut()
        .gossipsub
        .publish(topic(TOPIC_JOBS), data.clone())
        .unwrap();
    assert_eq!(id.0, blake3::hash(&data).as_bytes().to_vec());

    let accepted = drive_until(&mut a, &mut b, |from_a, e, swarm| match e {
        SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(gossipsub::Event::Message {
            propagation_source,
            message_id,
            message,
        })) if !from_a => {
            assert_eq!(message.data, data);
            assert_eq!(message.source, Some(a_id));
            assert_eq!(message.topic, jobs);
            assert_eq!(message_id, id);
            Some(swarm.behaviour_mut().report_gossip(
                &message_id,
                &propagation_source,
                gossipsub::MessageAcceptance::Accept,
            ))
        }
        _ => None,
    })
    .await;
    assert!(accepted, "the message waited in the cache for its verdict");
}

#[tokio::test]
async fn gossip_over_the_size_limit_is_not_published() {
    let (mut a, _b) = pair().await;
    let big = vec![0u8; barn_protocol::limits::MAX_GOSSIP_MESSAGE + 1];
    let err = a
        .behaviour_mut()
        .gossipsub
        .publish(topic(TOPIC_ADVERTS), big)
        .unwrap_err();
    assert!(
        matches!(err, gossipsub::PublishError::MessageTooLarge),
        "{err:?}"
    );
}

#[tokio::test]
async fn rpc_round_trip() {
    let (mut a, mut b) = pair().await;
    let b_id = *b.local_peer_id();
    let sent = a
        .behaviour_mut()
        .rpc
        .send_request(&b_id, Request::Claim(vec![1, 2, 3]));
    let (id, response) = drive_until(&mut a, &mut b, |from_a, e, swarm| match e {
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) if !from_a => {
            assert_eq!(request, Request::Claim(vec![1, 2, 3]));
            swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, Response::Grant(vec![4, 5]))
                .unwrap();
            None
        }
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message:
                request_response::Message::Response {
                    request_id,
                    response,
                },
            ..
        })) if from_a => Some((request_id, response)),
        _ => None,
    })
    .await;
    assert_eq!(id, sent);
    assert_eq!(response, Response::Grant(vec![4, 5]));

    // A large result (a big manifest) still fits.
    a.behaviour_mut()
        .rpc
        .send_request(&b_id, Request::Result(vec![7; MAX_RESPONSE]));
    let response = drive_until(&mut a, &mut b, |from_a, e, swarm| match e {
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message:
                request_response::Message::Request {
                    request, channel, ..
                },
            ..
        })) if !from_a => {
            assert_eq!(request.envelope().len(), MAX_RESPONSE);
            swarm
                .behaviour_mut()
                .rpc
                .send_response(channel, Response::Ack)
                .unwrap();
            None
        }
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message: request_response::Message::Response { response, .. },
            ..
        })) if from_a => Some(response),
        _ => None,
    })
    .await;
    assert_eq!(response, Response::Ack);
}

#[tokio::test]
async fn over_limit_request_is_refused_by_the_sender() {
    let (mut a, mut b) = pair().await;
    let b_id = *b.local_peer_id();
    a.behaviour_mut()
        .rpc
        .send_request(&b_id, Request::Claim(vec![0; MAX_REQUEST + 1]));
    let error = drive_until(&mut a, &mut b, |from_a, e, _| match e {
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message: request_response::Message::Request { .. },
            ..
        })) => panic!("an over-limit request was delivered"),
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure {
            error,
            ..
        })) if from_a => Some(error),
        _ => None,
    })
    .await;
    match error {
        OutboundFailure::Io(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains("limit"), "{e}");
        }
        other => panic!("unexpected failure {other:?}"),
    }
}

#[tokio::test]
async fn over_limit_request_is_refused_by_the_receiver() {
    // A sender that ignores the limits, as a hostile peer would.
    let key = SecretKey::generate().to_libp2p();
    let codec = Codec {
        skip_write_limits: true,
    };
    let behaviour =
        move |k: &_, relay| Behaviour::with_codec(k, &NetConfig::default(), relay, codec);
    let hostile = swarm::build_swarm_with(key, behaviour, &NetConfig::default()).unwrap();
    let (mut a, mut b) = pair_with(hostile).await;
    let a_id = *a.local_peer_id();
    b.behaviour_mut()
        .rpc
        .send_request(&a_id, Request::Claim(vec![0; MAX_REQUEST + 1]));
    // The receiver reads the frame, refuses the claim and drops the stream; request-response
    // reports nothing to the receiving application for a request that failed to decode (it
    // only logs it), so what is observable is that no request arrives and the sender fails
    // at once rather than after the 30 s timeout.
    let error = drive_until(&mut a, &mut b, |from_a, e, _| match e {
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::Message {
            message: request_response::Message::Request { .. },
            ..
        })) => panic!("an over-limit request was delivered"),
        SwarmEvent::Behaviour(BehaviourEvent::Rpc(request_response::Event::OutboundFailure {
            error,
            ..
        })) if !from_a => Some(error),
        _ => None,
    })
    .await;
    assert!(matches!(error, OutboundFailure::Io(_)), "{error:?}");
}

/// Two connected swarms driven in tasks, a blob server on `a`, stores on both sides.
struct BlobPair {
    _a: Driver,
    _b: Driver,
    _server: Driver,
    a_id: PeerId,
    b_control: libp2p_stream::Control,
    a_store: BlobStore,
    b_store: BlobStore,
    _dir: tempfile::TempDir,
}

async fn blob_pair() -> BlobPair {
    blob_pair_with(blobs::ServeLimits::default(), Default::default()).await
}

/// `a` serves blobs within `limits`, counting into `stats`; `b` fetches.
async fn blob_pair_with(
    limits: blobs::ServeLimits,
    stats: std::sync::Arc<blobs::ServeStats>,
) -> BlobPair {
    let (a, b) = pair().await;
    let dir = tempfile::tempdir().unwrap();
    let a_store = BlobStore::open(dir.path().join("a")).unwrap();
    let b_store = BlobStore::open(dir.path().join("b")).unwrap();
    let a_control = a.behaviour().stream.new_control();
    let b_control = b.behaviour().stream.new_control();
    let server = blobs::serve(a_control, a_store.clone(), limits, stats).unwrap();
    BlobPair {
        a_id: *a.local_peer_id(),
        _a: Driver::spawn(a),
        _b: Driver::spawn(b),
        _server: Driver(tokio::spawn(server)),
        b_control,
        a_store,
        b_store,
        _dir: dir,
    }
}

fn sample(len: usize) -> Vec<u8> {
    // Not all one byte, so that a shifted or repeated chunk would change the hash.
    (0..len)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

fn leftovers(store: &BlobStore) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(store.dir().join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

const LIMIT: u64 = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_are_fetched_and_verified() {
    let mut p = blob_pair().await;
    for len in [3 * 1024 * 1024 + 17, 0] {
        let data = sample(len);
        let hash = p.a_store.import_bytes(&data).unwrap();
        let path = within(blobs::fetch(
            &mut p.b_control,
            p.a_id,
            hash,
            &p.b_store,
            LIMIT,
        ))
        .await
        .unwrap();
        assert_eq!(path, p.b_store.path(&hash));
        let (got, got_len) = ContentHash::of_reader(std::fs::File::open(&path).unwrap()).unwrap();
        assert_eq!((got, got_len), (hash, len as u64));
    }
    assert!(leftovers(&p.b_store).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bytes_are_cut_off_within_one_group_and_the_good_groups_kept() {
    let mut p = blob_pair().await;
    let mib = GROUP as usize;
    let data = sample(8 * mib + 100);
    let hash = p.a_store.import_bytes(&data).unwrap();
    // The serving node lies (or its copy rotted after its group values were cached): the
    // right values, then bytes with one changed in the fourth group.
    p.a_store.groups(&hash).unwrap();
    let mut bad = data.clone();
    bad[3 * mib + mib / 2] ^= 0xff;
    std::fs::write(p.a_store.path(&hash), &bad).unwrap();

    let err = within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        hash,
        &p.b_store,
        LIMIT,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err.kind, FetchErrorKind::BadGroup { index: 3, .. }),
        "{err:?}"
    );
    assert_eq!((err.peer, err.hash), (p.a_id, hash));
    assert!(err.to_string().contains(&hash.to_string()));
    assert!(!p.b_store.has(&hash));
    // The three groups before the bad one were checked and stay.
    let partial = std::fs::metadata(p.b_store.partial_path(&hash)).unwrap();
    assert_eq!(partial.len(), 3 * GROUP);

    // An honest copy: the download goes on from the fourth group.
    std::fs::write(p.a_store.path(&hash), &data).unwrap();
    within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        hash,
        &p.b_store,
        LIMIT,
    ))
    .await
    .unwrap();
    assert!(p.b_store.has(&hash));
    assert!(leftovers(&p.b_store).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_copy_rotted_refuses_to_serve_it_and_drops_it() {
    let mut p = blob_pair().await;
    for len in [500_000, 3 * GROUP as usize] {
        let data = sample(len);
        let hash = p.a_store.import_bytes(&data).unwrap();
        let mut bad = data.clone();
        bad[1000] ^= 1;
        std::fs::write(p.a_store.path(&hash), &bad).unwrap();
        let err = within(blobs::fetch(
            &mut p.b_control,
            p.a_id,
            hash,
            &p.b_store,
            LIMIT,
        ))
        .await
        .unwrap_err();
        assert!(
            matches!(&err.kind, FetchErrorKind::Remote(r) if r.contains("damaged")),
            "{err:?}"
        );
        assert!(!p.a_store.has(&hash), "the damaged copy is removed");
        assert!(!p.b_store.has(&hash));
        assert!(leftovers(&p.b_store).is_empty(), "no partial file is kept");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_resumes_a_partial_download() {
    let mut p = blob_pair().await;
    let data = sample(3 * 1024 * 1024);
    let hash = p.a_store.import_bytes(&data).unwrap();
    // An earlier download stopped after 1 MiB.
    std::fs::write(p.b_store.partial_path(&hash), &data[..1024 * 1024]).unwrap();
    within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        hash,
        &p.b_store,
        LIMIT,
    ))
    .await
    .unwrap();
    assert!(p.b_store.has(&hash));
    assert!(leftovers(&p.b_store).is_empty());

    // A partial file holding wrong bytes (the disk rotted) fails verification once, then
    // is gone.
    let other = sample(2 * 1024 * 1024 + 1);
    let other_hash = p.a_store.import_bytes(&other).unwrap();
    std::fs::write(p.b_store.partial_path(&other_hash), vec![0u8; 1024 * 1024]).unwrap();
    let err = within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        other_hash,
        &p.b_store,
        LIMIT,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(err.kind, FetchErrorKind::Mismatch { .. }),
        "{err:?}"
    );
    within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        other_hash,
        &p.b_store,
        LIMIT,
    ))
    .await
    .unwrap();
    assert!(p.b_store.has(&other_hash));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_and_oversized_blobs_are_named_errors() {
    let mut p = blob_pair().await;
    let missing = ContentHash::of(b"nobody has this");
    let err = within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        missing,
        &p.b_store,
        LIMIT,
    ))
    .await
    .unwrap_err();
    assert!(matches!(err.kind, FetchErrorKind::NotFound), "{err:?}");

    let hash = p.a_store.import_bytes(&sample(10_000)).unwrap();
    let err = within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        hash,
        &p.b_store,
        9_999,
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            err.kind,
            FetchErrorKind::TooLarge {
                size: 10_000,
                limit: 9_999
            }
        ),
        "{err:?}"
    );
    assert!(!p.b_store.has(&hash));
    assert!(leftovers(&p.b_store).is_empty());
}

#[tokio::test]
async fn open_to_an_unconnected_peer_times_out() {
    tokio::time::pause();
    let swarm = build_swarm(&SecretKey::generate(), &NetConfig::default()).unwrap();
    let mut control = swarm.behaviour().stream.new_control();
    let _driver = Driver::spawn(swarm);
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let stranger = SecretKey::generate().node_id().to_peer_id();
    let err = blobs::fetch(&mut control, stranger, ContentHash::of(b"x"), &store, LIMIT)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.kind,
            FetchErrorKind::OpenTimeout(_) | FetchErrorKind::Open(_)
        ),
        "{err:?}"
    );
    assert!(leftovers(&store).is_empty());
}

/// Opens a blob stream from `b` to `a` and sends a request for `hash`; returns the stream
/// and the header it got back.
async fn request_blob(p: &mut BlobPair, hash: ContentHash) -> (libp2p::Stream, blobs::Header) {
    use barn_protocol::message::BlobRequest;
    let mut s = within(p.b_control.open_stream(p.a_id, blobs::PROTOCOL))
        .await
        .unwrap();
    let req = barn_protocol::cbor::to_vec(&BlobRequest { hash, offset: 0 });
    within(blobs::write_frame(&mut s, &req)).await.unwrap();
    let header = within(blobs::read_frame(&mut s, blobs::MAX_HEADER))
        .await
        .unwrap();
    let header = barn_protocol::cbor::from_slice(&header, blobs::MAX_HEADER).unwrap();
    (s, header)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_blob_streams_do_not_stop_blob_serving() {
    // As many idle streams as there are transfers, each waiting longer than the test.
    let limits = blobs::ServeLimits {
        request_timeout: Duration::from_secs(60),
        ..Default::default()
    };
    let mut p = blob_pair_with(limits, Default::default()).await;
    let mut idle = Vec::new();
    for _ in 0..limits.max_transfers + 2 {
        idle.push(
            within(p.b_control.open_stream(p.a_id, blobs::PROTOCOL))
                .await
                .unwrap(),
        );
    }
    let data = sample(1 << 20);
    let hash = p.a_store.import_bytes(&data).unwrap();
    let fetched = tokio::time::timeout(
        Duration::from_secs(10),
        blobs::fetch(&mut p.b_control, p.a_id, hash, &p.b_store, LIMIT),
    )
    .await
    .expect("idle streams held up the fetch");
    assert!(fetched.is_ok(), "{fetched:?}");
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_gets_at_most_its_share_of_transfers() {
    let stats = std::sync::Arc::new(blobs::ServeStats::default());
    let mut p = blob_pair_with(blobs::ServeLimits::default(), stats.clone()).await;
    // Large enough that the transfers are still going when the third request comes.
    let hash = p.a_store.import_bytes(&sample(64 << 20)).unwrap();
    let mut streams = Vec::new();
    let mut refused = Vec::new();
    for _ in 0..3 {
        let (s, header) = request_blob(&mut p, hash).await;
        match header {
            blobs::Header::Ok { .. } => streams.push(s),
            blobs::Header::Error(why) => refused.push(why),
            other => panic!("unexpected header {other:?}"),
        }
    }
    assert_eq!(
        streams.len(),
        blobs::DEFAULT_PER_PEER,
        "refused: {refused:?}"
    );
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("already has 2"), "{}", refused[0]);
    assert_eq!(
        stats
            .per_peer_limit
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_dropped_and_its_transfer_freed() {
    let limits = blobs::ServeLimits {
        max_transfers: 1,
        min_rate: 1 << 20,
        grace: Duration::from_secs(1),
        request_timeout: Duration::from_secs(20),
        ..Default::default()
    };
    let stats = std::sync::Arc::new(blobs::ServeStats::default());
    let mut p = blob_pair_with(limits, stats.clone()).await;
    let big = p.a_store.import_bytes(&sample(64 << 20)).unwrap();
    // Takes the only transfer and reads nothing after the header.
    let (stalled, header) = request_blob(&mut p, big).await;
    assert!(matches!(header, blobs::Header::Ok { .. }));
    let small = p.a_store.import_bytes(&sample(1000)).unwrap();
    let started = std::time::Instant::now();
    let fetched = within(blobs::fetch(
        &mut p.b_control,
        p.a_id,
        small,
        &p.b_store,
        LIMIT,
    ))
    .await;
    assert!(fetched.is_ok(), "{fetched:?}");
    // Far sooner than the 30 s stall timeout: the reader fell behind 1 MiB/s.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "the slow reader held the transfer for {:?}",
        started.elapsed()
    );
    assert_eq!(stats.too_slow.load(std::sync::atomic::Ordering::Relaxed), 1);
    drop(stalled);
}
