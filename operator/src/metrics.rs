//! The operator's Prometheus metrics. Names are part of the contract (DESIGN.md):
//! `teresa_operator_reconciliations_total{outcome}`,
//! `teresa_operator_reconcile_duration_seconds`, the push counters and the
//! leader election gauge and counter.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

/// Every metric the operator exports, registered in one registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Reconciliations by outcome: "ok" or the error's metric label.
    pub reconciliations: IntCounterVec,
    /// How long reconciliations take.
    pub reconcile_duration: HistogramVec,
    /// Successful ApplyConfig calls and no-op checks, by outcome
    /// ("applied", "unchanged").
    pub pushes: IntCounterVec,
    /// Failed pod syncs, by reason.
    pub push_failures: IntCounterVec,
    /// 1 while this replica holds the leader lease and may reconcile.
    pub leader: IntGauge,
    /// Leadership changes, by event: "acquired", "lost" (renewal failed or
    /// another replica took the Lease), "released" (shutdown).
    pub leader_transitions: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconciliations = IntCounterVec::new(
            Opts::new(
                "teresa_operator_reconciliations_total",
                "TenantPool reconciliations by outcome",
            ),
            &["outcome"],
        )?;
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "teresa_operator_reconcile_duration_seconds",
                "Duration of TenantPool reconciliations",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )?;
        let pushes = IntCounterVec::new(
            Opts::new(
                "teresa_operator_pushes_total",
                "Pooler pod syncs that succeeded, by outcome (applied, unchanged)",
            ),
            &["outcome"],
        )?;
        let push_failures = IntCounterVec::new(
            Opts::new(
                "teresa_operator_push_failures_total",
                "Pooler pod syncs that failed, by reason",
            ),
            &["reason"],
        )?;
        let leader = IntGauge::new(
            "teresa_operator_leader",
            "1 while this replica holds the leader lease",
        )?;
        let leader_transitions = IntCounterVec::new(
            Opts::new(
                "teresa_operator_leader_transitions_total",
                "Leadership changes of this replica: acquired, lost, released",
            ),
            &["event"],
        )?;
        registry.register(Box::new(reconciliations.clone()))?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(pushes.clone()))?;
        registry.register(Box::new(push_failures.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        registry.register(Box::new(leader_transitions.clone()))?;
        Ok(Self {
            registry,
            reconciliations,
            reconcile_duration,
            pushes,
            push_failures,
            leader,
            leader_transitions,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buffer);
        String::from_utf8(buffer).unwrap_or_default()
    }
}
