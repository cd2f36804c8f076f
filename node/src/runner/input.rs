//! The input disk: one deterministic tar stream the guest unpacks with `tar -xf`.
//!
//! ```text
//! job/epoch            SOURCE_DATE_EPOCH, decimal
//! job/env              KEY=VALUE lines (values have no newline: the job file refuses them)
//! job/artifacts        one glob a line, relative to /build/src
//! job/vary            KEY=VALUE overrides of the fixed environment (BUILD_DIR, TZ, LC_ALL,
//!                      UMASK, HOSTNAME) for a replica that varies them; usually empty
//! job/tasks/NNN-name   each task's script, run in name order by `sh -e` as user build
//! src/…                the packed source tree, re-rooted under src/
//! ```

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

use barn_protocol::message::JobSpec;
use barn_protocol::pack::PACK_MTIME;

use super::variation::Variation;

/// The file name of task `index` in `job/tasks/`; the guest reports tasks by this name.
pub fn task_file_name(index: usize, name: &str) -> String {
    format!("{index:03}-{name}")
}

pub use barn_protocol::guest::task_index;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_mtime(PACK_MTIME);
    h
}

fn add_file<W: Write>(b: &mut tar::Builder<W>, path: &str, data: &[u8]) -> io::Result<()> {
    b.append_data(
        &mut header(tar::EntryType::Regular, 0o644, data.len() as u64),
        path,
        data,
    )
}

fn add_dir<W: Write>(b: &mut tar::Builder<W>, path: &str) -> io::Result<()> {
    b.append_data(
        &mut header(tar::EntryType::Directory, 0o755, 0),
        path,
        io::empty(),
    )
}

/// The most source bytes held in memory to reorder them (the `file_order` variation).
const MAX_REORDER: u64 = 1 << 30;

/// Orders paths so that each directory's entries come in reverse, parents still first.
fn reversed_sibling_order(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (
        a.trim_end_matches('/').split('/'),
        b.trim_end_matches('/').split('/'),
    );
    loop {
        match (x.next(), y.next()) {
            (Some(p), Some(q)) if p == q => continue,
            (Some(p), Some(q)) => return q.cmp(p),
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (None, None) => return std::cmp::Ordering::Equal,
        }
    }
}

/// Writes the input disk for `spec` with the source tar `source` to `out`; returns its size.
pub fn write_input(
    spec: &JobSpec,
    source: &Path,
    out: &Path,
    variation: &Variation,
) -> io::Result<u64> {
    let file = File::create(out)?;
    let mut b = tar::Builder::new(BufWriter::new(file));
    add_dir(&mut b, "job/")?;
    add_file(
        &mut b,
        "job/epoch",
        format!("{}\n", spec.source_date_epoch).as_bytes(),
    )?;
    let env: String = spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    add_file(&mut b, "job/env", env.as_bytes())?;
    let globs: String = spec.artifacts.iter().map(|g| format!("{g}\n")).collect();
    add_file(&mut b, "job/artifacts", globs.as_bytes())?;
    add_file(&mut b, "job/vary", variation.guest_file().as_bytes())?;
    add_dir(&mut b, "job/tasks/")?;
    for (i, t) in spec.tasks.iter().enumerate() {
        add_file(
            &mut b,
            &format!("job/tasks/{}", task_file_name(i, &t.name)),
            t.run.as_bytes(),
        )?;
    }
    add_dir(&mut b, "src/")?;
    let mut archive = tar::Archive::new(io::BufReader::new(File::open(source)?));
    if variation.reverse_file_order() {
        if std::fs::metadata(source)?.len() > MAX_REORDER {
            return Err(io::Error::other(
                "the source is too large to vary its file order",
            ));
        }
        let mut entries = Vec::new();
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let link = entry.link_name()?.map(|t| t.into_owned());
            let mut data = Vec::new();
            io::Read::read_to_end(&mut entry, &mut data)?;
            entries.push((path, entry.header().clone(), link, data));
        }
        entries.sort_by(|a, b| reversed_sibling_order(&a.0, &b.0));
        for (path, mut h, link, data) in entries {
            append(&mut b, &path, &mut h, link, &data[..])?;
        }
    } else {
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            let link = entry.link_name()?.map(|t| t.into_owned());
            let mut h = entry.header().clone();
            append(&mut b, &path, &mut h, link, &mut entry)?;
        }
    }
    let mut w = b.into_inner()?;
    w.flush()?;
    let file = w.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(file.metadata()?.len())
}

fn append<W: Write>(
    b: &mut tar::Builder<W>,
    path: &str,
    h: &mut tar::Header,
    link: Option<std::path::PathBuf>,
    data: impl io::Read,
) -> io::Result<()> {
    let new_path = format!("src/{path}");
    if h.entry_type().is_symlink() {
        b.append_link(h, &new_path, link.unwrap_or_default())
    } else {
        b.append_data(h, &new_path, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barn_protocol::message::{Resources, Task};

    #[test]
    fn input_tar_has_the_contract_layout() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a.c"), "int x;").unwrap();
        std::os::unix::fs::symlink("sub/a.c", src.join("l")).unwrap();
        let source = dir.path().join("source.tar");
        barn_protocol::pack::pack_dir(&src, File::create(&source).unwrap()).unwrap();
        let spec = JobSpec {
            image: "tiny-x86_64".into(),
            arch: "x86_64".into(),
            tasks: vec![
                Task {
                    name: "build".into(),
                    run: "make".into(),
                },
                Task {
                    name: "check".into(),
                    run: "true".into(),
                },
            ],
            env: [("A".to_string(), "1".to_string())].into(),
            artifacts: vec!["out/*".into()],
            resources: Resources::default(),
            timeout_secs: 10,
            replicas: 1,
            source_date_epoch: 42,
            tiebreak: false,
            vary: vec![],
        };
        let out = dir.path().join("input.tar");
        write_input(&spec, &source, &out, &Variation::default()).unwrap();
        let mut names = Vec::new();
        for e in tar::Archive::new(File::open(&out).unwrap())
            .entries()
            .unwrap()
        {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                "job/",
                "job/epoch",
                "job/env",
                "job/artifacts",
                "job/vary",
                "job/tasks/",
                "job/tasks/000-build",
                "job/tasks/001-check",
                "src/",
                "src/l",
                "src/sub/",
                "src/sub/a.c"
            ]
        );
        assert_eq!(task_index("001-check"), Some(1));
        assert_eq!(task_index("x01-check"), None);
    }
}
