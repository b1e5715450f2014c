//! The local HTTP API against a real node: the bearer-token check, every endpoint, JSON errors,
//! and [`ApiClient`]'s view of a running and of a missing node.

use std::{net::SocketAddr, time::Duration};

use anyhow::{Context, Result};
use kith_api::{ApiClient, ApiToken, ClientError, StatusReport};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::{sync::oneshot, task::JoinHandle};

use crate::harness::{POLL, STEP, TestNode, wait_until};

/// A node's API served on a random loopback port (the node stays its caller's); also used by
/// the names tests that look at a node as an API client would.
pub(crate) struct Served {
    pub(crate) addr: SocketAddr,
    pub(crate) token: ApiToken,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::io::Result<()>>,
}

impl Served {
    /// Serves `node`'s API with a fresh token.
    pub(crate) async fn start(node: &TestNode) -> Result<Self> {
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
        Ok(Self {
            addr,
            token,
            stop,
            server,
        })
    }

    /// A client of this API with its token.
    pub(crate) fn client(&self) -> Result<ApiClient> {
        Ok(ApiClient::new(self.addr, self.token.clone())?)
    }

    /// Stops the server (bounded).
    pub(crate) async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        tokio::time::timeout(STEP, self.server)
            .await
            .context("the API server did not stop")?
            .context("the API server task failed")?
            .context("the API server returned an error")?;
        Ok(())
    }
}

/// A node with its API served on a random loopback port.
struct Api {
    node: TestNode,
    addr: SocketAddr,
    token: ApiToken,
    http: reqwest::Client,
    served: Served,
}

impl Api {
    async fn start() -> Result<Self> {
        Self::serve(TestNode::start(Vec::new()).await?).await
    }

    async fn serve(node: TestNode) -> Result<Self> {
        let served = Served::start(&node).await?;
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(STEP)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            node,
            addr: served.addr,
            token: served.token.clone(),
            http,
            served,
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
        self.served.client()
    }

    /// Stops the server (bounded), then the node.
    async fn stop(self) -> Result<()> {
        drop(self.http);
        self.served.stop().await?;
        self.node.shutdown().await
    }
}

