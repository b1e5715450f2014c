//! The chat screen's state, pure and testable: keys, events and histories in, lines out.

use super::*;
use unicode_width::UnicodeWidthChar as _;

use super::layout::{text_width, wrap};

// ---------------------------------------------------------------------------------------------
// The state: pure, testable.
// ---------------------------------------------------------------------------------------------

/// What a key press asks the I/O side to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Nothing beyond redrawing.
    None,
    /// Leave the chat.
    Quit,
    /// Send `text`; the pane already shows it under the temporary id `pending`.
    Send {
        /// The temporary id to replace with the real one once the node answers.
        pending: String,
        /// The text.
        text: String,
    },
}

/// What an event asks the I/O side to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// Nothing beyond redrawing.
    None,
    /// Re-read the history (events were missed, or a status names a message we do not show).
    Reload,
    /// A new message arrived while we look at the conversation: tell the node it was read.
    MarkRead,
}

/// The state of the event stream, shown in the status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Link {
    /// The first connection attempt is under way.
    Connecting,
    /// Events arrive live.
    Live,
    /// The stream dropped; the next attempt comes after `delay`.
    Retrying {
        /// This attempt's number.
        attempt: u32,
        /// How long until it.
        delay: Duration,
    },
    /// Retries are exhausted.
    Down,
}

/// How a line of the pane is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    /// Our message.
    Mine,
    /// Theirs.
    Theirs,
    /// Our message that failed.
    Failed,
    /// Padding.
    Blank,
}

/// One screen line of the conversation pane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChatLine {
    pub(crate) text: String,
    pub(crate) kind: LineKind,
}

/// Everything the chat screen shows, and the rules for changing it.
#[derive(Debug)]
pub(crate) struct ChatState {
    /// Who the user asked for, as typed.
    label: String,
    /// Their peer id.
    peer_id: String,
    /// Our peer id.
    me: String,
    /// The conversation, oldest first.
    messages: Vec<MessageReport>,
    /// Screen lines scrolled up from the bottom (0: newest visible).
    scroll: usize,
    /// Largest useful `scroll` at the last render.
    max_scroll: usize,
    /// Height of the pane at the last render (one PageUp).
    page: usize,
    /// The input line.
    input: String,
    /// Cursor position in `input`, in chars.
    cursor: usize,
    /// The last error or note, for the status line.
    pub(super) notice: Option<String>,
    /// The event stream's state.
    pub(super) link: Link,
    /// Counter for temporary ids.
    next_pending: u64,
    /// Group chats: the title and petnames for members (peer id, petname).
    group: Option<(String, Vec<(String, String)>)>,
}

impl ChatState {
    /// A chat with `label` (as the user typed it), starting from `history`.
    pub(crate) fn new(label: &str, me: &str, history: HistoryReport) -> Self {
        let mut state = Self {
            label: label.to_owned(),
            peer_id: history.peer_id.clone(),
            me: me.to_owned(),
            messages: Vec::new(),
            scroll: 0,
            max_scroll: 0,
            page: 10,
            input: String::new(),
            cursor: 0,
            notice: None,
            link: Link::Connecting,
            next_pending: 0,
            group: None,
        };
        state.apply_history(history);
        state
    }

    #[cfg(test)]
    /// The messages, oldest first.
    pub(crate) fn messages(&self) -> &[MessageReport] {
        &self.messages
    }

    #[cfg(test)]
    /// The input line.
    pub(crate) fn input(&self) -> &str {
        &self.input
    }

    #[cfg(test)]
    /// Screen lines scrolled up from the bottom.
    pub(crate) fn scroll(&self) -> usize {
        self.scroll
    }

    /// Turns this into a group chat: `peer_id` is the group id, senders are labelled by
    /// petname (or a short peer id).
    pub(crate) fn set_group(&mut self, title: String, petnames: Vec<(String, String)>) {
        self.group = Some((title, petnames));
    }

    /// Whether `m` came from someone else.
    fn is_incoming(&self, m: &MessageReport) -> bool {
        match self.group {
            Some(_) => m.from != self.me,
            None => m.from == self.peer_id,
        }
    }

