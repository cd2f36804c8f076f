//! Helpers for barn's integration tests: locating the `barn` binary, running it, and
//! making source trees.

pub mod fake;
pub mod farm;
pub mod hostile;
pub mod netns;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `barn` binary: `$BARN_BIN`, or the workspace's own, built once per test run
/// (cargo builds binaries only for the package under test, and the binary is in barn-node).
static BIN: OnceLock<PathBuf> = OnceLock::new();

/// Makes every helper use the `barn` at `path` (benchmarks use a release build).
pub fn use_bin(path: PathBuf) {
    let _ = BIN.set(path);
}

#[expect(clippy::expect_used, reason = "test helpers fail loudly")]
pub fn barn_bin() -> PathBuf {
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("BARN_BIN") {
            return PathBuf::from(p);
        }
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "-p", "barn-node", "--bin", "barn"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo to build barn");
        assert!(status.success(), "cargo build of barn failed");
        workspace_bin()
    })
    .clone()
}

fn workspace_bin() -> PathBuf {
    // tests/ sits beside node/ in the workspace; its target dir is shared.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("barn")
}

/// Runs `barn ARGS` with an isolated home so that no test touches the user's keys.
pub fn barn(home: &std::path::Path, args: &[&str]) -> Output {
    Command::new(barn_bin())
        .args(args)
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join("config"))
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("RUST_LOG")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", barn_bin().display()))
}

/// A data directory shared by the tests of one checkout, so images are built once:
/// `target/barn-test-data`.
pub fn shared_data_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("barn-test-data");
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// The repository's `images/` folder, so tests build images from the checked-out recipes.
pub fn recipes_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../images")
}

