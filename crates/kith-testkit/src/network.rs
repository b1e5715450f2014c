//! Networks of [`TestNode`]s: [`star`], [`star_with`], [`chain_with`], [`node_pair`];
//! [`wait_for_mesh`] waits until every node knows every other, [`routing_report`] says who knows
//! whom when it does not, [`shutdown_all`] stops them.

use std::{collections::BTreeSet, fmt::Write as _, time::Duration};

use anyhow::{Result, bail};
use kith_net::PeerId;
use kith_service::Options;

use crate::{POLL, TestNode, Transports, wait_until};

/// `n` nodes; the first has no bootstrap list, every other one bootstraps only from the first
/// one's TCP address.
pub async fn star(n: usize) -> Result<Vec<TestNode>> {
    let mut nodes = Vec::with_capacity(n);
    if n == 0 {
        return Ok(nodes);
    }
    let hub = TestNode::start(Vec::new()).await?;
    let bootstrap = vec![hub.tcp_addr()];
    nodes.push(hub);
    for _ in 1..n {
        nodes.push(TestNode::start(bootstrap.clone()).await?);
    }
    Ok(nodes)
}

/// [`star`] with the given options and transports on every node; the nodes after the hub start
/// concurrently.
pub async fn star_with(
    n: usize,
    options: Options,
    transports: Transports,
) -> Result<Vec<TestNode>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let hub = TestNode::start_with(Vec::new(), options.clone(), transports).await?;
    let bootstrap = vec![hub.tcp_addr()];
    let leaves = futures::future::try_join_all(
        (1..n).map(|_| TestNode::start_with(bootstrap.clone(), options.clone(), transports)),
    )
    .await?;
    let mut nodes = Vec::with_capacity(n);
    nodes.push(hub);
    nodes.extend(leaves);
    Ok(nodes)
}

/// `n` nodes in a line: each bootstraps only from the TCP address of the one started before it,
/// so the last one starts out knowing nobody but its neighbour.
pub async fn chain_with(
    n: usize,
    options: Options,
    transports: Transports,
) -> Result<Vec<TestNode>> {
    let mut nodes: Vec<TestNode> = Vec::with_capacity(n);
    for _ in 0..n {
        let bootstrap = nodes.last().map(TestNode::tcp_addr).into_iter().collect();
        nodes.push(TestNode::start_with(bootstrap, options.clone(), transports).await?);
    }
    Ok(nodes)
}

/// Waits until every node's routing table holds every other node and every peer in `extra`
/// (bounded by `timeout`); on timeout the error carries every routing table.
pub async fn wait_for_mesh(nodes: &[TestNode], extra: &[PeerId], timeout: Duration) -> Result<()> {
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::peer_id).collect();
    let meshed = wait_until(
        &format!(
            "each of {} nodes to have every other one (and {} extra peers) in its routing table",
            nodes.len(),
            extra.len()
        ),
        timeout,
        POLL,
        async || {
            for node in nodes {
                let Ok(table) = node.routing_table().await else {
                    return false;
                };
                let me = node.peer_id();
                if !ids
                    .iter()
                    .chain(extra)
                    .all(|p| *p == me || table.contains(p))
                {
                    return false;
                }
            }
            true
        },
    )
    .await;
    match meshed {
        Ok(()) => Ok(()),
        Err(e) => Err(e.context(routing_report(nodes).await)),
    }
}

/// Two nodes, the second bootstrapped from the first one's TCP address.
pub async fn node_pair() -> Result<(TestNode, TestNode)> {
    let mut nodes = star(2).await?.into_iter();
    match (nodes.next(), nodes.next()) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("star(2) did not return two nodes"),
    }
}

/// Shuts every node down, in order; reports the first failure after trying all of them.
pub async fn shutdown_all(nodes: Vec<TestNode>) -> Result<()> {
    let mut first_error = None;
    for node in nodes {
        if let Err(e) = node.shutdown().await {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Every node's routing table, for failure messages. Peers are numbered by their position in
/// `nodes`; unknown peers are printed as ids.
pub async fn routing_report(nodes: &[TestNode]) -> String {
    let ids: Vec<PeerId> = nodes.iter().map(TestNode::peer_id).collect();
    let name = |p: &PeerId| match ids.iter().position(|id| id == p) {
        Some(i) => format!("node{}", i + 1),
        None => p.to_string(),
    };
    let mut out = String::new();
    for (i, node) in nodes.iter().enumerate() {
        let table = match node.routing_table().await {
            Ok(t) => t
                .iter()
                .map(name)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            Err(e) => vec![format!("<{e}>")],
        };
        let _ = writeln!(out, "node{} ({}): {:?}", i + 1, ids[i], table);
    }
    out
}
