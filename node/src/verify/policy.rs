//! A verifier's trust policy: whose agreement makes a build reproducible for *this* verifier.
//!
//! No peer-to-peer farm can stop one person from making many keys, so barn does not pretend
//! to: as Trustix's deciders do, each verifier says whom it trusts. A policy names trusted
//! builders (operator ids, or peer ids of nodes without a certificate) and a quorum: how
//! many of them must be among the operators that agree. Without a policy (no builders, no
//! quorum) any two distinct operators agreeing make a build reproducible; with one, an
//! agreement by fewer trusted operators than the quorum is `unconfirmed`, never
//! `reproducible`, however many unknown keys agree.
//!
//! A policy comes from the node's config (`trust.builders`, `trust.quorum`) or from a file
//! given to `barn verify --policy FILE`:
//!
//! ```toml
//! builders = ["operator:<64 hex>", "12D3KooW…"]
//! quorum = 1   # default: 1 when builders are listed, else 0
//! ```
//!
//! A policy file is strict: an unknown key is an error, since a misspelt `builders` would
//! otherwise quietly trust everyone. `quorum = 0` with builders only reports how many
//! trusted operators agree.

use std::collections::BTreeSet;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

use barn_protocol::OperatorId;
use serde::Deserialize;
use toml::Spanned;

/// The largest policy file read.
pub const MAX_POLICY_FILE: u64 = 64 * 1024;

/// Whose agreement counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// The operators this verifier trusts. Empty: it trusts no one in particular.
    pub builders: BTreeSet<OperatorId>,
    /// How many trusted operators must be among those that agree; 0: no requirement.
    pub quorum: usize,
}

impl Policy {
    /// Whether `operator` is one of the trusted builders.
    pub fn trusts(&self, operator: &OperatorId) -> bool {
        self.builders.contains(operator)
    }

    /// Whether the policy asks for nothing beyond two distinct operators.
    pub fn is_open(&self) -> bool {
        self.builders.is_empty() && self.quorum == 0
    }

    /// Reads and checks a policy file (`barn verify --policy FILE`).
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let read = |source| PolicyError::Read {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read)?;
        let mut text = String::new();
        file.take(MAX_POLICY_FILE + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_POLICY_FILE {
            return Err(PolicyError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses policy file text; `name` names it in errors.
    pub fn parse(text: &str, name: &str) -> Result<Self, PolicyError> {
        let table: toml::Table = toml::from_str(text).map_err(|source| PolicyError::Toml {
            name: name.to_string(),
            source,
        })?;
        if let Some(key) = table
            .keys()
            .find(|k| !["builders", "quorum"].contains(&k.as_str()))
        {
            return Err(PolicyError::UnknownKey {
                name: name.to_string(),
                key: key.clone(),
            });
        }
        let raw: RawPolicy = toml::from_str(text).map_err(|source| PolicyError::Toml {
            name: name.to_string(),
            source,
        })?;
        raw.check(text, name, "")
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_open() {
            return f.write_str("no trust policy (any two distinct operators)");
        }
        write!(
            f,
            "{} of {} trusted builder{}",
            self.quorum,
            self.builders.len(),
            if self.builders.len() == 1 { "" } else { "s" }
        )
    }
}

/// A policy as written: at the top of a policy file, or under `[trust]` in the config.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawPolicy {
    pub(crate) builders: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) quorum: Option<Spanned<i64>>,
}

impl RawPolicy {
    /// Checks the keys' values. `text` and `name` locate errors (`name:line`); `prefix` is
    /// what the keys are called in that file (`trust.` in the config).
    pub(crate) fn check(self, text: &str, name: &str, prefix: &str) -> Result<Policy, PolicyError> {
        let mut builders = BTreeSet::new();
        let listed = self.builders.is_some();
        for b in self.builders.map(Spanned::into_inner).unwrap_or_default() {
            let value = b.get_ref().trim();
            let operator = value
                .parse::<OperatorId>()
                .map_err(|_| PolicyError::NotAnOperator {
                    at: at(text, name, b.span().start),
                    key: format!("{prefix}builders"),
                    value: b.get_ref().clone(),
                })?;
            builders.insert(operator);
        }
        let quorum = match self.quorum {
            // Listing builders means wanting one of them, unless the quorum says otherwise.
            None => usize::from(!builders.is_empty()),
            Some(q) => {
                let n = *q.get_ref();
                match usize::try_from(n) {
                    Ok(n) if n <= builders.len() => n,
                    _ => {
                        return Err(PolicyError::Quorum {
                            at: at(text, name, q.span().start),
                            key: format!("{prefix}quorum"),
                            quorum: n,
                            builders: builders.len(),
                            listed,
                        });
                    }
                }
            }
        };
        Ok(Policy { builders, quorum })
    }
}

/// `name:line` of byte `offset` in `text`.
fn at(text: &str, name: &str, offset: usize) -> String {
    let line = text.get(..offset).unwrap_or(text).matches('\n').count() + 1;
    format!("{name}:{line}")
}

/// Why a trust policy was not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("failed to read the trust policy {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the trust policy {} is larger than {} KiB",
        path.display(),
        MAX_POLICY_FILE / 1024
    )]
    TooLarge { path: PathBuf },
    #[error("{name} is not a valid trust policy")]
    Toml {
        name: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("{name}: unknown key `{key}` (a trust policy has `builders` and `quorum`)")]
    UnknownKey { name: String, key: String },
    #[error("{at}: {key}: {value:?} is not an operator id (operator:<64 hex>) or a peer id")]
    NotAnOperator {
        at: String,
        key: String,
        value: String,
    },
    #[error(
        "{at}: {key} = {quorum}: {}",
        quorum_problem(*quorum, *builders, *listed)
    )]
    Quorum {
        at: String,
        key: String,
        quorum: i64,
        builders: usize,
        listed: bool,
    },
}

