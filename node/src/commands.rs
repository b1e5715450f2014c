//! The commands that talk to a running node through its local API.

use std::time::Duration;

use kith_api::{ApiClient, ClientError, DoctorCheck, DoctorReport, PeerReport, StatusReport};
use serde_json::json;

use crate::{
    exit::{self, CliError},
    home::Home,
};

/// `kith init`: a new identity is ground to the network's `peer_id_difficulty` (none by default),
/// with a progress bar on a terminal, so the node can be a DHT server of that network.
pub(crate) fn init(
    home: &Home,
    bootstrap_file: Option<&std::path::Path>,
    json_output: bool,
) -> anyhow::Result<()> {
    let network = crate::config::Bootstrap::load(bootstrap_file, &[])
        .map_err(|e| CliError::new(exit::USAGE, format!("{e:#}")))?;
    let difficulty = network.peer_id_difficulty;
    home.create()?;
    let expected = kith_core::id_work::expected_generations(difficulty) as u64;
    let bar = if difficulty == 0 || json_output {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(expected)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "peer id with {msg} {bar:30} {pos}/{len} keys (~{eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{difficulty} bits of work"));
    // Past the expected count the bar just stays full; luck varies.
    let keypair =
        home.identity_worked(difficulty, &|so_far| bar.set_position(so_far.min(expected)))?;
    bar.finish_and_clear();
    home.token(true)?;
    let peer_id = keypair.public().to_peer_id().to_string();
    if json_output {
        outln!(
            "{}",
            json!({ "peer_id": peer_id, "home": home.dir().display().to_string() })
        );
    } else {
        outln!("{peer_id}");
    }
    Ok(())
}

/// `kith id`.
pub(crate) fn id(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let peer_id = home.identity(false)?.public().to_peer_id().to_string();
    if json_output {
        outln!("{}", json!({ "peer_id": peer_id }));
    } else {
        outln!("{peer_id}");
    }
    Ok(())
}

/// `kith open`: the web app's URL with the token in the fragment (never sent to the server,
/// never in the history once the app has traded it for a cookie), and the browser opened on it.
/// `then` is appended to the fragment: what the app should do once signed in (`&call=...`).
pub(crate) async fn open(
    home: &Home,
    then: &str,
    print_only: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    // Only hand out a URL that works: the node must answer.
    client.status().await.map_err(|e| api_error(home, e))?;
    let info = home.read_api_info()?;
    let token = home.token(false)?;
    let url = format!("http://{}/#token={}{then}", info.addr, token.as_str());
    let opened = !print_only && open_browser(&url);
    if json_output {
        outln!("{}", json!({ "url": url }));
    } else if opened {
        outln!("Opened kith in your browser. If nothing appeared, open this address:\n{url}");
    } else if print_only {
        outln!("{url}");
    } else {
        outln!("No browser found here; open this address in a browser on this computer:\n{url}");
    }
    Ok(())
}

/// `kith call WHO`: the web app, opened on a call to WHO (media needs the browser). WHO is
/// resolved first, so a typo fails here with the usual error instead of in the page.
pub(crate) async fn call(
    home: &Home,
    who: &str,
    video: bool,
    print_only: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    client.verify(who).await.map_err(|e| api_error(home, e))?;
    let then = format!(
        "&call={}{}",
        fragment_escape(who),
        if video { "&video=1" } else { "" }
    );
    open(home, &then, print_only, json_output).await
}

/// Percent-encodes everything but unreserved characters, for a value in the URL fragment.
fn fragment_escape(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `kith calls`: the call history.
pub(crate) async fn calls(home: &Home, limit: usize, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let report = client.calls(limit).await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    if report.calls.is_empty() {
        outln!("no calls yet");
    }
    for c in report.calls {
        let who = c.name.clone().unwrap_or_else(|| c.peer.clone());
        let kind = if c.video { "video" } else { "voice" };
        let direction = if c.direction == "outgoing" {
            "to"
        } else {
            "from"
        };
        let when = crate::messages::clock(c.started_at_ms);
        let how = match (c.outcome.as_deref(), c.duration_ms) {
            (Some("completed"), Some(ms)) => format!("{} s", ms / 1000),
            (Some(outcome), _) => outcome.to_owned(),
            (None, _) => c.state.clone(),
        };
        outln!(
            "{when}  {kind} call {direction} {who}: {how}  ({})",
            c.call_id
        );
    }
    Ok(())
}

/// Starts the user's browser on `url` without waiting for it; false when none could be started.
fn open_browser(url: &str) -> bool {
    let mut candidates: Vec<String> = Vec::new();
    if let Ok(browser) = std::env::var("BROWSER") {
        candidates.extend(
            browser
                .split(':')
                .filter(|b| !b.is_empty())
                .map(str::to_owned),
        );
    }
    let graphical = cfg!(target_os = "macos")
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if graphical {
        candidates.push(
            if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            }
            .to_owned(),
        );
    }
    candidates.into_iter().any(|program| {
        std::process::Command::new(&program)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(|mut child| {
                // Reap it in the background so it never lingers as a zombie.
                std::thread::spawn(move || child.wait());
            })
            .is_ok()
    })
}

