//! Whatever the bytes, decoders return errors, never panic; and any change to a signed
//! envelope is detected.

use std::collections::BTreeMap;

use barn_protocol::envelope::{Envelope, Message, Signed};
use barn_protocol::manifest::{Manifest, TarLimits};
use barn_protocol::message::*;
use barn_protocol::{ContentHash, SecretKey, cbor, jobfile};
use proptest::prelude::*;

fn key() -> SecretKey {
    SecretKey::from_seed([7; 32])
}

fn job() -> Job {
    Job {
        spec: JobSpec {
            image: "tiny-x86_64".into(),
            arch: "x86_64".into(),
            tasks: vec![Task {
                name: "build".into(),
                run: "make".into(),
            }],
            env: BTreeMap::from([("K".to_string(), "v".to_string())]),
            artifacts: vec!["out/*".into()],
            resources: Resources::default(),
            timeout_secs: 60,
            replicas: 3,
            source_date_epoch: 1,
            tiebreak: false,
            vary: vec![],
        },
        image_hash: ContentHash::of(b"i"),
        source: ContentHash::of(b"s"),
        source_size: 1,
        coordinator: key().node_id(),
        coordinator_addrs: vec!["/ip4/127.0.0.1/tcp/1".into()],
        created: 1,
        expires: 2,
        nonce: serde_bytes::ByteArray::new([1; 16]),
    }
}

fn claim() -> Claim {
    Claim {
        job: JobId(ContentHash::of(b"j")),
        node: key().node_id(),
        accel: Accel::Tcg,
        time: 3,
        operator_cert: None,
    }
}

fn heartbeat() -> Heartbeat {
    Heartbeat {
        job: JobId(ContentHash::of(b"j")),
        lease: LeaseId(serde_bytes::ByteArray::new([2; 16])),
        phase: Phase::Booting,
        log_bytes: 0,
        time: 4,
    }
}

fn decode_all(bytes: &[u8]) {
    let _ = Envelope::from_bytes(bytes, 1 << 20);
    let _ = Signed::<Job>::from_bytes(bytes);
    let _ = Signed::<NodeAdvert>::from_bytes(bytes);
    let _ = Signed::<Claim>::from_bytes(bytes);
    let _ = Signed::<Grant>::from_bytes(bytes);
    let _ = Signed::<Heartbeat>::from_bytes(bytes);
    let _ = Signed::<BuildResult>::from_bytes(bytes);
    let _ = cbor::from_slice::<BlobRequest>(bytes, 1 << 20);
    let _ = cbor::from_slice::<Manifest>(bytes, 1 << 20);
    let _ = cbor::from_slice::<Job>(bytes, 1 << 20);
    let _ = Manifest::from_tar(bytes, "", TarLimits::default(), |_| Ok(None));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        decode_all(&bytes);
    }

    #[test]
    fn mutated_envelopes_never_panic(pos in any::<prop::sample::Index>(), val in any::<u8>(), cut in any::<prop::sample::Index>()) {
        let mut bytes = Signed::sign(job(), &key()).to_bytes();
        let p = pos.index(bytes.len());
        bytes[p] = val;
        decode_all(&bytes);
        bytes.truncate(cut.index(bytes.len()));
        decode_all(&bytes);
    }

    #[test]
    fn random_job_files_never_panic(text in "[a-z_\\[\\]=\"\\n0-9 .{},]{0,300}") {
        let _ = jobfile::parse(&text, "barn.toml");
    }
}

/// Flips every bit position's low and high bit of every byte and checks the envelope is
/// refused, whichever field the byte belongs to.
fn every_flip_is_detected<T: Message + Clone>(msg: T) {
    let bytes = Signed::sign(msg, &key()).to_bytes();
    assert!(Signed::<T>::from_bytes(&bytes).is_ok());
    for i in 0..bytes.len() {
        for mask in [0x01u8, 0x80] {
            let mut changed = bytes.clone();
            changed[i] ^= mask;
            assert!(
                Signed::<T>::from_bytes(&changed).is_err(),
                "flip {mask:#x} at byte {i} of {} went unnoticed",
                T::KIND
            );
        }
    }
}

#[test]
fn flipping_any_byte_is_detected() {
    every_flip_is_detected(job());
    every_flip_is_detected(claim());
    every_flip_is_detected(heartbeat());
}

#[test]
fn errors_name_what_was_wrong() {
    let bytes = Signed::sign(claim(), &key()).to_bytes();
    let e = Signed::<Job>::from_bytes(&bytes).unwrap_err();
    assert_eq!(e.to_string(), "wrong kind: expected `job`, got `claim`");
    let e = Signed::<Claim>::from_bytes(&vec![0u8; 70_000]).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("signed message is 70000 bytes, over the limit of 65536 for `claim`"),
        "{e}"
    );
    let e = Signed::<Claim>::from_bytes(&[0xff, 0x00]).unwrap_err();
    assert!(e.to_string().starts_with("malformed envelope:"), "{e}");
}
