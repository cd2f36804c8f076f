//! The farm as real processes: a submitter and three volunteers on 127.0.0.1, each running
//! real VM jobs, checked through the command line a user would use.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use barn_protocol::message::BuildResult;
use barn_protocol::{NodeId, Signed};
use barn_tests::farm::Farm;
use barn_tests::{Project, barn_shared, ensure_image, poll};

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
    let mut farm = Farm::start("tiny-x86_64", 3, &[]);
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
    assert_eq!(summary["verdict"]["verdict"], "reproducible", "{summary}");
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

    // A builder gone: its artifacts still come, verified against its signed manifest,
    // from any node holding the same bytes (the other replicas, found in the DHT).
    farm.volunteers[2].kill_hard();
    let gone = &volunteers[2];
    let dest = tempfile::tempdir().unwrap();
    let out = farm.submitter.barn(&[
        "fetch",
        &id,
        "--node",
        gone,
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
    let log = std::fs::read_to_string(&farm.submitter.log).unwrap();
    assert!(
        log.contains("fetched a blob from another holder"),
        "the artifact did not come from another holder:\n{log}"
    );

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
        stdout.contains("verdict: reproducible (3 of 3 results agree on manifest root b3:"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("signature ok").count(), 3, "{stdout}");
}

/// Submits `p` on `farm` with `--wait --json` and returns (exit code, JSON).
fn submit(farm: &Farm, p: &Project, replicas: &str) -> (i32, serde_json::Value) {
    let out = farm.submitter.barn(&[
        "submit",
        "--replicas",
        replicas,
        "--wait",
        "--wait-timeout",
        "5m",
        "--json",
        p.path().to_str().unwrap(),
    ]);
    (out.status.code().unwrap_or(-1), json(&out))
}

const HEAD: &str = "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"3m\"\nsource_date_epoch = 1700000000\nartifacts = [\"out/*\"]\n";

#[test]
fn a_nondeterministic_build_differs_and_names_the_file() {
    let farm = Farm::start("tiny-x86_64", 2, &[]);
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"build\"\nrun = \"mkdir -p out && echo same > out/same && head -c 16 /dev/urandom > out/random\"\n"
    ));
    let (code, v) = submit(&farm, &p, "2");
    assert_eq!(code, 10, "{v}");
    assert_eq!(v["verdict"]["verdict"], "differs");
    let files = v["verdict"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{v}");
    assert_eq!(files[0]["path"], "out/random");
    // `barn verify` agrees, with the same exit code.
    let out = farm.submitter.barn(&["verify", v["job"].as_str().unwrap()]);
    assert_eq!(out.status.code(), Some(10));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdict: differs") && text.contains("file out/random"),
        "{text}"
    );
}

#[test]
fn a_node_that_alters_its_outputs_is_outvoted_flagged_and_loses_reputation() {
    let farm = Farm::start("tiny-x86_64", 3, &[3]);
    let liar = farm.volunteers[2].peer_id();
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"build\"\nrun = \"mkdir -p out && echo honest > out/file\"\n"
    ));
    let (code, v) = submit(&farm, &p, "3");
    assert_eq!(code, 10, "{v}");
    assert_eq!(v["verdict"]["minority"], serde_json::json!([liar]), "{v}");
    assert_eq!(v["verdict"]["majority"].as_array().unwrap().len(), 2);
    assert_eq!(v["verdict"]["files"][0]["path"], "out/file");
    let nodes = json(&farm.submitter.barn(&["nodes", "--json"]));
    let rep = |id: &str| {
        let n = nodes
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node"] == id)
            .unwrap()
            .clone();
        (
            n["agreements"].as_u64().unwrap(),
            n["disagreements"].as_u64().unwrap(),
        )
    };
    assert_eq!(rep(&liar), (0, 1));
    assert_eq!(rep(&farm.volunteers[0].peer_id()), (1, 0));
}

