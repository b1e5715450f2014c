//! Call signalling between real nodes on loopback: ring, accept, browser signals both ways and
//! hang-up; a caller's offer that reaches the callee while it rings; decline, busy, crossing calls that become one, an unknown caller who never rings, a
//! stopped callee (unavailable, then the missed call when it is back), a ring flood and malformed
//! signals. Media itself runs in browsers (tests/browser/tests/calls.test.js).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::time::{Duration, Instant};

use kith_service::{
    CallEvent, CallId, CallOutcome, CallState, CallTarget, MessageEvent, Options, ServiceError,
};
use tokio::sync::broadcast;

use crate::harness::{
    POLL, TestNode, Transports, name_options, star_with, wait_for_mesh, wait_until,
};

const MESH: Duration = Duration::from_secs(20);
/// For a signal to cross between two loopback nodes (it is normally milliseconds).
const HOP: Duration = Duration::from_secs(10);
/// Short ring timeout for these tests (unavailable after the same).
const RING: Duration = Duration::from_secs(3);

/// `from` calls `to` (with video when `video`).
async fn call_person(
    from: &TestNode,
    to: libp2p::PeerId,
    video: bool,
) -> Result<kith_service::CallInfo, ServiceError> {
    from.node()
        .start_call(CallTarget::Person(to.to_string()), video)
        .await
}

fn options() -> Options {
    Options {
        first_republish_after: Duration::from_millis(200),
        call_ring_timeout: RING,
        ..name_options()
    }
}

async fn nodes(n: usize) -> Vec<TestNode> {
    let nodes = star_with(n, options(), Transports::Tcp).await.unwrap();
    wait_for_mesh(&nodes, &[], MESH).await.unwrap();
    nodes
}

/// Two nodes where A's calls ring at B (B accepted A's first message).
async fn acquainted_pair() -> (TestNode, TestNode) {
    let mut all = nodes(2).await;
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    acquaint(&a, &b).await;
    (a, b)
}

/// `from`'s first text makes `to` know it; `to` accepts, so calls from `from` ring.
async fn acquaint(from: &TestNode, to: &TestNode) {
    let sent = tokio::time::timeout(
        Duration::from_secs(30),
        from.node().send_text(&to.peer_id().to_string(), "hello"),
    )
    .await
    .unwrap()
    .unwrap();
    wait_until(
        "the hello to arrive",
        Duration::from_secs(30),
        POLL,
        async || {
            to.node()
                .history(&from.peer_id().to_string(), 10, None)
                .await
                .is_ok_and(|h| h.1.iter().any(|m| m.id == sent.id))
        },
    )
    .await
    .unwrap();
    to.node().accept(&from.peer_id().to_string()).await.unwrap();
}

/// The next call event that `pick` accepts, within `within`.
async fn next_call_event<T>(
    events: &mut broadcast::Receiver<MessageEvent>,
    within: Duration,
    what: &str,
    mut pick: impl FnMut(&CallEvent) -> Option<T>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.recv()).await {
            Ok(Ok(MessageEvent::Call(event))) => {
                if let Some(found) = pick(&event) {
                    return found;
                }
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("event stream failed while waiting for {what}: {e}"),
            Err(_) => panic!("no {what} within {within:?}"),
        }
    }
}

async fn incoming(events: &mut broadcast::Receiver<MessageEvent>) -> CallId {
    next_call_event(events, HOP, "incoming call", |e| match e {
        CallEvent::Incoming(call) => Some(call.record.call_id),
        _ => None,
    })
    .await
}

async fn ended(
    events: &mut broadcast::Receiver<MessageEvent>,
    id: CallId,
    within: Duration,
) -> kith_service::CallInfo {
    next_call_event(events, within, "end of the call", |e| match e {
        CallEvent::Ended(call) if call.record.call_id == id => Some(call.clone()),
        _ => None,
    })
    .await
}

