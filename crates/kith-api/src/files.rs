//! `/v1/files` and `/v1/filters`: sending, listing and saving files, and the photo filters.

use axum::{
    Json,
    body::Body,
    extract::{Path, Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
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
        FileState::Cancelled => "cancelled",
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
        group: f.group.map(hex::encode),
        sent_bytes: f.sent_bytes,
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
    if let Some(group) = req.group.as_deref().filter(|g| !g.is_empty()) {
        let options = SendFileOptions {
            caption: req.caption,
            filter: req.filter.filter(|f| !f.is_empty()),
            original: req.original,
        };
        let result =
            state
                .node
                .send_group_file(group, &path, options)
                .await
                .map(|(sent, file, note)| SendFileReport {
                    id: hex::encode(sent.id),
                    file_id: hex::encode(file.id),
                    hash: hex::encode(file.offer.hash),
                    size: file.offer.plain_size,
                    status: if sent.published { "sent" } else { "queued" }.to_owned(),
                    note,
                });
        return respond(StatusCode::CREATED, result);
    }
    if req.to.is_empty() {
        return invalid("say whom to send the file to (`to`) or which group (`group`)");
    }
    send_and_report(
        &state,
        &req.to,
        &path,
        req.caption,
        req.filter,
        req.original,
    )
    .await
}

/// Sends the file at `path` and answers with what `POST /v1/files` and the upload return.
async fn send_and_report(
    state: &AppState,
    to: &str,
    path: &std::path::Path,
    caption: String,
    filter: Option<String>,
    original: bool,
) -> Response {
    let options = SendFileOptions {
        caption,
        filter: filter.filter(|f| !f.is_empty()),
        original,
    };
    let result = state
        .node
        .send_file(to, path, options)
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

/// `DELETE /v1/files/{id}`: cancels the file's transfer for good (a download or our upload);
/// answers with the file, now `cancelled`. 409 `complete` for a file that has already arrived.
pub(crate) async fn cancel_file(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return invalid(&why),
    };
    let me = state.node.peer_id().to_string();
    let result = state.node.cancel_file(&id).await.map(|f| info(&me, f));
    respond(StatusCode::OK, result)
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

/// Photos the browser may show inline; everything else is served as an attachment, so a received
/// file can never run as a page on the node's own origin.
const INLINE_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "image/gif"];
/// Largest file `GET /v1/files/{id}/content` decrypts into memory; bigger ones are saved instead.
const MAX_CONTENT_BYTES: u64 = 256 * 1024 * 1024;

/// `POST /v1/files/upload?to=&name=[&caption=&filter=&original=]`.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct UploadQuery {
    to: String,
    name: String,
    #[serde(default)]
    caption: String,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    original: bool,
}

/// A file name from a browser, reduced to its last component.
fn upload_name(name: &str) -> Result<String, String> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if last.is_empty() || last == "." || last == ".." || last.contains('\0') || last.len() > 255 {
        return Err(format!("'{name}' is not a usable file name"));
    }
    Ok(last.to_owned())
}

/// `POST /v1/files/upload`: the web app's send. The body (the file's bytes, up to the node's file
/// limit) is streamed to a staging file beside the blob store, then sent like `POST /v1/files`.
pub(crate) async fn upload(
    State(state): State<AppState>,
    Query(query): Query<UploadQuery>,
    body: Body,
) -> Response {
    use futures::StreamExt as _;
    use tokio::io::AsyncWriteExt as _;

    let name = match upload_name(&query.name) {
        Ok(name) => name,
        Err(why) => return invalid(&why),
    };
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let staging = state.node.upload_dir().join(format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let path = staging.join(&name);
    let written = async {
        tokio::fs::create_dir_all(&staging)
            .await
            .map_err(|e| format!("cannot stage the upload: {e}"))?;
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| format!("cannot stage the upload: {e}"))?;
        let limit = state.node.max_file_bytes();
        let mut total = 0u64;
        let mut chunks = body.into_data_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk.map_err(|e| format!("the upload broke off: {e}"))?;
            total += chunk.len() as u64;
            if total > limit {
                return Err(format!(
                    "the file is over this node's limit of {limit} bytes"
                ));
            }
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("cannot stage the upload: {e}"))?;
        }
        file.flush()
            .await
            .map_err(|e| format!("cannot stage the upload: {e}"))?;
        Ok(())
    }
    .await;
    let response = match written {
        Err(why) => invalid(&why),
        Ok(()) => {
            send_and_report(
                &state,
                &query.to,
                &path,
                query.caption,
                query.filter,
                query.original,
            )
            .await
        }
    };
    let _ = tokio::fs::remove_dir_all(&staging).await;
    response
}

/// `GET /v1/files/{id}/thumbnail`.
pub(crate) async fn thumbnail(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return invalid(&why),
    };
    match state.node.file_thumbnail(&id) {
        Ok(Some(jpeg)) => (
            [
                (header::CONTENT_TYPE, "image/jpeg"),
                (header::CACHE_CONTROL, "private, max-age=86400"),
            ],
            jpeg,
        )
            .into_response(),
        Ok(None) => web::error(
            StatusCode::NOT_FOUND,
            "not_found",
            "this file has no thumbnail",
        ),
        Err(e) => respond::<()>(StatusCode::OK, Err(e)),
    }
}

/// `GET /v1/files/{id}/content`: photos inline, everything else as a download; sandboxed either
/// way.
pub(crate) async fn content(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let id = match parse_id(&id) {
        Ok(id) => id,
        Err(why) => return invalid(&why),
    };
    match state.node.file_content(&id, MAX_CONTENT_BYTES).await {
        Ok((report, bytes)) => {
            let inline = INLINE_TYPES.contains(&report.offer.mime.as_str());
            let content_type = if inline {
                report.offer.mime.clone()
            } else {
                "application/octet-stream".to_owned()
            };
            // RFC 6266 with the RFC 5987 form, so any name survives and none can inject headers.
            let encoded: String = report
                .offer
                .name
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let disposition = format!(
                "{}; filename*=UTF-8''{encoded}",
                if inline { "inline" } else { "attachment" }
            );
            let mut response = bytes.into_response();
            let headers = response.headers_mut();
            for (name, value) in [
                (header::CONTENT_TYPE, content_type),
                (header::CONTENT_DISPOSITION, disposition),
                (header::CONTENT_SECURITY_POLICY, "sandbox".to_owned()),
                (header::CACHE_CONTROL, "private, no-store".to_owned()),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            response
        }
        Err(e) => respond::<()>(StatusCode::OK, Err(e)),
    }
}
