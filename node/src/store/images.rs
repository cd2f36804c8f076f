//! Guest images: building them from the recipes in `images/`, and the local image store.
//!
//! An image is a directory of files (`vmlinux`, `initrd.img`, optionally `root.squashfs`,
//! and `image.toml` naming it). Its id is the blake3 of the deterministic tar of that
//! directory ([`barn_protocol::pack`]), so an image travels between peers as one verified
//! blob and every replica of a job runs identical bytes. The store keeps each image in
//! `<data>/images/<hex>/` and the latest build of each name in `<data>/images/by-name/`.
//!
//! An image name becomes a file name here, so every name is checked with
//! [`check_image_name`] before any path is built from it: names asked for (command line,
//! job file), names read from an `image.toml` (built here or received from a peer) and
//! names found in `by-name/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result, bail};
use barn_protocol::ContentHash;
use barn_protocol::names::check_image_name;
use serde::Deserialize;

/// The recipes compiled into barn, so `barn image build` works from any directory.
const LIB_SH: &str = include_str!("../../../images/lib.sh");
const GUEST_INIT: &str = include_str!("../../../images/guest/init");
const RECIPES: &[(&str, &str)] = &[
    (
        "tiny-x86_64",
        include_str!("../../../images/tiny-x86_64/build.sh"),
    ),
    (
        "debian-12-x86_64",
        include_str!("../../../images/debian-12-x86_64/build.sh"),
    ),
];

/// The names of the images barn can build.
pub fn recipe_names() -> impl Iterator<Item = &'static str> {
    RECIPES.iter().map(|(n, _)| *n)
}

/// An image in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub name: String,
    pub arch: String,
    pub hash: ContentHash,
    pub dir: PathBuf,
    /// Bytes of all its files.
    pub size: u64,
}

impl Image {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinux")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn root(&self) -> Option<PathBuf> {
        Some(self.dir.join("root.squashfs")).filter(|p| p.exists())
    }
}

#[derive(Debug, Deserialize)]
struct ImageToml {
    name: String,
    arch: String,
}

/// The images on this machine.
#[derive(Debug, Clone)]
pub struct ImageStore {
    dir: PathBuf,
}

