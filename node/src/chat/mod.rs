//! `kith chat`: interactive terminal chat with one person or a group.
//!
//! `kith chat <x>` opens the group whose title or id is `x` if there is one, else the
//! conversation with the contact, name or peer id `x`; both use the same screen.
//!
//! A full-screen ratatui UI over the node's local API: the conversation (from
//! `GET /v1/messages/{target}`, which also marks it read), an input line, and live updates from
//! the `/v1/events` WebSocket (incoming messages, delivery and read marks of our messages).
//!
//! The module is split by job: `state` (the pure [`ChatState`]: keys, events and histories in,
//! lines out), `layout` (wrapping and widths), `view` (drawing it with ratatui, the terminal
//! guard), `link` (the `/v1/events` WebSocket with reconnects); this file wires them into the UI
//! loop.
//!
//! The logic lives in [`ChatState`], which knows nothing about terminals or sockets so it can be
//! tested on its own; [`run`] only moves keys, API answers and WebSocket events into it and draws
//! it. The terminal is restored by a guard on every way out, errors included.

mod layout;
mod link;
mod state;
mod view;

use link::event_stream;
pub(crate) use state::{Action, ChatState, Effect, Link};
use view::{TerminalGuard, draw};

use std::{
    io::{self, IsTerminal as _},
    time::{Duration, Instant},
};

use crossterm::event::{Event, EventStream, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use futures::StreamExt as _;
use kith_api::{
    ApiClient, ClientError, EventReport, GroupHistoryReport, GroupMessageReport, HistoryReport,
    MessageReport, SendReport,
};
use ratatui::{Terminal, backend::CrosstermBackend};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{
    commands::{api_error, connect},
    exit::{self, CliError},
    home::Home,
};

/// How many messages the pane starts with (and a reload fetches).
const HISTORY_LIMIT: usize = 200;
/// Reconnection attempts after the event stream drops, before giving up.
const WS_RETRIES: u32 = 5;
/// A connection that lived this long counts as healthy: the retry budget starts over.
const WS_HEALTHY_AFTER: Duration = Duration::from_secs(10);
/// How long one WebSocket connection attempt may take.
const WS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the ids of messages whose `POST /v1/messages` has not answered yet.
const PENDING_PREFIX: &str = "pending-";

/// `kith chat <who>`.
pub(crate) async fn run(home: &Home, with: &str) -> anyhow::Result<()> {
    if !io::stdout().is_terminal() || !io::stdin().is_terminal() {
        return Err(CliError::new(
            exit::USAGE,
            "kith chat needs an interactive terminal; in scripts use `kith send` and `kith history`",
        )
        .into());
    }
    let client = connect(home)?;
    let me = home.read_api_info()?.peer_id;
    // A group of that title or id comes first (a local lookup); otherwise a person.
    let target = match client.group(with).await {
        Ok(g) => Target::Group(g.group_id),
        Err(ClientError::Api { status: 404, .. }) => Target::Peer(with.to_owned()),
        Err(e) => return Err(api_error(home, e)),
    };
    // Before the screen switches: an unknown contact or a stopped node is reported like any
    // other command's error, with its exit code.
    let history = target
        .history(&client, HISTORY_LIMIT)
        .await
        .map_err(|e| api_error(home, e))?;
    let mut state = ChatState::new(with, &me, history);
    if let Target::Group(id) = &target {
        let title = client.group(id).await.map(|g| g.title).unwrap_or_default();
        state.set_group(title, crate::groups::petnames(&client).await);
    }
    let with = &target;

    let (tx, rx) = mpsc::channel(256);
    let events = tokio::spawn(event_stream(home.clone(), client.clone(), tx.clone()));
    let result = {
        let _guard = TerminalGuard::enter()?;
        match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(mut terminal) => ui_loop(&mut terminal, &mut state, client, with, tx, rx).await,
            Err(e) => Err(e.into()),
        }
    };
    events.abort();
    result
}

/// Who the chat is with.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A person (petname, name or peer id, as typed).
    Peer(String),
    /// A group, by id.
    Group(String),
}

impl Target {
    /// The latest `limit` messages; the screen shows them, so the conversation is then read.
    async fn history(
        &self,
        client: &ApiClient,
        limit: usize,
    ) -> Result<HistoryReport, ClientError> {
        let history = match self {
            Target::Peer(who) => client.history(who, limit, None).await?,
            Target::Group(id) => client
                .group_history(id, limit, None)
                .await
                .map(group_history)?,
        };
        self.mark_read(client).await?;
        Ok(history)
    }

    /// Marks what the screen shows as read (read receipts go out for a person's messages).
    async fn mark_read(&self, client: &ApiClient) -> Result<(), ClientError> {
        match self {
            Target::Peer(who) => client.mark_read(who).await.map(|_| ()),
            Target::Group(id) => client.mark_group_read(id).await,
        }
    }

    async fn send(&self, client: &ApiClient, text: &str) -> Result<SendReport, ClientError> {
        match self {
            Target::Peer(who) => client.send_message(who, text).await,
            Target::Group(id) => client.send_group(id, text).await.map(|r| SendReport {
                id: r.id,
                peer_id: r.group_id,
                status: if r.published { "sent" } else { "queued" }.to_owned(),
            }),
        }
    }
}

