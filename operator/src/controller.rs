//! The TenantPool controller: fetches inputs (reflector stores of TenantPools,
//! referenced Secrets and pooler pods; the pusher's confirmations) and applies the
//! outputs that [`desired`] and [`status`] compute: the snapshot Secret, the
//! pusher's targets, each TenantPool's status (server-side apply) and Events.
//! Deletion goes through kube-runtime's finalizer helper.
//!
//! Two things run beside the per-TenantPool reconciler: a keeper that stores and
//! pushes the empty configuration while no TenantPool exists (no reconcile runs
//! then, yet the poolers need a configuration to become ready), and a check on
//! the TenantPool watch that notices a missing CRD (logged, `/readyz` false).

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::{
    ByteString,
    api::core::v1::{Pod, Secret},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
    jiff::Timestamp,
};
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{ListParams, Patch, PatchParams},
    runtime::{
        Controller, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        events::{Event as KubeEvent, EventType, Recorder, Reporter},
        finalizer::{Event as Finalized, finalizer},
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};
use tokio::{sync::watch, task::JoinSet};

use crate::{
    crd::{FINALIZER, TenantPool, TenantPoolStatus},
    desired::{self, FleetInputs, FleetPlan, SNAPSHOT_KEY, SecretSource, TenantKey, TenantPlan},
    http::{Blocker, Readiness},
    metrics::Metrics,
    push::{FleetSync, PushSettings, PushTargets, Pusher},
    selector,
    status::{self, Notice, Severity},
};

/// Field manager of every server-side apply, and the Events' reporting controller.
pub const FIELD_MANAGER: &str = "teresa-operator";

/// Secrets the operator never needs, left out of its watch to save memory.
const SECRET_FIELD_SELECTOR: &str =
    "type!=kubernetes.io/service-account-token,type!=helm.sh/release.v1";

/// Errors of one reconciliation. Messages never carry a credential.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("Kubernetes API call failed: {0}")]
    Kube(#[source] kube::Error),
    /// Adding or removing the finalizer, or the wrapped reconcile, failed.
    #[error("{0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// The reflector stores have not listed everything yet; acting now could
    /// push a fleet snapshot missing tenants.
    #[error("caches of TenantPools, Secrets and pooler pods are not synced yet")]
    CachesNotReady,
    /// The object has no namespace (TenantPool is namespaced).
    #[error("TenantPool has no namespace")]
    MissingNamespace,
    /// Pooler pods have not confirmed the removal of a deleted tenant yet.
    #[error("waiting for pooler pod(s) {pods} to confirm the tenant's removal")]
    RemovalPending {
        /// The pods still holding the tenant.
        pods: String,
    },
    /// The snapshot could not be serialized.
    #[error("cannot serialize the pooler snapshot: {0}")]
    Serialize(#[source] serde_yaml::Error),
}

impl Error {
    /// The error the reconcile itself returned, out of the finalizer's wrapping.
    pub fn cause(&self) -> &Error {
        match self {
            Error::Finalizer(inner) => match inner.as_ref() {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e.cause(),
                _ => self,
            },
            _ => self,
        }
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self.cause() {
            Error::Kube(_) => "kube_api",
            Error::Finalizer(_) => "finalizer",
            Error::CachesNotReady => "caches_not_ready",
            Error::MissingNamespace => "missing_namespace",
            Error::RemovalPending { .. } => "removal_pending",
            Error::Serialize(_) => "serialize",
        }
    }
}

/// Where the fleet is and where its snapshot goes.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Namespace of the pooler pods and the snapshot Secret.
    pub pooler_namespace: String,
    /// Name of the snapshot Secret.
    pub snapshot_secret: String,
    /// Where pooler pods mount the snapshot Secret.
    pub snapshot_mount_path: String,
    /// Bounded wait for removal confirmations when a TenantPool is deleted.
    pub deletion_timeout: Duration,
    /// Who a TenantPool without `access.allowedClients` admits.
    pub default_access: desired::DefaultAccess,
}

