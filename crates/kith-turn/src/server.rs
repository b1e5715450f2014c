//! The running server: `turn::server::Server` on one UDP socket, with our credential check
//! ([`RestAuth`]) and our relayed sockets ([`RelaySockets`], which enforce `max_allocations`).
//!
//! ```text
//!  client ──UDP──▶ listening socket ──▶ turn read loop (one task) ──▶ RestAuth::auth_handle
//!                                                  │                    (expiry, realm → key)
//!                                                  └─ Allocate ──▶ RelaySockets::allocate_conn
//!                                                                   (slot, bind, relay_ip:port)
//!  peer ──UDP──▶ relayed socket ──▶ turn per-allocation task ──▶ client (Data / ChannelData)
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, warn};
use turn::auth::AuthHandler;
use turn::relay::RelayAddressGenerator;
use turn::server::Server;
use turn::server::config::{ConnConfig, ServerConfig};
use webrtc_util::Conn;

use crate::config::{MIN_SECRET_LEN, TurnConfig};
use crate::credentials::{CredentialError, check_username, password_for};
use crate::error::TurnError;
use crate::metrics::TurnMetrics;

/// How long [`TurnServer::shutdown`] waits for `turn`'s tasks to release the sockets.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);

/// How many ports of `relay_ports` one Allocate tries before answering 508.
const MAX_PORT_TRIES: u32 = 64;

/// An embedded STUN/TURN server, running on the tokio runtime it was started on.
///
/// Stop it with [`TurnServer::shutdown`]; dropping it also stops it, without waiting for the
/// sockets to close.
pub struct TurnServer {
    /// `None` once shut down.
    server: Option<Server>,
    /// The bound listening address.
    local_addr: SocketAddr,
    /// `relay_ip` with the listening port.
    public_addr: SocketAddr,
    /// The listening socket, owned by `turn`'s read loop: gone once that loop has ended.
    socket: Weak<UdpSocket>,
    /// Counters for the node's metrics.
    metrics: Arc<TurnMetrics>,
}

impl TurnServer {
    /// Binds `config.listen` and starts serving STUN and TURN on the current tokio runtime.
    ///
    /// Must be called within a tokio runtime (`turn` spawns its tasks with `tokio::spawn`).
    /// Fails with [`TurnError::AddrInUse`] when the port is taken, and with the other
    /// [`TurnError`] variants for a configuration that cannot work (short secret, empty realm,
    /// bad port range).
    pub async fn start(config: TurnConfig) -> Result<TurnServer, TurnError> {
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(TurnError::SecretTooShort {
                len: config.secret.len(),
                min: MIN_SECRET_LEN,
            });
        }
        if config.realm.is_empty() {
            return Err(TurnError::EmptyRealm);
        }
        if let Some(ports) = &config.relay_ports
            && (ports.is_empty() || *ports.start() == 0)
        {
            return Err(TurnError::BadPortRange {
                start: *ports.start(),
                end: *ports.end(),
            });
        }

        let addr = config.listen;
        let socket = UdpSocket::bind(addr)
            .await
            .map_err(|source| bind_error(addr, source))?;
        let local_addr = socket
            .local_addr()
            .map_err(|source| TurnError::Bind { addr, source })?;
        let socket = Arc::new(socket);
        let metrics = Arc::new(TurnMetrics::default());

