//! One module per gRPC service: each converts between protobuf messages and
//! the library crates' domain types, by hand, at the edge.

pub(crate) mod audit;
pub(crate) mod ca;
pub(crate) mod guard;
pub(crate) mod identity;
pub(crate) mod ratelimit;
pub(crate) mod sandbox;

/// Runs CPU-bound or blocking work (signing, SQLite, scanning megabytes of
/// text) on tokio's blocking pool, so that it never holds up the async
/// workers that serve every other call. `what` names the work in the INTERNAL
/// status returned should it panic.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, tonic::Status> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| tonic::Status::internal(format!("{what} failed: {e}")))
}
