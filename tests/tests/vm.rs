//! `barn run` with real QEMU VMs: the tiny image for most jobs, the Debian image for a real
//! C build. These boot real guests under TCG (or KVM where the canary proves it works).

use barn_tests::{Project, barn_shared, ensure_image, ensure_rooted_image, recipes_dir, run_job};

const HEAD: &str = "image = \"tiny-x86_64\"\narch = \"x86_64\"\ntimeout = \"2m\"\nsource_date_epoch = 1700000000\n";

fn tiny(rest: &str) -> Project {
    ensure_image("tiny-x86_64");
    Project::new(&format!("{HEAD}{rest}"))
}

/// A tiny-image project whose timeout is `timeout` (not the usual 2m).
fn tiny_timed(timeout: &str, rest: &str) -> Project {
    ensure_image("tiny-x86_64");
    Project::new(&format!(
        "{}timeout = \"{timeout}\"\n{rest}",
        HEAD.replace("timeout = \"2m\"\n", "")
    ))
}

fn artifact<'a>(json: &'a serde_json::Value, path: &str) -> Option<&'a serde_json::Value> {
    json["artifacts"]
        .as_array()?
        .iter()
        .find(|a| a["path"] == path)
}

#[test]
fn example_succeeds_with_its_artifact() {
    ensure_image("tiny-x86_64");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello");
    let r = run_job(std::path::Path::new(example), &[]);
    assert_eq!(r.code, 0, "{}\n{}", r.json, r.stderr);
    assert_eq!(r.json["status"], "succeeded");
    let tasks: Vec<_> = r.json["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].clone(), t["exit_code"].clone()))
        .collect();
    assert_eq!(
        tasks,
        vec![("build".into(), 0.into()), ("check".into(), 0.into())]
    );
    let a = artifact(&r.json, "out/hello.txt").expect("out/hello.txt in the manifest");
    let content =
        std::fs::read_to_string(r.out_dir.path().join("artifacts/out/hello.txt")).unwrap();
    assert_eq!(content, "hello from barn\n");
    assert_eq!(a["size"], 16);
    assert_eq!(
        a["hash"],
        barn_protocol::ContentHash::of(content.as_bytes()).to_string()
    );
    assert!(r.json["manifest_root"].as_str().unwrap().starts_with("b3:"));
    assert!(r.json["log_hash"].as_str().unwrap().starts_with("b3:"));
    assert!(["tcg", "kvm"].contains(&r.json["accelerator"].as_str().unwrap()));
    assert!(r.json["timings"]["boot_ms"].as_u64().unwrap() > 0);
}

#[test]
fn a_failing_task_is_reported_and_later_tasks_skipped() {
    let p = tiny(
        "[[task]]\nname = \"first\"\nrun = \"echo one\"\n\
         [[task]]\nname = \"breaks\"\nrun = \"exit 3\"\n\
         [[task]]\nname = \"never\"\nrun = \"touch ran\"\n",
    );
    let r = run_job(p.path(), &[]);
    assert_eq!(r.code, 3, "{}", r.json);
    assert_eq!(r.json["status"], "failed");
    let tasks = r.json["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 2, "{}", r.json);
    assert_eq!(tasks[1]["name"], "breaks");
    assert_eq!(tasks[1]["exit_code"], 3);
}

#[test]
fn a_timeout_kills_the_vm_and_is_reported() {
    let p2 = tiny_timed(
        "4s",
        "[[task]]\nname = \"hang\"\nrun = \"echo started; sleep 600\"\n",
    );
    let started = std::time::Instant::now();
    let r = run_job(p2.path(), &[]);
    assert_eq!(r.code, 4, "{}", r.json);
    assert_eq!(r.json["status"], "timed_out");
    let tasks = r.json["tasks"].as_array().unwrap();
    assert_eq!(tasks[0]["name"], "hang");
    assert!(tasks[0]["exit_code"].is_null());
    assert!(started.elapsed().as_secs() < 60);
    // No QEMU outlives its job: the runner removes a job's work directory only after its
    // QEMU has exited, so a QEMU whose work directory is gone is an orphan.
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    for line in String::from_utf8_lossy(&ps.stdout)
        .lines()
        .filter(|l| l.starts_with("qemu-system"))
    {
        let Some(input) = line
            .split([' ', ','])
            .find_map(|w| w.strip_prefix("file=").filter(|f| f.ends_with("input.tar")))
        else {
            continue;
        };
        let dir = std::path::Path::new(input).parent().unwrap();
        assert!(dir.exists(), "orphaned QEMU: {line}");
    }
}

#[test]
fn output_over_quota_is_refused_and_reported() {
    let p = tiny(
        "artifacts = [\"out/*\"]\n[resources]\ndisk = \"1MiB\"\n\
         [[task]]\nname = \"big\"\nrun = \"mkdir -p out && head -c 3000000 /dev/zero > out/big\"\n",
    );
    let r = run_job(p.path(), &[]);
    assert_eq!(r.code, 3, "{}", r.json);
    assert_eq!(r.json["status"], "failed");
    assert_eq!(r.json["tasks"][0]["exit_code"], 0);
    assert_eq!(r.json["reason"], "output over quota", "{}", r.json);
    assert!(artifact(&r.json, "out/big").is_none());
}

/// One 1 MiB file and 3,000 hard links to it under a 4 MiB quota: the tar fits the output
/// disk (links are headers only), but written out it would be 3 GB.
#[test]
fn hard_links_cannot_multiply_the_output_quota() {
    let p = tiny(
        "artifacts = [\"out\"]\n[resources]\ndisk = \"4MiB\"\n\
         [[task]]\nname = \"links\"\nrun = \"mkdir out && head -c 1048576 /dev/urandom > out/f && \
         i=0; while [ $i -lt 3000 ]; do ln out/f out/l$i; i=$((i+1)); done\"\n",
    );
    let r = run_job(p.path(), &[]);
    assert_eq!(r.json["status"], "failed", "{}", r.json);
    assert_eq!(r.json["tasks"][0]["exit_code"], 0, "{}", r.json);
    assert_eq!(r.json["reason"], "output over quota", "{}", r.json);
    assert_eq!(r.json["artifacts"].as_array().map(Vec::len), Some(0));
    let written = dir_size(r.out_dir.path());
    assert!(
        written < 5 << 20,
        "{written} bytes written for a 4 MiB quota"
    );

    // Three links fit: each is a full copy in the manifest and on disk.
    let p = tiny(
        "artifacts = [\"out\"]\n[resources]\ndisk = \"4MiB\"\n\
         [[task]]\nname = \"links\"\nrun = \"mkdir out && head -c 100000 /dev/urandom > out/f && \
         ln out/f out/a && ln out/f out/b && ln out/f out/c\"\n",
    );
    let r = run_job(p.path(), &[]);
    assert_eq!(r.json["status"], "succeeded", "{}", r.json);
    let hashes: Vec<_> = ["out/f", "out/a", "out/b", "out/c"]
        .iter()
        .map(|f| artifact(&r.json, f).map(|a| a["hash"].clone()))
        .collect();
    assert!(
        hashes.iter().all(|h| h.is_some() && *h == hashes[0]),
        "{}",
        r.json
    );
    assert_eq!(
        std::fs::read(r.out_dir.path().join("artifacts/out/c"))
            .unwrap()
            .len(),
        100000
    );
}

fn dir_size(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => dir_size(&e.path()),
                    _ => e.metadata().map_or(0, |m| m.len()),
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A task that owns the guest writes its own tar on the output disk: a GNU long-name
/// header that claims 64 MiB, larger than the 1 MiB quota, then powers off. The host
/// refuses it from the header's size, without reading it.
#[test]
fn an_oversized_tar_header_from_the_guest_is_refused_unread() {
    ensure_rooted_image();
    let mut evil = tar::Header::new_gnu();
    evil.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    evil.set_entry_type(tar::EntryType::GNULongName);
    evil.set_size(64 << 20);
    evil.set_cksum();
    let mut bytes = evil.as_bytes().to_vec();
    bytes.resize(512 + 256 * 1024, b'a');
    let p = Project::new(&format!(
        "{}artifacts = [\"out/*\"]\n[resources]\ndisk = \"1MiB\"\n\
         [[task]]\nname = \"own\"\nrun = \"for b in /sys/block/vd*; do s=$(cat $b/serial); \
         if [ $s = barn-output ]; then dd if=evil.tar of=/dev/${{b##*/}} bs=64k; fi; done; sync; poweroff -f\"\n",
        HEAD.replace("tiny-x86_64", barn_tests::ROOTED_IMAGE)
    ));
    std::fs::write(p.path().join("evil.tar"), &bytes).unwrap();
    let r = run_job(p.path(), &[]);
    assert_eq!(r.json["status"], "failed", "{}", r.json);
    let reason = r.json["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("GNU long name header of 67108864 bytes is over the 65536-byte limit"),
        "{}",
        r.json
    );
}

/// A task printing the host's own markers (`barn: ready`, `barn: result ok`) every second
/// cannot extend its 8 s timeout.
#[test]
fn console_markers_from_a_task_do_not_extend_its_deadline() {
    let p = tiny_timed(
        "8s",
        "[[task]]\nname = \"lie\"\nrun = \"i=0; while [ $i -lt 90 ]; do \
         echo barn: ready; echo barn: result ok; echo barn: task 000-lie exit 0 ms 1; sleep 1; i=$((i+1)); done\"\n",
    );
    let started = std::time::Instant::now();
    let r = run_job(p.path(), &[]);
    let took = started.elapsed();
    assert_eq!(r.json["status"], "timed_out", "{}", r.json);
    assert!(
        took.as_secs() < 45,
        "the job ran {took:?} past its 8 s timeout"
    );
}

/// A task floods the console with `barn: ready`, far more markers than the runner queues:
/// the job still ends at its timeout (the queue never blocks the console pump:
/// `runner::console` `a_flood_of_markers_never_blocks_the_pump`; no marker moves the
/// deadline).
#[test]
fn a_flood_of_markers_ends_at_the_deadline() {
    let p = tiny_timed(
        "6s",
        "[[task]]\nname = \"flood\"\nrun = \"yes 'barn: ready'\"\n",
    );
    let started = std::time::Instant::now();
    let r = run_job(p.path(), &["--log-cap", "64KiB"]);
    assert_eq!(r.json["status"], "timed_out", "{}", r.json);
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}

/// A task that allocates more memory than its VM has is reported as out of memory, with
/// the process the guest kernel killed, not as a generic failure.
#[test]
fn a_task_out_of_memory_is_named() {
    let p = tiny(
        "[resources]\nmemory = \"128MiB\"\n\
         [[task]]\nname = \"eat\"\nrun = \"awk 'BEGIN { s = \\\"x\\\"; while (1) s = s s }'\"\n",
    );
    let r = run_job(p.path(), &[]);
    assert_eq!(r.json["status"], "failed", "{}", r.json);
    assert_eq!(r.json["tasks"][0]["name"], "eat");
    let reason = r.json["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("out of memory"), "{}", r.json);
    assert!(reason.contains("awk"), "{}", r.json);
}

/// A fork bomb fills the guest, not the host: the job ends by its deadline (timed out, or
/// failed when forks fail, or an error if the guest kernel gives up), never a success.
#[test]
fn a_fork_bomb_ends_at_the_deadline() {
    let p = tiny_timed(
        "10s",
        "[[task]]\nname = \"bomb\"\nrun = \"b() { b | b; }; b\"\n",
    );
    let started = std::time::Instant::now();
    let r = run_job(p.path(), &[]);
    assert!(
        ["timed_out", "failed", "error"].contains(&r.json["status"].as_str().unwrap_or_default()),
        "{}",
        r.json
    );
    assert!(started.elapsed().as_secs() < 60, "{:?}", started.elapsed());
}

#[test]
fn a_flooded_log_is_capped() {
    let p = tiny(
        "[[task]]\nname = \"flood\"\nrun = \"head -c 3000000 /dev/zero | tr '\\\\0' x | fold -w 100\"\n",
    );
    let r = run_job(p.path(), &["--log-cap", "256KiB"]);
    assert_eq!(r.code, 0, "{}\n{}", r.json, r.stderr);
    assert_eq!(r.json["log_size"], 256 * 1024);
    assert!(
        r.json["notes"]
            .to_string()
            .contains("the log was cut at 256KiB"),
        "{}",
        r.json
    );
}

#[test]
fn a_link_leading_out_of_the_output_is_refused() {
    let p = tiny(
        "artifacts = [\"out/*\"]\n[[task]]\nname = \"evil\"\nrun = \"mkdir -p out && echo hi > out/ok && ln -s /etc/passwd out/pw && ln -s ../../../x out/up\"\n",
    );
    let r = run_job(p.path(), &[]);
    assert_eq!(r.code, 3, "{}", r.json);
    assert_eq!(r.json["status"], "failed");
    assert!(
        r.json["notes"]
            .to_string()
            .contains("points outside the output"),
        "{}",
        r.json
    );
    assert_eq!(r.json["artifacts"].as_array().unwrap().len(), 0);
    assert!(!r.out_dir.path().join("artifacts").exists());
}

#[test]
fn one_job_twice_gives_one_manifest_root() {
    let p = tiny(
        "artifacts = [\"out/**\"]\n[[task]]\nname = \"b\"\nrun = \"mkdir -p out/sub && echo $SOURCE_DATE_EPOCH > out/epoch && date -u -d @$SOURCE_DATE_EPOCH > out/sub/date && chmod +x out/epoch\"\n",
    );
    let a = run_job(p.path(), &[]);
    let b = run_job(p.path(), &[]);
    assert_eq!(a.code, 0, "{}", a.json);
    assert_eq!(a.json["manifest_root"], b.json["manifest_root"]);
    assert_eq!(artifact(&a.json, "out/epoch").unwrap()["executable"], true);
}

#[test]
fn random_output_gives_two_roots() {
    let p = tiny(
        "artifacts = [\"out/*\"]\n[[task]]\nname = \"r\"\nrun = \"mkdir -p out && head -c 32 /dev/urandom > out/random\"\n",
    );
    let a = run_job(p.path(), &[]);
    let b = run_job(p.path(), &[]);
    assert_eq!(a.code, 0, "{}", a.json);
    assert_ne!(a.json["manifest_root"], b.json["manifest_root"]);
}

#[test]
fn the_tiny_image_builds_reproducibly() {
    ensure_image("tiny-x86_64");
    let recipes = recipes_dir();
    let first = barn_shared(&["image", "list", "--json"]);
    let before: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let out = barn_shared(&[
        "image",
        "build",
        "tiny-x86_64",
        "--quiet",
        "--recipes",
        recipes.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let hash = line.split_whitespace().nth(2).unwrap();
    let old = before
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "tiny-x86_64")
        .unwrap();
    assert_eq!(old["hash"], hash);
}

#[test]
fn a_c_program_builds_with_make_in_the_debian_image() {
    ensure_image("debian-12-x86_64");
    let p = Project::new(
        "image = \"debian-12-x86_64\"\narch = \"x86_64\"\ntimeout = \"5m\"\nsource_date_epoch = 1700000000\nartifacts = [\"hello\"]\n\
         [resources]\nmemory = \"512MiB\"\n\
         [[task]]\nname = \"build\"\nrun = \"make\"\n\
         [[task]]\nname = \"test\"\nrun = \"./hello | grep -q 'hello, barn'\"\n",
    )
    .file("Makefile", "hello: hello.c\n\tgcc -O2 -o hello hello.c\n")
    .file("hello.c", "#include <stdio.h>\nint main(void) { puts(\"hello, barn\"); return 0; }\n");
    let a = run_job(p.path(), &[]);
    assert_eq!(a.code, 0, "{}\n{}", a.json, a.stderr);
    let bin = artifact(&a.json, "hello").unwrap();
    assert_eq!(bin["executable"], true);
    let elf = std::fs::read(a.out_dir.path().join("artifacts/hello")).unwrap();
    assert_eq!(&elf[..4], b"\x7fELF");
    let b = run_job(p.path(), &[]);
    assert_eq!(
        a.json["manifest_root"], b.json["manifest_root"],
        "gcc output differs between two VM runs"
    );
}

#[test]
fn variations_change_the_environment_a_replica_builds_in() {
    let p = tiny(
        "artifacts = [\"out/*\"]\nvary = [\"timezone\", \"umask\", \"build_path\", \"hostname\", \"locale\", \"cpus\", \"file_order\"]\n\
         [[task]]\nname = \"probe\"\nrun = \"mkdir -p out && date -d @$SOURCE_DATE_EPOCH +%H > out/hour && touch out/f && stat -c %a out/f > out/mode && pwd > out/pwd && hostname > out/host && echo $LC_ALL > out/locale && nproc > out/cpus && find . -maxdepth 1 -type f | tr '\\\\n' ' ' > out/order\"\n",
    )
    .file("a", "1")
    .file("b", "2")
    .file("c", "3");
    let read = |r: &barn_tests::RunResult, f: &str| {
        std::fs::read_to_string(r.out_dir.path().join("artifacts/out").join(f))
            .unwrap()
            .trim()
            .to_string()
    };
    let control = run_job(p.path(), &["--variant", "0"]);
    assert_eq!(control.code, 0, "{}\n{}", control.json, control.stderr);
    assert_eq!(read(&control, "hour"), "22");
    assert_eq!(read(&control, "mode"), "644");
    assert_eq!(read(&control, "pwd"), "/build/src");
    assert_eq!(read(&control, "host"), "barn");
    assert_eq!(read(&control, "locale"), "C.UTF-8");
    assert_eq!(read(&control, "cpus"), "1");
    let expect = [
        (1, "hour", "12"),
        (2, "mode", "664"),
        (3, "pwd", "/build/barn-varied-path/src"),
        (4, "host", "barn-varied"),
        (5, "locale", "fr_CH.UTF-8"),
        (6, "cpus", "2"),
    ];
    for (variant, file, value) in expect {
        let r = run_job(p.path(), &["--variant", &variant.to_string()]);
        assert_eq!(r.code, 0, "{}\n{}", r.json, r.stderr);
        assert_eq!(read(&r, file), value, "variant {variant}");
        assert_ne!(r.json["manifest_root"], control.json["manifest_root"]);
    }
    // File order: the same names, listed in another order.
    let r = run_job(p.path(), &["--variant", "7"]);
    assert_eq!(r.code, 0, "{}", r.json);
    let (a, b) = (read(&control, "order"), read(&r, "order"));
    assert_ne!(a, b, "directory order did not change");
    let sorted = |s: &str| {
        let mut v: Vec<_> = s.split_whitespace().map(str::to_string).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&a), sorted(&b));
}

#[test]
fn a_guest_cannot_drive_the_terminal_through_barn_run() {
    let p = tiny(
        "artifacts = [\"out/*\"]\n[[task]]\nname = \"evil\"\n\
         run = \"printf '\\\\033]0;pwned\\\\007\\\\033[2J\\\\302\\\\233H\\\\342\\\\200\\\\256gnp.exe\\\\n' && mkdir -p out && echo x > \\\"out/a$(printf '\\\\033')[31mred\\\"\"\n",
    );
    let out_dir = tempfile::tempdir().unwrap();
    let out = barn_shared(&[
        "run",
        "--out",
        out_dir.path().to_str().unwrap(),
        p.path().to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    // Nothing the guest wrote reaches the terminal as a control character...
    for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
        for c in ['\x1b', '\x07', '\u{9b}', '\u{202e}'] {
            assert!(!text.contains(c), "{name} holds {c:?}:\n{text}");
        }
    }
    // ...but it is shown, escaped: the streamed log line and the artifact's name.
    assert!(
        stderr.contains("| \\x1b]0;pwned\\x07\\x1b[2J\\u{9b}H\\u{202e}gnp.exe"),
        "{stderr}"
    );
    assert!(stdout.contains("out/a\\x1b[31mred"), "{stdout}");
    // The log file keeps the exact bytes: its hash is what replicas compare.
    let log_line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("log "))
        .unwrap_or_else(|| panic!("no log line in:\n{stdout}"));
    let log_path = log_line.rsplit(' ').next().unwrap();
    let log = std::fs::read(log_path).unwrap();
    let raw = "\x1b]0;pwned\x07\x1b[2J\u{9b}H\u{202e}gnp.exe".as_bytes();
    assert!(
        log.windows(raw.len()).any(|w| w == raw),
        "{log_path}:\n{}",
        barn_protocol::text::printable_bytes(&log, true)
    );
}
