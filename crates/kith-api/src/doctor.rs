//! `kith doctor`: turns a [`Checkup`] into plain words, each warning or problem with the command or
//! setting that fixes it. Pure: the same checkup always gives the same report.

use std::time::{Duration, SystemTime};

use kith_service::{Checkup, Publication};

use crate::types::{DoctorCheck, DoctorReport};

/// How long after start a missing publication is still "not yet" rather than a problem (the
/// re-publisher's first run comes a few seconds after start).
const GRACE: Duration = Duration::from_secs(30);

const BOOTSTRAP_FIX: &str = "give the node a peer: `kith run --bootstrap <multiaddr>` (a friend's or a relay's address, from their `kith status`), or an entry in bootstrap.toml; on a LAN keep mDNS on (no --no-mdns)";
const TURN_FIX: &str = "use a community relay that serves TURN (`kith run --relay --turn 0.0.0.0:3478 --turn-public-ip <its IP>`) in bootstrap.toml; your node gets credentials from it once registered";
const RELAY_FIX: &str = "list a community relay in bootstrap.toml with `relay = true` (see README, \"Community relays\")";

/// The diagnosis of a running node.
pub(crate) fn diagnose(c: &Checkup) -> DoctorReport {
    let s = &c.status;
    let net = &s.net;
    let mut checks = vec![ok(
        "node",
        format!(
            "running, kith {}, peer id {}, up {}",
            s.version,
            net.peer_id,
            human_duration(s.uptime)
        ),
    )];

    if net.listen_addrs.is_empty() {
        checks.push(problem(
            "listen",
            "not listening on any address: nobody can connect to this node".to_owned(),
            "check the --listen addresses (or leave them out for the defaults) and the log for 'cannot listen'",
        ));
    } else {
        checks.push(ok(
            "listen",
            format!("listening on {}", join(&net.listen_addrs)),
        ));
    }

    if net.connected_peers == 0 {
        checks.push(problem(
            "peers",
            "connected to no one".to_owned(),
            BOOTSTRAP_FIX,
        ));
    } else {
        checks.push(ok(
            "peers",
            format!("connected to {} peer(s)", net.connected_peers),
        ));
    }

    let relayed = !net.relayed_via.is_empty();
    checks.push(match (&net.nat, relayed, net.relay_served.is_some()) {
        (_, _, true) => ok(
            "reachability",
            "community relay: others reach it at its listen or --external-addr addresses".to_owned(),
        ),
        (kith_net::NatStatus::Public { addr }, _, _) => ok(
            "reachability",
            format!("reachable from the internet at {addr} (confirmed by AutoNAT)"),
        ),
        (_, true, _) => ok(
            "reachability",
            format!(
                "behind NAT, reachable through relay(s) {}",
                join(&net.relayed_via)
            ),
        ),
        (kith_net::NatStatus::Private, false, _) => problem(
            "reachability",
            "behind NAT or a firewall and no relay holds a reservation: people outside this network cannot reach you while you are online".to_owned(),
            RELAY_FIX,
        ),
        (kith_net::NatStatus::Unknown, false, _) => warning(
            "reachability",
            "not known yet whether the internet can reach this node (no AutoNAT server has tested a public address)".to_owned(),
            "connect to more peers (a bootstrap entry or a relay), then run `kith doctor` again",
        ),
    });

    let confirmed: Vec<String> = net.external_addrs.iter().map(ToString::to_string).collect();
    let why = match (net.dht_mode, net.relay_served.is_some(), net.dht_server) {
        (_, true, _) => "server, as every community relay".to_owned(),
        (kith_net::DhtMode::Server, _, _) => "server, forced by --dht-mode server".to_owned(),
        (kith_net::DhtMode::Client, _, _) => "client, forced by --dht-mode client".to_owned(),
        (_, _, true) => format!(
            "server, because a peer confirmed an address of ours ({})",
            confirmed.join(", ")
        ),
        (_, _, false) => "client, because no peer has confirmed an address of ours yet".to_owned(),
    };
    let dht_detail = format!(
        "{why}; {} peer(s) in the routing table",
        net.routing_table_peers
    );
    checks.push(if net.routing_table_peers == 0 {
        problem(
            "dht",
            format!("{dht_detail}: names cannot be registered or resolved"),
            BOOTSTRAP_FIX,
        )
    } else if !net.dht_server && net.dht_mode == kith_net::DhtMode::Auto {
        warning(
            "dht",
            format!("{dht_detail} (fine behind NAT: this node asks, others answer)"),
            "nothing to do behind NAT; on a LAN or a server, make sure peers can dial this node (firewall), or force it with `kith run --dht-mode server`",
        )
    } else {
        ok("dht", dht_detail)
    });

    if net.relay_served.is_none() {
        checks.push(mailboxes(c));
    }
    checks.push(calls(c));
    checks.push(names(c));
    if let Some(check) = name_rivals(c) {
        checks.push(check);
    }
    checks.push(publication(
        "key_bundle",
        "key bundle (how others start a conversation with you)",
        &c.key_bundle,
        s.uptime,
    ));
    checks.push(clock(c));

    let healthy = checks.iter().all(|c| c.level != "problem");
    DoctorReport { healthy, checks }
}

