//! `kith send`, `kith history`, `kith inbox`, `kith requests`, `kith accept`, `kith block`.

use kith_api::{ConversationReport, MessageReport};

use crate::{
    commands::{api_error, connect},
    home::Home,
};

pub(crate) async fn send(
    home: &Home,
    to: &str,
    text: &str,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let report = client
        .send_message(to, text)
        .await
        .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{} {}", report.id, report.status);
    }
    Ok(())
}

pub(crate) async fn history(
    home: &Home,
    with: &str,
    limit: usize,
    before: Option<&str>,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let report = client
        .history_up_to(with, limit, before)
        .await
        .map_err(|e| api_error(home, e))?;
    // Reading a conversation on the command line is reading it: mark it read (receipts go out).
    client
        .mark_read(&report.peer_id)
        .await
        .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&report.messages)?);
    } else if report.messages.is_empty() {
        outln!("no messages with {with} yet");
    } else {
        for m in &report.messages {
            outln!("{}", render(m, &report.peer_id, with));
        }
    }
    Ok(())
}

/// One line of history: time, who, text, and a mark for outgoing status.
pub(crate) fn render(m: &MessageReport, peer_id: &str, their_label: &str) -> String {
    let who = if m.from == peer_id {
        their_label
    } else {
        "you"
    };
    let mark = match m.status.as_str() {
        "queued" => " …",
        "delivered" => " ✓",
        "read" => " ✓✓",
        "failed" => " ✗",
        _ => "",
    };
    format!("{} {who}: {}{mark}", clock(m.sent_at), m.text)
}

fn clock(ms: u64) -> String {
    let secs = ms / 1000;
    format!("{:02}:{:02}", (secs % 86_400) / 3600, (secs % 3600) / 60)
}

pub(crate) async fn inbox(
    home: &Home,
    only_requests: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let list = if only_requests {
        client.requests().await
    } else {
        client.inbox().await
    }
    .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.is_empty() {
        outln!(
            "{}",
            if only_requests {
                "no message requests"
            } else {
                "no conversations yet"
            }
        );
    }
    for c in &list {
        outln!("{}", conversation_line(c));
    }
    if only_requests && !list.is_empty() {
        outln!("accept one with `kith accept <peer id>`, or refuse with `kith block <peer id>`");
    }
    Ok(())
}

fn conversation_line(c: &ConversationReport) -> String {
    let who = c.petname.as_deref().unwrap_or(&c.peer_id);
    let unread = if c.unread > 0 {
        format!(" ({} unread)", c.unread)
    } else {
        String::new()
    };
    let tag = match c.trust.as_str() {
        "request" => " [request]",
        "blocked" => " [blocked]",
        _ => "",
    };
    format!("{who}{tag}{unread}: {}", c.last_text)
}

pub(crate) async fn trust(
    home: &Home,
    who: &str,
    accept: bool,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let report = if accept {
        client.accept(who).await
    } else {
        client.block(who).await
    }
    .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!("{} is now {}", report.peer_id, report.trust);
    }
    Ok(())
}
