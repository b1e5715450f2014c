//! The JSON bodies of the API. These are the stable contract for the CLI's `--json` output, the
//! web app and scripts: add fields, never rename or remove them.

use std::time::SystemTime;

use kith_service::Status;
use serde::{Deserialize, Serialize};

/// `GET /v1/status` and `kith status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// This node's peer id.
    pub peer_id: String,
    /// kith version.
    pub version: String,
    /// Addresses the node listens on.
    pub listen_addrs: Vec<String>,
    /// Confirmed external addresses.
    pub external_addrs: Vec<String>,
    /// Peers with an open connection.
    pub connected_peers: usize,
    /// Peers in the DHT routing table.
    pub routing_table_peers: usize,
    /// Records held in the local DHT store.
    pub dht_records: usize,
    /// Configured DHT mode: `auto`, `server` or `client`.
    pub dht_mode: String,
    /// Whether the DHT currently answers others' queries.
    pub dht_server: bool,
    /// Reachability: `unknown`, `public` or `private`.
    pub nat: String,
    /// The address AutoNAT confirmed, when `nat` is `public`.
    pub nat_addr: Option<String>,
    /// How others reach us: `public`, `private via relay`, `private` or `unknown`.
    pub reachability: String,
    /// Relays holding a reservation for us.
    pub relays: Vec<String>,
    /// Relay role only: live reservations and circuits served, totals since start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayServedReport>,
    /// Seconds since the node started.
    pub uptime_secs: u64,
    /// Peers in the address book.
    pub known_peers: usize,
    /// Bytes the store occupies on disk.
    pub store_bytes: u64,
    /// Network events dropped because the service fell behind.
    pub events_dropped: u64,
    /// Open connections other peers dialed.
    #[serde(default)]
    pub connections_inbound: usize,
    /// Open connections this node dialed.
    #[serde(default)]
    pub connections_outbound: usize,
    /// The connection manager's low water mark: trimming stops here.
    #[serde(default)]
    pub connections_low: usize,
    /// The connection manager's high water mark: above it, the least useful connections close.
    #[serde(default)]
    pub connections_high: usize,
    /// Connections closed since start to get back under the high water mark.
    #[serde(default)]
    pub connections_trimmed: u64,
    /// Connections closed since start because nothing used them for the idle timeout.
    #[serde(default)]
    pub connections_idle_closed: u64,
    /// Inbound connections refused since start at the high water mark.
    #[serde(default)]
    pub connections_refused: u64,
    /// Hole punching since start: relayed links DCUtR made direct.
    #[serde(default)]
    pub hole_punch: HolePunchReport,
}

/// Whether hole punching works from here: behind NAT, a direct link to a friend is faster and
/// does not depend on the relay's limits.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct HolePunchReport {
    /// Attempts that produced a direct connection.
    pub succeeded: u64,
    /// Attempts that failed (the relay kept carrying the traffic).
    pub failed: u64,
    /// The latest attempt's peer, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_peer: Option<String>,
    /// `succeeded` or `failed`, for the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_result: Option<String>,
    /// Why the latest attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Seconds since the latest attempt ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_secs_ago: Option<u64>,
}

impl From<&kith_net::HolePunchStats> for HolePunchReport {
    fn from(h: &kith_net::HolePunchStats) -> Self {
        Self {
            succeeded: h.succeeded,
            failed: h.failed,
            last_peer: h.last.as_ref().map(|a| a.peer.to_string()),
            last_result: h.last.as_ref().map(|a| {
                if a.error.is_none() {
                    "succeeded"
                } else {
                    "failed"
                }
                .to_owned()
            }),
            last_error: h.last.as_ref().and_then(|a| a.error.clone()),
            last_secs_ago: h.last.as_ref().map(|a| {
                SystemTime::now()
                    .duration_since(a.at)
                    .map(|d| d.as_secs())
                    .unwrap_or(0)
            }),
        }
    }
}

/// What a community relay is doing for others.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayServedReport {
    /// Live reservations.
    pub reservations: usize,
    /// Live circuits.
    pub circuits: usize,
    /// Circuits accepted since start.
    pub circuits_total: u64,
    /// Requests denied since start.
    pub denied_total: u64,
}