fn quorum_problem(quorum: i64, builders: usize, listed: bool) -> String {
    if quorum < 0 {
        "a quorum is a number of trusted builders, 0 or more".into()
    } else if !listed || builders == 0 {
        "no builders are trusted, so nothing could ever be reproducible (list them in builders)"
            .into()
    } else {
        format!(
            "only {builders} builder{} trusted, so nothing could ever be reproducible",
            if builders == 1 { " is" } else { "s are" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use barn_protocol::SecretKey;

    fn op(i: u8) -> OperatorId {
        OperatorId(SecretKey::from_seed([i; 32]).public())
    }

    #[test]
    fn a_policy_file_lists_builders_by_operator_id_or_peer_id() {
        let node = SecretKey::from_seed([2; 32]).node_id();
        let text = format!("builders = [\"{}\", \"{node}\"]\n", op(1));
        let p = Policy::parse(&text, "p.toml").unwrap();
        assert_eq!(
            p.builders,
            BTreeSet::from([op(1), OperatorId::of_node(&node)])
        );
        // Listing builders asks for one of them unless the quorum says otherwise.
        assert_eq!(p.quorum, 1);
        assert!(p.trusts(&op(1)) && !p.trusts(&op(3)));
        let p = Policy::parse(&format!("{text}quorum = 2\n"), "p.toml").unwrap();
        assert_eq!(p.quorum, 2);
        let p = Policy::parse(&format!("{text}quorum = 0\n"), "p.toml").unwrap();
        assert_eq!((p.quorum, p.is_open()), (0, false));
        assert_eq!(Policy::parse("", "p.toml").unwrap(), Policy::default());
        assert!(Policy::default().is_open());
    }

    #[test]
    fn policy_errors_name_the_file_line_and_key() {
        let err = |text: &str| Policy::parse(text, "p.toml").unwrap_err().to_string();
        assert_eq!(
            err("builders = [\n  \"nobody\",\n]\n"),
            "p.toml:2: builders: \"nobody\" is not an operator id (operator:<64 hex>) or a peer id"
        );
        // A misspelt key would otherwise trust everyone.
        assert_eq!(
            err("bulders = []\n"),
            "p.toml: unknown key `bulders` (a trust policy has `builders` and `quorum`)"
        );
        let one = format!("builders = [\"{}\"]\n", op(1));
        assert!(
            err(&format!("{one}quorum = 2\n"))
                .starts_with("p.toml:2: quorum = 2: only 1 builder is trusted"),
            "{}",
            err(&format!("{one}quorum = 2\n"))
        );
        assert!(err("quorum = 1\n").starts_with("p.toml:1: quorum = 1: no builders are trusted"));
        assert!(err(&format!("{one}quorum = -1\n")).contains("0 or more"));
        assert_eq!(err("quorum = \"x\""), "p.toml is not a valid trust policy");
    }

    #[test]
    fn a_policy_file_is_read_with_a_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.toml");
        std::fs::write(&path, format!("builders = [\"{}\"]\n", op(1))).unwrap();
        assert_eq!(Policy::load(&path).unwrap().builders.len(), 1);
        let mut big = String::from("# padding\n");
        while (big.len() as u64) <= MAX_POLICY_FILE {
            big.push_str("# more padding to pass the limit\n");
        }
        std::fs::write(&path, big).unwrap();
        let e = Policy::load(&path).unwrap_err().to_string();
        assert!(e.contains("larger than 64 KiB"), "{e}");
        let e = Policy::load(&dir.path().join("none.toml")).unwrap_err();
        assert!(matches!(e, PolicyError::Read { .. }), "{e}");
    }
}