/// `kith status`.
pub(crate) async fn status(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let status = client.status().await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&status)?);
    } else {
        print_status(&status);
    }
    Ok(())
}

/// `kith doctor`: the node's own diagnosis, or "not running" when nothing answers. Exits 1 when
/// any check found a problem, so scripts can use it as a health check.
pub(crate) async fn doctor(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let answer = match connect(home) {
        Ok(client) => client.doctor().await.map_err(Some),
        Err(_) => Err(None),
    };
    let report = match answer {
        Ok(report) => report,
        Err(None | Some(ClientError::NotRunning { .. })) => DoctorReport {
            healthy: false,
            checks: vec![DoctorCheck {
                check: "node".to_owned(),
                level: "problem".to_owned(),
                detail: format!("no kith node is running for home {}", home.dir().display()),
                fix: Some(format!(
                    "start one with `kith run --home {}`",
                    home.dir().display()
                )),
            }],
        },
        Err(Some(e)) => return Err(api_error(home, e)),
    };
    if json_output {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        for check in &report.checks {
            let mark = match check.level.as_str() {
                "ok" => "ok     ",
                "warning" => "WARNING",
                _ => "PROBLEM",
            };
            outln!("{mark} {:<12} {}", check.check, check.detail);
            if let Some(fix) = &check.fix {
                outln!("        {:<12} fix: {fix}", "");
            }
        }
    }
    if report.healthy {
        Ok(())
    } else {
        let problems = report
            .checks
            .iter()
            .filter(|c| c.level == "problem")
            .count();
        Err(CliError::new(
            exit::FAILURE,
            format!("kith doctor found {problems} problem(s); each names its fix above"),
        )
        .into())
    }
}

/// `kith peers`.
pub(crate) async fn peers(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let peers = client.peers().await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&peers)?);
    } else {
        print_peers(&peers);
    }
    Ok(())
}