impl From<Status> for StatusReport {
    fn from(s: Status) -> Self {
        let strings = |v: &[libp2p::Multiaddr]| v.iter().map(ToString::to_string).collect();
        Self {
            peer_id: s.net.peer_id.to_string(),
            version: s.version.to_owned(),
            listen_addrs: strings(&s.net.listen_addrs),
            external_addrs: strings(&s.net.external_addrs),
            connected_peers: s.net.connected_peers,
            routing_table_peers: s.net.routing_table_peers,
            dht_records: s.net.dht_records,
            dht_mode: match s.net.dht_mode {
                kith_net::DhtMode::Auto => "auto",
                kith_net::DhtMode::Server => "server",
                kith_net::DhtMode::Client => "client",
            }
            .to_owned(),
            dht_server: s.net.dht_server,
            nat: s.net.nat.to_string(),
            nat_addr: match &s.net.nat {
                kith_net::NatStatus::Public { addr } => Some(addr.to_string()),
                _ => None,
            },
            reachability: match (&s.net.nat, s.net.relayed_via.is_empty()) {
                (kith_net::NatStatus::Public { .. }, _) => "public",
                (_, false) => "private via relay",
                (kith_net::NatStatus::Private, true) => "private",
                (kith_net::NatStatus::Unknown, true) => "unknown",
            }
            .to_owned(),
            relays: s.net.relayed_via.iter().map(ToString::to_string).collect(),
            relay: s.net.relay_served.map(|r| RelayServedReport {
                reservations: r.reservations,
                circuits: r.circuits,
                circuits_total: r.circuits_total,
                denied_total: r.denied_total,
            }),
            uptime_secs: s.uptime.as_secs(),
            known_peers: s.known_peers,
            store_bytes: s.store_bytes,
            events_dropped: s.events_dropped,
            connections_inbound: s.net.connections_inbound,
            connections_outbound: s.net.connections_outbound,
            connections_low: s.net.connections_low,
            connections_high: s.net.connections_high,
            connections_trimmed: s.net.connections_trimmed,
            connections_idle_closed: s.net.connections_idle_closed,
            connections_refused: s.net.connections_refused,
            hole_punch: HolePunchReport::from(&s.net.hole_punch),
        }
    }
}

/// One entry of `GET /v1/peers` and `kith peers --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PeerReport {
    /// The peer's id.
    pub peer_id: String,
    /// Remote addresses of the open connections.
    pub addrs: Vec<String>,
    /// Protocols it announced.
    pub protocols: Vec<String>,
    /// Its agent string.
    pub agent: String,
    /// `inbound` or `outbound` (of the oldest open connection).
    pub direction: String,
    /// Seconds since the first open connection was established.
    pub connected_secs: u64,
    /// `direct` when at least one connection goes straight to the peer, else `relayed`.
    #[serde(default)]
    pub path: String,
    /// Each open connection, oldest first.
    #[serde(default)]
    pub connections: Vec<ConnectionReport>,
}

/// One open connection of a peer: whether it is direct (and over what) or through a relay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConnectionReport {
    /// The remote address.
    pub addr: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// `tcp`, `quic` or `other` (direct), or `relayed`.
    pub path: String,
}

