//! Replays the committed corpus through every target's body without libFuzzer, so a
//! crashing input added to `corpus/` after a fix stays fixed under a plain `cargo test`.

use std::fs;
use std::path::Path;

/// A target's name (its corpus folder) and its body.
type Target = (&'static str, fn(&[u8]));

#[test]
fn the_committed_corpus_passes_every_target() {
    let targets: [Target; 5] = [
        ("guest_console", barn_fuzz::guest_console),
        ("guest_status", barn_fuzz::guest_status),
        ("envelope", barn_fuzz::envelope),
        ("jobfile", barn_fuzz::jobfile),
        ("output_tar", barn_fuzz::output_tar),
    ];
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (name, target) in targets {
        let mut inputs = 0;
        for file in fs::read_dir(corpus.join(name)).unwrap() {
            let path = file.unwrap().path();
            let data = fs::read(&path).unwrap();
            assert!(
                data.len() <= barn_fuzz::MAX_LEN,
                "{} is too long",
                path.display()
            );
            target(&data);
            inputs += 1;
        }
        assert!(inputs > 0, "the corpus of {name} is empty");
    }
}

/// The settlement and operator-certificate seeds are valid, so the fuzzer starts from
/// inputs that get past the signature into the checks a verifier runs.
#[test]
fn the_settlement_and_certificate_seeds_pass_their_checks() {
    use barn_protocol::envelope::Signed;
    use barn_protocol::operator::OperatorCert;
    use barn_protocol::settlement::Settlement;
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/envelope");
    let bytes = fs::read(corpus.join("settlement")).unwrap();
    let s = Signed::<Settlement>::from_bytes(&bytes).unwrap();
    let coordinator = barn_protocol::NodeId(s.signer());
    let s = Settlement::check(&bytes, &s.message().job, &coordinator).unwrap();
    let replica = &s.message().replicas[0];
    let cert = replica.cert.as_deref().unwrap();
    assert_eq!(
        OperatorCert::check(cert, &replica.node, s.message().time),
        Ok(replica.operator)
    );
    let bytes = fs::read(corpus.join("operator-cert")).unwrap();
    assert_eq!(&bytes, cert);
}
