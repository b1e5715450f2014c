//! kith's multi-node integration tests: real nodes with real TCP and QUIC sockets on 127.0.0.1,
//! each with its own temporary home, driven through the same APIs the CLI uses.
//!
//! One test binary (matklad, *Delete Cargo Integration Tests*) with a shared [`harness`]:
//!
//! - [`dht`]: discovery, bootstrap over TCP and QUIC, bad bootstrap entries, restarts.
//! - [`api`]: the local HTTP API, its token check and its client.
//! - [`names`]: registering, resolving and pinning names across ten-node networks; forged records,
//!   lying holders, key changes, contacts and invites.
//! - [`dm`]: direct chat between real nodes: by peer id, name and petname, receipts, requests and
//!   blocks, tampered, replayed, oversized and garbage frames, no plaintext on the wire, floods.
//! - [`calls`]: call signalling: ring, join, signals both ways, hang-up, decline, busy, crossing
//!   calls, strangers, floods, a stopped callee.
//! - [`files`]: a 20 MB file and a filtered photo between two nodes; files from strangers wait
//!   for the accept; files that cannot be sent.
//! - [`mailbox`]: more mail for an offline friend than one delivery batch holds.
//! - [`costly_ids`]: a network with a peer-id difficulty: un-worked attacker ids next to a name's
//!   keys are no one's DHT servers; an un-worked honest node still resolves and sends.
//! - [`sybil`]: issue 14's attack, attacker nodes with ids ground next to a name's key, at 20% and
//!   30% of the network, against fresh resolvers.
//! - [`groups`]: five-member groups, catch-up after 100 missed messages, removal and outsiders,
//!   150 groups on one node.
//! - [`scale`]: a group of 200 members with `kith-bench scale`'s reduced settings.
//!
//! Every wait is bounded (`harness::wait_until`, `tokio::time::timeout`); no test touches the
//! public network (mDNS off, loopback listeners, a private network id).

mod api;
mod calls;
mod costly_ids;
mod dht;
mod dm;
mod files;
mod groups;
mod harness;
mod mailbox;
mod names;
mod scale;
mod sybil;