impl From<kith_net::PeerInfo> for PeerReport {
    fn from(p: kith_net::PeerInfo) -> Self {
        Self {
            peer_id: p.peer_id.to_string(),
            addrs: p.addrs.iter().map(ToString::to_string).collect(),
            protocols: p.protocols,
            agent: p.agent,
            direction: if p.inbound { "inbound" } else { "outbound" }.to_owned(),
            connected_secs: SystemTime::now()
                .duration_since(p.connected_since)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            path: if p.connections.iter().any(|c| c.path.is_direct()) {
                "direct"
            } else {
                "relayed"
            }
            .to_owned(),
            connections: p
                .connections
                .iter()
                .map(|c| ConnectionReport {
                    addr: c.addr.to_string(),
                    direction: if c.inbound { "inbound" } else { "outbound" }.to_owned(),
                    path: c.path.as_str().to_owned(),
                })
                .collect(),
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ErrorBody {
    /// What went wrong, in words a user can act on.
    pub error: String,
    /// Machine-readable kind: `invalid`, `not_found`, `name_taken`, `name_conflict`,
    /// `petname_taken`, `no_peers`, `unauthorized`, `internal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name conflicts: the key the name was pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_peer_id: Option<String>,
    /// Name conflicts and taken names: the key the DHT returns now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_peer_id: Option<String>,
    /// Taken names and conflicts: since when the (pinned) holder has held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
}

impl ErrorBody {
    /// An error with only a message.
    pub fn message(error: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            ..Self::default()
        }
    }
}

/// `GET /v1/names/pow`: what a client needs to compute a claim's proof of work itself.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PowParams {
    /// The node's peer id (the work covers it).
    pub peer_id: String,
    /// Leading zero bits required.
    pub difficulty: u8,
    /// The node's clock, unix ms (use it as the claim time).
    pub now_ms: u64,
}

/// `POST /v1/names`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RegisterRequest {
    /// The name as typed.
    pub name: String,
    /// Claim time the supplied work covers (unix ms); omit both to let the node do the work.
    #[serde(default)]
    pub created_at_ms: Option<u64>,
    /// The proof-of-work nonce.
    #[serde(default)]
    pub pow_nonce: Option<u64>,
}

/// A name claim: `POST /v1/names`, `GET /v1/names`, `DELETE /v1/names/{name}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NameReport {
    /// The normalized name.
    pub name: String,
    /// The owner.
    pub peer_id: String,
    /// Original claim time, unix ms.
    pub created_at: u64,
    /// Expiry, unix ms.
    pub expires_at: u64,
    /// Version of the claim.
    pub seq: u64,
    /// Addresses in the claim.
    pub addrs: Vec<String>,
    /// Registration only: whether this renewed an existing claim.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed: Option<bool>,
    /// Registration only: whether a DHT peer took it (false: stored, published later).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published: Option<bool>,
}

impl From<&kith_core::NameRecord> for NameReport {
    fn from(r: &kith_core::NameRecord) -> Self {
        let p = r.params();
        Self {
            name: p.name.to_string(),
            peer_id: r.peer_id().to_string(),
            created_at: p.created_at_ms,
            expires_at: p.expires_at_ms,
            seq: p.seq,
            addrs: p.addrs.iter().map(ToString::to_string).collect(),
            renewed: None,
            published: None,
        }
    }
}

/// `GET /v1/resolve/{name}` and `kith resolve --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ResolveReport {
    /// The normalized name.
    pub name: String,
    /// Its owner.
    pub peer_id: String,
    /// Always true on success: the owner matches the pin (or was just pinned).
    pub pinned: bool,
    /// True when this lookup created the pin.
    pub newly_pinned: bool,
    /// When the pin was made, unix ms.
    pub pinned_at: u64,
    /// Claim expiry, unix ms.
    pub expires_at: u64,
    /// Original claim time, unix ms.
    pub created_at: u64,
    /// Distinct DHT holders that agreed, at the lookup the answer rests on (0 when answered
    /// from a pin alone).
    pub holders: usize,
    /// Addresses in the claim.
    pub addrs: Vec<String>,
    /// Other owners some holders returned (ignored).
    pub rivals: Vec<String>,
    /// The same rivals with how many distinct holders returned each, strongest first.
    #[serde(default)]
    pub rival_holders: Vec<RivalReport>,
    /// Replica keys (of 5) the owner won at that lookup.
    #[serde(default)]
    pub replicas: usize,
    /// Where the answer came from: `network` (asked now), `cache` (the pin and this node's last
    /// lookup; no network call) or `pin` (the pin alone; no network call). Pass `?fresh=true`
    /// (CLI `--fresh`) to ask the network now.
    #[serde(default)]
    pub source: String,
    /// When the DHT last confirmed this owner, unix ms (absent: not since the node started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<u64>,
}

/// Another owner some DHT holders returned for a name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RivalReport {
    /// The rival's peer id.
    pub peer_id: String,
    /// Distinct holders that returned it, over all replica keys.
    pub holders: usize,
}

