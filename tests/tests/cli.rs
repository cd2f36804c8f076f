//! The protocol commands, run as a user runs them: real `barn` processes.

use std::fs;

use barn_tests::barn;

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

#[test]
fn key_new_then_show_prints_the_same_public_key() {
    let home = tempfile::tempdir().unwrap();
    let made = barn(home.path(), &["key", "new"]);
    assert!(made.status.success(), "{}", stderr(&made));
    let id = stdout(&made);
    assert!(id.starts_with("ed25519:") && id.len() == 8 + 64, "{id}");
    let shown = barn(home.path(), &["key", "show"]);
    assert_eq!(stdout(&shown), id);
    let again = barn(home.path(), &["key", "new"]);
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already exists"),
        "{}",
        stderr(&again)
    );
    let node = barn(home.path(), &["key", "new", "--node"]);
    assert!(stdout(&node).starts_with("12D3KooW"), "{}", stdout(&node));
}

#[test]
fn pack_of_two_checkouts_made_differently_prints_one_hash() {
    let home = tempfile::tempdir().unwrap();
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    // Same files, created in opposite orders, with different modes for group/other.
    for (dir, names) in [
        (a.path(), ["x", "y", "sub/z"]),
        (b.path(), ["sub/z", "y", "x"]),
    ] {
        for n in names {
            let p = dir.join(n);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, n).unwrap();
        }
    }
    std::process::Command::new("chmod")
        .args(["-R", "go-rwx"])
        .arg(b.path())
        .status()
        .unwrap();
    std::process::Command::new("touch")
        .args(["-d", "2001-01-01"])
        .arg(b.path().join("x"))
        .status()
        .unwrap();
    let ha = barn(home.path(), &["pack", a.path().to_str().unwrap()]);
    let hb = barn(home.path(), &["pack", b.path().to_str().unwrap()]);
    assert!(ha.status.success(), "{}", stderr(&ha));
    assert!(stdout(&ha).starts_with("b3:"));
    assert_eq!(stdout(&ha), stdout(&hb));
}

#[test]
fn job_check_prints_the_job_and_readable_errors() {
    let home = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("barn.toml");
    fs::write(&file, "image = \"tiny-x86_64\"\narch = \"x86_64\"\n[resources]\nmemory = \"lots\"\n[[task]]\nname = \"b\"\nrun = \"true\"\n").unwrap();
    let out = barn(home.path(), &["job", "check", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("barn.toml:4: resources.memory: \"lots\" is not a size"),
        "{err}"
    );

    fs::write(
        &file,
        "image = \"tiny-x86_64\"\narch = \"x86_64\"\n[[task]]\nname = \"b\"\nrun = \"true\"\n",
    )
    .unwrap();
    let out = barn(home.path(), &["job", "check", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("image      tiny-x86_64"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn the_example_job_file_is_valid() {
    let home = tempfile::tempdir().unwrap();
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/hello");
    let out = barn(home.path(), &["job", "check", "--json", example]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["image"], "tiny-x86_64");
}

/// Every file under `root`, relative to it.
fn files_under(root: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let items = fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for e in items {
            let p = e.unwrap_or_else(|e| panic!("{e}")).path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap_or(&p);
                out.push(rel.display().to_string());
            }
        }
    }
    out
}

#[test]
fn image_names_that_climb_out_are_refused_everywhere() {
    let home = tempfile::tempdir().unwrap();
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let data_arg = data.to_str().unwrap();

    // On the command line.
    for bad in ["../x", "..", "/etc/x"] {
        let out = barn(
            home.path(),
            &["image", "build", bad, "--data-dir", data_arg],
        );
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("bad image name \"{bad}\"")),
            "{bad}: {}",
            stderr(&out)
        );
    }

    // In the image.toml a recipe writes (as one received from a peer would hold).
    let recipes = tempfile::tempdir().unwrap();
    fs::create_dir_all(recipes.path().join("evil")).unwrap();
    fs::write(
        recipes.path().join("evil/build.sh"),
        "mkdir -p \"$1\" && cd \"$1\" && echo k > vmlinux && echo i > initrd.img && \
         printf 'name = \"/../../escaped\"\\narch = \"x86_64\"\\n' > image.toml\n",
    )
    .unwrap();
    let out = barn(
        home.path(),
        &[
            "image",
            "build",
            "evil",
            "--quiet",
            "--data-dir",
            data_arg,
            "--recipes",
            recipes.path().to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("bad image name \"/../../escaped\""),
        "{}",
        stderr(&out)
    );
    // Nothing was written outside the store's own folders, and nothing was named.
    let stray: Vec<String> = files_under(root.path())
        .into_iter()
        .filter(|f| !f.starts_with("data/images/build-") && !f.starts_with("data/cache"))
        .collect();
    assert!(stray.is_empty(), "files outside the image store: {stray:?}");
    let list = barn(
        home.path(),
        &["image", "list", "--json", "--data-dir", data_arg],
    );
    assert_eq!(stdout(&list), "[]");

    // In a job file.
    for bad in ["..", "../x"] {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("barn.toml"),
            format!(
                "image = \"{bad}\"\narch = \"x86_64\"\n[[task]]\nname = \"b\"\nrun = \"true\"\n"
            ),
        )
        .unwrap();
        let out = barn(home.path(), &["job", "check", dir.path().to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(1), "{bad}: {}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("barn.toml:1: image: bad image name \"{bad}\"")),
            "{bad}: {}",
            stderr(&out)
        );
    }
}