/// Whether `node`'s conversation with `with` shows a message with `text`.
async fn conversation_shows(node: &TestNode, with: &TestNode, text: &str) -> bool {
    node.node()
        .history(&with.peer_id().to_string(), 50, None)
        .await
        .is_ok_and(|(_, h)| h.iter().any(|m| m.text == text))
}

async fn wait_shows(node: &TestNode, with: &TestNode, text: &str) {
    wait_until(
        &format!("'{text}' in the conversation"),
        HOP * 3,
        POLL,
        async || conversation_shows(node, with, text).await,
    )
    .await
    .unwrap();
}

/// A signal as the web app posts it.
fn browser(to: Option<libp2p::PeerId>, kind: &str, data: &str) -> kith_service::BrowserSignal {
    kith_service::BrowserSignal {
        to,
        kind: kind.to_owned(),
        data: data.to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_rings_joins_carries_signals_both_ways_and_ends_on_both_sides() {
    let (a, b) = acquainted_pair().await;
    let mut a_events = a.node().subscribe();
    let mut b_events = b.node().subscribe();

    let call = call_person(&a, b.peer_id(), true).await.unwrap();
    let id = call.record.call_id;
    assert_eq!(call.state, CallState::Ringing);
    assert_eq!(incoming(&mut b_events).await, id, "B rings for A's call");
    next_call_event(&mut a_events, HOP, "ringing", |e| {
        matches!(e, CallEvent::Ringing(c) if c.record.call_id == id).then_some(())
    })
    .await;
    // A second call while this one rings is refused on A's side.
    assert!(matches!(
        call_person(&a, b.peer_id(), false).await,
        Err(ServiceError::CallBusy)
    ));

    let accepted = b.node().accept_call(&id).unwrap();
    assert_eq!(accepted.state, CallState::Active);
    next_call_event(&mut a_events, HOP, "B joining", |e| match e {
        CallEvent::Joined { call, peer } if call.record.call_id == id => {
            assert_eq!(*peer, b.peer_id());
            assert_eq!(call.state, CallState::Active);
            Some(())
        }
        _ => None,
    })
    .await;

    // The joiner offers; the caller answers; candidates both ways, in order, with their JSON.
    let offer = r#"{"type":"offer","sdp":"v=0 fingerprint:sha-256 AB:CD"}"#;
    b.node()
        .call_signal(&id, browser(None, "sdp", offer))
        .unwrap();
    let candidate = r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0"}"#;
    b.node()
        .call_signal(&id, browser(Some(a.peer_id()), "ice", candidate))
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let signal = next_call_event(&mut a_events, HOP, "B's signals", |e| match e {
            CallEvent::Signal { call_id, signal } if *call_id == id => Some(signal.clone()),
            _ => None,
        })
        .await;
        got.push(signal);
    }
    got.sort_by_key(|s| s.seq);
    assert_eq!(got.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2]);
    let kinds: Vec<(&str, &str)> = got
        .iter()
        .map(|s| (s.kind.as_str(), s.data.as_str()))
        .collect();
    assert!(kinds.contains(&("sdp", offer)), "{kinds:?}");
    assert!(kinds.contains(&("ice", candidate)), "{kinds:?}");
    assert!(got.iter().all(|s| s.from == b.peer_id()));
    // A page that opens late reads the same signals from the call itself.
    let (_, kept) = a.node().call(&id).unwrap();
    assert_eq!(kept.len(), 2);
    let answer = r#"{"type":"answer","sdp":"v=0"}"#;
    a.node()
        .call_signal(&id, browser(None, "sdp", answer))
        .unwrap();
    next_call_event(&mut b_events, HOP, "A's answer", |e| match e {
        CallEvent::Signal { call_id, signal } if *call_id == id => {
            assert_eq!(signal.data, answer);
            Some(())
        }
        _ => None,
    })
    .await;

    tokio::time::sleep(Duration::from_millis(1100)).await;
    let hung_up_at = Instant::now();
    let b_side = b.node().hangup_call(&id).unwrap();
    assert_eq!(b_side.state, CallState::Ended);
    assert_eq!(b_side.record.outcome, Some(CallOutcome::Completed));
    let a_side = ended(&mut a_events, id, Duration::from_secs(2)).await;
    assert!(hung_up_at.elapsed() < Duration::from_secs(2));
    assert_eq!(a_side.record.outcome, Some(CallOutcome::Completed));
    assert!(a_side.record.duration_ms() >= 1000, "{:?}", a_side.record);

    // Both histories hold the call, and both conversations the caller's summary.
    let a_calls = a.node().calls(10).unwrap();
    assert_eq!(a_calls.len(), 1);
    assert!(a_calls[0].record.outgoing && a_calls[0].record.video);
    let b_calls = b.node().calls(10).unwrap();
    assert_eq!(b_calls[0].record.outcome, Some(CallOutcome::Completed));
    assert!(!b_calls[0].record.outgoing);
    let text = kith_service::summary_text(
        CallOutcome::Completed,
        true,
        a_side.record.duration_ms(),
        true,
    );
    assert!(text.starts_with("video call, "), "{text}");
    wait_shows(&a, &b, &text).await;
    wait_shows(&b, &a, &text).await;
    // Signals are never chat text.
    let (_, history) = b
        .node()
        .history(&a.peer_id().to_string(), 50, None)
        .await
        .unwrap();
    assert!(history.iter().all(|m| !m.text.contains("fingerprint")));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_caller_who_offers_reaches_the_callee_while_it_rings_so_joining_is_one_hop() {
    let (a, b) = acquainted_pair().await;
    let mut a_events = a.node().subscribe();
    let mut b_events = b.node().subscribe();

    let call = a
        .node()
        .start_call_offering(CallTarget::Person(b.peer_id().to_string()), false)
        .await
        .unwrap();
    let id = call.record.call_id;
    assert!(call.caller_offers);
    // B rings, told that A's offer follows.
    let ring = next_call_event(&mut b_events, HOP, "incoming call", |e| match e {
        CallEvent::Incoming(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ring.record.call_id, id);
    assert!(ring.caller_offers, "the invitation says an offer follows");
    // A's page offers while B rings: B's node passes it on and keeps it for the page that
    // accepts, with the candidate after it.
    let offer = r#"{"type":"offer","sdp":"v=0 fingerprint:sha-256 AB:CD"}"#;
    let candidate = r#"{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0"}"#;
    a.node()
        .call_signal(&id, browser(None, "sdp", offer))
        .unwrap();
    a.node()
        .call_signal(&id, browser(Some(b.peer_id()), "ice", candidate))
        .unwrap();
    next_call_event(&mut b_events, HOP, "A's offer while ringing", |e| match e {
        CallEvent::Signal { call_id, signal } if *call_id == id && signal.kind == "sdp" => {
            assert_eq!(signal.data, offer);
            Some(())
        }
        _ => None,
    })
    .await;
    wait_until(
        "B's node to keep the offer and the candidate",
        HOP,
        POLL,
        async || b.node().call(&id).is_ok_and(|(_, kept)| kept.len() == 2),
    )
    .await
    .unwrap();
    let (info, kept) = b.node().call(&id).unwrap();
    assert_eq!(
        info.state,
        CallState::Ringing,
        "still ringing: nobody accepted"
    );
    assert!(info.caller_offers);
    // (Signals sent in one delivery round travel side by side: their order of arrival varies.)
    let mut kept: Vec<(&str, &str)> = kept
        .iter()
        .map(|s| (s.kind.as_str(), s.data.as_str()))
        .collect();
    kept.sort_unstable();
    assert_eq!(kept, vec![("ice", candidate), ("sdp", offer)]);

    // B joins and answers: A hears the join and the answer (one delivery round, either order),
    // and nothing else is needed.
    b.node().accept_call(&id).unwrap();
    let answer = r#"{"type":"answer","sdp":"v=0"}"#;
    b.node()
        .call_signal(&id, browser(None, "sdp", answer))
        .unwrap();
    let (mut joined, mut answered) = (false, false);
    while !(joined && answered) {
        next_call_event(&mut a_events, HOP, "B joining and answering", |e| match e {
            CallEvent::Joined { call, peer } if call.record.call_id == id => {
                assert_eq!(*peer, b.peer_id());
                joined = true;
                Some(())
            }
            CallEvent::Signal { call_id, signal } if *call_id == id => {
                assert_eq!(
                    (signal.kind.as_str(), signal.data.as_str()),
                    ("sdp", answer)
                );
                answered = true;
                Some(())
            }
            _ => None,
        })
        .await;
    }
    a.node().hangup_call(&id).unwrap();
    ended(&mut b_events, id, HOP).await;

    // A call placed the older way says nothing of an offer: the callee offers when it joins.
    // (B answered the last call, so A may ring again at once.)
    let plain = call_person(&a, b.peer_id(), false).await.unwrap();
    assert!(!plain.caller_offers);
    let ring = next_call_event(&mut b_events, HOP, "the second call", |e| match e {
        CallEvent::Incoming(c) => Some(c.clone()),
        _ => None,
    })
    .await;
    assert_eq!(ring.record.call_id, plain.record.call_id);
    assert!(!ring.caller_offers);
    a.node().hangup_call(&plain.record.call_id).unwrap();
    ended(&mut b_events, plain.record.call_id, HOP).await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn declined_busy_and_crossing_calls() {
    let mut all = nodes(3).await;
    let c = all.pop().unwrap();
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    acquaint(&a, &b).await;
    acquaint(&c, &b).await;
    acquaint(&b, &a).await;
    let mut a_events = a.node().subscribe();
    let mut b_events = b.node().subscribe();

    // Declined: recorded on both sides, "declined" in both conversations.
    let call = call_person(&a, b.peer_id(), false).await.unwrap();
    let id = incoming(&mut b_events).await;
    assert_eq!(id, call.record.call_id);
    let declined = b.node().decline_call(&id).unwrap();
    assert_eq!(declined.record.outcome, Some(CallOutcome::Declined));
    let a_side = ended(&mut a_events, id, HOP).await;
    assert_eq!(a_side.record.outcome, Some(CallOutcome::Declined));
    wait_shows(&a, &b, "declined").await;
    wait_shows(&b, &a, "declined").await;

    // Busy: B is in a call with A; C's call is answered busy and C sees it as such at once.
    // (B declined, so A may ring again at once: no flood.)
    let call = call_person(&a, b.peer_id(), false).await.unwrap();
    let id = incoming(&mut b_events).await;
    assert_eq!(id, call.record.call_id);
    b.node().accept_call(&id).unwrap();
    let mut c_events = c.node().subscribe();
    let c_call = call_person(&c, b.peer_id(), false).await.unwrap();
    let c_side = ended(&mut c_events, c_call.record.call_id, HOP).await;
    assert_eq!(c_side.record.outcome, Some(CallOutcome::Busy));
    wait_shows(&b, &c, "missed call").await;
    a.node().hangup_call(&id).unwrap();
    ended(&mut b_events, id, HOP).await;

    // Crossing: A and B call each other at once and end up in one call, the earlier id.
    let (from_a, from_b) = tokio::join!(
        call_person(&a, b.peer_id(), false),
        call_person(&b, a.peer_id(), false)
    );
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    let winner = from_a.record.call_id.min(from_b.record.call_id);
    wait_until("both sides in one active call", HOP, POLL, async || {
        [&a, &b].iter().all(|n| {
            n.node()
                .call(&winner)
                .is_ok_and(|(c, _)| c.state == CallState::Active)
        })
    })
    .await
    .unwrap();
    let loser = from_a.record.call_id.max(from_b.record.call_id);
    for n in [&a, &b] {
        let live: Vec<_> = n
            .node()
            .calls(10)
            .unwrap()
            .into_iter()
            .filter(|c| c.state != CallState::Ended)
            .collect();
        assert_eq!(live.len(), 1, "one call, not two");
        assert_eq!(live[0].record.call_id, winner);
        assert!(
            n.node()
                .calls(10)
                .unwrap()
                .iter()
                .all(|c| c.record.call_id != loser)
        );
    }
    a.node().hangup_call(&winner).unwrap();
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn strangers_never_ring_floods_ring_once_and_bad_signals_are_refused() {
    let mut all = nodes(3).await;
    let stranger = all.pop().unwrap();
    let b = all.pop().unwrap();
    let a = all.pop().unwrap();
    acquaint(&a, &b).await;
    let mut b_events = b.node().subscribe();

    // A stranger's call never rings; their caller sees "unavailable", B a missed call request.
    // (The stranger's first text makes B know their key; B does not accept.)
    stranger
        .node()
        .send_text(&b.peer_id().to_string(), "hi, it's me")
        .await
        .unwrap();
    let mut s_events = stranger.node().subscribe();
    let s_call = call_person(&stranger, b.peer_id(), true).await.unwrap();
    let s_side = ended(&mut s_events, s_call.record.call_id, RING + HOP).await;
    assert_eq!(s_side.record.outcome, Some(CallOutcome::Unavailable));
    wait_shows(&b, &stranger, "missed video call").await;
    let request = b
        .node()
        .inbox()
        .unwrap()
        .into_iter()
        .find(|c| c.peer == stranger.peer_id())
        .unwrap();
    assert_eq!(
        request.trust,
        kith_service::Trust::Unknown,
        "still a request"
    );

    // A flood: call and hang up ten times in a row. B rings once; the rest are refused.
    let refused_before = b.metric("kith_call_signals_refused_total");
    for _ in 0..10 {
        let call = call_person(&a, b.peer_id(), false).await.unwrap();
        a.node().hangup_call(&call.record.call_id).unwrap();
    }
    wait_until("B to refuse the flood", HOP * 2, POLL, async || {
        b.metric("kith_call_signals_refused_total") >= refused_before + 9.0
    })
    .await
    .unwrap();
    let mut rang = 0;
    while let Ok(Ok(event)) =
        tokio::time::timeout(Duration::from_millis(500), b_events.recv()).await
    {
        if matches!(event, MessageEvent::Call(CallEvent::Incoming(_))) {
            rang += 1;
        }
    }
    assert_eq!(rang, 1, "a flood rings once");

    // Bad signals from our own API: clear errors, nothing sent.
    let live = a.node().calls(1).unwrap()[0].record.call_id;
    assert!(matches!(
        a.node().call_signal(&[7; 16], browser(None, "sdp", "{}")),
        Err(ServiceError::UnknownCall(_))
    ));
    assert!(
        matches!(
            a.node().call_signal(&live, browser(None, "sdp", "{}")),
            Err(ServiceError::UnknownCall(_))
        ),
        "an ended call takes no signals"
    );
    assert!(matches!(
        call_person(&a, a.peer_id(), false).await,
        Err(ServiceError::InvalidMessage(_))
    ));
    for n in [a, b, stranger] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_to_a_stopped_node_is_unavailable_and_the_missed_call_arrives_when_it_is_back() {
    let (a, b) = acquainted_pair().await;
    let bootstrap = vec![a.tcp_addr()];
    let stopped = b.stop_keeping_home().await.unwrap();
    let mut a_events = a.node().subscribe();
    let started = Instant::now();
    let call = call_person(&a, stopped.peer_id(), false).await.unwrap();
    let a_side = ended(&mut a_events, call.record.call_id, Duration::from_secs(30)).await;
    assert_eq!(a_side.record.outcome, Some(CallOutcome::Unavailable));
    assert!(started.elapsed() < Duration::from_secs(30));
    let b = stopped.start(bootstrap).await.unwrap();
    wait_until(
        "the missed call to reach B",
        Duration::from_secs(60),
        POLL,
        async || conversation_shows(&b, &a, "missed call").await,
    )
    .await
    .unwrap();
    let b_calls = b.node().calls(10).unwrap();
    assert_eq!(b_calls.len(), 1);
    assert_eq!(b_calls[0].record.outcome, Some(CallOutcome::Unavailable));
    assert!(!b_calls[0].record.outgoing);
    // The invitation itself expired: it never rings late.
    let mut b_events = b.node().subscribe();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if let Ok(MessageEvent::Call(CallEvent::Incoming(_))) = b_events.recv().await {
                    return;
                }
            }
        })
        .await
        .is_err(),
        "a stale invitation rang"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_hands_its_registered_users_turn_credentials_for_calls() {
    const SECRET: &[u8] = b"a test secret of thirty-two bytes";
    let urls = vec![
        "stun:127.0.0.1:34780".to_owned(),
        "turn:127.0.0.1:34780?transport=udp".to_owned(),
    ];
    let relay = TestNode::start_with(
        Vec::new(),
        Options {
            mailbox_server: Some(kith_service::MailboxConfig::default()),
            turn: Some(kith_service::TurnIssuer {
                secret: SECRET.to_vec(),
                urls: urls.clone(),
                ttl: Duration::from_secs(3600),
            }),
            ..options()
        },
        Transports::Tcp,
    )
    .await
    .unwrap();
    assert!(
        relay.node().ice_config().servers.is_empty(),
        "a relay asks nobody"
    );
    let a = TestNode::start_with_mailbox(&relay, options())
        .await
        .unwrap();
    wait_until(
        "A to get TURN credentials from its relay",
        MESH * 3,
        POLL,
        async || !a.node().ice_config().servers.is_empty(),
    )
    .await
    .unwrap();
    let ice = a.node().ice_config();
    assert_eq!(ice.servers.len(), 1);
    let server = &ice.servers[0];
    assert_eq!(server.urls, urls);
    let (expiry, user) = server.username.split_once(':').unwrap();
    assert_eq!(user, a.peer_id().to_string(), "credentials name the user");
    let expiry: u64 = expiry.parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(expiry > now && expiry <= now + 3600, "{expiry} vs {now}");
    // The password is the one the relay's TURN server recomputes from the username.
    let expected = kith_turn::Credentials::mint(SECRET, user, Duration::ZERO, expiry);
    assert_eq!(expected.username, server.username);
    assert_eq!(expected.password, server.credential);
    assert!(
        kith_turn::check_username(&server.username, now, kith_turn::MAX_CREDENTIAL_TTL).is_ok()
    );
    // Doctor says calls can get through NAT.
    let checkup = a.node().checkup().await.unwrap();
    assert_eq!(checkup.ice.servers.len(), 1);
    // A page keeps the last ICE answer and asks again only when told it changed: every change
    // is told, a setting that changes nothing is not.
    let mut events = a.node().subscribe();
    a.node().set_relay_only(true);
    a.node().set_relay_only(true);
    a.node().set_ice_servers(vec![kith_service::IceServer {
        urls: vec!["stun:127.0.0.1:34781".to_owned()],
        username: String::new(),
        credential: String::new(),
    }]);
    let mut told = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, MessageEvent::Call(CallEvent::IceChanged)) {
            told += 1;
        }
    }
    assert_eq!(told, 2, "relay-only on, then the servers: two changes");
    let ice = a.node().ice_config();
    assert!(ice.relay_only);
    assert_eq!(
        ice.servers.len(),
        2,
        "the configured server, then the relay's TURN"
    );
    a.shutdown().await.unwrap();
    relay.shutdown().await.unwrap();
}
