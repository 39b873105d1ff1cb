//! What every pooler pod should hold: a pure function from the TenantPools, the
//! Secrets they reference and the fleet's pods to one [`Snapshot`] per pod, the
//! snapshot stored for restarting poolers, and each tenant's outcome (serving,
//! credentials missing, invalid, losing a tenant id conflict, being deleted).
//!
//! No I/O here: the controller fetches the inputs and applies the outputs, and
//! the tests in `desired/tests.rs` cover the decisions without any network.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use sha2::{Digest, Sha256};
use teresa_proto::admin::{
    DatabaseTarget, LeaseSettings, PoolSettings, PoolerConfig, TenantConfig,
};

use crate::{crd::TenantPool, selector};

/// Key of the pooler's `--config` file inside the snapshot Secret.
pub const SNAPSHOT_KEY: &str = "pooler.yaml";

/// Identifies a TenantPool: namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TenantKey {
    /// Namespace of the TenantPool.
    pub namespace: String,
    /// Name of the TenantPool.
    pub name: String,
}

impl TenantKey {
    /// The key of a TenantPool object.
    pub fn of(tenant_pool: &TenantPool) -> Self {
        Self {
            namespace: tenant_pool.namespace().unwrap_or_default(),
            name: tenant_pool.name_any(),
        }
    }
}

impl fmt::Display for TenantKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Where the inputs' Secrets come from: a reflector store in production, a map in
/// tests.
pub trait SecretSource {
    /// The Secret `namespace/name`, if it exists.
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>>;
}

impl SecretSource for BTreeMap<(String, String), Arc<Secret>> {
    fn secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        self.get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }
}

/// Everything the desired state depends on.
pub struct FleetInputs<'a> {
    /// Every TenantPool in the cluster, including those being deleted.
    pub tenant_pools: &'a [Arc<TenantPool>],
    /// The Secrets the TenantPools reference.
    pub secrets: &'a dyn SecretSource,
    /// The pods of the pooler fleet (the operator's namespace and selector), in
    /// any phase.
    pub pods: &'a [Arc<Pod>],
    /// Directory where pooler pods mount the snapshot Secret; CA bundles are
    /// referenced as files there.
    pub config_dir: &'a str,
}

/// The whole fleet's desired state.
#[derive(Clone, Debug, PartialEq)]
pub struct FleetPlan {
    /// Every TenantPool's outcome.
    pub tenants: BTreeMap<TenantKey, TenantPlan>,
    /// Per live pod (not terminating), by pod name: what it should hold.
    pub pods: BTreeMap<String, PodPlan>,
    /// What the snapshot Secret holds for poolers that (re)start while the
    /// operator is away: the tenants every pod of the fleet serves.
    pub stored: Snapshot,
    /// CA bundles of serving tenants, as extra keys of the snapshot Secret.
    pub ca_files: BTreeMap<String, String>,
}

/// One TenantPool's outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct TenantPlan {
    /// The effective tenant id.
    pub tenant_id: String,
    /// Whether and why (not) the tenant is pushed.
    pub outcome: TenantOutcome,
    /// Names of the pushable pods (Running, with an IP, not terminating) that this
    /// TenantPool selects.
    pub selected_pods: Vec<String>,
}

/// Whether a tenant is pushed, and if not, why.
#[derive(Clone, Debug, PartialEq)]
pub enum TenantOutcome {
    /// In the snapshot of every pod it selects.
    Serving {
        /// Content hash of the tenant's configuration.
        config_version: String,
    },
    /// Its credentials (or CA) Secret or key is missing; not pushed.
    CredentialsUnresolved(CredentialsProblem),
    /// The spec breaks an invariant (normally refused at admission); not pushed.
    Invalid(Vec<String>),
    /// An older TenantPool with the same tenant id shares a pooler pod.
    Conflict {
        /// The older TenantPool that keeps the tenant id.
        winner: TenantKey,
    },
    /// Being deleted: removed from every pod.
    Deleting,
}