/// A contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ContactReport {
    /// The local petname.
    pub petname: String,
    /// Their peer id.
    pub peer_id: String,
    /// The name they were added by (empty if none).
    pub name: String,
    /// When added, unix ms.
    pub added_at: u64,
}

/// `POST /v1/contacts`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddContactRequest {
    /// The petname to use.
    pub petname: String,
    /// A name or a peer id.
    pub target: String,
}

/// `POST /v1/contacts/invite`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AddInviteRequest {
    /// The `kith://invite/...` link.
    pub invite: String,
    /// Petname to use instead of the invite's name.
    #[serde(default)]
    pub petname: Option<String>,
}

/// `GET /v1/verify/{target}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyReport {
    /// Our peer id.
    pub you: String,
    /// Their peer id.
    pub peer_id: String,
    /// 12 groups of 5 digits, the same on both sides.
    pub safety_number: String,
}

/// `GET /v1/invite`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InviteReport {
    /// The link to share.
    pub url: String,
    /// Our peer id.
    pub peer_id: String,
    /// Our name, if we own one.
    pub name: Option<String>,
    /// Addresses in the link.
    pub addrs: Vec<String>,
}

/// `POST /v1/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendRequest {
    /// Petname, name or peer id.
    pub to: String,
    /// The text (1 byte to 64 KiB of UTF-8).
    pub text: String,
}

/// The answer to `POST /v1/messages` and `kith send --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendReport {
    /// Message id (32 hex characters).
    pub id: String,
    /// The recipient.
    pub peer_id: String,
    /// `delivered` or `queued`.
    pub status: String,
}

/// One message in `GET /v1/messages/{target}` and `kith history --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MessageReport {
    /// Message id (32 hex characters).
    pub id: String,
    /// Sender peer id.
    pub from: String,
    /// Recipient peer id.
    pub to: String,
    /// The text.
    pub text: String,
    /// When sent, unix ms (sender's clock).
    pub sent_at: u64,
    /// When stored by the recipient (incoming) or acknowledged (outgoing), unix ms; 0 if not yet.
    pub received_at: u64,
    /// `queued`, `delivered`, `read`, `failed` (outgoing); `received`, `seen` (incoming).
    pub status: String,
    /// Why it failed, if it did.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub failure: String,
}

/// `GET /v1/messages/{target}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryReport {
    /// The other side.
    pub peer_id: String,
    /// Oldest first.
    pub messages: Vec<MessageReport>,
    /// Older messages exist before the first one: page on with `before=<first id>`.
    #[serde(default)]
    pub more: bool,
}

/// `POST /v1/messages/{target}/read`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MarkReadReport {
    /// The conversation.
    pub peer_id: String,
    /// How many incoming messages became read (each gets a read receipt).
    pub marked: usize,
}

/// One conversation in `GET /v1/inbox` and `GET /v1/requests`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ConversationReport {
    /// The other side.
    pub peer_id: String,
    /// Our petname for them, if any.
    pub petname: Option<String>,
    /// Unread messages.
    pub unread: u32,
    /// Last message time, unix ms.
    pub last_message_at: u64,
    /// Last message text (shortened).
    pub last_text: String,
    /// `accepted`, `request` (unknown sender) or `blocked`.
    pub trust: String,
}

/// `POST /v1/accept/{target}` and `POST /v1/block/{target}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrustReport {
    /// Who.
    pub peer_id: String,
    /// The new trust.
    pub trust: String,
}

