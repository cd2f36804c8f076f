//! What the actor reads for the owner's conditions ([`crate::sched::availability`]): the
//! paused flag, kept across restarts; the local time; the 1-minute load average.
//!
//! The paused flag is a file, `<data>/paused`, not a row in `barn.db`: one bit needs no
//! schema version or migration, and an owner can see it (and, with the node stopped,
//! remove it) by hand. It exists while the node is paused; it holds the Unix time of the
//! pause, for people.

use std::io;
use std::path::{Path, PathBuf};

use crate::sched::availability::{LoadAvgError, parse_loadavg};
use crate::sched::window::LocalTime;

/// The paused flag's file name in the data dir.
pub const PAUSED_FILE: &str = "paused";

/// The paused flag could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("failed to {what} {}", path.display())]
pub struct PauseFileError {
    what: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

/// The paused flag in a data dir.
#[derive(Debug, Clone)]
pub struct PauseFile {
    path: PathBuf,
}

impl PauseFile {
    pub fn new(data: &Path) -> Self {
        Self {
            path: data.join(PAUSED_FILE),
        }
    }

    /// Whether the node was left paused.
    pub fn load(&self) -> Result<bool, PauseFileError> {
        match std::fs::symlink_metadata(&self.path) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(PauseFileError {
                what: "read",
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Records the flag (`now`: the time written into the file), atomically.
    pub fn store(&self, paused: bool, now: u64) -> Result<(), PauseFileError> {
        let err = |what, source| PauseFileError {
            what,
            path: self.path.clone(),
            source,
        };
        if !paused {
            return match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err("remove", e)),
                _ => Ok(()),
            };
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, format!("paused at {now}\n")).map_err(|e| err("write", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err("write", e))
    }
}

/// Now in the system's local time zone (`TZ`, else `/etc/localtime`; UTC if neither is
/// readable).
pub fn local_now() -> LocalTime {
    let now = jiff::ZonedDateTime::now();
    let weekday = u8::try_from(now.weekday().to_monday_zero_offset()).unwrap_or(0);
    let hour = u16::try_from(now.hour()).unwrap_or(0);
    let minute = u16::try_from(now.minute()).unwrap_or(0);
    LocalTime {
        weekday,
        minute: hour * 60 + minute,
    }
}

/// The load average could not be read.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("failed to read /proc/loadavg")]
    Read(#[source] io::Error),
    #[error(transparent)]
    Parse(#[from] LoadAvgError),
}

/// The machine's 1-minute load average.
pub fn load_average() -> Result<f64, LoadError> {
    let text = std::fs::read_to_string("/proc/loadavg").map_err(LoadError::Read)?;
    Ok(parse_loadavg(&text)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_paused_flag_survives_in_the_data_dir() {
        let dir = tempfile::tempdir().unwrap();
        let f = PauseFile::new(dir.path());
        assert!(!f.load().unwrap());
        f.store(true, 7).unwrap();
        assert!(PauseFile::new(dir.path()).load().unwrap());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PAUSED_FILE)).unwrap(),
            "paused at 7\n"
        );
        f.store(false, 8).unwrap();
        f.store(false, 9).unwrap();
        assert!(!PauseFile::new(dir.path()).load().unwrap());
    }
}