#[test]
fn a_tampered_stored_result_makes_verify_fail() {
    let farm = Farm::start("tiny-x86_64", 2, &[]);
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"build\"\nrun = \"mkdir -p out && echo ok > out/ok\"\n"
    ));
    let (code, v) = submit(&farm, &p, "2");
    assert_eq!(code, 0, "{v}");
    let id = v["job"].as_str().unwrap().to_string();
    assert_eq!(farm.submitter.barn(&["verify", &id]).status.code(), Some(0));
    // Flip one bit of one stored result's signature, behind the node's back.
    let db = rusqlite::Connection::open(farm.submitter.data.join("barn.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    let (rowid, mut env): (i64, Vec<u8>) = db
        .query_row("SELECT rowid, envelope FROM results LIMIT 1", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    let last = env.len() - 1;
    env[last] ^= 0x01;
    db.execute(
        "UPDATE results SET envelope = ?1 WHERE rowid = ?2",
        rusqlite::params![env, rowid],
    )
    .unwrap();
    let out = farm.submitter.barn(&["verify", &id]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not verify"), "{err}");
}

#[test]
fn demo_of_a_nondeterministic_project_says_differs_with_verifys_exit_code() {
    ensure_image("tiny-x86_64");
    let p = Project::new(&format!(
        "{HEAD}replicas = 2\n[[task]]\nname = \"build\"\nrun = \"mkdir -p out && head -c 16 /dev/urandom > out/stamp && echo fixed > out/fixed\"\n"
    ));
    let out = barn_shared(&[
        "demo",
        "--accel",
        "tcg",
        "--volunteers",
        "2",
        p.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(10),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verdict: differs"), "{stdout}");
    assert!(stdout.contains("file out/stamp"), "{stdout}");
    assert!(!stdout.contains("file out/fixed"), "{stdout}");
}

#[test]
fn exported_attestations_verify_and_fail_after_one_byte_changes() {
    let farm = Farm::start("tiny-x86_64", 2, &[]);
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"build\"\nrun = \"mkdir -p out && echo attested > out/a\"\n"
    ));
    let (code, v) = submit(&farm, &p, "2");
    assert_eq!(code, 0, "{v}");
    let id = v["job"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("attest.json");
    let out = farm
        .submitter
        .barn(&["attest", "export", id, "--out", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = farm
        .submitter
        .barn(&["attest", "verify", file.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The statements name the artifact with its blake3 digest.
    let text = std::fs::read_to_string(&file).unwrap();
    let envs: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        envs.as_array().unwrap().len(),
        3,
        "two provenances and one summary"
    );
    // Each provenance is signed by the volunteer that built, not by the exporter.
    let builders: std::collections::BTreeSet<String> =
        farm.volunteers.iter().map(|v| v.peer_id()).collect();
    for env in &envs.as_array().unwrap()[..2] {
        let keyid = env["signatures"][0]["keyid"].as_str().unwrap().to_string();
        assert!(builders.contains(&keyid), "provenance signed by {keyid}");
    }
    // One byte changed in the middle of the file: verification fails.
    let mut bytes = text.into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    std::fs::write(&file, &bytes).unwrap();
    let out = farm
        .submitter
        .barn(&["attest", "verify", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn the_verdict_names_the_variation_that_split_the_replicas() {
    let farm = Farm::start("tiny-x86_64", 3, &[]);
    let p = Project::new(&format!(
        "{HEAD}vary = [\"timezone\", \"umask\"]\n[[task]]\nname = \"build\"\nrun = \"mkdir -p out && date -d @$SOURCE_DATE_EPOCH > out/date && echo same > out/same\"\n"
    ));
    let (code, v) = submit(&farm, &p, "3");
    assert_eq!(code, 10, "{v}");
    assert_eq!(
        v["verdict"]["explained_by"],
        serde_json::json!(["timezone"]),
        "{v}"
    );
    assert_eq!(v["verdict"]["files"][0]["path"], "out/date");
    let out = farm.submitter.barn(&["verify", v["job"].as_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("split by the variation: timezone"), "{text}");
    assert!(text.contains("varied timezone=KST-14"), "{text}");
}

#[test]
fn a_tie_between_two_replicas_brings_in_a_third_that_decides() {
    // Two volunteers, one of them lying, two replicas: a tie. The job allows a tie-breaker,
    // which a third volunteer, started once the tie is there, provides.
    let mut farm = Farm::start("tiny-x86_64", 2, &[1]);
    let liar = farm.volunteers[0].peer_id();
    let p = Project::new(&format!(
        "{HEAD}tiebreak = true\n[[task]]\nname = \"build\"\nrun = \"mkdir -p out && echo honest > out/file\"\n"
    ));
    let out = farm
        .submitter
        .barn(&["submit", "--replicas", "2", p.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let wait_for = |farm: &Farm, results: usize, state: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let d = json(&farm.submitter.barn(&["job", &id, "--json"]));
            if d["job"]["state"] == state && d["results"].as_array().unwrap().len() == results {
                return d;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waiting for {results} results, {state}: {}",
                d["job"]
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    // The tie reopens the job for one more replica.
    wait_for(&farm, 2, "open");
    // The outputs already differ, but with no majority nobody is outvoted yet.
    let tie = json(&farm.submitter.barn(&["verify", "--json", &id]));
    assert_eq!(tie["verdict"]["verdict"], "differs");
    assert_eq!(tie["verdict"]["majority"], serde_json::json!([]), "{tie}");
    farm.add_volunteer();
    wait_for(&farm, 3, "complete");
    let out = farm.submitter.barn(&["verify", "--json", &id]);
    assert_eq!(out.status.code(), Some(10));
    let v = json(&out);
    assert_eq!(v["verdict"]["minority"], serde_json::json!([liar]), "{v}");
    assert_eq!(v["verdict"]["majority"].as_array().unwrap().len(), 2);
}

/// What `node`'s advert says about why it takes no new work, as `from` sees it.
fn unavailable_of(from: &barn_tests::farm::Node, node: &str) -> Option<serde_json::Value> {
    let nodes = json(&from.barn(&["nodes", "--json"]));
    nodes
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
        .map(|n| n["unavailable"].clone())
}

#[test]
fn a_paused_volunteer_takes_no_job_even_after_a_restart_until_it_is_resumed() {
    let mut farm = Farm::start("tiny-x86_64", 1, &[]);
    let me = farm.volunteers[0].peer_id();
    let out = farm.volunteers[0].barn(&["pause", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = json(&out);
    assert_eq!(answer["paused"], true, "{answer}");
    assert_eq!(answer["unavailable"], serde_json::json!(["paused"]));
    // Another node hears it from the volunteer's advert, at once rather than in 30 s.
    poll(15, "the submitter sees the volunteer paused", || {
        (unavailable_of(&farm.submitter, &me)? == serde_json::json!(["paused"])).then_some(())
    });

    // The paused state is kept across a restart.
    farm.volunteers[0].restart();
    let v = &farm.volunteers[0];
    assert!(v.data.join("paused").exists());
    poll(
        30,
        "the restarted volunteer advertises itself paused",
        || (unavailable_of(v, &me)? == serde_json::json!(["paused"])).then_some(()),
    );
    poll(60, "the restarted volunteer reconnects", || {
        let nodes = json(&farm.submitter.barn(&["nodes", "--json"]));
        nodes
            .as_array()?
            .iter()
            .any(|n| n["node"] == me.as_str() && n["connected"] == true)
            .then_some(())
    });

    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"build\"\nrun = \"mkdir -p out && echo paused-then-resumed > out/file\"\n"
    ));
    let id = farm.submit_one(&p);
    // The volunteer hears the job (it trusts the project, has the architecture and a free
    // slot: it would claim it), yet claims nothing while paused.
    poll(30, "the volunteer hears the job", || {
        let jobs = json(&v.barn(&["jobs", "--json"]));
        jobs.as_array()?
            .iter()
            .any(|j| j["id"] == id.as_str())
            .then_some(())
    });
    let status = json(&v.barn(&["nodes", "--json"]));
    assert!(
        status
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["is_self"] == true && n["free_slots"] == 1),
        "{status}"
    );
    std::thread::sleep(std::time::Duration::from_secs(8));
    let d = json(&farm.submitter.barn(&["job", &id, "--json"]));
    assert_eq!(d["job"]["state"], "open", "{d}");
    assert_eq!(d["leases"], serde_json::json!([]), "{d}");
    assert_eq!(d["results"], serde_json::json!([]), "{d}");

    let out = v.barn(&["resume"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "resumed: this node takes jobs again\n"
    );
    assert!(!v.data.join("paused").exists());
    poll(15, "the submitter sees the volunteer taking work", || {
        (unavailable_of(&farm.submitter, &me)? == serde_json::json!([])).then_some(())
    });
    let d = poll(240, "the resumed volunteer builds the job", || {
        let d = json(&farm.submitter.barn(&["job", &id, "--json"]));
        (d["results"].as_array()?.len() == 1).then_some(d)
    });
    assert_eq!(d["results"][0]["node"], me.as_str(), "{d}");
    assert_eq!(d["results"][0]["status"], "succeeded", "{d}");
}

#[test]
fn a_job_stopped_by_barn_pause_stop_is_built_by_another_volunteer() {
    let farm = Farm::start("tiny-x86_64", 2, &[]);
    let (a, b) = (&farm.volunteers[0], &farm.volunteers[1]);
    let (a_id, b_id) = (a.peer_id(), b.peer_id());
    // B is paused first, so that A takes the job.
    assert!(b.barn(&["pause"]).status.success());
    poll(15, "the submitter sees B paused", || {
        (unavailable_of(&farm.submitter, &b_id)? == serde_json::json!(["paused"])).then_some(())
    });
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"build\"\nrun = \"sleep 15 && mkdir -p out && echo slow > out/file\"\n"
    ));
    let id = farm.submit_one(&p);
    poll(60, "A runs the job", || {
        let jobs = json(&a.barn(&["jobs", "--json"]));
        let d = json(&farm.submitter.barn(&["job", &id, "--json"]));
        let leased = d["leases"].as_array()?.iter().any(|l| {
            l["node"] == a_id.as_str() && (l["state"] == "granted" || l["state"] == "running")
        });
        (leased && jobs.as_array()?.iter().any(|j| j["id"] == id.as_str())).then_some(())
    });

    let out = a.barn(&["pause", "--stop", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = json(&out);
    assert_eq!(answer["stopped"], serde_json::json!([id]), "{answer}");
    assert_eq!(answer["running"], serde_json::json!([]), "{answer}");
    // A hands the replica back at once as an infrastructure error: the lease fails well
    // before it would lapse, and the replica is free for another volunteer.
    let d = poll(60, "A's stopped job is reported", || {
        let d = json(&farm.submitter.barn(&["job", &id, "--json"]));
        d["leases"]
            .as_array()?
            .iter()
            .any(|l| l["node"] == a_id.as_str() && l["state"] == "failed")
            .then_some(d)
    });
    let a_result = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == a_id.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no result from A: {d}"));
    assert_eq!(a_result["status"], "error", "{a_result}");

    assert!(b.barn(&["resume"]).status.success());
    let d = poll(240, "B builds the job", || {
        let d = json(&farm.submitter.barn(&["job", &id, "--json"]));
        d["results"]
            .as_array()?
            .iter()
            .any(|r| r["node"] == b_id.as_str())
            .then_some(d)
    });
    let b_result = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == b_id.as_str())
        .unwrap();
    assert_eq!(b_result["status"], "succeeded", "{d}");
    assert_eq!(d["job"]["state"], "complete", "{d}");
}
