//! The `RTCIceServer.urls` of a relay's STUN/TURN server.

use std::net::{IpAddr, SocketAddr};

/// The ICE server URLs (RFC 7064, RFC 7065) a browser needs to use the server at `public_addr`:
/// `stun:<ip>:<port>` and `turn:<ip>:<port>?transport=udp`, IPv6 in brackets.
///
/// Give them to the web app together with minted [`crate::Credentials`] as one
/// `RTCIceServer { urls, username, credential }`. `public_addr` is the address peers on the
/// Internet reach (`TurnServer::public_addr`), never an unspecified `0.0.0.0`.
pub fn ice_server_urls(public_addr: SocketAddr) -> Vec<String> {
    let host = match public_addr.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let port = public_addr.port();
    vec![
        format!("stun:{host}:{port}"),
        format!("turn:{host}:{port}?transport=udp"),
    ]
}
