//! What every part of a running pooler shares: its tenants, its leases, its
//! metrics, its limits and whether it is draining.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::lease::LeaseTable;
use crate::metrics::Metrics;
use crate::tenants::Tenants;

/// Limits and switches of the lease API.
#[derive(Debug, Clone)]
pub struct ApiLimits {
    /// Honour a client's `dsn` (standalone compatibility mode).
    pub allow_client_dsn: bool,
    /// Longest SQL text accepted by Execute, in bytes.
    pub max_sql_bytes: usize,
    /// Most parameters one statement may bind.
    pub max_params: usize,
    /// Lease API clients present certificates (`--client-ca`); set by the
    /// server from its TLS settings.
    pub client_certificates: bool,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            allow_client_dsn: false,
            max_sql_bytes: 1 << 20,
            max_params: 65_535,
            client_certificates: false,
        }
    }
}

/// The running pooler's shared state.
pub struct PoolerState {
    pub tenants: Tenants,
    pub leases: Arc<LeaseTable>,
    pub metrics: Metrics,
    pub limits: ApiLimits,
    draining: AtomicBool,
    listening: AtomicBool,
}

impl PoolerState {
    pub fn new(limits: ApiLimits, drain_timeout: Duration) -> Arc<Self> {
        let metrics = Metrics::new();
        let leases = Arc::new(LeaseTable::new());
        Arc::new(PoolerState {
            tenants: Tenants::new(metrics.clone(), leases.clone(), drain_timeout),
            leases,
            metrics,
            limits,
            draining: AtomicBool::new(false),
            listening: AtomicBool::new(false),
        })
    }

    /// Ready: a configuration is applied, listeners are up, not draining.
    pub fn is_ready(&self) -> bool {
        self.tenants.applied().is_some()
            && self.listening.load(Ordering::Relaxed)
            && !self.is_draining()
    }

    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Sets the live gauges from the pools, then renders every metric.
    pub fn render_metrics(&self) -> String {
        for pool in self.tenants.all() {
            self.metrics
                .observe_pool(pool.id(), &pool.stats(), pool.lease_count());
        }
        self.metrics.render()
    }
}