/// The fleet's snapshot generation: raised whenever any snapshot's content
/// changes, never below the wall clock in milliseconds, so that it keeps
/// rising across operator restarts and failovers.
#[derive(Debug, Default)]
pub struct FleetGeneration(std::sync::Mutex<(String, u64)>);

impl FleetGeneration {
    /// The generation of a plan whose content has `fingerprint`.
    pub fn of(&self, fingerprint: &str) -> u64 {
        let mut state = self.0.lock().expect("poisoned");
        if state.0 != fingerprint || state.1 == 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or_default();
            *state = (fingerprint.to_string(), now.max(state.1 + 1));
        }
        state.1
    }
}

/// What every reconciliation shares.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// Fleet settings.
    pub settings: Settings,
    /// Every TenantPool.
    pub tenant_pools: Store<TenantPool>,
    /// Secrets (all namespaces, minus service account tokens and Helm releases).
    pub secrets: Store<Secret>,
    /// The fleet's pods.
    pub pods: Store<Pod>,
    /// The pusher's input.
    pub targets: watch::Sender<Arc<PushTargets>>,
    /// The pusher's output.
    pub fleet: watch::Receiver<Arc<FleetSync>>,
    /// Who publishes the Events.
    pub reporter: Reporter,
    /// Operator metrics.
    pub metrics: Metrics,
    /// The generation stamped on every snapshot.
    pub generation: FleetGeneration,
}

struct StoreSecrets<'a>(&'a Store<Secret>);

impl SecretSource for StoreSecrets<'_> {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.0.get(&ObjectRef::new(name).within(namespace))
    }
}

impl Context {
    /// The fleet plan from the stores, with `fresh` (the object being reconciled,
    /// possibly newer than the store's copy) taking its place.
    fn plan(&self, fresh: &TenantPool) -> FleetPlan {
        self.fleet_plan(Some(fresh))
    }

    fn fleet_plan(&self, fresh: Option<&TenantPool>) -> FleetPlan {
        let fresh_key = fresh.map(TenantKey::of);
        let mut tenant_pools: Vec<Arc<TenantPool>> = self
            .tenant_pools
            .state()
            .into_iter()
            .filter(|t| Some(TenantKey::of(t)) != fresh_key)
            .collect();
        tenant_pools.extend(fresh.map(|t| Arc::new(t.clone())));
        let pods = self.pods.state();
        let mut plan = desired::plan(&FleetInputs {
            tenant_pools: &tenant_pools,
            secrets: &StoreSecrets(&self.secrets),
            pods: &pods,
            default_access: &self.settings.default_access,
        });
        plan.set_generation(self.generation.of(&plan.content_fingerprint()));
        plan
    }

