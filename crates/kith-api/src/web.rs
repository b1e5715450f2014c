//! What a local web app needs from the API server beyond the JSON routes: the static files, the
//! token-for-cookie exchange, and the hardening a page on `127.0.0.1` needs against other pages in
//! the same browser (DNS rebinding, cross-site WebSockets, injected scripts).
//!
//! The layers, outermost first:
//! 1. [`check_host`]: the `Host` header must name this server's own loopback address. A rebinding
//!    attack reaches us through a name the attacker controls, so its `Host` is that name.
//! 2. [`security_headers`]: a strict CSP (no inline script, nothing from elsewhere) and friends on
//!    every answer.
//! 3. [`json_errors`]: every error answer is `{"error","kind"}`, including the plain-text ones
//!    axum's extractors produce (malformed JSON, a body over the limit, a wrong method).
//!
//! Authentication itself stays in `server.rs`; this module only says what a valid session cookie
//! is ([`Session`]).

use std::net::SocketAddr;

use axum::{
    Json,
    body::{Body, to_bytes},
    extract::{Path, Request, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use crate::{ApiToken, ErrorBody};

/// The addresses this server answers to: its own loopback socket address under the names a local
/// browser uses for it. Anything else in `Host` is refused.
#[derive(Debug, Clone)]
pub(crate) struct Authority {
    port: u16,
}

impl Authority {
    pub(crate) fn new(addr: SocketAddr) -> Self {
        Self { port: addr.port() }
    }

    /// Whether a `Host` header value names us. The port must be ours: another local service's
    /// port is another origin.
    pub(crate) fn allows(&self, host: &str) -> bool {
        let Some((name, port)) = host.rsplit_once(':') else {
            return false;
        };
        port.parse::<u16>() == Ok(self.port) && matches!(name, "127.0.0.1" | "localhost" | "[::1]")
    }
}

/// The session cookie a browser holds after exchanging the token: a value derived from the token
/// (so a restarted node accepts it, and the cookie never carries the token itself), under a name
/// that includes the port (cookies ignore ports, so two nodes on one machine would overwrite each
/// other's under one name).
#[derive(Clone)]
pub(crate) struct Session {
    value: String,
    name: String,
}

impl Session {
    pub(crate) fn new(token: &ApiToken, addr: SocketAddr) -> Self {
        let value = blake3::derive_key(
            "kith 2026-12 web session cookie v1",
            token.as_str().as_bytes(),
        );
        Self {
            value: hex::encode(value),
            name: format!("kith_session_{}", addr.port()),
        }
    }

    /// Whether any cookie in the request carries our session value. The name is not checked: a
    /// value only this node's token derives is proof enough.
    pub(crate) fn presented_in(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .any(|(_, value)| constant_time_eq(value.as_bytes(), self.value.as_bytes()))
    }

    fn set_cookie(&self) -> String {
        // A year: the cookie is only as good as the token it came from.
        format!(
            "{}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age=31536000",
            self.name, self.value
        )
    }

    fn clear_cookie(&self) -> String {
        format!(
            "{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0",
            self.name
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses any request whose `Host` is not this server's own loopback address.
pub(crate) async fn check_host(
    State(authority): State<Authority>,
    request: Request,
    next: Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if authority.allows(host) {
        next.run(request).await
    } else {
        error(
            StatusCode::FORBIDDEN,
            "forbidden_host",
            "this address is not the kith node's own; open the app with `kith open`",
        )
    }
}

/// Whether a request's `Origin` (when the browser sent one) is this page's own origin. Pages on
/// other sites can open WebSockets and send forms to `127.0.0.1`; their `Origin` gives them away.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin.to_str().ok(), host) {
        (Some(origin), Some(host)) => origin.strip_prefix("http://") == Some(host),
        _ => false,
    }
}

/// Adds the CSP and related headers to every answer.
pub(crate) async fn security_headers(request: Request, next: Next) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1")
        .to_owned();
    let mut response = next.run(request).await;
    // A handler that serves someone else's bytes (a received file) asks for a sandbox on top.
    let sandboxed = response
        .headers()
        .get(header::CONTENT_SECURITY_POLICY)
        .is_some_and(|v| v.as_bytes() == b"sandbox");
    let mut csp = format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; \
         media-src 'self' blob:; connect-src 'self' ws://{host}; object-src 'none'; \
         base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    );
    if sandboxed {
        csp.push_str("; sandbox");
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

/// Rewrites error answers that are not JSON (axum's extractor rejections, the router's 405) into
/// the API's `{"error","kind"}` shape, keeping their status and their words.
pub(crate) async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Rejection texts are short; a larger body is not worth quoting.
    let text = to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let (kind, fallback) = match status {
        StatusCode::BAD_REQUEST => ("bad_request", "the request could not be read"),
        StatusCode::UNAUTHORIZED => ("unauthorized", "not signed in"),
        StatusCode::NOT_FOUND => ("not_found", "no such thing"),
        StatusCode::METHOD_NOT_ALLOWED => (
            "method_not_allowed",
            "this endpoint does not take that method; see the API table in README.md",
        ),
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "the request body is over the limit"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => (
            "bad_request",
            "send the body as JSON with 'Content-Type: application/json'",
        ),
        StatusCode::UNPROCESSABLE_ENTITY => ("invalid", "the JSON body has the wrong shape"),
        _ => ("internal", "the node failed to answer"),
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::PAYLOAD_TOO_LARGE, _) => {
            format!("{fallback} ({} KiB)", crate::server::BODY_LIMIT / 1024)
        }
        (_, true) => fallback.to_owned(),
        (_, false) => text,
    };
    let mut out = error(status, kind, &message);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

/// The most of an oversized body the server reads and drops before answering 413.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

/// Answers a body declared larger than the limit with 413 before any handler runs, after reading
/// and dropping what the client sends (up to [`DRAIN_LIMIT`]): closing a connection with unread
/// data makes the kernel send a reset, and the client would often lose the 413 with it.
pub(crate) async fn refuse_oversized(request: Request, next: Next) -> Response {
    // File uploads are bounded by the node's file limit, in their handler.
    if request.uri().path() == "/v1/files/upload" {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > crate::server::BODY_LIMIT) {
        let _ = to_bytes(request.into_body(), DRAIN_LIMIT).await;
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!(
                "the request body is over the limit ({} KiB)",
                crate::server::BODY_LIMIT / 1024
            ),
        );
    }
    next.run(request).await
}

/// An error answer in the API's shape.
pub(crate) fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    let body = ErrorBody {
        kind: Some(kind.to_owned()),
        ..ErrorBody::message(message)
    };
    (status, Json(body)).into_response()
}

