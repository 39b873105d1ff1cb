//! Pushes snapshots to pooler pods over the mTLS admin API.
//!
//! One [`Pusher`] task owns every pod's sync state. It receives the latest
//! desired [`PodPlan`]s through a watch channel and publishes what each pod
//! confirmed ([`FleetSync`]) through another. Per pod it asks `GetStatus` and calls
//! `ApplyConfig` only when the applied version differs; failures back off per pod
//! and never hold up other pods. It also refreshes each pod's live tenant numbers
//! at most every `stats_interval`.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use teresa_proto::admin::{
    GetStatusRequest, PoolerStatus, TenantApplyResult, pooler_admin_client::PoolerAdminClient,
};
use tokio::{sync::watch, task::JoinSet};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::{desired::PodPlan, metrics::Metrics};

/// What each pod confirmed, by pod name.
pub type FleetSync = BTreeMap<String, PodSync>;

/// The desired state of each live pod, by pod name.
pub type PushTargets = BTreeMap<String, PodPlan>;

/// What one pod confirmed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodSync {
    /// Pod UID the numbers belong to.
    pub uid: String,
    /// Version the pooler reported as applied.
    pub applied_version: Option<String>,
    /// The last failure, credential-free; cleared by a success.
    pub last_error: Option<String>,
    /// Consecutive failures.
    pub failures: u32,
    /// Live numbers per tenant id, from the last `GetStatus`.
    pub tenants: BTreeMap<String, TenantStats>,
    /// Tenants the pod rejected in the last `ApplyConfig` of this version, with
    /// the pooler's reason (credential-free): they keep their previous
    /// configuration there, and the other tenants apply.
    pub rejected: BTreeMap<String, String>,
}

/// Live numbers of one tenant on one pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantStats {
    /// Leased or busy server connections.
    pub active: i32,
    /// Idle server connections.
    pub idle: i32,
    /// The pool's maximum.
    pub max: i32,
    /// The pooler's last attempt to open a server connection succeeded.
    pub database_reachable: bool,
}

/// Files and names for the operator's side of the admin mTLS.
#[derive(Clone, Debug)]
pub struct AdminTls {
    /// PEM client certificate (its URI SAN is the operator's identity).
    pub cert: PathBuf,
    /// PEM private key of the client certificate.
    pub key: PathBuf,
    /// PEM CA bundle that signed the poolers' server certificates.
    pub ca: PathBuf,
    /// Name the pooler certificates are verified against (pods are dialed by IP).
    pub server_name: String,
}

/// How the pusher reaches pods.
#[derive(Clone, Debug)]
pub struct PushSettings {
    /// mTLS material.
    pub tls: AdminTls,
    /// The poolers' admin port.
    pub admin_port: u16,
    /// Upper bound of one pod sync (connect, status, apply).
    pub timeout: Duration,
    /// How often a synced pod's live numbers are refreshed.
    pub stats_interval: Duration,
    /// Backoff of a failing pod: doubles from `backoff_min` up to `backoff_max`.
    pub backoff_min: Duration,
    /// Largest pause between attempts on a failing pod.
    pub backoff_max: Duration,
}

impl PushSettings {
    /// Production timings around the given TLS material and port.
    pub fn new(tls: AdminTls, admin_port: u16) -> Self {
        Self {
            tls,
            admin_port,
            timeout: Duration::from_secs(15),
            stats_interval: Duration::from_secs(30),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// A failed pod sync. Messages never contain a credential: the pooler's text is
/// scrubbed of the snapshot's passwords before it is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// The operator's certificate, key or CA file cannot be read.
    #[error("cannot read {what} {path}: {reason}")]
    TlsFiles {
        what: &'static str,
        path: String,
        reason: String,
    },
    /// No TLS connection to the pod's admin port.
    #[error("cannot connect to {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The pooler refused our identity.
    #[error("pooler refused the operator's identity ({code}): {message}")]
    Refused { code: String, message: String },
    /// The pooler rejected the configuration; nothing changed there.
    #[error("pooler rejected the configuration: {message}")]
    Rejected { message: String },
    /// Any other failed call.
    #[error("{call} failed ({code}): {message}")]
    Call {
        call: &'static str,
        code: String,
        message: String,
    },
    /// The sync did not finish in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl PushError {
    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            PushError::TlsFiles { .. } => "tls_files",
            PushError::Connect { .. } => "connect",
            PushError::Refused { .. } => "refused",
            PushError::Rejected { .. } => "rejected",
            PushError::Call { .. } => "call",
            PushError::Timeout(_) => "timeout",
        }
    }
}

/// What a successful sync of one pod found.
#[derive(Clone, Debug, PartialEq)]
pub struct SyncReport {
    /// The version the pod now reports.
    pub applied_version: String,
    /// Whether `ApplyConfig` was called (the pod held another version).
    pub pushed: bool,
    /// When pushed: the tenants the pod rejected, with the reason.
    pub rejected: BTreeMap<String, String>,
    /// The pod's live numbers per tenant.
    pub tenants: BTreeMap<String, TenantStats>,
}

