//! Checking signed results: a job envelope against the id it is shown under, a result
//! against the job it claims (signature, signer, job, manifest root), and a result against
//! the lease it was built under (node, lease, image, architecture, variation).
//!
//! Nothing a node's API says is taken on trust: these run wherever results are read (the
//! CLI's `verify`, `fetch`, `diff`, `attest`, and [`super::settled`]), and
//! [`check_lease`] is the test a coordinator applies before accepting a result.

use std::collections::BTreeSet;

use barn_protocol::message::{BuildResult, Job, LeaseId};
use barn_protocol::{JobId, NodeId, Signed, VerifyError};

use crate::api::types::{JobDetail, ResultView};
use crate::runner::variation::Variation;

/// Why a job envelope was not accepted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JobError {
    #[error("the job envelope is not hex")]
    NotHex,
    #[error("the job's signature does not verify")]
    DoesNotVerify(#[source] VerifyError),
    #[error("the job envelope hashes to {actual}, not to the id {shown} it is shown under")]
    OtherId { shown: String, actual: JobId },
}

/// Decodes and checks the signed job of `detail`: its signature, and that it hashes to the
/// id the node shows it under.
pub fn check_job(detail: &JobDetail) -> Result<Signed<Job>, JobError> {
    let bytes = hex::decode(&detail.envelope).map_err(|_| JobError::NotHex)?;
    let job = Signed::<Job>::from_bytes(&bytes).map_err(JobError::DoesNotVerify)?;
    let actual = JobId::of(&job);
    if actual.to_string() != detail.job.id {
        return Err(JobError::OtherId {
            shown: detail.job.id.clone(),
            actual,
        });
    }
    Ok(job)
}

/// Why a listed result was not accepted as its node's result for the job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ResultError {
    #[error("node {}'s result envelope is not hex", short(node))]
    NotHex { node: String },
    #[error("the result from node {} does not verify", short(node))]
    DoesNotVerify {
        node: String,
        #[source]
        source: VerifyError,
    },
    /// Peer ids as text: errors stay small.
    #[error(
        "the result listed for node {} is signed by {signer} for {names}",
        short(listed)
    )]
    Signer {
        listed: String,
        signer: String,
        names: String,
    },
    #[error(
        "node {}'s signed result is for job {found}, not this one",
        short(node)
    )]
    OtherJob { node: String, found: JobId },
    #[error(
        "node {}'s signed manifest does not hash to its manifest root",
        short(node)
    )]
    Root { node: String },
}

impl ResultError {
    /// The node the result was listed under.
    pub fn node(&self) -> &str {
        match self {
            ResultError::NotHex { node }
            | ResultError::DoesNotVerify { node, .. }
            | ResultError::OtherJob { node, .. }
            | ResultError::Root { node } => node,
            ResultError::Signer { listed, .. } => listed,
        }
    }
}

/// The last 8 characters of a peer id, as tables show it.
fn short(node: &str) -> &str {
    let mut start = node.len().saturating_sub(8);
    while !node.is_char_boundary(start) {
        start -= 1;
    }
    &node[start..]
}

/// Checks one signed result, the envelope `bytes` listed under node `listed`: the
/// signature, that the signer is that node and the node the result names, that it is for
/// job `job`, and that its manifest hashes to its root.
pub fn check(job: &JobId, listed: &str, bytes: &[u8]) -> Result<Signed<BuildResult>, ResultError> {
    let signed =
        Signed::<BuildResult>::from_bytes(bytes).map_err(|source| ResultError::DoesNotVerify {
            node: listed.to_string(),
            source,
        })?;
    let signer = NodeId(signed.signer());
    let m = signed.message();
    if signer.to_string() != listed || m.node != signer {
        return Err(ResultError::Signer {
            listed: listed.to_string(),
            signer: signer.to_string(),
            names: m.node.to_string(),
        });
    }
    if m.job != *job {
        return Err(ResultError::OtherJob {
            node: listed.to_string(),
            found: m.job,
        });
    }
    if m.manifest.root() != m.manifest_root {
        return Err(ResultError::Root {
            node: listed.to_string(),
        });
    }
    Ok(signed)
}

/// [`check`] for a result as the API lists it; also returns the envelope's bytes (a
/// settlement names a result by their blake3).
pub fn check_view(
    job: &JobId,
    view: &ResultView,
) -> Result<(Signed<BuildResult>, Vec<u8>), ResultError> {
    let bytes = hex::decode(&view.envelope).map_err(|_| ResultError::NotHex {
        node: view.node.clone(),
    })?;
    let signed = check(job, &view.node, &bytes)?;
    Ok((signed, bytes))
}

/// How a result contradicts the lease it was built under or its job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Mismatch {
    #[error("the result is for job {found}, not {expected}")]
    Job { expected: JobId, found: JobId },
    /// Peer ids as text: errors stay small.
    #[error("the result is node {found}'s, the lease is node {expected}'s")]
    Node { expected: String, found: String },
    #[error("the result names lease {}, not {expected}", found.map(|l| l.to_string()).unwrap_or_else(|| "none".into()))]
    Lease {
        expected: LeaseId,
        found: Option<LeaseId>,
    },
    #[error("the result ran image {found} instead of {expected}")]
    Image {
        expected: barn_protocol::ContentHash,
        found: barn_protocol::ContentHash,
    },
    #[error("the result was built for {found} instead of {expected}")]
    Arch { expected: String, found: String },
    #[error(
        "the result varied [{}] where its lease (variant {variant}) asked for [{}]",
        found.join(", "),
        expected.join(", ")
    )]
    Variation {
        variant: u32,
        expected: Vec<String>,
        found: Vec<String>,
    },
}

