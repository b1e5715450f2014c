//! `/kith/dm-link/1.0.0`: direct messages on one long-lived stream per peer.
//!
//! `/kith/dm/1.0.0` opens a stream per message and hands it through both event loops: the
//! sender's command goes to its swarm, the frame comes out of the recipient's swarm as an event,
//! goes to the service through the event channel and the ack comes back the same way. On a
//! two-core machine those hand-overs, not the bytes, were most of a message's cost
//! (BENCHMARKS.md, "A message's stages, timed"). A link is a [`libp2p_stream`] stream that stays
//! open while a conversation is active: the sending task writes its frame straight into it, and
//! the recipient's task that owns the stream answers it, so a message crosses neither swarm.
//!
//! The wire: frames as in [`crate::frame`] (a varint length, then the bytes) both ways, with no
//! stream close between them. The opener sends envelopes, the other side answers each with one
//! ack, **in the order the envelopes came** (the answers may be worked out concurrently). Up to
//! [`IN_FLIGHT`] envelopes may be unanswered; the answering side reads no more until one is
//! answered. Either side closes an idle link. An envelope is idempotent by its message id, so a
//! link that breaks with envelopes unanswered loses nothing: they are sent again (on a new link,
//! or through `/kith/dm/1.0.0`), and the recipient answers a repeat as a duplicate.
//!
//! A link is opened after a message went through `/kith/dm/1.0.0` to a peer (that path dials,
//! with the addresses the service knows), so the first message to a peer costs what it did. A
//! peer that does not speak the link protocol keeps being reached through `/kith/dm/1.0.0`.

use std::{
    collections::{HashMap, VecDeque},
    fmt,
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    AsyncWriteExt as _, StreamExt as _,
    io::{BufReader, ReadHalf, WriteHalf},
    stream::FuturesOrdered,
};
use libp2p::{PeerId, StreamProtocol};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::oneshot;

use crate::{
    RequestError,
    blob::{InUse, StreamUse},
    dm::{MAX_REQUEST, MAX_RESPONSE},
    frame::{encode_frame, read_frame},
    metrics::{Kind, Metrics},
};

/// The protocol name.
pub const LINK_PROTOCOL: &str = "/kith/dm-link/1.0.0";
/// Envelopes a link carries unanswered: the sender's delivery window, and the most the answering
/// side works on at once for one link.
pub const IN_FLIGHT: usize = 64;
/// Inbound links one peer may hold open at once. A sender keeps one; a second exists only while
/// a broken one is noticed.
const MAX_INBOUND_PER_PEER: usize = 2;
/// How long a link whose peer does not speak the protocol is not tried again.
const UNSUPPORTED_FOR: Duration = Duration::from_secs(600);
/// How long after a failed attempt to open a link the next one may start.
const FAILED_FOR: Duration = Duration::from_secs(30);

/// Peer-level state of outbound links.
enum Slot {
    /// A stream is being opened; messages meanwhile use `/kith/dm/1.0.0`.
    Opening,
    Open(Arc<Link>),
    /// Not to be tried before this time: the peer refused the protocol, or the last attempt to
    /// open a link failed (a relayed connection may not carry one).
    NotBefore(Instant),
}

/// One outbound link: the write half, shared by the tasks that send on it, and the senders
/// waiting for their acks, in the order their envelopes went out.
struct Link {
    writer: tokio::sync::Mutex<WriteHalf<libp2p::Stream>>,
    waiting: Mutex<VecDeque<oneshot::Sender<Vec<u8>>>>,
    /// Set (under the writer lock) once the link must not carry anything more.
    closed: AtomicBool,
    last_used: Mutex<Instant>,
    _in_use: InUse,
}

impl Link {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    fn idle_for(&self) -> Duration {
        lock(&self.last_used).elapsed()
    }
}

/// Ends a link when dropped while holding it: a frame was cut short or failed, so the stream
/// can no longer be trusted. Its waiting senders are told (they send another way); the reading
/// side stops at its next pass and frees the slot.
struct Unfinished<'a>(Option<&'a Arc<Link>>);

impl Drop for Unfinished<'_> {
    fn drop(&mut self) {
        if let Some(link) = self.0 {
            link.closed.store(true, Ordering::Release);
            lock(&link.waiting).clear();
        }
    }
}