/// Why a tenant's credentials cannot be resolved. Messages name the Secret and key,
/// never a value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsProblem {
    /// The credentials Secret does not exist.
    #[error(
        "Secret {namespace}/{secret} (spec.database.credentialsSecret) not found; create it with keys {username_key:?} and {password_key:?}"
    )]
    SecretNotFound {
        namespace: String,
        secret: String,
        username_key: String,
        password_key: String,
    },
    /// A key is missing from the credentials Secret.
    #[error(
        "Secret {namespace}/{secret} has no key {key:?}; add it or set spec.database.credentialsSecret.{field}"
    )]
    KeyNotFound {
        namespace: String,
        secret: String,
        key: String,
        field: &'static str,
    },
    /// A value is not UTF-8 or the user name is empty.
    #[error("key {key:?} of Secret {namespace}/{secret} {problem}")]
    BadValue {
        namespace: String,
        secret: String,
        key: String,
        problem: &'static str,
    },
    /// The CA Secret does not exist.
    #[error("Secret {namespace}/{secret} (spec.database.caSecret) not found")]
    CaSecretNotFound { namespace: String, secret: String },
    /// The CA key is missing.
    #[error("Secret {namespace}/{secret} has no key {key:?} (spec.database.caSecret.key)")]
    CaKeyNotFound {
        namespace: String,
        secret: String,
        key: String,
    },
}

impl CredentialsProblem {
    /// The condition reason: CamelCase, stable.
    pub fn reason(&self) -> &'static str {
        match self {
            CredentialsProblem::SecretNotFound { .. } => "SecretNotFound",
            CredentialsProblem::KeyNotFound { .. } => "SecretKeyNotFound",
            CredentialsProblem::BadValue { .. } => "SecretValueInvalid",
            CredentialsProblem::CaSecretNotFound { .. } => "CaSecretNotFound",
            CredentialsProblem::CaKeyNotFound { .. } => "CaSecretKeyNotFound",
        }
    }

    /// Short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            CredentialsProblem::SecretNotFound { .. } => "secret_not_found",
            CredentialsProblem::KeyNotFound { .. } => "secret_key_not_found",
            CredentialsProblem::BadValue { .. } => "secret_value_invalid",
            CredentialsProblem::CaSecretNotFound { .. } => "ca_secret_not_found",
            CredentialsProblem::CaKeyNotFound { .. } => "ca_secret_key_not_found",
        }
    }
}

/// What one live pod should hold.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    /// Pod name.
    pub name: String,
    /// Pod UID: a recreated pod with the same name is another pod.
    pub uid: String,
    /// The pod IP while the pod is Running; `None`: nothing to push to yet (it
    /// starts from the snapshot Secret).
    pub address: Option<String>,
    /// Container restarts, summed: a restarted pooler must be asked again.
    pub restarts: i32,
    /// The configuration it should hold.
    pub snapshot: Snapshot,
}

/// A complete pooler configuration with its content-hash version. Its `Debug`
/// shows no credential.
#[derive(Clone, PartialEq, Default)]
pub struct Snapshot {
    config: PoolerConfig,
}

impl Snapshot {
    /// The content-hash version (16 hex characters).
    pub fn version(&self) -> &str {
        &self.config.version
    }

    /// The admin API message, credentials included.
    pub fn config(&self) -> &PoolerConfig {
        &self.config
    }

    /// Tenant ids in this snapshot, sorted.
    pub fn tenant_ids(&self) -> Vec<&str> {
        self.config.tenants.iter().map(|t| t.id.as_str()).collect()
    }

    /// The pooler's `--config` file: exactly `serde_yaml` of the admin message.
    pub fn to_yaml(&self) -> Result<String, serde_yaml::Error> {
        serde_yaml::to_string(&self.config)
    }

    /// The passwords it carries, to scrub them from any text that might echo one.
    pub fn passwords(&self) -> impl Iterator<Item = &str> {
        self.config
            .tenants
            .iter()
            .filter_map(|t| t.database.as_ref())
            .map(|d| d.password.as_str())
            .filter(|p| !p.is_empty())
    }

    fn from_tenants(tenants: Vec<&RenderedTenant>) -> Self {
        let mut hasher = Sha256::new();
        let mut sorted = tenants;
        sorted.sort_by(|a, b| a.config.id.cmp(&b.config.id));
        for tenant in &sorted {
            hasher.update(tenant.config.id.as_bytes());
            hasher.update(b"=");
            hasher.update(tenant.version.as_bytes());
            hasher.update(b"\n");
        }
        Self {
            config: PoolerConfig {
                version: short_hex(hasher),
                tenants: sorted.into_iter().map(|t| t.config.clone()).collect(),
            },
        }
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.config.version)
            .field("tenants", &self.tenant_ids())
            .finish()
    }
}

/// A tenant rendered for the admin API, with its content hash.
struct RenderedTenant {
    config: TenantConfig,
    version: String,
    ca_file: Option<(String, String)>,
}

