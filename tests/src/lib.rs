//! Helpers for barn's integration tests: locating the `barn` binary, running it, and
//! making source trees.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The `barn` binary: `$BARN_BIN`, or the workspace's own, built once per test run
/// (cargo builds binaries only for the package under test, and the binary is in barn-node).
#[expect(clippy::expect_used, reason = "test helpers fail loudly")]
pub fn barn_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
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
