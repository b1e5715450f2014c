use std::future::Future;

use std::net::SocketAddr;

use axum::{
    Json, Router,
    extract::{
        DefaultBodyLimit, Path, Query, Request, State,
        ws::{Message as WsMessage, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, Method, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{delete, get, post},
};
use kith_service::{Node, ServiceError, SuppliedPow};

use crate::{
    AddContactRequest, AddInviteRequest, ApiToken, ContactReport, ConversationReport,
    CreateGroupRequest, ErrorBody, EventReport, GroupHistoryReport, GroupMemberRequest,
    GroupMessageReport, GroupReport, GroupSendReport, GroupSendRequest, HistoryReport,
    InviteReport, MarkReadReport, MessageReport, NameReport, PeerReport, PowParams, RecipientUsage,
    RegisterRequest, RelayReport, ResolveReport, RivalReport, SendReport, SendRequest,
    StatusReport, TrustReport, VerifyReport, status_name, trust_name, web,
};

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) node: Node,
    token: ApiToken,
    session: web::Session,
}

/// The largest request body the API reads. Messages are at most 64 KiB of text; files travel over
/// their own protocol, never through a JSON body.
pub(crate) const BODY_LIMIT: usize = 1024 * 1024;

/// The API's routes and the web app, for a server listening on `addr` (its port is part of the
/// `Host` every request must carry). `/v1/...` routes need the bearer token or the session cookie;
/// the web app's files and the token-for-cookie exchange do not.
pub fn router(node: Node, token: ApiToken, addr: SocketAddr) -> Router {
    let session = web::Session::new(&token, addr);
    let state = AppState {
        node,
        token,
        session,
    };
    let api = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/doctor", get(doctor))
        .route("/v1/peers", get(peers))
        .route("/v1/shutdown", post(shutdown))
        .route("/v1/names/pow", get(pow_params))
        .route("/v1/names", post(register).get(list_names))
        .route("/v1/names/{name}", delete(release))
        .route("/v1/resolve/{name}", get(resolve))
        .route("/v1/contacts", get(list_contacts).post(add_contact))
        .route("/v1/contacts/invite", post(add_invite))
        .route("/v1/contacts/{petname}", delete(remove_contact))
        .route("/v1/verify/{target}", get(verify))
        .route("/v1/invite", get(invite))
        .route("/v1/invite/qr", get(invite_qr))
        .route("/v1/messages", post(send))
        .route("/v1/messages/{target}", get(history))
        .route("/v1/messages/{target}/read", post(mark_read))
        .route("/v1/inbox", get(inbox))
        .route("/v1/requests", get(requests))
        .route("/v1/accept/{target}", post(accept))
        .route("/v1/block/{target}", post(block))
        .route("/v1/groups", get(list_groups).post(create_group))
        .route("/v1/groups/invitations", get(group_invitations))
        .route("/v1/groups/{group}", get(group_info))
        .route("/v1/groups/{group}/join", post(join_group))
        .route("/v1/groups/{group}/leave", post(leave_group))
        .route("/v1/groups/{group}/invite", post(invite_to_group))
        .route("/v1/groups/{group}/remove", post(remove_from_group))
        .route("/v1/groups/{group}/read", post(mark_group_read))
        .route(
            "/v1/groups/{group}/messages",
            get(group_history).post(send_group),
        )
        .route(
            "/v1/files",
            get(crate::files::list_files).post(crate::files::send_file),
        )
        .route(
            "/v1/files/upload",
            // A file, not a JSON body: the node's file limit applies instead of the API's.
            post(crate::files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/v1/files/{id}",
            get(crate::files::get_file).delete(crate::files::cancel_file),
        )
        .route("/v1/files/{id}/thumbnail", get(crate::files::thumbnail))
        .route("/v1/files/{id}/content", get(crate::files::content))
        .route("/v1/files/{id}/save", post(crate::files::save_file))
        .route("/v1/filters", get(crate::files::filters))
        .route(
            "/v1/calls",
            get(crate::calls::list_calls).post(crate::calls::start_call),
        )
        .route("/v1/calls/ice", get(crate::calls::ice))
        .route("/v1/calls/{id}", get(crate::calls::get_call))
        .route("/v1/calls/{id}/accept", post(crate::calls::accept))
        .route("/v1/calls/{id}/decline", post(crate::calls::decline))
        .route("/v1/calls/{id}/hangup", post(crate::calls::hangup))
        .route("/v1/calls/{id}/signal", post(crate::calls::signal))
        .route("/v1/events", get(events))
        .route("/v1/relay", get(relay_status))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), require_auth));
    let open = Router::new()
        .route("/", get(web::index))
        .route("/assets/{*path}", get(web::asset))
        .route("/v1/session", post(open_session).delete(close_session));
    open.merge(api)
        .with_state(state)
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(web::refuse_oversized))
        .layer(middleware::from_fn(web::json_errors))
        .layer(middleware::from_fn(web::security_headers))
        .layer(middleware::from_fn_with_state(
            web::Authority::new(addr),
            web::check_host,
        ))
}