/// Parses the CRD's duration syntax ("500ms", "30s", "5m", "1h").
pub fn parse_duration(text: &str) -> Option<Duration> {
    let digits = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(digits);
    let n: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// Checks the invariants the CRD's CEL rules enforce at admission, again here:
/// a TenantPool admitted under an older CRD must not reach a pooler.
pub fn validate(tenant_pool: &TenantPool) -> Vec<String> {
    let spec = &tenant_pool.spec;
    let mut problems = Vec::new();
    let id = tenant_pool.tenant_id();
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    {
        problems.push(format!(
            "tenantId {id:?} must be letters, digits, '.', '_' or '-'"
        ));
    }
    if spec.pool.max_connections == 0 {
        problems.push("pool.maxConnections must be at least 1".into());
    }
    if spec.pool.min_connections > spec.pool.max_connections {
        problems.push(format!(
            "pool.minConnections ({}) exceeds pool.maxConnections ({})",
            spec.pool.min_connections, spec.pool.max_connections
        ));
    }
    let durations = [
        ("pool.maxLifetime", Some(&spec.pool.max_lifetime)),
        ("pool.maxIdleTime", Some(&spec.pool.max_idle_time)),
        ("pool.acquireTimeout", Some(&spec.pool.acquire_timeout)),
        (
            "pool.statementTimeout",
            spec.pool.statement_timeout.as_ref(),
        ),
        ("leases.defaultTtl", Some(&spec.leases.default_ttl)),
        ("leases.maxTtl", Some(&spec.leases.max_ttl)),
    ];
    for (field, value) in durations {
        if let Some(value) = value
            && parse_duration(value).is_none()
        {
            problems.push(format!(
                "{field} {value:?} is not a duration like \"500ms\", \"30s\", \"5m\" or \"1h\""
            ));
        }
    }
    if let (Some(default_ttl), Some(max_ttl)) = (
        parse_duration(&spec.leases.default_ttl),
        parse_duration(&spec.leases.max_ttl),
    ) && default_ttl > max_ttl
    {
        problems.push(format!(
            "leases.defaultTtl ({}) exceeds leases.maxTtl ({})",
            spec.leases.default_ttl, spec.leases.max_ttl
        ));
    }
    if let Some(selector) = &spec.pooler_selector
        && let Err(e) = selector::matches(selector, &BTreeMap::new())
    {
        problems.push(format!("poolerSelector: {e}"));
    }
    problems
}

/// Computes the fleet's desired state.
pub fn plan(inputs: &FleetInputs<'_>) -> FleetPlan {
    let live_pods: Vec<&Pod> = inputs
        .pods
        .iter()
        .map(Arc::as_ref)
        .filter(|p| p.metadata.deletion_timestamp.is_none() && !is_finished(p))
        .collect();

    // Claimants in age order: the older TenantPool keeps a contested tenant id.
    let mut claimants: Vec<&TenantPool> = inputs.tenant_pools.iter().map(Arc::as_ref).collect();
    claimants.sort_by(|a, b| {
        let created = |t: &TenantPool| t.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| TenantKey::of(a).cmp(&TenantKey::of(b)))
    });

    let mut winners: Vec<(&TenantPool, Selection)> = Vec::new();
    let mut tenants = BTreeMap::new();
    let mut rendered: BTreeMap<TenantKey, (RenderedTenant, Selection)> = BTreeMap::new();

    for tenant_pool in claimants {
        let key = TenantKey::of(tenant_pool);
        let tenant_id = tenant_pool.tenant_id();
        let selection = Selection::of(tenant_pool);
        let selected_pods = live_pods
            .iter()
            .filter(|p| pod_address(p).is_some() && selection.selects(p))
            .map(|p| p.name_any())
            .collect();
        let outcome = if tenant_pool.metadata.deletion_timestamp.is_some() {
            TenantOutcome::Deleting
        } else if let Some((winner, _)) = winners
            .iter()
            .find(|(w, ws)| w.tenant_id() == tenant_id && ws.overlaps(&selection, &live_pods))
        {
            TenantOutcome::Conflict {
                winner: TenantKey::of(winner),
            }
        } else {
            winners.push((tenant_pool, selection.clone()));
            let problems = validate(tenant_pool);
            if !problems.is_empty() {
                TenantOutcome::Invalid(problems)
            } else {
                match render(tenant_pool, inputs.secrets, inputs.config_dir) {
                    Ok(r) => {
                        let config_version = r.version.clone();
                        rendered.insert(key.clone(), (r, selection));
                        TenantOutcome::Serving { config_version }
                    }
                    Err(problem) => TenantOutcome::CredentialsUnresolved(problem),
                }
            }
        };
        tenants.insert(
            key,
            TenantPlan {
                tenant_id,
                outcome,
                selected_pods,
            },
        );
    }

    let pods = live_pods
        .iter()
        .map(|pod| {
            let serving = rendered
                .values()
                .filter(|(_, selection)| selection.selects(pod))
                .map(|(r, _)| r)
                .collect();
            let plan = PodPlan {
                name: pod.name_any(),
                uid: pod.metadata.uid.clone().unwrap_or_default(),
                address: pod_address(pod),
                restarts: restarts(pod),
                snapshot: Snapshot::from_tenants(serving),
            };
            (plan.name.clone(), plan)
        })
        .collect();

    let stored = Snapshot::from_tenants(
        rendered
            .values()
            .filter(|(_, selection)| {
                selection.everything
                    || (!live_pods.is_empty() && live_pods.iter().all(|p| selection.selects(p)))
            })
            .map(|(r, _)| r)
            .collect(),
    );
    let ca_files = rendered
        .values()
        .filter_map(|(r, _)| r.ca_file.clone())
        .collect();

    FleetPlan {
        tenants,
        pods,
        stored,
        ca_files,
    }
}

