//! Separate networks for one test, built from Linux network namespaces: a public network
//! (a bridge in a namespace of its own, addresses from 198.18.0.0/24, the range set aside
//! for benchmarking, so nothing real is ever addressed), hosts on it, and home networks,
//! each a router namespace that masquerades (nftables) a LAN of its own (10.N.0.0/24)
//! behind one public address. A host is a namespace with loopback up, one interface
//! (`eth0`) and a default route; `barn node` runs in it, and so do
//! the `barn` commands that talk to its API on the host's 127.0.0.1 (through `nsenter`,
//! see [`Host::command`]).
//!
//! ```text
//!   public host "relay"  198.18.0.2 ─┐
//!   router of home A     198.18.0.3 ─┤ bridge "br0" in the namespace "<prefix>inet"
//!   router of home B     198.18.0.4 ─┘
//!   home A: 10.1.0.1 (router) ── 10.1.0.2 "submitter"
//!   home B: 10.2.0.1 (router) ── 10.2.0.2 "v1", 10.2.0.3 "v2"
//! ```
//!
//! ```no_run
//! # use barn_tests::netns::{Net, Nat};
//! let Some(mut net) = Net::new() else { return }; // not root, or no `ip`/`nft`: skipped
//! let relay = net.public_host("relay");
//! let mut a = net.home("a", Nat::Masquerade);
//! let submitter = net.host_in(&mut a, "submitter");
//! let mut b = net.home("b", Nat::Masquerade);
//! let (v1, v2) = (net.host_in(&mut b, "v1"), net.host_in(&mut b, "v2"));
//! net.cut(&v1); // its link down: a partition
//! net.heal(&v1);
//! ```
//!
//! Namespace names start with `barnt<pid>n<counter>-`, so tests in one process and in
//! several processes never collide; dropping the [`Net`] deletes every namespace it made
//! (its processes must be gone by then: drop the nodes first), and a new `Net` deletes the
//! namespaces of test processes that are no longer running.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// How a home router translates addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    /// A home router: masquerade, keeping source ports where it can (endpoint-independent
    /// mapping in practice); no connection can be opened from outside, and like a home
    /// router's firewall it drops what arrives unasked (answering only pings) instead of
    /// refusing it: a refusal would end a hole punch whose packets cross.
    Masquerade,
    /// Masquerade with random source ports (`masquerade random`): each connection gets a
    /// new public port, as a symmetric NAT does.
    Random,
}

/// One host: a namespace with an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Its network namespace.
    pub ns: String,
    /// Its address on its network (public or the home's LAN).
    pub ip: String,
    /// The namespace and name of the far end of its link (on the public bridge or in its
    /// home router), which [`Net::cut`] takes down.
    link_ns: String,
    link: String,
}

impl Host {
    /// Bytes received and sent on its interface so far (`ip -s link`), to measure what
    /// crossed it.
    pub fn traffic(&self) -> (u64, u64) {
        let out = Command::new("ip")
            .args(["-n", &self.ns, "-s", "-j", "link", "show", "eth0"])
            .output()
            .unwrap_or_else(|e| panic!("ip -s link in {}: {e}", self.ns));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "ip -s link in {}: {e}: {}",
                self.ns,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        let stats = &v[0]["stats64"];
        let bytes = |dir: &str| stats[dir]["bytes"].as_u64().unwrap_or(0);
        (bytes("rx"), bytes("tx"))
    }

    /// `program`, to run inside this host's network namespace. It enters only the network
    /// namespace (`nsenter --net`): `ip netns exec` would also mount a sysfs of its own,
    /// hiding the cgroup hierarchy a node confines QEMU with.
    pub fn command(&self, program: &std::ffi::OsStr) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{}", self.ns))
            .arg("--")
            .arg(program);
        c
    }
}

/// A home network behind a NAT router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    pub name: String,
    /// The router's namespace.
    pub router: String,
    /// The router's public address: what the rest of the world sees.
    pub public_ip: String,
    /// The LAN's first three octets (`10.N.0`).
    lan: String,
    hosts: u8,
}

/// The networks of one test.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    inet: String,
    namespaces: Vec<String>,
    next_public: u8,
    next_home: u8,
    next_link: u32,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs `ip ARGS` (or any command), panicking with its output when it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `nft -f -` in namespace `ns` with `rules` on its standard input.