    async fn caches_ready(&self) -> Result<(), Error> {
        let ready = async {
            self.tenant_pools.wait_until_ready().await.ok();
            self.secrets.wait_until_ready().await.ok();
            self.pods.wait_until_ready().await.ok();
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .map_err(|_| Error::CachesNotReady)
    }

    /// Writes the snapshot Secret unless the store shows it already holds `plan`.
    async fn store_snapshot(&self, plan: &FleetPlan) -> Result<(), Error> {
        let mut data = BTreeMap::new();
        let yaml = plan.stored.to_yaml().map_err(Error::Serialize)?;
        data.insert(SNAPSHOT_KEY.to_string(), ByteString(yaml.into_bytes()));
        let name = &self.settings.snapshot_secret;
        let namespace = &self.settings.pooler_namespace;
        let current = self.secrets.get(&ObjectRef::new(name).within(namespace));
        if current.as_ref().and_then(|s| s.data.as_ref()) == Some(&data) {
            return Ok(());
        }
        // The same content under an older generation needs no write: the
        // generation orders changes, it is no change itself.
        let held = current
            .as_ref()
            .and_then(|s| s.data.as_ref())
            .filter(|d| d.len() == 1)
            .and_then(|d| d.get(SNAPSHOT_KEY))
            .and_then(|y| serde_yaml::from_slice::<teresa_proto::admin::PoolerConfig>(&y.0).ok());
        if let Some(mut held) = held {
            held.generation = plan.stored.generation();
            if &held == plan.stored.config() {
                return Ok(());
            }
        }
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    FIELD_MANAGER.to_string(),
                )])),
                annotations: Some(BTreeMap::from([(
                    "teresa.dev/config-version".to_string(),
                    plan.stored.version().to_string(),
                )])),
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".to_string()),
            data: Some(data),
            ..Secret::default()
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        api.patch(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(Error::Kube)?;
        tracing::info!(secret = %name, version = plan.stored.version(), tenants = plan.stored.tenant_ids().len(), "stored fleet snapshot");
        Ok(())
    }

    /// Hands the per-pod snapshots to the pusher (a no-op when unchanged).
    fn publish_targets(&self, plan: &FleetPlan) {
        self.targets.send_if_modified(|current| {
            if **current == plan.pods {
                false
            } else {
                *current = Arc::new(plan.pods.clone());
                true
            }
        });
    }

    /// Writes the status `tenant` deserves (when it differs) and publishes the
    /// Events its changes deserve.
    async fn report(
        &self,
        api: &Api<TenantPool>,
        tenant_pool: &TenantPool,
        tenant: &TenantPlan,
        plan: &FleetPlan,
        fleet: &FleetSync,
    ) -> Result<TenantPoolStatus, Error> {
        let new_status = status::compute(tenant_pool, tenant, plan, fleet, Timestamp::now());
        let old_status = tenant_pool.status.as_ref();
        if old_status != Some(&new_status) {
            let patch = serde_json::json!({
                "apiVersion": TenantPool::api_version(&()),
                "kind": TenantPool::kind(&()),
                "status": new_status,
            });
            api.patch_status(
                &tenant_pool.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&patch),
            )
            .await
            .map_err(Error::Kube)?;
        }
        for notice in status::notices(old_status, &new_status) {
            self.publish(tenant_pool, &notice).await;
        }
        Ok(new_status)
    }

    async fn publish(&self, tenant_pool: &TenantPool, notice: &Notice) {
        let event = KubeEvent {
            type_: match notice.severity {
                Severity::Normal => EventType::Normal,
                Severity::Warning => EventType::Warning,
            },
            reason: notice.reason.to_string(),
            note: Some(notice.note.chars().take(1000).collect()),
            action: notice.action.to_string(),
            secondary: None,
        };
        // A Recorder folds Events of one reason and action on one object into a
        // series that keeps the first note. Notices are transitions, each with
        // its own text (a new version, another failing pod), so each is an
        // Event of its own: a fresh Recorder has nothing to fold it into.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        // An Event that cannot be written must not fail the reconciliation.
        if let Err(e) = recorder.publish(&event, &tenant_pool.object_ref(&())).await {
            tracing::warn!(tenant_pool = %TenantKey::of(tenant_pool), error = %e, "cannot publish Event");
        }
    }
}

/// Reconciles one TenantPool: the entry point kube-runtime calls.
pub async fn reconcile(tenant_pool: Arc<TenantPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let result = reconcile_inner(tenant_pool.clone(), &ctx).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) => e.metric_label(),
    };
    ctx.metrics
        .reconciliations
        .with_label_values(&[outcome])
        .inc();
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[] as &[&str])
        .observe(started.elapsed().as_secs_f64());
    result
}