/// Which pods a TenantPool selects.
#[derive(Clone)]
struct Selection {
    everything: bool,
    selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

impl Selection {
    fn of(tenant_pool: &TenantPool) -> Self {
        let selector = tenant_pool.spec.pooler_selector.clone();
        Self {
            everything: selector::is_everything(selector.as_ref()),
            selector,
        }
    }

    fn selects(&self, pod: &Pod) -> bool {
        if self.everything {
            return true;
        }
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        match &self.selector {
            None => true,
            // An invalid selector selects nothing; the tenant reports it as invalid.
            Some(s) => selector::matches(s, &labels).unwrap_or(false),
        }
    }

    /// Two selections share a pooler: both take the whole fleet (now and in
    /// future pods), or some live pod is selected by both.
    fn overlaps(&self, other: &Selection, pods: &[&Pod]) -> bool {
        (self.everything && other.everything)
            || pods.iter().any(|p| self.selects(p) && other.selects(p))
    }
}

fn is_finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The IP to push to: only Running pods that are not terminating.
fn pod_address(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() != Some("Running") || pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    status.pod_ip.clone().filter(|ip| !ip.is_empty())
}

/// Restarts of every container, init containers included: a pooler running as
/// a native sidecar (an init container with `restartPolicy: Always`) reports
/// its restarts there.
fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .map(|s| {
            s.container_statuses
                .iter()
                .chain(s.init_container_statuses.iter())
                .flatten()
                .map(|c| c.restart_count)
                .sum()
        })
        .unwrap_or(0)
}