fn nft(ns: &str, rules: &str) {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run nft: {e}"));
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(rules.as_bytes())
            .unwrap_or_else(|e| panic!("cannot write to nft: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("nft: {e}"));
    assert!(
        out.status.success(),
        "nft in {ns} failed: {}\n{rules}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn have(program: &str, version: &str) -> bool {
    Command::new(program)
        .arg(version)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Why namespaced tests cannot run here, if they cannot: only when not root. As root (CI)
/// a missing `ip` or `nft` fails the test instead of skipping it, since `scripts/setup`
/// installs both.
pub fn unavailable() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_string));
    if euid.as_deref() != Some("0") {
        return Some("not root: network namespaces need root".into());
    }
    for (p, version) in [("ip", "-V"), ("nft", "--version")] {
        assert!(
            have(p, version),
            "`{p}` is missing: run scripts/setup, which installs it"
        );
    }
    None
}

impl Net {
    /// An empty public network; `None` (after printing why) where namespaces cannot be made.
    pub fn new() -> Option<Self> {
        if let Some(why) = unavailable() {
            println!("skipped: {why}");
            return None;
        }
        sweep_stale();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("barnt{}n{n}-", std::process::id());
        let mut net = Self {
            inet: format!("{prefix}inet"),
            prefix,
            namespaces: Vec::new(),
            next_public: 2,
            next_home: 1,
            next_link: 0,
        };
        let inet = net.inet.clone();
        net.namespace(&inet);
        run("ip", &["-n", &inet, "link", "add", "br0", "type", "bridge"]);
        run("ip", &["-n", &inet, "link", "set", "br0", "up"]);
        Some(net)
    }

    fn namespace(&mut self, ns: &str) {
        run("ip", &["netns", "add", ns]);
        self.namespaces.push(ns.to_string());
        run("ip", &["-n", ns, "link", "set", "lo", "up"]);
    }

    /// A veth pair: `inner` named `ifname` in `ns`, its far end attached to `bridge` in
    /// `far_ns`; returns the far end's name.
    fn link(&mut self, ns: &str, ifname: &str, far_ns: &str, bridge: &str) -> String {
        self.next_link += 1;
        let far = format!("l{}", self.next_link);
        run(
            "ip",
            &[
                "-n", far_ns, "link", "add", &far, "type", "veth", "peer", "name", ifname, "netns",
                ns,
            ],
        );
        run("ip", &["-n", far_ns, "link", "set", &far, "master", bridge]);
        run("ip", &["-n", far_ns, "link", "set", &far, "up"]);
        run("ip", &["-n", ns, "link", "set", ifname, "up"]);
        far
    }

    fn public_ip(&mut self) -> String {
        let ip = format!("198.18.0.{}", self.next_public);
        self.next_public += 1;
        ip
    }

    /// A host on the public network, reachable by everyone.
    pub fn public_host(&mut self, name: &str) -> Host {
        let ns = format!("{}{name}", self.prefix);
        self.namespace(&ns);
        let inet = self.inet.clone();
        let far = self.link(&ns, "eth0", &inet, "br0");
        let ip = self.public_ip();
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        Host {
            name: name.to_string(),
            ns,
            ip,
            link_ns: inet,
            link: far,
        }
    }

    /// A home network: a router with one public address that masquerades the LAN behind
    /// it and lets nothing in that the LAN did not start.
    pub fn home(&mut self, name: &str, nat: Nat) -> Home {
        let router = format!("{}{name}", self.prefix);
        self.namespace(&router);
        let inet = self.inet.clone();
        self.link(&router, "eth0", &inet, "br0");
        let public_ip = self.public_ip();
        run(
            "ip",
            &[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{public_ip}/24"),
                "dev",
                "eth0",
            ],
        );
        let lan = format!("10.{}.0", self.next_home);
        self.next_home += 1;
        run(
            "ip",
            &["-n", &router, "link", "add", "br0", "type", "bridge"],
        );
        run("ip", &["-n", &router, "link", "set", "br0", "up"]);
        run(
            "ip",
            &[
                "-n",
                &router,
                "addr",
                "add",
                &format!("{lan}.1/24"),
                "dev",
                "br0",
            ],
        );
        run(
            "ip",
            &[
                "netns",
                "exec",
                &router,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ],
        );
        let masquerade = match nat {
            Nat::Masquerade => "masquerade",
            Nat::Random => "masquerade random",
        };
        nft(
            &router,
            &format!(
                "table ip barn {{\n\
                   chain post {{\n\
                     type nat hook postrouting priority srcnat;\n\
                     oifname \"eth0\" {masquerade};\n\
                   }}\n\
                   chain guard {{\n\
                     type filter hook forward priority filter; policy drop;\n\
                     iifname \"br0\" oifname \"eth0\" accept;\n\
                     iifname \"br0\" oifname \"br0\" accept;\n\
                     ct state established,related accept;\n\
                   }}\n\
                   chain wan {{\n\
                     type filter hook input priority filter; policy accept;\n\
                     iifname \"eth0\" ct state established,related accept;\n\
                     iifname \"eth0\" icmp type echo-request accept;\n\
                     iifname \"eth0\" drop;\n\
                   }}\n\
                 }}\n"
            ),
        );
        Home {
            name: name.to_string(),
            router,
            public_ip,
            lan,
            hosts: 1,
        }
    }

    /// A host on `home`'s LAN, behind its NAT.
    pub fn host_in(&mut self, home: &mut Home, name: &str) -> Host {
        let ns = format!("{}{name}", self.prefix);
        self.namespace(&ns);
        let far = self.link(&ns, "eth0", &home.router, "br0");
        home.hosts += 1;
        let ip = format!("{}.{}", home.lan, home.hosts);
        run(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"],
        );
        run(
            "ip",
            &[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &format!("{}.1", home.lan),
            ],
        );
        Host {
            name: name.to_string(),
            ns,
            ip,
            link_ns: home.router.clone(),
            link: far,
        }
    }

    /// Takes `host`'s link down at its far end: nothing goes in or out until [`Net::heal`].
    pub fn cut(&self, host: &Host) {
        run(
            "ip",
            &["-n", &host.link_ns, "link", "set", &host.link, "down"],
        );
    }

    /// Brings `host`'s link back up.
    pub fn heal(&self, host: &Host) {
        run(
            "ip",
            &["-n", &host.link_ns, "link", "set", &host.link, "up"],
        );
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Deletes the namespaces of test processes that ended without cleaning up.
fn sweep_stale() {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix("barnt") else {
            continue;
        };
        let Some(pid) = rest.split('n').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}