/// One WebSocket event on `/v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventReport {
    /// A new incoming message.
    Message {
        /// The message.
        message: MessageReport,
    },
    /// An outgoing message changed status.
    Status {
        /// Message id.
        id: String,
        /// The conversation.
        peer_id: String,
        /// The new status.
        status: String,
    },
    /// A new group message (from another member).
    GroupMessage {
        /// The group id (32 hex characters).
        group_id: String,
        /// The message.
        message: GroupMessageReport,
    },
    /// An invitation to a group arrived (see `GET /v1/groups/invitations`).
    GroupInvitation {
        /// The group id.
        group_id: String,
    },
    /// A group's member list changed.
    GroupChanged {
        /// The group id.
        group_id: String,
    },
    /// More of an incoming file arrived (`received == size`: complete).
    File {
        /// The file id (the message that carried it).
        id: String,
        /// Its sender.
        peer_id: String,
        /// Ciphertext bytes verified so far.
        received: u64,
        /// Ciphertext size.
        size: u64,
    },
    /// A check of a pinned name found it held by another key (`contested: false`; the name is
    /// refused from now on, until `GET /v1/resolve/{name}?fresh=true` finds the pinned key again)
    /// or contested with no owner holding a majority of its keys (`contested: true`; the pin
    /// still answers).
    #[serde(rename = "name.conflict")]
    NameConflict {
        /// The name.
        name: String,
        /// The key it is pinned to.
        pinned_peer_id: String,
        /// The other key the DHT returns.
        found_peer_id: String,
        /// When the pinned owner claimed it (RFC 3339).
        since: String,
        /// True for a contest, false for a clear new owner.
        contested: bool,
    },
    /// Someone is calling: ring.
    #[serde(rename = "call.incoming")]
    CallIncoming {
        /// The call.
        call: CallReport,
    },
    /// The callee's node got our invitation and rings.
    #[serde(rename = "call.ringing")]
    CallRinging {
        /// The call.
        call: CallReport,
    },
    /// A participant joined.
    #[serde(rename = "call.joined")]
    CallJoined {
        /// The call now.
        call: CallReport,
        /// Who joined (peer id).
        peer: String,
    },
    /// A browser signal (SDP or ICE candidate) from another participant.
    #[serde(rename = "call.signal")]
    CallSignal {
        /// The call.
        call_id: String,
        /// Order of arrival in this call, from 1 (the same `seq` as in `GET /v1/calls/{id}`).
        seq: u64,
        /// Who sent it (peer id).
        from: String,
        /// "sdp" or "ice".
        kind: String,
        /// The browser's JSON as its sender posted it.
        data: serde_json::Value,
    },
    /// A participant left a call that goes on.
    #[serde(rename = "call.left")]
    CallLeft {
        /// The call now.
        call: CallReport,
        /// Who left.
        peer: String,
    },
    /// The call is over for us (`outcome` says why).
    #[serde(rename = "call.ended")]
    CallEnded {
        /// The call.
        call: CallReport,
    },
    /// Two people called each other at once: our call `from` gave way to `call`, which this node
    /// joined; the page carries on with `call` as if it had accepted it.
    #[serde(rename = "call.merged")]
    CallMerged {
        /// Our call that gave way.
        from: String,
        /// The call we are in now.
        call: CallReport,
    },
    /// What `GET /v1/calls/ice` answers changed (TURN credentials arrived or expired, servers
    /// or "relay only" were set): a page that keeps the last answer asks again.
    #[serde(rename = "call.ice_changed")]
    CallIceChanged,
    /// Events were dropped because this client read too slowly; re-read history.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// `POST /v1/groups`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CreateGroupRequest {
    /// The title (1 to 64 characters).
    pub title: String,
}

/// `POST /v1/groups/{group}/invite` and `/remove`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupMemberRequest {
    /// Petname, name or peer id.
    pub member: String,
}

/// `POST /v1/groups/{group}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupSendRequest {
    /// The text (1 byte to 64 KiB of UTF-8).
    pub text: String,
}

/// One member of a group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupMemberReport {
    /// Peer id.
    pub peer_id: String,
    /// May change the member list.
    pub admin: bool,
    /// Our petname for them, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub petname: Option<String>,
}

/// A group, as `GET /v1/groups` and `kith group ... --json` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupReport {
    /// Group id (32 hex characters).
    pub group_id: String,
    /// Title.
    pub title: String,
    /// Member-list version.
    pub version: u64,
    /// Members.
    pub members: Vec<GroupMemberReport>,
    /// `joined`, `invited`, `left` or `removed`.
    pub state: String,
    /// Whether this node is an admin.
    pub admin: bool,
    /// Who invited us, if someone did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invited_by: Option<String>,
    /// Unread messages.
    pub unread: u32,
    /// The last message's text, shortened (empty when there is none).
    #[serde(default)]
    pub last_text: String,
    /// When the last message was sent or stored, unix ms (0 when there is none).
    #[serde(default)]
    pub last_message_at: u64,
}

