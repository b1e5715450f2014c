//! [`LyingHolder`]: a DHT holder that plays a malicious one.

use anyhow::{Context, Result};
use kith_net::{Config, DhtMode, Keypair, Multiaddr, PeerId, RecordValidator, Validated};

use crate::{NETWORK_ID, POLL, STEP, node::init_tracing, wait_until};

/// A DHT holder that stores and serves whatever it is given: kith's own network layer, speaking
/// the test network's protocols like any node, but with a validator that accepts every record.
/// Kademlia checks nothing a GET returns, so this is what a malicious holder looks like to a
/// resolver.
pub struct LyingHolder {
    client: kith_net::Client,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Accepts every record.
struct AcceptAnything;

impl RecordValidator for AcceptAnything {
    fn validate(&self, _key: &[u8], value: &[u8]) -> Result<Validated, String> {
        Ok(Validated {
            class: value.to_vec(),
            expires: None,
        })
    }

    /// Keeps the first record it was given, so one liar's record never overwrites another's.
    fn may_replace(&self, _key: &[u8], _stored: &[u8], _incoming: &[u8]) -> bool {
        false
    }
}

impl LyingHolder {
    /// Starts a lying holder on loopback (TCP only, DHT server) with the given bootstrap list.
    pub async fn start(bootstrap: Vec<Multiaddr>) -> Result<Self> {
        init_tracing();
        let config = Config::new(Keypair::generate_ed25519())
            .with_network_id(NETWORK_ID)
            .with_mdns(false)
            .with_dht_mode(DhtMode::Server)
            .with_listen(vec!["/ip4/127.0.0.1/tcp/0".parse()?])
            .with_bootstrap(bootstrap)
            .with_record_validator(std::sync::Arc::new(AcceptAnything));
        let (client, mut events, event_loop) =
            kith_net::new(config, kith_net::Metrics::default()).context("starting a liar")?;
        let run = tokio::spawn(event_loop.run());
        let drain = tokio::spawn(async move { while events.recv().await.is_some() {} });
        let liar = Self {
            client,
            tasks: vec![run, drain],
        };
        let peer_id = liar.peer_id();
        wait_until(
            &format!("lying holder {peer_id} to listen"),
            STEP,
            POLL,
            async || {
                liar.client
                    .status()
                    .await
                    .is_ok_and(|s| !s.listen_addrs.is_empty())
            },
        )
        .await?;
        Ok(liar)
    }

    /// Its peer id.
    pub fn peer_id(&self) -> PeerId {
        self.client.local_peer_id()
    }

    /// Stores `value` under `key` in its own DHT store, to serve it to every GET. (It also offers
    /// it to the closest peers, who judge it by their own rules.)
    pub async fn hold(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        // The local store takes the record even when every peer refuses it, so the outcome of the
        // network part does not matter here; the local answer to a GET below is what counts.
        let _ = tokio::time::timeout(
            STEP,
            self.client.put_record(key.clone(), value.clone(), None),
        )
        .await;
        wait_until("the liar to hold its record", STEP, POLL, async || {
            let Ok(Ok(got)) =
                tokio::time::timeout(STEP, self.client.get_record(key.clone(), 1)).await
            else {
                return false;
            };
            got.answers
                .iter()
                .any(|a| a.holder.is_none() && a.value == value)
        })
        .await
    }

    /// Stops its network loop.
    pub async fn shutdown(self) -> Result<()> {
        tokio::time::timeout(STEP, self.client.shutdown())
            .await
            .context("liar shutdown did not finish")?
            .context("liar shutdown failed")?;
        for task in self.tasks {
            tokio::time::timeout(STEP, task)
                .await
                .context("liar task did not end")?
                .context("liar task failed")?;
        }
        Ok(())
    }
}
