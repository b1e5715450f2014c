use std::{net::SocketAddr, time::Duration};

use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::{ApiToken, ErrorBody, PeerReport, StatusReport};

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
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The node's explanation.
        message: String,
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
        let message = match response.json::<ErrorBody>().await {
            Ok(body) => body.error,
            Err(_) => format!("the node answered HTTP {status}"),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            message,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}
