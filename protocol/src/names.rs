//! Names that become file names: one rule, checked before any path is built from them.
//!
//! An image name comes from a job file, the command line, an `image.toml` on disk or in
//! an image received from a peer, and names a file in the image store
//! (`<data>/images/by-name/<name>`) and a recipe folder (`images/<name>/`). So it must be
//! one plain path component on every platform: `[a-z0-9][a-z0-9._-]{0,63}`, with no
//! `..` inside. This rules out `.`, `..`, separators, absolute paths, hidden files,
//! NUL, control characters and names that differ only in case.

use crate::text::printable;

/// Longest image name, in bytes.
pub const MAX_IMAGE_NAME: usize = 64;

/// A name that fails its rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// An image name outside `[a-z0-9][a-z0-9._-]{0,63}` or holding `..`.
    #[error(
        "bad image name {shown}: must be 1–64 lowercase letters, digits, `.`, `_` or `-`, \
         start with a letter or digit, and hold no `..`"
    )]
    BadImage {
        /// The name as received, shortened and with control characters escaped, quoted.
        shown: String,
    },
}

/// Checks an image name against the rule above.
pub fn check_image_name(name: &str) -> Result<(), NameError> {
    let ok = name.len() <= MAX_IMAGE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && !name.contains("..");
    if ok {
        Ok(())
    } else {
        let short: String = name.chars().take(MAX_IMAGE_NAME + 16).collect();
        Err(NameError::BadImage {
            shown: format!("\"{}\"", printable(&short)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_are_plain_components() {
        for good in ["tiny-x86_64", "debian-12-x86_64", "a", "0.1", "x.y_z-1"] {
            check_image_name(good).unwrap();
        }
        check_image_name(&"a".repeat(64)).unwrap();
        for bad in [
            "", ".", "..", "../x", "x/..", "a..b", "/etc", "a/b", "a\\b", ".hidden", "-flag", "_x",
            "Tiny", "a b", "a\0b", "é", "a\x1b[2J",
        ] {
            assert!(check_image_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(check_image_name(&"a".repeat(65)).is_err());
    }

    #[test]
    fn errors_name_the_name_safely() {
        let e = check_image_name("../x").unwrap_err().to_string();
        assert!(e.contains("\"../x\""), "{e}");
        let e = check_image_name("\x1b]0;x\x07").unwrap_err().to_string();
        assert!(!e.contains('\x1b') && e.contains("\\x1b"), "{e}");
    }
}
