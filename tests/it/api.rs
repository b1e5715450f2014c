//! The local HTTP API against a real node: the bearer-token check, every endpoint, JSON errors,
//! and [`ApiClient`]'s view of a running and of a missing node.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use kith_api::{ApiClient, ApiToken, ClientError, StatusReport};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::harness::{POLL, STEP, TestNode, wait_until};

/// A node with its API served on a random loopback port.
struct Api {
    node: TestNode,
    addr: SocketAddr,
    token: ApiToken,
    http: reqwest::Client,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Api {
    async fn start() -> Result<Self> {
        Self::serve(TestNode::start(Vec::new()).await?).await
    }

    async fn serve(node: TestNode) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let token = ApiToken::generate()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(kith_api::serve(
            listener,
            node.node().clone(),
            token.clone(),
            async move {
                // Either a stop signal or a dropped sender ends the server.
                let _ = stopped.await;
            },
        ));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            node,
            addr,
            token,
            http,
            stop,
            server,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// `GET path`, with `Authorization: Bearer <token>` when a token is given.
    async fn get(&self, path: &str, token: Option<&str>) -> Result<reqwest::Response> {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        Ok(request.send().await?)
    }

    /// `GET path` with the right token.
    async fn get_authorized(&self, path: &str) -> Result<reqwest::Response> {
        self.get(path, Some(self.token.as_str())).await
    }

    fn client(&self) -> Result<ApiClient> {
        Ok(ApiClient::new(self.addr, self.token.clone())?)
    }

    /// Stops the server (bounded), then the node.
    async fn stop(self) -> Result<()> {
        drop(self.http);
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.server)
            .await
            .context("the API server did not stop")?
            .context("the API server task failed")?
            .context("the API server returned an error")?;
        self.node.shutdown().await
    }
}

