//! What a TenantPool's status says, and which Events its changes deserve: pure
//! functions of the tenant's plan, the fleet's plan and what the pooler pods
//! confirmed. Messages are for a person: they say what is wrong and what to do,
//! and never contain a credential.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

use crate::{
    crd::{ConnectionSummary, TenantPool, TenantPoolStatus},
    desired::{FleetPlan, TenantOutcome, TenantPlan},
    push::FleetSync,
};

/// Condition types.
pub const READY: &str = "Ready";
/// Condition type: the credentials Secret was read.
pub const CREDENTIALS_RESOLVED: &str = "CredentialsResolved";
/// Condition type: the selected pooler pods confirmed the configuration.
pub const CONFIG_APPLIED: &str = "ConfigApplied";
/// Condition type: the pooler pods serving the tenant can open connections to
/// its database (their last connection attempt succeeded).
pub const DATABASE_REACHABLE: &str = "DatabaseReachable";

/// Severity of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Something worked.
    Normal,
    /// Something needs attention.
    Warning,
}

/// An Event to publish on the TenantPool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Normal or Warning.
    pub severity: Severity,
    /// CamelCase reason.
    pub reason: &'static str,
    /// CamelCase action the operator took.
    pub action: &'static str,
    /// Human-readable detail.
    pub note: String,
}

/// How many failing pods a message names before summarising.
const NAMED_PODS: usize = 3;

/// The status a TenantPool should have. Conditions keep their
/// `lastTransitionTime` while their status does not change, so an unchanged
/// situation yields an equal status and no write.
///
/// What the pods hold is only known once the pusher heard from them: while a
/// selected pod has not answered yet (a fresh operator process, a new leader, a
/// new pod), a status written for this same generation and configuration
/// version is kept as it is, rather than downgraded to "pending" and back.
pub fn compute(
    tenant_pool: &TenantPool,
    tenant: &TenantPlan,
    plan: &FleetPlan,
    fleet: &FleetSync,
    now: Timestamp,
) -> TenantPoolStatus {
    let previous = tenant_pool.status.as_ref();
    let generation = tenant_pool.metadata.generation;
    if let (TenantOutcome::Serving { config_version }, Some(previous)) = (&tenant.outcome, previous)
        && previous.observed_generation == generation
        && previous.config_version.as_ref() == Some(config_version)
        && tenant
            .selected_pods
            .iter()
            .any(|pod| !heard_from(pod, plan, fleet))
    {
        return previous.clone();
    }
    let selected = tenant.selected_pods.len() as u32;
    let synced_pods: Vec<&String> = tenant
        .selected_pods
        .iter()
        .filter(|pod| holds_tenant(pod, tenant, plan, fleet))
        .collect();
    let synced = synced_pods.len() as u32;
    let not_served = || {
        (
            "Unknown",
            "NotChecked",
            "not checked: no pooler pod serves the tenant".to_string(),
        )
    };

    let (credentials, applied, database, ready, config_version) = match &tenant.outcome {
        TenantOutcome::Serving { config_version } => {
            let credentials = (
                "True",
                "Resolved",
                format!(
                    "user and password read from Secret {}/{}",
                    tenant_pool
                        .metadata
                        .namespace
                        .as_deref()
                        .unwrap_or_default(),
                    tenant_pool.spec.database.credentials_secret.name
                ),
            );
            let applied = applied_condition(tenant, plan, fleet, synced, selected);
            let database = database_condition(tenant_pool, &synced_pods, fleet);
            let ready = if applied.0 != "True" {
                ("False", applied.1, applied.2.clone())
            } else if database.0 != "True" {
                ("False", "DatabaseUnreachable", database.2.clone())
            } else {
                (
                    "True",
                    "Serving",
                    format!(
                        "tenant {:?} is served by {selected} pooler pod(s)",
                        tenant.tenant_id
                    ),
                )
            };
            (
                credentials,
                applied,
                database,
                ready,
                Some(config_version.clone()),
            )
        }
        TenantOutcome::CredentialsUnresolved(problem) => (
            ("False", problem.reason(), problem.to_string()),
            (
                "False",
                "NotPushed",
                "not pushed to pooler pods until its credentials resolve".to_string(),
            ),
            not_served(),
            ("False", "CredentialsUnresolved", problem.to_string()),
            None,
        ),
        TenantOutcome::Invalid(problems) => {
            let message = format!("spec is invalid: {}", problems.join("; "));
            (
                (
                    "Unknown",
                    "NotChecked",
                    "not checked: the spec is invalid".into(),
                ),
                (
                    "False",
                    "NotPushed",
                    "not pushed: the spec is invalid".into(),
                ),
                not_served(),
                ("False", "InvalidSpec", message),
                None,
            )
        }
        TenantOutcome::Conflict { winner } => {
            let message = format!(
                "tenant id {:?} is already held by the older TenantPool {winner} on a pooler pod both select; \
                 set another spec.tenantId (on a new TenantPool) or poolerSelectors that share no pod",
                tenant.tenant_id
            );
            (
                (
                    "Unknown",
                    "NotChecked",
                    "not checked: the tenant id is taken".into(),
                ),
                (
                    "False",
                    "NotPushed",
                    format!("not pushed: tenant id held by TenantPool {winner}"),
                ),
                not_served(),
                ("False", "TenantIdConflict", message),
                None,
            )
        }
        TenantOutcome::Deleting => (
            previous_condition(previous, CREDENTIALS_RESOLVED),
            (
                "False",
                "Removing",
                format!(
                    "removing the tenant from {selected} pooler pod(s); {} confirmed",
                    tenant.selected_pods.len() - removal_pending(tenant, plan, fleet).len()
                ),
            ),
            (
                "Unknown",
                "NotChecked",
                "not checked: the tenant is being removed".to_string(),
            ),
            (
                "False",
                "Deleting",
                "the TenantPool is being deleted; its leases drain".to_string(),
            ),
            previous.and_then(|s| s.config_version.clone()),
        ),
    };

    let conditions = [
        (READY, ready),
        (CREDENTIALS_RESOLVED, credentials),
        (CONFIG_APPLIED, applied),
        (DATABASE_REACHABLE, database),
    ]
    .into_iter()
    .map(|(type_, (status, reason, message))| {
        let unchanged = previous
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
            .filter(|c| c.status == status);
        Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            observed_generation: generation,
            last_transition_time: unchanged
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now)),
        }
    })
    .collect();

    let connections = matches!(tenant.outcome, TenantOutcome::Serving { .. })
        .then(|| connections(&tenant.tenant_id, &synced_pods, fleet))
        .flatten();

    TenantPoolStatus {
        observed_generation: generation,
        tenant_id: Some(tenant.tenant_id.clone()),
        conditions,
        config_version,
        poolers_selected: selected,
        poolers_synced: synced,
        synced: Some(format!("{synced}/{selected}")),
        connections,
    }
}

