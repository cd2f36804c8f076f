//! Symbolic links inside a tree (a manifest, a tar of artifacts), resolved the way the
//! kernel would resolve them, to refuse any that lead outside the tree.
//!
//! A lexical check of one link at a time ([`crate::manifest::check_link`]) is not enough:
//! with `s -> .` and `l -> s/..`, each target stays inside on its own, but `l` resolves
//! through `s` to the root and then one level above it. So [`check_links`] walks each
//! link's parent folder and target component by component; whenever the path so far is
//! itself a link of the same tree, its target is spliced in and the walk goes on, and a
//! `..` at the root is an escape. At most [`MAX_LINKS_FOLLOWED`] links are followed per
//! link checked (the kernel's limit), which also ends loops such as `a -> b`, `b -> a`.
//!
//! Components that are not links are taken as folders whether or not the tree holds
//! them: a missing folder only makes the kernel fail, never leave the tree.

use std::collections::{BTreeMap, VecDeque};

use crate::text::printable;

/// How many links are followed while resolving one link, as Linux's `MAXSYMLINKS`.
pub const MAX_LINKS_FOLLOWED: u32 = 40;

/// Longest resolved path, in components, before the walk is given up.
const MAX_DEPTH: usize = 4096;

/// Why a tree's links were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// Resolving `path` climbs above the root of the tree.
    #[error("the link {path} -> {target} leads outside the folder when its links are followed")]
    Escapes {
        /// The link's path, shortened, escaped and quoted.
        path: String,
        /// Its target, shortened, escaped and quoted.
        target: String,
    },
    /// Resolving `path` followed more than [`MAX_LINKS_FOLLOWED`] links: a loop or a
    /// chain too long to trust.
    #[error(
        "the link {path} does not resolve: more than {MAX_LINKS_FOLLOWED} links followed \
         (a loop?)"
    )]
    TooManyLinks {
        /// The link's path, shortened, escaped and quoted.
        path: String,
    },
    /// A link in the chain from `path` has an absolute target.
    #[error("the link {path} leads to an absolute path")]
    Absolute {
        /// The link's path, shortened, escaped and quoted.
        path: String,
    },
}

/// Checks that every link of a tree, given as `(path, target)` pairs with paths relative
/// to the root and `/`-separated, resolves inside the tree.
pub fn check_links<'a>(
    links: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<(), LinkError> {
    let links: BTreeMap<&str, &str> = links.into_iter().collect();
    for (path, target) in &links {
        resolve(&links, path, target)?;
    }
    Ok(())
}

/// Walks `path`'s parent, then `target`, through the tree's links.
fn resolve(links: &BTreeMap<&str, &str>, path: &str, target: &str) -> Result<(), LinkError> {
    let shown = |s: &str| {
        let short: String = s.chars().take(200).collect();
        format!("\"{}\"", printable(&short))
    };
    if target.starts_with('/') {
        return Err(LinkError::Absolute { path: shown(path) });
    }
    let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
    let mut pending: VecDeque<&str> = parent.split('/').chain(target.split('/')).collect();
    let mut at: Vec<&str> = Vec::new();
    let mut followed = 0u32;
    while let Some(comp) = pending.pop_front() {
        match comp {
            "" | "." => {}
            ".." => {
                if at.pop().is_none() {
                    return Err(LinkError::Escapes {
                        path: shown(path),
                        target: shown(target),
                    });
                }
            }
            name => {
                at.push(name);
                if let Some(next) = links.get(at.join("/").as_str()) {
                    followed += 1;
                    if followed > MAX_LINKS_FOLLOWED || at.len() + pending.len() > MAX_DEPTH {
                        return Err(LinkError::TooManyLinks { path: shown(path) });
                    }
                    if next.starts_with('/') {
                        return Err(LinkError::Absolute { path: shown(path) });
                    }
                    // The link's own name is replaced by its target, read from its folder.
                    at.pop();
                    for c in next.split('/').rev() {
                        pending.push_front(c);
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_through_a_dot_link_escapes() {
        let e = check_links([("s", "."), ("l", "s/..")]).unwrap_err();
        assert!(matches!(e, LinkError::Escapes { .. }), "{e}");
        assert!(e.to_string().contains("\"l\""), "{e}");
        // Each passes the lexical check on its own: that is the point.
        crate::manifest::check_link("s", ".").unwrap();
        crate::manifest::check_link("l", "s/..").unwrap();
    }

    #[test]
    fn longer_chains_and_nested_folders_escape() {
        let chain = [
            ("d/a", "."),
            ("d/b", "a/a/a"),
            ("d/c", "b/.."),
            ("d/e", "c/.."),
        ];
        assert!(matches!(check_links(chain), Err(LinkError::Escapes { .. })));
        // A link whose folder is a link: `x/up` is really `./up` -> `..`.
        let through_parent = [("x", "."), ("x/up", "..")];
        assert!(check_links(through_parent).is_err());
    }

    #[test]
    fn loops_are_refused() {
        let e = check_links([("a", "b"), ("b", "a")]).unwrap_err();
        assert!(matches!(e, LinkError::TooManyLinks { .. }), "{e}");
        assert!(check_links([("self", "self")]).is_err());
        assert!(check_links([("a", "a/x")]).is_err());
    }

    #[test]
    fn legitimate_chains_pass() {
        check_links([
            ("lib/libx.so", "libx.so.1"),
            ("lib/libx.so.1", "libx.so.1.2"),
            ("bin/tool", "../lib/libx.so"),
            ("here", "."),
            ("out/link", "../out"),
        ])
        .unwrap();
        check_links(std::iter::empty()).unwrap();
    }

    #[test]
    fn absolute_targets_anywhere_in_the_chain_are_refused() {
        assert!(matches!(
            check_links([("a", "b"), ("b", "/etc")]),
            Err(LinkError::Absolute { .. })
        ));
    }
}
