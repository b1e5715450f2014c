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
//! | GET | `/metrics` | Prometheus / OpenMetrics text |
//!
//! Errors are `{"error": "..."}` with a 4xx/5xx status; a missing or wrong token is 401.
//!
//! - [`serve`] / [`router`]: the server side.
//! - [`ApiClient`]: the client side, used by the CLI and the tests.
//! - [`ApiToken`]: the shared secret.

mod client;
mod server;
mod token;
mod types;

pub use client::{ApiClient, ClientError};
pub use server::{router, serve};
pub use token::{ApiToken, TokenError};
pub use types::{ErrorBody, PeerReport, StatusReport};