/// The answer to `POST /v1/groups/{group}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupSendReport {
    /// Message id.
    pub id: String,
    /// The group.
    pub group_id: String,
    /// Our sequence number in this group.
    pub seq: u64,
    /// Whether a member was reachable by gossip right away (others catch up by sync).
    pub published: bool,
}

/// One group message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupMessageReport {
    /// Message id.
    pub id: String,
    /// Sender peer id.
    pub from: String,
    /// The sender's sequence number.
    pub seq: u64,
    /// The text.
    pub text: String,
    /// When sent, unix ms (sender's clock).
    pub sent_at: u64,
    /// When stored here, unix ms.
    pub received_at: u64,
    /// Sent by this node.
    pub outgoing: bool,
}

/// `GET /v1/groups/{group}/messages`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupHistoryReport {
    /// The group.
    pub group_id: String,
    /// Its title.
    pub title: String,
    /// Oldest first.
    pub messages: Vec<GroupMessageReport>,
    /// Older messages exist before the first one: page on with `before=<first id>`.
    #[serde(default)]
    pub more: bool,
}

impl GroupMessageReport {
    /// Converts a stored group message.
    pub fn from_message(m: &kith_service::GroupMessage) -> Self {
        Self {
            id: hex::encode(m.id),
            from: libp2p::PeerId::from_bytes(&m.sender)
                .map(|p| p.to_string())
                .unwrap_or_default(),
            seq: m.seq,
            text: m.text.clone(),
            sent_at: m.sent_at_ms,
            received_at: m.received_at_ms,
            outgoing: m.outgoing,
        }
    }
}

impl GroupReport {
    /// Converts a group; `petname` names members we have as contacts.
    pub fn from_info(
        g: &kith_service::GroupInfo,
        petname: impl Fn(&libp2p::PeerId) -> Option<String>,
    ) -> Self {
        let state = if g.removed {
            "removed"
        } else if g.left {
            "left"
        } else if g.joined {
            "joined"
        } else {
            "invited"
        };
        Self {
            group_id: hex::encode(g.id),
            title: g.title.clone(),
            version: g.version,
            members: g
                .members
                .iter()
                .map(|(p, admin)| GroupMemberReport {
                    peer_id: p.to_string(),
                    admin: *admin,
                    petname: petname(p),
                })
                .collect(),
            state: state.to_owned(),
            admin: g.admin,
            invited_by: g.invited_by.map(|p| p.to_string()),
            unread: g.unread,
            last_text: String::new(),
            last_message_at: 0,
        }
    }
}

/// The API's name for a message status.
pub fn status_name(status: kith_service::MessageStatus) -> &'static str {
    use kith_service::MessageStatus as S;
    match status {
        S::Queued => "queued",
        S::Delivered => "delivered",
        S::Read => "read",
        S::Failed => "failed",
        S::Received => "received",
        S::Seen => "seen",
    }
}

/// The API's name for a trust level.
pub fn trust_name(trust: kith_service::Trust) -> &'static str {
    match trust {
        kith_service::Trust::Unknown => "request",
        kith_service::Trust::Accepted => "accepted",
        kith_service::Trust::Blocked => "blocked",
    }
}

impl MessageReport {
    /// Converts a stored message; `me` is our peer id.
    pub fn from_message(m: &kith_service::Message, me: &libp2p::PeerId) -> Self {
        let other = libp2p::PeerId::from_bytes(&m.peer_id)
            .map(|p| p.to_string())
            .unwrap_or_default();
        let (from, to) = if m.outgoing {
            (me.to_string(), other)
        } else {
            (other, me.to_string())
        };
        Self {
            id: hex::encode(m.id),
            from,
            to,
            text: m.text.clone(),
            sent_at: m.sent_at_ms,
            received_at: m.received_at_ms,
            status: status_name(m.status).to_owned(),
            failure: m.failure.clone(),
        }
    }
}

