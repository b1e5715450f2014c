//! `kith run`: the daemon.
//!
//! Order matters: the store is opened (and locked) before anything is written to the home, so a
//! second node on the same home fails early and leaves the first one's `api.json` alone.

use std::time::Duration;

use anyhow::Context as _;
use kith_service::Node;
use kith_store::{Store, StoreConfig};
use serde_json::json;

use crate::{
    cli::{DhtModeArg, RelayPolicyArg, RunArgs},
    config::Bootstrap,
    exit::{self, CliError},
    home::{ApiInfo, Home},
};

pub(crate) async fn run(home: &Home, args: RunArgs, json_output: bool) -> anyhow::Result<()> {
    if !args.api_addr.ip().is_loopback() {
        return Err(CliError::new(
            exit::USAGE,
            format!(
                "--api-addr {} is not a loopback address; the local API must never be reachable from other machines",
                args.api_addr
            ),
        )
        .into());
    }
    let bootstrap = Bootstrap::load(args.bootstrap_file.as_deref(), &args.bootstrap)
        .map_err(|e| CliError::new(exit::USAGE, format!("{e:#}")))?;
    for warning in &bootstrap.warnings {
        tracing::warn!("{warning}");
    }

    // Signal handlers go in before anything a test or a service manager can see (the ready line,
    // api.json), so a SIGTERM sent the moment the node looks ready still stops it cleanly.
    let stop_signals = StopSignals::install();
    home.create()?;
    let difficulty = bootstrap.peer_id_difficulty;
    if difficulty > 0 && !home.has_identity() {
        tracing::info!(
            difficulty,
            expected_keys = kith_core::id_work::expected_generations(difficulty),
            "creating an identity whose peer id meets the network's peer_id_difficulty"
        );
    }
    let keypair = home.identity_worked(difficulty, &|_| {})?;
    let store = Store::open(
        home.db_path(),
        &StoreConfig::default().with_cache_mb(args.store_cache_mb),
    )
    .map_err(|e| CliError::new(exit::FAILURE, e.to_string()))?;
    let token = home.token(true)?;
    let pickle_key = home.pickle_key()?;

    let mut config = kith_net::Config::new(keypair)
        .with_network_id(bootstrap.network_id.clone())
        .with_peer_id_difficulty(difficulty)
        .with_listen(args.listen)
        .with_bootstrap(bootstrap.entries.iter().map(|e| e.addr.clone()).collect())
        .with_mdns(!args.no_mdns)
        .with_dht_mode(match args.dht_mode {
            DhtModeArg::Auto => kith_net::DhtMode::Auto,
            DhtModeArg::Server => kith_net::DhtMode::Server,
            DhtModeArg::Client => kith_net::DhtMode::Client,
        });
    config.relay_server = args.relay;
    // One entry per relay: a relay listed with its TCP and QUIC addresses is still one mailbox.
    let mut relay_ids = std::collections::HashSet::new();
    config.relays = bootstrap
        .entries
        .iter()
        .filter(|e| e.relay)
        .filter(|e| match e.addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(id)) => relay_ids.insert(id),
            _ => false,
        })
        .map(|e| e.addr.clone())
        .collect();
    config.relay_policy = match args.relay_policy {
        RelayPolicyArg::WhenPrivate => kith_net::RelayPolicy::WhenPrivate,
        RelayPolicyArg::Always => kith_net::RelayPolicy::Always,
        RelayPolicyArg::Never => kith_net::RelayPolicy::Never,
    };
    config.external_addrs = args.external_addr;

    let mailbox_relays = if args.relay {
        Vec::new()
    } else {
        config.relays.clone()
    };
    // TURN for calls (relays): the server runs beside the node; the node hands out credentials.
    let turn = match args.turn {
        Some(listen) => {
            let public_ip = match args.turn_public_ip {
                Some(ip) => ip,
                None if !listen.ip().is_unspecified() => listen.ip(),
                None => {
                    return Err(CliError::new(
                        exit::USAGE,
                        format!(
                            "--turn {listen} listens on every address; say which one users reach with --turn-public-ip <ip>"
                        ),
                    )
                    .into());
                }
            };
            let secret = home.turn_secret()?;
            let config = kith_turn::TurnConfig::new(listen, public_ip, secret.clone())
                .with_allow_private_peers(args.turn_allow_private_peers);
            let server = kith_turn::TurnServer::start(config)
                .await
                .with_context(|| format!("cannot start the TURN server on {listen}"))?;
            let urls = kith_turn::ice_server_urls(server.public_addr());
            tracing::info!(addr = %server.local_addr(), ?urls, "serving STUN/TURN for calls");
            Some((server, secret, urls))
        }
        None => None,
    };
    let options = kith_service::Options {
        name_rules: bootstrap.name_rules.clone(),
        pickle_key: Some(pickle_key),
        mailbox_server: args.relay.then(|| kith_service::MailboxConfig {
            quota: kith_service::Quota {
                max_items: args.mailbox_items,
                max_bytes: args.mailbox_bytes,
            },
            ttl: Duration::from_secs(args.mailbox_ttl_secs.max(1)),
            ..kith_service::MailboxConfig::default()
        }),
        mailbox_relays,
        files: kith_service::FilesConfig {
            dir: Some(home.db_path().with_file_name("blobs")),
            relay: kith_service::RelayBlobConfig {
                quota_bytes: args.relay_file_bytes,
                ttl: Duration::from_secs(args.relay_file_ttl_secs.max(1)),
                dir: None,
            },
            serve_rate: args.file_upload_rate.filter(|r| *r > 0),
            ..kith_service::FilesConfig::default()
        },
        call_ring_timeout: Duration::from_secs(args.call_ring_timeout_secs.clamp(1, 600)),
        ice: kith_service::IceConfig {
            servers: Vec::new(),
            relay_only: args.relay_only_calls,
        },
        turn: turn
            .as_ref()
            .map(|(_, secret, urls)| kith_service::TurnIssuer {
                secret: secret.clone(),
                urls: urls.clone(),
                ttl: Duration::from_secs(12 * 3600),
            }),
        dm_rate: peer_message_rate(args.peer_message_rate),
        ..kith_service::Options::default()
    };
    let node = Node::start_with(config, store, options)
        .await
        .context("cannot start the node")?;
    let listener = bind_api(home, args.api_addr).await?;
    let api_addr = listener
        .local_addr()
        .context("API listener has no address")?;
    if let Err(e) = home.remember_api_port(api_addr.port()) {
        tracing::warn!(error = %e, "cannot remember the API port; the next start may use another");
    }
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(kith_api::serve(listener, node.clone(), token, async {
        let _ = api_stopped.await;
    }));

    let metrics = match args.metrics_addr {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            tracing::info!(%addr, "serving /metrics without a token");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(kith_api::serve_metrics(listener, node.clone(), async {
                let _ = stopped.await;
            }));
            Some((stop, task))
        }
        None => None,
    };

    let pid = std::process::id();
    let peer_id = node.peer_id();
    home.write_api_info(&ApiInfo {
        addr: api_addr,
        pid,
        peer_id: peer_id.to_string(),
    })?;

    let listen_addrs = wait_for_listeners(&node).await;
    let bootstrap_addrs: Vec<String> = bootstrap
        .entries
        .iter()
        .map(|e| e.addr.to_string())
        .collect();
    let discovery = discovery_line(!args.no_mdns, bootstrap.entries.len());
    if json_output {
        outln!(
            "{}",
            json!({
                "peer_id": peer_id.to_string(),
                "api_addr": api_addr.to_string(),
                "listen_addrs": listen_addrs,
                "home": home.dir().display().to_string(),
                "relay": args.relay,
                "turn": turn.as_ref().map(|(_, _, urls)| urls.clone()),
                "mdns": !args.no_mdns,
                "bootstrap": bootstrap_addrs,
                "discovery": discovery,
            })
        );
    } else {
        outln!("kith node {peer_id} is running");
        outln!("  home: {}", home.dir().display());
        for addr in &listen_addrs {
            outln!("  listening on {addr}");
        }
        outln!("  finding peers: {discovery}");
        if let Some((_, _, urls)) = &turn {
            outln!("  serving TURN for calls: {}", urls.join(", "));
        }
        for addr in &bootstrap_addrs {
            outln!("    bootstrap {addr}");
        }
        outln!("  local API on http://{api_addr} (token in api.token)");
        outln!("  web app: run `kith open` to open it signed in");
        outln!("Stop it with Ctrl-C or `kith stop`.");
    }

    stop_signals.wait(&node).await;
    tracing::info!("shutting down");
    let _ = stop_api.send(());
    if let Some((stop, task)) = metrics {
        let _ = stop.send(());
        let _ = task.await;
    }
    match tokio::time::timeout(Duration::from_secs(10), api).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "API server ended with an error"),
        Ok(Err(e)) => tracing::warn!(error = %e, "API task failed"),
        Err(_) => tracing::warn!("API server did not stop within 10 s"),
        Ok(Ok(Ok(()))) => {}
    }
    let result = node.shutdown().await.context("shutdown failed");
    if let Some((server, _, _)) = turn {
        server.shutdown().await;
    }
    // The last handle of the store goes with the node; then the store is checkpointed, so that
    // the next start reads a snapshot instead of replaying everything written during this run.
    drop(node);
    checkpoint_store(home.db_path()).await;
    // Last: `kith stop` waits for this file to go, so a `kith run` right after finds the store
    // closed.
    home.remove_api_info(pid);
    result?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Rewrites the store's snapshot after a clean stop (see `Store::close`). Tasks that held the
