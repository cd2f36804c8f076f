//! Key files: reading the ed25519 secret keys barn keeps on disk (the node key,
//! `<data>/node.key`, the project key that signs jobs, `<config>/project.key`, and an
//! operator key, `<config>/operator.key`), and the node's operator certificate
//! (`<data>/operator.cert`, written by `barn key certify`).
//!
//! Both the daemon and the command line load keys here, so neither reaches into the
//! other. Writing a new key is [`crate::dirs::write_private_new`]'s (mode 0600).

use std::io;
use std::path::{Path, PathBuf};

use barn_protocol::identity::KeyError;
use barn_protocol::operator::{CertError, MAX_CERT, OperatorCert};
use barn_protocol::{NodeId, OperatorId, SecretKey};

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

/// The largest operator certificate file read: one certificate envelope.
pub const MAX_CERT_FILE: u64 = MAX_CERT as u64;

/// Why an operator certificate file could not be loaded; every variant names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertFileError {
    #[error("failed to read the operator certificate {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the operator certificate {} is larger than {MAX_CERT_FILE} bytes",
        path.display()
    )]
    TooLarge { path: PathBuf },
    #[error("the operator certificate {} does not check", path.display())]
    Invalid {
        path: PathBuf,
        #[source]
        source: CertError,
    },
}

/// Loads the operator certificate at `path` (the signed `operator-cert` envelope's bytes,
/// as `barn key certify` writes them and a claim carries them) and checks it for `node` at
/// unix second `now`:
/// its signed bytes (as a claim carries them) and its operator. `Ok(None)`: there is no
/// certificate, and the node is its own operator.
pub fn load_operator_cert(
    path: &Path,
    node: &NodeId,
    now: u64,
) -> Result<Option<(Vec<u8>, OperatorId)>, CertFileError> {
    let read = |source| CertFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(read(e)),
    };
    if meta.len() > MAX_CERT_FILE {
        return Err(CertFileError::TooLarge {
            path: path.to_path_buf(),
        });
    }
    let bytes = std::fs::read(path).map_err(read)?;
    let operator =
        OperatorCert::check(&bytes, node, now).map_err(|source| CertFileError::Invalid {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Some((bytes, operator)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_operator_certificate_file_loads_for_its_node_only() {
        use barn_protocol::Signed;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("operator.cert");
        let node = SecretKey::from_seed([1; 32]).node_id();
        assert!(load_operator_cert(&path, &node, 10).unwrap().is_none());
        let op = SecretKey::from_seed([2; 32]);
        let cert = Signed::sign(
            OperatorCert {
                operator: OperatorId(op.public()),
                node,
                issued: 5,
                expires: 100,
            },
            &op,
        )
        .to_bytes();
        std::fs::write(&path, &cert).unwrap();
        let (bytes, operator) = load_operator_cert(&path, &node, 10).unwrap().unwrap();
        assert_eq!((bytes, operator), (cert.clone(), OperatorId(op.public())));
        let other = SecretKey::from_seed([3; 32]).node_id();
        let err = load_operator_cert(&path, &other, 10).unwrap_err();
        assert!(
            matches!(
                err,
                CertFileError::Invalid {
                    source: CertError::OtherNode { .. },
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(matches!(
            load_operator_cert(&path, &node, 100),
            Err(CertFileError::Invalid {
                source: CertError::Expired { .. },
                ..
            })
        ));
        std::fs::write(&path, vec![0u8; MAX_CERT + 1]).unwrap();
        assert!(matches!(
            load_operator_cert(&path, &node, 10),
            Err(CertFileError::TooLarge { .. })
        ));
        // Hex is not the format: the envelope's bytes are.
        std::fs::write(&path, hex::encode(&cert)).unwrap();
        assert!(matches!(
            load_operator_cert(&path, &node, 10),
            Err(CertFileError::Invalid {
                source: CertError::Invalid(_),
                ..
            })
        ));
    }

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
