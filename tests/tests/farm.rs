//! The farm as real processes: a submitter and three volunteers on 127.0.0.1, each running
//! real VM jobs, checked through the command line a user would use.

use barn_protocol::message::BuildResult;
use barn_protocol::{NodeId, Signed};
use barn_tests::farm::Farm;
use barn_tests::{Project, barn_shared, ensure_image};

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}):\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn three_volunteers_build_one_job_and_their_signed_results_agree() {
    let farm = Farm::start("tiny-x86_64", 3, &[]);
    let p = Project::new(
        "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"3m\"\nsource_date_epoch = 1700000000\nartifacts = [\"out/*\"]\n\
         [[task]]\nname = \"build\"\nrun = \"mkdir -p out && cat msg.txt > out/msg && echo built\"\n",
    )
    .file("msg.txt", "made by a farm\n");
    let out = farm.submitter.barn(&[
        "submit",
        "--replicas",
        "3",
        "--wait",
        "--wait-timeout",
        "5m",
        "--json",
        p.path().to_str().unwrap(),
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = json(&out);
    assert_eq!(summary["agree"], true, "{summary}");
    let id = summary["job"].as_str().unwrap().to_string();

    let detail = json(&farm.submitter.barn(&["job", &id, "--json"]));
    let results = detail["results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{detail}");
    let volunteers: Vec<String> = farm.volunteers.iter().map(|v| v.peer_id()).collect();
    let mut roots = std::collections::BTreeSet::new();
    let mut nodes = std::collections::BTreeSet::new();
    for r in results {
        // Check every signature here, not trusting the node's database.
        let bytes = hex::decode(r["envelope"].as_str().unwrap()).unwrap();
        let signed = Signed::<BuildResult>::from_bytes(&bytes).expect("a result that verifies");
        let signer = NodeId(signed.signer()).to_string();
        assert_eq!(signer, r["node"].as_str().unwrap());
        assert!(
            volunteers.contains(&signer),
            "result from a node that is not a volunteer"
        );
        let m = signed.message();
        assert_eq!(m.status.word(), "succeeded");
        assert_eq!(m.job.to_string(), id);
        assert_eq!(m.manifest.root(), m.manifest_root);
        assert_eq!(m.manifest.files().count(), 1);
        roots.insert(m.manifest_root);
        nodes.insert(signer);
    }
    assert_eq!(nodes.len(), 3, "two replicas ran on one node");
    assert_eq!(roots.len(), 1);

    // Anyone with the job id can fetch the artifacts and the log from the nodes that made them.
    let dest = tempfile::tempdir().unwrap();
    let node = &volunteers[1];
    let out = farm.submitter.barn(&[
        "fetch",
        &id,
        "--node",
        node,
        "--out",
        dest.path().to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(dest.path().join("out/msg")).unwrap(),
        "made by a farm\n"
    );
    let out = farm
        .submitter
        .barn(&["log", &id, "--node", &node[node.len() - 8..]]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stdout);
    assert!(log.contains("built"), "{log}");
    let r = results.iter().find(|r| r["node"] == node.as_str()).unwrap();
    assert_eq!(
        r["log_hash"],
        barn_protocol::ContentHash::of(&out.stdout).to_string()
    );
}

#[test]
fn the_demo_builds_the_example_and_the_results_agree() {
    ensure_image("tiny-x86_64");
    let out = barn_shared(&["demo", "--accel", "tcg"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("agree: 3 of 3 results have manifest root b3:"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("signature ok").count(), 3, "{stdout}");
}
