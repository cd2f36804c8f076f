//! The volunteer's host is safe from the jobs it runs: QEMU's confinement, checked from
//! outside on real `barn` processes and real VMs. Most of it needs root (CI runs as root):
//! as another user these tests say so and check nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use barn_tests::{Project, barn_shared_cmd, ensure_image};

const HEAD: &str = "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"2m\"\nsource_date_epoch = 1700000000\n";

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))
    })
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// The scratch folder of the `barn` process `pid` (its `owner` file names it).
fn scratch_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_dir(std::env::temp_dir().join("barn-vm"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|d| {
            std::fs::read_to_string(d.join("owner"))
                .is_ok_and(|o| o.split(' ').next() == Some(&pid.to_string()))
        })
}

/// The QEMU a job folder's `qemu.pid` names: (pid, start time).
fn qemu_in(scratch: &Path) -> Option<(u32, u64)> {
    std::fs::read_dir(scratch).ok()?.flatten().find_map(|e| {
        let text = std::fs::read_to_string(e.path().join("qemu.pid")).ok()?;
        let mut w = text.split_whitespace();
        Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?))
    })
}

/// QEMU runs as a user of its own, in a network namespace of its own with only loopback, in the
/// node's cgroup with its limits; when the node is killed with SIGKILL mid-job, QEMU dies
/// with it, and the node's next start removes what the dead run left.
#[test]
fn qemu_is_confined_and_dies_with_its_node() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    ensure_image("tiny-x86_64");
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"wait\"\nrun = \"sleep 100\"\n"
    ));
    let out = tempfile::tempdir().unwrap();
    let mut node = barn_shared_cmd(&[
        "run",
        "--quiet",
        "--out",
        out.path().to_str().unwrap(),
        p.path().to_str().unwrap(),
    ])
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let scratch = wait_for("the node's scratch folder", Duration::from_secs(30), || {
        scratch_of(node.id())
    });
    let (qemu, started) = wait_for("QEMU", Duration::from_secs(60), || qemu_in(&scratch));
    assert_eq!(start_time(qemu), Some(started));

    // QEMU runs as a user of its own: not root, not `nobody`, gid alike, and the output
    // disk is that user's.
    let status = std::fs::read_to_string(format!("/proc/{qemu}/status")).unwrap();
    let uid = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    let ids: Vec<u32> = uid
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap())
        .collect();
    let vm = ids[0];
    assert!(ids.iter().all(|&i| i == vm), "QEMU's uids: {uid}");
    assert!(vm >= 0x7000_0000, "QEMU runs as uid {vm}");
    let job = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .find(|e| e.path().join("qemu.pid").exists())
        .unwrap()
        .path();
    let disk = std::fs::metadata(job.join("output.img")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((disk.uid(), disk.gid()), (vm, vm));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("Gid:"), format!("{vm} {vm} {vm} {vm}"));
    assert_eq!(field("Groups:"), "", "QEMU kept supplementary groups");
    assert_eq!(field("NoNewPrivs:"), "1");
    let limits = std::fs::read_to_string(format!("/proc/{qemu}/limits")).unwrap();
    let limit = |name: &str| {
        limits
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| {
                l.split_whitespace()
                    .rev()
                    .nth(1)
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_default()
    };
    assert!(
        limits
            .lines()
            .any(|l| l.starts_with("Max core file size") && l.contains(" 0 ")),
        "{limits}"
    );
    assert_eq!(limit("Max open files"), "1024", "{limits}");
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/net")).unwrap();
    assert_ne!(
        ns(&qemu.to_string()),
        ns("self"),
        "QEMU shares the host's network"
    );
    let devs: Vec<String> = std::fs::read_to_string(format!("/proc/{qemu}/net/dev"))
        .unwrap()
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split(':').next()?.trim().to_string()))
        .collect();
    assert_eq!(devs, ["lo"], "interfaces QEMU can see");

    // The node's cgroup, with a memory limit of node.max_memory (4 GiB for `barn run`) plus
    // QEMU's overhead for its one VM.
    let cgroups = std::fs::read_to_string(format!("/proc/{qemu}/cgroup")).unwrap();
    let (limit_file, rel) = cgroups
        .lines()
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
            if ctrl.split(',').any(|c| c == "memory") {
                Some((
                    format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"),
                    path,
                ))
            } else if ctrl.is_empty() && Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
                Some((format!("/sys/fs/cgroup{path}/memory.max"), path))
            } else {
                None
            }
        })
        .expect("QEMU is in a memory cgroup");
    assert!(rel.contains("/barn-node-"), "QEMU's cgroup: {rel}");
    let limit: u64 = std::fs::read_to_string(&limit_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(limit, (4 << 30) + (384 << 20), "{limit_file}");

    node.kill().unwrap();
    node.wait().unwrap();
    wait_for("QEMU to die with its node", Duration::from_secs(5), || {
        (start_time(qemu) != Some(started)).then_some(())
    });
    assert!(
        scratch.exists(),
        "a SIGKILLed node leaves its scratch folder"
    );

    // The next start of the same node (same data folder) cleans up after the dead one.
    let again = barn_shared_cmd(&["run", "--quiet", "--out", out.path().to_str().unwrap()])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello"))
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(!scratch.exists(), "{} was left behind", scratch.display());
    assert!(
        !Path::new(&limit_file).exists(),
        "the dead run's cgroup was left behind"
    );
}