/// `GET /`: the app's entry page.
pub(crate) async fn index(headers: HeaderMap) -> Response {
    serve_asset(kith_web::index(), &headers)
}

/// `GET /assets/{*path}`: one of the app's files.
pub(crate) async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    serve_asset(kith_web::asset(&path), &headers)
}

fn serve_asset(asset: Option<kith_web::WebAsset>, headers: &HeaderMap) -> Response {
    let Some(asset) = asset else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "no such file in the web app",
        );
    };
    let etag = format!("\"{}\"", asset.etag);
    let cached = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == etag);
    // `no-cache` still lets the browser keep the file, but it asks every time, so a new node
    // version never runs with an old module beside a new one.
    let common = [
        (header::CACHE_CONTROL, "no-cache".to_owned()),
        (header::ETAG, etag),
    ];
    if cached {
        return (StatusCode::NOT_MODIFIED, common).into_response();
    }
    (
        [(header::CONTENT_TYPE, asset.content_type.to_owned())],
        common,
        Body::from(asset.bytes.into_owned()),
    )
        .into_response()
}

#[derive(Deserialize)]
pub(crate) struct SessionRequest {
    token: String,
}

/// `POST /v1/session {"token"}`: trades the token (from `kith open`'s URL fragment) for an
/// `HttpOnly; SameSite=Strict` cookie, so the token leaves the page's reach at once.
pub(crate) fn open_session(
    token: &ApiToken,
    session: &Session,
    headers: &HeaderMap,
    body: Result<Json<SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    if !same_origin(headers) {
        return forbidden_origin();
    }
    let Ok(Json(request)) = body else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "send {\"token\": \"...\"} as JSON",
        );
    };
    if !token.matches(request.token.trim()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "that token is not this node's; run `kith open` for a fresh link",
        );
    }
    with_cookie(StatusCode::NO_CONTENT, &session.set_cookie())
}

/// `DELETE /v1/session`: forgets the cookie in this browser.
pub(crate) fn close_session(session: &Session) -> Response {
    with_cookie(StatusCode::NO_CONTENT, &session.clear_cookie())
}

fn with_cookie(status: StatusCode, cookie: &str) -> Response {
    let mut response = status.into_response();
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// The answer to a request from another site's page.
pub(crate) fn forbidden_origin() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "forbidden_origin",
        "requests from other sites' pages are refused; open the app with `kith open`",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_our_loopback_names_and_port_are_our_host() {
        let a = Authority::new("127.0.0.1:4780".parse().unwrap());
        assert!(a.allows("127.0.0.1:4780"));
        assert!(a.allows("localhost:4780"));
        assert!(a.allows("[::1]:4780"));
        assert!(!a.allows("127.0.0.1:4781"));
        assert!(!a.allows("127.0.0.1"));
        assert!(!a.allows("evil.example:4780"));
        assert!(!a.allows("127.0.0.1.evil.example:4780"));
        assert!(!a.allows(""));
    }

    #[test]
    fn the_session_cookie_is_derived_not_the_token_and_is_checked_by_value() {
        let token = ApiToken::generate().unwrap();
        let s = Session::new(&token, "127.0.0.1:4780".parse().unwrap());
        assert!(!s.set_cookie().contains(token.as_str()));
        assert!(s.set_cookie().contains("HttpOnly"));
        assert!(s.set_cookie().contains("SameSite=Strict"));
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=b; other=c"));
        assert!(!s.presented_in(&headers));
        let good = format!("a=b; kith_session_1={}", s.value);
        headers.insert(header::COOKIE, HeaderValue::from_str(&good).unwrap());
        assert!(s.presented_in(&headers));
        let other = Session::new(
            &ApiToken::generate().unwrap(),
            "127.0.0.1:4780".parse().unwrap(),
        );
        assert!(!other.presented_in(&headers));
    }

    #[test]
    fn origin_must_match_host_when_present() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:4780"));
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:4780"),
        );
        assert!(same_origin(&h));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
