//! Benchmark: the cost of a no-op job in a VM, from `barn run` starting to its result, and
//! its parts (prepare, boot, run, collect), over N runs (default 10; `BENCH_RUNS`).
//!
//! Run: `cargo bench -p barn-tests --bench noop`. It builds barn in release mode, builds the
//! tiny image if needed, then prints medians and spreads; docs/performance.md quotes it.

#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::process::Command;
use std::time::Instant;

use barn_tests::{Project, ensure_image, shared_data_dir};

fn main() {
    barn_tests::use_release_bin();
    ensure_image("tiny-x86_64");
    let runs: usize = std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let p = Project::new(
        "image = \"tiny-x86_64\"\narch = \"x86_64\"\n[[task]]\nname = \"noop\"\nrun = \"true\"\n",
    );
    let data = shared_data_dir();
    // Confined (as every node runs jobs) and, interleaved in the same run as the anchor,
    // `--unconfined` (no namespace, cgroup or user change): the confinement's own cost.
    let variants: [(&str, &[&str]); 2] = [("confined", &[]), ("unconfined", &["--unconfined"])];
    let mut timings: Vec<[Vec<f64>; 6]> = vec![Default::default(), Default::default()];
    let mut accel = String::new();
    for i in 0..runs + 1 {
        for (k, (_, extra)) in variants.iter().enumerate() {
            let out = tempfile::tempdir().unwrap();
            let t = Instant::now();
            let o = Command::new(barn_tests::barn_bin())
                .args(["run", "--json", "--quiet", "--out"])
                .arg(out.path())
                .args(*extra)
                .arg(p.path())
                .env("BARN_DATA_DIR", &data)
                .env("BARN_CONFIG_DIR", data.join("config"))
                .output()
                .unwrap();
            let elapsed = t.elapsed().as_secs_f64() * 1000.0;
            let v: serde_json::Value = serde_json::from_slice(&o.stdout)
                .unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&o.stderr)));
            assert_eq!(v["status"], "succeeded", "{v}");
            if i == 0 {
                continue; // warm-up: page cache, KVM canary verdict
            }
            accel = v["accelerator"].as_str().unwrap_or_default().to_string();
            let ms = |k: &str| v["timings"][k].as_f64().unwrap();
            let t = &mut timings[k];
            t[0].push(elapsed);
            for (j, key) in ["total_ms", "prepare_ms", "boot_ms", "run_ms", "collect_ms"]
                .iter()
                .enumerate()
            {
                t[j + 1].push(ms(key));
            }
        }
    }
    println!(
        "no-op job in tiny-x86_64, accelerator {accel}, {runs} runs of each after one warm-up"
    );
    for ((name, _), t) in variants.iter().zip(timings) {
        println!("{name}:");
        let [wall, total, prepare, boot, run, collect] = t;
        barn_tests::print_stats("barn run (wall)", wall);
        barn_tests::print_stats("runner total", total);
        barn_tests::print_stats("  prepare", prepare);
        barn_tests::print_stats("  boot (to ready)", boot);
        barn_tests::print_stats("  run", run);
        barn_tests::print_stats("  collect", collect);
    }
}