/// A scratch folder that another user created first (to swap job folders for links that
/// root would write through) is refused, and no job runs.
#[test]
fn a_scratch_folder_made_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let planted = tmp.path().join("barn-vm");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    let out = tempfile::tempdir().unwrap();
    let run = barn_shared_cmd(&["run", "--quiet", "--out", out.path().to_str().unwrap()])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello"))
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "ran in a planted scratch folder");
    assert!(
        stderr.contains("barn-vm is unsafe") && stderr.contains("owned by uid 65534"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_dir(&planted).unwrap().count(), 0);
}

/// Confinement fails closed: a root node that cannot make QEMU's network namespace (here,
/// CAP_SYS_ADMIN is dropped from its bounding set) runs no job, and says why; with
/// `--unconfined` the owner can choose to run anyway.
#[test]
fn a_root_node_that_cannot_confine_qemu_refuses_jobs() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    ensure_image("tiny-x86_64");
    let hello = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello");
    let out = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let plain = barn_shared_cmd(&[]);
        let mut cmd = Command::new("setpriv");
        cmd.args(["--bounding-set", "-sys_admin", "--"])
            .arg(plain.get_program())
            .args([
                "run",
                "--quiet",
                "--json",
                "--out",
                out.path().to_str().unwrap(),
            ])
            .args(extra)
            .arg(hello);
        for (k, v) in plain.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.output().unwrap()
    };
    let refused = run(&[]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "ran without its network namespace"
    );
    assert!(
        stderr.contains("cannot confine QEMU") && stderr.contains("network namespace"),
        "{stderr}"
    );
    let ran = run(&["--unconfined"]);
    let stderr = String::from_utf8_lossy(&ran.stderr);
    assert!(ran.status.success(), "{stderr}");
    assert!(stderr.contains("WITHOUT its confinement"), "{stderr}");
}

/// A volunteer `barn node` killed with SIGKILL in the middle of a job leaves no QEMU
/// running, and its next start removes the dead run's scratch folder.
#[test]
fn a_node_killed_mid_job_leaves_no_qemu_and_cleans_up_at_its_next_start() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut farm = barn_tests::farm::Farm::start("tiny-x86_64", 1, &[]);
    let p = Project::new(&format!(
        "{HEAD}[[task]]\nname = \"wait\"\nrun = \"sleep 100\"\n"
    ));
    farm.submit_one(&p);
    let volunteer = &mut farm.volunteers[0];
    let scratch = wait_for(
        "the volunteer's scratch folder",
        Duration::from_secs(30),
        || scratch_of(volunteer.pid()),
    );
    let (qemu, started) = wait_for("the volunteer's QEMU", Duration::from_secs(120), || {
        qemu_in(&scratch)
    });
    volunteer.kill_hard();
    wait_for("QEMU to die with its node", Duration::from_secs(5), || {
        (start_time(qemu) != Some(started)).then_some(())
    });
    assert!(scratch.exists());
    volunteer.restart();
    wait_for(
        "the restarted node to clean up",
        Duration::from_secs(30),
        || (!scratch.exists()).then_some(()),
    );
}
