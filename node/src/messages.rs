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

pub(crate) fn clock(ms: u64) -> String {
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

/// Whom `kith send-file` / `kith group send-file` sends to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FileTarget<'a> {
    /// A petname, name or peer id.
    Person(&'a str),
    /// A group: title, id or id prefix.
    Group(&'a str),
}

/// `kith send-file` and `kith group send-file`: the node reads the file, so the path is made
/// absolute here.
pub(crate) async fn send_file(
    home: &Home,
    to: FileTarget<'_>,
    path: &std::path::Path,
    options: FileOptions,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let absolute = std::path::absolute(path)
        .map_err(|e| anyhow::anyhow!("cannot use the path {}: {e}", path.display()))?;
    let spinner = indicatif::ProgressBar::new_spinner()
        .with_message(format!("sealing and offering {}", path.display()));
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    let report = client
        .send_file(&kith_api::SendFileRequest {
            to: match to {
                FileTarget::Person(who) => who.to_owned(),
                FileTarget::Group(_) => String::new(),
            },
            group: match to {
                FileTarget::Person(_) => None,
                FileTarget::Group(group) => Some(group.to_owned()),
            },
            path: absolute.display().to_string(),
            caption: options.caption.unwrap_or_default(),
            filter: options.filter,
            original: options.original,
        })
        .await;
    spinner.finish_and_clear();
    let report = report.map_err(|e| api_error(home, e))?;
    if !json_output && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        upload_progress(&client, &report.file_id).await;
    }
    if json_output {
        outln!("{}", serde_json::to_string(&report)?);
    } else {
        outln!(
            "{} {} {} bytes {}",
            report.file_id,
            report.hash,
            report.size,
            report.status
        );
        if let Some(note) = &report.note {
            eprintln!("note: {note}");
        }
    }
    Ok(())
}

/// A progress bar on stderr while the recipient fetches the file from us (or it is pushed to the
/// recipient's relay). Ends when all of it went out, when nothing moved for 20 s (the recipient
/// is offline: the node keeps it queued) or on Ctrl-C; the node carries on either way.
async fn upload_progress(client: &kith_api::ApiClient, file_id: &str) {
    let Ok(info) = client.file(file_id).await else {
        return;
    };
    let bar = indicatif::ProgressBar::new(info.transfer_size).with_message(info.name.clone());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
    {
        bar.set_style(style);
    }
    let mut last = (0u64, std::time::Instant::now());
    let started = std::time::Instant::now();
    loop {
        let sent = match client.file(file_id).await {
            Ok(f) => f.sent_bytes,
            Err(_) => break,
        };
        bar.set_position(sent.min(info.transfer_size));
        if sent >= info.transfer_size {
            bar.finish_with_message(format!("{}: sent", info.name));
            return;
        }
        if sent != last.0 {
            last = (sent, std::time::Instant::now());
        } else if last.1.elapsed() > std::time::Duration::from_secs(20)
            || started.elapsed() > std::time::Duration::from_secs(3600)
        {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    bar.abandon_with_message(format!(
        "{}: the recipient fetches the rest when it is online (the node keeps it)",
        info.name
    ));
}

/// What `kith send-file` sends besides the file (the command-line flags as they are).
pub(crate) type FileOptions = crate::cli::FileArgs;

/// `kith files`.
pub(crate) async fn files(
    home: &Home,
    with: Option<&str>,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let files = client.files(with).await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&files)?);
        return Ok(());
    }
    if files.is_empty() {
        outln!("no files yet");
    }
    for f in files {
        let direction = if f.outgoing { "to" } else { "from" };
        let progress = if f.state == "complete" {
            String::new()
        } else {
            format!(
                " ({}%)",
                f.received_bytes.saturating_mul(100) / f.transfer_size.max(1)
            )
        };
        outln!(
            "{} {} {direction} {} {} bytes {}{progress}",
            f.file_id,
            f.name,
            f.peer_id,
            f.size,
            f.state
        );
        if !f.note.is_empty() {
            outln!("    {}", f.note);
        }
    }
    Ok(())
}

/// `kith files cancel`: stops a download or an upload for good.
pub(crate) async fn cancel_file(home: &Home, id: &str, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let file = client
        .cancel_file(id)
        .await
        .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&file)?);
    } else {
        let direction = if file.outgoing { "to" } else { "from" };
        outln!(
            "{} {} {direction} {} {}",
            file.file_id,
            file.name,
            file.peer_id,
            file.state
        );
    }
    Ok(())
}

/// `kith save`: waits for the file to arrive (with a progress bar), then decrypts it to `path`.
pub(crate) async fn save(
    home: &Home,
    id: &str,
    path: &std::path::Path,
    json_output: bool,
) -> anyhow::Result<()> {
    let client = connect(home)?;
    let absolute = std::path::absolute(path)
        .map_err(|e| anyhow::anyhow!("cannot use the path {}: {e}", path.display()))?;
    let mut info = client.file(id).await.map_err(|e| api_error(home, e))?;
    // A cancelled file never completes: the node's answer to the save says so (exit 4).
    if info.state != "complete" && info.state != "cancelled" {
        let bar = indicatif::ProgressBar::new(info.transfer_size).with_message(info.name.clone());
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})",
        ) {
            bar.set_style(style);
        }
        // Bounded: a file that stops arriving for 10 minutes ends the wait with a clear error.
        let mut last_progress = std::time::Instant::now();
        let mut last_bytes = info.received_bytes;
        while info.state != "complete" {
            if info.state == "cancelled" {
                bar.abandon();
                break;
            }
            bar.set_position(info.received_bytes);
            if info.state == "paused" || info.state == "failed" {
                bar.abandon();
                anyhow::bail!("{} is {}: {}", info.name, info.state, info.note);
            }
            if info.received_bytes != last_bytes {
                last_bytes = info.received_bytes;
                last_progress = std::time::Instant::now();
            } else if last_progress.elapsed() > std::time::Duration::from_secs(600) {
                bar.abandon();
                anyhow::bail!(
                    "{} has not progressed for 10 minutes ({} of {} bytes); is the sender online?",
                    info.name,
                    info.received_bytes,
                    info.transfer_size
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
            info = client.file(id).await.map_err(|e| api_error(home, e))?;
        }
        if info.state == "complete" {
            bar.finish_and_clear();
        }
    }
    let saved = client
        .save_file(id, &absolute.display().to_string())
        .await
        .map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&saved)?);
    } else {
        outln!("saved {} ({} bytes)", saved.path, saved.size);
    }
    Ok(())
}

/// `kith filters`.
pub(crate) async fn filters(home: &Home, json_output: bool) -> anyhow::Result<()> {
    let client = connect(home)?;
    let filters = client.filters().await.map_err(|e| api_error(home, e))?;
    if json_output {
        outln!("{}", serde_json::to_string(&filters)?);
    } else {
        for f in filters {
            outln!("{:<8} {}", f.name, f.label);
        }
    }
    Ok(())
}