    /// The label of an incoming message's sender.
    fn sender_label(&self, m: &MessageReport, theirs: &str) -> String {
        match &self.group {
            Some((_, names)) => names
                .iter()
                .find(|(p, _)| *p == m.from)
                .map(|(_, n)| n.clone())
                .unwrap_or_else(|| short_id(&m.from)),
            None => theirs.to_owned(),
        }
    }

    /// Sets the status line's note.
    pub(crate) fn set_notice(&mut self, notice: impl Into<String>) {
        self.notice = Some(notice.into());
    }

    /// Sets the event stream's state.
    pub(crate) fn set_link(&mut self, link: Link) {
        self.link = link;
    }

    /// The name their messages are shown under: what the user typed, shortened if it is the
    /// (long) peer id itself.
    fn their_label(&self) -> String {
        if self.label == self.peer_id {
            short_id(&self.peer_id)
        } else {
            self.label.clone()
        }
    }

    /// The title line.
    pub(crate) fn title(&self) -> String {
        if let Some((title, _)) = &self.group {
            return format!(" kith chat · group '{title}' ({})", self.peer_id);
        }
        if self.label == self.peer_id {
            format!(" kith chat · {}", self.peer_id)
        } else {
            format!(" kith chat · {} ({})", self.label, self.peer_id)
        }
    }

    /// Merges a (re-)read history: the node's copy wins, except that a status never goes back
    /// (a late answer must not undo a newer event). Messages the history does not contain (sends
    /// still under way, older pages) are kept.
    pub(crate) fn apply_history(&mut self, history: HistoryReport) {
        if self.peer_id.is_empty() {
            self.peer_id = history.peer_id;
        } else if history.peer_id != self.peer_id {
            return;
        }
        let mut merged = history.messages;
        for m in &mut merged {
            if let Some(old) = self.messages.iter().find(|o| o.id == m.id)
                && status_rank(&old.status) > status_rank(&m.status)
            {
                m.status.clone_from(&old.status);
            }
        }
        for old in self.messages.drain(..) {
            if !merged.iter().any(|m| m.id == old.id) {
                merged.push(old);
            }
        }
        // Stable: the node's order stands among equal times.
        merged.sort_by_key(|m| m.sent_at);
        self.messages = merged;
    }

    /// Applies one WebSocket event.
    pub(crate) fn apply_event(&mut self, event: EventReport) -> Effect {
        match event {
            EventReport::Message { message } => {
                if message.from != self.peer_id {
                    return Effect::None;
                }
                if let Some(old) = self.messages.iter_mut().find(|m| m.id == message.id) {
                    *old = message;
                    Effect::None
                } else {
                    self.messages.push(message);
                    Effect::MarkRead
                }
            }
            EventReport::Status {
                id,
                peer_id,
                status,
            } => {
                if peer_id != self.peer_id {
                    return Effect::None;
                }
                match self.messages.iter_mut().find(|m| m.id == id) {
                    Some(m) => {
                        upgrade(&mut m.status, &status);
                        Effect::None
                    }
                    // Sent from elsewhere (`kith send`), or before our send's answer arrived.
                    None => Effect::Reload,
                }
            }
            EventReport::GroupMessage { group_id, message } => {
                if self.group.is_none() || group_id != self.peer_id {
                    return Effect::None;
                }
                let message = group_message(&group_id, message);
                if self.messages.iter().any(|m| m.id == message.id) {
                    Effect::None
                } else {
                    self.messages.push(message);
                    self.messages.sort_by_key(|m| m.sent_at);
                    Effect::MarkRead
                }
            }
            EventReport::Lagged { .. } => Effect::Reload,
            _ => Effect::None,
        }
    }