        let relay = RelaySockets {
            relay_ip: config.relay_ip,
            bind_ip: relay_bind_ip(config.listen.ip(), config.relay_ip),
            ports: config.relay_ports.clone(),
            next_port: AtomicU32::new(start_offset()),
            // `Semaphore::new` panics above MAX_PERMITS (~2^61): no real limit is that high.
            allow_private_peers: config.allow_private_peers,
            slots: Arc::new(Semaphore::new(
                config.max_allocations.min(Semaphore::MAX_PERMITS),
            )),
            metrics: Arc::clone(&metrics),
        };
        let auth = RestAuth {
            secret: config.secret,
            realm: config.realm.clone(),
            max_ttl: config.max_credential_ttl,
            metrics: Arc::clone(&metrics),
        };
        let server = Server::new(ServerConfig {
            conn_configs: vec![ConnConfig {
                conn: Arc::clone(&socket) as Arc<dyn Conn + Send + Sync>,
                relay_addr_generator: Box::new(relay),
            }],
            realm: config.realm,
            auth_handler: Arc::new(auth),
            // Zero means `turn`'s default, 10 minutes (RFC 8656 §12).
            channel_bind_timeout: Duration::ZERO,
            alloc_close_notify: None,
        })
        .await
        .map_err(TurnError::Server)?;

        debug!(%local_addr, relay_ip = %config.relay_ip, "TURN server started");
        Ok(TurnServer {
            server: Some(server),
            local_addr,
            public_addr: SocketAddr::new(config.relay_ip, local_addr.port()),
            socket: Arc::downgrade(&socket),
            metrics,
        })
    }

    /// The address the server listens on (with the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// `relay_ip` with the listening port: the address to give clients, e.g. to
    /// [`crate::ice_server_urls`]. Assumes the public port equals the local one (no port
    /// translation in front of the relay).
    pub fn public_addr(&self) -> SocketAddr {
        self.public_addr
    }

    /// The server's counters, to be read into the node's metrics.
    pub fn metrics(&self) -> Arc<TurnMetrics> {
        Arc::clone(&self.metrics)
    }

    /// Stops the server: closes every allocation and waits (at most 2 s) until the listening and
    /// relayed sockets are closed, so the port can be bound again right after.
    ///
    /// Cancel-safe in the sense that dropping the future leaves the server stopping anyway.
    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take()
            && let Err(err) = server.close().await
        {
            debug!(%err, "TURN server close");
        }
        let deadline = Instant::now() + SHUTDOWN_WAIT;
        while self.socket.strong_count() > 0
            || self.metrics.allocations_active.load(Ordering::Relaxed) > 0
        {
            if Instant::now() >= deadline {
                warn!(
                    local_addr = %self.local_addr,
                    "TURN server still closing its sockets after {SHUTDOWN_WAIT:?}"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        debug!(local_addr = %self.local_addr, "TURN server stopped");
    }
}

impl Drop for TurnServer {
    fn drop(&mut self) {
        // Without this, `turn`'s tasks would keep serving after the handle is gone.
        if let Some(server) = self.server.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                let _ = server.close().await;
            });
        }
    }
}

impl std::fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnServer")
            .field("local_addr", &self.local_addr)
            .field("public_addr", &self.public_addr)
            .field("running", &self.server.is_some())
            .finish_non_exhaustive()
    }
}

/// Maps a bind failure to the error that says what to do about it.
fn bind_error(addr: SocketAddr, source: std::io::Error) -> TurnError {
    if source.kind() == std::io::ErrorKind::AddrInUse {
        TurnError::AddrInUse { addr }
    } else {
        TurnError::Bind { addr, source }
    }
}

/// Where relayed sockets are bound: the listening IP when it is of the relayed family (so a
/// relay listening on one interface relays on it too), else any address of that family.
fn relay_bind_ip(listen: IpAddr, relay_ip: IpAddr) -> IpAddr {
    match (listen, relay_ip) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => listen,
        (_, IpAddr::V4(_)) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        (_, IpAddr::V6(_)) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// Where the scan of `relay_ports` starts, varied per start so restarts do not all reuse the
/// first ports of the range.
fn start_offset() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos())
}

/// Seconds since the Unix epoch by the system clock (0 for a clock before 1970).
fn now_unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// `turn`'s credential hook: accepts a username whose expiry is current and returns the
/// long-term key of its TURN REST API password. `turn` then checks `MESSAGE-INTEGRITY` with it,
/// which is where a wrong password fails.
struct RestAuth {
    /// The shared secret passwords are derived from.
    secret: Vec<u8>,
    /// Our realm; a request naming another one is refused.
    realm: String,
    /// How far ahead an expiry may be.
    max_ttl: Duration,
    /// Where the outcome is counted.
    metrics: Arc<TurnMetrics>,
}

