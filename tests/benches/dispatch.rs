//! Benchmark: dispatch latency on a loopback farm (a submitter and three volunteers as
//! real processes): submit → grant (the coordinator's clock: submission accepted → lease
//! granted, which includes the gossip announcement, the volunteer's claim and the grant),
//! and grant → VM started (the volunteer's clock: fetching the source, and the VM's input
//! and output disks), and submit → settled (the CLI's clock: `barn submit --wait` returns
//! once the coordinator signed the settlement). N jobs (default 20, `BENCH_JOBS`), three
//! replicas each.
//!
//! Run: `cargo bench -p barn-tests --bench dispatch`.

#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use barn_tests::Project;
use barn_tests::farm::Farm;

fn main() {
    barn_tests::use_release_bin();
    let jobs: usize = std::env::var("BENCH_JOBS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let farm = Farm::start("tiny-x86_64", 3, &[]);
    let p = Project::new(
        "image = \"tiny-x86_64\"\narch = \"x86_64\"\n[[task]]\nname = \"noop\"\nrun = \"true\"\n",
    );
    let (mut to_grant, mut to_vm, mut total) = (vec![], vec![], vec![]);
    let (mut settled, mut vm_total) = (vec![], vec![]);
    for i in 0..jobs + 1 {
        let started = std::time::Instant::now();
        let out = farm.submitter.barn(&[
            "submit",
            "--replicas",
            "3",
            "--wait",
            "--json",
            p.path().to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let id = v["job"].as_str().unwrap();
        let d: serde_json::Value =
            serde_json::from_slice(&farm.submitter.barn(&["job", id, "--json"]).stdout).unwrap();
        if i == 0 {
            continue; // warm-up: the volunteers fetch the image on their first job
        }
        settled.push(started.elapsed().as_secs_f64() * 1000.0);
        let submitted = d["submitted_ms"].as_f64().unwrap();
        for lease in d["leases"].as_array().unwrap() {
            let granted = lease["granted_ms"].as_f64().unwrap();
            to_grant.push(granted - submitted);
            let r = d["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["node"] == lease["node"])
                .unwrap();
            let bytes = hex::decode(r["envelope"].as_str().unwrap()).unwrap();
            let signed =
                barn_protocol::Signed::<barn_protocol::message::BuildResult>::from_bytes(&bytes)
                    .unwrap();
            let t = signed.message().timings;
            let vm = (t.fetch_ms + t.prepare_ms) as f64;
            vm_total.push((t.fetch_ms + t.total_ms) as f64);
            to_vm.push(vm);
            total.push(granted - submitted + vm);
        }
    }
    println!(
        "dispatch on a loopback farm: 3 volunteers, {jobs} jobs × 3 replicas after one warm-up job"
    );
    barn_tests::print_stats("submit → grant", to_grant);
    barn_tests::print_stats("grant → VM started", to_vm);
    barn_tests::print_stats("submit → VM started", total);
    barn_tests::print_stats("submit → settled (barn submit --wait)", settled);
    // The anchor in the same run: each replica's own time on its volunteer (fetch, prepare,
    // boot, run, collect). Submit → settled minus the slowest replica's time is what the
    // protocol adds (grants, commitments, reveal, results, settlement, the CLI's polling).
    barn_tests::print_stats("anchor: a replica's own time", vm_total);
}
