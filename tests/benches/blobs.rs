//! Benchmark: what checking blobs 1 MiB at a time costs. Two barn swarms in one process,
//! connected over TCP on 127.0.0.1 (noise, yamux), move a 256 MiB blob (`BENCH_MIB`) N
//! times (`BENCH_RUNS`, default 5), interleaved:
//!
//! - **raw**: one `libp2p-stream` stream carrying the same bytes, read and dropped: the
//!   anchor, what the connection itself can do;
//! - **fetch**: `net::blobs::fetch` of the blob into a store: the request, the group values,
//!   every group checked, written to disk, the whole hash checked, renamed;
//! - **disk**: the blob's bytes written to a new file in the same folder and synced, as a
//!   fetch does before it renames the file into the store: the disk's floor;
//! - **hash**: the CPU floor of the checks alone, in memory: the group values of the blob
//!   (`Groups::of_reader`) and one plain BLAKE3 pass (what a fetch does twice).
//!
//! Run: `cargo bench -p barn-tests --bench blobs`. Prints medians and spreads;
//! docs/performance.md quotes it.

#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]

use std::time::{Duration, Instant};

use barn_node::net::behaviour::Behaviour;
use barn_node::net::blobs;
use barn_node::net::swarm::{NetConfig, build_swarm};
use barn_node::store::BlobStore;
use barn_protocol::groups::Groups;
use barn_protocol::{ContentHash, SecretKey};
use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::swarm::SwarmEvent;
use libp2p::{StreamProtocol, Swarm};

const RAW: StreamProtocol = StreamProtocol::new("/barn-bench/raw/1");

fn main() {
    let runs: usize = env_or("BENCH_RUNS", 5);
    let mib: usize = env_or("BENCH_MIB", 256);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(bench(runs, mib));
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

async fn bench(runs: usize, mib: usize) {
    let data: Vec<u8> = (0..mib << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let a_store = BlobStore::open(dir.path().join("a")).unwrap();
    let hash = a_store.import_bytes(&data).unwrap();
    a_store.groups(&hash).unwrap(); // served from the cache, as after a first fetch

    let (a, b) = pair().await;
    let a_id = *a.local_peer_id();
    let mut a_control = a.behaviour().stream.new_control();
    let mut b_control = b.behaviour().stream.new_control();
    tokio::spawn(drive(a));
    tokio::spawn(drive(b));
    let server = blobs::serve(
        a_control.clone(),
        a_store.clone(),
        blobs::ServeLimits::default(),
        Default::default(),
    )
    .unwrap();
    tokio::spawn(server);
    // The raw anchor's server: send the blob's bytes on every stream.
    let mut raw_in = a_control.accept(RAW).unwrap();
    let payload = std::sync::Arc::new(data.clone());
    tokio::spawn(async move {
        while let Some((_, mut s)) = raw_in.next().await {
            let p = payload.clone();
            tokio::spawn(async move {
                for chunk in p.chunks(256 * 1024) {
                    s.write_all(chunk).await.unwrap();
                }
                s.close().await.unwrap();
            });
        }
    });

    let (mut raw, mut fetch, mut hash_groups, mut hash_plain, mut disk) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..=runs {
        // Raw stream.
        let t = Instant::now();
        let mut s = b_control.open_stream(a_id, RAW).await.unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got += n;
        }
        assert_eq!(got, data.len());
        let raw_s = t.elapsed();

        // Fetch into a fresh store.
        let b_dir = tempfile::tempdir_in(dir.path()).unwrap();
        let b_store = BlobStore::open(b_dir.path()).unwrap();
        let t = Instant::now();
        blobs::fetch(&mut b_control, a_id, hash, &b_store, u64::MAX)
            .await
            .unwrap();
        let fetch_s = t.elapsed();

        // The disk's floor: write and sync.
        let t = Instant::now();
        {
            use std::io::Write;
            let mut file = std::fs::File::create(b_dir.path().join("floor")).unwrap();
            for chunk in data.chunks(1 << 20) {
                file.write_all(chunk).unwrap();
            }
            file.sync_all().unwrap();
        }
        let disk_s = t.elapsed();

        // The checks' CPU floor.
        let t = Instant::now();
        let g = Groups::of_reader(&data[..]).unwrap();
        let groups_s = t.elapsed();
        assert_eq!(g.root(), hash);
        let t = Instant::now();
        assert_eq!(ContentHash::of(&data), hash);
        let plain_s = t.elapsed();

        if i == 0 {
            continue; // warm-up
        }
        raw.push(raw_s);
        fetch.push(fetch_s);
        hash_groups.push(groups_s);
        hash_plain.push(plain_s);
        disk.push(disk_s);
    }

    println!("{mib} MiB blob, {runs} runs after a warm-up, TCP on 127.0.0.1 (noise, yamux):");
    report("raw libp2p stream (anchor)", mib, &mut raw);
    report("barn fetch, checked per MiB", mib, &mut fetch);
    report("write and sync to disk", mib, &mut disk);
    report("group values only, in memory", mib, &mut hash_groups);
    report("one BLAKE3 pass, in memory", mib, &mut hash_plain);
    let ratio = median(&mut fetch).as_secs_f64() / median(&mut raw).as_secs_f64();
    println!(
        "fetch / raw: {ratio:.2}x the time ({:.0}% of the raw throughput)",
        100.0 / ratio
    );
    let floor = median(&mut raw) + median(&mut disk);
    println!(
        "fetch / (raw + disk, done one after the other): {:.2}x",
        median(&mut fetch).as_secs_f64() / floor.as_secs_f64()
    );
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn report(what: &str, mib: usize, v: &mut [Duration]) {
    v.sort();
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "  {what:32} median {:7.1} ms ({:6.0} MiB/s), min {:7.1}, max {:7.1}",
        median(v).as_secs_f64() * 1e3,
        rate(median(v)),
        v[0].as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3,
    );
}

async fn drive(mut swarm: Swarm<Behaviour>) {
    loop {
        swarm.select_next_some().await;
    }
}

/// Two connected swarms: `a` listens on 127.0.0.1, `b` dials it.
async fn pair() -> (Swarm<Behaviour>, Swarm<Behaviour>) {
    let listening = NetConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        ..NetConfig::default()
    };
    let mut a = build_swarm(&SecretKey::generate(), &listening).unwrap();
    let mut b = build_swarm(&SecretKey::generate(), &NetConfig::default()).unwrap();
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
    (a, b)
}
