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
use toml::Spanned;

use crate::sched::window::{Schedule, Window};
use crate::verify::policy::{Policy, RawPolicy};

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
    /// Run QEMU without its confinement (network namespace, cgroup, a user per VM, parent-death
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
    /// `trust.builders` and `trust.quorum`: whose agreement makes this node's verdicts
    /// (`barn verify`, `submit --wait`, `diff`, `attest`) reproducible. Both absent: any
    /// two distinct operators; builders listed: at least `quorum` of them (default 1) must
    /// be among the operators that agree, else the verdict is `unconfirmed`.
    pub policy: Policy,
    /// Address of the local API (loopback only).
    pub api_listen: String,
    // The owner's limits on taking work (docs/volunteer-guide.md, "Staying in charge").
    /// `node.schedule`: windows of local time in which new jobs are claimed; `None` (the
    /// key absent): at any time.
    pub schedule: Option<Schedule>,
    /// `node.max_load`: no new claims while the 1-minute load average is above it; `None`:
    /// no limit.
    pub max_load: Option<f64>,
    /// `node.max_store`: the most bytes the blob store (sources, images, artifacts) keeps;
    /// blobs no open job needs are collected, least recently used first, to stay under it.
    pub max_store_bytes: u64,
    /// `node.retention`: how long a finished job (settled, failed, expired) stays in the
    /// database after its deadline.
    pub retention: Duration,
    /// `node.external_addrs`: public addresses this node is known to be reachable at
    /// (a port forward, a cloud 1:1 NAT); advertised to peers as confirmed.
    pub external_addrs: Vec<String>,
    /// `node.relay`: serve as a relay (circuit relay v2) for peers behind NAT.
    pub relay: bool,
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
    // The owner's limits.
    schedule: Option<Spanned<Vec<Spanned<String>>>>,
    max_load: Option<Spanned<f64>>,
    max_store: Option<String>,
    retention: Option<String>,
    external_addrs: Option<Vec<String>>,
    relay: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
struct RawTrust {
    submitters: Option<Vec<String>>,
    accept_any: Option<bool>,
    // Spans kept so errors name the line (serde's flatten would lose them).
    builders: Option<Spanned<Vec<Spanned<String>>>>,
    quorum: Option<Spanned<i64>>,
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
    "node.schedule",
    "node.max_load",
    "node.max_store",
    "node.retention",
    "node.external_addrs",
    "node.relay",
    "trust.submitters",
    "trust.accept_any",
    "trust.builders",
    "trust.quorum",
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
        let max_store_bytes = match node.max_store {
            None => 20 << 30,
            Some(s) => parse_size(&s).filter(|&n| n >= 64 << 20).with_context(|| {
                format!(
                    "{name}: node.max_store = {s:?} is not a size of at least 64MiB (write e.g. 20GiB)"
                )
            })?,
        };
        let retention = dur(node.retention, "node.retention", 30 * 86400)?;
        let mut external_addrs = Vec::new();
        for a in node.external_addrs.unwrap_or_default() {
            let parsed: libp2p::Multiaddr = a.parse().map_err(|_| {
                anyhow::anyhow!(
                    "{name}: node.external_addrs: {a:?} is not a multiaddr (write e.g. /ip4/203.0.113.7/tcp/7400)"
                )
            })?;
            if parsed
                .iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
            {
                bail!("{name}: node.external_addrs: {a:?}: leave out the /p2p/ part, it is added");
            }
            external_addrs.push(a);
        }
        let mut trusted = Vec::new();
        for s in trust.submitters.unwrap_or_default() {
            trusted.push(s.parse::<SubmitterId>().with_context(|| {
                format!("{name}: trust.submitters: {s:?} is not a project key (ed25519:<64 hex>)")
            })?);
        }
        let policy = RawPolicy {
            builders: trust.builders,
            quorum: trust.quorum,
        }
        .check(text, name, "trust.")?;
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
        let (schedule, max_load) = owner_limits(text, name, node.schedule, node.max_load)?;
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
                policy,
                api_listen,
                schedule,
                max_load,
                max_store_bytes,
                retention,
                external_addrs,
                relay: node.relay.unwrap_or(false),
            },
            warnings,
        ))
    }
}

/// `file:line` of byte `offset` in `text`, for errors in a key's value.
fn at(text: &str, name: &str, offset: usize) -> String {
    let line = text.get(..offset).unwrap_or(text).matches('\n').count() + 1;
    format!("{name}:{line}")
}

