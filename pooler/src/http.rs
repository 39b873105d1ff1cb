//! The HTTP(S) endpoints an SRE relies on: `/health` (200 "OK", as the
//! original), `/livez`, `/readyz` (503 until a configuration is applied and
//! from the moment draining starts) and `/metrics` (Prometheus text format).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::state::PoolerState;
use crate::tls::{PeerIdentity, PeerInfo, TlsConn};

/// The router of the metrics and probes port.
pub fn router(state: Arc<PoolerState>) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/livez", get(|| async { "OK" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<Arc<PoolerState>>) -> impl IntoResponse {
    if state.is_ready() {
        (StatusCode::OK, "ready")
    } else if state.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no configuration applied yet",
        )
    }
}

async fn metrics(State(state): State<Arc<PoolerState>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.render_metrics(),
    )
}

/// Connections whose TLS handshake is done, as an axum listener.
pub struct TlsListener {
    pub incoming: tokio_stream::wrappers::ReceiverStream<std::io::Result<TlsConn>>,
    pub local: std::net::SocketAddr,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsConn;
    type Addr = PeerInfo;

    async fn accept(&mut self) -> (TlsConn, PeerInfo) {
        use futures::StreamExt;
        loop {
            match self.incoming.next().await {
                Some(Ok(conn)) => {
                    let info = conn.info.clone();
                    return (conn, info);
                }
                Some(Err(_)) => continue,
                // The acceptor only stops with the process.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<PeerInfo> {
        Ok(PeerInfo {
            remote: self.local,
            identity: PeerIdentity::Anonymous,
        })
    }
}
