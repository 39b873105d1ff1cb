//! Leader election on a `coordination.k8s.io/v1` Lease, so that several operator
//! replicas can run and exactly one reconciles.
//!
//! The guarantees (kube-lease-manager 0.13 gives neither: when its renewals fail
//! it logs and retries with backoff while still reporting leadership, and it
//! releases the Lease only when its watch channel closes, which an exiting
//! process never waits for):
//!
//! - **A leader that cannot renew steps down before the Lease expires.** Every
//!   wait of a leader, request or pause, ends at its last successful renewal plus
//!   `renew_deadline` (10 s); at that instant it stops reporting leadership, so the
//!   controller stops. Other replicas count `lease_duration` (15 s) from when
//!   *they* saw that renewal, which is later, so the old leader has stopped for at
//!   least 5 s when the first of them may take over.
//! - **A candidate never judges by another node's clock.** It takes a held Lease
//!   only after it has seen the same record, unchanged, for the Lease's duration
//!   on its own clock; a released Lease (no holder) it takes at once.
//! - **Shutdown hands over.** [`Leadership::release`] (called on SIGTERM after
//!   the controller stopped) clears the holder, so a standby, polling every
//!   `retry_period` (2 s), takes over at its next poll.
//!
//! Every write is a `replace` carrying the `resourceVersion` that was read: two
//! replicas racing for the Lease cannot both win; the loser sees a conflict.

use std::time::Duration;

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
    jiff::Timestamp,
};
use kube::{Api, Client, api::PostParams};
use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::{
    http::{Blocker, Readiness},
    metrics::Metrics,
};

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// A Lease read or write failed.
    #[error("Lease {lease}: Kubernetes API call failed: {source}")]
    Kube {
        /// `namespace/name` of the Lease.
        lease: String,
        #[source]
        source: kube::Error,
    },
    /// A Lease read or write did not answer in time.
    #[error("Lease {lease}: no answer from the Kubernetes API within {timeout:?}")]
    Timeout {
        /// `namespace/name` of the Lease.
        lease: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The election task ended.
    #[error("leader election stopped")]
    Stopped,
}

impl LeaderError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            LeaderError::Kube { .. } => "kube_api",
            LeaderError::Timeout { .. } => "timeout",
            LeaderError::Stopped => "stopped",
        }
    }
}

/// Which Lease, who competes, and the timings. `renew_deadline` must be shorter
/// than `lease_duration` (the difference is the safety margin), and
/// `retry_period` shorter than `renew_deadline`.
#[derive(Clone, Debug)]
pub struct ElectionSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's holder identity (its pod name).
    pub identity: String,
    /// How long a Lease holds without renewal, written into the Lease.
    pub lease_duration: Duration,
    /// A leader steps down when it has not renewed for this long.
    pub renew_deadline: Duration,
    /// Pause between renewals of a leader and between polls of a candidate.
    pub retry_period: Duration,
}

impl ElectionSettings {
    /// The production timings: 15 s Lease, 10 s renew deadline, 2 s retry.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    fn lease(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }
}

