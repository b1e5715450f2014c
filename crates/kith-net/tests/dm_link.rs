//! Direct-message links on real swarms over loopback TCP: after a first message as a request, the
//! next ones go on one long-lived stream, answered in order; a link that breaks or idles is
//! replaced, a peer without links is still reached, and a hostile frame closes the link.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{TestNode, WAIT, metrics_text, poll_until};
use futures::{AsyncWriteExt as _, StreamExt as _};
use kith_net::{Channel, Event, Multiaddr, PeerId};

/// A bare swarm (TCP, Noise, Yamux, plain streams) dialing `to`, for writing a link by hand.
fn raw_stream_peer(to: &Multiaddr) -> (libp2p_stream::Control, tokio::task::JoinHandle<()>) {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let control = swarm.behaviour().new_control();
    swarm.dial(to.clone()).unwrap();
    let task = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    (control, task)
}

/// A node that answers every direct message with `got <bytes>`, on links (when `links`) and as
/// requests. Returns the number of messages that came as requests.
fn answer_everything(node: &mut TestNode, links: bool) -> tokio::sync::watch::Receiver<usize> {
    let (requests_tx, requests) = tokio::sync::watch::channel(0usize);
    if links {
        let mut incoming = node.client.accept_dm_links().unwrap();
        tokio::spawn(async move {
            while let Some((_, link)) = incoming.next().await {
                tokio::spawn(link.serve(|bytes| async move {
                    // Answers take longer for earlier frames, so in-order answering is tested.
                    let delay =
                        20u64.saturating_sub(u64::from(bytes.last().copied().unwrap_or(0)) % 20);
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let mut answer = b"got ".to_vec();
                    answer.extend(bytes);
                    answer
                }));
            }
        });
    }
    let client = node.client.clone();
    let mut events = std::mem::replace(&mut node.events, tokio::sync::mpsc::channel(1).1);
    tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            if let Event::Request {
                channel: Channel::Dm,
                request,
                bytes,
                ..
            } = event
            {
                requests_tx.send_modify(|n| *n += 1);
                let mut answer = b"got ".to_vec();
                answer.extend(bytes);
                let _ = client.respond_dm(request, answer).await;
            }
        }
    });
    requests
}

/// A, answering everything (on links when `links`), and B dialing it, both configured by
/// `configure` on a network of their own; with A's count of messages that came as requests.
async fn pair(
    configure: impl Fn(kith_net::Config) -> kith_net::Config,
    links: bool,
) -> (TestNode, TestNode, tokio::sync::watch::Receiver<usize>) {
    let mut a = TestNode::start_with(None, |c| configure(c.with_network_id("links"))).await;
    let b = TestNode::start_with(None, |c| configure(c.with_network_id("links"))).await;
    let requests = answer_everything(&mut a, links);
    b.client.dial(a.addr.clone()).await.unwrap();
    (a, b, requests)
}

async fn send(from: &TestNode, to: &TestNode, body: &[u8]) -> Vec<u8> {
    tokio::time::timeout(
        WAIT,
        from.client
            .send_dm(to.peer_id, body.to_vec(), vec![to.addr.clone()]),
    )
    .await
    .expect("the send did not finish")
    .expect("the message was not answered")
}

async fn link_open(from: &TestNode, to: PeerId) {
    poll_until("a direct-message link", || async {
        from.client.has_dm_link(&to).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_the_first_go_on_one_link_answered_in_order() {
    let (a, b, requests) = pair(|c| c, true).await;

    assert_eq!(send(&b, &a, b"first").await, b"got first");
    assert_eq!(*requests.borrow(), 1, "the first message is a request");
    link_open(&b, a.peer_id).await;

    // 64 at once, each answer checked against its own message.
    let sends = (0..64u8).map(|i| {
        let (a, b) = (&a, &b);
        async move {
            let body = [b'm', i];
            (body, send(b, a, &body).await)
        }
    });
    for (body, answer) in futures::future::join_all(sends).await {
        let mut expected = b"got ".to_vec();
        expected.extend(body);
        assert_eq!(answer, expected);
    }
    assert_eq!(*requests.borrow(), 1, "later messages went on the link");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_link_closes_and_the_next_message_opens_another() {
    let idle = |mut c: kith_net::Config| {
        c.dm_link_idle = Duration::from_millis(300);
        c
    };
    let (a, b, requests) = pair(idle, true).await;
    send(&b, &a, b"first").await;
    link_open(&b, a.peer_id).await;
    send(&b, &a, b"second").await;
    assert_eq!(*requests.borrow(), 1);

    poll_until("the idle link to close", || async {
        (!b.client.has_dm_link(&a.peer_id)).then_some(())
    })
    .await;
    // Closed on both sides: A no longer counts it (its peer could open only two).
    assert_eq!(send(&b, &a, b"third").await, b"got third");
    assert_eq!(
        *requests.borrow(),
        2,
        "with no link, a message is a request again"
    );
    link_open(&b, a.peer_id).await;
    assert_eq!(send(&b, &a, b"fourth").await, b"got fourth");
    assert_eq!(*requests.borrow(), 2);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_without_links_is_reached_by_requests() {
    // A takes no links (an older node): B's attempt is refused and B keeps sending requests.
    let (a, b, requests) = pair(|c| c, false).await;
    for i in 0..5u8 {
        assert_eq!(
            send(&b, &a, &[i]).await,
            [b"got ".as_slice(), &[i]].concat()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!b.client.has_dm_link(&a.peer_id));
    assert_eq!(*requests.borrow(), 5);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_on_a_link_is_refused_and_counted() {
    let (a, b, _requests) = pair(|c| c, true).await;
    poll_until("a connection", || async {
        b.connected(a.peer_id).await.then_some(())
    })
    .await;

    // A link opened by hand from a bare swarm, announcing a frame over the 256 KiB limit.
    let (mut control, raw) = raw_stream_peer(&a.addr);
    let mut stream = control
        .open_stream(
            a.peer_id,
            libp2p::StreamProtocol::new(kith_net::LINK_PROTOCOL),
        )
        .await
        .unwrap();
    let mut hostile = Vec::new();
    kith_net::frame::write_varint(10 * 1024 * 1024, &mut hostile);
    stream.write_all(&hostile).await.unwrap();
    stream.flush().await.unwrap();
    poll_until("the frame to be refused", || async {
        let text = metrics_text(&a.metrics);
        text.lines()
            .any(|l| l.starts_with("kith_dm_frames_rejected_total 1"))
            .then_some(())
    })
    .await;
    // The link is closed: reading gets the end of the stream.
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, futures::AsyncReadExt::read(&mut stream, &mut buf))
        .await
        .expect("the link stayed open");
    assert!(matches!(read, Ok(0) | Err(_)));
    // And the node still answers others.
    raw.abort();
    assert_eq!(send(&b, &a, b"after").await, b"got after");
    a.stop().await;
    b.stop().await;
}