/// `GET /v1/relay` and `kith relay status --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RelayReport {
    /// Whether this node runs as a community relay.
    pub relay: bool,
    /// Circuit relay: live reservations and circuits, totals.
    pub circuits: Option<RelayServedReport>,
    /// Registered mailbox recipients.
    pub mailbox_recipients: usize,
    /// Envelopes held.
    pub mailbox_items: usize,
    /// Bytes held.
    pub mailbox_bytes: u64,
    /// Per-recipient usage, most items first (at most 100).
    pub recipients: Vec<RecipientUsage>,
}

/// One recipient's mailbox usage.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RecipientUsage {
    /// The recipient.
    pub peer_id: String,
    /// Envelopes held.
    pub items: u64,
    /// Bytes held.
    pub bytes: u64,
}

/// `GET /v1/doctor` and `kith doctor --json`: a diagnosis in plain words (built in `doctor.rs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoctorReport {
    /// True when no check found a problem (warnings allowed); `kith doctor` then exits 0.
    pub healthy: bool,
    /// One entry per aspect, in the order a person would look at them.
    pub checks: Vec<DoctorCheck>,
}

/// One aspect of [`DoctorReport`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DoctorCheck {
    /// Short stable id: `node`, `listen`, `peers`, `reachability`, `dht`, `mailboxes`, `calls`,
    /// `names`, `name_rivals` (only when we own a name), `key_bundle`, `clock`.
    pub check: String,
    /// `ok`, `warning` (works, could be better) or `problem` (something a person will notice).
    pub level: String,
    /// What was found, in plain words.
    pub detail: String,
    /// For warnings and problems: the command or setting that fixes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

/// `POST /v1/files`: send a file the node can read (the CLI passes an absolute path).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SendFileRequest {
    /// Petname, name or peer id (or empty with `group`).
    #[serde(default)]
    pub to: String,
    /// A group (id or title) to send to instead of a person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Absolute path of the file on the node's machine.
    pub path: String,
    /// Text shown with it.
    #[serde(default)]
    pub caption: String,
    /// A filter preset for photos (`GET /v1/filters`).
    #[serde(default)]
    pub filter: Option<String>,
    /// Send a photo's own bytes (metadata stripped except orientation).
    #[serde(default)]
    pub original: bool,
}

/// The answer to `POST /v1/files` and `kith send-file --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SendFileReport {
    /// Message id (32 hex characters).
    pub id: String,
    /// The file's id (the message id: one file per message).
    pub file_id: String,
    /// BLAKE3/bao root of the ciphertext (hex).
    pub hash: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// `delivered` or `queued` (the offer message; the recipient then fetches the file).
    pub status: String,
    /// Something the sender should know (an image sent as a plain file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// One file in `GET /v1/files` and `kith files --json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileInfo {
    /// The file's id.
    pub file_id: String,
    /// The message that carried it.
    pub message_id: String,
    /// Who sent it (our own peer id for files we sent).
    pub from: String,
    /// The other side of the conversation.
    pub peer_id: String,
    /// Sent by us.
    pub outgoing: bool,
    /// Its name.
    pub name: String,
    /// Its media type.
    pub mime: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// BLAKE3/bao root of the ciphertext (hex).
    pub hash: String,
    /// `complete`, `downloading`, `paused` or `failed`.
    pub state: String,
    /// Ciphertext bytes verified so far.
    pub received_bytes: u64,
    /// Ciphertext size (what `received_bytes` counts up to).
    pub transfer_size: u64,
    /// Photo dimensions (0 for other files).
    pub width: u32,
    /// Photo dimensions (0 for other files).
    pub height: u32,
    /// Text sent with it.
    pub caption: String,
    /// Why it is paused or failed (or, for a sent file, where it waits).
    pub note: String,
    /// The group it was sent in (hex id); absent for a direct message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// For a file we sent: bytes served to its recipients or pushed to relays since the node
    /// started (for a progress bar; can exceed `transfer_size` with several recipients).
    #[serde(default)]
    pub sent_bytes: u64,
}

/// `POST /v1/files/{id}/save`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SaveFileRequest {
    /// Absolute path of a new file, or of a directory to save into under the file's name.
    pub path: String,
}

/// The answer to `POST /v1/files/{id}/save`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SavedFile {
    /// Where the file was written.
    pub path: String,
    /// Bytes written.
    pub size: u64,
}

