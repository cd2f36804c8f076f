//! Where barn keeps things: the platform config dir (config file, project key) and the
//! platform data dir (node key, database, blobs, images), each overridable for running
//! several nodes on one machine.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The directories one barn instance uses.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub config: PathBuf,
    pub data: PathBuf,
}

impl Dirs {
    /// The given directories, or the platform's (`~/.config/barn`, `~/.local/share/barn`).
    pub fn resolve(config: Option<PathBuf>, data: Option<PathBuf>) -> Result<Self> {
        let project = directories::ProjectDirs::from("", "", "barn");
        let config = match config {
            Some(c) => c,
            None => project
                .as_ref()
                .map(|p| p.config_dir().to_path_buf())
                .context("no home directory: pass --config-dir")?,
        };
        let data = match data {
            Some(d) => d,
            None => project
                .as_ref()
                .map(|p| p.data_dir().to_path_buf())
                .context("no home directory: pass --data-dir")?,
        };
        Ok(Self { config, data })
    }

    /// The project (submitter) signing key.
    pub fn project_key(&self) -> PathBuf {
        self.config.join("project.key")
    }

    /// The node's identity key.
    pub fn node_key(&self) -> PathBuf {
        self.data.join("node.key")
    }

    /// An operator key (`barn key new --operator`): certifies this person's node keys.
    pub fn operator_key(&self) -> PathBuf {
        self.config.join("operator.key")
    }

    /// The node key's operator certificate (`barn key certify`), sent with every claim.
    pub fn operator_cert(&self) -> PathBuf {
        self.data.join("operator.cert")
    }
}

/// Writes `text` to a new file readable only by its owner; refuses to overwrite.
pub fn write_private_new(path: &Path, text: &str) -> Result<()> {
    write_private_bytes_new(path, text.as_bytes())
}

/// Writes `contents` to a new file readable only by its owner; refuses to overwrite.
pub fn write_private_bytes_new(path: &Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("failed to create {}", parent.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    f.write_all(contents)
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