/// How far our clock is from our peers'. Name holders refuse claims signed further in the
/// future than `max_clock_skew`; a quarter of that is already worth fixing.
fn clock(c: &Checkup) -> DoctorCheck {
    const FIX: &str = "synchronise the system clock: `timedatectl set-ntp true` (systemd), or install and start chrony or ntpd";
    let Some(skew) = c.clock_skew else {
        return ok(
            "clock",
            "skew against peers: not measured yet (peers report their clock when they answer a message or a mailbox request); keep the system clock synchronised (NTP)".to_owned(),
        );
    };
    let off = Duration::from_millis(skew.median_ms.unsigned_abs());
    let direction = if skew.median_ms > 0 {
        "behind"
    } else {
        "ahead of"
    };
    let detail = format!(
        "this clock is {} {direction} the median of {} peer(s)",
        human_skew(off),
        skew.peers
    );
    if off >= c.max_clock_skew {
        problem(
            "clock",
            format!(
                "{detail}: names you register are refused by peers (more than {} off)",
                human_duration(c.max_clock_skew)
            ),
            FIX,
        )
    } else if off >= c.max_clock_skew / 4 {
        warning(
            "clock",
            format!(
                "{detail}; at {} names you register are refused",
                human_duration(c.max_clock_skew)
            ),
            FIX,
        )
    } else {
        ok("clock", detail)
    }
}

/// A skew in the unit that makes it readable (milliseconds are noise below a second).
fn human_skew(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        human_duration(d)
    }
}

/// Whether calls can get through NAT: TURN from our relays, or (on a relay) the TURN we serve.
fn calls(c: &Checkup) -> DoctorCheck {
    let turn: Vec<&str> = c
        .ice
        .servers
        .iter()
        .flat_map(|s| s.urls.iter())
        .filter(|u| u.starts_with("turn:") || u.starts_with("turns:"))
        .map(String::as_str)
        .collect();
    let serving = if c.turn_served.is_empty() {
        String::new()
    } else {
        format!(
            "; serving TURN for registered users at {}",
            c.turn_served.join(", ")
        )
    };
    if !turn.is_empty() {
        let policy = if c.ice.relay_only {
            " (relay only: your addresses stay hidden)"
        } else {
            ""
        };
        return ok(
            "calls",
            format!("TURN available at {}{policy}{serving}", turn.join(", ")),
        );
    }
    if c.ice.relay_only {
        return problem(
            "calls",
            format!(
                "relay-only calls are on, but no TURN relay is known: every call will fail{serving}"
            ),
            TURN_FIX,
        );
    }
    if !c.turn_served.is_empty() {
        return ok("calls", serving.trim_start_matches("; ").to_owned());
    }
    if c.status.net.relay_served.is_some() {
        return ok(
            "calls",
            "this relay serves no TURN; `--turn <udp addr> --turn-public-ip <ip>` would help its users' calls through NAT".to_owned(),
        );
    }
    warning(
        "calls",
        "no TURN relay: calls connect directly, which fails when both sides are behind strict NATs"
            .to_owned(),
        TURN_FIX,
    )
}

