//! Key files: reading the ed25519 secret keys barn keeps on disk (the node key,
//! `<data>/node.key`, and the project key that signs jobs, `<config>/project.key`).
//!
//! Both the daemon and the command line load keys here, so neither reaches into the
//! other. Writing a new key is [`crate::dirs::write_private_new`]'s (mode 0600).

use std::io;
use std::path::{Path, PathBuf};

use barn_protocol::SecretKey;
use barn_protocol::identity::KeyError;

/// The largest file taken for a key; a barn key file is two short lines.
pub const MAX_SIZE: u64 = 4096;

/// Why a key file could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    #[error("failed to read key {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key file {} is larger than 4 KiB: not a barn key", path.display())]
    TooLarge { path: PathBuf, size: u64 },
    #[error("key file {} is not a barn key", path.display())]
    NotAKey {
        path: PathBuf,
        #[source]
        source: KeyError,
    },
}

/// Loads the secret key in the file at `path`.
pub fn load(path: &Path) -> Result<SecretKey, KeyFileError> {
    let read = |source| KeyFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_SIZE {
        return Err(KeyFileError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    SecretKey::from_file_text(&text).map_err(|source| KeyFileError::NotAKey {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_loads_and_every_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.key");
        let key = SecretKey::from_seed([1; 32]);
        std::fs::write(&path, key.to_file_text()).unwrap();
        assert_eq!(load(&path).unwrap().node_id(), key.node_id());

        let shown = path.display().to_string();
        std::fs::write(&path, "not a key\n").unwrap();
        let err = load(&path).unwrap_err();
        assert!(matches!(err, KeyFileError::NotAKey { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("key file {shown} is not a barn key")
        );

        std::fs::write(&path, vec![b'x'; MAX_SIZE as usize + 1]).unwrap();
        let err = load(&path).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("key file {shown} is larger than 4 KiB: not a barn key")
        );

        let missing = dir.path().join("missing.key");
        let err = load(&missing).unwrap_err();
        assert!(matches!(err, KeyFileError::Read { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("failed to read key {}", missing.display())
        );
    }
}
