//! The bodies of barn's fuzz targets, one function per target, so that the libFuzzer
//! binaries in `fuzz_targets/` and the corpus replay test (`tests/corpus.rs`) run the
//! same code. Each function must never panic on any input; where a decoder accepts
//! something, the function also checks a property a user relies on (a decoded message
//! encodes back to itself, a job file the parser accepts passes `validate`).

use std::fmt::Debug;
use std::io::Cursor;

use barn_protocol::envelope::{Envelope, Message, Signed};
use barn_protocol::manifest::{Manifest, TarLimits};
use barn_protocol::message::{
    BlobRequest, BuildResult, Claim, Commitment, Grant, Heartbeat, Job, JobAnnounce, NodeAdvert,
};
use barn_protocol::operator::OperatorCert;
use barn_protocol::settlement::Settlement;
use barn_protocol::{NodeId, cbor, guest, jobfile};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The largest input any target looks at; `scripts/fuzz` passes the same `-max_len`.
pub const MAX_LEN: usize = 64 * 1024;

/// `guest_console`: every line of the serial console through the marker parser.
pub fn guest_console(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    for line in text.split('\n') {
        if let Some(guest::Mark::TaskStart(name) | guest::Mark::TaskExit { name, .. }) =
            guest::parse_mark(line)
        {
            assert!(!name.contains(' '), "a task name from {line:?} has a space");
        }
    }
}

/// `guest_status`: the `status` record from the output disk, as the host reads it.
pub fn guest_status(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(st) = guest::parse_status(&text) {
        assert!(st.tasks.len() <= text.lines().count());
        assert!(st.oom.len() <= text.lines().count());
    }
}

/// `envelope`: the signed envelope, then its payload as every message kind; the raw bytes
/// as every unsigned message too.
pub fn envelope(data: &[u8]) {
    let _ = Envelope::from_bytes(data, 1 << 20);
    signed::<Job>(data);
    signed::<NodeAdvert>(data);
    signed::<Claim>(data);
    signed::<Grant>(data);
    signed::<Heartbeat>(data);
    signed::<Commitment>(data);
    signed::<BuildResult>(data);
    signed::<Settlement>(data);
    signed::<OperatorCert>(data);
    checks(data);
    if let Some(a) = roundtrip::<JobAnnounce>(data, JobAnnounce::MAX_SIZE) {
        signed::<Job>(&a.job);
    }
    roundtrip::<BlobRequest>(data, BlobRequest::MAX_SIZE);
    roundtrip::<Manifest>(data, 1 << 20);
    // A payload is reached through a valid envelope only when the signature holds, which
    // mutations almost never keep: decode the payload of any well-formed envelope directly.
    if let Ok(env) = Envelope::from_bytes(data, 1 << 20) {
        payload(&env.payload);
    }
    payload(data);
}

fn payload(bytes: &[u8]) {
    if let Some(job) = roundtrip::<Job>(bytes, 1 << 20) {
        let _ = jobfile::validate(&job.spec);
    }
    roundtrip::<NodeAdvert>(bytes, 1 << 20);
    roundtrip::<Claim>(bytes, 1 << 20);
    roundtrip::<Grant>(bytes, 1 << 20);
    roundtrip::<Heartbeat>(bytes, 1 << 20);
    roundtrip::<Commitment>(bytes, 1 << 20);
    roundtrip::<BuildResult>(bytes, 1 << 20);
    roundtrip::<Settlement>(bytes, 1 << 20);
    roundtrip::<OperatorCert>(bytes, 1 << 20);
}

/// The checks a verifier runs on a settlement and an operator certificate from a peer:
/// against the job and node they name themselves (so a valid one gets past the signature
/// into the later checks), then each settled replica's certificate.
fn checks(data: &[u8]) {
    if let Ok(s) = Signed::<Settlement>::from_bytes(data) {
        let coordinator = NodeId(s.signer());
        if let Ok(s) = Settlement::check(data, &s.message().job, &coordinator) {
            let s = s.message();
            assert!(s.replicas.len() <= barn_protocol::settlement::MAX_SETTLED);
            for r in &s.replicas {
                let _ =
                    OperatorCert::operator_of(r.cert.as_deref().map(|c| &c[..]), &r.node, s.time);
                assert!(s.replica_of(&r.result).is_some());
            }
        }
    }
    if let Ok(c) = Signed::<OperatorCert>::from_bytes(data) {
        let c = c.message();
        if let Ok(op) = OperatorCert::check(data, &c.node, c.issued) {
            assert_eq!(
                op, c.operator,
                "a certificate that checks names its operator"
            );
        }
    }
}

/// Decodes a signed `T`; one that verifies must re-encode to the same bytes.
fn signed<T: Message + Debug + PartialEq>(data: &[u8]) {
    if let Ok(s) = Signed::<T>::from_bytes(data) {
        let again =
            Signed::<T>::from_bytes(&s.to_bytes()).expect("a verified envelope re-verifies");
        assert_eq!(again.message(), s.message());
    }
}

/// Decodes a `T`; whatever decodes must decode again, to the same value, from its encoding.
fn roundtrip<T: Serialize + DeserializeOwned + Debug + PartialEq>(
    bytes: &[u8],
    limit: usize,
) -> Option<T> {
    let value = cbor::from_slice::<T>(bytes, limit).ok()?;
    let encoded = cbor::to_vec(&value);
    let again = cbor::from_slice::<T>(&encoded, usize::MAX).expect("an encoded value decodes");
    assert_eq!(again, value);
    Some(value)
}

/// `jobfile`: `barn.toml` through the parser; every spec it accepts passes `validate` (the
/// check volunteers apply to jobs from peers), or a job would build locally and be refused
/// by the farm.
pub fn jobfile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(specs) = jobfile::parse(&text, jobfile::FILE_NAME) {
        for spec in &specs {
            if let Err(why) = jobfile::validate(spec) {
                panic!("the parser accepted a spec that validate refuses: {why}: {spec:?}");
            }
        }
    }
}

/// `output_tar`: a guest's output tar, read the way the host reads the output disk.
pub fn output_tar(data: &[u8]) {
    let limits = TarLimits {
        max_entries: 64,
        max_total_bytes: 1 << 20,
    };
    if let Ok(m) = Manifest::from_tar(Cursor::new(data), "artifacts", limits, |_| Ok(None)) {
        assert!(m.entries.len() <= limits.max_entries);
        let _ = m.root();
    }
}