/// The frames of at most `max` bytes arriving on a link's read half, as a stream: unlike a
/// `read_frame` future, `next()` on it may be raced in a `select!` without losing a frame read
/// half-way (the read in progress stays inside the stream).
fn frames(
    reader: ReadHalf<libp2p::Stream>,
    max: usize,
) -> Pin<Box<impl futures::Stream<Item = io::Result<Vec<u8>>>>> {
    Box::pin(futures::stream::unfold(
        BufReader::new(reader),
        move |mut reader| async move {
            let frame = read_frame(&mut reader, max).await;
            Some((frame, reader))
        },
    ))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The [`Client`](crate::Client)'s side of links: opens them, sends on them, and knows which
/// peers have one.
#[derive(Clone)]
pub(crate) struct DmLinks {
    control: libp2p_stream::Control,
    slots: Arc<Mutex<HashMap<PeerId, Slot>>>,
    uses: StreamUse,
    metrics: Metrics,
    rejected: Counter,
    /// Whether this node opens links at all (`Config::dm_links`).
    enabled: bool,
    timeout: Duration,
    idle: Duration,
}

impl fmt::Debug for DmLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DmLinks")
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

/// What became of a send offered to a link.
pub(crate) enum LinkSend {
    /// The peer answered.
    Answered(Vec<u8>),
    /// No answer within the timeout; the link was closed.
    TimedOut,
    /// No link to send on, or it broke before the answer came: send another way (a repeat is
    /// answered as a duplicate).
    NoLink,
}

/// How [`DmLinks`] is set up (from [`crate::Config`]).
pub(crate) struct LinkSettings {
    pub(crate) enabled: bool,
    pub(crate) timeout: Duration,
    pub(crate) idle: Duration,
}

impl DmLinks {
    pub(crate) fn new(
        control: libp2p_stream::Control,
        uses: StreamUse,
        metrics: Metrics,
        settings: LinkSettings,
    ) -> Self {
        Self {
            control,
            slots: Arc::default(),
            uses,
            rejected: metrics.frames_rejected_counter(),
            metrics,
            enabled: settings.enabled,
            timeout: settings.timeout,
            idle: settings.idle,
        }
    }

    /// Whether an outbound link to `peer` is open now.
    pub(crate) fn is_open(&self, peer: &PeerId) -> bool {
        matches!(lock(&self.slots).get(peer), Some(Slot::Open(link)) if !link.closed.load(Ordering::Acquire))
    }

    /// Sends one envelope on the open link to `peer`, if there is one, and waits for its ack.
    /// The whole send (the wait for the writer, the write and the ack) is bounded by the
    /// request timeout.
    pub(crate) async fn send(&self, peer: PeerId, bytes: &[u8]) -> LinkSend {
        let link = match lock(&self.slots).get(&peer) {
            Some(Slot::Open(link)) => Arc::clone(link),
            _ => return LinkSend::NoLink,
        };
        if bytes.len() > MAX_REQUEST {
            return LinkSend::NoLink;
        }
        match tokio::time::timeout(self.timeout, self.send_on(peer, &link, bytes)).await {
            Ok(sent) => sent,
            Err(_) => {
                tracing::debug!(%peer, "no ack on the direct-message link in time; closing it");
                self.close(peer, &link).await;
                LinkSend::TimedOut
            }
        }
    }

    async fn send_on(&self, peer: PeerId, link: &Arc<Link>, bytes: &[u8]) -> LinkSend {
        let (tx, answer) = oneshot::channel();
        {
            let mut writer = link.writer.lock().await;
            if link.closed.load(Ordering::Acquire) {
                return LinkSend::NoLink;
            }
            link.touch();
            // Queued under the writer lock, so the queue's order is the order on the wire.
            lock(&link.waiting).push_back(tx);
            let frame = encode_frame(bytes);
            // Dropped before the frame is whole (the caller gave up mid-write): what follows on
            // the stream could not be read, nor the acks matched to their senders.
            let mut unfinished = Unfinished(Some(link));
            let written = async {
                writer.write_all(&frame).await?;
                writer.flush().await
            };
            if let Err(e) = written.await {
                tracing::debug!(%peer, error = %e, "direct-message link broke while sending");
                drop(unfinished);
                drop(writer);
                self.forget(peer, link);
                return LinkSend::NoLink;
            }
            unfinished.0 = None;
        }
        self.metrics.message_out(Kind::Dm);
        match answer.await {
            Ok(ack) => LinkSend::Answered(ack),
            // The reading side ended the link before this ack came.
            Err(_) => LinkSend::NoLink,
        }
    }

    /// Opens a link to `peer` on its own task, unless one is open, being opened, or the peer
    /// refused the protocol lately (or links are off).
    pub(crate) fn open_soon(&self, peer: PeerId) {
        if !self.enabled {
            return;
        }
        {
            let mut slots = lock(&self.slots);
            match slots.get(&peer) {
                Some(Slot::Opening) => return,
                Some(Slot::Open(link)) if !link.closed.load(Ordering::Acquire) => return,
                Some(Slot::NotBefore(at)) if Instant::now() < *at => return,
                _ => {}
            }
            slots.insert(peer, Slot::Opening);
        }
        let links = self.clone();
        tokio::spawn(async move { links.open(peer).await });
    }

    async fn open(self, peer: PeerId) {
        let mut control = self.control.clone();
        let opened = tokio::time::timeout(
            self.timeout,
            control.open_stream(peer, StreamProtocol::new(LINK_PROTOCOL)),
        )
        .await;
        let stream_or_wait = match opened {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))) => {
                tracing::debug!(%peer, "peer does not speak direct-message links");
                Err(UNSUPPORTED_FOR)
            }
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "could not open a direct-message link");
                Err(FAILED_FOR)
            }
            Err(_) => {
                tracing::debug!(%peer, "opening a direct-message link timed out");
                Err(FAILED_FOR)
            }
        };
        let stream = match stream_or_wait {
            Ok(stream) => stream,
            Err(wait) => {
                lock(&self.slots).insert(peer, Slot::NotBefore(Instant::now() + wait));
                return;
            }
        };
        let (reader, writer) = futures::AsyncReadExt::split(stream);
        let link = Arc::new(Link {
            writer: tokio::sync::Mutex::new(writer),
            waiting: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            last_used: Mutex::new(Instant::now()),
            _in_use: self.uses.open(peer),
        });
        lock(&self.slots).insert(peer, Slot::Open(Arc::clone(&link)));
        tracing::debug!(%peer, "direct-message link open");
        self.read_acks(peer, link, reader).await;
    }

    /// Hands each ack to the oldest waiting sender, until the stream ends, breaks, carries
    /// something that is not an ack, or the link has been idle for the idle time.
    async fn read_acks(&self, peer: PeerId, link: Arc<Link>, reader: ReadHalf<libp2p::Stream>) {
        let mut acks = frames(reader, MAX_RESPONSE);
        let check_every = (self.idle / 4).max(Duration::from_millis(10));
        // Bounded: every pass reads an ack or waits a quarter of the idle time, and an idle link
        // ends within an idle time and a quarter.
        loop {
            tokio::select! {
                ack = acks.next() => match ack {
                    Some(Ok(ack)) => {
                        link.touch();
                        let Some(waiter) = lock(&link.waiting).pop_front() else {
                            self.rejected.inc();
                            tracing::info!(%peer, "an ack nobody waits for on a direct-message link; closing it");
                            break;
                        };
                        // A sender that gave up (timed out) no longer listens; nothing is lost.
                        let _ = waiter.send(ack);
                    }
                    Some(Err(e)) => {
                        if e.kind() == io::ErrorKind::InvalidData {
                            self.rejected.inc();
                        }
                        tracing::debug!(%peer, error = %e, "direct-message link ended");
                        break;
                    }
                    None => break,
                },
                () = tokio::time::sleep(check_every) => {
                    let closed = link.closed.load(Ordering::Acquire);
                    if closed || (lock(&link.waiting).is_empty() && link.idle_for() >= self.idle) {
                        break;
                    }
                }
            }
        }
        self.close(peer, &link).await;
    }

    /// Ends a link: nothing more is sent on it, its waiting senders are told (they send another
    /// way), its stream is closed and its slot freed.
    async fn close(&self, peer: PeerId, link: &Arc<Link>) {
        self.forget(peer, link);
        link.closed.store(true, Ordering::Release);
        // A sender stuck in a write (the peer stopped reading) holds the writer: then the stream
        // closes when the last handle on the link is dropped instead.
        if let Ok(mut writer) =
            tokio::time::timeout(Duration::from_secs(1), link.writer.lock()).await
        {
            lock(&link.waiting).clear();
            let _ = tokio::time::timeout(Duration::from_secs(1), writer.close()).await;
        }
    }

    /// Frees `peer`'s slot if it still holds `link`.
    fn forget(&self, peer: PeerId, link: &Arc<Link>) {
        let mut slots = lock(&self.slots);
        if matches!(slots.get(&peer), Some(Slot::Open(held)) if Arc::ptr_eq(held, link)) {
            slots.remove(&peer);
        }
    }

    /// Starts taking inbound links; the node's direct-message server calls this once.
    pub(crate) fn accept(&self) -> Result<IncomingDmLinks, RequestError> {
        let mut control = self.control.clone();
        control
            .accept(StreamProtocol::new(LINK_PROTOCOL))
            .map(|streams| IncomingDmLinks {
                streams,
                inbound: StreamUse::default(),
                uses: self.uses.clone(),
                metrics: self.metrics.clone(),
                rejected: self.rejected.clone(),
                idle: self.idle,
            })
            .map_err(|_| RequestError::AlreadyAccepting)
    }
}

