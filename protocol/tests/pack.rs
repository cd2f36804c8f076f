//! Packing one tree made in two different ways gives one source hash.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use barn_protocol::manifest::{Manifest, TarLimits};
use barn_protocol::pack::{pack_dir, pack_to_vec};

const FILES: &[(&str, &[u8], bool)] = &[
    ("README", b"hello\n", false),
    ("src/main.c", b"int main(void){return 0;}\n", false),
    ("src/lib/util.c", b"/* util */\n", false),
    ("configure", b"#!/bin/sh\necho ok\n", true),
    ("a-b", b"dash", false),
    ("a/b", b"slash", false),
    ("empty", b"", false),
];

fn make_tree(root: &Path, reverse: bool, mtime_offset: u64, umask_bits: u32) {
    let mut files: Vec<_> = FILES.to_vec();
    if reverse {
        files.reverse();
    }
    for (path, data, exec) in files {
        let p = root.join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        let mode = if exec { 0o777 } else { 0o666 } & !umask_bits;
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + mtime_offset);
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }
    fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::os::unix::fs::symlink("src/main.c", root.join("link")).unwrap();
    fs::create_dir_all(root.join(".git/objects")).unwrap();
    fs::write(root.join(".git/HEAD"), format!("ref: {mtime_offset}")).unwrap();
}

#[test]
fn two_checkouts_made_differently_pack_to_one_hash() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    make_tree(a.path(), false, 0, 0o022);
    make_tree(b.path(), true, 77_777, 0o077);
    let pa = pack_dir(a.path(), std::io::sink()).unwrap();
    let pb = pack_dir(b.path(), std::io::sink()).unwrap();
    assert_eq!(pa, pb);
    assert_eq!(pa.entries, 12);
}

#[test]
fn content_and_exec_bit_change_the_hash() {
    let a = tempfile::tempdir().unwrap();
    make_tree(a.path(), false, 0, 0o022);
    let h0 = pack_dir(a.path(), std::io::sink()).unwrap().hash;
    fs::set_permissions(a.path().join("README"), fs::Permissions::from_mode(0o755)).unwrap();
    let h1 = pack_dir(a.path(), std::io::sink()).unwrap().hash;
    assert_ne!(h0, h1);
    fs::set_permissions(a.path().join("README"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(a.path().join("README"), b"hellO\n").unwrap();
    assert_ne!(pack_dir(a.path(), std::io::sink()).unwrap().hash, h0);
}

#[test]
fn packed_tree_reads_back_as_the_same_manifest() {
    let a = tempfile::tempdir().unwrap();
    make_tree(a.path(), false, 0, 0o022);
    fs::remove_dir_all(a.path().join(".git")).unwrap();
    let (bytes, _) = pack_to_vec(a.path()).unwrap();
    let from_tar = Manifest::from_tar(&bytes[..], "", TarLimits::default(), |_| Ok(None)).unwrap();
    assert_eq!(from_tar, Manifest::from_dir(a.path()).unwrap());
}

#[test]
fn special_files_are_refused_by_name() {
    let a = tempfile::tempdir().unwrap();
    let fifo = a.path().join("pipe");
    let status = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(status.success());
    let err = pack_dir(a.path(), std::io::sink()).unwrap_err().to_string();
    assert!(
        err.contains("pipe") && err.contains("special files"),
        "{err}"
    );
}
