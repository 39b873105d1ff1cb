//! Prometheus metrics, with the names DESIGN.md fixes. Counters and
//! histograms are bumped where things happen, through per-tenant handles
//! resolved once ([`TenantMetrics`]); gauges of live pool state are read from
//! the pools at scrape time, so they can never drift from the truth.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::pool::PoolStats;

/// Every metric of the pooler, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    connections: IntGaugeVec,
    max_connections: IntGaugeVec,
    waiting_clients: IntGaugeVec,
    leases_active: IntGaugeVec,
    database_up: IntGaugeVec,
    leases_total: IntCounterVec,
    acquire_duration: HistogramVec,
    acquire_failures: IntCounterVec,
    queries_total: IntCounterVec,
    query_duration: HistogramVec,
    config_version: IntGaugeVec,
    config_applies: IntCounterVec,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let histogram = |name: &str, help: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
                &["tenant"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let metrics = Metrics {
            connections: gauge(
                "teresa_pool_connections",
                "Server connections of the tenant's pool, by state (active: leased or running a statement).",
                &["tenant", "state"],
            ),
            max_connections: gauge(
                "teresa_pool_max_connections",
                "Upper bound of the tenant's server connections.",
                &["tenant"],
            ),
            waiting_clients: gauge(
                "teresa_pool_waiting_clients",
                "Callers waiting for a connection of the tenant.",
                &["tenant"],
            ),
            leases_active: gauge(
                "teresa_leases_active",
                "Leases currently held on the tenant.",
                &["tenant"],
            ),
            database_up: gauge(
                "teresa_pool_database_up",
                "1 when the pooler could open a connection to the tenant's database at its last try.",
                &["tenant"],
            ),
            leases_total: counter(
                "teresa_leases_total",
                "Leases ended, by outcome (released by the client, expired by TTL, revoked by the pooler).",
                &["tenant", "outcome"],
            ),
            acquire_duration: histogram(
                "teresa_acquire_duration_seconds",
                "Time to obtain a server connection (leases and one-shot statements).",
            ),
            acquire_failures: counter(
                "teresa_acquire_failures_total",
                "Failed attempts to obtain a server connection, by reason.",
                &["tenant", "reason"],
            ),
            queries_total: counter(
                "teresa_queries_total",
                "SQL statements run through Execute, by outcome.",
                &["tenant", "outcome"],
            ),
            query_duration: histogram(
                "teresa_query_duration_seconds",
                "Time from the start of a statement to its last row.",
            ),
            config_version: gauge(
                "teresa_config_version_info",
                "The applied configuration version (value is always 1).",
                &["version"],
            ),
            config_applies: counter(
                "teresa_config_applies_total",
                "Configuration applies, by outcome (applied, unchanged, rejected).",
                &["outcome"],
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            metrics
                .registry
                .register(Box::new(process))
                .expect("unique metric");
        }
        metrics
    }

    /// Handles for one tenant's counters and histograms.
    pub fn tenant(&self, tenant: &str) -> TenantMetrics {
        TenantMetrics {
            tenant: tenant.to_owned(),
            metrics: self.clone(),
            acquire_duration: self.acquire_duration.with_label_values(&[tenant]),
            query_duration: self.query_duration.with_label_values(&[tenant]),
            leases_released: self.leases_total.with_label_values(&[tenant, "released"]),
            leases_expired: self.leases_total.with_label_values(&[tenant, "expired"]),
            leases_revoked: self.leases_total.with_label_values(&[tenant, "revoked"]),
            queries_ok: self.queries_total.with_label_values(&[tenant, "ok"]),
            queries_error: self.queries_total.with_label_values(&[tenant, "error"]),
        }
    }

    /// Sets the live gauges of one tenant (called at scrape time).
    pub fn observe_pool(&self, tenant: &str, stats: &PoolStats, leases: usize) {
        self.connections
            .with_label_values(&[tenant, "active"])
            .set(stats.active.into());
        self.connections
            .with_label_values(&[tenant, "idle"])
            .set(stats.idle.into());
        self.max_connections
            .with_label_values(&[tenant])
            .set(stats.max.into());
        self.waiting_clients
            .with_label_values(&[tenant])
            .set(stats.waiting.into());
        self.leases_active
            .with_label_values(&[tenant])
            .set(leases as i64);
        self.database_up
            .with_label_values(&[tenant])
            .set(stats.database_reachable.into());
    }

    /// Records which configuration version is applied now.
    pub fn set_config_version(&self, old: &str, new: &str) {
        if !old.is_empty() {
            let _ = self.config_version.remove_label_values(&[old]);
        }
        self.config_version.with_label_values(&[new]).set(1);
    }

    pub fn config_applied(&self, outcome: &str) {
        self.config_applies.with_label_values(&[outcome]).inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// Per-tenant metric handles; dropping the tenant's pool removes its series.
pub struct TenantMetrics {
    tenant: String,
    metrics: Metrics,
    pub acquire_duration: Histogram,
    pub query_duration: Histogram,
    leases_released: IntCounter,
    leases_expired: IntCounter,
    leases_revoked: IntCounter,
    queries_ok: IntCounter,
    queries_error: IntCounter,
}

impl TenantMetrics {
    pub fn acquire_failure(&self, reason: &str) {
        self.metrics
            .acquire_failures
            .with_label_values(&[&self.tenant, reason])
            .inc();
    }

    pub fn lease_ended(&self, outcome: &str) {
        match outcome {
            "released" => self.leases_released.inc(),
            "expired" => self.leases_expired.inc(),
            _ => self.leases_revoked.inc(),
        }
    }

    pub fn query(&self, ok: bool, seconds: f64) {
        if ok {
            self.queries_ok.inc();
        } else {
            self.queries_error.inc();
        }
        self.query_duration.observe(seconds);
    }

    /// Removes every series of this tenant.
    pub fn remove(&self) {
        let m = &self.metrics;
        let t = self.tenant.as_str();
        for state in ["active", "idle"] {
            let _ = m.connections.remove_label_values(&[t, state]);
        }
        let _ = m.max_connections.remove_label_values(&[t]);
        let _ = m.waiting_clients.remove_label_values(&[t]);
        let _ = m.leases_active.remove_label_values(&[t]);
        let _ = m.database_up.remove_label_values(&[t]);
        let _ = m.acquire_duration.remove_label_values(&[t]);
        let _ = m.query_duration.remove_label_values(&[t]);
        for outcome in ["released", "expired", "revoked"] {
            let _ = m.leases_total.remove_label_values(&[t, outcome]);
        }
        for reason in ["timeout", "queue_full", "unavailable", "removed"] {
            let _ = m.acquire_failures.remove_label_values(&[t, reason]);
        }
        for outcome in ["ok", "error"] {
            let _ = m.queries_total.remove_label_values(&[t, outcome]);
        }
    }
}