/// Links other peers open to this node, in arrival order.
pub struct IncomingDmLinks {
    streams: libp2p_stream::IncomingStreams,
    /// Inbound links only, per peer (for [`MAX_INBOUND_PER_PEER`]).
    inbound: StreamUse,
    /// Links both ways, for the connection manager.
    uses: StreamUse,
    metrics: Metrics,
    rejected: Counter,
    idle: Duration,
}

impl fmt::Debug for IncomingDmLinks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IncomingDmLinks")
    }
}

impl IncomingDmLinks {
    /// The next inbound link and who opened it; `None` once the node has shut down. A peer that
    /// already holds [`MAX_INBOUND_PER_PEER`] links has further ones closed at once.
    pub async fn next(&mut self) -> Option<(PeerId, InboundDmLink)> {
        // Bounded by the peers' streams: each pass takes one stream off the queue.
        loop {
            let (peer, mut stream) = self.streams.next().await?;
            if self.inbound.count(&peer) >= MAX_INBOUND_PER_PEER {
                tracing::info!(%peer, "refused a direct-message link: the peer holds enough");
                let _ = stream.close().await;
                continue;
            }
            return Some((
                peer,
                InboundDmLink {
                    stream,
                    _in_use: [self.inbound.open(peer), self.uses.open(peer)],
                    metrics: self.metrics.clone(),
                    rejected: self.rejected.clone(),
                    idle: self.idle,
                },
            ));
        }
    }
}

