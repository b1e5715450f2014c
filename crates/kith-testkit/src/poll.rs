//! Bounded polling: every wait in a test names what it waits for and gives up after a bound,
//! in time and in number of checks.

use std::time::Duration;

use anyhow::{Result, anyhow};

/// Polls `check` every `poll` until it returns true, for at most `timeout` (and at most
/// `timeout / poll + 1` polls). The error says what was awaited.
pub async fn wait_until(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> bool,
) -> Result<()> {
    poll_until(what, timeout, poll, async || check().await.then_some(())).await
}

/// Checks `check` every `poll` for `window` and fails at the first miss: for what must stay true
/// where no event says it can no longer change (a late duplicate from gossip or sync).
pub async fn holds_for(
    what: &str,
    window: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let start = tokio::time::Instant::now();
    loop {
        if let Err(why) = check().await {
            return Err(anyhow!(
                "{what} stopped holding after {:?}: {why}",
                start.elapsed()
            ));
        }
        if start.elapsed() >= window {
            return Ok(());
        }
        tokio::time::sleep(poll).await;
    }
}

/// Like [`wait_until`], for a check that produces a value once it succeeds.
pub async fn poll_until<T>(
    what: &str,
    timeout: Duration,
    poll: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let max_polls = timeout.as_millis() / poll.as_millis().max(1) + 1;
    let polling = async {
        for _ in 0..max_polls {
            if let Some(value) = check().await {
                return Some(value);
            }
            tokio::time::sleep(poll).await;
        }
        None
    };
    match tokio::time::timeout(timeout, polling).await {
        Ok(Some(value)) => Ok(value),
        Ok(None) | Err(_) => Err(anyhow!("timed out after {timeout:?} waiting for {what}")),
    }
}

/// Sends a command that carries its reply channel to a task that owns a swarm (a raw baseline
/// node, a raw DHT server) and waits at most `limit` for the answer. `who` names the task in
/// the error, which says whether it had stopped or was too slow.
pub async fn ask_driver<C, T>(
    commands: &tokio::sync::mpsc::Sender<C>,
    command: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> C,
    who: &str,
    limit: Duration,
) -> Result<T> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    commands
        .send(command(reply))
        .await
        .map_err(|_| anyhow!("{who} stopped"))?;
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(anyhow!("{who} stopped")),
        Err(_) => Err(anyhow!("{who} did not answer within {limit:?}")),
    }
}
