//! A farm of real `barn node` processes on 127.0.0.1: one submitter and N volunteers,
//! connected by explicit addresses (no mDNS), each with its own directories. Dropping the
//! farm stops every process (SIGTERM, then SIGKILL) and removes the directories, unless
//! `BARN_KEEP_FARM` is set.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::netns::Host;
use crate::{barn_bin, shared_data_dir};

/// One node process.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub config: PathBuf,
    pub data: PathBuf,
    pub log: PathBuf,
    child: Child,
    /// The arguments it was started with after the common ones, for [`Node::restart`].
    extra: Vec<String>,
    /// The namespaced host it runs on ([`crate::netns`]); `None`: this machine, 127.0.0.1.
    pub host: Option<Host>,
}

/// `barn` as a command: on this machine, or inside `host`'s namespace.
fn barn_command(host: Option<&Host>) -> Command {
    match host {
        Some(h) => h.command(barn_bin().as_os_str()),
        None => Command::new(barn_bin()),
    }
}

impl Node {
    /// Runs a barn command against this node's directories.
    pub fn barn(&self, args: &[&str]) -> Output {
        barn_command(self.host.as_ref())
            .arg("--config-dir")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(&self.data)
            .args(args)
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("cannot run barn: {e}"))
    }

    /// `barn status` fields via `barn nodes --json`' self entry is not needed: the API file
    /// exists once the node serves.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.data.join("api.addr").exists() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "node {} exited: {st}\n{}",
                    self.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "node {} did not start",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The node's peer id, from its key file.
    pub fn peer_id(&self) -> String {
        let out = self.barn(&["key", "show", "--node"]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The node's listen address (on 127.0.0.1, or its host's address) with its peer id,
    /// from its own advert.
    pub fn multiaddr(&self) -> String {
        let ip = self.host.as_ref().map_or("127.0.0.1", |h| h.ip.as_str());
        let want = format!("/ip4/{ip}/");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = self.barn(&["nodes", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let me = v
                .as_array()
                .and_then(|a| a.iter().find(|n| n["is_self"] == true).cloned());
            if let Some(me) = me {
                let addr = me["addrs"].as_array().and_then(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str())
                        .find(|x| x.contains(&want))
                        .map(str::to_string)
                });
                if let Some(addr) = addr {
                    return format!("{addr}/p2p/{}", me["node"].as_str().unwrap_or_default());
                }
            }
            assert!(
                Instant::now() < deadline,
                "node {} advertised no address",
                self.name
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Gives this node image `name` from the shared test data (as if it had built it).
    pub fn give_image(&self, name: &str) {
        give_image(name, &self.data);
    }

    /// `barn status --json` on this node.
    pub fn status(&self) -> serde_json::Value {
        let out = self.barn(&["status", "--json"]);
        assert!(
            out.status.success(),
            "barn status on {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("barn status --json on {} printed no JSON: {e}", self.name))
    }

    /// `barn job ID --json` on this node: `None` while the node does not know the job.
    pub fn job(&self, id: &str) -> Option<serde_json::Value> {
        let out = self.barn(&["job", id, "--json"]);
        if !out.status.success() {
            return None;
        }
        Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "barn job {id} --json on {} printed no JSON ({e}): {}",
                self.name,
                String::from_utf8_lossy(&out.stdout)
            )
        }))
    }

    /// The node's `/metrics` text, through its API (with its token).
    pub fn metrics(&self) -> String {
        use std::io::{Read as _, Write as _};
        let addr = std::fs::read_to_string(self.data.join("api.addr"))
            .unwrap_or_else(|e| panic!("api.addr of {}: {e}", self.name));
        let token = std::fs::read_to_string(self.data.join("api.token"))
            .unwrap_or_else(|e| panic!("api.token of {}: {e}", self.name));
        let mut s = std::net::TcpStream::connect(addr.trim())
            .unwrap_or_else(|e| panic!("the API of {}: {e}", self.name));
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        );
        s.write_all(req.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        let mut body = String::new();
        s.read_to_string(&mut body)
            .unwrap_or_else(|e| panic!("{e}"));
        body
    }

    /// A sample of `/metrics` (a line starting with `series`, e.g.
    /// `barn_rejected_total{kind="gossip",reason="undecodable",topic="jobs"}`), or 0.
    pub fn metric(&self, series: &str) -> u64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// The node process's resident memory, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the node with SIGKILL (no clean-up of its own) and waits for it.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the process and starts it again with the same directories and arguments,
    /// listening on `listen` (a multiaddr, e.g. what [`Node::multiaddr`] said before the
    /// node went down, as a restarted daemon keeps its configured address).
    pub fn restart_listening(&mut self, listen: &str) {
        let listen = listen.split("/p2p/").next().unwrap_or(listen).to_string();
        self.restart_with(&listen);
    }

    /// Stops the process and starts it again with the same directories and arguments
    /// (new ports; the log is appended to).
    pub fn restart(&mut self) {
        let ip = self.host.as_ref().map_or("127.0.0.1", |h| h.ip.as_str());
        self.restart_with(&format!("/ip4/{ip}/tcp/0"));
    }

    fn restart_with(&mut self, listen: &str) {
        self.stop();
        let root = self
            .config
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_else(|| panic!("node {} has no root", self.name));
        // A killed node leaves its API address behind; the new one writes its own.
        let _ = std::fs::remove_file(self.data.join("api.addr"));
        let host = self.host.clone();
        *self = spawn_on(&root, &self.name, &self.extra, listen, host);
    }

    fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            // Already ended (and reaped): its pid may belong to another process by now.
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The farm.
#[derive(Debug)]
pub struct Farm {
    /// The relay the nodes meet through ([`Farm::start_behind_nat`]); `None`: they meet
    /// through the submitter.
    pub relay: Option<Node>,
    pub submitter: Node,
    pub volunteers: Vec<Node>,
    pub project_key: String,
    pub root: tempfile::TempDir,
}