/// This replica's part in the election: owns the task that competes for and
/// renews the Lease.
pub struct Leadership {
    leader: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Leadership {
    /// Starts competing for the Lease. The task reports into `metrics`
    /// (`teresa_operator_leader`, `teresa_operator_leader_transitions_total`) and
    /// holds `readiness` back while it cannot reach the Lease.
    pub fn start(
        client: Client,
        settings: ElectionSettings,
        metrics: Metrics,
        readiness: Readiness,
    ) -> Self {
        let (leader_tx, leader) = watch::channel(false);
        let (stop, stopped) = oneshot::channel();
        let elector = Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
            renewed_at: None,
            leader: leader_tx,
            metrics,
            readiness,
        };
        Self {
            leader,
            stop: Some(stop),
            task: tokio::spawn(elector.run(stopped)),
        }
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Resolves once this replica holds the Lease.
    pub async fn acquired(&mut self) -> Result<(), LeaderError> {
        self.leader
            .wait_for(|leader| *leader)
            .await
            .map(|_| ())
            .map_err(|_| LeaderError::Stopped)
    }

    /// Resolves as soon as this replica must stop acting as the leader.
    pub async fn lost(&mut self) {
        let _ = self.leader.wait_for(|leader| !*leader).await;
    }

    /// Stops competing and, if leading, clears the Lease's holder so that a
    /// standby takes over at its next poll. Call after the controller stopped.
    pub async fn release(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Dropped without release (an error path): stop acting at once.
        self.task.abort();
    }
}

/// The Lease as last read or written, and when this replica first saw it so.
struct Observed {
    lease: Lease,
    seen_at: Instant,
}

struct Elector {
    api: Api<Lease>,
    settings: ElectionSettings,
    observed: Option<Observed>,
    /// While leading: when the last successful renewal was sent.
    renewed_at: Option<Instant>,
    leader: watch::Sender<bool>,
    metrics: Metrics,
    readiness: Readiness,
}

impl Elector {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        loop {
            let started = Instant::now();
            // A leader's request may not outlive its deadline; a candidate's is
            // bounded by the same length.
            let limit = self
                .deadline()
                .unwrap_or(started + self.settings.renew_deadline);
            let outcome = tokio::select! {
                biased;
                _ = &mut stop => None,
                outcome = tokio::time::timeout_at(limit, self.try_acquire_or_renew()) => Some(outcome),
            };
            let Some(outcome) = outcome else {
                self.release().await;
                return;
            };
            match outcome {
                Ok(Ok(true)) => self.renewed(started),
                Ok(Ok(false)) => self.held_elsewhere(),
                Ok(Err(source)) => self.failed(LeaderError::Kube {
                    lease: self.settings.lease(),
                    source,
                }),
                Err(_) => self.failed(LeaderError::Timeout {
                    lease: self.settings.lease(),
                    timeout: limit.saturating_duration_since(started),
                }),
            }
            self.check_deadline();
            let mut wake = started + self.settings.retry_period;
            if let Some(deadline) = self.deadline() {
                wake = wake.min(deadline);
            }
            let stopped = tokio::select! {
                biased;
                _ = &mut stop => true,
                _ = tokio::time::sleep_until(wake) => false,
            };
            if stopped {
                self.release().await;
                return;
            }
            self.check_deadline();
        }
    }

    fn leading(&self) -> bool {
        self.renewed_at.is_some()
    }