    /// Applies the node's answer to a send started by [`Action::Send`].
    pub(crate) fn apply_sent(&mut self, pending: &str, result: Result<SendReport, String>) {
        let Some(index) = self.messages.iter().position(|m| m.id == pending) else {
            return;
        };
        match result {
            Ok(report) => {
                if let Some(known) = self.messages.iter_mut().find(|m| m.id == report.id) {
                    // A history reload already brought it: keep that copy.
                    upgrade(&mut known.status, &report.status);
                    self.messages.remove(index);
                } else if let Some(m) = self.messages.get_mut(index) {
                    m.id = report.id;
                    m.status = report.status;
                }
                if self.notice.as_deref() == Some("sending…") {
                    self.notice = None;
                }
            }
            Err(e) => {
                if let Some(m) = self.messages.get_mut(index) {
                    m.status = "failed".into();
                    m.failure.clone_from(&e);
                }
                self.notice = Some(format!("not sent: {e}"));
            }
        }
    }

    /// Handles a key press.
    pub(crate) fn on_key(&mut self, key: KeyEvent) -> Action {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Esc => return Action::Quit,
            KeyCode::Char('c' | 'd') if ctrl => return Action::Quit,
            KeyCode::Char('u') if ctrl => {
                let byte = self.byte_at(self.cursor);
                self.input.drain(..byte);
                self.cursor = 0;
            }
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.input.chars().count(),
            KeyCode::Char(_) if ctrl => {}
            KeyCode::Char(c) => self.insert(c),
            KeyCode::Backspace => self.backspace(),
            KeyCode::Delete => self.delete(),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.input.chars().count(),
            KeyCode::Up => self.scroll_up(1),
            KeyCode::Down => self.scroll_down(1),
            KeyCode::PageUp => self.scroll_up(self.page.saturating_sub(1).max(1)),
            KeyCode::PageDown => self.scroll_down(self.page.saturating_sub(1).max(1)),
            KeyCode::Enter => return self.submit(now_ms()),
            _ => {}
        }
        Action::None
    }

    /// Takes the input line as a message to send, shown at once with a temporary id.
    pub(crate) fn submit(&mut self, now_ms: u64) -> Action {
        let text = self.input.trim().to_owned();
        if text.is_empty() {
            return Action::None;
        }
        self.input.clear();
        self.cursor = 0;
        self.next_pending += 1;
        let pending = format!("{PENDING_PREFIX}{}", self.next_pending);
        self.messages.push(MessageReport {
            id: pending.clone(),
            from: self.me.clone(),
            to: self.peer_id.clone(),
            text: text.clone(),
            sent_at: now_ms,
            received_at: 0,
            status: "sending".into(),
            failure: String::new(),
        });
        self.scroll = 0;
        self.notice = Some("sending…".into());
        Action::Send { pending, text }
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.input
            .char_indices()
            .nth(chars)
            .map_or(self.input.len(), |(i, _)| i)
    }

    fn insert(&mut self, c: char) {
        if c.is_control() {
            return;
        }
        let byte = self.byte_at(self.cursor);
        self.input.insert(byte, c);
        self.cursor += 1;
    }

    fn delete(&mut self) {
        if self.cursor < self.input.chars().count() {
            let byte = self.byte_at(self.cursor);
            self.input.remove(byte);
        }
    }

    fn backspace(&mut self) {
        if self.cursor == 0 {
            return;
        }
        self.cursor -= 1;
        let byte = self.byte_at(self.cursor);
        self.input.remove(byte);
    }

    /// Scrolls towards older messages.
    pub(crate) fn scroll_up(&mut self, lines: usize) {
        self.scroll = self.scroll.saturating_add(lines).min(self.max_scroll);
    }

    /// Scrolls towards newer messages.
    pub(crate) fn scroll_down(&mut self, lines: usize) {
        self.scroll = self.scroll.saturating_sub(lines);
    }

    /// The whole conversation as screen lines of at most `width` columns.
    pub(crate) fn lines(&self, width: usize) -> Vec<ChatLine> {
        let theirs = self.their_label();
        let mut out = Vec::new();
        for m in &self.messages {
            let incoming = self.is_incoming(m);
            let who = if incoming {
                self.sender_label(m, &theirs)
            } else {
                "you".to_owned()
            };
            let mut text = format!("{} {who}: {}", clock(m.sent_at), m.text);
            if !incoming {
                text.push_str(mark(&m.status));
                if m.status == "failed" && !m.failure.is_empty() {
                    text.push_str(&format!(" ({})", m.failure));
                }
            }
            let kind = if incoming {
                LineKind::Theirs
            } else if m.status == "failed" {
                LineKind::Failed
            } else {
                LineKind::Mine
            };
            out.extend(
                wrap(&text, width)
                    .into_iter()
                    .map(|text| ChatLine { text, kind }),
            );
        }
        out
    }

    /// The `height` lines the pane shows now (padded at the top so the newest sit at the
    /// bottom); remembers the size for scrolling and clamps the scroll offset to it.
    pub(crate) fn visible(&mut self, width: usize, height: usize) -> Vec<ChatLine> {
        let lines = self.lines(width);
        self.page = height.max(1);
        self.max_scroll = lines.len().saturating_sub(height);
        self.scroll = self.scroll.min(self.max_scroll);
        let end = lines.len() - self.scroll;
        let start = end.saturating_sub(height);
        let mut shown: Vec<ChatLine> = (0..height.saturating_sub(end - start))
            .map(|_| ChatLine {
                text: String::new(),
                kind: LineKind::Blank,
            })
            .collect();
        shown.extend(lines.into_iter().skip(start).take(end - start));
        shown
    }

    /// The status line.
    pub(crate) fn status_line(&self) -> String {
        let link = match &self.link {
            Link::Connecting => "connecting…".to_owned(),
            Link::Live => "live".to_owned(),
            Link::Retrying { attempt, delay } => format!(
                "disconnected; retrying in {} s ({attempt}/{WS_RETRIES})",
                delay.as_secs().max(1)
            ),
            Link::Down => "disconnected; restart kith chat to reconnect".to_owned(),
        };
        let mut line = format!(" {link}");
        if self.scroll > 0 {
            line.push_str(&format!(" · scrolled up {} (PgDn)", self.scroll));
        }
        match &self.notice {
            Some(notice) => line.push_str(&format!(" · {notice}")),
            None => line.push_str(" · Enter send · PgUp/PgDn scroll · Esc quit"),
        }
        line
    }

    /// The input line as it fits in `width` columns, and the cursor's column in it.
    pub(crate) fn input_view(&self, width: usize) -> (String, usize) {
        const PROMPT: &str = "> ";
        let room = width.saturating_sub(PROMPT.len() + 1).max(1);
        let chars: Vec<char> = self.input.chars().collect();
        let cursor = self.cursor.min(chars.len());
        // Scroll the line horizontally so the cursor stays in view.
        let mut start = 0;
        while start < cursor && text_width(&chars[start..cursor]) > room {
            start += 1;
        }
        let mut shown = String::from(PROMPT);
        let mut used = 0;
        for &c in &chars[start..] {
            let w = c.width().unwrap_or(0);
            if used + w > room {
                break;
            }
            used += w;
            shown.push(c);
        }
        (shown, PROMPT.len() + text_width(&chars[start..cursor]))
    }
}

