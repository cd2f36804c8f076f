//! The node's configuration: one TOML file, `<config>/config.toml`.
//!
//! Every key is documented in [`DEFAULT_CONFIG`] (the file `barn node` writes on first
//! start) and in `docs/volunteer-guide.md`. A missing key takes its default; an unknown
//! key is warned about, not fatal, so a config written for a newer barn still starts.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use barn_protocol::SubmitterId;
use barn_protocol::jobfile::{parse_duration, parse_size};
use serde::Deserialize;

/// The commented default configuration.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// The largest config file read.
const MAX_CONFIG: u64 = 256 * 1024;

/// The parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Peers to connect to at start (multiaddrs ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS.
    pub mdns: bool,
    /// Jobs run at once.
    pub slots: u32,
    /// Most CPUs one job gets.
    pub max_cpus: u32,
    /// Most memory one job gets.
    pub max_memory_bytes: u64,
    /// Largest output quota one job may ask for.
    pub max_disk_bytes: u64,
    /// Longest timeout one job may ask for.
    pub max_timeout: Duration,
    /// `auto`, `kvm` or `tcg`.
    pub accel: String,
    /// Run QEMU without its confinement (network namespace, cgroup, `nobody`, parent-death
    /// signal) when it cannot be had; absent or false: such a node runs no job.
    pub unconfined: bool,
    /// How often the node advertises itself.
    pub advert_interval: Duration,
    /// How often a coordinator re-announces jobs that still want replicas.
    pub announce_interval: Duration,
    /// Project keys whose jobs this node runs.
    pub trusted: Vec<SubmitterId>,
    /// Run jobs from any submitter.
    pub accept_any: bool,
    /// Address of the local API (loopback only).
    pub api_listen: String,
}

#[derive(Debug, Deserialize, Default)]
struct Raw {
    node: Option<RawNode>,
    trust: Option<RawTrust>,
    api: Option<RawApi>,
}