fn previous_condition(
    previous: Option<&TenantPoolStatus>,
    type_: &str,
) -> (&'static str, &'static str, String) {
    let found = previous.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_));
    match found.map(|c| c.status.as_str()) {
        Some("True") => (
            "True",
            "Resolved",
            found.map(|c| c.message.clone()).unwrap_or_default(),
        ),
        _ => ("Unknown", "NotChecked", "not checked while deleting".into()),
    }
}

/// Whether a pod reported the configuration it should hold (it may have become
/// unreachable since).
fn pod_applied(pod: &str, plan: &FleetPlan, fleet: &FleetSync) -> bool {
    match (plan.pods.get(pod), fleet.get(pod)) {
        (Some(want), Some(have)) => {
            have.uid == want.uid && have.applied_version.as_deref() == Some(want.snapshot.version())
        }
        _ => false,
    }
}

/// Whether a pod confirmed the configuration it should hold and its last
/// contact succeeded: an unreachable pod is not synced, whatever it held.
pub fn pod_synced(pod: &str, plan: &FleetPlan, fleet: &FleetSync) -> bool {
    pod_applied(pod, plan, fleet) && fleet.get(pod).is_some_and(|s| s.last_error.is_none())
}

/// Whether a synced pod serves this tenant at its current configuration: the
/// tenant is pushed (not a Conflict loser, not invalid) and the pod reports it.
pub fn holds_tenant(pod: &str, tenant: &TenantPlan, plan: &FleetPlan, fleet: &FleetSync) -> bool {
    matches!(tenant.outcome, TenantOutcome::Serving { .. })
        && pod_synced(pod, plan, fleet)
        && fleet.get(pod).is_some_and(|s| {
            s.tenants.contains_key(&tenant.tenant_id) && !s.rejected.contains_key(&tenant.tenant_id)
        })
}

