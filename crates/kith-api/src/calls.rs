//! `/v1/calls`: starting, answering and ending calls, and passing the browser's signalling.

use std::collections::HashMap;

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use kith_service::{
    BrowserSignal, CallEvent, CallInfo, CallOutcome, CallState, CallTarget, Node, ParticipantState,
    RemoteSignal, ServiceError,
};
use libp2p::PeerId;

use crate::{
    CallDetailReport, CallParticipantReport, CallReport, CallSignalReport, CallSignalRequest,
    CallsReport, EventReport, IceReport, IceServerReport, OkReport, StartCallRequest,
    server::{AppState, respond},
    web,
};

/// The word the API and CLI use for how a call ended.
pub fn call_outcome_name(outcome: CallOutcome) -> &'static str {
    match outcome {
        CallOutcome::Completed => "completed",
        CallOutcome::Missed => "missed",
        CallOutcome::Declined => "declined",
        CallOutcome::Busy => "busy",
        CallOutcome::Unavailable => "unavailable",
        CallOutcome::Failed => "failed",
    }
}

fn state_name(state: CallState) -> &'static str {
    match state {
        CallState::Ringing => "ringing",
        CallState::Active => "active",
        CallState::Ended => "ended",
    }
}

fn participant_state_name(state: ParticipantState) -> &'static str {
    match state {
        ParticipantState::Ringing => "ringing",
        ParticipantState::Joined => "joined",
        ParticipantState::Left => "left",
    }
}

/// Petnames by binary peer id, for the `name` of a report.
fn petnames(node: &Node) -> HashMap<Vec<u8>, String> {
    node.contacts()
        .map(|cs| cs.into_iter().map(|c| (c.peer_id, c.petname)).collect())
        .unwrap_or_default()
}

fn report(info: &CallInfo, names: &HashMap<Vec<u8>, String>) -> CallReport {
    let r = &info.record;
    let nonzero = |v: u64| (v != 0).then_some(v);
    CallReport {
        call_id: hex::encode(r.call_id),
        peer: PeerId::from_bytes(&r.peer_id)
            .map(|p| p.to_string())
            .unwrap_or_default(),
        name: names.get(&r.peer_id).cloned(),
        group: r.group_id.map(hex::encode),
        direction: if r.outgoing { "outgoing" } else { "incoming" }.to_owned(),
        video: r.video,
        state: state_name(info.state).to_owned(),
        outcome: r.outcome.map(|o| call_outcome_name(o).to_owned()),
        started_at_ms: r.started_ms,
        answered_at_ms: nonzero(r.answered_ms),
        ended_at_ms: nonzero(r.ended_ms),
        duration_ms: r.outcome.map(|_| r.duration_ms()),
        participants: info
            .participants
            .iter()
            .map(|(peer, state)| CallParticipantReport {
                peer: peer.to_string(),
                state: participant_state_name(*state).to_owned(),
            })
            .collect(),
        caller_offers: info.caller_offers,
    }
}

/// The browser's JSON back as JSON (it was checked to be JSON when it was posted; a peer's
/// non-JSON is passed on as a string rather than lost).
fn signal_data(data: &str) -> serde_json::Value {
    serde_json::from_str(data).unwrap_or_else(|_| serde_json::Value::String(data.to_owned()))
}

fn signal_report(signal: RemoteSignal) -> CallSignalReport {
    CallSignalReport {
        seq: signal.seq,
        from: signal.from.to_string(),
        kind: signal.kind,
        data: signal_data(&signal.data),
    }
}

/// The WebSocket form of a call event.
pub(crate) fn event_report(node: &Node, event: CallEvent) -> Option<EventReport> {
    let names = petnames(node);
    Some(match event {
        CallEvent::Incoming(call) => EventReport::CallIncoming {
            call: report(&call, &names),
        },
        CallEvent::Ringing(call) => EventReport::CallRinging {
            call: report(&call, &names),
        },
        CallEvent::Joined { call, peer } => EventReport::CallJoined {
            call: report(&call, &names),
            peer: peer.to_string(),
        },
        CallEvent::Signal { call_id, signal } => {
            let signal = signal_report(signal);
            EventReport::CallSignal {
                call_id: hex::encode(call_id),
                seq: signal.seq,
                from: signal.from,
                kind: signal.kind,
                data: signal.data,
            }
        }
        CallEvent::Left { call, peer } => EventReport::CallLeft {
            call: report(&call, &names),
            peer: peer.to_string(),
        },
        CallEvent::Ended(call) => EventReport::CallEnded {
            call: report(&call, &names),
        },
        CallEvent::Merged { from, call } => EventReport::CallMerged {
            from: hex::encode(from),
            call: report(&call, &names),
        },
        CallEvent::IceChanged => EventReport::CallIceChanged,
        _ => return None,
    })
}