#[derive(Debug, Deserialize, Default)]
struct RawNode {
    listen: Option<Vec<String>>,
    bootstrap: Option<Vec<String>>,
    mdns: Option<bool>,
    slots: Option<u32>,
    max_cpus: Option<u32>,
    max_memory: Option<String>,
    max_disk: Option<String>,
    max_timeout: Option<String>,
    accel: Option<String>,
    unconfined: Option<bool>,
    advert_interval: Option<String>,
    announce_interval: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawTrust {
    submitters: Option<Vec<String>>,
    accept_any: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct RawApi {
    listen: Option<String>,
}

const KNOWN: &[&str] = &[
    "node.listen",
    "node.bootstrap",
    "node.mdns",
    "node.slots",
    "node.max_cpus",
    "node.max_memory",
    "node.max_disk",
    "node.max_timeout",
    "node.accel",
    "node.unconfined",
    "node.advert_interval",
    "node.announce_interval",
    "trust.submitters",
    "trust.accept_any",
    "api.listen",
];

impl Config {
    /// Reads `path`; a missing file means every default. Returns the config and warnings.
    pub fn load(path: &Path) -> Result<(Self, Vec<String>)> {
        if !path.exists() {
            return Self::parse("", &path.display().to_string());
        }
        let meta = std::fs::metadata(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        if meta.len() > MAX_CONFIG {
            bail!(
                "{} is larger than {} KiB",
                path.display(),
                MAX_CONFIG / 1024
            );
        }
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses config text; `name` names it in errors.
    pub fn parse(text: &str, name: &str) -> Result<(Self, Vec<String>)> {
        let value: toml::Table =
            toml::from_str(text).with_context(|| format!("{name} is not valid TOML"))?;
        let mut warnings = Vec::new();
        for (section, v) in &value {
            match v.as_table() {
                Some(t) => {
                    for key in t.keys() {
                        let full = format!("{section}.{key}");
                        if !KNOWN.contains(&full.as_str()) {
                            warnings.push(format!("{name}: unknown key `{full}` ignored"));
                        }
                    }
                }
                None => warnings.push(format!("{name}: unknown key `{section}` ignored")),
            }
        }
        let raw: Raw =
            toml::from_str(text).with_context(|| format!("{name} has a key of the wrong type"))?;
        let node = raw.node.unwrap_or_default();
        let trust = raw.trust.unwrap_or_default();
        let api = raw.api.unwrap_or_default();
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let dur = |v: Option<String>, key: &str, default: u64| -> Result<Duration> {
            match v {
                None => Ok(Duration::from_secs(default)),
                Some(s) => parse_duration(&s)
                    .filter(|&n| n > 0)
                    .map(Duration::from_secs)
                    .with_context(|| {
                        format!("{name}: {key} = {s:?} is not a duration (write e.g. 30s or 5m)")
                    }),
            }
        };
        let max_memory_bytes = match node.max_memory {
            None => 4 << 30,
            Some(s) => parse_size(&s).with_context(|| {
                format!("{name}: node.max_memory = {s:?} is not a size (write e.g. 4GiB)")
            })?,
        };
        let max_disk_bytes = match node.max_disk {
            None => 8 << 30,
            Some(s) => parse_size(&s).with_context(|| {
                format!("{name}: node.max_disk = {s:?} is not a size (write e.g. 8GiB)")
            })?,
        };
        let max_timeout = dur(node.max_timeout, "node.max_timeout", 2 * 3600)?;
        let mut trusted = Vec::new();
        for s in trust.submitters.unwrap_or_default() {
            trusted.push(s.parse::<SubmitterId>().with_context(|| {
                format!("{name}: trust.submitters: {s:?} is not a project key (ed25519:<64 hex>)")
            })?);
        }
        let accel = node.accel.unwrap_or_else(|| "auto".into());
        if !["auto", "kvm", "tcg"].contains(&accel.as_str()) {
            bail!("{name}: node.accel = {accel:?}: write auto, kvm or tcg");
        }
        let api_listen = api.listen.unwrap_or_else(|| "127.0.0.1:7401".into());
        let addr: std::net::SocketAddr = api_listen.parse().with_context(|| {
            format!("{name}: api.listen = {api_listen:?} is not an address like 127.0.0.1:7401")
        })?;
        if !addr.ip().is_loopback() {
            bail!(
                "{name}: api.listen must be a loopback address; the API is for this machine only"
            );
        }
        let slots = node.slots.unwrap_or(1);
        if !(1..=64).contains(&slots) {
            bail!("{name}: node.slots must be between 1 and 64");
        }
        Ok((
            Self {
                listen: node
                    .listen
                    .unwrap_or_else(|| vec!["/ip4/0.0.0.0/tcp/7400".into()]),
                bootstrap: node.bootstrap.unwrap_or_default(),
                mdns: node.mdns.unwrap_or(false),
                slots,
                max_cpus: node.max_cpus.unwrap_or(cpus).clamp(1, 256),
                max_memory_bytes,
                max_disk_bytes,
                max_timeout,
                accel,
                unconfined: node.unconfined.unwrap_or(false),
                advert_interval: dur(node.advert_interval, "node.advert_interval", 30)?,
                announce_interval: dur(node.announce_interval, "node.announce_interval", 10)?,
                trusted,
                accept_any: trust.accept_any.unwrap_or(false),
                api_listen,
            },
            warnings,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_config_parses_without_warnings_and_equals_the_defaults() {
        let (from_file, warnings) = Config::parse(DEFAULT_CONFIG, "default").unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        let (empty, _) = Config::parse("", "empty").unwrap();
        assert_eq!(from_file, empty);
    }

    #[test]
    fn unknown_keys_warn_and_bad_values_fail_with_the_key() {
        let (_, w) = Config::parse("[node]\nslotz = 2\n[extra]\na = 1\n", "c.toml").unwrap();
        assert_eq!(
            w,
            vec![
                "c.toml: unknown key `extra.a` ignored",
                "c.toml: unknown key `node.slotz` ignored"
            ]
        );
        let e = Config::parse("[trust]\nsubmitters = [\"nope\"]\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}").contains("trust.submitters: \"nope\" is not a project key"),
            "{e:#}"
        );
        let e = Config::parse("[api]\nlisten = \"0.0.0.0:7401\"\n", "c.toml").unwrap_err();
        assert!(format!("{e:#}").contains("loopback"));
        let e = Config::parse("[node]\nadvert_interval = \"soon\"\n", "c.toml").unwrap_err();
        assert!(format!("{e:#}").contains("node.advert_interval"));
    }
}
