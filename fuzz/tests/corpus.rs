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