impl AuthHandler for RestAuth {
    fn auth_handle(
        &self,
        username: &str,
        realm: &str,
        src_addr: SocketAddr,
    ) -> Result<Vec<u8>, turn::Error> {
        if realm != self.realm {
            TurnMetrics::inc(&self.metrics.credentials_refused);
            debug!(%src_addr, realm, "TURN request for another realm refused");
            return Err(turn::Error::Other(format!(
                "realm {realm:?} is not {:?}",
                self.realm
            )));
        }
        match check_username(username, now_unix_secs(), self.max_ttl) {
            Ok(_) => {
                TurnMetrics::inc(&self.metrics.credentials_accepted);
                let password = password_for(&self.secret, username);
                // MD5(username ":" realm ":" password), RFC 5389 §15.4: what `turn` expects.
                Ok(turn::auth::generate_auth_key(username, realm, &password))
            }
            Err(err) => {
                let counter = match err {
                    CredentialError::Expired { .. } => &self.metrics.credentials_expired,
                    _ => &self.metrics.credentials_refused,
                };
                TurnMetrics::inc(counter);
                debug!(%src_addr, %err, "TURN credentials refused");
                Err(turn::Error::Other(err.to_string()))
            }
        }
    }
}

/// `turn`'s relayed-address hook: binds one UDP socket per allocation, at most
/// `max_allocations` at once, and advertises it at `relay_ip`.
struct RelaySockets {
    /// The address put in relayed candidates.
    relay_ip: IpAddr,
    /// The address relayed sockets are bound on.
    bind_ip: IpAddr,
    /// The allowed ports, or `None` for ephemeral ones.
    ports: Option<RangeInclusive<u16>>,
    /// Where the next scan of `ports` starts (wraps around).
    next_port: AtomicU32,
    /// Whether relayed sockets talk to private peer addresses.
    allow_private_peers: bool,
    /// One permit per allowed allocation; each relayed socket holds one until it is dropped.
    slots: Arc<Semaphore>,
    /// Where allocations are counted.
    metrics: Arc<TurnMetrics>,
}

impl RelaySockets {
    /// Binds a relayed socket on `requested_port` (from an `EVEN-PORT` reservation), else in
    /// `ports`, else on an ephemeral port.
    async fn bind(&self, requested_port: u16) -> std::io::Result<UdpSocket> {
        let ports = match &self.ports {
            Some(ports) if requested_port == 0 => ports,
            _ => return UdpSocket::bind((self.bind_ip, requested_port)).await,
        };
        let first = u32::from(*ports.start());
        let len = u32::from(*ports.end()) - first + 1;
        let mut last_err = None;
        for _ in 0..len.min(MAX_PORT_TRIES) {
            let offset = self.next_port.fetch_add(1, Ordering::Relaxed) % len;
            let port = u16::try_from(first + offset).unwrap_or(*ports.end());
            match UdpSocket::bind((self.bind_ip, port)).await {
                Ok(socket) => return Ok(socket),
                Err(err) => last_err = Some(err),
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::ErrorKind::AddrInUse.into()))
    }
}

#[async_trait]
impl RelayAddressGenerator for RelaySockets {
    fn validate(&self) -> Result<(), turn::Error> {
        // `TurnServer::start` checked the configuration already.
        Ok(())
    }