/// Serves only `/metrics`, without a token, for Prometheus on a relay (`--metrics-addr`). The
/// series carry no secrets; the operator chooses where this listens.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    node: Node,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = Router::new().route(
        "/metrics",
        get(move || {
            let node = node.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    node.metrics_text(),
                )
            }
        }),
    );
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves the API and the web app on `listener` until `shutdown` resolves, then finishes
/// in-flight requests.
pub async fn serve(
    listener: tokio::net::TcpListener,
    node: Node,
    token: ApiToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let addr = listener.local_addr()?;
    axum::serve(listener, router(node, token, addr))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Lets a request through with the bearer token (CLI, scripts), `?token=` on the WebSocket, or the
/// web app's session cookie. Cookies ride along with any request the browser makes, so a
/// cookie-authenticated change and every WebSocket must also come from our own page.
async fn require_auth(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let headers = request.headers();
    let is_events = request.uri().path() == "/v1/events";
    // Browsers cannot set headers on a WebSocket, so `/v1/events` also takes `?token=`.
    let from_query = is_events
        .then(|| request.uri().query())
        .flatten()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or(from_query);
    let by_token = presented.is_some_and(|t| state.token.matches(t));
    let by_cookie = !by_token && state.session.presented_in(headers);
    if !by_token && !by_cookie {
        return web::error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong API token: send 'Authorization: Bearer <token>' with the token from api.token in the node's home, or open the web app with `kith open`",
        );
    }
    let changes = !matches!(*request.method(), Method::GET | Method::HEAD);
    if (is_events || (by_cookie && changes)) && !web::same_origin(headers) {
        return web::forbidden_origin();
    }
    next.run(request).await
}

async fn open_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<web::SessionRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    web::open_session(&state.token, &state.session, &headers, body)
}

async fn close_session(State(state): State<AppState>) -> Response {
    web::close_session(&state.session)
}

async fn status(State(state): State<AppState>) -> Response {
    match state.node.status().await {
        Ok(status) => Json(StatusReport::from(status)).into_response(),
        Err(e) => service_error(e),
    }
}

async fn doctor(State(state): State<AppState>) -> Response {
    match state.node.checkup().await {
        Ok(checkup) => Json(crate::doctor::diagnose(&checkup)).into_response(),
        Err(e) => service_error(e),
    }
}