/// Renders one valid TenantPool with its resolved Secrets.
fn render(
    tenant_pool: &TenantPool,
    secrets: &dyn SecretSource,
    config_dir: &str,
) -> Result<RenderedTenant, CredentialsProblem> {
    let namespace = tenant_pool.namespace().unwrap_or_default();
    let spec = &tenant_pool.spec;
    let creds = &spec.database.credentials_secret;
    let secret = secrets.secret(&namespace, &creds.name).ok_or_else(|| {
        CredentialsProblem::SecretNotFound {
            namespace: namespace.clone(),
            secret: creds.name.clone(),
            username_key: creds.username_key.clone(),
            password_key: creds.password_key.clone(),
        }
    })?;
    let value = |key: &str, field: &'static str| -> Result<String, CredentialsProblem> {
        let bytes = secret_value(&secret, key).ok_or_else(|| CredentialsProblem::KeyNotFound {
            namespace: namespace.clone(),
            secret: creds.name.clone(),
            key: key.to_string(),
            field,
        })?;
        String::from_utf8(bytes).map_err(|_| CredentialsProblem::BadValue {
            namespace: namespace.clone(),
            secret: creds.name.clone(),
            key: key.to_string(),
            problem: "is not UTF-8 text",
        })
    };
    let user = value(&creds.username_key, "usernameKey")?;
    if user.trim().is_empty() {
        return Err(CredentialsProblem::BadValue {
            namespace,
            secret: creds.name.clone(),
            key: creds.username_key.clone(),
            problem: "is empty",
        });
    }
    let password = value(&creds.password_key, "passwordKey")?;

    let ca_file = match &spec.database.ca_secret {
        None => None,
        Some(ca) => {
            let ca_secret = secrets.secret(&namespace, &ca.name).ok_or_else(|| {
                CredentialsProblem::CaSecretNotFound {
                    namespace: namespace.clone(),
                    secret: ca.name.clone(),
                }
            })?;
            let pem = secret_value(&ca_secret, &ca.key).ok_or_else(|| {
                CredentialsProblem::CaKeyNotFound {
                    namespace: namespace.clone(),
                    secret: ca.name.clone(),
                    key: ca.key.clone(),
                }
            })?;
            let pem = String::from_utf8(pem).map_err(|_| CredentialsProblem::BadValue {
                namespace: namespace.clone(),
                secret: ca.name.clone(),
                key: ca.key.clone(),
                problem: "is not a PEM text",
            })?;
            Some((
                format!("ca-{namespace}-{}.pem", tenant_pool.name_any()),
                pem,
            ))
        }
    };

    let mut config = TenantConfig {
        id: tenant_pool.tenant_id(),
        database: Some(DatabaseTarget {
            host: spec.database.host.clone(),
            port: u32::from(spec.database.port),
            dbname: spec.database.dbname.clone(),
            user,
            password: String::new(),
            password_file: String::new(),
            ssl_mode: spec
                .database
                .ssl_mode
                .map(|m| m.as_str().to_string())
                .unwrap_or_default(),
            ca_file: ca_file
                .as_ref()
                .map(|(key, _)| format!("{}/{key}", config_dir.trim_end_matches('/')))
                .unwrap_or_default(),
        }),
        pool: Some(PoolSettings {
            max_connections: spec.pool.max_connections,
            min_connections: Some(spec.pool.min_connections),
            max_lifetime: spec.pool.max_lifetime.clone(),
            max_idle_time: spec.pool.max_idle_time.clone(),
            acquire_timeout: spec.pool.acquire_timeout.clone(),
            max_waiting: Some(spec.pool.max_waiting),
            statement_timeout: spec.pool.statement_timeout.clone().unwrap_or_default(),
        }),
        leases: Some(LeaseSettings {
            default_ttl: spec.leases.default_ttl.clone(),
            max_ttl: spec.leases.max_ttl.clone(),
            max_per_client: spec.leases.max_per_client,
        }),
        allowed_clients: spec.access.allowed_clients.clone(),
    };

    // The version hashes the configuration with the password replaced by the
    // Secret's identity and resourceVersion: a rotation changes the version, and
    // the version (shown in status) is no oracle for guessing the password.
    let mut hasher = Sha256::new();
    let fingerprint = format!(
        "secret:{}:{}",
        secret.metadata.uid.as_deref().unwrap_or_default(),
        secret
            .metadata
            .resource_version
            .as_deref()
            .unwrap_or_default()
    );
    if let Some(db) = config.database.as_mut() {
        db.password = fingerprint;
    }
    hasher.update(
        serde_yaml::to_string(&config)
            .unwrap_or_default()
            .as_bytes(),
    );
    if let Some((_, pem)) = &ca_file {
        hasher.update(pem.as_bytes());
    }
    if let Some(db) = config.database.as_mut() {
        db.password = password;
    }
    Ok(RenderedTenant {
        config,
        version: short_hex(hasher),
        ca_file,
    })
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|b| b.0.clone())
        .or_else(|| {
            secret
                .string_data
                .as_ref()
                .and_then(|d| d.get(key))
                .map(|s| s.clone().into_bytes())
        })
}

fn short_hex(hasher: Sha256) -> String {
    hasher.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The names of the Secrets (namespace, name) a TenantPool references, for
/// mapping Secret changes to TenantPools.
pub fn referenced_secrets(tenant_pool: &TenantPool) -> BTreeSet<(String, String)> {
    let namespace = tenant_pool.namespace().unwrap_or_default();
    let db = &tenant_pool.spec.database;
    std::iter::once(db.credentials_secret.name.clone())
        .chain(db.ca_secret.as_ref().map(|c| c.name.clone()))
        .map(|name| (namespace.clone(), name))
        .collect()
}

/// Whether a TenantPool's selection includes `pod` (for mapping pod changes).
pub fn selects_pod(tenant_pool: &TenantPool, pod: &Pod) -> bool {
    Selection::of(tenant_pool).selects(pod)
}

#[cfg(test)]
mod tests;