/// Whether the pusher has had an answer (or a failure) from this pod since the
/// operator started.
fn heard_from(pod: &str, plan: &FleetPlan, fleet: &FleetSync) -> bool {
    match (plan.pods.get(pod), fleet.get(pod)) {
        (Some(want), Some(have)) => {
            have.uid == want.uid && (have.applied_version.is_some() || have.last_error.is_some())
        }
        _ => false,
    }
}

fn applied_condition(
    tenant: &TenantPlan,
    plan: &FleetPlan,
    fleet: &FleetSync,
    synced: u32,
    selected: u32,
) -> (&'static str, &'static str, String) {
    if selected == 0 {
        return (
            "False",
            "NoPoolerPods",
            "no Running pooler pod matches the operator's --pooler-selector and this TenantPool's \
             poolerSelector; the configuration is stored for poolers that start"
                .to_string(),
        );
    }
    if synced == selected {
        let version = tenant
            .selected_pods
            .first()
            .and_then(|p| plan.pods.get(p))
            .map(|p| p.snapshot.version().to_string())
            .unwrap_or_default();
        return (
            "True",
            "Applied",
            format!("applied on {synced}/{selected} pooler pod(s) (pooler config {version})"),
        );
    }
    let pending: Vec<&String> = tenant
        .selected_pods
        .iter()
        .filter(|p| !holds_tenant(p, tenant, plan, fleet))
        .collect();
    let rejected: Vec<String> = pending
        .iter()
        .filter(|p| pod_applied(p, plan, fleet))
        .filter_map(|p| {
            fleet
                .get(*p)
                .and_then(|s| s.rejected.get(&tenant.tenant_id))
                .map(|reason| format!("{p}: {reason}"))
        })
        .collect();
    if !rejected.is_empty() {
        return (
            "False",
            "RejectedByPooler",
            format!(
                "applied on {synced}/{selected} pooler pod(s); the pooler rejected this tenant (its previous configuration, if any, stays there): {}",
                name_some(rejected)
            ),
        );
    }
    let failing: Vec<String> = pending
        .iter()
        .filter_map(|p| {
            fleet
                .get(*p)
                .and_then(|s| s.last_error.as_ref())
                .map(|e| format!("{p}: {e}"))
        })
        .collect();
    if failing.is_empty() {
        (
            "False",
            "Pending",
            format!(
                "applied on {synced}/{selected} pooler pod(s); pushing to {}",
                name_some(pending.iter().map(|p| p.to_string()).collect())
            ),
        )
    } else {
        (
            "False",
            "PushFailed",
            format!(
                "applied on {synced}/{selected} pooler pod(s); retrying with backoff: {}",
                name_some(failing)
            ),
        )
    }
}

fn database_condition(
    tenant_pool: &TenantPool,
    synced_pods: &[&String],
    fleet: &FleetSync,
) -> (&'static str, &'static str, String) {
    let db = &tenant_pool.spec.database;
    let target = format!("{}:{}/{}", db.host, db.port, db.dbname);
    if synced_pods.is_empty() {
        return (
            "Unknown",
            "NoPoolerReports",
            format!("no pooler pod serving the tenant has reported on {target} yet"),
        );
    }
    let unreachable: Vec<String> = synced_pods
        .iter()
        .filter(|p| {
            fleet
                .get(p.as_str())
                .and_then(|s| s.tenants.get(&tenant_pool.tenant_id()))
                .is_some_and(|t| !t.database_reachable)
        })
        .map(|p| p.to_string())
        .collect();
    if unreachable.is_empty() {
        (
            "True",
            "Reachable",
            format!(
                "{} pooler pod(s) open connections to {target}",
                synced_pods.len()
            ),
        )
    } else {
        (
            "False",
            "Unreachable",
            format!(
                "pooler pod(s) {} cannot open connections to {target}: check that the database runs and \
                 accepts connections from the pooler pods, and that Secret {}/{} holds valid credentials \
                 (the pooler's log names the cause)",
                name_some(unreachable),
                tenant_pool
                    .metadata
                    .namespace
                    .as_deref()
                    .unwrap_or_default(),
                db.credentials_secret.name
            ),
        )
    }
}

