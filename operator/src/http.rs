//! The operator's HTTP endpoints: `/livez` (the process runs), `/readyz` (the
//! Kubernetes API answered and, on the leader, the controller started; a standby
//! replica is ready too, so rollouts proceed) and `/metrics` (Prometheus).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

#[derive(Clone)]
struct Shared {
    ready: Arc<AtomicBool>,
    metrics: Metrics,
}

/// The router, for serving and for tests.
pub fn router(ready: Arc<AtomicBool>, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(shared): State<Shared>| async move {
                if shared.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(shared): State<Shared>| async move { shared.metrics.render() }),
        )
        .with_state(Shared { ready, metrics })
}

/// Serves the router on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, router: Router) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, router).await
}