/// `node.schedule` and `node.max_load`, checked.
fn owner_limits(
    text: &str,
    name: &str,
    schedule: Option<Spanned<Vec<Spanned<String>>>>,
    max_load: Option<Spanned<f64>>,
) -> Result<(Option<Schedule>, Option<f64>)> {
    let schedule = match schedule {
        None => None,
        Some(list) => {
            let start = list.span().start;
            let mut windows = Vec::new();
            for w in list.into_inner() {
                let where_ = at(text, name, w.span().start);
                let parsed = w.get_ref().parse::<Window>().map_err(|e| {
                    anyhow::anyhow!("{where_}: node.schedule: {:?}: {e}", w.get_ref())
                })?;
                windows.push(parsed);
            }
            Some(Schedule::new(windows).with_context(|| {
                format!(
                    "{}: node.schedule: the list is empty, so the node would never take work \
                     (leave the key out to take work at any time, or run `barn pause`)",
                    at(text, name, start)
                )
            })?)
        }
    };
    let max_load = match max_load {
        None => None,
        Some(m) if m.get_ref().is_finite() && *m.get_ref() > 0.0 => Some(*m.get_ref()),
        Some(m) => bail!(
            "{}: node.max_load: {} is not a load average above 0 (write e.g. 4.0)",
            at(text, name, m.span().start),
            m.get_ref()
        ),
    };
    Ok((schedule, max_load))
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
        let e = Config::parse("[node]\nmax_store = \"1MiB\"\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}").contains("node.max_store = \"1MiB\""),
            "{e:#}"
        );
        let e = Config::parse("[node]\nretention = \"0s\"\n", "c.toml").unwrap_err();
        assert!(format!("{e:#}").contains("node.retention"), "{e:#}");
        let e = Config::parse("[node]\nexternal_addrs = [\"1.2.3.4\"]\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}").contains("\"1.2.3.4\" is not a multiaddr"),
            "{e:#}"
        );
        let (c, _) = Config::parse(
            "[node]\nmax_store = \"1GiB\"\nretention = \"7d\"\nrelay = true\n\
             external_addrs = [\"/ip4/198.18.0.9/tcp/7400\"]\n",
            "c.toml",
        )
        .unwrap();
        assert_eq!(c.max_store_bytes, 1 << 30);
        assert_eq!(c.retention, Duration::from_secs(7 * 86400));
        assert!(c.relay);
        assert_eq!(
            c.external_addrs,
            vec!["/ip4/198.18.0.9/tcp/7400".to_string()]
        );
    }

    #[test]
    fn the_trust_policy_is_read_from_trust_builders_and_quorum() {
        let op = barn_protocol::OperatorId(barn_protocol::SecretKey::from_seed([1; 32]).public());
        let (c, w) = Config::parse(
            &format!("[trust]\nsubmitters = []\nbuilders = [\"{op}\"]\n"),
            "c.toml",
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(c.policy.builders.len(), 1);
        assert_eq!(c.policy.quorum, 1);
        let (c, _) = Config::parse("", "c.toml").unwrap();
        assert!(c.policy.is_open());
        let e = Config::parse("[trust]\nbuilders = [\"x\"]\n", "c.toml").unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "c.toml:2: trust.builders: \"x\" is not an operator id (operator:<64 hex>) or a peer id"
        );
        let e = Config::parse("[trust]\nquorum = 2\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("c.toml:2: trust.quorum = 2: no builders are trusted"),
            "{e:#}"
        );
    }

    #[test]
    fn the_owners_limits_parse_and_their_errors_name_the_line_key_and_window() {
        let (c, w) = Config::parse(
            "[node]\nschedule = [\"mon-fri 19:00-07:00\", \"sat-sun\"]\nmax_load = 3.5\n",
            "c.toml",
        )
        .unwrap();
        assert!(w.is_empty(), "{w:?}");
        let s = c.schedule.unwrap();
        assert_eq!(s.windows().len(), 2);
        let sat = crate::sched::window::LocalTime::new("sat", 12, 0).unwrap();
        assert!(s.contains(sat));
        assert_eq!(c.max_load, Some(3.5));
        let (c, _) = Config::parse("[node]\nmax_load = 4\n", "c.toml").unwrap();
        assert_eq!(c.max_load, Some(4.0));
        let (c, _) = Config::parse("", "c.toml").unwrap();
        assert_eq!((c.schedule, c.max_load), (None, None));

        let e = Config::parse(
            "[node]\nslots = 1\nschedule = [\n  \"sat-sun\",\n  \"mon-fry 19:00-07:00\",\n]\n",
            "c.toml",
        )
        .unwrap_err();
        assert_eq!(
            format!("{e:#}"),
            "c.toml:5: node.schedule: \"mon-fry 19:00-07:00\": \"mon-fry\" is not a day \
             (write mon, tue, wed, thu, fri, sat, sun, a range like mon-fri, or daily)"
        );
        let e = Config::parse("[node]\nschedule = [\"mon 7-9\"]\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}")
                .starts_with("c.toml:2: node.schedule: \"mon 7-9\": \"7-9\" is not a span"),
            "{e:#}"
        );
        let e = Config::parse("[node]\nschedule = []\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("c.toml:2: node.schedule: the list is empty"),
            "{e:#}"
        );
        let e = Config::parse("\n[node]\nmax_load = -1.0\n", "c.toml").unwrap_err();
        assert!(
            format!("{e:#}").starts_with("c.toml:3: node.max_load: -1 is not a load average"),
            "{e:#}"
        );
    }
}