/// `kith stop`: asks the node to stop and waits (bounded) until it has.
pub(crate) async fn stop(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let info = home.read_api_info()?;
    let client = connect(home)?;
    client.shutdown().await.map_err(|e| api_error(home, e))?;
    let mut stopped = false;
    for _ in 0..300 {
        // Stopped once its API is gone and it removed its `api.json` (its very last step, after
        // the store is closed: a `kith run` right after must find the store free).
        if matches!(client.status().await, Err(ClientError::NotRunning { .. }))
            && !home.read_api_info().is_ok_and(|now| now.pid == info.pid)
        {
            stopped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !stopped {
        return Err(CliError::new(
            exit::FAILURE,
            format!(
                "node {} (pid {}) accepted the stop request but is still running after 30 s",
                info.peer_id, info.pid
            ),
        )
        .into());
    }
    if json_output {
        outln!(
            "{}",
            json!({ "stopped": true, "peer_id": info.peer_id, "pid": info.pid })
        );
    } else {
        outln!("stopped node {} (pid {})", info.peer_id, info.pid);
    }
    Ok(())
}

pub(crate) fn connect(home: &Home) -> anyhow::Result<ApiClient> {
    let info = home.read_api_info()?;
    let token = home.token(false)?;
    Ok(ApiClient::new(info.addr, token)?)
}

/// Maps API failures to exit codes: "nothing answers" is 5 like a missing `api.json`; the node's
/// 400/404/409 answers are 2/3/4.
pub(crate) fn api_error(home: &Home, error: ClientError) -> anyhow::Error {
    match error {
        ClientError::NotRunning { addr } => CliError::new(
            exit::NO_NODE,
            format!(
                "no kith node is running for home {} (nothing answers at {addr}); start one with `kith run --home {}`",
                home.dir().display(),
                home.dir().display()
            ),
        )
        .into(),
        ClientError::Api { status, body } => {
            let code = match status {
                400 => exit::USAGE,
                404 => exit::NOT_FOUND,
                409 => exit::CONFLICT,
                _ => exit::FAILURE,
            };
            CliError::new(code, body.error).into()
        }
        other => CliError::new(exit::FAILURE, other.to_string()).into(),
    }
}

/// `kith relay status`.
pub(crate) async fn relay_status(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let r = client.relay().await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    if !r.relay {
        outln!("this node is not a relay (start it with `kith run --relay`)");
    }
    if let Some(c) = &r.circuits {
        outln!(
            "circuits       {} reservations, {} circuits ({} since start, {} denied)",
            c.reservations,
            c.circuits,
            c.circuits_total,
            c.denied_total
        );
    }
    outln!(
        "mailboxes      {} recipients, {} messages, {} bytes",
        r.mailbox_recipients,
        r.mailbox_items,
        r.mailbox_bytes
    );
    for u in &r.recipients {
        outln!("    {}  {} messages, {} bytes", u.peer_id, u.items, u.bytes);
    }
    Ok(())
}

fn print_status(s: &StatusReport) {
    outln!("peer id        {}", s.peer_id);
    outln!("version        {}", s.version);
    outln!("uptime         {} s", s.uptime_secs);
    let mut label = "listening";
    for addr in &s.listen_addrs {
        outln!("{label:<15}{addr}");
        label = "";
    }
    if s.listen_addrs.is_empty() {
        outln!("listening      (nothing)");
    }
    for addr in &s.external_addrs {
        outln!("external       {addr}");
    }
    outln!(
        "peers          {} connected, {} remembered",
        s.connected_peers,
        s.known_peers
    );
    outln!(
        "connections    {} in, {} out (marks {}/{}); {} trimmed, {} closed idle, {} refused at the mark",
        s.connections_inbound,
        s.connections_outbound,
        s.connections_low,
        s.connections_high,
        s.connections_trimmed,
        s.connections_idle_closed,
        s.connections_refused
    );
    outln!(
        "dht            {} peers in routing table, {} records, {} ({} mode)",
        s.routing_table_peers,
        s.dht_records,
        if s.dht_server {
            "serving"
        } else {
            "client only"
        },
        s.dht_mode
    );
    match &s.nat_addr {
        Some(addr) => outln!("nat            {} ({addr})", s.nat),
        None => outln!("nat            {}", s.nat),
    }
    if s.relays.is_empty() {
        outln!("reachability   {}", s.reachability);
    } else {
        outln!(
            "reachability   {} ({})",
            s.reachability,
            s.relays.join(", ")
        );
    }
    let h = &s.hole_punch;
    match (&h.last_result, &h.last_peer, h.last_secs_ago) {
        (Some(result), Some(peer), Some(ago)) => outln!(
            "hole punching  {} succeeded, {} failed; last {result} with {peer} {ago} s ago{}",
            h.succeeded,
            h.failed,
            h.last_error
                .as_ref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ),
        _ => outln!("hole punching  not tried yet (only relayed links are upgraded)"),
    }
    if let Some(r) = &s.relay {
        outln!(
            "relay role     {} reservations, {} circuits ({} since start, {} denied)",
            r.reservations,
            r.circuits,
            r.circuits_total,
            r.denied_total
        );
    }
    outln!("store          {} bytes", s.store_bytes);
}

fn print_peers(peers: &[PeerReport]) {
    if peers.is_empty() {
        outln!("no connected peers");
        return;
    }
    for p in peers {
        let agent = if p.agent.is_empty() { "?" } else { &p.agent };
        outln!(
            "{}  {}  {}  {}  {} s",
            p.peer_id,
            agent,
            p.path,
            p.direction,
            p.connected_secs
        );
        for c in &p.connections {
            outln!("    {:<8} {:<9} {}", c.path, c.direction, c.addr);
        }
        if !p.protocols.is_empty() {
            outln!("    protocols: {}", p.protocols.join(", "));
        }
    }
}