fn parse_call_id(id: &str) -> Option<kith_service::CallId> {
    hex::decode(id)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
}

fn bad_call_id() -> Response {
    web::error(
        StatusCode::BAD_REQUEST,
        "invalid",
        "a call id is 32 hex characters (see `kith calls`)",
    )
}

/// `POST /v1/calls`.
pub(crate) async fn start_call(
    State(state): State<AppState>,
    Json(req): Json<StartCallRequest>,
) -> Response {
    let target = match (req.to, req.group) {
        (Some(to), None) => CallTarget::Person(to),
        (None, Some(group)) => CallTarget::Group(group),
        _ => {
            return web::error(
                StatusCode::BAD_REQUEST,
                "invalid",
                "say whom to call: either `to` (a person) or `group`",
            );
        }
    };
    let result = if req.offers {
        state.node.start_call_offering(target, req.video).await
    } else {
        state.node.start_call(target, req.video).await
    };
    let names = petnames(&state.node);
    respond(StatusCode::OK, result.map(|call| report(&call, &names)))
}

/// `GET /v1/calls?limit=N`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct CallsQuery {
    limit: Option<usize>,
}

/// `GET /v1/calls`.
pub(crate) async fn list_calls(
    State(state): State<AppState>,
    Query(query): Query<CallsQuery>,
) -> Response {
    let limit = query.limit.unwrap_or(100).min(1000);
    let names = petnames(&state.node);
    let result = state.node.calls(limit).map(|calls| CallsReport {
        calls: calls.iter().map(|c| report(c, &names)).collect(),
    });
    respond(StatusCode::OK, result)
}

/// `GET /v1/calls/{id}`.
pub(crate) async fn get_call(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Some(id) = parse_call_id(&id) else {
        return bad_call_id();
    };
    let names = petnames(&state.node);
    let result = state
        .node
        .call(&id)
        .map(|(call, signals)| CallDetailReport {
            call: report(&call, &names),
            signals: signals.into_iter().map(signal_report).collect(),
        });
    respond(StatusCode::OK, result)
}

/// `POST /v1/calls/{id}/accept|decline|hangup`: the same shape, a different operation.
fn call_action(
    state: &AppState,
    id: &str,
    action: fn(&Node, &kith_service::CallId) -> Result<CallInfo, ServiceError>,
) -> Response {
    let Some(id) = parse_call_id(id) else {
        return bad_call_id();
    };
    let names = petnames(&state.node);
    respond(
        StatusCode::OK,
        action(&state.node, &id).map(|call| report(&call, &names)),
    )
}

/// `POST /v1/calls/{id}/accept`.
pub(crate) async fn accept(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    call_action(&state, &id, Node::accept_call)
}

/// `POST /v1/calls/{id}/decline`.
pub(crate) async fn decline(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    call_action(&state, &id, Node::decline_call)
}

/// `POST /v1/calls/{id}/hangup`.
pub(crate) async fn hangup(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    call_action(&state, &id, Node::hangup_call)
}

/// `POST /v1/calls/{id}/signal`.
pub(crate) async fn signal(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<CallSignalRequest>,
) -> Response {
    let Some(id) = parse_call_id(&id) else {
        return bad_call_id();
    };
    let to = match req.to.as_deref().filter(|t| !t.is_empty()) {
        Some(to) => match to.parse::<PeerId>() {
            Ok(peer) => Some(peer),
            Err(_) => {
                return web::error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("'{to}' is not a peer id"),
                );
            }
        },
        None => None,
    };
    let data = req.data.to_string();
    let result: Result<OkReport, ServiceError> = state
        .node
        .call_signal(
            &id,
            BrowserSignal {
                to,
                kind: req.kind,
                data,
            },
        )
        .map(|()| OkReport { ok: true });
    respond(StatusCode::OK, result)
}

/// `GET /v1/calls/ice`.
pub(crate) async fn ice(State(state): State<AppState>) -> Response {
    let ice = state.node.ice_config();
    let report = IceReport {
        ice_servers: ice
            .servers
            .into_iter()
            .map(|s| IceServerReport {
                urls: s.urls,
                username: (!s.username.is_empty()).then_some(s.username),
                credential: (!s.credential.is_empty()).then_some(s.credential),
            })
            .collect(),
        relay_only: ice.relay_only,
    };
    respond::<IceReport>(StatusCode::OK, Ok(report))
}