/// node may still be letting go of the store, so a locked store is tried again for up to 3 s;
/// after that, or on any error, the next start replays the log instead: slower, nothing lost.
async fn checkpoint_store(path: std::path::PathBuf) {
    let started = std::time::Instant::now();
    let outcome = tokio::task::spawn_blocking(move || {
        for _ in 0..30 {
            match Store::checkpoint(&path) {
                Err(kith_store::StoreError::Locked { .. }) => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                other => return other,
            }
        }
        Err(kith_store::StoreError::Locked { path })
    })
    .await;
    match outcome {
        Ok(Ok(())) => tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "store checkpointed: the next start reads its snapshot"
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "store not checkpointed; the next start replays its log")
        }
        Err(e) => tracing::warn!(error = %e, "store checkpoint task failed"),
    }
}

/// How this node will find peers, in words for the first lines a new user reads.
fn discovery_line(mdns: bool, bootstrap_entries: usize) -> String {
    let entries = match bootstrap_entries {
        1 => "1 bootstrap entry".to_owned(),
        n => format!("{n} bootstrap entries"),
    };
    match (mdns, bootstrap_entries) {
        (true, 0) => {
            "mDNS on this LAN only; beyond it none: add one with --bootstrap or bootstrap.toml"
                .to_owned()
        }
        (true, _) => format!("mDNS on this LAN and {entries}"),
        (false, 0) => "none: add one with --bootstrap or bootstrap.toml".to_owned(),
        (false, _) => entries,
    }
}

