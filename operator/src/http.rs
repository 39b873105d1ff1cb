//! The operator's HTTP endpoints: `/livez` (the process runs), `/readyz` and
//! `/metrics` (Prometheus).
//!
//! `/readyz` answers 200 while nothing holds readiness back, else 503 with one
//! line per reason: still starting, the leader Lease cannot be read or renewed,
//! the TenantPool CRD is missing. A standby replica that reaches the API server
//! is ready, so rollouts proceed.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// What can hold readiness back; each part of the process reports its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Blocker {
    /// The process has not finished starting.
    Starting,
    /// Leader election cannot read or renew its Lease.
    LeaderLease,
    /// The TenantPool CRD is not installed.
    Crd,
}

/// The operator's readiness: ready while no [`Blocker`] is set. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    blocked: Arc<Mutex<BTreeMap<Blocker, String>>>,
}

impl Readiness {
    /// Not ready until [`Blocker::Starting`] is cleared.
    pub fn starting() -> Self {
        let readiness = Self::default();
        readiness.block(Blocker::Starting, "starting");
        readiness
    }

    /// Holds readiness back for `blocker`, saying why.
    pub fn block(&self, blocker: Blocker, why: impl Into<String>) {
        self.lock().insert(blocker, why.into());
    }

    /// Clears `blocker`.
    pub fn clear(&self, blocker: Blocker) {
        self.lock().remove(&blocker);
    }

    /// `None` when ready, else every reason, one per line.
    pub fn problems(&self) -> Option<String> {
        let blocked = self.lock();
        (!blocked.is_empty()).then(|| blocked.values().cloned().collect::<Vec<_>>().join("\n"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Blocker, String>> {
        // The map stays consistent even if a holder panicked.
        self.blocked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct Shared {
    ready: Readiness,
    metrics: Metrics,
}

/// The router, for serving and for tests.
pub fn router(ready: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(shared): State<Shared>| async move {
                match shared.ready.problems() {
                    None => (StatusCode::OK, "ready".to_string()),
                    Some(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
                }
            }),
        )
        .route(
            "/metrics",
            get(|State(shared): State<Shared>| async move { shared.metrics.render() }),
        )
        .with_state(Shared { ready, metrics })
}

/// Serves the router on a bound listener (bound by the caller, so that a taken
/// port fails the start) until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, router: Router) -> std::io::Result<()> {
    axum::serve(listener, router).await
}
