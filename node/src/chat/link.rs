//! The `/v1/events` WebSocket: followed with bounded reconnects, fed to the UI loop.

use super::*;

/// Pauses between reconnects: 0.5 s doubling to 8 s.
const RECONNECT: kith_core::Backoff =
    kith_core::Backoff::new(Duration::from_millis(500), Duration::from_secs(8));

/// Follows `/v1/events`, reconnecting with backoff a bounded number of times. Each retry reads
/// `api.json` again, so a node restarted on a new port is found.
pub(super) async fn event_stream(home: Home, mut client: ApiClient, tx: mpsc::Sender<Incoming>) {
    let mut failures = 0u32;
    loop {
        if failures > 0
            && let Ok(fresh) = connect(&home)
        {
            client = fresh;
        }
        let started = Instant::now();
        let why = match tokio::time::timeout(
            WS_CONNECT_TIMEOUT,
            tokio_tungstenite::connect_async(client.events_url()),
        )
        .await
        {
            Ok(Ok((mut socket, _))) => {
                if tx.send(Incoming::Connected(client.clone())).await.is_err() {
                    return;
                }
                let why = loop {
                    match socket.next().await {
                        Some(Ok(WsMessage::Text(text))) => {
                            // Unknown event types (newer nodes) are skipped.
                            if let Ok(event) = serde_json::from_str::<EventReport>(text.as_str())
                                && tx.send(Incoming::Event(event)).await.is_err()
                            {
                                return;
                            }
                        }
                        Some(Ok(WsMessage::Close(_))) | None => {
                            break "the node closed the stream".to_owned();
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => break e.to_string(),
                    }
                };
                if started.elapsed() >= WS_HEALTHY_AFTER {
                    failures = 0;
                }
                why
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connecting timed out".to_owned(),
        };
        failures += 1;
        if failures > WS_RETRIES {
            let _ = tx.send(Incoming::GaveUp(why)).await;
            return;
        }
        let delay = RECONNECT.delay(failures - 1);
        if tx
            .send(Incoming::Retrying {
                attempt: failures,
                delay,
            })
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(delay).await;
    }
}