/// A group's history in the shape the screen uses for any conversation (the group id stands
/// where a 1:1 history has the other peer).
pub(crate) fn group_history(h: GroupHistoryReport) -> HistoryReport {
    let id = h.group_id.clone();
    HistoryReport {
        peer_id: h.group_id,
        messages: h
            .messages
            .into_iter()
            .map(|m| group_message(&id, m))
            .collect(),
        more: h.more,
    }
}

fn group_message(group_id: &str, m: GroupMessageReport) -> MessageReport {
    MessageReport {
        id: m.id,
        from: m.from,
        to: group_id.to_owned(),
        text: m.text,
        sent_at: m.sent_at,
        received_at: m.received_at,
        status: if m.outgoing { "sent" } else { "received" }.to_owned(),
        failure: String::new(),
    }
}

/// What the background tasks report to the UI loop.
#[derive(Debug)]
enum Incoming {
    /// The event stream (re)connected, to the node this client talks to (a restarted node has
    /// a new API address).
    Connected(ApiClient),
    /// An event.
    Event(EventReport),
    /// The stream dropped; retrying.
    Retrying { attempt: u32, delay: Duration },
    /// The stream dropped for good.
    GaveUp(String),
    /// A history reload finished.
    History(Result<HistoryReport, String>),
    /// Something the user should know that is not a message (a failed mark-read).
    Notice(String),
    /// A send finished.
    Sent {
        pending: String,
        result: Result<SendReport, String>,
    },
}

/// Runs history reads in the background, at most one full reload at a time.
struct Reloader {
    in_flight: bool,
    again: bool,
}

impl Reloader {
    fn request(&mut self, client: &ApiClient, with: &Target, tx: &mpsc::Sender<Incoming>) {
        if self.in_flight {
            self.again = true;
            return;
        }
        self.in_flight = true;
        fetch_history(client, with, tx);
    }

    fn finished(&mut self, client: &ApiClient, with: &Target, tx: &mpsc::Sender<Incoming>) {
        self.in_flight = false;
        if std::mem::take(&mut self.again) {
            self.request(client, with, tx);
        }
    }
}

fn fetch_history(client: &ApiClient, with: &Target, tx: &mpsc::Sender<Incoming>) {
    let (client, with, tx) = (client.clone(), with.clone(), tx.clone());
    tokio::spawn(async move {
        let result = with
            .history(&client, HISTORY_LIMIT)
            .await
            .map_err(|e| e.to_string());
        let _ = tx.send(Incoming::History(result)).await;
    });
}

async fn ui_loop(
    terminal: &mut Terminal<CrosstermBackend<io::Stdout>>,
    state: &mut ChatState,
    mut client: ApiClient,
    with: &Target,
    tx: mpsc::Sender<Incoming>,
    mut rx: mpsc::Receiver<Incoming>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};

    let mut keys = EventStream::new();
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let mut reloader = Reloader {
        in_flight: false,
        again: false,
    };
    loop {
        terminal.draw(|frame| draw(frame, state))?;
        tokio::select! {
            key = keys.next() => match key {
                None => return Ok(()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Event::Key(key))) if key.kind != KeyEventKind::Release => {
                    match state.on_key(key) {
                        Action::Quit => return Ok(()),
                        Action::Send { pending, text } => {
                            let (client, with, tx) = (client.clone(), with.clone(), tx.clone());
                            tokio::spawn(async move {
                                let result = with
                                    .send(&client, &text)
                                    .await
                                    .map_err(|e| e.to_string());
                                let _ = tx.send(Incoming::Sent { pending, result }).await;
                            });
                        }
                        Action::None => {}
                    }
                }
                // Resizes and the rest: the redraw at the top of the loop is all they need.
                Some(Ok(_)) => {}
            },
            Some(incoming) = rx.recv() => match incoming {
                Incoming::Connected(fresh) => {
                    client = fresh;
                    state.set_link(Link::Live);
                    // Whatever happened while we were not listening.
                    reloader.request(&client, with, &tx);
                }
                Incoming::Event(event) => match state.apply_event(event) {
                    Effect::None => {}
                    Effect::Reload => reloader.request(&client, with, &tx),
                    Effect::MarkRead => {
                        let (client, with, tx) = (client.clone(), with.clone(), tx.clone());
                        tokio::spawn(async move {
                            if let Err(e) = with.mark_read(&client).await {
                                let notice = format!("cannot mark the conversation read: {e}");
                                let _ = tx.send(Incoming::Notice(notice)).await;
                            }
                        });
                    }
                },
                Incoming::Retrying { attempt, delay } => {
                    state.set_link(Link::Retrying { attempt, delay });
                }
                Incoming::GaveUp(why) => {
                    state.set_link(Link::Down);
                    state.set_notice(format!("cannot reach the node's event stream: {why}"));
                }
                Incoming::History(result) => {
                    match result {
                        Ok(history) => state.apply_history(history),
                        Err(e) => state.set_notice(format!("cannot read the history: {e}")),
                    }
                    reloader.finished(&client, with, &tx);
                }
                Incoming::Notice(notice) => state.set_notice(notice),
                Incoming::Sent { pending, result } => state.apply_sent(&pending, result),
            },
            _ = terminate.recv() => return Ok(()),
            _ = hangup.recv() => return Ok(()),
        }
    }
}
