/// Why a node operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] kith_store::StoreError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] kith_net::NetError),
    /// A network request failed.
    #[error(transparent)]
    Request(#[from] kith_net::RequestError),
}