fn spawn(root: &Path, name: &str, extra: &[String]) -> Node {
    spawn_listening(root, name, extra, "/ip4/127.0.0.1/tcp/0")
}

fn spawn_listening(root: &Path, name: &str, extra: &[String], listen: &str) -> Node {
    spawn_on(root, name, extra, listen, None)
}

/// Starts `barn node` named `name` on `host` (or this machine), listening on its address.
pub fn spawn_at(root: &Path, name: &str, extra: &[String], host: Option<Host>) -> Node {
    let ip = host.as_ref().map_or("127.0.0.1", |h| h.ip.as_str());
    spawn_on(root, name, extra, &format!("/ip4/{ip}/tcp/0"), host)
}

fn spawn_on(root: &Path, name: &str, extra: &[String], listen: &str, host: Option<Host>) -> Node {
    let config = root.join(name).join("config");
    let data = root.join(name).join("data");
    std::fs::create_dir_all(&config).unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(&data).unwrap_or_else(|e| panic!("{e}"));
    let log = root.join(format!("{name}.log"));
    let child = barn_command(host.as_ref())
        .arg("--config-dir")
        .arg(&config)
        .arg("--data-dir")
        .arg(&data)
        .args(["node", "--listen", listen, "--api", "127.0.0.1:0"])
        .args(extra)
        // BARN_TEST_LOG=<filter> logs more (e.g. libp2p_dcutr=debug), to read with
        // BARN_KEEP_FARM.
        .env(
            "RUST_LOG",
            std::env::var("BARN_TEST_LOG").unwrap_or_else(|_| "barn_node=info".into()),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start barn node: {e}"));
    let mut node = Node {
        name: name.to_string(),
        config,
        data,
        log,
        child,
        extra: extra.to_vec(),
        host,
    };
    node.wait_ready();
    node
}

/// Copies image `name` from the shared test data dir into `data` (hard links).
fn give_image(name: &str, data: &Path) {
    let shared = shared_data_dir().join("images");
    let hash = std::fs::read_to_string(shared.join("by-name").join(name))
        .unwrap_or_else(|e| panic!("image {name}: {e}"));
    let hex = hash.trim().trim_start_matches("b3:").to_string();
    let dest = data.join("images").join(&hex);
    std::fs::create_dir_all(&dest).unwrap_or_else(|e| panic!("{e}"));
    for e in std::fs::read_dir(shared.join(&hex)).unwrap_or_else(|e| panic!("{e}")) {
        let e = e.unwrap_or_else(|e| panic!("{e}"));
        let to = dest.join(e.file_name());
        if std::fs::hard_link(e.path(), &to).is_err() {
            std::fs::copy(e.path(), &to).unwrap_or_else(|e| panic!("{e}"));
        }
    }
    std::fs::create_dir_all(data.join("images/by-name")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(data.join("images/by-name").join(name), hash).unwrap_or_else(|e| panic!("{e}"));
}

impl Farm {
    /// A submitter holding `image` and `volunteers` volunteers that trust its project key
    /// and have no images (they fetch the job's image from the submitter). `faulty` names
    /// volunteers (1-based) started with the test-only output fault.
    pub fn start(image: &str, volunteers: usize, faulty: &[usize]) -> Self {
        let hosts = vec![None; volunteers];
        Self::start_on(image, None, hosts, faulty)
    }

    /// [`Farm::start`] with each node on a host of its own ([`crate::netns`]; `None`: this
    /// machine): the submitter on `submitter`, one volunteer on each of `volunteers`.
    pub fn start_on(
        image: &str,
        submitter: Option<Host>,
        volunteers: Vec<Option<Host>>,
        faulty: &[usize],
    ) -> Self {
        Self::start_with(image, None, submitter, volunteers, faulty)
    }

    /// A farm whose nodes sit behind NATs and meet through a relay: a barn node on the
    /// public host `relay` (`--relay`, its address given with `--external-addr`), the one
    /// peer every other node is told of. The submitter on `submitter`, one volunteer on
    /// each of `volunteers`.
    pub fn start_behind_nat(
        image: &str,
        relay: Host,
        submitter: Host,
        volunteers: Vec<Host>,
    ) -> Self {
        let volunteers = volunteers.into_iter().map(Some).collect();
        Self::start_with(image, Some(relay), Some(submitter), volunteers, &[])
    }

    fn start_with(
        image: &str,
        relay: Option<Host>,
        submitter: Option<Host>,
        volunteers: Vec<Option<Host>>,
        faulty: &[usize],
    ) -> Self {
        crate::ensure_image(image);
        // BARN_KEEP_FARM=1 keeps the nodes' directories and logs after the test, to read.
        let keep = std::env::var_os("BARN_KEEP_FARM").is_some();
        let root = tempfile::Builder::new()
            .prefix("barn-farm-")
            .disable_cleanup(keep)
            .tempdir()
            .unwrap_or_else(|e| panic!("{e}"));
        if keep {
            println!("farm kept in {}", root.path().display());
        }
        let accel = ["--accel".to_string(), "tcg".to_string()];
        let relay = relay.map(|host| {
            // A fixed port: the address is given as the relay's confirmed external one.
            let addr = format!("/ip4/{}/tcp/7400", host.ip);
            let extra = [
                "--relay".to_string(),
                "--external-addr".into(),
                addr.clone(),
            ];
            let node = spawn_on(root.path(), "relay", &extra, &addr, Some(host));
            let boot = format!("{addr}/p2p/{}", node.peer_id());
            (node, boot)
        });
        let mut first = accel.to_vec();
        if let Some((_, boot)) = &relay {
            first.extend(["--bootstrap".to_string(), boot.clone()]);
        }
        let submitter = spawn_at(root.path(), "submitter", &first, submitter);
        give_image(image, &submitter.data);
        let made = submitter.barn(&["key", "new"]);
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        let project_key = String::from_utf8_lossy(&made.stdout).trim().to_string();
        let boot = match &relay {
            Some((_, boot)) => boot.clone(),
            None => submitter.multiaddr(),
        };
        let count = volunteers.len() + usize::from(relay.is_some());
        let mut vs = Vec::new();
        for (i, host) in (1..).zip(volunteers) {
            let mut extra = vec![
                "--bootstrap".to_string(),
                boot.clone(),
                "--trust".into(),
                project_key.clone(),
            ];
            extra.extend(accel.iter().cloned());
            if faulty.contains(&i) {
                extra.push("--fault-alter-outputs".into());
            }
            vs.push(spawn_at(
                root.path(),
                &format!("volunteer-{i}"),
                &extra,
                host,
            ));
        }
        let farm = Farm {
            relay: relay.map(|(node, _)| node),
            submitter,
            volunteers: vs,
            project_key,
            root,
        };
        farm.wait_for_adverts(count);
        farm
    }

    /// Submits the job in `project` through the submitter with one replica, without
    /// waiting; returns its id.
    pub fn submit_one(&self, project: &crate::Project) -> String {
        self.submit(project, 1)
    }

    /// Submits the job in `project` through the submitter with `replicas` replicas,
    /// without waiting; returns its id.
    pub fn submit(&self, project: &crate::Project, replicas: u8) -> String {
        let dir = project.path().to_str().unwrap_or(".");
        let replicas = replicas.to_string();
        let out = self
            .submitter
            .barn(&["submit", "--replicas", &replicas, dir]);
        assert!(
            out.status.success(),
            "barn submit failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Starts one more volunteer (honest, trusting the project key) and waits until the
    /// submitter has heard it; returns it.
    pub fn add_volunteer(&mut self) -> &Node {
        let i = self.volunteers.len() + 1;
        let extra = vec![
            "--bootstrap".to_string(),
            self.submitter.multiaddr(),
            "--trust".into(),
            self.project_key.clone(),
            "--accel".into(),
            "tcg".into(),
        ];
        self.volunteers
            .push(spawn(self.root.path(), &format!("volunteer-{i}"), &extra));
        self.wait_for_adverts(self.volunteers.len());
        &self.volunteers[i - 1]
    }

    /// Waits until the submitter has heard `n` other nodes' adverts.
    pub fn wait_for_adverts(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = self.submitter.barn(&["nodes", "--json"]);
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            let others = v
                .as_array()
                .map(|a| a.iter().filter(|n| n["is_self"] == false).count())
                .unwrap_or(0);
            if others >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {others} of {n} volunteers reached the submitter"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