/// A link a peer opened to us: envelopes in, acks out.
pub struct InboundDmLink {
    stream: libp2p::Stream,
    _in_use: [InUse; 2],
    metrics: Metrics,
    rejected: Counter,
    idle: Duration,
}

impl fmt::Debug for InboundDmLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InboundDmLink")
    }
}

impl InboundDmLink {
    /// Answers every envelope on the link with what `answer` makes of it, in the order they
    /// came, working on up to [`IN_FLIGHT`] at once. Returns when the peer closes the link, it
    /// idles for four idle times (the sender closes first), or the stream breaks or carries an
    /// oversized frame (an error, counted in `kith_dm_frames_rejected_total` when refused).
    pub async fn serve<F, Fut>(self, mut answer: F) -> Result<(), RequestError>
    where
        F: FnMut(Vec<u8>) -> Fut,
        Fut: Future<Output = Vec<u8>>,
    {
        let (reader, mut writer) = futures::AsyncReadExt::split(self.stream);
        let mut frames = frames(reader, MAX_REQUEST);
        let mut answering = FuturesOrdered::new();
        let idle = self.idle * 4;
        let mut last = Instant::now();
        let mut ended: Option<Result<(), RequestError>> = None;
        // Bounded: every pass reads a frame, writes an answer, or waits out the idle time; once
        // the reading side ended, only the answers in hand are written.
        loop {
            if ended.is_some() && answering.is_empty() {
                break;
            }
            tokio::select! {
                frame = frames.next(), if ended.is_none() && answering.len() < IN_FLIGHT => {
                    match frame {
                        Some(Ok(bytes)) => {
                            last = Instant::now();
                            self.metrics.message_in(Kind::Dm);
                            answering.push_back(answer(bytes));
                        }
                        Some(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            ended = Some(Ok(()));
                        }
                        Some(Err(e)) => {
                            if e.kind() == io::ErrorKind::InvalidData {
                                self.rejected.inc();
                                tracing::info!(error = %e, "refused a frame on a direct-message link");
                            }
                            ended = Some(Err(RequestError::Undelivered(format!(
                                "direct-message link: {e}"
                            ))));
                        }
                        None => ended = Some(Ok(())),
                    }
                }
                ack = answering.next(), if !answering.is_empty() => {
                    let Some(ack) = ack else { continue };
                    last = Instant::now();
                    let written = async {
                        writer.write_all(&encode_frame(&ack)).await?;
                        writer.flush().await
                    };
                    if let Err(e) = written.await {
                        return Err(RequestError::Undelivered(format!(
                            "direct-message link: {e}"
                        )));
                    }
                }
                () = tokio::time::sleep_until((last + idle).into()), if answering.is_empty() && ended.is_none() => {
                    ended = Some(Ok(()));
                }
            }
        }
        let _ = writer.close().await;
        ended.unwrap_or(Ok(()))
    }
}
