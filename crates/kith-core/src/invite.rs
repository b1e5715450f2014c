use libp2p::{Multiaddr, PeerId};

use crate::Name;

/// Longest invite link accepted, so a pasted blob cannot be huge.
const MAX_LEN: usize = 4096;
/// Most addresses carried in one invite.
const MAX_ADDRS: usize = 16;

/// A `kith://invite/<peer id>?name=<name>&addr=<multiaddr>...` link: everything a friend needs to
/// add you without any lookup. The peer id is the trust anchor (connections prove it); the name
/// is what you call yourself, and the addresses are hints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invite {
    /// Who is inviting.
    pub peer_id: PeerId,
    /// Their name, if they registered one.
    pub name: Option<Name>,
    /// Where to reach them.
    pub addrs: Vec<Multiaddr>,
}

/// Why an invite link was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InviteError {
    /// Not a `kith://invite/...` link.
    #[error("not a kith invite link (expected kith://invite/<peer id>?...)")]
    NotAnInvite,
    /// The peer id part is not a peer id.
    #[error("the invite's peer id '{0}' is not valid")]
    BadPeerId(String),
    /// The name is not a valid name.
    #[error("the invite's name is invalid: {0}")]
    BadName(String),
    /// An address is not a multiaddr.
    #[error("the invite's address '{0}' is not a valid multiaddr")]
    BadAddress(String),
    /// Too long or too many addresses.
    #[error("the invite is too large")]
    TooLarge,
}

impl Invite {
    /// The link text.
    pub fn to_url(&self) -> String {
        let mut url = format!("kith://invite/{}", self.peer_id);
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some(name) = &self.name {
            query.append_pair("name", name.as_str());
        }
        for addr in self.addrs.iter().take(MAX_ADDRS) {
            query.append_pair("addr", &addr.to_string());
        }
        let query = query.finish();
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query);
        }
        url
    }

    /// Parses and validates a link.
    pub fn parse(text: &str) -> Result<Self, InviteError> {
        let text = text.trim();
        if text.len() > MAX_LEN {
            return Err(InviteError::TooLarge);
        }
        let url = url::Url::parse(text).map_err(|_| InviteError::NotAnInvite)?;
        if url.scheme() != "kith" || url.host_str() != Some("invite") {
            return Err(InviteError::NotAnInvite);
        }
        let id = url.path().trim_start_matches('/');
        let peer_id: PeerId = id
            .parse()
            .map_err(|_| InviteError::BadPeerId(id.to_owned()))?;
        let mut name = None;
        let mut addrs = Vec::new();
        for (key, value) in url.query_pairs() {
            match key.as_ref() {
                "name" => {
                    name =
                        Some(Name::parse(&value).map_err(|e| InviteError::BadName(e.to_string()))?);
                }
                "addr" => {
                    if addrs.len() == MAX_ADDRS {
                        return Err(InviteError::TooLarge);
                    }
                    addrs.push(
                        value
                            .parse()
                            .map_err(|_| InviteError::BadAddress(value.to_string()))?,
                    );
                }
                // Unknown keys are ignored so newer invites still work here.
                _ => {}
            }
        }
        Ok(Self {
            peer_id,
            name,
            addrs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invite_survives_the_round_trip() {
        let invite = Invite {
            peer_id: libp2p::identity::Keypair::generate_ed25519()
                .public()
                .to_peer_id(),
            name: Some(Name::parse("Jürgen").unwrap()),
            addrs: vec![
                "/ip4/127.0.0.1/tcp/4717".parse().unwrap(),
                "/ip4/127.0.0.1/udp/4717/quic-v1".parse().unwrap(),
            ],
        };
        let url = invite.to_url();
        assert!(url.starts_with("kith://invite/12D3Koo"));
        assert_eq!(Invite::parse(&url).unwrap(), invite);
    }

    #[test]
    fn bad_invites_are_refused_with_a_reason() {
        let peer = PeerId::random();
        assert_eq!(
            Invite::parse("https://example.org"),
            Err(InviteError::NotAnInvite)
        );
        assert_eq!(
            Invite::parse("kith://other/x"),
            Err(InviteError::NotAnInvite)
        );
        assert!(matches!(
            Invite::parse("kith://invite/nope"),
            Err(InviteError::BadPeerId(_))
        ));
        assert!(matches!(
            Invite::parse(&format!("kith://invite/{peer}?name=a%20b")),
            Err(InviteError::BadName(_))
        ));
        assert!(matches!(
            Invite::parse(&format!("kith://invite/{peer}?addr=garbage")),
            Err(InviteError::BadAddress(_))
        ));
        let long = format!(
            "kith://invite/{peer}?{}",
            "addr=/ip4/1.2.3.4/tcp/1&".repeat(200)
        );
        assert_eq!(Invite::parse(&long), Err(InviteError::TooLarge));
    }
}