    async fn allocate_conn(
        &self,
        use_ipv4: bool,
        requested_port: u16,
    ) -> Result<(Arc<dyn Conn + Send + Sync>, SocketAddr), turn::Error> {
        if use_ipv4 != self.relay_ip.is_ipv4() {
            return Err(turn::Error::Other(format!(
                "relayed addresses are offered in the family of {} only",
                self.relay_ip
            )));
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            TurnMetrics::inc(&self.metrics.allocations_refused_full);
            debug!("TURN allocation refused: all slots are in use");
            return Err(turn::Error::Other("all allocation slots in use".to_owned()));
        };
        let socket = self.bind(requested_port).await.map_err(|err| {
            warn!(%err, bind_ip = %self.bind_ip, "TURN relayed socket could not be bound");
            turn::Error::Other(format!("cannot bind a relayed socket: {err}"))
        })?;
        let mut relay_addr = socket
            .local_addr()
            .map_err(|err| turn::Error::Other(format!("relayed socket address: {err}")))?;
        relay_addr.set_ip(self.relay_ip);

        TurnMetrics::inc(&self.metrics.allocations);
        TurnMetrics::inc(&self.metrics.allocations_active);
        let conn = RelaySocket {
            socket,
            allow_private_peers: self.allow_private_peers,
            _slot: slot,
            metrics: Arc::clone(&self.metrics),
        };
        Ok((Arc::new(conn), relay_addr))
    }
}

/// A relayed UDP socket holding its allocation slot: `turn` drops the socket when the
/// allocation ends, whichever way it ends, and the slot is freed with it.
struct RelaySocket {
    /// The bound socket every call is passed to.
    socket: UdpSocket,
    /// Whether private peer addresses are reachable (else their datagrams are dropped).
    allow_private_peers: bool,
    /// Returned to `RelaySockets::slots` on drop.
    _slot: OwnedSemaphorePermit,
    /// `allocations_active` is decremented on drop.
    metrics: Arc<TurnMetrics>,
}

impl Drop for RelaySocket {
    fn drop(&mut self) {
        TurnMetrics::dec(&self.metrics.allocations_active);
    }
}

#[async_trait]
impl Conn for RelaySocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Conn::connect(&self.socket, addr).await
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Conn::recv(&self.socket, buf).await
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        // Each turn of the loop consumes one datagram: it ends when one from an allowed peer
        // arrives or the socket fails.
        loop {
            let (n, from) = Conn::recv_from(&self.socket, buf).await?;
            if self.allow_private_peers || is_public_peer(from.ip()) {
                return Ok((n, from));
            }
            TurnMetrics::inc(&self.metrics.peers_denied);
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Conn::send(&self.socket, buf).await
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if !self.allow_private_peers && !is_public_peer(target.ip()) {
            // Dropped like a lost datagram; an error would only make `turn` log it.
            TurnMetrics::inc(&self.metrics.peers_denied);
            return Ok(buf.len());
        }
        Conn::send_to(&self.socket, buf, target).await
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Conn::local_addr(&self.socket)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Conn::remote_addr(&self.socket)
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Conn::close(&self.socket).await
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

/// Whether `ip` may be a relayed peer when private peers are not allowed: not loopback,
/// private, shared (100.64/10), link-local, unique-local, multicast, broadcast or unspecified
/// (an IPv4-mapped IPv6 address is judged as its IPv4 address).
pub(crate) fn is_public_peer(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(ip) => {
            let [a, b, ..] = ip.octets();
            let shared = a == 100 && (64..128).contains(&b);
            let this_network = a == 0;
            !(ip.is_loopback()
                || ip.is_private()
                || ip.is_link_local()
                || ip.is_multicast()
                || ip.is_broadcast()
                || ip.is_unspecified()
                || shared
                || this_network)
        }
        IpAddr::V6(ip) => {
            if let Some(v4) = ip.to_ipv4_mapped() {
                return is_public_peer(IpAddr::V4(v4));
            }
            let first = ip.segments()[0];
            let unique_local = first & 0xfe00 == 0xfc00;
            let link_local = first & 0xffc0 == 0xfe80;
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || unique_local
                || link_local)
        }
    }
}

#[cfg(test)]
mod tests;