fn mailboxes(c: &Checkup) -> DoctorCheck {
    if c.mailboxes.is_empty() {
        return warning(
            "mailboxes",
            "no mailbox relay: messages sent to you while you are offline wait at the sender until you are both online".to_owned(),
            RELAY_FIX,
        );
    }
    let mut lines = Vec::new();
    let mut failing = Vec::new();
    for (relay, state) in &c.mailboxes {
        match (&state.last_error, state.last_sync) {
            (Some(e), _) => {
                lines.push(format!("{relay}: last sync failed ({e})"));
                failing.push(relay.clone());
            }
            (None, Some(at)) => lines.push(format!("{relay}: synced {}", ago(at))),
            (None, None) => lines.push(format!("{relay}: not synced yet")),
        }
    }
    let pointer = match (
        &c.mailbox_pointer.last_error,
        c.mailbox_pointer.last_success,
    ) {
        (Some(e), _) => format!("; mailbox pointer not published ({e})"),
        (None, Some(at)) => format!("; mailbox pointer published {}", ago(at)),
        (None, None) => "; mailbox pointer not published yet".to_owned(),
    };
    let detail = format!("{}{pointer}", lines.join("; "));
    if failing.len() == c.mailboxes.len() {
        problem(
            "mailboxes",
            detail,
            "check that the relay addresses in bootstrap.toml are right and the relays are up (`kith peers` shows whether one is connected)",
        )
    } else {
        ok("mailboxes", detail)
    }
}

fn names(c: &Checkup) -> DoctorCheck {
    if c.owned_names == 0 {
        return ok(
            "names",
            "no name registered (friends can still add you by invite: `kith invite`); register one with `kith name register <name>`".to_owned(),
        );
    }
    let mut check = publication(
        "names",
        &format!("{} name(s) you own", c.owned_names),
        &c.names,
        c.status.uptime,
    );
    if check.level == "ok" && c.names.last_success.is_none() {
        check.detail = format!(
            "{} name(s) you own: published at registration, re-published every few hours while the node runs",
            c.owned_names
        );
    }
    check
}

const RIVAL_FIX: &str = "keep this node running so it re-publishes your claim (`kith name register <name>` renews it now), and give friends your invite link (`kith invite`) or compare safety numbers (`kith verify`): a name found by invite or pinned before the rival appeared never follows the rival";

/// Rival claims for names we own: other keys some DHT holders return. `None` when we own no
/// names.
fn name_rivals(c: &Checkup) -> Option<DoctorCheck> {
    let claims = &c.name_claims;
    if claims.checked.is_empty() && claims.unchecked.is_empty() {
        return None;
    }
    let unchecked = if claims.unchecked.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = claims
            .unchecked
            .iter()
            .map(|(name, why)| {
                if name.is_empty() {
                    why.clone()
                } else {
                    format!("'{name}': {why}")
                }
            })
            .collect();
        format!("; not checked: {}", list.join("; "))
    };
    if claims.rivals.is_empty() {
        if claims.checked.is_empty() {
            return Some(warning(
                "name_rivals",
                format!("could not ask the DHT about your names{unchecked}"),
                BOOTSTRAP_FIX,
            ));
        }
        return Some(ok(
            "name_rivals",
            format!(
                "no other key claims {} at any of their replica keys{unchecked}",
                quoted(&claims.checked)
            ),
        ));
    }
    let mut lines = Vec::new();
    let mut lost = false;
    for r in &claims.rivals {
        let standing = if r.resolvers_get_us() {
            "you hold the majority and it wins no key, so resolvers get you and list it as a rival"
                .to_owned()
        } else {
            lost = true;
            "it wins some of the name's keys or you hold no majority: fresh resolvers get a conflict, or the rival".to_owned()
        };
        lines.push(format!(
            "'{}' is also claimed by {} ({} holder(s), most holders at {} of {} keys; yours: {} holder(s), {} keys): {standing}",
            r.name,
            r.rival,
            r.holders,
            r.replicas,
            kith_core::NAME_REPLICAS,
            r.our_holders,
            r.our_replicas,
        ));
    }
    let detail = format!("{}{unchecked}", lines.join("; "));
    Some(if lost {
        problem("name_rivals", detail, RIVAL_FIX)
    } else {
        warning("name_rivals", detail, RIVAL_FIX)
    })
}