/// Reads a JSON error body and returns its `error` field.
async fn error_message(response: reqwest::Response) -> Result<String> {
    let body: Value = response.json().await.context("error body is not JSON")?;
    body.get("error")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("error body has no string 'error' field: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_token_get_401_with_a_json_error() {
    let api = Api::start().await.unwrap();

    for path in ["/v1/status", "/v1/peers", "/metrics", "/no/such/path"] {
        let response = api.get(path, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "GET {path}");
        let message = error_message(response).await.unwrap();
        assert!(!message.is_empty(), "GET {path}: empty error message");
    }
    let response = api.http.post(api.url("/v1/shutdown")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // A refused shutdown must not stop anything.
    assert!(
        tokio::time::timeout(
            Duration::from_millis(200),
            api.node.node().shutdown_requested()
        )
        .await
        .is_err(),
        "an unauthenticated POST /v1/shutdown must not request a shutdown"
    );

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_gets_401() {
    let api = Api::start().await.unwrap();
    let wrong = ApiToken::generate().unwrap();

    let response = api.get("/v1/status", Some(wrong.as_str())).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(!error_message(response).await.unwrap().is_empty());
    // The right token with one character missing is still wrong.
    let truncated = &api.token.as_str()[1..];
    let response = api.get("/v1/status", Some(truncated)).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // The token without the "Bearer " scheme is not accepted either.
    let response = api
        .http
        .get(api.url("/v1/status"))
        .header("authorization", api.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    let client = ApiClient::new(api.addr, wrong).unwrap();
    match client.status().await {
        Err(ClientError::Unauthorized { addr }) => assert_eq!(addr, api.addr),
        other => panic!("expected ClientError::Unauthorized, got {other:?}"),
    }

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_with_the_right_token_describes_this_node() {
    let api = Api::start().await.unwrap();

    let response = api.get_authorized("/v1/status").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["peer_id"].as_str(),
        Some(api.node.peer_id().to_string().as_str()),
        "{body}"
    );
    assert_eq!(body["dht_mode"].as_str(), Some("server"), "{body}");
    assert_eq!(body["version"].as_str(), Some(kith_service::VERSION));

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_the_right_token_lists_connected_peers() {
    let api = Api::start().await.unwrap();

    let response = api.get_authorized("/v1/peers").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, Value::Array(Vec::new()), "a lone node has no peers");

    // A second node bootstraps from the API's node and shows up in the list.
    let other = TestNode::start(vec![api.node.tcp_addr()]).await.unwrap();
    let other_id = other.peer_id().to_string();
    let mut last = Value::Null;
    let listed = wait_until(
        "GET /v1/peers to list the second node",
        Duration::from_secs(30),
        POLL,
        async || {
            let Ok(response) = api.get_authorized("/v1/peers").await else {
                return false;
            };
            if response.status() != StatusCode::OK {
                return false;
            }
            let Ok(body) = response.json::<Value>().await else {
                return false;
            };
            last = body;
            last.as_array().is_some_and(|peers| {
                peers
                    .iter()
                    .any(|p| p["peer_id"].as_str() == Some(other_id.as_str()))
            })
        },
    )
    .await;
    if let Err(e) = listed {
        panic!("{e}; last answer: {last}");
    }
    let peers = api.client().unwrap().peers().await.unwrap();
    let entry = peers
        .iter()
        .find(|p| p.peer_id == other_id)
        .expect("ApiClient::peers lists the second node");
    assert_eq!(entry.direction, "inbound");
    assert!(!entry.addrs.is_empty());

    other.shutdown().await.unwrap();
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_with_the_right_token_serve_prometheus_text() {
    let api = Api::start().await.unwrap();

    let response = api.get_authorized("/metrics").await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    assert!(body.contains("kith_peers_connected"), "{body}");
    assert!(body.contains("kith_dial_failures_total"), "{body}");
    assert!(body.trim_end().ends_with("# EOF"), "{body}");

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_paths_with_the_right_token_get_404_with_a_json_error() {
    let api = Api::start().await.unwrap();

    for path in ["/", "/v1", "/v1/nope", "/v2/status"] {
        let response = api.get_authorized(path).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {path}");
        assert!(!error_message(response).await.unwrap().is_empty());
    }

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_client_status_matches_the_node() {
    let api = Api::start().await.unwrap();

    let report = api.client().unwrap().status().await.unwrap();
    let expected = StatusReport::from(api.node.node().status().await.unwrap());
    // Everything but the clocks and the on-disk size, which move between the two calls.
    let comparable = |r: &StatusReport| StatusReport {
        uptime_secs: 0,
        store_bytes: 0,
        ..r.clone()
    };
    assert_eq!(comparable(&report), comparable(&expected));
    assert_eq!(report.peer_id, api.node.peer_id().to_string());
    assert_eq!(report.connected_peers, 0);
    assert_eq!(report.routing_table_peers, 0);
    assert!(report.dht_server);
    for addr in &report.listen_addrs {
        assert!(addr.starts_with("/ip4/127.0.0.1/"), "listens on {addr}");
    }
    assert_eq!(report.listen_addrs.len(), 2, "{:?}", report.listen_addrs);

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_client_reports_not_running_when_nothing_listens() {
    // Take a free port and let it go again: nothing listens there any more.
    let addr = {
        let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        probe.local_addr().unwrap()
    };
    let client = ApiClient::new(addr, ApiToken::generate().unwrap()).unwrap();
    match tokio::time::timeout(STEP, client.status()).await {
        Ok(Err(ClientError::NotRunning { addr: reported })) => assert_eq!(reported, addr),
        other => panic!("expected ClientError::NotRunning, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_shutdown_requests_a_shutdown() {
    let api = Api::start().await.unwrap();

    let response = api
        .http
        .post(api.url("/v1/shutdown"))
        .bearer_auth(api.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    tokio::time::timeout(STEP, api.node.node().shutdown_requested())
        .await
        .expect("POST /v1/shutdown should make shutdown_requested resolve");

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_client_shutdown_requests_a_shutdown() {
    let api = Api::start().await.unwrap();

    api.client().unwrap().shutdown().await.unwrap();
    tokio::time::timeout(STEP, api.node.node().shutdown_requested())
        .await
        .expect("ApiClient::shutdown should make shutdown_requested resolve");

    api.stop().await.unwrap();
}
