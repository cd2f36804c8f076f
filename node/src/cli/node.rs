//! `barn node`: run the volunteer daemon until SIGINT or SIGTERM.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::daemon;
use crate::dirs::Dirs;

#[derive(Debug, Args)]
pub struct NodeArgs {
    /// Listen on this multiaddr (repeatable; overrides node.listen).
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// Connect to this peer at start (repeatable; added to node.bootstrap).
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<String>,
    /// A public address this node is reached at, without /p2p/ (repeatable; added to
    /// node.external_addrs).
    #[arg(long, value_name = "MULTIADDR")]
    external_addr: Vec<String>,
    /// Serve as a relay for peers behind NAT (sets node.relay).
    #[arg(long)]
    relay: bool,
    /// Run jobs signed by this project key (repeatable; added to trust.submitters).
    #[arg(long, value_name = "KEY")]
    trust: Vec<String>,
    /// The local API's address (overrides api.listen), e.g. 127.0.0.1:0 for any free port.
    #[arg(long, value_name = "ADDR")]
    api: Option<String>,
    /// Jobs at once (overrides node.slots).
    #[arg(long)]
    slots: Option<u32>,
    /// auto, kvm or tcg (overrides node.accel).
    #[arg(long, env = "BARN_ACCEL")]
    accel: Option<String>,
    /// TEST ONLY: alter every output before hashing it, to play a dishonest node.
    #[arg(long, hide = true)]
    fault_alter_outputs: bool,
}

pub fn run(args: NodeArgs, dirs: &Dirs) -> Result<ExitCode> {
    let path = dirs.config.join("config.toml");
    if !path.exists() {
        // A first start: leave the documented defaults where the volunteer will look.
        std::fs::create_dir_all(&dirs.config)?;
        std::fs::write(&path, crate::config::DEFAULT_CONFIG)?;
        eprintln!("wrote the default configuration to {}", path.display());
    }
    let (mut cfg, warnings) = Config::load(&path)?;
    for w in warnings {
        tracing::warn!("{w}");
        eprintln!("warning: {w}");
    }
    if !args.listen.is_empty() {
        cfg.listen = args.listen;
    }
    cfg.bootstrap.extend(args.bootstrap);
    for a in args.external_addr {
        let parsed: libp2p::Multiaddr = a
            .parse()
            .map_err(|e| anyhow::anyhow!("--external-addr {a:?}: {e}"))?;
        anyhow::ensure!(
            !parsed
                .iter()
                .any(|p| matches!(p, libp2p::multiaddr::Protocol::P2p(_))),
            "--external-addr {a:?}: leave out the /p2p/ part, it is added"
        );
        cfg.external_addrs.push(a);
    }
    cfg.relay |= args.relay;
    for t in args.trust {
        cfg.trusted.push(
            t.parse()
                .map_err(|e| anyhow::anyhow!("--trust {t:?}: {e}"))?,
        );
    }
    if let Some(api) = args.api {
        let addr: std::net::SocketAddr = api
            .parse()
            .map_err(|e| anyhow::anyhow!("--api {api:?}: {e}"))?;
        anyhow::ensure!(
            addr.ip().is_loopback(),
            "--api must be a loopback address; the API is for this machine only"
        );
        cfg.api_listen = api;
    }
    if let Some(s) = args.slots {
        anyhow::ensure!((1..=64).contains(&s), "--slots must be between 1 and 64");
        cfg.slots = s;
    }
    if let Some(a) = args.accel {
        anyhow::ensure!(
            ["auto", "kvm", "tcg"].contains(&a.as_str()),
            "--accel: write auto, kvm or tcg"
        );
        cfg.accel = a;
    }
    let opts = daemon::Options {
        fault_alter_outputs: args.fault_alter_outputs,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let cancel = CancellationToken::new();
        let signals = {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                cancel.cancel();
            })
        };
        let r = daemon::run(dirs.clone(), cfg, opts, cancel, crate::api::server::serve).await;
        signals.abort();
        r
    })?;
    Ok(ExitCode::SUCCESS)
}
