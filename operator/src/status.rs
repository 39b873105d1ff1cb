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
pub fn compute(
    tenant_pool: &TenantPool,
    tenant: &TenantPlan,
    plan: &FleetPlan,
    fleet: &FleetSync,
    now: Timestamp,
) -> TenantPoolStatus {
    let previous = tenant_pool.status.as_ref();
    let generation = tenant_pool.metadata.generation;
    let selected = tenant.selected_pods.len() as u32;
    let synced_pods: Vec<&String> = tenant
        .selected_pods
        .iter()
        .filter(|pod| pod_synced(pod, plan, fleet))
        .collect();
    let synced = synced_pods.len() as u32;

    let (credentials, applied, ready, config_version) = match &tenant.outcome {
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
            let ready = if applied.0 == "True" {
                (
                    "True",
                    "Serving",
                    format!(
                        "tenant {:?} is served by {selected} pooler pod(s)",
                        tenant.tenant_id
                    ),
                )
            } else {
                ("False", applied.1, applied.2.clone())
            };
            (credentials, applied, ready, Some(config_version.clone()))
        }
        TenantOutcome::CredentialsUnresolved(problem) => (
            ("False", problem.reason(), problem.to_string()),
            (
                "False",
                "NotPushed",
                "not pushed to pooler pods until its credentials resolve".to_string(),
            ),
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
                ("False", "TenantIdConflict", message),
                None,
            )
        }
        TenantOutcome::Deleting => (
            previous_condition(previous, CREDENTIALS_RESOLVED),
            (
                "False",
                "Removing",
                format!("removing the tenant from {selected} pooler pod(s); {synced} confirmed"),
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

/// Whether a pod confirmed the configuration it should hold.
pub fn pod_synced(pod: &str, plan: &FleetPlan, fleet: &FleetSync) -> bool {
    match (plan.pods.get(pod), fleet.get(pod)) {
        (Some(want), Some(have)) => {
            have.uid == want.uid && have.applied_version.as_deref() == Some(want.snapshot.version())
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
        .filter(|p| !pod_synced(p, plan, fleet))
        .collect();
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
        .filter(|p| !pod_synced(p, plan, fleet))
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