/// One filter preset in `GET /v1/filters`: the web app previews with exactly this matrix.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FilterInfo {
    /// Name used by `--filter`.
    pub name: String,
    /// Name shown to people.
    pub label: String,
    /// 4×5 colour matrix, row-major, as SVG `feColorMatrix type="matrix"` (sRGB).
    pub matrix: Vec<f32>,
}

/// One call, as `GET /v1/calls` and the call events show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallReport {
    /// 32 hex characters.
    pub call_id: String,
    /// The other side: the caller of an incoming call, the (first) callee of an outgoing one.
    pub peer: String,
    /// Our petname for `peer`, if we have one.
    pub name: Option<String>,
    /// The group of a group call.
    pub group: Option<String>,
    /// "outgoing" or "incoming".
    pub direction: String,
    /// Started as a video call.
    pub video: bool,
    /// "ringing", "active" or "ended".
    pub state: String,
    /// Once ended: "completed", "missed", "declined", "busy", "unavailable" or "failed".
    pub outcome: Option<String>,
    /// When it started ringing, unix ms.
    pub started_at_ms: u64,
    /// When it was answered.
    pub answered_at_ms: Option<u64>,
    /// When it ended.
    pub ended_at_ms: Option<u64>,
    /// From the answer to the end.
    pub duration_ms: Option<u64>,
    /// Everyone else in the call (never ourselves).
    pub participants: Vec<CallParticipantReport>,
    /// An incoming call whose caller's page sends us its SDP offer (it may still be on its way):
    /// our page answers it on joining instead of offering, so joining takes one signal hop.
    #[serde(default)]
    pub caller_offers: bool,
}

/// One other participant of a call.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallParticipantReport {
    /// Peer id.
    pub peer: String,
    /// "ringing", "joined" or "left".
    pub state: String,
}

/// `GET /v1/calls/{id}`: the call and the browser signals the others sent so far.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallDetailReport {
    /// The call.
    #[serde(flatten)]
    pub call: CallReport,
    /// Signals from the other participants, in order of arrival (empty once ended).
    pub signals: Vec<CallSignalReport>,
}

/// One browser signal from another participant.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallSignalReport {
    /// Order of arrival, from 1.
    pub seq: u64,
    /// Who sent it.
    pub from: String,
    /// "sdp" or "ice".
    pub kind: String,
    /// The browser's JSON.
    pub data: serde_json::Value,
}

/// `GET /v1/calls`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallsReport {
    /// Newest first.
    pub calls: Vec<CallReport>,
}

/// `POST /v1/calls`: a person (`to`) or a group (`group`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct StartCallRequest {
    /// Petname, name or peer id.
    #[serde(default)]
    pub to: Option<String>,
    /// Group id, id prefix or title (up to 4 members).
    #[serde(default)]
    pub group: Option<String>,
    /// Start with the camera on.
    #[serde(default)]
    pub video: bool,
    /// This client sends each invitee its SDP offer (`POST /v1/calls/{id}/signal`) right after
    /// this answers; the invitees' pages then answer it instead of offering (the web app does).
    #[serde(default)]
    pub offers: bool,
}

/// `POST /v1/calls/{id}/signal`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CallSignalRequest {
    /// The participant it is for (peer id); may be left out in a call between two people.
    #[serde(default)]
    pub to: Option<String>,
    /// "sdp" or "ice".
    pub kind: String,
    /// An RTCSessionDescriptionInit or RTCIceCandidateInit (null: end of candidates).
    pub data: serde_json::Value,
}

/// `GET /v1/calls/ice`: what `RTCPeerConnection` needs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IceReport {
    /// `RTCIceServer`s (TURN on community relays), possibly none.
    pub ice_servers: Vec<IceServerReport>,
    /// Use `iceTransportPolicy: "relay"`.
    pub relay_only: bool,
}

/// One `RTCIceServer`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IceServerReport {
    /// `turn:`/`stun:` URLs.
    pub urls: Vec<String>,
    /// TURN user name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub username: Option<String>,
    /// TURN password.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub credential: Option<String>,
}

/// `{"ok": true}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OkReport {
    /// Always true.
    pub ok: bool,
}