async fn reconcile_inner(tenant_pool: Arc<TenantPool>, ctx: &Context) -> Result<Action, Error> {
    ctx.caches_ready().await?;
    let namespace = tenant_pool.namespace().ok_or(Error::MissingNamespace)?;
    let api: Api<TenantPool> = Api::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, tenant_pool, |event| async {
        match event {
            Finalized::Apply(tenant_pool) => apply(&tenant_pool, &api, ctx).await,
            Finalized::Cleanup(tenant_pool) => cleanup(&tenant_pool, &api, ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

async fn apply(
    tenant_pool: &TenantPool,
    api: &Api<TenantPool>,
    ctx: &Context,
) -> Result<Action, Error> {
    let plan = ctx.plan(tenant_pool);
    ctx.store_snapshot(&plan).await?;
    ctx.publish_targets(&plan);
    let key = TenantKey::of(tenant_pool);
    let Some(tenant) = plan.tenants.get(&key) else {
        return Ok(Action::await_change());
    };
    let fleet = ctx.fleet.borrow().clone();
    let new_status = ctx.report(api, tenant_pool, tenant, &plan, &fleet).await?;
    let ready = new_status
        .conditions
        .iter()
        .any(|c| c.type_ == status::READY && c.status == "True");
    // Watches bring every change; the requeue only bounds staleness.
    Ok(Action::requeue(if ready {
        Duration::from_secs(300)
    } else {
        Duration::from_secs(30)
    }))
}

async fn cleanup(
    tenant_pool: &TenantPool,
    api: &Api<TenantPool>,
    ctx: &Context,
) -> Result<Action, Error> {
    let plan = ctx.plan(tenant_pool);
    ctx.store_snapshot(&plan).await?;
    ctx.publish_targets(&plan);
    let key = TenantKey::of(tenant_pool);
    let fleet = ctx.fleet.borrow().clone();
    let pending = match plan.tenants.get(&key) {
        Some(tenant) => {
            // Ready=False, reason Deleting, and how many pods confirmed.
            ctx.report(api, tenant_pool, tenant, &plan, &fleet).await?;
            status::removal_pending(tenant, &plan, &fleet)
        }
        None => Vec::new(),
    };
    if pending.is_empty() {
        ctx.publish(
            tenant_pool,
            &Notice {
                severity: Severity::Normal,
                reason: "TenantRemoved",
                action: "RemoveTenant",
                note: format!(
                    "tenant {:?} removed from every pooler pod; its leases drain",
                    tenant_pool.tenant_id()
                ),
            },
        )
        .await;
        return Ok(Action::await_change());
    }
    let waited = tenant_pool
        .metadata
        .deletion_timestamp
        .as_ref()
        .map(|t| Timestamp::now().duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    if waited >= ctx.settings.deletion_timeout {
        ctx.publish(
            tenant_pool,
            &Notice {
                severity: Severity::Warning,
                reason: "RemovalUnconfirmed",
                action: "RemoveTenant",
                note: format!(
                    "pooler pod(s) {} did not confirm the tenant's removal within {:?}; letting the TenantPool go. \
                     They drop it when they next accept a configuration",
                    pending.join(", "),
                    ctx.settings.deletion_timeout
                ),
            },
        )
        .await;
        return Ok(Action::await_change());
    }
    Err(Error::RemovalPending {
        pods: pending.join(", "),
    })
}

/// What to do after a failed reconciliation: waits that end by themselves
/// (removal confirmations, caches) retry in 2 s, failures back off to 15 s.
pub fn error_policy(tenant_pool: Arc<TenantPool>, error: &Error, _ctx: Arc<Context>) -> Action {
    match error.cause() {
        Error::RemovalPending { .. } | Error::CachesNotReady => {
            Action::requeue(Duration::from_secs(2))
        }
        _ => {
            tracing::warn!(tenant_pool = %TenantKey::of(&tenant_pool), error = %error, "reconcile failed");
            Action::requeue(Duration::from_secs(15))
        }
    }
}

/// The fleet selector and everything else `run` needs.
#[derive(Clone)]
pub struct RunConfig {
    /// Fleet and snapshot settings.
    pub settings: Settings,
    /// Fleet label selector (`key=value,...`).
    pub pooler_selector: String,
    /// How to reach pods.
    pub push: PushSettings,
    /// Events' reporting instance (the pod name).
    pub instance: Option<String>,
}

/// Whether the TenantPool CRD is installed, as the TenantPool watch finds it:
/// a missing CRD is logged once and holds `/readyz` back until the watch lists
/// again.
pub struct CrdPresence {
    missing: AtomicBool,
    readiness: Readiness,
}

impl CrdPresence {
    /// Present until a watch or list says otherwise.
    pub fn new(readiness: Readiness) -> Self {
        Self {
            missing: AtomicBool::new(false),
            readiness,
        }
    }

    /// Whether the CRD was found missing and has not come back.
    pub fn is_missing(&self) -> bool {
        self.missing.load(Ordering::Relaxed)
    }

    /// Takes in one result of the TenantPool watch (or the first list).
    pub fn observe<T>(&self, result: Result<T, &watcher::Error>) {
        match result {
            Err(e) if watch_not_found(e) => self.set_missing(),
            Err(_) => {}
            Ok(_) => self.set_present(),
        }
    }

    fn set_missing(&self) {
        if !self.missing.swap(true, Ordering::Relaxed) {
            tracing::error!(
                crd = "tenantpools.teresa.dev",
                "the TenantPool CRD is not installed: nothing is reconciled until it is \
                 (install it with `teresa-operator crd | kubectl apply -f -` or the Helm chart)"
            );
            self.readiness.block(
                Blocker::Crd,
                "the TenantPool CRD (tenantpools.teresa.dev) is not installed",
            );
        }
    }

    fn set_present(&self) {
        if self.missing.swap(false, Ordering::Relaxed) {
            tracing::info!(
                crd = "tenantpools.teresa.dev",
                "the TenantPool CRD is installed again"
            );
            self.readiness.clear(Blocker::Crd);
        }
    }
}

fn watch_not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.is_not_found(),
        watcher::Error::WatchError(s) => s.is_not_found(),
        _ => false,
    }
}

/// While no TenantPool exists, no reconcile runs; this keeps the snapshot Secret
/// and every pod's target at the empty configuration anyway, so that the poolers
/// of a fresh install (or of a fleet whose last TenantPool went) become ready.
/// Runs whenever the pods change, and every 30 s.
pub async fn keep_empty_fleet(
    ctx: Arc<Context>,
    crd: Arc<CrdPresence>,
    mut pods_changed: watch::Receiver<()>,
) {
    let mut backstop = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            changed = pods_changed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            _ = backstop.tick() => {}
        }
        let empty = || ctx.tenant_pools.state().is_empty();
        if crd.is_missing() || ctx.caches_ready().await.is_err() || !empty() {
            continue;
        }
        let plan = ctx.fleet_plan(None);
        if let Err(e) = ctx.store_snapshot(&plan).await {
            tracing::warn!(error = %e, "cannot store the empty fleet snapshot");
        }
        // A TenantPool that appeared meanwhile is its reconcile's to publish.
        if empty() {
            ctx.publish_targets(&plan);
        }
    }
}

/// Runs the controller and the pusher until `shutdown` resolves. Dropping the
/// returned future stops both at once (a leader that lost its Lease).
pub async fn run(
    client: Client,
    config: RunConfig,
    metrics: Metrics,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) -> Result<(), Error> {
    let namespace = config.settings.pooler_namespace.clone();
    let tenant_pools: Api<TenantPool> = Api::all(client.clone());
    let crd = Arc::new(CrdPresence::new(readiness.clone()));
    // A missing CRD is reported and waited for; any other failure to list is
    // a configuration error worth failing on.
    match tenant_pools.list(&ListParams::default().limit(1)).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.is_not_found() => {
            crd.observe::<()>(Err(&watcher::Error::InitialListFailed(kube::Error::Api(s))));
        }
        Err(e) => return Err(Error::Kube(e)),
    }
    let fleet_selector =
        selector::to_query(&selector::parse(&config.pooler_selector).unwrap_or_default());

    let (tenant_pool_store, tenant_pool_writer) = reflector::store();
    let tenant_pool_stream = {
        let crd = crd.clone();
        reflector::reflector(
            tenant_pool_writer,
            watcher(tenant_pools, watcher::Config::default().any_semantic()),
        )
        .inspect(move |event| crd.observe(event.as_ref()))
        .applied_objects()
    };
    let (secrets, secret_writer) = reflector::store();
    let secret_stream = reflector::reflector(
        secret_writer,
        watcher(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default().fields(SECRET_FIELD_SELECTOR),
        ),
    )
    .default_backoff()
    .touched_objects();
    let (pods, pod_writer) = reflector::store();
    let (pods_changed_tx, pods_changed) = watch::channel(());
    let pod_stream = reflector::reflector(
        pod_writer,
        watcher(
            Api::<Pod>::namespaced(client.clone(), &namespace),
            watcher::Config::default().labels(&fleet_selector),
        ),
    )
    .default_backoff()
    .touched_objects()
    .inspect(move |_| pods_changed_tx.send_replace(()));

    let (targets_tx, targets_rx) = watch::channel(Arc::new(PushTargets::new()));
    let (fleet_tx, fleet_rx) = watch::channel(Arc::new(FleetSync::new()));
    let fleet_changes = futures::stream::unfold(fleet_rx.clone(), |mut rx| async move {
        rx.changed().await.ok().map(|()| ((), rx))
    });

    let controller = Controller::for_stream(tenant_pool_stream, tenant_pool_store);
    let store = controller.store();
    let for_secrets = store.clone();
    let for_pods = store.clone();
    let ctx = Arc::new(Context {
        client: client.clone(),
        settings: config.settings,
        tenant_pools: store,
        secrets,
        pods,
        targets: targets_tx,
        fleet: fleet_rx,
        reporter: Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: config.instance,
        },
        metrics: metrics.clone(),
        generation: FleetGeneration::default(),
    });
    // Owned here: dropping `run` aborts them.
    let mut helpers = JoinSet::new();
    helpers.spawn(Pusher::new(config.push, targets_rx, fleet_tx, Some(metrics)).run());
    helpers.spawn(keep_empty_fleet(ctx.clone(), crd, pods_changed));
    readiness.clear(Blocker::Starting);
    controller
        .with_config(ControllerConfig::default().debounce(Duration::from_millis(500)))
        .watches_stream(secret_stream, move |secret: Secret| {
            let key = (secret.namespace().unwrap_or_default(), secret.name_any());
            for_secrets
                .state()
                .into_iter()
                .filter(|t| desired::referenced_secrets(t).contains(&key))
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect::<Vec<_>>()
        })
        .watches_stream(pod_stream, move |pod: Pod| {
            let all = for_pods.state();
            let selecting: Vec<_> = all
                .iter()
                .filter(|t| desired::selects_pod(t, &pod))
                .map(|t| ObjectRef::from_obj(t.as_ref()))
                .collect();
            // Any reconcile recomputes the whole fleet: a pod no tenant selects
            // still needs its (empty) snapshot.
            if selecting.is_empty() {
                all.first()
                    .map(|t| ObjectRef::from_obj(t.as_ref()))
                    .into_iter()
                    .collect()
            } else {
                selecting
            }
        })
        .reconcile_all_on(fleet_changes)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // The watch errors themselves; a missing CRD is reported once by
                // CrdPresence, other failures here.
                Err(kube::runtime::controller::Error::QueueError(e)) if !watch_not_found(&e) => {
                    tracing::warn!(error = %e, "watch failed; retrying with backoff");
                }
                Err(e) => tracing::debug!(error = %e, "reconcile trigger failed"),
            }
        })
        .await;
    helpers.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests;
