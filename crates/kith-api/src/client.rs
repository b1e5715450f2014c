use std::{net::SocketAddr, time::Duration};

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use serde::Serialize;

use crate::{
    AddContactRequest, AddInviteRequest, ApiToken, ContactReport, ConversationReport, DoctorReport,
    ErrorBody, FileInfo, FilterInfo, HistoryReport, InviteReport, NameReport, PeerReport,
    PowParams, RegisterRequest, ResolveReport, SaveFileRequest, SavedFile, SendFileReport,
    SendFileRequest, SendReport, SendRequest, StatusReport, TrustReport, VerifyReport,
};

/// The largest page the server answers; longer reads page with `before`.
const PAGE: usize = 1000;

/// Why an API call failed. The CLI maps these to exit codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Nothing answers at the node's address: it is not running (or `api.json` is stale).
    #[error("no kith node answers at {addr}")]
    NotRunning {
        /// The address from `api.json`.
        addr: SocketAddr,
    },
    /// The node refused our token: `api.token` does not belong to this node.
    #[error("the node at {addr} refused the API token; is api.token from this home?")]
    Unauthorized {
        /// The address from `api.json`.
        addr: SocketAddr,
    },
    /// The node answered with an error.
    #[error("{}", body.error)]
    Api {
        /// HTTP status.
        status: u16,
        /// The node's explanation and details.
        body: ErrorBody,
    },
    /// Transport-level failure other than "nothing listening".
    #[error("talking to the node failed: {0}")]
    Http(String),
}

/// A client of one node's local API.
#[derive(Debug, Clone)]
pub struct ApiClient {
    addr: SocketAddr,
    token: ApiToken,
    http: reqwest::Client,
}