/// Opens an mTLS admin connection to `address:port`.
pub async fn connect(
    settings: &PushSettings,
    address: &str,
) -> Result<PoolerAdminClient<tonic::transport::Channel>, PushError> {
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| PushError::TlsFiles {
            what,
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let tls = &settings.tls;
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("CA bundle", &tls.ca)?))
        .identity(Identity::from_pem(
            read("client certificate", &tls.cert)?,
            read("client key", &tls.key)?,
        ))
        .domain_name(tls.server_name.clone());
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    let target = format!("https://{host}:{}", settings.admin_port);
    let connect_error = |reason: String| PushError::Connect {
        address: target.clone(),
        reason,
    };
    let endpoint = Endpoint::from_shared(target.clone())
        .map_err(|e| connect_error(e.to_string()))?
        .tls_config(config)
        .map_err(|e| connect_error(e.to_string()))?
        .connect_timeout(settings.timeout)
        .timeout(settings.timeout);
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| connect_error(error_chain(&e)))?;
    Ok(PoolerAdminClient::new(channel))
}

/// Brings one pod to `snapshot`: asks `GetStatus`, calls `ApplyConfig` only when
/// the applied version differs, and returns the pod's live numbers.
pub async fn sync_pod(
    settings: &PushSettings,
    address: &str,
    plan: &PodPlan,
) -> Result<SyncReport, PushError> {
    let scrub = |text: String| scrub(text, plan);
    let work = async {
        let mut client = connect(settings, address).await?;
        let mut status = client
            .get_status(GetStatusRequest {})
            .await
            .map_err(|s| call_error("GetStatus", s, &scrub))?
            .into_inner();
        let want = plan.snapshot.version();
        let pushed = status.applied_version != want;
        let mut rejected = BTreeMap::new();
        if pushed {
            let answer = client
                .apply_config(plan.snapshot.config().clone())
                .await
                .map_err(|s| call_error("ApplyConfig", s, &scrub))?
                .into_inner();
            for tenant in answer.tenants {
                if tenant.result() == TenantApplyResult::Rejected {
                    rejected.insert(tenant.tenant_id, scrub(tenant.reason));
                }
            }
            status = client
                .get_status(GetStatusRequest {})
                .await
                .map_err(|s| call_error("GetStatus", s, &scrub))?
                .into_inner();
        }
        Ok(SyncReport {
            applied_version: status.applied_version.clone(),
            pushed,
            rejected,
            tenants: tenant_stats(&status),
        })
    };
    tokio::time::timeout(settings.timeout, work)
        .await
        .unwrap_or(Err(PushError::Timeout(settings.timeout)))
}

fn tenant_stats(status: &PoolerStatus) -> BTreeMap<String, TenantStats> {
    status
        .tenants
        .iter()
        .filter(|t| !t.draining)
        .map(|t| {
            (
                t.tenant_id.clone(),
                TenantStats {
                    active: t.active_connections,
                    idle: t.idle_connections,
                    max: t.max_connections,
                    database_reachable: t.database_reachable,
                },
            )
        })
        .collect()
}

fn call_error(
    call: &'static str,
    status: tonic::Status,
    scrub: &dyn Fn(String) -> String,
) -> PushError {
    let message = scrub(status.message().to_string());
    match status.code() {
        tonic::Code::PermissionDenied | tonic::Code::Unauthenticated => PushError::Refused {
            code: format!("{:?}", status.code()),
            message,
        },
        tonic::Code::InvalidArgument if call == "ApplyConfig" => PushError::Rejected { message },
        code => PushError::Call {
            call,
            code: format!("{code:?}"),
            message,
        },
    }
}

