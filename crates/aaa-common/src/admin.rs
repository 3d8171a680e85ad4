//! `/healthz`, `/readyz` and `/metrics`, on a listener of their own so the
//! public webhook port never exposes them.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// A dependency check for `/readyz`: `Err` carries a short reason.
pub trait Readiness: Send + Sync + 'static {
    fn check(&self) -> Pin<Box<dyn Future<Output = Result<(), String>> + Send + '_>>;

    /// For `/healthz`: `Err` when the process is alive but stuck (and a
    /// restart or a human is needed). Cheap, no I/O.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
}

struct AdminState {
    metrics: PrometheusHandle,
    readiness: Box<dyn Readiness>,
}

/// Binds `addr` and logs `listening` with the bound address (tests bind port
/// 0 and read the port from this line).
pub async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;
    tracing::info!(message = "listening", listener = name, addr = %local);
    Ok(listener)
}

/// Serves the admin endpoints until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: PrometheusHandle,
    readiness: impl Readiness,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let state = Arc::new(AdminState {
        metrics,
        readiness: Box::new(readiness),
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .map_err(Error::Serve)
}

async fn healthz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    match state.readiness.health() {
        Ok(()) => (StatusCode::OK, "ok".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn readyz(State(state): State<Arc<AdminState>>) -> (StatusCode, String) {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready".into()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason),
    }
}

async fn render_metrics(State(state): State<Arc<AdminState>>) -> String {
    state.metrics.render()
}