async fn peers(State(state): State<AppState>) -> Response {
    match state.node.peers().await {
        Ok(peers) => {
            Json(peers.into_iter().map(PeerReport::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => service_error(e),
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
    web::error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API endpoint; see the API table in README.md",
    )
}

fn bad_before() -> Response {
    web::error(
        StatusCode::BAD_REQUEST,
        "invalid",
        "'before' must be a message id (32 hex characters)",
    )
}

/// Maps a service error onto a status code and a body the CLI turns into an exit code.
fn service_error(e: ServiceError) -> Response {
    let mut body = ErrorBody::message(e.to_string());
    let (status, kind) = match &e {
        ServiceError::InvalidName(_)
        | ServiceError::InvalidPetname(_)
        | ServiceError::InvalidInvite(_)
        | ServiceError::BadProofOfWork(_)
        | ServiceError::InvalidMessage(_)
        | ServiceError::InvalidFile(_) => (StatusCode::BAD_REQUEST, "invalid"),
        ServiceError::FileIncomplete { .. } => (StatusCode::CONFLICT, "incomplete"),
        ServiceError::FileCancelled(_) => (StatusCode::CONFLICT, "cancelled"),
        ServiceError::FileComplete(_) => (StatusCode::CONFLICT, "complete"),
        ServiceError::Blob(kith_blob::StoreError::DiskFull { .. }) => {
            (StatusCode::INSUFFICIENT_STORAGE, "disk_full")
        }
        ServiceError::NotGroupAdmin(_) => (StatusCode::FORBIDDEN, "not_admin"),
        ServiceError::CallBusy => (StatusCode::CONFLICT, "busy"),
        ServiceError::GroupClosed(_) => (StatusCode::CONFLICT, "not_a_member"),
        ServiceError::AmbiguousGroup { .. } => (StatusCode::CONFLICT, "ambiguous"),
        ServiceError::NameNotFound(_)
        | ServiceError::UnknownGroup(_)
        | ServiceError::UnknownRecipient(_)
        | ServiceError::NoSuchContact(_)
        | ServiceError::UnknownFile(_)
        | ServiceError::UnknownCall(_)
        | ServiceError::NotOurName(_) => (StatusCode::NOT_FOUND, "not_found"),
        ServiceError::NameTaken { holder, since, .. } => {
            body.found_peer_id = Some(holder.to_string());
            body.since = Some(since.clone());
            (StatusCode::CONFLICT, "name_taken")
        }
        ServiceError::NameConflict {
            pinned,
            pinned_since,
            found,
            ..
        } => {
            body.pinned_peer_id = Some(pinned.to_string());
            body.found_peer_id = Some(found.to_string());
            body.since = Some(pinned_since.clone());
            (StatusCode::CONFLICT, "name_conflict")
        }
        ServiceError::PetnameTaken { peer, .. } => {
            body.found_peer_id = Some(peer.to_string());
            (StatusCode::CONFLICT, "petname_taken")
        }
        ServiceError::Request(kith_net::RequestError::NoKnownPeers) => {
            body.error = format!(
                "{e}: the node knows no DHT peers yet; check its bootstrap list or wait for LAN peers"
            );
            (StatusCode::SERVICE_UNAVAILABLE, "no_peers")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    body.kind = Some(kind.to_owned());
    (status, Json(body)).into_response()
}

pub(crate) fn respond<T: serde::Serialize>(
    status: StatusCode,
    result: Result<T, ServiceError>,
) -> Response {
    match result {
        Ok(value) => (status, Json(value)).into_response(),
        Err(e) => service_error(e),
    }
}

async fn pow_params(State(state): State<AppState>) -> Response {
    Json(PowParams {
        peer_id: state.node.peer_id().to_string(),
        difficulty: state.node.name_rules().difficulty,
        now_ms: now_ms(),
    })
    .into_response()
}

async fn register(State(state): State<AppState>, Json(req): Json<RegisterRequest>) -> Response {
    let supplied = match (req.created_at_ms, req.pow_nonce) {
        (Some(created_at_ms), Some(nonce)) => Some(SuppliedPow {
            created_at_ms,
            nonce,
        }),
        _ => None,
    };
    let result = state
        .node
        .register_name(&req.name, supplied)
        .await
        .map(|reg| {
            let mut report = NameReport::from(&reg.record);
            report.renewed = Some(reg.renewed);
            report.published = Some(reg.published);
            report
        });
    respond(StatusCode::CREATED, result)
}

async fn list_names(State(state): State<AppState>) -> Response {
    let result = state
        .node
        .own_names()
        .map(|names| names.iter().map(NameReport::from).collect::<Vec<_>>());
    respond(StatusCode::OK, result)
}

async fn release(State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let result = state
        .node
        .release_name(&name)
        .await
        .map(|r| NameReport::from(&r));
    respond(StatusCode::OK, result)
}

/// `?fresh=true` on `GET /v1/resolve/{name}`: ask the network now instead of answering a pinned
/// name from the node.
#[derive(serde::Deserialize)]
struct ResolveQuery {
    #[serde(default)]
    fresh: bool,
}

async fn resolve(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(q): Query<ResolveQuery>,
) -> Response {
    let result = if q.fresh {
        state.node.resolve_name_fresh(&name).await
    } else {
        state.node.resolve_name(&name).await
    };
    respond(StatusCode::OK, result.map(|r| resolve_report(&name, r)))
}

fn resolve_report(asked: &str, r: kith_service::Resolution) -> ResolveReport {
    let name = r
        .record
        .as_ref()
        .map(|record| record.name().to_string())
        .or_else(|| kith_core::Name::parse(asked).ok().map(|n| n.to_string()))
        .unwrap_or_else(|| asked.to_owned());
    ResolveReport {
        name,
        peer_id: r.peer_id.to_string(),
        pinned: true,
        newly_pinned: r.newly_pinned,
        pinned_at: r.pinned_at_ms,
        expires_at: r.record.as_ref().map_or(0, |c| c.params().expires_at_ms),
        created_at: r.claimed_at_ms,
        holders: r.holders,
        addrs: r
            .record
            .iter()
            .flat_map(|c| c.params().addrs.iter().map(ToString::to_string))
            .collect(),
        rivals: r.rivals.iter().map(|(peer, _)| peer.to_string()).collect(),
        rival_holders: r
            .rivals
            .iter()
            .map(|(peer, holders)| RivalReport {
                peer_id: peer.to_string(),
                holders: *holders,
            })
            .collect(),
        replicas: r.replicas,
        source: r.source.as_str().to_owned(),
        checked_at: r.checked_at_ms,
    }
}

fn contact_report(c: kith_store::Contact) -> ContactReport {
    ContactReport {
        petname: c.petname,
        peer_id: libp2p::PeerId::from_bytes(&c.peer_id)
            .map(|p| p.to_string())
            .unwrap_or_else(|_| "<damaged>".to_owned()),
        name: c.name,
        added_at: c.added_at_ms,
    }
}

async fn list_contacts(State(state): State<AppState>) -> Response {
    let result = state
        .node
        .contacts()
        .map(|cs| cs.into_iter().map(contact_report).collect::<Vec<_>>());
    respond(StatusCode::OK, result)
}

async fn add_contact(
    State(state): State<AppState>,
    Json(req): Json<AddContactRequest>,
) -> Response {
    let result = state
        .node
        .add_contact(&req.petname, &req.target)
        .await
        .map(contact_report);
    respond(StatusCode::CREATED, result)
}

async fn add_invite(State(state): State<AppState>, Json(req): Json<AddInviteRequest>) -> Response {
    let result = state
        .node
        .add_invite(&req.invite, req.petname.as_deref())
        .await
        .map(contact_report);
    respond(StatusCode::CREATED, result)
}

async fn remove_contact(State(state): State<AppState>, Path(petname): Path<String>) -> Response {
    match state.node.remove_contact(&petname).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => service_error(e),
    }
}

async fn verify(State(state): State<AppState>, Path(target): Path<String>) -> Response {
    let you = state.node.peer_id().to_string();
    let result = state.node.verify(&target).await.map(|v| VerifyReport {
        you,
        peer_id: v.peer_id.to_string(),
        safety_number: v.safety_number,
    });
    respond(StatusCode::OK, result)
}

async fn invite(State(state): State<AppState>) -> Response {
    let result = state.node.invite().await.map(|i| InviteReport {
        url: i.to_url(),
        peer_id: i.peer_id.to_string(),
        name: i.name.map(|n| n.to_string()),
        addrs: i.addrs.iter().map(ToString::to_string).collect(),
    });
    respond(StatusCode::OK, result)
}

async fn send(State(state): State<AppState>, Json(req): Json<SendRequest>) -> Response {
    let result = state
        .node
        .send_text(&req.to, &req.text)
        .await
        .map(|sent| SendReport {
            id: hex::encode(sent.id),
            peer_id: sent.peer.to_string(),
            status: status_name(sent.status).to_owned(),
        });
    respond(StatusCode::CREATED, result)
}

/// `GET /v1/invite/qr`: the invite link as an SVG QR code, for the web app to show.
async fn invite_qr(State(state): State<AppState>) -> Response {
    match state.node.invite().await {
        Ok(invite) => match qrcode::QrCode::new(invite.to_url().as_bytes()) {
            Ok(code) => {
                let svg = code
                    .render::<qrcode::render::svg::Color<'_>>()
                    .min_dimensions(256, 256)
                    .quiet_zone(true)
                    .build();
                ([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response()
            }
            Err(e) => web::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("the invite link does not fit a QR code: {e}"),
            ),
        },
        Err(e) => service_error(e),
    }
}

#[derive(serde::Deserialize)]
struct HistoryQuery {
    limit: Option<usize>,
    before: Option<String>,
}

/// The most messages one history answer carries; `more` tells the caller to page with `before`.
const HISTORY_PAGE_MAX: usize = 1000;

impl HistoryQuery {
    /// The page size and the `before` id; `Err` for a malformed id (answer with [`bad_before`]).
    fn page(&self) -> Result<(usize, Option<kith_service::MessageId>), ()> {
        let before = self.before.as_deref().map(parse_id).transpose()?;
        Ok((self.limit.unwrap_or(50).clamp(1, HISTORY_PAGE_MAX), before))
    }
}

/// Asks for one more than `limit` and drops the oldest: whether it was there is `more`.
fn split_page<T>(mut messages: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = messages.len() > limit;
    if more {
        messages.drain(..messages.len() - limit);
    }
    (messages, more)
}

/// `GET /v1/messages/{target}`: a page of history. Reading changes nothing (marking read is
/// `POST .../read`), so a look at a stranger's id invents no conversation.
async fn history(
    State(state): State<AppState>,
    Path(target): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let Ok((limit, before)) = q.page() else {
        return bad_before();
    };
    let me = state.node.peer_id();
    let result = state
        .node
        .history(&target, limit + 1, before)
        .await
        .map(|(peer, messages)| {
            let (messages, more) = split_page(messages, limit);
            HistoryReport {
                peer_id: peer.to_string(),
                messages: messages
                    .iter()
                    .map(|m| MessageReport::from_message(m, &me))
                    .collect(),
                more,
            }
        });
    respond(StatusCode::OK, result)
}

/// `POST /v1/messages/{target}/read`: marks a conversation read and sends read receipts.
async fn mark_read(State(state): State<AppState>, Path(target): Path<String>) -> Response {
    let result = async {
        let peer = state.node.resolve_recipient(&target).await?;
        let marked = state.node.mark_read(peer).await?;
        Ok::<_, ServiceError>(MarkReadReport {
            peer_id: peer.to_string(),
            marked,
        })
    }
    .await;
    respond(StatusCode::OK, result)
}

fn parse_id(text: &str) -> Result<kith_service::MessageId, ()> {
    let bytes = hex::decode(text).map_err(|_| ())?;
    bytes.try_into().map_err(|_| ())
}

fn conversations(state: &AppState, only_requests: bool) -> Response {
    let petnames: std::collections::HashMap<Vec<u8>, String> = state
        .node
        .contacts()
        .map(|cs| cs.into_iter().map(|c| (c.peer_id, c.petname)).collect())
        .unwrap_or_default();
    let result = state.node.inbox().map(|list| {
        list.into_iter()
            .filter(|c| !only_requests || c.trust == kith_service::Trust::Unknown)
            .map(|c| ConversationReport {
                peer_id: c.peer.to_string(),
                petname: petnames.get(&c.peer.to_bytes()).cloned(),
                unread: c.unread,
                last_message_at: c.last_message_ms,
                last_text: c.last_text,
                trust: trust_name(c.trust).to_owned(),
            })
            .collect::<Vec<_>>()
    });
    respond(StatusCode::OK, result)
}

async fn inbox(State(state): State<AppState>) -> Response {
    conversations(&state, false)
}

async fn requests(State(state): State<AppState>) -> Response {
    conversations(&state, true)
}

async fn accept(State(state): State<AppState>, Path(target): Path<String>) -> Response {
    let result = state.node.accept(&target).await.map(|peer| TrustReport {
        peer_id: peer.to_string(),
        trust: "accepted".into(),
    });
    respond(StatusCode::OK, result)
}

async fn block(State(state): State<AppState>, Path(target): Path<String>) -> Response {
    let result = state.node.block(&target).await.map(|peer| TrustReport {
        peer_id: peer.to_string(),
        trust: "blocked".into(),
    });
    respond(StatusCode::OK, result)
}

async fn relay_status(State(state): State<AppState>) -> Response {
    let node = &state.node;
    let result = async {
        let status = node.status().await?;
        let stats = node.mailbox_stats()?;
        let recipients = node
            .mailbox_recipients(100)?
            .into_iter()
            .map(|usage| RecipientUsage {
                peer_id: usage.peer.map(|p| p.to_string()).unwrap_or_default(),
                items: usage.items,
                bytes: usage.bytes,
            })
            .collect();
        let circuits = StatusReport::from(status).relay;
        Ok::<_, ServiceError>(RelayReport {
            relay: circuits.is_some(),
            circuits,
            mailbox_recipients: stats.recipients,
            mailbox_items: stats.items,
            mailbox_bytes: stats.bytes,
            recipients,
        })
    }
    .await;
    respond(StatusCode::OK, result)
}

fn group_report(node: &Node, g: &kith_service::GroupInfo) -> GroupReport {
    let contacts = node.contacts().unwrap_or_default();
    let mut report = GroupReport::from_info(g, |p| {
        contacts
            .iter()
            .find(|c| c.peer_id == p.to_bytes())
            .map(|c| c.petname.clone())
    });
    // The chat list shows each group's last message beside the conversations'.
    if let Ok((_, last)) = node.group_history(&report.group_id, 1, None)
        && let Some(m) = last.last()
    {
        report.last_text = kith_store::preview(&m.text);
        report.last_message_at = m.received_at_ms.max(m.sent_at_ms);
    }
    report
}

/// A group answer: the group as [`group_report`] shows it, or the error.
fn group_answer(
    state: &AppState,
    status: StatusCode,
    result: Result<kith_service::GroupInfo, ServiceError>,
) -> Response {
    respond(status, result.map(|g| group_report(&state.node, &g)))
}

/// A list of groups, each as [`group_report`] shows it, or the error.
fn groups_answer(
    state: &AppState,
    result: Result<Vec<kith_service::GroupInfo>, ServiceError>,
) -> Response {
    let node = &state.node;
    respond(
        StatusCode::OK,
        result.map(|gs| gs.iter().map(|g| group_report(node, g)).collect::<Vec<_>>()),
    )
}

async fn list_groups(State(state): State<AppState>) -> Response {
    groups_answer(&state, state.node.groups())
}

async fn group_invitations(State(state): State<AppState>) -> Response {
    groups_answer(&state, state.node.group_invitations())
}

async fn create_group(
    State(state): State<AppState>,
    Json(req): Json<CreateGroupRequest>,
) -> Response {
    let result = state.node.create_group(&req.title).await;
    group_answer(&state, StatusCode::CREATED, result)
}

async fn group_info(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    group_answer(&state, StatusCode::OK, state.node.group(&group))
}

async fn join_group(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    let result = state.node.join_group(&group).await;
    group_answer(&state, StatusCode::OK, result)
}

async fn leave_group(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    let result = state.node.leave_group(&group).await;
    group_answer(&state, StatusCode::OK, result)
}

async fn invite_to_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Json(req): Json<GroupMemberRequest>,
) -> Response {
    let result = state.node.invite_to_group(&group, &req.member).await;
    group_answer(&state, StatusCode::OK, result.map(|(g, _)| g))
}

async fn remove_from_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Json(req): Json<GroupMemberRequest>,
) -> Response {
    let result = state.node.remove_from_group(&group, &req.member).await;
    group_answer(&state, StatusCode::OK, result.map(|(g, _)| g))
}

async fn send_group(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Json(req): Json<GroupSendRequest>,
) -> Response {
    let node = &state.node;
    let result = async {
        let info = node.group(&group)?;
        let sent = node.send_group_text(&group, &req.text).await?;
        Ok::<_, ServiceError>(GroupSendReport {
            id: hex::encode(sent.id),
            group_id: hex::encode(info.id),
            seq: sent.seq,
            published: sent.published,
        })
    }
    .await;
    respond(StatusCode::CREATED, result)
}

async fn group_history(
    State(state): State<AppState>,
    Path(group): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let Ok((limit, before)) = q.page() else {
        return bad_before();
    };
    let result = state
        .node
        .group_history(&group, limit + 1, before)
        .map(|(info, messages)| {
            let (messages, more) = split_page(messages, limit);
            GroupHistoryReport {
                group_id: hex::encode(info.id),
                title: info.title,
                messages: messages
                    .iter()
                    .map(GroupMessageReport::from_message)
                    .collect(),
                more,
            }
        });
    respond(StatusCode::OK, result)
}

/// `POST /v1/groups/{group}/read`.
async fn mark_group_read(State(state): State<AppState>, Path(group): Path<String>) -> Response {
    match state.node.mark_group_read(&group) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => service_error(e),
    }
}

async fn events(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| stream_events(socket, state.node))
}

/// Pushes message events to one WebSocket client until it goes away or the node stops.
async fn stream_events(mut socket: WebSocket, node: Node) {
    let mut events = node.subscribe();
    let me = node.peer_id();
    loop {
        let report = tokio::select! {
            event = events.recv() => match event {
                Ok(kith_service::MessageEvent::Received(m)) => EventReport::Message {
                    message: MessageReport::from_message(&m, &me),
                },
                Ok(kith_service::MessageEvent::Status { id, peer, status }) => EventReport::Status {
                    id: hex::encode(id),
                    peer_id: peer.to_string(),
                    status: status_name(status).to_owned(),
                },
                Ok(kith_service::MessageEvent::GroupReceived { group, message }) => {
                    EventReport::GroupMessage {
                        group_id: hex::encode(group),
                        message: GroupMessageReport::from_message(&message),
                    }
                }
                Ok(kith_service::MessageEvent::GroupInvited { group }) => {
                    EventReport::GroupInvitation { group_id: hex::encode(group) }
                }
                Ok(kith_service::MessageEvent::GroupChanged { group }) => {
                    EventReport::GroupChanged { group_id: hex::encode(group) }
                }
                Ok(kith_service::MessageEvent::FileProgress { id, peer, received, size }) => {
                    EventReport::File {
                        id: hex::encode(id),
                        peer_id: peer.to_string(),
                        received,
                        size,
                    }
                }
                Ok(kith_service::MessageEvent::Name(kith_service::NameEvent::Conflict {
                    name,
                    pinned,
                    pinned_since,
                    found,
                    contested,
                })) => EventReport::NameConflict {
                    name,
                    pinned_peer_id: pinned.to_string(),
                    found_peer_id: found.to_string(),
                    since: pinned_since,
                    contested,
                },
                Ok(kith_service::MessageEvent::Call(event)) => {
                    match crate::calls::event_report(&node, event) {
                        Some(report) => report,
                        None => continue,
                    }
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                    EventReport::Lagged { missed }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
            incoming = socket.recv() => match incoming {
                // The client talks only to close or ping; anything else is ignored.
                Some(Ok(_)) => continue,
                _ => return,
            },
            () = node.shutdown_requested() => {
                let _ = socket.send(WsMessage::Close(None)).await;
                return;
            }
        };
        let Ok(text) = serde_json::to_string(&report) else {
            continue;
        };
        if socket.send(WsMessage::Text(text.into())).await.is_err() {
            return;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