/// Removes every password of the plan from a text that came from elsewhere.
fn scrub(mut text: String, plan: &PodPlan) -> String {
    for password in plan.snapshot.passwords() {
        if text.contains(password) {
            text = text.replace(password, "<redacted>");
        }
    }
    text
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// One pod's bookkeeping inside the pusher.
struct PodEntry {
    uid: String,
    restarts: i32,
    desired: String,
    sync: PodSync,
    checked_at: Option<Instant>,
    next_attempt: Instant,
    in_flight: bool,
}

/// The task that keeps every pod at its desired snapshot.
pub struct Pusher {
    settings: PushSettings,
    targets: watch::Receiver<Arc<PushTargets>>,
    state: watch::Sender<Arc<FleetSync>>,
    metrics: Option<Metrics>,
}

impl Pusher {
    /// A pusher reading targets from `targets` and publishing to `state`.
    pub fn new(
        settings: PushSettings,
        targets: watch::Receiver<Arc<PushTargets>>,
        state: watch::Sender<Arc<FleetSync>>,
        metrics: Option<Metrics>,
    ) -> Self {
        Self {
            settings,
            targets,
            state,
            metrics,
        }
    }

    /// Runs until the targets' sender is dropped.
    pub async fn run(mut self) {
        let mut pods: BTreeMap<String, PodEntry> = BTreeMap::new();
        let mut tasks: JoinSet<(String, String, String, Result<SyncReport, PushError>)> =
            JoinSet::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = self.targets.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok((name, uid, version, result)) = joined {
                        self.record(&mut pods, &name, &uid, &version, result);
                    }
                }
                _ = tick.tick() => {}
            }
            let targets = self.targets.borrow_and_update().clone();
            pods.retain(|name, entry| {
                targets
                    .get(name)
                    .is_some_and(|t| t.uid == entry.uid && t.restarts == entry.restarts)
            });
            let now = Instant::now();
            for (name, target) in targets.iter() {
                let Some(address) = target.address.clone() else {
                    continue;
                };
                let entry = pods.entry(name.clone()).or_insert_with(|| PodEntry {
                    uid: target.uid.clone(),
                    restarts: target.restarts,
                    desired: target.snapshot.version().to_string(),
                    sync: PodSync {
                        uid: target.uid.clone(),
                        ..PodSync::default()
                    },
                    checked_at: None,
                    next_attempt: now,
                    in_flight: false,
                });
                if entry.desired != target.snapshot.version() {
                    // A new configuration is worth trying at once, backoff or not,
                    // and the old one's failure says nothing about it.
                    entry.desired = target.snapshot.version().to_string();
                    entry.next_attempt = now;
                    entry.sync.last_error = None;
                    entry.sync.failures = 0;
                }
                let stale = entry
                    .checked_at
                    .is_none_or(|at| now.duration_since(at) >= self.settings.stats_interval);
                let behind =
                    entry.sync.applied_version.as_deref() != Some(target.snapshot.version());
                if entry.in_flight || now < entry.next_attempt || !(stale || behind) {
                    continue;
                }
                entry.in_flight = true;
                let settings = self.settings.clone();
                let plan = target.clone();
                let name = name.clone();
                tasks.spawn(async move {
                    let result = sync_pod(&settings, &address, &plan).await;
                    let version = plan.snapshot.version().to_string();
                    (name, plan.uid, version, result)
                });
            }
            let published: FleetSync = pods
                .iter()
                .map(|(name, entry)| (name.clone(), entry.sync.clone()))
                .collect();
            self.state.send_if_modified(|current| {
                if **current == published {
                    false
                } else {
                    *current = Arc::new(published);
                    true
                }
            });
        }
        tasks.shutdown().await;
    }

    fn record(
        &self,
        pods: &mut BTreeMap<String, PodEntry>,
        name: &str,
        uid: &str,
        version: &str,
        result: Result<SyncReport, PushError>,
    ) {
        let Some(entry) = pods.get_mut(name).filter(|e| e.uid == uid) else {
            return;
        };
        entry.in_flight = false;
        let now = Instant::now();
        match result {
            Ok(report) => {
                if report.pushed {
                    tracing::info!(pod = name, version = %report.applied_version, rejected = ?report.rejected.keys().collect::<Vec<_>>(), "pushed pooler configuration");
                    entry.sync.rejected = report.rejected;
                } else if entry.sync.applied_version.as_deref() != Some(&report.applied_version) {
                    entry.sync.rejected.clear();
                }
                if let Some(m) = &self.metrics {
                    let outcome = if report.pushed {
                        "applied"
                    } else {
                        "unchanged"
                    };
                    m.pushes.with_label_values(&[outcome]).inc();
                }
                entry.sync.applied_version = Some(report.applied_version);
                entry.sync.tenants = report.tenants;
                entry.sync.last_error = None;
                entry.sync.failures = 0;
                entry.checked_at = Some(now);
                entry.next_attempt = now;
            }
            Err(error) => {
                tracing::warn!(pod = name, error = %error, "pooler pod sync failed");
                if let Some(m) = &self.metrics {
                    m.push_failures
                        .with_label_values(&[error.metric_label()])
                        .inc();
                }
                if entry.desired != version {
                    // The configuration changed while this attempt ran: its
                    // failure (perhaps caused by a tenant that is gone) neither
                    // shows in status nor delays the new configuration.
                    entry.next_attempt = now;
                    return;
                }
                entry.sync.failures = entry.sync.failures.saturating_add(1);
                entry.sync.last_error = Some(error.to_string());
                let exponent = entry.sync.failures.saturating_sub(1).min(16);
                let pause = self
                    .settings
                    .backoff_min
                    .saturating_mul(1u32 << exponent)
                    .min(self.settings.backoff_max);
                entry.next_attempt = now + pause;
            }
        }
    }
}
