//! kith-api: the node's local HTTP API, server and client.
//!
//! The node serves it on `127.0.0.1` only; every request carries `Authorization: Bearer <token>`
//! with the token from the home directory's `api.token`. The CLI is just a client of this API, and
//! so are the web app, bots and scripts.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/status` | [`StatusReport`] |
//! | GET | `/v1/peers` | `[`[`PeerReport`]`]` |
//! | POST | `/v1/shutdown` | 202, then the node stops cleanly |
//! | GET | `/v1/names/pow` | [`PowParams`] |
//! | POST | `/v1/names` | [`RegisterRequest`] → [`NameReport`] (409 if held by another key) |
//! | GET | `/v1/names` | `[`[`NameReport`]`]` |
//! | DELETE | `/v1/names/{name}` | [`NameReport`] of the final, short-lived claim |
//! | GET | `/v1/resolve/{name}` | [`ResolveReport`] (404 unclaimed, 409 key changed) |
//! | GET | `/v1/contacts` | `[`[`ContactReport`]`]` |
//! | POST | `/v1/contacts` | [`AddContactRequest`] → [`ContactReport`] |
//! | POST | `/v1/contacts/invite` | [`AddInviteRequest`] → [`ContactReport`] |
//! | DELETE | `/v1/contacts/{petname}` | 204 |
//! | GET | `/v1/verify/{target}` | [`VerifyReport`] |
//! | GET | `/v1/invite` | [`InviteReport`] |
//! | POST | `/v1/messages` | [`SendRequest`] → [`SendReport`] (`delivered` or `queued`) |
//! | GET | `/v1/messages/{target}?limit=N&before=ID` | [`HistoryReport`]; marks the conversation read |
//! | GET | `/v1/inbox` | `[`[`ConversationReport`]`]` |
//! | GET | `/v1/requests` | `[`[`ConversationReport`]`]` of unknown senders |
//! | POST | `/v1/accept/{target}` | [`TrustReport`] |
//! | POST | `/v1/block/{target}` | [`TrustReport`] |
//! | GET | `/v1/relay` | [`RelayReport`] |
//! | GET | `/v1/events` | WebSocket of [`EventReport`] JSON texts |
//! | GET | `/metrics` | Prometheus / OpenMetrics text |
//!
//! Errors are [`ErrorBody`] (`{"error": "...", "kind": "..."}`) with a 4xx/5xx status: 400 invalid
//! input, 401 missing or wrong token, 404 not found, 409 conflict, 503 no DHT peers.
//!
//! - [`serve`] / [`router`]: the server side.
//! - [`ApiClient`]: the client side, used by the CLI and the tests.
//! - [`ApiToken`]: the shared secret.

mod client;
mod server;
mod token;
mod types;

pub use client::{ApiClient, ClientError};
pub use server::{router, serve, serve_metrics};
pub use token::{ApiToken, TokenError};
pub use types::{
    AddContactRequest, AddInviteRequest, ContactReport, ConversationReport, CreateGroupRequest,
    ErrorBody, EventReport, GroupHistoryReport, GroupMemberReport, GroupMemberRequest,
    GroupMessageReport, GroupReport, GroupSendReport, GroupSendRequest, HistoryReport,
    InviteReport, MessageReport, NameReport, PeerReport, PowParams, RecipientUsage,
    RegisterRequest, RelayReport, RelayServedReport, ResolveReport, SendReport, SendRequest,
    StatusReport, TrustReport, VerifyReport, status_name, trust_name,
};
