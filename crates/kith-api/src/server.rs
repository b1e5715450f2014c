use std::future::Future;

use axum::{
    Json, Router,
    extract::{Request, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use kith_service::Node;

use crate::{ApiToken, ErrorBody, PeerReport, StatusReport};

#[derive(Clone)]
struct AppState {
    node: Node,
    token: ApiToken,
}

/// The API's routes, every one behind the bearer token.
pub fn router(node: Node, token: ApiToken) -> Router {
    let state = AppState { node, token };
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/shutdown", post(shutdown))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` resolves, then finishes in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    token: ApiToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(node, token))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        _ => error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong API token: send 'Authorization: Bearer <token>' with the token from api.token in the node's home",
        ),
    }
}

async fn status(State(state): State<AppState>) -> Response {
    match state.node.status().await {
        Ok(status) => Json(StatusReport::from(status)).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn peers(State(state): State<AppState>) -> Response {
    match state.node.peers().await {
        Ok(peers) => {
            Json(peers.into_iter().map(PeerReport::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, &e.to_string()),
    }
}

async fn shutdown(State(state): State<AppState>) -> Response {
    tracing::info!("shutdown requested through the API");
    state.node.request_shutdown();
    StatusCode::ACCEPTED.into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.node.metrics_text(),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such API endpoint; see the API table in README.md",
    )
}

fn error(status: StatusCode, message: &str) -> Response {
    (
        status,
        Json(ErrorBody {
            error: message.to_owned(),
        }),
    )
        .into_response()
}