    fn deadline(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.settings.renew_deadline)
    }

    /// One round: read the Lease, then take it if it is free, ours or expired.
    /// `Ok(true)`: this replica holds it now; `Ok(false)`: another one does.
    async fn try_acquire_or_renew(&mut self) -> Result<bool, kube::Error> {
        let name = self.settings.name.clone();
        let Some(current) = self.api.get_opt(&name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.claim(None)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.is_already_exists() || s.is_conflict() => Ok(false),
                Err(e) => Err(e),
            };
        };
        self.observe(current.clone());
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref().filter(|h| !h.is_empty());
        let mine = holder == Some(self.settings.identity.as_str());
        if holder.is_some() && !mine && !self.observed_expired() {
            return Ok(false);
        }
        let mut claimed = current;
        claimed.spec = Some(self.claim(Some(&spec)));
        match self
            .api
            .replace(&name, &PostParams::default(), &claimed)
            .await
        {
            Ok(written) => {
                self.observe(written);
                Ok(true)
            }
            // Someone wrote since our read: whoever it was, this round is lost.
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The spec that makes this replica the holder, renewed now.
    fn claim(&self, previous: Option<&LeaseSpec>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let identity = &self.settings.identity;
        let mut spec = previous.cloned().unwrap_or_default();
        let renewal = spec.holder_identity.as_ref() == Some(identity);
        if !renewal {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions =
                Some(spec.lease_transitions.map_or(0, |t| t.saturating_add(1)));
        }
        spec.holder_identity = Some(identity.clone());
        spec.lease_duration_seconds = Some(self.settings.duration_seconds());
        spec.renew_time = Some(now);
        spec
    }

    fn observe(&mut self, lease: Lease) {
        let unchanged = self.observed.as_ref().is_some_and(|o| {
            o.lease.metadata.resource_version == lease.metadata.resource_version
                && o.lease.spec == lease.spec
        });
        if !unchanged {
            self.observed = Some(Observed {
                lease,
                seen_at: Instant::now(),
            });
        }
    }

    /// Whether the observed record has stayed unchanged for its duration.
    fn observed_expired(&self) -> bool {
        self.observed.as_ref().is_some_and(|o| {
            let seconds = o
                .lease
                .spec
                .as_ref()
                .and_then(|s| s.lease_duration_seconds)
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(self.settings.lease_duration.as_secs());
            o.seen_at.elapsed() >= Duration::from_secs(seconds)
        })
    }

    fn renewed(&mut self, started: Instant) {
        self.readiness.clear(Blocker::LeaderLease);
        let acquired = !self.leading();
        self.renewed_at = Some(started);
        if acquired {
            tracing::info!(lease = %self.settings.lease(), identity = %self.settings.identity, "acquired the leader Lease");
            self.metrics.leader.set(1);
            self.metrics
                .leader_transitions
                .with_label_values(&["acquired"])
                .inc();
            self.leader.send_replace(true);
        }
    }

    fn held_elsewhere(&mut self) {
        self.readiness.clear(Blocker::LeaderLease);
        if self.leading() {
            let holder = self
                .observed
                .as_ref()
                .and_then(|o| o.lease.spec.as_ref())
                .and_then(|s| s.holder_identity.clone())
                .unwrap_or_default();
            self.step_down(&format!("another replica ({holder:?}) wrote the Lease"));
        }
    }

    fn failed(&mut self, error: LeaderError) {
        self.readiness
            .block(Blocker::LeaderLease, format!("leader election: {error}"));
        match self.deadline() {
            Some(deadline) => tracing::warn!(
                lease = %self.settings.lease(),
                error = %error,
                steps_down_in_ms = deadline.saturating_duration_since(Instant::now()).as_millis() as u64,
                "cannot renew the leader Lease"
            ),
            None => {
                tracing::warn!(lease = %self.settings.lease(), error = %error, "cannot read the leader Lease")
            }
        }
    }

    fn check_deadline(&mut self) {
        if self.deadline().is_some_and(|d| Instant::now() >= d) {
            let why = format!(
                "the Lease was not renewed within {:?}",
                self.settings.renew_deadline
            );
            self.step_down(&why);
        }
    }

    /// Stops acting as the leader: first the signal, then the bookkeeping.
    fn step_down(&mut self, why: &str) {
        self.leader.send_replace(false);
        self.renewed_at = None;
        self.metrics.leader.set(0);
        self.metrics
            .leader_transitions
            .with_label_values(&["lost"])
            .inc();
        tracing::error!(lease = %self.settings.lease(), identity = %self.settings.identity, reason = why, "lost leadership: stopped reconciling");
    }

    /// Stops leading and clears the holder, if this replica holds the Lease.
    async fn release(&mut self) {
        self.leader.send_replace(false);
        self.metrics.leader.set(0);
        if self.renewed_at.take().is_none() {
            return;
        }
        let Some(mut lease) = self.observed.take().map(|o| o.lease) else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let name = self.settings.name.clone();
        let params = PostParams::default();
        let put = self.api.replace(&name, &params, &lease);
        match tokio::time::timeout(self.settings.renew_deadline, put).await {
            Ok(Ok(_)) => {
                self.metrics
                    .leader_transitions
                    .with_label_values(&["released"])
                    .inc();
                tracing::info!(lease = %self.settings.lease(), "released the leader Lease");
            }
            Ok(Err(e)) => {
                tracing::warn!(lease = %self.settings.lease(), error = %e, "cannot release the leader Lease; another replica takes over when it expires");
            }
            Err(_) => {
                tracing::warn!(lease = %self.settings.lease(), "releasing the leader Lease timed out; another replica takes over when it expires");
            }
        }
    }
}

#[cfg(test)]
mod tests;