impl ImageStore {
    /// The store under `<data>/images`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("images"),
        }
    }

    fn by_name(&self) -> PathBuf {
        self.dir.join("by-name")
    }

    /// Reads the image in `dir`, whose hash is already known.
    fn load(dir: &Path, hash: ContentHash) -> Result<Image> {
        let text = std::fs::read_to_string(dir.join("image.toml"))
            .with_context(|| format!("image {} has no image.toml", dir.display()))?;
        anyhow::ensure!(
            text.len() < 64 * 1024,
            "image.toml in {} is too large",
            dir.display()
        );
        let meta: ImageToml = toml::from_str(&text)
            .with_context(|| format!("bad image.toml in {}", dir.display()))?;
        check_image_name(&meta.name)
            .with_context(|| format!("bad image.toml in {}", dir.display()))?;
        let mut size = 0;
        for e in std::fs::read_dir(dir)? {
            size += e?.metadata()?.len();
        }
        Ok(Image {
            name: meta.name,
            arch: meta.arch,
            hash,
            dir: dir.to_path_buf(),
            size,
        })
    }

    /// The image with this hash, if present.
    pub fn get(&self, hash: &ContentHash) -> Result<Option<Image>> {
        let dir = self.dir.join(hash.to_hex());
        if !dir.join("image.toml").exists() {
            return Ok(None);
        }
        Self::load(&dir, *hash).map(Some)
    }

    /// The current image of `name` (the latest built or fetched), if any.
    pub fn by_name_get(&self, name: &str) -> Result<Option<Image>> {
        check_image_name(name)?;
        let link = self.by_name().join(name);
        let Ok(text) = std::fs::read_to_string(&link) else {
            return Ok(None);
        };
        let hash: ContentHash = text
            .trim()
            .parse()
            .with_context(|| format!("bad image index {}", link.display()))?;
        self.get(&hash)
    }

    /// `name` or `b3:…` to an image.
    pub fn resolve(&self, name_or_hash: &str) -> Result<Image> {
        if let Ok(hash) = name_or_hash.parse::<ContentHash>() {
            return self
                .get(&hash)?
                .with_context(|| format!("no image {hash} on this machine"));
        }
        check_image_name(name_or_hash)?;
        self.by_name_get(name_or_hash)?.with_context(|| {
            format!("no image named {name_or_hash:?} on this machine; build it with `barn image build {name_or_hash}`")
        })
    }

    /// Every image by name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(self.by_name()) else {
            return Ok(out);
        };
        for e in rd {
            let name = e?.file_name().to_string_lossy().into_owned();
            // Temporary files, and anything not put there by barn, are not images.
            if check_image_name(&name).is_err() {
                continue;
            }
            if let Some(img) = self.by_name_get(&name)? {
                out.push(img);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Moves a built image directory into the store and names it.
    pub fn import_dir(&self, built: &Path) -> Result<Image> {
        let hash = barn_protocol::pack::pack_dir(built, std::io::sink())
            .with_context(|| format!("failed to hash image {}", built.display()))?
            .hash;
        // Refuse a bad image.toml (a bad name above all) before anything moves.
        Self::load(built, hash)?;
        let dest = self.dir.join(hash.to_hex());
        std::fs::create_dir_all(&self.dir)?;
        if !dest.exists() {
            std::fs::rename(built, &dest)
                .with_context(|| format!("failed to move image into {}", dest.display()))?;
        }
        // `load` checked the name in its image.toml: it is one plain file name.
        let img = Self::load(&dest, hash)?;
        std::fs::create_dir_all(self.by_name())?;
        let tmp = self.by_name().join(format!(".{}.tmp", img.name));
        std::fs::write(&tmp, format!("{hash}\n"))?;
        std::fs::rename(&tmp, self.by_name().join(&img.name))?;
        Ok(img)
    }

    /// Unpacks an image tar (a verified blob) into the store; refuses it unless its
    /// files hash to `expected`.
    pub fn import_tar(&self, tar_path: &Path, expected: &ContentHash) -> Result<Image> {
        let scratch = tempfile::Builder::new()
            .prefix("fetch-")
            .tempdir_in(self.ensure_dir()?)?;
        let out = scratch.path().join("image");
        std::fs::create_dir_all(&out)?;
        let mut archive =
            tar::Archive::new(std::io::BufReader::new(std::fs::File::open(tar_path)?));
        for entry in archive.entries()? {
            let mut entry = entry?;
            let path = entry.path()?.into_owned();
            // An image is a flat folder of regular files.
            let name = path.file_name().filter(|_| {
                path.components().count() == 1 && entry.header().entry_type().is_file()
            });
            let Some(name) = name else {
                bail!("image tar has an unexpected entry {}", path.display())
            };
            entry.unpack(out.join(name))?;
        }
        let hash = barn_protocol::pack::pack_dir(&out, std::io::sink())?.hash;
        if &hash != expected {
            bail!("the image's files hash to {hash}, not {expected}");
        }
        self.import_dir(&out)
    }

    /// Builds image `name` from barn's compiled-in recipe, or from `recipes` (a checkout's
    /// `images/` folder) if given, with downloaded packages cached in `cache`.
    pub fn build(
        &self,
        name: &str,
        recipes: Option<&Path>,
        cache: &Path,
        quiet: bool,
    ) -> Result<Image> {
        check_image_name(name)?;
        let scratch = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(self.ensure_dir()?)?;
        let recipe_dir = match recipes {
            Some(dir) => dir.to_path_buf(),
            None => {
                let Some((_, script)) = RECIPES.iter().find(|(n, _)| *n == name) else {
                    bail!(
                        "no recipe for an image named {name:?}; barn knows: {}",
                        recipe_names().collect::<Vec<_>>().join(", ")
                    );
                };
                let dir = scratch.path().join("recipes");
                std::fs::create_dir_all(dir.join("guest"))?;
                std::fs::create_dir_all(dir.join(name))?;
                std::fs::write(dir.join("lib.sh"), LIB_SH)?;
                std::fs::write(dir.join("guest/init"), GUEST_INIT)?;
                std::fs::write(dir.join(name).join("build.sh"), script)?;
                dir
            }
        };
        let script = recipe_dir.join(name).join("build.sh");
        anyhow::ensure!(script.exists(), "no recipe at {}", script.display());
        let out = scratch.path().join("out");
        std::fs::create_dir_all(cache)?;
        let mut cmd = std::process::Command::new("bash");
        cmd.arg(&script)
            .arg(&out)
            .env("BARN_CACHE", cache)
            .stdin(Stdio::null());
        if quiet {
            cmd.stdout(Stdio::null());
        }
        let status = cmd
            .status()
            .with_context(|| format!("failed to run {}", script.display()))?;
        if !status.success() {
            bail!("the recipe for {name} failed ({status}); its output is above");
        }
        self.import_dir(&out)
    }

    fn ensure_dir(&self) -> Result<&Path> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("failed to create {}", self.dir.display()))?;
        Ok(&self.dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(root: &Path, name: &str) -> PathBuf {
        let dir = root.join("built");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("vmlinux"), b"k").unwrap();
        std::fs::write(
            dir.join("image.toml"),
            format!("name = {name:?}\narch = \"x86_64\"\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn names_are_checked_before_any_path_is_built() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&root.path().join("data"));
        for bad in ["../x", "..", ".", "/etc/passwd", "a/b"] {
            let e = store.by_name_get(bad).unwrap_err().to_string();
            assert!(e.contains("bad image name"), "{bad}: {e}");
            let e = store.resolve(bad).unwrap_err().to_string();
            assert!(e.contains("bad image name"), "{bad}: {e}");
            let e = store
                .build(bad, None, &root.path().join("cache"), true)
                .unwrap_err()
                .to_string();
            assert!(e.contains("bad image name"), "{bad}: {e}");
        }
        // Nothing was created, not even the store.
        assert!(!root.path().join("data").exists());
        assert!(!root.path().join("cache").exists());
    }

    #[test]
    fn an_image_toml_naming_a_path_is_refused_before_it_moves() {
        let root = tempfile::tempdir().unwrap();
        let store = ImageStore::new(&root.path().join("data"));
        let dir = built(root.path(), "/../../escaped");
        let e = format!("{:#}", store.import_dir(&dir).unwrap_err());
        assert!(e.contains("bad image name \"/../../escaped\""), "{e}");
        assert!(dir.join("image.toml").exists(), "the image moved");
        assert!(!root.path().join("data/escaped.tmp").exists());
        assert!(store.list().unwrap().is_empty());

        let ok = built(&root.path().join("ok"), "tiny-x86_64");
        let img = store.import_dir(&ok).unwrap();
        assert_eq!(store.resolve("tiny-x86_64").unwrap(), img);
        // A stray file in by-name/ is not an image.
        std::fs::write(store.by_name().join(".x.tmp"), "junk").unwrap();
        assert_eq!(store.list().unwrap(), vec![img]);
    }
}