/// Binds the API. With port 0 (the default) the last run's port is tried first, so a web app tab
/// left open reconnects to the restarted node; when that port is taken, any free one will do.
async fn bind_api(
    home: &Home,
    requested: std::net::SocketAddr,
) -> anyhow::Result<tokio::net::TcpListener> {
    if requested.port() == 0
        && let Some(port) = home.last_api_port()
    {
        let previous = std::net::SocketAddr::new(requested.ip(), port);
        match tokio::net::TcpListener::bind(previous).await {
            Ok(listener) => return Ok(listener),
            Err(e) => {
                tracing::info!(%previous, error = %e, "last API port is taken; using another")
            }
        }
    }
    tokio::net::TcpListener::bind(requested)
        .await
        .with_context(|| format!("cannot listen for the local API on {requested}"))
}

/// Listeners come up asynchronously; wait a little (bounded) so the ready line can name them.
async fn wait_for_listeners(node: &Node) -> Vec<String> {
    for _ in 0..40 {
        if let Ok(status) = node.status().await
            && !status.net.listen_addrs.is_empty()
        {
            return status
                .net
                .listen_addrs
                .iter()
                .map(ToString::to_string)
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Vec::new()
}

/// SIGINT and SIGTERM watchers, installed at the start of `kith run`: the default action of
/// either would kill the process without the clean stop (store checkpoint, api.json removed).
struct StopSignals {
    interrupt: Option<tokio::signal::unix::Signal>,
    terminate: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        let watch = |kind: SignalKind, what: &str| match signal(kind) {
            Ok(signal) => Some(signal),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch {what}");
                None
            }
        };
        StopSignals {
            interrupt: watch(SignalKind::interrupt(), "SIGINT"),
            terminate: watch(SignalKind::terminate(), "SIGTERM"),
        }
    }

    /// Resolves on Ctrl-C, SIGTERM or `kith stop`.
    async fn wait(mut self, node: &Node) {
        async fn received(signal: Option<&mut tokio::signal::unix::Signal>) {
            match signal {
                Some(signal) => {
                    signal.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        }
        tokio::select! {
            () = received(self.interrupt.as_mut()) => tracing::info!("interrupted"),
            () = received(self.terminate.as_mut()) => tracing::info!("terminated"),
            () = node.shutdown_requested() => {},
        }
    }
}

/// The per-peer inbound limit (burst, per second) for `--peer-message-rate`: five seconds' worth
/// of burst, never less than 1,000 (the default 200/s gives the service's default (1000, 200)).
fn peer_message_rate(per_sec: u32) -> (f64, f64) {
    let per_sec = f64::from(per_sec.max(1));
    ((per_sec * 5.0).max(1000.0), per_sec)
}

#[cfg(test)]
mod rate_tests {
    use super::peer_message_rate;

    #[test]
    fn the_default_rate_is_the_services_default_and_the_burst_scales() {
        assert_eq!(
            peer_message_rate(200),
            kith_service::Options::default().dm_rate
        );
        assert_eq!(peer_message_rate(10_000), (50_000.0, 10_000.0));
        assert_eq!(peer_message_rate(0), (1000.0, 1.0));
    }
}
