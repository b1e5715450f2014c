//! `/v1/files` and `/v1/filters`: sending, listing and saving files, and the photo filters.

use axum::{
    Json,
    extract::{Path, Query, State},
    http::StatusCode,
    response::Response,
};
use kith_service::{FileReport, FileState, SendFileOptions, ServiceError};

use crate::{
    FileInfo, FilterInfo, SaveFileRequest, SavedFile, SendFileReport, SendFileRequest,
    server::{AppState, respond},
    status_name, web,
};

/// The word the API and CLI use for a file's state.
pub fn file_state_name(state: FileState) -> &'static str {
    match state {
        FileState::Downloading => "downloading",
        FileState::Complete => "complete",
        FileState::Paused => "paused",
        FileState::Failed => "failed",
    }
}

fn info(me: &str, f: FileReport) -> FileInfo {
    FileInfo {
        file_id: hex::encode(f.id),
        message_id: hex::encode(f.id),
        from: if f.outgoing {
            me.to_owned()
        } else {
            f.peer.to_string()
        },
        peer_id: f.peer.to_string(),
        outgoing: f.outgoing,
        name: f.offer.name,
        mime: f.offer.mime,
        size: f.offer.plain_size,
        hash: hex::encode(f.offer.hash),
        state: file_state_name(f.state).to_owned(),
        received_bytes: f.received_bytes,
        transfer_size: f.offer.size,
        width: f.offer.width,
        height: f.offer.height,
        caption: f.offer.caption,
        note: f.note,
    }
}

/// A 400 answer for input the handler cannot use.
fn invalid(why: &str) -> Response {
    web::error(StatusCode::BAD_REQUEST, "invalid", why)
}

fn absolute(path: &str) -> Result<std::path::PathBuf, String> {
    let p = std::path::PathBuf::from(path);
    if p.is_absolute() {
        Ok(p)
    } else {
        Err(format!(
            "'{path}' is not an absolute path; the node cannot know your directory"
        ))
    }
}

fn parse_id(id: &str) -> Result<kith_service::MessageId, String> {
    hex::decode(id)
        .ok()
        .and_then(|b| <[u8; 16]>::try_from(b.as_slice()).ok())
        .ok_or_else(|| "a file id is 32 hex characters (see `kith files`)".to_owned())
}

/// `POST /v1/files`.
pub(crate) async fn send_file(
    State(state): State<AppState>,
    Json(req): Json<SendFileRequest>,
) -> Response {
    let path = match absolute(&req.path) {
        Ok(p) => p,
        Err(why) => return invalid(&why),
    };
    let options = SendFileOptions {
        caption: req.caption,
        filter: req.filter.filter(|f| !f.is_empty()),
        original: req.original,
    };
    let result = state
        .node
        .send_file(&req.to, &path, options)
        .await
        .map(|sent| SendFileReport {
            id: hex::encode(sent.sent.id),
            file_id: hex::encode(sent.file.id),
            hash: hex::encode(sent.file.offer.hash),
            size: sent.file.offer.plain_size,
            status: status_name(sent.sent.status).to_owned(),
            note: sent.note,
        });
    respond(StatusCode::CREATED, result)
}

/// `GET /v1/files?with=WHO`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct FilesQuery {
    with: Option<String>,
}

/// `GET /v1/files`.
pub(crate) async fn list_files(
    State(state): State<AppState>,
    Query(query): Query<FilesQuery>,
) -> Response {
    let me = state.node.peer_id().to_string();
    let result = async {
        let with = match query.with.as_deref().filter(|w| !w.is_empty()) {
            Some(who) => Some(state.node.resolve_recipient(who).await?),
            None => None,
        };
        Ok::<_, ServiceError>(
            state
                .node
                .files(with)?
                .into_iter()
                .map(|f| info(&me, f))
                .collect::<Vec<_>>(),
        )
    }
    .await;
    respond(StatusCode::OK, result)
}

/// `GET /v1/files/{id}`.
pub(crate) async fn get_file(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return invalid(&why),
    };
    let me = state.node.peer_id().to_string();
    respond(StatusCode::OK, state.node.file(&id).map(|f| info(&me, f)))
}

/// `POST /v1/files/{id}/save`.
pub(crate) async fn save_file(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Json(req): Json<SaveFileRequest>,
) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return invalid(&why),
    };
    let path = match absolute(&req.path) {
        Ok(p) => p,
        Err(why) => return invalid(&why),
    };
    let result = state
        .node
        .save_file(&id, &path)
        .await
        .map(|(path, size)| SavedFile {
            path: path.display().to_string(),
            size,
        });
    respond(StatusCode::OK, result)
}

/// `GET /v1/filters`.
pub(crate) async fn filters() -> Json<Vec<FilterInfo>> {
    Json(
        kith_service::filter_presets()
            .iter()
            .map(|p| FilterInfo {
                name: p.name.to_owned(),
                label: p.label.to_owned(),
                matrix: p.matrix.to_vec(),
            })
            .collect(),
    )
}