fn name_some(mut items: Vec<String>) -> String {
    let more = items.len().saturating_sub(NAMED_PODS);
    items.truncate(NAMED_PODS);
    let mut text = items.join("; ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn connections(tenant_id: &str, pods: &[&String], fleet: &FleetSync) -> Option<ConnectionSummary> {
    let mut total: Option<ConnectionSummary> = None;
    for pod in pods {
        if let Some(stats) = fleet.get(*pod).and_then(|s| s.tenants.get(tenant_id)) {
            let sum = total.get_or_insert_with(ConnectionSummary::default);
            sum.active += i64::from(stats.active);
            sum.idle += i64::from(stats.idle);
            sum.max += i64::from(stats.max);
        }
    }
    total
}

/// Pods that selected the tenant and have not yet confirmed a configuration
/// without it. The finalizer waits for this list to be empty (or time to run out).
pub fn removal_pending(tenant: &TenantPlan, plan: &FleetPlan, fleet: &FleetSync) -> Vec<String> {
    tenant
        .selected_pods
        .iter()
        .filter(|p| !pod_applied(p, plan, fleet))
        .cloned()
        .collect()
}

fn condition<'a>(status: Option<&'a TenantPoolStatus>, type_: &str) -> Option<&'a Condition> {
    status.and_then(|s| s.conditions.iter().find(|c| c.type_ == type_))
}

/// Events that the change from `old` to `new` deserves: transitions only, so a
/// steady state publishes nothing.
pub fn notices(old: Option<&TenantPoolStatus>, new: &TenantPoolStatus) -> Vec<Notice> {
    let mut notices = Vec::new();
    let became = |type_: &str, status: &str, reason: Option<&str>| {
        let now = condition(Some(new), type_)
            .filter(|c| c.status == status && reason.is_none_or(|r| c.reason == r));
        let before = condition(old, type_)
            .filter(|c| c.status == status && reason.is_none_or(|r| c.reason == r));
        match (now, before) {
            (Some(now), None) => Some(now.message.clone()),
            (Some(now), Some(before)) if now.reason != before.reason => Some(now.message.clone()),
            _ => None,
        }
    };
    let applied_now = condition(Some(new), CONFIG_APPLIED).filter(|c| c.status == "True");
    if let Some(applied) = applied_now {
        let applied_before = condition(old, CONFIG_APPLIED).is_some_and(|c| c.status == "True");
        let version_changed =
            old.and_then(|s| s.config_version.as_ref()) != new.config_version.as_ref();
        if !applied_before || version_changed {
            notices.push(Notice {
                severity: Severity::Normal,
                reason: "ConfigApplied",
                action: "PushConfig",
                note: applied.message.clone(),
            });
        }
    }
    if let Some(note) = became(CREDENTIALS_RESOLVED, "False", None) {
        notices.push(Notice {
            severity: Severity::Warning,
            reason: "CredentialsMissing",
            action: "ResolveCredentials",
            note,
        });
    }
    if let Some(note) = became(CONFIG_APPLIED, "False", Some("PushFailed")) {
        notices.push(Notice {
            severity: Severity::Warning,
            reason: "PushFailed",
            action: "PushConfig",
            note,
        });
    }
    if let Some(note) = became(DATABASE_REACHABLE, "False", None) {
        notices.push(Notice {
            severity: Severity::Warning,
            reason: "DatabaseUnreachable",
            action: "CheckDatabase",
            note,
        });
    }
    if let Some(note) = became(READY, "False", Some("TenantIdConflict")) {
        notices.push(Notice {
            severity: Severity::Warning,
            reason: "TenantIdConflict",
            action: "ClaimTenantId",
            note,
        });
    }
    if let Some(note) = became(READY, "False", Some("InvalidSpec")) {
        notices.push(Notice {
            severity: Severity::Warning,
            reason: "InvalidSpec",
            action: "Validate",
            note,
        });
    }
    notices
}

#[cfg(test)]
mod tests;
