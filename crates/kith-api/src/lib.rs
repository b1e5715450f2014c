//! kith-api: the node's local HTTP API, server and client.
//!
//! The node serves it on `127.0.0.1` only; every `/v1` request carries `Authorization: Bearer
//! <token>` with the token from the home directory's `api.token`, or the web app's session cookie.
//! The CLI is just a client of this API, and so are the web app, bots and scripts.
//!
//! The same server serves the web app (`/` and `/assets/...`, from the `kith-web` crate) without a
//! token. `kith open` hands the browser the token in the URL fragment; the app trades it for an
//! `HttpOnly; SameSite=Strict` cookie at `POST /v1/session`. Every request's `Host` must be the
//! server's own loopback address (DNS rebinding), WebSockets and cookie-authenticated changes must
//! come from our own page (`Origin`), and every answer carries a strict Content-Security-Policy.
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | `/v1/status` | [`StatusReport`] |
//! | GET | `/v1/doctor` | [`DoctorReport`]: what is wrong and how to fix it |
//! | GET | `/v1/peers` | `[`[`PeerReport`]`]` |
//! | POST | `/v1/shutdown` | 202, then the node stops cleanly |
//! | GET | `/v1/names/pow` | [`PowParams`] |
//! | POST | `/v1/names` | [`RegisterRequest`] → [`NameReport`] (409 if held by another key) |
//! | GET | `/v1/names` | `[`[`NameReport`]`]` |
//! | DELETE | `/v1/names/{name}` | [`NameReport`] of the final, short-lived claim |
//! | GET | `/v1/resolve/{name}[?fresh=true]` | [`ResolveReport`]: a pinned name from the node (no network call; `source` says so), else or with `fresh=true` from the DHT (404 unclaimed, 409 key changed or contested) |
//! | GET | `/v1/contacts` | `[`[`ContactReport`]`]` |
//! | POST | `/v1/contacts` | [`AddContactRequest`] → [`ContactReport`] |
//! | POST | `/v1/contacts/invite` | [`AddInviteRequest`] → [`ContactReport`] |
//! | DELETE | `/v1/contacts/{petname}` | 204 |
//! | GET | `/v1/verify/{target}` | [`VerifyReport`] |
//! | GET | `/v1/invite` | [`InviteReport`] |
//! | POST | `/v1/messages` | [`SendRequest`] → [`SendReport`] (`delivered` or `queued`) |
//! | GET | `/` and `/assets/{path}` | the web app (no token needed) |
//! | POST | `/v1/session` | `{"token"}` → 204 and the session cookie (no token header needed) |
//! | DELETE | `/v1/session` | 204, the cookie cleared |
//! | GET | `/v1/invite/qr` | the invite link as an SVG QR code |
//! | GET | `/v1/messages/{target}?limit=N&before=ID` | [`HistoryReport`] (at most 1,000; `more` says older ones exist); reads change nothing |
//! | POST | `/v1/messages/{target}/read` | [`MarkReadReport`]; marks the conversation read, sends read receipts |
//! | GET | `/v1/groups`, `/v1/groups/invitations`, `/v1/groups/{group}` | [`GroupReport`]s |
//! | POST | `/v1/groups`, `/v1/groups/{group}/join`, `/leave`, `/invite`, `/remove` | [`GroupReport`] |
//! | GET/POST | `/v1/groups/{group}/messages` | [`GroupHistoryReport`] / [`GroupSendReport`] |
//! | POST | `/v1/groups/{group}/read` | 204 |
//! | GET | `/v1/inbox` | `[`[`ConversationReport`]`]` |
//! | GET | `/v1/requests` | `[`[`ConversationReport`]`]` of unknown senders |
//! | POST | `/v1/accept/{target}` | [`TrustReport`] |
//! | POST | `/v1/block/{target}` | [`TrustReport`] |
//! | GET | `/v1/relay` | [`RelayReport`] |
//! | POST | `/v1/calls` | [`StartCallRequest`] → [`CallReport`] (409 `busy` when in a call) |
//! | GET | `/v1/calls` | [`CallsReport`]: the call history, newest first |
//! | GET | `/v1/calls/{id}` | [`CallDetailReport`]: the call and the signals received so far |
//! | POST | `/v1/calls/{id}/accept`, `/decline`, `/hangup` | [`CallReport`] |
//! | POST | `/v1/calls/{id}/signal` | [`CallSignalRequest`] → `{"ok": true}` |
//! | GET | `/v1/calls/ice` | [`IceReport`]: STUN/TURN servers for `RTCPeerConnection` |
//! | GET | `/v1/events` | WebSocket of [`EventReport`] JSON texts |
//! | GET | `/metrics` | Prometheus / OpenMetrics text |
//!
//! Errors are always [`ErrorBody`] (`{"error": "...", "kind": "..."}`) with a 4xx/5xx status: 400
//! invalid input or malformed JSON, 401 missing or wrong token, 403 foreign `Host` or `Origin`, 404
//! not found, 405 wrong method, 409 conflict, 413 body over 1 MiB, 503 no DHT peers.
//!
//! - [`serve`] / [`router`]: the server side.
//! - [`ApiClient`]: the client side, used by the CLI and the tests.
//! - [`ApiToken`]: the shared secret.

mod calls;
mod client;
mod doctor;
mod files;
mod server;
mod token;
mod types;
mod web;

pub use calls::call_outcome_name;
pub use client::{ApiClient, ClientError};
pub use files::file_state_name;
pub use server::{router, serve, serve_metrics};
pub use token::{ApiToken, TokenError};
pub use types::{
    AddContactRequest, AddInviteRequest, CallDetailReport, CallParticipantReport, CallReport,
    CallSignalReport, CallSignalRequest, CallsReport, ConnectionReport, ContactReport,
    ConversationReport, CreateGroupRequest, DoctorCheck, DoctorReport, ErrorBody, EventReport,
    FileInfo, FilterInfo, GroupHistoryReport, GroupMemberReport, GroupMemberRequest,
    GroupMessageReport, GroupReport, GroupSendReport, GroupSendRequest, HistoryReport,
    HolePunchReport, IceReport, IceServerReport, InviteReport, MarkReadReport, MessageReport,
    NameReport, OkReport, PeerReport, PowParams, RecipientUsage, RegisterRequest, RelayReport,
    RelayServedReport, ResolveReport, RivalReport, SaveFileRequest, SavedFile, SendFileReport,
    SendFileRequest, SendReport, SendRequest, StartCallRequest, StatusReport, TrustReport,
    VerifyReport, status_name, trust_name,
};