fn quoted(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn publication(id: &str, what: &str, p: &Publication, uptime: Duration) -> DoctorCheck {
    match (&p.last_error, p.last_success) {
        (Some(e), last) => problem(
            id,
            format!(
                "{what}: the last publication failed ({e}){}",
                last.map(|at| format!("; last published {}", ago(at)))
                    .unwrap_or_default()
            ),
            BOOTSTRAP_FIX,
        ),
        (None, Some(at)) => ok(id, format!("{what}: published {}", ago(at))),
        (None, None) if uptime < GRACE || p.last_attempt.is_some() => {
            ok(id, format!("{what}: first publication shortly after start"))
        }
        (None, None) => problem(id, format!("{what}: never published"), BOOTSTRAP_FIX),
    }
}

fn ok(check: &str, detail: String) -> DoctorCheck {
    DoctorCheck {
        check: check.to_owned(),
        level: "ok".to_owned(),
        detail,
        fix: None,
    }
}

fn warning(check: &str, detail: String, fix: &str) -> DoctorCheck {
    DoctorCheck {
        check: check.to_owned(),
        level: "warning".to_owned(),
        detail,
        fix: Some(fix.to_owned()),
    }
}

fn problem(check: &str, detail: String, fix: &str) -> DoctorCheck {
    DoctorCheck {
        check: check.to_owned(),
        level: "problem".to_owned(),
        detail,
        fix: Some(fix.to_owned()),
    }
}

fn join<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn ago(at: SystemTime) -> String {
    match SystemTime::now().duration_since(at) {
        Ok(d) => format!("{} ago", human_duration(d)),
        Err(_) => "just now".to_owned(),
    }
}

fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use kith_core::SkewEstimate;
    use kith_net::{DhtMode, NatStatus, NetStatus, PeerId};
    use kith_service::Status;

    fn checkup(clock_skew: Option<SkewEstimate>) -> Checkup {
        Checkup {
            status: Status {
                net: NetStatus {
                    peer_id: PeerId::random(),
                    listen_addrs: vec!["/ip4/127.0.0.1/tcp/4717".parse().unwrap()],
                    external_addrs: Vec::new(),
                    connected_peers: 3,
                    routing_table_peers: 3,
                    dht_records: 0,
                    dht_mode: DhtMode::Auto,
                    dht_server: true,
                    nat: NatStatus::Unknown,
                    relayed_via: Vec::new(),
                    relay_served: None,
                    connections_inbound: 1,
                    connections_outbound: 2,
                    connections_low: 64,
                    connections_high: 96,
                    connections_trimmed: 0,
                    connections_idle_closed: 0,
                    connections_refused: 0,
                    hole_punch: Default::default(),
                    dm_link_peers: 0,
                },
                version: "test",
                uptime: Duration::from_secs(3600),
                known_peers: 3,
                store_bytes: 0,
                events_dropped: 0,
            },
            owned_names: 0,
            names: Publication::default(),
            key_bundle: Publication::default(),
            mailbox_pointer: Publication::default(),
            mailboxes: Vec::new(),
            ice: Default::default(),
            turn_served: Vec::new(),
            clock_skew,
            max_clock_skew: Duration::from_secs(600),
            name_claims: Default::default(),
        }
    }

    fn clock_check(skew_ms: Option<i64>) -> DoctorCheck {
        let report = diagnose(&checkup(skew_ms.map(|median_ms| SkewEstimate {
            median_ms,
            peers: 3,
        })));
        report
            .checks
            .into_iter()
            .find(|c| c.check == "clock")
            .unwrap()
    }

    #[test]
    fn the_clock_check_judges_the_measured_skew() {
        let unknown = clock_check(None);
        assert_eq!(unknown.level, "ok");
        assert!(unknown.detail.contains("not measured yet"), "{unknown:?}");

        let fine = clock_check(Some(-250));
        assert_eq!(fine.level, "ok", "{fine:?}");
        assert_eq!(
            fine.detail,
            "this clock is 250 ms ahead of the median of 3 peer(s)"
        );

        let off = clock_check(Some(3 * 60_000));
        assert_eq!(off.level, "warning", "{off:?}");
        assert!(
            off.detail.starts_with("this clock is 3 min behind"),
            "{off:?}"
        );
        assert!(off.fix.unwrap().contains("timedatectl set-ntp true"));

        let broken = clock_check(Some(-11 * 60_000));
        assert_eq!(broken.level, "problem", "{broken:?}");
        assert!(broken.detail.contains("refused by peers"), "{broken:?}");
        let report = diagnose(&checkup(Some(SkewEstimate {
            median_ms: -11 * 60_000,
            peers: 3,
        })));
        assert!(
            !report.healthy,
            "a clock names refuse makes the node unhealthy"
        );
    }
}