impl ApiClient {
    /// A client for the node at `addr` (from `api.json`).
    pub fn new(addr: SocketAddr, token: ApiToken) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .build()
            .map_err(|e| ClientError::Http(e.to_string()))?;
        Ok(Self { addr, token, http })
    }

    /// `GET /v1/status`.
    pub async fn status(&self) -> Result<StatusReport, ClientError> {
        self.get_json("/v1/status").await
    }

    /// `GET /v1/doctor`.
    pub async fn doctor(&self) -> Result<DoctorReport, ClientError> {
        self.get_json("/v1/doctor").await
    }

    /// `GET /v1/peers`.
    pub async fn peers(&self) -> Result<Vec<PeerReport>, ClientError> {
        self.get_json("/v1/peers").await
    }

    /// `POST /v1/shutdown`: the node stops cleanly after answering.
    pub async fn shutdown(&self) -> Result<(), ClientError> {
        let response = self.send(self.http.post(self.url("/v1/shutdown"))).await?;
        self.check(response).await.map(|_| ())
    }

    /// `GET /metrics` as text.
    pub async fn metrics(&self) -> Result<String, ClientError> {
        let response = self.send(self.http.get(self.url("/metrics"))).await?;
        self.check(response)
            .await?
            .text()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))
    }

    /// `GET /v1/names/pow`.
    pub async fn pow_params(&self) -> Result<PowParams, ClientError> {
        self.get_json("/v1/names/pow").await
    }

    /// `POST /v1/names`.
    pub async fn register(&self, request: &RegisterRequest) -> Result<NameReport, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/names", Some(request))
            .await
    }

    /// `GET /v1/names`.
    pub async fn names(&self) -> Result<Vec<NameReport>, ClientError> {
        self.get_json("/v1/names").await
    }

    /// `DELETE /v1/names/{name}`.
    pub async fn release(&self, name: &str) -> Result<NameReport, ClientError> {
        let path = format!("/v1/names/{}", segment(name));
        self.send_json::<(), _>(reqwest::Method::DELETE, &path, None)
            .await
    }

    /// `GET /v1/resolve/{name}`: a pinned name answers from the node without a network call.
    pub async fn resolve(&self, name: &str) -> Result<ResolveReport, ClientError> {
        self.get_json(&format!("/v1/resolve/{}", segment(name)))
            .await
    }

    /// `GET /v1/resolve/{name}?fresh=true`: asks the DHT now, pinned or not, so a key change is
    /// found at once.
    pub async fn resolve_fresh(&self, name: &str) -> Result<ResolveReport, ClientError> {
        self.get_json(&format!("/v1/resolve/{}?fresh=true", segment(name)))
            .await
    }

    /// `GET /v1/contacts`.
    pub async fn contacts(&self) -> Result<Vec<ContactReport>, ClientError> {
        self.get_json("/v1/contacts").await
    }

    /// `POST /v1/contacts`.
    pub async fn add_contact(
        &self,
        petname: &str,
        target: &str,
    ) -> Result<ContactReport, ClientError> {
        let body = AddContactRequest {
            petname: petname.to_owned(),
            target: target.to_owned(),
        };
        self.send_json(reqwest::Method::POST, "/v1/contacts", Some(&body))
            .await
    }

    /// `POST /v1/contacts/invite`.
    pub async fn add_invite(
        &self,
        invite: &str,
        petname: Option<&str>,
    ) -> Result<ContactReport, ClientError> {
        let body = AddInviteRequest {
            invite: invite.to_owned(),
            petname: petname.map(str::to_owned),
        };
        self.send_json(reqwest::Method::POST, "/v1/contacts/invite", Some(&body))
            .await
    }

    /// `DELETE /v1/contacts/{petname}`.
    pub async fn remove_contact(&self, petname: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/contacts/{}", segment(petname)));
        let response = self.send(self.http.delete(url)).await?;
        self.check(response).await.map(|_| ())
    }

    /// `GET /v1/verify/{target}`.
    pub async fn verify(&self, target: &str) -> Result<VerifyReport, ClientError> {
        self.get_json(&format!("/v1/verify/{}", segment(target)))
            .await
    }

    /// `GET /v1/invite`.
    pub async fn invite(&self) -> Result<InviteReport, ClientError> {
        self.get_json("/v1/invite").await
    }

    /// `POST /v1/messages`.
    pub async fn send_message(&self, to: &str, text: &str) -> Result<SendReport, ClientError> {
        let body = SendRequest {
            to: to.to_owned(),
            text: text.to_owned(),
        };
        self.send_json(reqwest::Method::POST, "/v1/messages", Some(&body))
            .await
    }

    /// `POST /v1/files`.
    pub async fn send_file(&self, req: &SendFileRequest) -> Result<SendFileReport, ClientError> {
        self.send_json(reqwest::Method::POST, "/v1/files", Some(req))
            .await
    }

    /// `GET /v1/files`, optionally only with one petname, name or peer id.
    pub async fn files(&self, with: Option<&str>) -> Result<Vec<FileInfo>, ClientError> {
        match with {
            Some(who) => {
                self.get_json(&format!("/v1/files?with={}", segment(who)))
                    .await
            }
            None => self.get_json("/v1/files").await,
        }
    }

    /// `GET /v1/calls?limit=N`.
    pub async fn calls(&self, limit: usize) -> Result<crate::CallsReport, ClientError> {
        self.get_json(&format!("/v1/calls?limit={limit}")).await
    }

    /// `GET /v1/files/{id}`.
    pub async fn file(&self, id: &str) -> Result<FileInfo, ClientError> {
        self.get_json(&format!("/v1/files/{}", segment(id))).await
    }

    /// `DELETE /v1/files/{id}`: cancels the file's transfer for good.
    pub async fn cancel_file(&self, id: &str) -> Result<FileInfo, ClientError> {
        let path = format!("/v1/files/{}", segment(id));
        self.send_json::<(), _>(reqwest::Method::DELETE, &path, None)
            .await
    }

    /// `POST /v1/files/{id}/save`.
    pub async fn save_file(&self, id: &str, path: &str) -> Result<SavedFile, ClientError> {
        let body = SaveFileRequest {
            path: path.to_owned(),
        };
        self.send_json(
            reqwest::Method::POST,
            &format!("/v1/files/{}/save", segment(id)),
            Some(&body),
        )
        .await
    }

    /// `GET /v1/filters`.
    pub async fn filters(&self) -> Result<Vec<FilterInfo>, ClientError> {
        self.get_json("/v1/filters").await
    }

    /// `GET /v1/messages/{target}`.
    pub async fn history(
        &self,
        target: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<HistoryReport, ClientError> {
        let mut path = format!("/v1/messages/{}?limit={limit}", segment(target));
        if let Some(before) = before {
            path.push_str(&format!("&before={}", segment(before)));
        }
        self.get_json(&path).await
    }

    /// The newest `limit` messages before `before` (any number: pages of at most 1,000 are
    /// fetched with `before` until `limit` are in hand or the conversation begins), oldest first.
    pub async fn history_up_to(
        &self,
        target: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<HistoryReport, ClientError> {
        page_back(limit, before, async |n, before| {
            self.history(target, n, before).await
        })
        .await
    }

    /// `POST /v1/messages/{target}/read`: marks a conversation read (sends read receipts).
    pub async fn mark_read(&self, target: &str) -> Result<crate::MarkReadReport, ClientError> {
        let path = format!("/v1/messages/{}/read", segment(target));
        self.send_json::<(), _>(reqwest::Method::POST, &path, None)
            .await
    }

    /// `GET /v1/inbox`.
    pub async fn inbox(&self) -> Result<Vec<ConversationReport>, ClientError> {
        self.get_json("/v1/inbox").await
    }

    /// `GET /v1/requests`.
    pub async fn requests(&self) -> Result<Vec<ConversationReport>, ClientError> {
        self.get_json("/v1/requests").await
    }

    /// `POST /v1/accept/{target}`.
    pub async fn accept(&self, target: &str) -> Result<TrustReport, ClientError> {
        let path = format!("/v1/accept/{}", segment(target));
        self.send_json::<(), _>(reqwest::Method::POST, &path, None)
            .await
    }

    /// `POST /v1/block/{target}`.
    pub async fn block(&self, target: &str) -> Result<TrustReport, ClientError> {
        let path = format!("/v1/block/{}", segment(target));
        self.send_json::<(), _>(reqwest::Method::POST, &path, None)
            .await
    }

    /// `GET /v1/groups`.
    pub async fn groups(&self) -> Result<Vec<crate::GroupReport>, ClientError> {
        self.get_json("/v1/groups").await
    }

    /// `GET /v1/groups/invitations`.
    pub async fn group_invitations(&self) -> Result<Vec<crate::GroupReport>, ClientError> {
        self.get_json("/v1/groups/invitations").await
    }

    /// `POST /v1/groups`.
    pub async fn create_group(&self, title: &str) -> Result<crate::GroupReport, ClientError> {
        let body = crate::CreateGroupRequest {
            title: title.to_owned(),
        };
        self.send_json(reqwest::Method::POST, "/v1/groups", Some(&body))
            .await
    }

    /// `GET /v1/groups/{group}`.
    pub async fn group(&self, group: &str) -> Result<crate::GroupReport, ClientError> {
        self.get_json(&format!("/v1/groups/{}", segment(group)))
            .await
    }

    /// `POST /v1/groups/{group}/join`.
    pub async fn join_group(&self, group: &str) -> Result<crate::GroupReport, ClientError> {
        let path = format!("/v1/groups/{}/join", segment(group));
        self.send_json::<(), _>(reqwest::Method::POST, &path, None)
            .await
    }

    /// `POST /v1/groups/{group}/leave`.
    pub async fn leave_group(&self, group: &str) -> Result<crate::GroupReport, ClientError> {
        let path = format!("/v1/groups/{}/leave", segment(group));
        self.send_json::<(), _>(reqwest::Method::POST, &path, None)
            .await
    }

    /// `POST /v1/groups/{group}/invite`.
    pub async fn invite_to_group(
        &self,
        group: &str,
        member: &str,
    ) -> Result<crate::GroupReport, ClientError> {
        let path = format!("/v1/groups/{}/invite", segment(group));
        let body = crate::GroupMemberRequest {
            member: member.to_owned(),
        };
        self.send_json(reqwest::Method::POST, &path, Some(&body))
            .await
    }

    /// `POST /v1/groups/{group}/remove`.
    pub async fn remove_from_group(
        &self,
        group: &str,
        member: &str,
    ) -> Result<crate::GroupReport, ClientError> {
        let path = format!("/v1/groups/{}/remove", segment(group));
        let body = crate::GroupMemberRequest {
            member: member.to_owned(),
        };
        self.send_json(reqwest::Method::POST, &path, Some(&body))
            .await
    }

    /// `POST /v1/groups/{group}/messages`.
    pub async fn send_group(
        &self,
        group: &str,
        text: &str,
    ) -> Result<crate::GroupSendReport, ClientError> {
        let path = format!("/v1/groups/{}/messages", segment(group));
        let body = crate::GroupSendRequest {
            text: text.to_owned(),
        };
        self.send_json(reqwest::Method::POST, &path, Some(&body))
            .await
    }

    /// `GET /v1/groups/{group}/messages`.
    pub async fn group_history(
        &self,
        group: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<crate::GroupHistoryReport, ClientError> {
        let mut path = format!("/v1/groups/{}/messages?limit={limit}", segment(group));
        if let Some(before) = before {
            path.push_str(&format!("&before={}", segment(before)));
        }
        self.get_json(&path).await
    }

    /// Like [`ApiClient::history_up_to`], for a group.
    pub async fn group_history_up_to(
        &self,
        group: &str,
        limit: usize,
        before: Option<&str>,
    ) -> Result<crate::GroupHistoryReport, ClientError> {
        page_back(limit, before, async |n, before| {
            self.group_history(group, n, before).await
        })
        .await
    }

    /// `POST /v1/groups/{group}/read`.
    pub async fn mark_group_read(&self, group: &str) -> Result<(), ClientError> {
        let path = format!("/v1/groups/{}/read", segment(group));
        let response = self.send(self.http.post(self.url(&path))).await?;
        self.check(response).await.map(|_| ())
    }

    /// `GET /v1/relay`.
    pub async fn relay(&self) -> Result<crate::RelayReport, ClientError> {
        self.get_json("/v1/relay").await
    }

    /// The WebSocket URL of the event stream, token included (for clients that cannot set headers).
    pub fn events_url(&self) -> String {
        format!("ws://{}/v1/events?token={}", self.addr, self.token.as_str())
    }

    async fn send_json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let mut request = self.http.request(method, self.url(path));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = self.send(request).await?;
        self.check(response)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Http(format!("unexpected answer from the node: {e}")))
    }

    async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let response = self.send(self.http.get(self.url(path))).await?;
        self.check(response)
            .await?
            .json()
            .await
            .map_err(|e| ClientError::Http(format!("unexpected answer from the node: {e}")))
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        request
            .bearer_auth(self.token.as_str())
            .send()
            .await
            .map_err(|e| {
                if e.is_connect() {
                    ClientError::NotRunning { addr: self.addr }
                } else {
                    ClientError::Http(e.to_string())
                }
            })
    }

    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized { addr: self.addr });
        }
        let body = match response.json::<ErrorBody>().await {
            Ok(body) => body,
            Err(_) => ErrorBody::message(format!("the node answered HTTP {status}")),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            body,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

/// Percent-encodes one path segment (names may be any script; petnames may contain spaces).
/// A page of history that knows its first message and whether older ones exist.
trait HistoryPage: Sized {
    fn first_id(&self) -> Option<String>;
    fn len(&self) -> usize;
    fn more(&self) -> bool;
    /// Puts an older page in front of this one.
    fn prepend(&mut self, older: Self);
}

/// Both history answers page the same way: messages oldest first, `more` for older ones.
macro_rules! history_page {
    ($report:ty) => {
        impl HistoryPage for $report {
            fn first_id(&self) -> Option<String> {
                self.messages.first().map(|m| m.id.clone())
            }
            fn len(&self) -> usize {
                self.messages.len()
            }
            fn more(&self) -> bool {
                self.more
            }
            fn prepend(&mut self, mut older: Self) {
                older.messages.append(&mut self.messages);
                self.messages = older.messages;
                self.more = older.more;
            }
        }
    };
}
history_page!(HistoryReport);
history_page!(crate::GroupHistoryReport);

/// Reads `limit` messages back from `before`, a server page (at most [`PAGE`]) at a time.
async fn page_back<P: HistoryPage>(
    limit: usize,
    before: Option<&str>,
    fetch: impl AsyncFn(usize, Option<&str>) -> Result<P, ClientError>,
) -> Result<P, ClientError> {
    let mut page = fetch(limit.min(PAGE), before).await?;
    while page.more() && page.len() < limit {
        let Some(first) = page.first_id() else {
            break;
        };
        let older = fetch((limit - page.len()).min(PAGE), Some(&first)).await?;
        page.prepend(older);
    }
    Ok(page)
}

fn segment(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}