/// Order of statuses: a message only moves forward.
fn status_rank(status: &str) -> u8 {
    match status {
        "sending" => 0,
        "queued" | "received" => 1,
        "failed" => 2,
        "delivered" | "seen" | "sent" => 3,
        "read" => 4,
        _ => 0,
    }
}

fn upgrade(current: &mut String, new: &str) {
    if status_rank(new) >= status_rank(current) {
        new.clone_into(current);
    }
}

fn mark(status: &str) -> &'static str {
    match status {
        "sending" | "queued" => " …",
        "delivered" | "sent" => " ✓",
        "read" => " ✓✓",
        "failed" => " ✗",
        _ => "",
    }
}

/// `HH:MM` (UTC), as `kith history` prints it.
fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!("{:02}:{:02}", (secs % 86_400) / 3600, (secs % 3600) / 60)
}

fn short_id(peer_id: &str) -> String {
    let count = peer_id.chars().count();
    if count <= 12 {
        return peer_id.to_owned();
    }
    let tail: String = peer_id.chars().skip(count - 8).collect();
    format!("…{tail}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: &str = "12D3KooWPeerPeerPeerPeerPeerPeerPeerPeerPeer";
    const ME: &str = "12D3KooWMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMeMe";

    fn msg(id: &str, incoming: bool, text: &str, status: &str, sent_at: u64) -> MessageReport {
        let (from, to) = if incoming { (PEER, ME) } else { (ME, PEER) };
        MessageReport {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            text: text.into(),
            sent_at,
            received_at: 0,
            status: status.into(),
            failure: String::new(),
        }
    }

    fn history(messages: Vec<MessageReport>) -> HistoryReport {
        HistoryReport {
            peer_id: PEER.into(),
            messages,
            more: false,
        }
    }

    fn state(messages: Vec<MessageReport>) -> ChatState {
        ChatState::new("alice", ME, history(messages))
    }

    #[test]
    fn group_chats_label_each_sender_and_take_only_their_group() {
        const GROUP: &str = "00112233445566778899aabbccddeeff";
        const CAROL: &str = "12D3KooWCarolCarolCarolCarolCarolCarolCarol";
        let gm = |id: &str, from: &str, text: &str, at: u64| GroupMessageReport {
            id: id.into(),
            from: from.into(),
            seq: 1,
            text: text.into(),
            sent_at: at,
            received_at: at,
            outgoing: from == ME,
        };
        let h = group_history(GroupHistoryReport {
            group_id: GROUP.into(),
            title: "climbing".into(),
            messages: vec![
                gm("a", PEER, "rope?", 60_000),
                gm("b", ME, "in my car", 120_000),
            ],
            more: false,
        });
        let mut s = ChatState::new("climbing", ME, h);
        s.set_group("climbing".into(), vec![(PEER.into(), "alice".into())]);
        assert!(s.title().contains("group 'climbing'"));
        let effect = s.apply_event(EventReport::GroupMessage {
            group_id: GROUP.into(),
            message: gm("c", CAROL, "see you at 6", 180_000),
        });
        assert_eq!(effect, Effect::MarkRead);
        // Another group's message and a repeat are not shown.
        let other = s.apply_event(EventReport::GroupMessage {
            group_id: "ffeeddccbbaa99887766554433221100".into(),
            message: gm("d", CAROL, "wrong room", 190_000),
        });
        assert_eq!(other, Effect::None);
        s.apply_event(EventReport::GroupMessage {
            group_id: GROUP.into(),
            message: gm("c", CAROL, "see you at 6", 180_000),
        });
        let lines = s.lines(80);
        assert_eq!(
            texts(&lines),
            vec![
                "00:01 alice: rope?",
                "00:02 you: in my car ✓",
                &format!("00:03 {}: see you at 6", short_id(CAROL)),
            ]
        );
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn type_text(s: &mut ChatState, text: &str) {
        for c in text.chars() {
            assert_eq!(s.on_key(key(KeyCode::Char(c))), Action::None);
        }
    }

    fn texts(lines: &[ChatLine]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    #[test]
    fn history_renders_time_sender_text_and_marks() {
        let s = state(vec![
            msg("a", true, "hi", "seen", 3_600_000 + 60_000),
            msg("b", false, "queued one", "queued", 3_700_000),
            msg("c", false, "delivered one", "delivered", 3_800_000),
            msg("d", false, "read one", "read", 3_900_000),
            msg("e", false, "failed one", "failed", 4_000_000),
        ]);
        let lines = s.lines(80);
        assert_eq!(
            texts(&lines),
            [
                "01:01 alice: hi",
                "01:01 you: queued one …",
                "01:03 you: delivered one ✓",
                "01:05 you: read one ✓✓",
                "01:06 you: failed one ✗",
            ]
        );
        assert_eq!(lines[0].kind, LineKind::Theirs);
        assert_eq!(lines[1].kind, LineKind::Mine);
        assert_eq!(lines[4].kind, LineKind::Failed);
        assert_eq!(s.title(), format!(" kith chat · alice ({PEER})"));
    }

    #[test]
    fn a_peer_id_label_is_shortened_in_lines_but_whole_in_the_title() {
        let s = ChatState::new(PEER, ME, history(vec![msg("a", true, "yo", "seen", 0)]));
        assert_eq!(s.title(), format!(" kith chat · {PEER}"));
        assert_eq!(texts(&s.lines(80)), ["00:00 …PeerPeer: yo"]);
    }

    #[test]
    fn status_events_move_marks_forward_only() {
        let mut s = state(vec![msg("a", false, "x", "queued", 1)]);
        let status = |id: &str, peer: &str, st: &str| EventReport::Status {
            id: id.into(),
            peer_id: peer.into(),
            status: st.into(),
        };
        assert_eq!(s.apply_event(status("a", PEER, "delivered")), Effect::None);
        assert_eq!(s.messages()[0].status, "delivered");
        assert_eq!(s.apply_event(status("a", PEER, "read")), Effect::None);
        assert_eq!(s.messages()[0].status, "read");
        // A late "delivered" does not undo "read".
        s.apply_event(status("a", PEER, "delivered"));
        assert_eq!(s.messages()[0].status, "read");
        // Another conversation's events are ignored; an unknown id of ours asks for a reload.
        assert_eq!(
            s.apply_event(status("a", "someone else", "failed")),
            Effect::None
        );
        assert_eq!(s.messages()[0].status, "read");
        assert_eq!(
            s.apply_event(status("zz", PEER, "delivered")),
            Effect::Reload
        );
        assert_eq!(
            s.apply_event(EventReport::Lagged { missed: 3 }),
            Effect::Reload
        );
    }

    #[test]
    fn incoming_messages_from_this_peer_are_appended_once() {
        let mut s = state(vec![]);
        let event = EventReport::Message {
            message: msg("m1", true, "hello", "received", 5),
        };
        assert_eq!(s.apply_event(event.clone()), Effect::MarkRead);
        assert_eq!(s.apply_event(event), Effect::None);
        assert_eq!(s.messages().len(), 1);
        let mut other = msg("m2", true, "not for this pane", "received", 6);
        other.from = "someone else".into();
        assert_eq!(
            s.apply_event(EventReport::Message { message: other }),
            Effect::None
        );
        assert_eq!(s.messages().len(), 1);
    }

    #[test]
    fn a_sent_message_shows_at_once_and_takes_its_real_id_and_status() {
        let mut s = state(vec![]);
        type_text(&mut s, "dinner at 8?");
        let Action::Send { pending, text } = s.on_key(key(KeyCode::Enter)) else {
            panic!("enter sends")
        };
        assert_eq!(text, "dinner at 8?");
        assert!(s.input().is_empty());
        assert_eq!(s.messages().len(), 1);
        assert!(texts(&s.lines(80))[0].ends_with("you: dinner at 8? …"));
        s.apply_sent(
            &pending,
            Ok(SendReport {
                id: "real".into(),
                peer_id: PEER.into(),
                status: "delivered".into(),
            }),
        );
        assert_eq!(s.messages().len(), 1);
        assert_eq!(s.messages()[0].id, "real");
        assert_eq!(s.messages()[0].status, "delivered");
        // Empty and blank input sends nothing.
        assert_eq!(s.on_key(key(KeyCode::Enter)), Action::None);
        type_text(&mut s, "   ");
        assert_eq!(s.on_key(key(KeyCode::Enter)), Action::None);
    }

    #[test]
    fn a_sent_message_that_also_arrives_by_history_is_shown_once() {
        // History first (a reload raced the send's answer), then the answer.
        let mut s = state(vec![]);
        type_text(&mut s, "hi");
        let Action::Send { pending, .. } = s.on_key(key(KeyCode::Enter)) else {
            panic!("enter sends")
        };
        let sent_at = s.messages()[0].sent_at;
        s.apply_history(history(vec![msg("real", false, "hi", "read", sent_at)]));
        s.apply_sent(
            &pending,
            Ok(SendReport {
                id: "real".into(),
                peer_id: PEER.into(),
                status: "queued".into(),
            }),
        );
        assert_eq!(s.messages().len(), 1);
        assert_eq!(s.messages()[0].id, "real");
        assert_eq!(
            s.messages()[0].status,
            "read",
            "the answer's older status loses"
        );

        // Answer first, then a history that has it too.
        type_text(&mut s, "again");
        let Action::Send { pending, .. } = s.on_key(key(KeyCode::Enter)) else {
            panic!("enter sends")
        };
        s.apply_sent(
            &pending,
            Ok(SendReport {
                id: "real2".into(),
                peer_id: PEER.into(),
                status: "delivered".into(),
            }),
        );
        let mut h = s.messages().to_vec();
        h[1].status = "queued".into(); // a stale copy
        s.apply_history(history(h));
        assert_eq!(s.messages().len(), 2);
        assert_eq!(s.messages()[1].status, "delivered");
    }

    #[test]
    fn a_failed_send_is_marked_and_reported() {
        let mut s = state(vec![]);
        type_text(&mut s, "x");
        let Action::Send { pending, .. } = s.on_key(key(KeyCode::Enter)) else {
            panic!("enter sends")
        };
        s.apply_sent(&pending, Err("the node knows no DHT peers yet".into()));
        assert_eq!(s.messages()[0].status, "failed");
        assert!(
            s.lines(80)[0]
                .text
                .contains("✗ (the node knows no DHT peers yet)")
        );
        assert!(
            s.status_line()
                .contains("not sent: the node knows no DHT peers yet")
        );
    }

    #[test]
    fn history_reload_merges_keeps_local_messages_and_sorts() {
        let mut s = state(vec![msg("a", true, "one", "received", 10)]);
        s.apply_event(EventReport::Message {
            message: msg("c", true, "three", "received", 30),
        });
        s.apply_history(history(vec![
            msg("a", true, "one", "seen", 10),
            msg("b", false, "two", "delivered", 20),
        ]));
        let ids: Vec<&str> = s.messages().iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(s.messages()[0].status, "seen");
        // Another peer's history is ignored.
        let mut other = history(vec![msg("z", true, "?", "seen", 1)]);
        other.peer_id = "someone else".into();
        s.apply_history(other);
        assert_eq!(s.messages().len(), 3);
    }

    #[test]
    fn scrolling_stays_within_bounds() {
        let messages = (0..30)
            .map(|i| {
                msg(
                    &format!("m{i}"),
                    i % 2 == 0,
                    &format!("line {i}"),
                    "seen",
                    i,
                )
            })
            .collect();
        let mut s = state(messages);
        let shown = s.visible(80, 10);
        assert_eq!(shown.len(), 10);
        assert!(shown[9].text.ends_with("line 29"));
        s.on_key(key(KeyCode::Up));
        assert_eq!(s.scroll(), 1);
        assert!(s.visible(80, 10)[9].text.ends_with("line 28"));
        for _ in 0..10 {
            s.on_key(key(KeyCode::PageUp));
        }
        assert_eq!(s.scroll(), 20, "stops at the oldest line");
        let shown = s.visible(80, 10);
        assert!(shown[0].text.ends_with("line 0"));
        assert!(s.status_line().contains("scrolled up 20"));
        for _ in 0..10 {
            s.on_key(key(KeyCode::PageDown));
        }
        assert_eq!(s.scroll(), 0);
        s.on_key(key(KeyCode::Down));
        assert_eq!(s.scroll(), 0);
        // A taller window clamps a stale offset; a short conversation is padded at the top.
        s.on_key(key(KeyCode::PageUp));
        let shown = s.visible(80, 100);
        assert_eq!(s.scroll(), 0);
        assert_eq!(shown.len(), 100);
        assert_eq!(shown[0].kind, LineKind::Blank);
        assert!(shown[99].text.ends_with("line 29"));
        // Sending jumps back to the newest.
        s.visible(80, 10);
        s.on_key(key(KeyCode::PageUp));
        assert!(s.scroll() > 0);
        type_text(&mut s, "x");
        s.on_key(key(KeyCode::Enter));
        assert_eq!(s.scroll(), 0);
        assert!(s.visible(80, 0).is_empty());
    }

    #[test]
    fn long_messages_wrap_at_words_and_by_width() {
        assert_eq!(wrap("aaa bbb ccc", 7), ["aaa bbb", "ccc"]);
        assert_eq!(wrap("aaaaaaaaaa", 4), ["aaaa", "aaaa", "aa"]);
        assert_eq!(wrap("a\nb", 10), ["a", "b"]);
        assert_eq!(wrap("日本語です", 4), ["日本", "語で", "す"]);
        assert_eq!(wrap("tab\there\x1b[2J", 40), ["tab here [2J"]);
        for line in wrap("ünïcödé wörds änd 🎉🎉🎉 mixed in a long line", 9) {
            assert!(
                line.chars().map(|c| c.width().unwrap_or(0)).sum::<usize>() <= 9,
                "{line}"
            );
        }
    }

    #[test]
    fn unicode_input_edits_by_character() {
        let mut s = state(vec![]);
        type_text(&mut s, "héllo 🎉日本");
        assert_eq!(s.input(), "héllo 🎉日本");
        s.on_key(key(KeyCode::Backspace));
        assert_eq!(s.input(), "héllo 🎉日");
        s.on_key(key(KeyCode::Left));
        s.on_key(key(KeyCode::Backspace));
        assert_eq!(s.input(), "héllo 日");
        s.on_key(key(KeyCode::Home));
        s.on_key(key(KeyCode::Backspace));
        assert_eq!(s.input(), "héllo 日", "backspace at the start does nothing");
        s.on_key(key(KeyCode::Right));
        s.on_key(key(KeyCode::Right));
        s.on_key(key(KeyCode::Backspace));
        assert_eq!(s.input(), "hllo 日");
        s.on_key(key(KeyCode::Char('é')));
        assert_eq!(s.input(), "héllo 日");
        s.on_key(key(KeyCode::Delete));
        assert_eq!(s.input(), "hélo 日");
        s.on_key(key(KeyCode::End));
        s.on_key(key(KeyCode::Delete));
        assert_eq!(s.input(), "hélo 日");
        for _ in 0..20 {
            s.on_key(key(KeyCode::Backspace));
        }
        assert_eq!(s.input(), "");
        type_text(&mut s, "abc");
        s.on_key(key(KeyCode::Left));
        s.on_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(s.input(), "c");
    }

    #[test]
    fn quit_keys() {
        let mut s = state(vec![]);
        assert_eq!(s.on_key(key(KeyCode::Esc)), Action::Quit);
        assert_eq!(
            s.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert!(s.input().is_empty(), "ctrl-c is not typed");
    }

    #[test]
    fn the_input_line_scrolls_to_keep_the_cursor_visible() {
        let mut s = state(vec![]);
        type_text(&mut s, "abcdefghijklmnopqrstuvwxyz");
        let (shown, cursor) = s.input_view(12);
        assert_eq!(shown, "> rstuvwxyz");
        assert_eq!(cursor, 11);
        s.on_key(key(KeyCode::Home));
        let (shown, cursor) = s.input_view(12);
        assert_eq!(shown, "> abcdefghi");
        assert_eq!(cursor, 2);
        let mut s = state(vec![]);
        type_text(&mut s, "日本語");
        assert_eq!(s.input_view(40), ("> 日本語".to_owned(), 8));
    }

    #[test]
    fn the_screen_has_title_conversation_status_and_input() {
        let mut s = state(vec![
            msg("a", true, "hi there", "seen", 0),
            msg("b", false, "hello", "delivered", 60_000),
        ]);
        s.set_link(Link::Live);
        type_text(&mut s, "typing");
        let mut terminal = Terminal::new(ratatui::backend::TestBackend::new(60, 8)).unwrap();
        terminal.draw(|f| draw(f, &mut s)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        let rows: Vec<String> = (0..8)
            .map(|y| {
                (0..60)
                    .map(|x| buffer[(x, y)].symbol().to_owned())
                    .collect::<String>()
                    .trim_end()
                    .to_owned()
            })
            .collect();
        assert!(rows[0].starts_with(" kith chat · alice ("), "{rows:?}");
        assert_eq!(rows[5], "00:01 you: hello ✓", "{rows:?}");
        assert_eq!(rows[4], "00:00 alice: hi there", "{rows:?}");
        assert!(rows[6].starts_with(" live"), "{rows:?}");
        assert_eq!(rows[7], "> typing", "{rows:?}");

        s.set_link(Link::Retrying {
            attempt: 2,
            delay: Duration::from_secs(1),
        });
        assert!(
            s.status_line()
                .contains("disconnected; retrying in 1 s (2/5)")
        );
    }
}