/// Runs `barn ARGS` against the shared data directory.
pub fn barn_shared(args: &[&str]) -> Output {
    barn_shared_cmd(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", barn_bin().display()))
}

/// The command `barn ARGS` against the shared data directory, to start or adjust.
pub fn barn_shared_cmd(args: &[&str]) -> Command {
    let data = shared_data_dir();
    let mut cmd = Command::new(barn_bin());
    cmd.args(args)
        .env("BARN_DATA_DIR", &data)
        .env("BARN_CONFIG_DIR", data.join("config"))
        .env_remove("RUST_LOG")
        .env_remove("BARN_ACCEL");
    cmd
}

/// Builds image `name` into the shared data directory unless it is there already
/// (once per test process).
pub fn ensure_image(name: &str) {
    ensure_image_from(name, &recipes_dir());
}

/// The name of an image for hostile-guest tests: the tiny image whose init runs tasks as
/// root, standing for a guest whose root a job has taken (so a task can write anything on
/// the output disk, power the VM off, or print what it likes).
pub const ROOTED_IMAGE: &str = "tinyroot-x86_64";

/// Builds [`ROOTED_IMAGE`] (once per test process) from a copy of the recipes whose guest
/// init runs tasks with `sh` instead of `su … build`.
pub fn ensure_rooted_image() {
    let src = recipes_dir();
    let dir = shared_data_dir().join("recipes-rooted");
    let read =
        |f: &str| std::fs::read_to_string(src.join(f)).unwrap_or_else(|e| panic!("read {f}: {e}"));
    let init = read("guest/init");
    let as_build = "/.barn/bin/su -p -s /bin/sh build -c";
    assert!(
        init.contains(as_build),
        "the guest init no longer runs tasks with su"
    );
    let write = |f: &str, text: &str| {
        let p = dir.join(f);
        std::fs::create_dir_all(p.parent().unwrap_or(&dir)).unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {f}: {e}"));
    };
    write("lib.sh", &read("lib.sh"));
    write("guest/init", &init.replace(as_build, "/.barn/bin/sh -c"));
    write(
        &format!("{ROOTED_IMAGE}/build.sh"),
        &read("tiny-x86_64/build.sh").replace("tiny-x86_64", ROOTED_IMAGE),
    );
    ensure_image_from(ROOTED_IMAGE, &dir);
}

/// [`ensure_image`] from the recipes in `recipes`.
pub fn ensure_image_from(name: &str, recipes: &std::path::Path) {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if built.iter().any(|n| n == name) {
        return;
    }
    // Rebuild when the recipe (its script, the shared library or the guest init) changed
    // since the image in the shared data dir was built.
    let mut text = Vec::new();
    for f in ["lib.sh", "guest/init", &format!("{name}/build.sh")] {
        text.extend(std::fs::read(recipes.join(f)).unwrap_or_default());
    }
    let stamp_path = shared_data_dir().join(format!("recipe-{name}.stamp"));
    let stamp = barn_protocol::ContentHash::of(&text).to_string();
    let list = barn_shared(&["image", "list", "--json"]);
    let have = serde_json::from_slice::<serde_json::Value>(&list.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|i| i["name"] == name);
    let fresh = std::fs::read_to_string(&stamp_path).is_ok_and(|s| s == stamp);
    if !have || !fresh {
        let out = barn_shared(&[
            "image",
            "build",
            name,
            "--quiet",
            "--recipes",
            recipes.to_str().unwrap_or("."),
        ]);
        assert!(
            out.status.success(),
            "barn image build {name} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&stamp_path, &stamp).unwrap_or_else(|e| panic!("{e}"));
    }
    built.push(name.to_string());
}

/// A source tree with a `barn.toml`, in a temporary directory.
#[derive(Debug)]
pub struct Project {
    pub dir: tempfile::TempDir,
}

impl Project {
    /// A project whose job file is `toml`.
    pub fn new(toml: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        std::fs::write(dir.path().join("barn.toml"), toml)
            .unwrap_or_else(|e| panic!("write barn.toml: {e}"));
        Self { dir }
    }

    /// Adds a file.
    pub fn file(self, path: &str, content: &str) -> Self {
        let p = self.dir.path().join(path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir: {e}"));
        }
        std::fs::write(&p, content).unwrap_or_else(|e| panic!("write {path}: {e}"));
        self
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// The result of `barn run --json`: its exit code and its JSON.
#[derive(Debug)]
pub struct RunResult {
    pub code: i32,
    pub json: serde_json::Value,
    pub stderr: String,
    pub out_dir: tempfile::TempDir,
}

/// `barn run --json DIR` against the shared data directory, keeping outputs in a new
/// temporary directory.
pub fn run_job(dir: &std::path::Path, extra: &[&str]) -> RunResult {
    let out_dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let mut args = vec![
        "run",
        "--json",
        "--quiet",
        "--out",
        out_dir.path().to_str().unwrap_or("."),
    ];
    args.extend_from_slice(extra);
    args.push(dir.to_str().unwrap_or("."));
    let out = barn_shared(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("barn run printed no JSON ({e}); stderr:\n{stderr}"));
    RunResult {
        code: out.status.code().unwrap_or(-1),
        json,
        stderr,
        out_dir,
    }
}

/// For benchmarks: makes every helper use a release build of `barn` (built here) unless
/// `BARN_BIN` names one.
pub fn use_release_bin() {
    if std::env::var_os("BARN_BIN").is_some() {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let ok = Command::new(env!("CARGO"))
        .args(["build", "--release", "-q", "-p", "barn-node"])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "release build of barn failed");
    use_bin(root.join("target/release/barn"));
}

/// For benchmarks: prints the median, minimum, 90th percentile and maximum of `xs` (ms).
pub fn print_stats(name: &str, mut xs: Vec<f64>) {
    if xs.is_empty() {
        println!("{name:<28} no samples");
        return;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    let n = xs.len();
    let median = if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    };
    let p90 = xs[((n as f64 * 0.9).ceil() as usize)
        .saturating_sub(1)
        .min(n - 1)];
    println!(
        "{name:<28} median {median:7.1} ms   min {:7.1}   p90 {p90:7.1}   max {:7.1}   (n={n})",
        xs[0],
        xs[n - 1]
    );
}

/// Polls `f` every 300 ms until it returns `Some`, for at most `secs`; panics naming
/// `what` it waited for.
pub fn poll<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(t) = f() {
            return t;
        }
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}