/// Reads a JSON error body and returns its `kind` field (every error has one).
async fn error_kind(response: reqwest::Response) -> Result<String> {
    let body: Value = response.json().await.context("error body is not JSON")?;
    anyhow::ensure!(
        body.get("error")
            .and_then(Value::as_str)
            .is_some_and(|e| !e.is_empty()),
        "error body has no 'error' text: {body}"
    );
    body.get("kind")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .with_context(|| format!("error body has no string 'kind' field: {body}"))
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

    for path in ["/v1", "/v1/nope", "/v2/status", "/assets/nope.js"] {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_is_served_without_a_token_under_a_strict_csp() {
    let api = Api::start().await.unwrap();

    let page = api.get("/", None).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let header = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(header(&page, "content-type").starts_with("text/html"));
    let csp = header(&page, "content-security-policy");
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "CSP lacks {directive}: {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(header(&page, "x-content-type-options"), "nosniff");
    let etag = header(&page, "etag");
    let html = page.text().await.unwrap();
    assert!(html.contains("/assets/app.js"), "{html}");

    let script = api.get("/assets/app.js", None).await.unwrap();
    assert_eq!(script.status(), StatusCode::OK);
    assert!(header(&script, "content-type").starts_with("text/javascript"));

    // The browser's cached copy is still good: 304 without a body.
    let again = api
        .http
        .get(api.url("/"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // Nothing outside the app's folder is reachable (a literal or encoded `..` segment is folded
    // away by the client already; an encoded slash reaches the server as `../identity.key`).
    for path in ["/assets/%2E%2E%2Fidentity.key", "/assets/nope.js"] {
        let response = api.get(path, None).await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "GET {path}");
        assert_eq!(error_kind(response).await.unwrap(), "not_found");
    }

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_header_is_refused_even_with_the_token() {
    let api = Api::start().await.unwrap();

    let port = api.addr.port();
    for host in [
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("127.0.0.1:{}", port.wrapping_add(1)),
    ] {
        for path in ["/", "/v1/status"] {
            let response = api
                .http
                .get(api.url(path))
                .header("host", &host)
                .bearer_auth(api.token.as_str())
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::FORBIDDEN,
                "Host {host} {path}"
            );
            assert_eq!(error_kind(response).await.unwrap(), "forbidden_host");
        }
    }
    let ours = api
        .http
        .get(api.url("/v1/status"))
        .header("host", format!("localhost:{port}"))
        .bearer_auth(api.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), StatusCode::OK, "localhost is our own name");

    api.stop().await.unwrap();
}

/// Trades the token for the session cookie; returns the `Cookie` header value to send.
async fn session_cookie(api: &Api) -> Result<String> {
    let response = api
        .http
        .post(api.url("/v1/session"))
        .header("origin", format!("http://{}", api.addr))
        .json(&serde_json::json!({ "token": api.token.as_str() }))
        .send()
        .await?;
    anyhow::ensure!(
        response.status() == StatusCode::NO_CONTENT,
        "{}",
        response.status()
    );
    let set = response
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .context("no Set-Cookie")?
        .to_owned();
    anyhow::ensure!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    anyhow::ensure!(
        !set.contains(api.token.as_str()),
        "the cookie must not carry the token"
    );
    Ok(set.split(';').next().unwrap_or_default().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_traded_once_for_a_cookie_that_only_our_own_pages_can_use() {
    let api = Api::start().await.unwrap();
    let origin = format!("http://{}", api.addr);

    let wrong = api
        .http
        .post(api.url("/v1/session"))
        .json(&serde_json::json!({ "token": ApiToken::generate().unwrap().as_str() }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(error_kind(wrong).await.unwrap(), "unauthorized");

    let cookie = session_cookie(&api).await.unwrap();
    let with_cookie = |method: reqwest::Method, path: &str| {
        api.http
            .request(method, api.url(path))
            .header("cookie", &cookie)
    };
    let status = with_cookie(reqwest::Method::GET, "/v1/status")
        .send()
        .await
        .unwrap();
    assert_eq!(status.status(), StatusCode::OK);

    // A change with the cookie from another site's page is refused; from ours it goes through.
    let target = format!("/v1/messages/{}/read", api.node.peer_id());
    let forged = with_cookie(reqwest::Method::POST, &target)
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert_eq!(error_kind(forged).await.unwrap(), "forbidden_origin");
    let ours = with_cookie(reqwest::Method::POST, &target)
        .header("origin", &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(ours.status(), StatusCode::OK);

    // Signing out clears the cookie.
    let out = with_cookie(reqwest::Method::DELETE, "/v1/session")
        .send()
        .await
        .unwrap();
    assert_eq!(out.status(), StatusCode::NO_CONTENT);
    let cleared = out
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_another_sites_page_is_refused() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest as _, http::HeaderValue};

    let api = Api::start().await.unwrap();
    let url = format!("ws://{}/v1/events?token={}", api.addr, api.token.as_str());

    let mut foreign = url.as_str().into_client_request().unwrap();
    foreign
        .headers_mut()
        .insert("origin", HeaderValue::from_static("http://evil.example"));
    match tokio_tungstenite::connect_async(foreign).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN.as_u16());
        }
        other => panic!(
            "a foreign Origin must be refused, got {:?}",
            other.map(|_| ())
        ),
    }

    let mut ours = url.as_str().into_client_request().unwrap();
    ours.headers_mut().insert(
        "origin",
        HeaderValue::from_str(&format!("http://{}", api.addr)).unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(ours).await.unwrap();
    drop(socket);

    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_misdirected_requests_get_json_errors() {
    let api = Api::start().await.unwrap();
    let post = |body: Vec<u8>| {
        api.http
            .post(api.url("/v1/messages"))
            .bearer_auth(api.token.as_str())
            .header("content-type", "application/json")
            .body(body)
    };

    let malformed = post(b"{\"to\": ".to_vec()).send().await.unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(malformed).await.unwrap(), "bad_request");

    let wrong_shape = post(b"{\"to\": 5}".to_vec()).send().await.unwrap();
    assert_eq!(wrong_shape.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(error_kind(wrong_shape).await.unwrap(), "invalid");

    // Several MiB, several times: the 413 must arrive every time, not be lost to a reset when
    // the server stops reading.
    let mut huge = b"{\"to\":\"x\",\"text\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 6 * 1024 * 1024));
    huge.extend(b"\"}");
    for attempt in 0..5 {
        let oversized = post(huge.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: no answer to an oversized body: {e}"));
        assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(error_kind(oversized).await.unwrap(), "too_large");
    }

    let no_type = api
        .http
        .post(api.url("/v1/messages"))
        .bearer_auth(api.token.as_str())
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(no_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(error_kind(no_type).await.unwrap(), "bad_request");

    let wrong_method = api
        .http
        .delete(api.url("/v1/status"))
        .bearer_auth(api.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        error_kind(wrong_method).await.unwrap(),
        "method_not_allowed"
    );

    // The node still serves after all of that.
    assert_eq!(
        api.get_authorized("/v1/status").await.unwrap().status(),
        StatusCode::OK
    );
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_a_history_changes_nothing_and_marking_read_invents_no_conversation() {
    let api = Api::start().await.unwrap();
    let stranger = libp2p::PeerId::random().to_string();

    let history = api
        .get_authorized(&format!("/v1/messages/{stranger}"))
        .await
        .unwrap();
    assert_eq!(history.status(), StatusCode::OK);
    let body: Value = history.json().await.unwrap();
    assert_eq!(body["messages"], Value::Array(Vec::new()), "{body}");
    assert_eq!(body["more"], Value::Bool(false), "{body}");

    let marked = api
        .http
        .post(api.url(&format!("/v1/messages/{stranger}/read")))
        .bearer_auth(api.token.as_str())
        .send()
        .await
        .unwrap();
    assert_eq!(marked.status(), StatusCode::OK);
    let marked: Value = marked.json().await.unwrap();
    assert_eq!(marked["marked"], 0, "{marked}");

    for path in ["/v1/inbox", "/v1/requests"] {
        let list: Value = api
            .get_authorized(path)
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            list,
            Value::Array(Vec::new()),
            "{path} after a read and a mark-read: {list}"
        );
    }
    api.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_page_says_when_older_messages_remain_and_reading_does_not_mark_read() {
    let (a, b) = crate::harness::node_pair().await.unwrap();
    let api = Api::serve(a).await.unwrap();
    let b_id = b.peer_id().to_string();
    let a_id = api.node.peer_id().to_string();
    for i in 0..5 {
        b.node().send_text(&a_id, &format!("m{i}")).await.unwrap();
    }
    let client = api.client().unwrap();
    wait_until(
        "five messages at A",
        Duration::from_secs(30),
        POLL,
        async || {
            client
                .history(&b_id, 10, None)
                .await
                .is_ok_and(|h| h.messages.len() == 5)
        },
    )
    .await
    .unwrap();

    let newest = client.history(&b_id, 2, None).await.unwrap();
    let texts = |h: &kith_api::HistoryReport| {
        h.messages
            .iter()
            .map(|m| m.text.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(texts(&newest), ["m3", "m4"]);
    assert!(newest.more);
    let older = client
        .history(&b_id, 3, Some(&newest.messages[0].id))
        .await
        .unwrap();
    assert_eq!(texts(&older), ["m0", "m1", "m2"]);
    assert!(!older.more, "m0 is the first message");
    let all = client.history_up_to(&b_id, 5, None).await.unwrap();
    assert_eq!(texts(&all), ["m0", "m1", "m2", "m3", "m4"]);

    // None of these reads marked anything read; the POST does.
    let inbox = client.inbox().await.unwrap();
    assert_eq!(
        inbox.iter().find(|c| c.peer_id == b_id).map(|c| c.unread),
        Some(5)
    );
    assert_eq!(client.mark_read(&b_id).await.unwrap().marked, 5);
    let inbox = client.inbox().await.unwrap();
    assert_eq!(
        inbox.iter().find(|c| c.peer_id == b_id).map(|c| c.unread),
        Some(0)
    );

    b.shutdown().await.unwrap();
    api.stop().await.unwrap();
}

/// A 40×30 opaque PNG.
fn png() -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(40, 30, |x, _| image::Rgb([(x * 6) as u8, 120, 200]));
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img).write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_uploads_files_and_reads_thumbnails_and_contents_safely() -> Result<()> {
    let mut nodes = crate::harness::star(2).await?;
    crate::harness::wait_for_mesh(&nodes, &[], Duration::from_secs(20)).await?;
    let bob = nodes.pop().context("two nodes")?;
    let api = Api::serve(nodes.pop().context("two nodes")?).await?;
    let to = bob.peer_id().to_string();
    let upload = |name: &str, extra: &str, body: Vec<u8>| {
        let url = api.url(&format!("/v1/files/upload?to={to}&name={name}{extra}"));
        api.http
            .post(url)
            .bearer_auth(api.token.as_str())
            .timeout(Duration::from_secs(60))
            .body(body)
            .send()
    };

    // A photo: sent, thumbnailed, shown inline but sandboxed.
    let sent = upload("beach.png", "&caption=hi&filter=sepia", png()?).await?;
    assert_eq!(sent.status(), StatusCode::CREATED);
    let sent: Value = sent.json().await?;
    let id = sent["file_id"].as_str().context("file_id")?.to_owned();
    let thumb = api
        .get_authorized(&format!("/v1/files/{id}/thumbnail"))
        .await?;
    assert_eq!(thumb.status(), StatusCode::OK);
    assert_eq!(thumb.headers()[reqwest::header::CONTENT_TYPE], "image/jpeg");
    image::load_from_memory(&thumb.bytes().await?).context("the thumbnail decodes")?;
    let content = api
        .get_authorized(&format!("/v1/files/{id}/content"))
        .await?;
    assert_eq!(content.status(), StatusCode::OK);
    let headers = content.headers().clone();
    assert!(
        headers[reqwest::header::CONTENT_TYPE]
            .to_str()?
            .starts_with("image/")
    );
    assert!(
        headers[reqwest::header::CONTENT_DISPOSITION]
            .to_str()?
            .starts_with("inline")
    );
    let csp = headers[reqwest::header::CONTENT_SECURITY_POLICY].to_str()?;
    assert!(
        csp.ends_with("; sandbox") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let shown = image::load_from_memory(&content.bytes().await?)?;
    assert_eq!((shown.width(), shown.height()), (40, 30));

    // A page someone sent is a download, never a page on the node's origin.
    let page = upload("x.html", "", b"<script>alert(1)</script>".to_vec()).await?;
    assert_eq!(page.status(), StatusCode::CREATED);
    let page: Value = page.json().await?;
    let page_id = page["file_id"].as_str().context("file_id")?;
    let served = api
        .get_authorized(&format!("/v1/files/{page_id}/content"))
        .await?;
    assert_eq!(
        served.headers()[reqwest::header::CONTENT_TYPE],
        "application/octet-stream"
    );
    assert!(
        served.headers()[reqwest::header::CONTENT_DISPOSITION]
            .to_str()?
            .starts_with("attachment")
    );
    let missing = api
        .get_authorized(&format!("/v1/files/{page_id}/thumbnail"))
        .await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert_eq!(error_kind(missing).await?, "not_found");

    // Unusable names and ids are JSON 400s; nothing is sent.
    let before = api.node.node().files(None)?.len();
    let bad = upload("..", "", b"x".to_vec()).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(error_kind(bad).await?, "invalid");
    let bad_id = api.get_authorized("/v1/files/nothex/content").await?;
    assert_eq!(bad_id.status(), StatusCode::BAD_REQUEST);
    assert_eq!(api.node.node().files(None)?.len(), before);
    // A path-like name keeps only its last part.
    let sneaky = upload("..%2F..%2Fetc%2Fpasswd", "", b"root".to_vec()).await?;
    assert_eq!(sneaky.status(), StatusCode::CREATED);
    let files = api.node.node().files(None)?;
    assert!(files.iter().any(|f| f.offer.name == "passwd"), "{files:?}");
    api.stop().await?;
    bob.shutdown().await?;
    Ok(())
}