/// One lease, as its coordinator granted it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTerms {
    pub job: JobId,
    pub lease: LeaseId,
    pub node: NodeId,
    /// The environment variant the lease asked for (which `vary` dimensions change).
    pub variant: u32,
}

/// Checks that `result` is what `lease` of `job` asked for: the job, the node, the lease,
/// the job's image and architecture, and exactly the variation of the lease's variant (a
/// replica cannot claim a variation to have its differing output "explained").
pub fn check_lease(job: &Job, lease: &LeaseTerms, result: &BuildResult) -> Result<(), Mismatch> {
    if result.job != lease.job {
        return Err(Mismatch::Job {
            expected: lease.job,
            found: result.job,
        });
    }
    if result.node != lease.node {
        return Err(Mismatch::Node {
            expected: lease.node.to_string(),
            found: result.node.to_string(),
        });
    }
    if result.lease != Some(lease.lease) {
        return Err(Mismatch::Lease {
            expected: lease.lease,
            found: result.lease,
        });
    }
    if result.image_hash != job.image_hash {
        return Err(Mismatch::Image {
            expected: job.image_hash,
            found: result.image_hash,
        });
    }
    if result.arch != job.spec.arch {
        return Err(Mismatch::Arch {
            expected: job.spec.arch.clone(),
            found: result.arch.clone(),
        });
    }
    let expected = Variation::dimensions(&job.spec.vary, lease.variant);
    let found: BTreeSet<String> = result.variation.keys().cloned().collect();
    if found != expected {
        return Err(Mismatch::Variation {
            variant: lease.variant,
            expected: expected.into_iter().collect(),
            found: found.into_iter().collect(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::verify::verdict::tests_support::{job, node, result, with_variation};
    use barn_protocol::SecretKey;

    fn signed(i: u8, job_id: JobId) -> Signed<BuildResult> {
        let mut r = result(&[("out/a", b"x")]);
        r.node = node(i);
        r.job = job_id;
        Signed::sign(r, &SecretKey::from_seed([i; 32]))
    }

    #[test]
    fn a_result_must_be_its_signers_and_for_this_job() {
        let id = JobId(barn_protocol::ContentHash::of(b"j"));
        let s = signed(1, id);
        let bytes = s.to_bytes();
        let me = node(1).to_string();
        assert!(check(&id, &me, &bytes).is_ok());
        // Listed under another node.
        let e = check(&id, &node(2).to_string(), &bytes).unwrap_err();
        assert!(matches!(e, ResultError::Signer { .. }), "{e}");
        // For another job.
        let other = JobId(barn_protocol::ContentHash::of(b"other"));
        assert!(matches!(
            check(&other, &me, &bytes),
            Err(ResultError::OtherJob { .. })
        ));
        // One bit flipped.
        let mut bad = bytes.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let e = check(&id, &me, &bad).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        // A manifest that does not hash to the signed root.
        let mut r = s.message().clone();
        r.manifest_root = barn_protocol::ContentHash::of(b"nope");
        let lying = Signed::sign(r, &SecretKey::from_seed([1; 32])).to_bytes();
        assert!(matches!(
            check(&id, &me, &lying),
            Err(ResultError::Root { .. })
        ));
    }

    #[test]
    fn a_result_must_match_its_lease() {
        let j = job(3);
        let lease = LeaseId(serde_bytes::ByteArray::new([5; 16]));
        let terms = LeaseTerms {
            job: JobId(barn_protocol::ContentHash::of(b"j")),
            lease,
            node: node(0),
            variant: 1,
        };
        let mut r = with_variation(result(&[("a", b"1")]), &[("timezone", "KST-14")]);
        r.lease = Some(lease);
        assert_eq!(check_lease(&j, &terms, &r), Ok(()));
        // Variant 1 varies the time zone only; claiming the umask too is a lie.
        let mut claims_more = r.clone();
        claims_more.variation.insert("umask".into(), "0002".into());
        assert!(matches!(
            check_lease(&j, &terms, &claims_more),
            Err(Mismatch::Variation { .. })
        ));
        let mut none = r.clone();
        none.variation.clear();
        assert!(matches!(
            check_lease(&j, &terms, &none),
            Err(Mismatch::Variation { .. })
        ));
        let mut other_lease = r.clone();
        other_lease.lease = Some(LeaseId(serde_bytes::ByteArray::new([6; 16])));
        assert!(matches!(
            check_lease(&j, &terms, &other_lease),
            Err(Mismatch::Lease { .. })
        ));
        let mut no_lease = r.clone();
        no_lease.lease = None;
        assert_eq!(
            check_lease(&j, &terms, &no_lease).unwrap_err().to_string(),
            format!("the result names lease none, not {lease}")
        );
        let mut image = r.clone();
        image.image_hash = barn_protocol::ContentHash::of(b"other");
        assert!(matches!(
            check_lease(&j, &terms, &image),
            Err(Mismatch::Image { .. })
        ));
        let mut arch = r.clone();
        arch.arch = "aarch64".into();
        assert!(matches!(
            check_lease(&j, &terms, &arch),
            Err(Mismatch::Arch { .. })
        ));
        let mut other_node = r;
        other_node.node = node(4);
        assert!(matches!(
            check_lease(&j, &terms, &other_node),
            Err(Mismatch::Node { .. })
        ));
    }
}
